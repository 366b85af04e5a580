/*
 * api_batches.c - the batch endpoints of the REST API: submit (after
 * api_submit.c's check, one statement, batchd.api_submit()), one batch,
 * the list and the items pages (keyset cursors, base64url), progress, and
 * cancel, retry, delete; and how a batch and an item render as JSON.
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
	"b.succeeded, b.failed, b.cancelled, batchd.api_ts(b.created_at), " \
	"batchd.api_ts(b.started_at), batchd.api_ts(b.finished_at), b.metadata, b.group_key " \
	"FROM batchd.batches AS b CROSS JOIN LATERAL " \
	"(SELECT count(*)::int AS n FROM batchd.items AS i " \
	" WHERE i.batch_id = b.id AND i.status = 'running') AS run "

static const ApiCol batch_cols[] = {
	{ "id", CK_STR }, { "name", CK_STR }, { "route", CK_STR }, { "status", CK_STR },
	{ "priority", CK_NUM }, { "max_attempts", CK_NUM }, { "total", CK_NUM },
	{ "queued", CK_NUM }, { "running", CK_NUM }, { "succeeded", CK_NUM },
	{ "failed", CK_NUM }, { "cancelled", CK_NUM }, { "created_at", CK_STR },
	{ "started_at", CK_STR }, { "finished_at", CK_STR }, { "metadata", CK_JSON },
	{ "group_key", CK_STR },
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
	sb_puts(&sb, "{\"batches\":[");
	for (int i = 0; i < n && i < r->limit; i++) {
		if (i)
			sb_putc(&sb, ',');
		api_render_row(&sb, res, i, 0, batch_cols, BATCH_NCOLS);
	}
	if (n > r->limit) {
		StrBuf raw;
		sb_init(&raw);
		sb_printf(&raw, "%s|%s", PQgetvalue(res, r->limit - 1, BATCH_COL_CREATED),
			  PQgetvalue(res, r->limit - 1, BATCH_COL_ID));
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

	/* newest first; ties by id ascending, which is the index's order */
	static const char sql[] = BATCH_SELECT
		"WHERE b.tenant = $1 AND ($2::text IS NULL OR b.status = $2) "
		"AND ($3::timestamptz IS NULL OR (b.created_at <= $3 "
		"     AND (b.created_at < $3 OR b.id > $4::uuid))) "
		"ORDER BY b.created_at DESC, b.id LIMIT $5::int";

	snprintf(limit, sizeof(limit), "%d", r->limit + 1);
	params[0] = r->tenant;
	params[1] = r->status[0] ? r->status : NULL;
	params[2] = r->cur_ts[0] ? r->cur_ts : NULL;
	params[3] = r->cur_id[0] ? r->cur_id : NULL;
	params[4] = limit;
	req_query(r, false, sql, 5, params, step_list);
}

/* ------------------------------------------------------------------ items */

static void step_items(Req *r, PGresult *res)
{
	StrBuf sb;
	int n, shown = 0;

	if (!req_batch_found(r, res))
		return;
	n = PQntuples(res);
	sb_init(&sb);
	sb_puts(&sb, "{\"items\":[");
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
	 * an empty page. */
	static const char sql[] =
		"SELECT b.id, it.* FROM batchd.batches AS b "
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

/* ------------------------------------------------------------------ progress */

static void step_progress(Req *r, PGresult *res)
{
	long long total, succeeded, failed, cancelled, done, recent;
	double elapsed, window, rate, percent;
	const char *status;
	bool terminal;
	StrBuf sb;

	if (!req_batch_found(r, res))
		return;
	status = PQgetvalue(res, 0, 1);
	total = atoll(PQgetvalue(res, 0, 2));
	succeeded = atoll(PQgetvalue(res, 0, 3));
	failed = atoll(PQgetvalue(res, 0, 4));
	cancelled = atoll(PQgetvalue(res, 0, 5));
	recent = atoll(PQgetvalue(res, 0, 6));
	elapsed = atof(PQgetvalue(res, 0, 7));
	done = succeeded + failed + cancelled;
	terminal = status_batch_terminal(status);
	/* over the last minute, or since the start when that is more recent */
	window = elapsed < 1.0 ? 1.0 : elapsed > 60.0 ? 60.0 : elapsed;
	rate = (double)recent / window;
	percent = total > 0 ? (double)done * 100.0 / (double)total : 100.0;

	sb_init(&sb);
	sb_puts(&sb, "{\"batch_id\":");
	json_append_string(&sb, PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0));
	sb_puts(&sb, ",\"status\":");
	json_append_string(&sb, status, strlen(status));
	sb_printf(&sb, ",\"total\":%lld,\"done\":%lld,\"percent\":%.2f,\"succeeded\":%lld,"
		  "\"failed\":%lld,\"cancelled\":%lld,\"rate_per_s\":%.3f,\"eta_s\":",
		  total, done, percent, succeeded, failed, cancelled, rate);
	if (terminal || rate <= 0.0 || done >= total)
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

	/* Items finished in the last minute: read only while that can be
	 * non-zero (not for batches that finished earlier). */
	static const char sql[] =
		"SELECT b.id, b.status, b.total, b.succeeded, b.failed, b.cancelled, "
		"  CASE WHEN b.started_at IS NULL "
		"         OR b.finished_at < now() - interval '60 seconds' THEN 0 "
		"       ELSE (SELECT count(*) FROM batchd.items AS i "
		"              WHERE i.batch_id = b.id AND i.status IN ('succeeded', 'failed') "
		"                AND i.finished_at >= now() - interval '60 seconds') END, "
		"  coalesce(extract(epoch FROM now() - b.started_at), 0)::float8 "
		"FROM batchd.batches AS b WHERE b.id = $1::uuid AND b.tenant = $2";

	req_query(r, false, sql, 2, params, step_progress);
}

/* ------------------------------------------------------------------ cancel, retry, delete */

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
	} else {
		reply_error(r, 500, "unexpected answer '%s' from the database", code);
	}
}

void ep_state_change(Req *r)
{
	const char *params[2] = { r->tenant, r->id };
	const char *sql = r->ep == EP_CANCEL ? "SELECT batchd.cancel_batch($1, $2::uuid)" :
		r->ep == EP_RETRY ? "SELECT batchd.retry_batch($1, $2::uuid)" :
		"SELECT batchd.delete_batch($1, $2::uuid)";

	req_query(r, false, sql, 2, params, step_state_change);
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

