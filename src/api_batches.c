/*
 * api_batches.c - the batch endpoints of the REST API: submit (after
 * api_submit.c's check, one statement, batchd.api_submit()), one batch,
 * the list, the items and the events pages (keyset cursors, base64url, each
 * with the total the filter matches), progress (its state: running,
 * waiting, stalled, ...), and cancel, retry, delete; and how a batch and an
 * item render as JSON.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "batchd/api_req.h"
#include "batchd/api_submit.h"
#include "batchd/base64url.h"
#include "batchd/json.h"
#include "batchd/status.h"

/*
 * The batch object.  queued is derived: total minus what finished minus what
 * runs (the running count reads the small partial index of running items).
 */
#define BATCH_SELECT \
	"SELECT b.id, b.name, b.route, b.status, b.priority, b.max_attempts, b.total, " \
	"greatest(b.total - b.succeeded - b.failed - b.cancelled - run.n, 0), run.n, " \
	"b.succeeded, b.failed, b.cancelled, batchd.api_ts(b.created_at) AS created_at, " \
	"batchd.api_ts(b.started_at) AS started_at, batchd.api_ts(b.finished_at) AS finished_at, " \
	"b.metadata, b.group_key, " \
	"b.retries FROM batchd.batches AS b CROSS JOIN LATERAL " \
	"(SELECT count(*)::int AS n FROM batchd.items AS i " \
	" WHERE i.batch_id = b.id AND i.status = 'running') AS run "

static const ApiCol batch_cols[] = {
	{ "id", CK_STR }, { "name", CK_STR }, { "route", CK_STR }, { "status", CK_STR },
	{ "priority", CK_NUM }, { "max_attempts", CK_NUM }, { "total", CK_NUM },
	{ "queued", CK_NUM }, { "running", CK_NUM }, { "succeeded", CK_NUM },
	{ "failed", CK_NUM }, { "cancelled", CK_NUM }, { "created_at", CK_STR },
	{ "started_at", CK_STR }, { "finished_at", CK_STR }, { "metadata", CK_JSON },
	{ "group_key", CK_STR }, { "retries", CK_NUM },
};
#define BATCH_NCOLS ((int)ARRAY_SIZE(batch_cols))
#define BATCH_COL_ID 0
#define BATCH_COL_CREATED 12

const ApiCol api_item_cols[] = {
	{ "id", CK_NUM }, { "seq", CK_NUM }, { "status", CK_STR }, { "attempts", CK_NUM },
	{ "provider", CK_STR }, { "http_status", CK_NUM }, { "payload", CK_JSON },
	{ "result", CK_JSON }, { "error", CK_STR }, { "started_at", CK_STR },
	{ "finished_at", CK_STR },
};
const int api_item_ncols = (int)ARRAY_SIZE(api_item_cols);

/* ================================================================ endpoints */

static const char *const get_batch_sql = BATCH_SELECT "WHERE b.id = $1::uuid AND b.tenant = $2";

/* GET /v1/batches/{id}, and the answer after submit, cancel and retry. */
static void step_batch(Req *r, PGresult *res)
{
	StrBuf sb;

	if (!req_batch_found(r, res))
		return;
	sb_init(&sb);
	api_render_row(&sb, res, 0, 0, batch_cols, BATCH_NCOLS);
	if (r->answer == 201 && r->req) {
		char loc[64];
		snprintf(loc, sizeof(loc), "/v1/batches/%s", PQgetvalue(res, 0, BATCH_COL_ID));
		evhttp_add_header(evhttp_request_get_output_headers(r->req), "Location", loc);
	}
	reply_json(r, r->answer ? r->answer : 200, sb.data, sb.len);
	sb_free(&sb);
}

static void read_batch(Req *r, bool same_db)
{
	const char *params[2] = { r->id, r->tenant };
	req_query(r, same_db, get_batch_sql, 2, params, step_batch);
}

void ep_get(Req *r)
{
	read_batch(r, false);
}

/* ------------------------------------------------------------------ list */

/* Close the page open in sb (its array) with next_cursor, the base64url of
 * raw (NULL: no more pages, null), answer it and free sb. */
static void reply_page(Req *r, StrBuf *sb, const char *raw, size_t len)
{
	sb_puts(sb, "],\"next_cursor\":");
	if (raw) {
		StrBuf cur;
		sb_init(&cur);
		base64url_encode(&cur, raw, len);
		json_append_string(sb, cur.data, cur.len);
		sb_free(&cur);
	} else {
		sb_puts(sb, "null");
	}
	sb_putc(sb, '}');
	reply_json(r, 200, sb->data, sb->len);
	sb_free(sb);
}

/* The list's rows: column 0 the total the filter matches, then the batch
 * columns (NULL on a page with no batch). */
static void step_list(Req *r, PGresult *res)
{
	StrBuf sb;
	int n;

	if (!db_result_ok(res)) {
		reply_db_error(r, res);
		return;
	}
	n = PQntuples(res);
	sb_init(&sb);
	sb_printf(&sb, "{\"total\":%s,\"batches\":[", n > 0 ? PQgetvalue(res, 0, 0) : "0");
	for (int i = 0; i < n && i < r->limit; i++) {
		if (PQgetisnull(res, i, 1 + BATCH_COL_ID))
			break;          /* no (more) batches */
		if (i)
			sb_putc(&sb, ',');
		api_render_row(&sb, res, i, 1, batch_cols, BATCH_NCOLS);
	}
	if (n > r->limit) {
		StrBuf raw;
		sb_init(&raw);
		sb_printf(&raw, "%s|%s", PQgetvalue(res, r->limit - 1, 1 + BATCH_COL_CREATED),
			  PQgetvalue(res, r->limit - 1, 1 + BATCH_COL_ID));
		reply_page(r, &sb, raw.data, raw.len);
		sb_free(&raw);
	} else {
		reply_page(r, &sb, NULL, 0);
	}
}

void ep_list(Req *r)
{
	char limit[16];
	const char *params[5];

	/* One statement: the total of the filter (whatever the cursor), one row
	 * with NULL batch columns when the page is empty.  Newest first; ties
	 * by id ascending, which is the index's order (created_at is the
	 * api_ts text, which sorts as the time does). */
	static const char sql[] =
		"SELECT t.n, p.* FROM (SELECT count(*) AS n FROM batchd.batches AS c "
		"  WHERE c.tenant = $1 AND ($2::text IS NULL OR c.status = $2)) AS t "
		"LEFT JOIN LATERAL (" BATCH_SELECT
		"  WHERE b.tenant = $1 AND ($2::text IS NULL OR b.status = $2) "
		"  AND ($3::timestamptz IS NULL OR (b.created_at <= $3 "
		"       AND (b.created_at < $3 OR b.id > $4::uuid))) "
		"  ORDER BY b.created_at DESC, b.id LIMIT $5::int) AS p ON true "
		"ORDER BY p.created_at DESC, p.id";

	snprintf(limit, sizeof(limit), "%d", r->limit + 1);
	params[0] = r->tenant;
	params[1] = r->status[0] ? r->status : NULL;
	params[2] = r->cur_ts[0] ? r->cur_ts : NULL;
	params[3] = r->cur_id[0] ? r->cur_id : NULL;
	params[4] = limit;
	req_query(r, false, sql, 5, params, step_list);
}

/* ------------------------------------------------------------------ items */

/* The items page's rows: the batch id, the item columns (NULL when the page
 * is empty), then the total of the filter. */
#define ITEMS_COL_TOTAL (1 + api_item_ncols)

static void step_items(Req *r, PGresult *res)
{
	StrBuf sb;
	int n, shown = 0;

	if (!req_batch_found(r, res))
		return;
	n = PQntuples(res);
	sb_init(&sb);
	sb_printf(&sb, "{\"total\":%s,\"items\":[", PQgetvalue(res, 0, ITEMS_COL_TOTAL));
	for (int i = 0; i < n && i < r->limit; i++) {
		if (PQgetisnull(res, i, 1))
			break;          /* the batch has no (such) items */
		if (shown++)
			sb_putc(&sb, ',');
		api_render_row(&sb, res, i, 1, api_item_cols, api_item_ncols);
	}
	if (n > r->limit) {
		const char *seq = PQgetvalue(res, r->limit - 1, 2);
		reply_page(r, &sb, seq, strlen(seq));
	} else {
		reply_page(r, &sb, NULL, 0);
	}
}

void ep_items(Req *r)
{
	char limit[16];
	const char *params[5];

	/* One statement: no row = no such batch (404); one row of NULL items =
	 * an empty page.  The total comes from the batch's counters (exact),
	 * except for queued and running, which are counted. */
	static const char sql[] =
		"SELECT b.id, it.*, CASE WHEN $3::text IS NULL THEN b.total::bigint "
		"  WHEN $3 = 'succeeded' THEN b.succeeded WHEN $3 = 'failed' THEN b.failed "
		"  WHEN $3 = 'cancelled' THEN b.cancelled "
		"  ELSE (SELECT count(*) FROM batchd.items AS c "
		"         WHERE c.batch_id = b.id AND c.status = $3) END "
		"FROM batchd.batches AS b "
		"LEFT JOIN LATERAL (SELECT " ITEM_COLS " FROM batchd.items AS i "
		"  WHERE i.batch_id = b.id AND ($3::text IS NULL OR i.status = $3) "
		"    AND ($4::int IS NULL OR i.seq > $4) "
		"  ORDER BY i.seq LIMIT $5::int) AS it ON true "
		"WHERE b.id = $1::uuid AND b.tenant = $2 ORDER BY it.seq";

	snprintf(limit, sizeof(limit), "%d", r->limit + 1);
	params[0] = r->id;
	params[1] = r->tenant;
	params[2] = r->status[0] ? r->status : NULL;
	params[3] = r->cur_seq[0] ? r->cur_seq : NULL;
	params[4] = limit;
	req_query(r, false, sql, 5, params, step_items);
}

/* ------------------------------------------------------------------ events */

static const ApiCol event_cols[] = {
	{ "id", CK_NUM }, { "at", CK_STR }, { "event", CK_STR }, { "detail", CK_JSON },
};

/* Rows: the batch id, the number of its events, then the event columns
 * (NULL when the page is empty). */
static void step_events(Req *r, PGresult *res)
{
	StrBuf sb;
	int n, shown = 0;

	if (!req_batch_found(r, res))
		return;
	n = PQntuples(res);
	sb_init(&sb);
	sb_printf(&sb, "{\"total\":%s,\"events\":[", PQgetvalue(res, 0, 1));
	for (int i = 0; i < n && i < r->limit; i++) {
		if (PQgetisnull(res, i, 2))
			break;
		if (shown++)
			sb_putc(&sb, ',');
		api_render_row(&sb, res, i, 2, event_cols, (int)ARRAY_SIZE(event_cols));
	}
	if (n > r->limit) {
		const char *id = PQgetvalue(res, r->limit - 1, 2);
		reply_page(r, &sb, id, strlen(id));
	} else {
		reply_page(r, &sb, NULL, 0);
	}
}

/* GET /v1/batches/{id}/events: oldest first, keyset pages by event id. */
void ep_events(Req *r)
{
	char limit[16];
	const char *params[4];

	static const char sql[] =
		"SELECT b.id, (SELECT count(*) FROM batchd.batch_events AS c WHERE c.batch_id = b.id), "
		"  e.* FROM batchd.batches AS b "
		"LEFT JOIN LATERAL (SELECT e.id, batchd.api_ts(e.at), e.event, e.detail "
		"  FROM batchd.batch_events AS e "
		"  WHERE e.batch_id = b.id AND ($3::bigint IS NULL OR e.id > $3) "
		"  ORDER BY e.id LIMIT $4::int) AS e ON true "
		"WHERE b.id = $1::uuid AND b.tenant = $2 ORDER BY e.id";

	snprintf(limit, sizeof(limit), "%d", r->limit + 1);
	params[0] = r->id;
	params[1] = r->tenant;
	params[2] = r->cur_seq[0] ? r->cur_seq : NULL;
	params[3] = limit;
	req_query(r, false, sql, 4, params, step_events);
}

/* ------------------------------------------------------------------ progress */

/*
 * The rate is over the last PROGRESS_WINDOW_S seconds (or since the start
 * when that is more recent): short enough that a batch that stops moving
 * shows it within seconds, long enough to smooth the engine's bursts of
 * claims and its completion flushes.  An ETA needs PROGRESS_MIN_SAMPLES
 * items finished in the window and the batch running.
 */
#define PROGRESS_WINDOW_S 15
#define PROGRESS_MIN_SAMPLES 3
#define STR_(x) #x
#define STR(x) STR_(x)
#define PROGRESS_INTERVAL "interval '" STR(PROGRESS_WINDOW_S) " seconds'"

enum ProgressCol {
	PC_ID, PC_STATUS, PC_TOTAL, PC_SUCCEEDED, PC_FAILED, PC_CANCELLED, PC_RECENT, PC_ELAPSED,
	PC_RUNNING, PC_AHEAD, PC_AGE, PC_RETRIES, PC_ROUTE, PC_HAS_SLOT, PC_SLOTS_TAKEN,
};

/*
 * state: the batch's status when it is finished (completed,
 * completed_with_errors, failed) or cancelled (its running items, still
 * counted in running, end on their own); else running (items running, or
 * finished within the window), waiting (none running, and a batch of the
 * same route ahead of it in claim order has unfinished items:
 * waiting_behind_priority is the highest such priority; or its route has
 * batch_concurrency = N, it holds no batch slot and N batches hold them:
 * waiting_for_batch_slot), pending (nothing has moved yet and it was
 * submitted within the window), or stalled.
 */
static const char *progress_state(const char *status, long long running, long long recent,
				  bool ahead, bool slot_wait, double age)
{
	if (strcmp(status, "pending") != 0 && strcmp(status, "processing") != 0)
		return status;
	if (running > 0)
		return "running";
	if (ahead || slot_wait)
		return "waiting";
	if (recent > 0)
		return "running";
	if (age < PROGRESS_WINDOW_S && strcmp(status, "pending") == 0)
		return "pending";
	return "stalled";
}

static void step_progress(Req *r, PGresult *res)
{
	long long total, succeeded, failed, cancelled, done, recent, running, queued;
	double elapsed, window, rate, percent, fraction;
	const char *status, *state;
	const Route *rt;
	bool ahead, slot_wait;
	StrBuf sb;

	if (!req_batch_found(r, res))
		return;
	status = PQgetvalue(res, 0, PC_STATUS);
	total = atoll(PQgetvalue(res, 0, PC_TOTAL));
	succeeded = atoll(PQgetvalue(res, 0, PC_SUCCEEDED));
	failed = atoll(PQgetvalue(res, 0, PC_FAILED));
	cancelled = atoll(PQgetvalue(res, 0, PC_CANCELLED));
	recent = atoll(PQgetvalue(res, 0, PC_RECENT));
	elapsed = atof(PQgetvalue(res, 0, PC_ELAPSED));
	running = atoll(PQgetvalue(res, 0, PC_RUNNING));
	ahead = !PQgetisnull(res, 0, PC_AHEAD);
	done = succeeded + failed + cancelled;
	queued = total - done - running;
	if (queued < 0)
		queued = 0;
	/* waiting for a batch slot: its route has batch_concurrency (in this
	 * worker's configuration), all of the slots are taken, none by it */
	rt = config_find_route(r->api->bd->cfg, PQgetvalue(res, 0, PC_ROUTE));
	slot_wait = rt && rt->batch_concurrency > 0 && running == 0 && done < total &&
		    !PQgetisnull(res, 0, PC_HAS_SLOT) &&
		    strcmp(PQgetvalue(res, 0, PC_HAS_SLOT), "f") == 0 &&
		    atoll(PQgetvalue(res, 0, PC_SLOTS_TAKEN)) >= rt->batch_concurrency;
	state = progress_state(status, running, recent, ahead, slot_wait,
			       atof(PQgetvalue(res, 0, PC_AGE)));
	window = elapsed < 1.0 ? 1.0 : elapsed > PROGRESS_WINDOW_S ? PROGRESS_WINDOW_S : elapsed;
	rate = (double)recent / window;
	fraction = total > 0 ? (double)done / (double)total : 1.0;
	percent = fraction * 100.0;

	sb_init(&sb);
	sb_puts(&sb, "{\"batch_id\":");
	json_append_string(&sb, PQgetvalue(res, 0, PC_ID), (size_t)PQgetlength(res, 0, PC_ID));
	sb_puts(&sb, ",\"status\":");
	json_append_string(&sb, status, strlen(status));
	sb_puts(&sb, ",\"state\":");
	json_append_string(&sb, state, strlen(state));
	sb_printf(&sb, ",\"waiting_behind_priority\":%s",
		  strcmp(state, "waiting") == 0 && ahead ? PQgetvalue(res, 0, PC_AHEAD) : "null");
	sb_printf(&sb, ",\"waiting_for_batch_slot\":%s",
		  strcmp(state, "waiting") == 0 && slot_wait ? "true" : "false");
	sb_printf(&sb, ",\"total\":%lld,\"done\":%lld,\"queued\":%lld,\"running\":%lld,"
		  "\"percent\":%.2f,\"fraction\":%.4f,\"succeeded\":%lld,\"failed\":%lld,"
		  "\"cancelled\":%lld,\"retries\":%s,\"rate_per_s\":%.3f,\"rate_window_s\":%.1f,"
		  "\"eta_s\":", total, done, queued, running, percent, fraction, succeeded,
		  failed, cancelled, PQgetvalue(res, 0, PC_RETRIES), rate, window);
	if (strcmp(state, "running") != 0 || recent < PROGRESS_MIN_SAMPLES || done >= total)
		sb_puts(&sb, "null");
	else
		sb_printf(&sb, "%.1f", (double)(total - done) / rate);
	sb_putc(&sb, '}');
	reply_json(r, 200, sb.data, sb.len);
	sb_free(&sb);
}

void ep_progress(Req *r)
{
	const char *params[2] = { r->id, r->tenant };

	/* Items finished in the window: read only while that can be non-zero
	 * (not for batches that finished earlier).  The batches ahead: only
	 * while it matters (unfinished, nothing running); their counters tell
	 * whether they have items left (partial index of unfinished batches). */
	static const char sql[] =
		"SELECT b.id, b.status, b.total, b.succeeded, b.failed, b.cancelled, "
		"  CASE WHEN b.started_at IS NULL "
		"         OR b.finished_at < now() - " PROGRESS_INTERVAL " THEN 0 "
		"       ELSE (SELECT count(*) FROM batchd.items AS i "
		"              WHERE i.batch_id = b.id AND i.status IN ('succeeded', 'failed') "
		"                AND i.finished_at >= now() - " PROGRESS_INTERVAL ") END, "
		"  coalesce(extract(epoch FROM now() - b.started_at), 0)::float8, run.n, "
		"  CASE WHEN b.status IN ('pending', 'processing') AND run.n = 0 THEN "
		"    (SELECT max(o.priority) FROM batchd.batches AS o "
		"      WHERE o.route = b.route AND o.status IN ('pending', 'processing') "
		"        AND o.id <> b.id AND o.priority >= b.priority "
		"        AND (o.priority > b.priority OR o.created_at < b.created_at) "
		"        AND o.succeeded + o.failed + o.cancelled < o.total) END, "
		"  extract(epoch FROM now() - b.created_at)::float8, b.retries, b.route, "
		"  CASE WHEN b.status IN ('pending', 'processing') AND run.n = 0 THEN "
		"    EXISTS (SELECT 1 FROM batchd.batch_slots AS s WHERE s.batch_id = b.id) END, "
		"  CASE WHEN b.status IN ('pending', 'processing') AND run.n = 0 THEN "
		"    (SELECT count(*) FROM batchd.batch_slots AS s JOIN batchd.batches AS o "
		"        ON o.id = s.batch_id "
		"      WHERE s.route = b.route AND o.finished_at IS NULL) END "
		"FROM batchd.batches AS b CROSS JOIN LATERAL "
		"  (SELECT count(*) AS n FROM batchd.items AS i "
		"    WHERE i.batch_id = b.id AND i.status = 'running') AS run "
		"WHERE b.id = $1::uuid AND b.tenant = $2";

	req_query(r, false, sql, 2, params, step_progress);
}

/* ------------------------------------------------------------------ cancel, retry, delete */

/* 409 retry_limit_reached: the batch was retried max_batch_retries times. */
static void reply_retry_limit(Req *r)
{
	StrBuf sb;

	sb_init(&sb);
	sb_printf(&sb, "{\"error\":{\"code\":\"retry_limit_reached\",\"message\":\"the batch "
		  "has been retried max_batch_retries (%d) times: submit its failed items as a "
		  "new batch\"}}", r->api->bd->cfg->max_batch_retries);
	reply_json(r, 409, sb.data, sb.len);
	sb_free(&sb);
}

static void step_state_change(Req *r, PGresult *res)
{
	const char *code;

	if (!db_result_ok(res)) {
		reply_db_error(r, res);
		return;
	}
	code = PQgetvalue(res, 0, 0);
	if (strcmp(code, "ok") == 0) {
		if (r->ep == EP_DELETE) {
			req_send(r, 204, NULL);
			return;
		}
		r->answer = 200;
		read_batch(r, true);
	} else if (strcmp(code, "not_found") == 0) {
		reply_error(r, 404, "no such batch");
	} else if (strcmp(code, "terminal") == 0) {
		reply_error(r, 409, "the batch is already finished or cancelled");
	} else if (strcmp(code, "not_terminal") == 0) {
		reply_error(r, 409, r->ep == EP_DELETE ?
			    "the batch is still pending or processing: cancel it first" :
			    "the batch is still pending or processing");
	} else if (strcmp(code, "running") == 0) {
		reply_error(r, 409, "the batch still has running items; try again when they finish");
	} else if (strcmp(code, "nothing_to_retry") == 0) {
		reply_error(r, 409, "the batch has no failed or cancelled items to retry");
	} else if (strcmp(code, "retry_limit") == 0) {
		reply_retry_limit(r);
	} else {
		reply_error(r, 500, "unexpected answer '%s' from the database", code);
	}
}

void ep_state_change(Req *r)
{
	char cap[16];
	const char *params[3] = { r->tenant, r->id, cap };
	const char *sql = r->ep == EP_CANCEL ? "SELECT batchd.cancel_batch($1, $2::uuid)" :
		r->ep == EP_RETRY ? "SELECT batchd.retry_batch($1, $2::uuid, $3::int)" :
		"SELECT batchd.delete_batch($1, $2::uuid)";

	snprintf(cap, sizeof(cap), "%d", r->api->bd->cfg->max_batch_retries);
	req_query(r, false, sql, r->ep == EP_RETRY ? 3 : 2, params, step_state_change);
}

/* 422 idempotency_key_reused: batchd.api_submit()'s BD422, whose message
 * names the key and the batch that has it. */
static void reply_key_reused(Req *r, const char *msg)
{
	StrBuf sb;

	sb_init(&sb);
	sb_puts(&sb, "{\"error\":{\"code\":\"idempotency_key_reused\",\"message\":");
	json_append_string(&sb, msg, strlen(msg));
	sb_puts(&sb, "}}");
	reply_json(r, 422, sb.data, sb.len);
	sb_free(&sb);
}

static void step_submit(Req *r, PGresult *res)
{
	if (!db_result_ok(res)) {
		if (res && strcmp(db_result_sqlstate(res), "BD422") == 0)
			reply_key_reused(r, db_result_error(res));
		else
			reply_db_error(r, res);
		return;
	}
	snprintf(r->id, sizeof(r->id), "%s", PQgetvalue(res, 0, 0));
	r->answer = PQgetvalue(res, 0, 1)[0] == 't' ? 201 : 200;
	read_batch(r, true);
}

void ep_submit(Req *r)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(r->req);
	struct evbuffer *buf = evhttp_request_get_input_buffer(r->req);
	const char *idem = evhttp_find_header(in, "Idempotency-Key");
	const char *params[5];
	char err[512], ttl[48];
	size_t len;
	char *body;

	if (!api_is_json_content_type(evhttp_find_header(in, "Content-Type"))) {
		reply_error(r, 415, "POST bodies must be JSON (Content-Type: application/json)");
		return;
	}
	if (idem) {
		size_t n = strlen(idem);
		bool ok = n >= 1 && n <= 200;
		for (size_t i = 0; ok && i < n; i++)
			ok = idem[i] >= 0x20 && idem[i] < 0x7f;
		if (!ok) {
			reply_error(r, 400, "Idempotency-Key must be 1 to 200 printable ASCII characters");
			return;
		}
		r->idem = xstrdup(idem);
	}
	len = evbuffer_get_length(buf);
	evbuffer_add(buf, "", 1);   /* NUL-terminate: the body goes to SQL as text */
	body = (char *)evbuffer_pullup(buf, -1);
	if (api_submit_check(body, len, r->api->bd->cfg, &r->route, err, sizeof(err)) < 0) {
		reply_error(r, 400, "%s", err);
		return;
	}

	/* $3 is cast to jsonb once (the parameter's type becomes jsonb) */
	params[0] = r->tenant;
	params[1] = r->route;
	params[2] = body;
	params[3] = r->idem;
	snprintf(ttl, sizeof(ttl), "%lld milliseconds",
		 (long long)r->api->bd->cfg->idempotency_ttl_ms);
	params[4] = ttl;
	req_query(r, false,
		  "SELECT s.id, s.created FROM batchd.api_submit($1, $2, $3::jsonb -> 'items', "
		  "$3::jsonb - 'route'::text - 'items'::text, $4, $5::interval) AS s",
		  5, params, step_submit);
}

