/*
 * engine.c - claim, dispatch, outcome and completion on one event loop.
 *
 * Capacity.  A job holds a slot of max_inflight + claim_ahead from its
 * claim until its outcome is known (transfer, provider queue, backoff);
 * transfers are capped at max_inflight (dispatch.c), so the claim_ahead
 * items wait in the providers' queues and take a slot the moment a transfer
 * ends, without a claim round trip in between.  Outcomes waiting to be
 * written are bounded separately (free_capacity), so the buffer cannot grow
 * while the database is slow or away.
 *
 * Statements.  A claim is one call of batchd.claim_items() on the engine
 * connection (with heartbeats, LISTEN and registration); a flush is one
 * call of batchd.record_completions() with every buffered outcome as a JSON
 * array, on its own connection so that claims never wait behind it.  The
 * graceful stop flushes everything first, then deregisters (which releases
 * whatever is still running under our worker id).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <curl/curl.h>
#include <yajl/yajl_tree.h>

#include "batchd/engine_int.h"
#include "batchd/json.h"
#include "batchd/log.h"
#include "batchd/migrate.h"
#include "batchd/tmpl.h"

#define STOP_DB_GRACE_MS 10000

static void engine_maybe_claim(Engine *e);
static void registered(Engine *e, PGresult *res);
static void array_text(StrBuf *sb, const char *v);
static void wake(Engine *e);
static void engine_maybe_flush(Engine *e, bool force);
static void stop_progress(Engine *e);

/* ------------------------------------------------------------------ utils */

static void rec_push(RecList *l, char *rec)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 64;
		l->v = xrealloc(l->v, (size_t)l->cap * sizeof(char *));
	}
	l->v[l->n++] = rec;
}

static void rec_clear(RecList *l)
{
	for (int i = 0; i < l->n; i++)
		free(l->v[i]);
	l->n = 0;
}

static void rec_free(RecList *l)
{
	rec_clear(l);
	free(l->v);
	l->v = NULL;
	l->cap = 0;
}

/* Put the records of src back in front of dst (after a failed flush). */
static void rec_prepend(RecList *dst, RecList *src)
{
	int total = dst->n + src->n;
	if (total > dst->cap) {
		dst->cap = total;
		dst->v = xrealloc(dst->v, (size_t)dst->cap * sizeof(char *));
	}
	memmove(dst->v + src->n, dst->v, (size_t)dst->n * sizeof(char *));
	memcpy(dst->v, src->v, (size_t)src->n * sizeof(char *));
	dst->n = total;
	src->n = 0;
}

/* items one claim statement asks for at most (see engine_maybe_claim) */
#define CLAIM_MAX 250
/* a claim starts from the head of the queue at least this often (ms) */
#define CLAIM_HEAD_MS 500

static void arm_ms(struct event *ev, int64_t ms)
{
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
	evtimer_add(ev, &tv);
}

/*
 * Free capacity for claims: max_inflight + claim_ahead counts the items
 * this process holds before their outcome (transfers, provider queues,
 * backoff).  An outcome waiting to be written no longer holds a slot, but
 * the buffer of such outcomes is bounded too (another max_inflight), so a
 * slow or absent database stops the claims instead of growing memory.
 * Rows of a claim being unpacked count as held.
 */
static int free_capacity(const Engine *e)
{
	int cap = e->cfg->max_inflight + e->cfg->claim_ahead - e->njobs - e->claim_landing;
	int buffered = e->pending.n + e->flushing.n;

	if (buffered >= e->cfg->max_inflight)
		return 0;
	return cap;
}


/* ------------------------------------------------------------ completions */

static void append_tries(StrBuf *sb, const Job *j)
{
	bool first = true;
	sb_puts(sb, ",\"tries\":{");
	for (int i = 0; i < j->route->nproviders && i < MAX_ROUTE_PROVIDERS; i++) {
		const char *name = j->route->providers[i]->name;
		if (!j->tries_by[i])
			continue;
		if (!first)
			sb_putc(sb, ',');
		first = false;
		json_append_string(sb, name, strlen(name));
		sb_putc(sb, ':');
		sb_put_i64(sb, j->tries_by[i]);
	}
	sb_putc(sb, '}');
}

static RouteStats *route_stats(Engine *e, const Route *r)
{
	for (int i = 0; i < e->cfg->nroutes; i++)
		if (e->cfg->routes[i] == r)
			return &e->route_stats[i];
	return NULL;
}

/*
 * Append one completion record (a JSON object for batchd.complete_items).
 * body may be NULL (no result).
 */
void engine_record(Engine *e, Job *j, const char *status, long http_status,
		   const char *body, size_t blen, const char *error)
{
	StrBuf sb;
	char ts[40];
	RouteStats *rs = route_stats(e, j->route);

	sb_init(&sb);
	/* one per item: appends, not printf */
	sb_reserve(&sb, 256 + blen);
	sb_puts(&sb, "{\"id\":");
	sb_put_i64(&sb, j->id);
	sb_puts(&sb, ",\"status\":\"");
	sb_puts(&sb, status);
	sb_puts(&sb, "\",\"http_status\":");
	if (http_status > 0)
		sb_put_i64(&sb, http_status);
	else
		sb_puts(&sb, "null");
	sb_puts(&sb, ",\"result\":");
	if (body && blen > 0)
		json_append_body(&sb, body, blen);
	else
		sb_puts(&sb, "null");
	sb_puts(&sb, ",\"error\":");
	if (error)
		json_append_string(&sb, error, strlen(error));
	else
		sb_puts(&sb, "null");
	sb_puts(&sb, ",\"provider\":");
	if (j->ps)
		json_append_string(&sb, j->ps->name, strlen(j->ps->name));
	else
		sb_puts(&sb, "null");
	append_tries(&sb, j);
	if (j->started_us) {
		format_timestamp(j->started_us, ts, sizeof(ts));
		sb_puts(&sb, ",\"started_at\":\"");
		sb_puts(&sb, ts);
		sb_putc(&sb, '"');
	}
	format_timestamp(now_realtime_us(), ts, sizeof(ts));
	sb_puts(&sb, ",\"finished_at\":\"");
	sb_puts(&sb, ts);
	sb_puts(&sb, "\"}");

	if (strcmp(status, "succeeded") == 0) {
		e->st.succeeded++;
		if (rs)
			rs->succeeded++;
	} else {
		e->st.failed++;
		if (rs)
			rs->failed++;
	}
	rec_push(&e->pending, sb_steal(&sb));
	sb_free(&sb);
	if (log_get_level() >= LG_DEBUG) {
		LogCtx ctx = { j->batch_id, j->id, j->ps ? j->ps->name : NULL, j->route->name };
		log_ctx(LG_DEBUG, &ctx, "item %lld %s%s%s", (long long)j->id, status,
			error ? ": " : "", error ? error : "");
	}
}

/* A "queued" record: the item goes back to the queue until now + delay_ms. */
static void record_requeue(Engine *e, Job *j, int64_t delay_ms, const char *why)
{
	StrBuf sb;
	char ts[40];

	sb_init(&sb);
	sb_printf(&sb, "{\"id\":%lld,\"status\":\"queued\",\"error\":", (long long)j->id);
	json_append_string(&sb, why, strlen(why));
	sb_puts(&sb, ",\"provider\":");
	if (j->ps)
		json_append_string(&sb, j->ps->name, strlen(j->ps->name));
	else
		sb_puts(&sb, "null");
	append_tries(&sb, j);
	format_timestamp(now_realtime_us() + delay_ms * 1000, ts, sizeof(ts));
	sb_printf(&sb, ",\"run_after\":\"%s\"}", ts);
	rec_push(&e->pending, sb_steal(&sb));
	sb_free(&sb);
}

/*
 * Put the item back in the queue until now + delay_ms without spending an
 * attempt (a long Retry-After or backoff, or every breaker open): the wait
 * then survives a restart and holds no capacity here.
 */
void engine_defer(Engine *e, Job *j, int64_t delay_ms, const char *why)
{
	RouteStats *rs = route_stats(e, j->route);

	record_requeue(e, j, delay_ms, why);
	e->st.deferred++;
	if (rs)
		rs->deferred++;
	{
		LogCtx ctx = { j->batch_id, j->id, j->ps ? j->ps->name : NULL, j->route->name };
		log_ctx(LG_INFO, &ctx, "item %lld back to the queue for %lld ms: %s",
			(long long)j->id, (long long)delay_ms, why);
	}
	engine_job_done(e, j);
}

/*
 * Its batch was cancelled before we sent it: the same "queued" record (no
 * attempt spent), which 006's trigger turns into a cancelled item, counted
 * in the batch.  The caller logs one line for all of them.
 */
void engine_drop_cancelled(Engine *e, Job *j)
{
	RouteStats *rs = route_stats(e, j->route);

	record_requeue(e, j, 0, "batch cancelled");
	e->st.cancelled++;
	if (rs)
		rs->cancelled++;
	engine_job_done(e, j);
}

static void flush_done(PGresult *res, void *arg);

static void flush_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	engine_maybe_flush(arg, true);
}

/*
 * Outcomes waiting that start a flush without waiting for flush_interval:
 * flush_size, but at most half of the outcome buffer's bound (max_inflight,
 * see free_capacity).  Claims stop when the buffer is full, so a larger
 * threshold would leave them waiting for the flush timer: with max_inflight
 * 256 and flush_size 500, one flush of 256 per 20 ms, at most 12,800 items/s
 * however fast the database.  At half, one half is written while the other
 * fills.
 */
static int flush_threshold(const Engine *e)
{
	int half = e->cfg->max_inflight / 2;

	if (half < 1)
		half = 1;
	return e->cfg->flush_size < half ? e->cfg->flush_size : half;
}

/*
 * Send buffered completions.  Outcomes are written on their own connection,
 * so that claims never wait behind a flush.  A flush starts as soon as the
 * connection is idle, at most one per flush_interval unless flush_threshold
 * outcomes are waiting, no item is held (nothing else is coming: the end of
 * a drain is written at once) or force: at a high rate each statement
 * carries many outcomes (cheap per item), at a low rate an outcome waits at
 * most flush_interval.
 */
static void engine_maybe_flush(Engine *e, bool force)
{
	StrBuf sb;
	int n;
	const char *params[2];
	int64_t now, due;

	if (e->flush_inflight || e->pending.n == 0 || !e->ever_ready || !db_is_ready(e->fdb))
		return;
	now = now_monotonic_us();
	due = e->last_flush_us + e->cfg->flush_interval_ms * 1000;
	/* with no item held, no outcome is coming to share the statement */
	if (!force && e->njobs > 0 && e->pending.n < flush_threshold(e) && now < due) {
		if (!evtimer_pending(e->flush_timer, NULL))
			arm_ms(e->flush_timer, (due - now) / 1000 + 1);
		return;
	}
	evtimer_del(e->flush_timer);
	e->last_flush_us = now;

	n = e->isolate ? 1 : (e->pending.n < e->cfg->flush_size ? e->pending.n : e->cfg->flush_size);
	sb_init(&sb);
	sb_putc(&sb, '[');
	for (int i = 0; i < n; i++) {
		if (i)
			sb_putc(&sb, ',');
		sb_puts(&sb, e->pending.v[i]);
		rec_push(&e->flushing, e->pending.v[i]);
	}
	sb_putc(&sb, ']');
	memmove(e->pending.v, e->pending.v + n, (size_t)(e->pending.n - n) * sizeof(char *));
	e->pending.n -= n;

	params[0] = e->bd->worker_id;
	params[1] = sb.data;
	if (db_query(e->fdb, "SELECT applied, fenced, finished FROM batchd.record_completions("
		     "$1::uuid, $2::jsonb)",
		     2, params, flush_done, e) < 0) {
		/* not connected: keep them for after the reconnect */
		rec_prepend(&e->pending, &e->flushing);
	} else {
		e->flush_inflight = true;
	}
	sb_free(&sb);
}

/* Rewrite a record that the database refused into a plain failure. */
static char *record_unstorable(const char *rec, const char *why)
{
	yajl_val v = yajl_tree_parse(rec, NULL, 0);
	yajl_val id = v ? json_get_path(v, "id") : NULL;
	StrBuf sb;
	char ts[40];
	char msg[600];

	sb_init(&sb);
	format_timestamp(now_realtime_us(), ts, sizeof(ts));
	snprintf(msg, sizeof(msg), "could not store the result: %s", why);
	sb_printf(&sb, "{\"id\":%s,\"status\":\"failed\",\"http_status\":null,\"result\":null,\"error\":",
		  id && YAJL_IS_NUMBER(id) ? YAJL_GET_NUMBER(id) : "0");
	json_append_string(&sb, msg, strlen(msg));
	sb_printf(&sb, ",\"provider\":null,\"finished_at\":\"%s\",\"unstorable\":true}", ts);
	yajl_tree_free(v);
	return sb_steal(&sb);
}

/* Info summary of each batch this flush finished (exactly one worker
 * finishes a batch, so each is logged once). */
static void log_batches_finished(const char *json)
{
	yajl_val arr = yajl_tree_parse(json, NULL, 0);

	if (!arr || !YAJL_IS_ARRAY(arr)) {
		yajl_tree_free(arr);
		return;
	}
	for (size_t i = 0; i < YAJL_GET_ARRAY(arr)->len; i++) {
		yajl_val b = YAJL_GET_ARRAY(arr)->values[i];
		yajl_val id = json_get_path(b, "id"), route = json_get_path(b, "route");
		yajl_val status = json_get_path(b, "status"), name = json_get_path(b, "name");
		yajl_val total = json_get_path(b, "total"), ok = json_get_path(b, "succeeded");
		yajl_val failed = json_get_path(b, "failed"), secs = json_get_path(b, "seconds");
		yajl_val canc = json_get_path(b, "cancelled");
		LogCtx ctx = { YAJL_IS_STRING(id) ? YAJL_GET_STRING(id) : NULL, 0, NULL,
			       YAJL_IS_STRING(route) ? YAJL_GET_STRING(route) : NULL };
		double s = secs && YAJL_IS_NUMBER(secs) ? YAJL_GET_DOUBLE(secs) : 0;
		long long t = total && YAJL_IS_INTEGER(total) ? YAJL_GET_INTEGER(total) : 0;

		log_ctx(LG_INFO, &ctx, "batch %s%s%s%s %s: %lld item(s), %lld succeeded, %lld failed, "
			"%lld cancelled, in %.3f s (%.1f items/s)",
			ctx.batch_id ? ctx.batch_id : "?",
			name && YAJL_IS_STRING(name) ? " (" : "",
			name && YAJL_IS_STRING(name) ? YAJL_GET_STRING(name) : "",
			name && YAJL_IS_STRING(name) ? ")" : "",
			status && YAJL_IS_STRING(status) ? YAJL_GET_STRING(status) : "?", t,
			ok && YAJL_IS_INTEGER(ok) ? YAJL_GET_INTEGER(ok) : 0,
			failed && YAJL_IS_INTEGER(failed) ? YAJL_GET_INTEGER(failed) : 0,
			canc && YAJL_IS_INTEGER(canc) ? YAJL_GET_INTEGER(canc) : 0, s,
			s > 0 ? (double)t / s : 0.0);
	}
	yajl_tree_free(arr);
}

static void flush_done(PGresult *res, void *arg)
{
	Engine *e = arg;

	e->flush_inflight = false;
	if (!res) {
		/* connection lost: retry after reconnect, same records */
		rec_prepend(&e->pending, &e->flushing);
		return;
	}
	if (!db_result_ok(res)) {
		const char *err = db_result_error(res);
		const char *state = db_result_sqlstate(res);
		if (strncmp(state, "40", 2) == 0 || strcmp(state, "55P03") == 0 ||
		    strcmp(state, "57014") == 0) {
			/* deadlock, serialization failure, lock or statement timeout:
			 * the records are fine, the moment was not; try them again */
			log_warn("flush of %d completions failed (%s, SQLSTATE %s); retrying",
				 e->flushing.n, err, state);
			rec_prepend(&e->pending, &e->flushing);
			if (!evtimer_pending(e->flush_timer, NULL))
				arm_ms(e->flush_timer, 50 + random() % 200);
			return;
		}
		if (e->flushing.n > 1) {
			/* one bad record must not sink the others: go one by one */
			log_warn("flush of %d completions failed (%s); recording one at a time",
				 e->flushing.n, err);
			e->isolate = true;
			rec_prepend(&e->pending, &e->flushing);
		} else if (e->flushing.n == 1 && !strstr(e->flushing.v[0], "\"unstorable\":true")) {
			char *rec = record_unstorable(e->flushing.v[0], err);
			log_warn("completion refused by the database (%s); recording the item as failed", err);
			rec_clear(&e->flushing);
			rec_push(&e->flushing, rec);
			rec_prepend(&e->pending, &e->flushing);
		} else {
			log_error("could not record a completion, dropping it (the item stays running "
				  "until its lease is recovered): %s", err);
			rec_clear(&e->flushing);
		}
	} else {
		int applied = atoi(PQgetvalue(res, 0, 0));
		int fenced = atoi(PQgetvalue(res, 0, 1));
		e->st.flushes++;
		e->st.fenced += (uint64_t)fenced;
		if (fenced > 0)
			log_warn("%d completion(s) discarded: items no longer running under this worker",
				 fenced);
		log_debug("flushed %d completions (%d applied, %d fenced)", e->flushing.n, applied, fenced);
		if (!PQgetisnull(res, 0, 2))
			log_batches_finished(PQgetvalue(res, 0, 2));
		rec_clear(&e->flushing);
		if (e->isolate && e->pending.n == 0)
			e->isolate = false;
		/* completions free group slots: items held back may go now */
		if (e->have_groups && applied > 0)
			e->more_work = true;
	}
	if (e->stop == STOP_FLUSHING) {
		stop_progress(e);
		return;
	}
	engine_maybe_flush(e, e->pending.n >= flush_threshold(e) || e->isolate);
	engine_maybe_claim(e);
}

/* -------------------------------------------------------------------- jobs */

/* A job let go of its config generation: free retired configs nobody uses. */
static void cfg_unref(Engine *e, Config *cfg)
{
	if (cfg == e->cfg) {
		e->cfg_jobs--;
		return;
	}
	for (int i = 0; i < e->nretired; i++) {
		if (e->retired[i] != cfg)
			continue;
		if (--e->retired_jobs[i] == 0) {
			config_free(cfg);
			e->retired[i] = e->retired[e->nretired - 1];
			e->retired_jobs[i] = e->retired_jobs[e->nretired - 1];
			e->nretired--;
		}
		return;
	}
}

void engine_job_done(Engine *e, Job *j)
{
	cfg_unref(e, j->cfg);
	if (j->prev)
		j->prev->next = j->next;
	else
		e->jobs = j->next;
	if (j->next)
		j->next->prev = j->prev;
	e->njobs--;
	dispatch_job_release(e, j);
	if (j->retry_timer)
		event_free(j->retry_timer);
	sb_free(&j->url);
	sb_free(&j->body);
	sb_free(&j->resp);
	sb_free(&j->hbuf);
	free(j->hnodes);
	yajl_tree_free(j->payload);
	free(j->payload_text);
	free(j->last_error);
	free(j);
}

/* After anything that may free capacity or add completions. */
void engine_after_event(Engine *e)
{
	if (e->stop == STOP_DRAINING) {
		stop_progress(e);
		return;
	}
	engine_maybe_flush(e, false);
	engine_maybe_claim(e);
}

/* Fail an item before it reached any provider (bad payload). */
static void job_fail_early(Engine *e, Job *j, const char *error)
{
	engine_record(e, j, "failed", 0, NULL, 0, error);
	engine_job_done(e, j);
}

/* ------------------------------------------------------------------ claims */

static void claim_done(PGresult *res, void *arg)
{
	Engine *e = arg;
	int n;

	e->claim_inflight = false;
	if (!res)
		return;   /* reconnect will claim again */
	if (!db_result_ok(res)) {
		log_error("claim failed: %s", db_result_error(res));
		return;   /* the poll timer tries again */
	}
	n = PQntuples(res);
	e->st.claimed += (uint64_t)n;
	if (n > 0)
		log_debug("claimed %d item(s)%s", n, e->claim_resumed ? " (resumed)" : "");
	/* a full claim means there is probably more; so does a NOTIFY that
	 * arrived while the claim was running */
	e->more_work = n >= e->claim_asked || e->wake_seq != e->claim_wake_seq;
	/* the next claim may resume after this one's last item only if this one
	 * was full and nothing was announced meanwhile (see engine_maybe_claim) */
	e->resume_ok = false;
	if (PQnfields(res) >= 7 && n > 0 && n >= e->claim_asked &&
	    e->wake_seq == e->claim_wake_seq) {
		e->resume_priority = atoi(PQgetvalue(res, n - 1, 6));
		e->resume_id = strtoll(PQgetvalue(res, n - 1, 0), NULL, 10);
		e->resume_ok = true;
	}
	if (e->have_groups && n < e->claim_asked && !evtimer_pending(e->group_timer, NULL)) {
		/* group limits may have held items back: their spacing ends on its
		 * own, with no NOTIFY, so look again after the shortest interval */
		arm_ms(e->group_timer, e->group_recheck_ms);
	}
	if (e->stop != STOP_NONE) {
		/* claimed during stop: deregister releases them, untouched */
		return;
	}
	/*
	 * Ask for the next ones before unpacking these: the database runs that
	 * claim while we parse payloads and start transfers (at a cold start,
	 * 1000 free slots fill in overlapping steps instead of one after the
	 * other).
	 */
	e->claim_landing = n;
	engine_maybe_claim(e);
	for (int i = 0; i < n; i++) {
		Job *j = xcalloc(1, sizeof(*j));
		char perr[256];
		const char *route = PQgetvalue(res, i, 2);

		e->claim_landing--;

		j->e = e;
		j->cfg = e->cfg;
		e->cfg_jobs++;
		j->state = JOB_NEW;
		j->id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
		snprintf(j->batch_id, sizeof(j->batch_id), "%s", PQgetvalue(res, i, 1));
		j->payload_text = xstrdup(PQgetvalue(res, i, 3));
		j->attempts = atoi(PQgetvalue(res, i, 4));
		j->max_attempts = atoi(PQgetvalue(res, i, 5));
		sb_init(&j->url);
		sb_init(&j->body);
		sb_init(&j->resp);
		sb_init(&j->hbuf);
		j->next = e->jobs;
		if (e->jobs)
			e->jobs->prev = j;
		e->jobs = j;
		e->njobs++;
		j->route = config_find_route(e->cfg, route);
		if (!j->route) {
			/* cannot happen: we claim only our routes */
			job_fail_early(e, j, "route not configured on this worker");
			continue;
		}
		j->payload = yajl_tree_parse(j->payload_text, perr, sizeof(perr));
		if (!j->payload) {
			job_fail_early(e, j, "payload is not valid JSON");
			continue;
		}
		dispatch_route(e, j);
	}
	engine_maybe_flush(e, false);
	engine_maybe_claim(e);
}

static void engine_maybe_claim(Engine *e)
{
	int cap, threshold;
	char limit[16];
	const char *params[6];
	bool resumed;
	int rc;

	if (!e->setup_done || e->claim_inflight || e->stop != STOP_NONE || !e->more_work)
		return;
	cap = free_capacity(e);
	if (cap <= 0)
		return;
	/* batch small claims unless woken up or idle */
	threshold = e->cfg->max_inflight / 20;
	if (threshold > 50)
		threshold = 50;
	if (threshold < 1)
		threshold = 1;
	if (cap < threshold && !e->urgent && e->njobs > 0)
		return;
	/*
	 * At most CLAIM_MAX a statement: at a cold start (1000 free slots)
	 * the first items go out while the next claim runs in the database,
	 * instead of after one long claim and a thousand connects in a row.
	 */
	if (cap > CLAIM_MAX)
		cap = CLAIM_MAX;
	snprintf(limit, sizeof(limit), "%d", cap);
	params[0] = e->bd->worker_id;
	params[1] = e->routes_param;
	params[2] = limit;
	resumed = false;
	if (e->have_groups) {
		/* routes with per-group limits are enforced in the claim, fleet-wide */
		params[3] = e->group_routes_param;
		params[4] = e->group_conc_param;
		params[5] = e->group_interval_param;
		rc = db_query(e->db, "SELECT id, batch_id, route, payload, attempts, max_attempts "
			      "FROM batchd.claim_items($1::uuid, $2::text[], $3::int, $4::text[], "
			      "$5::int[], $6::float8[])", 6, params, claim_done, e);
	} else {
		/*
		 * Resume after the last item of the previous claim while claims
		 * come back full: a claim from the head steps over the dead index
		 * entries of everything claimed since the last vacuum (sql/010).
		 * From the head after a NOTIFY (new batches, released or retried
		 * items: wake() clears resume_ok), after a short claim, and at
		 * least every CLAIM_HEAD_MS for requeued items whose run_after
		 * passed, which announce nothing.
		 */
		char prio[16], after[24];
		int64_t now = now_monotonic_us();

		if (e->resume_ok && now - e->head_claim_us < CLAIM_HEAD_MS * 1000) {
			snprintf(prio, sizeof(prio), "%d", e->resume_priority);
			snprintf(after, sizeof(after), "%lld", e->resume_id);
			params[3] = prio;
			params[4] = after;
			resumed = true;
		} else {
			params[3] = NULL;
			params[4] = NULL;
		}
		rc = db_query(e->db, "SELECT id, batch_id, route, payload, attempts, max_attempts, "
			      "priority FROM batchd.claim_items($1::uuid, $2::text[], "
			      "$3::int, $4::int, $5::bigint)", 5, params, claim_done, e);
		if (rc >= 0 && !resumed)
			e->head_claim_us = now;
	}
	if (rc < 0)
		return;
	e->claim_resumed = resumed;
	e->claim_inflight = true;
	e->claim_asked = cap;
	e->claim_wake_seq = e->wake_seq;
	e->urgent = false;
}

static void group_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	Engine *e = arg;
	e->more_work = true;
	engine_maybe_claim(e);
}

static void wake(Engine *e)
{
	e->more_work = true;
	e->urgent = true;
	e->resume_ok = false;   /* something may be ahead: claim from the head */
	e->wake_seq++;
	engine_maybe_claim(e);
}

static void poll_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	Engine *e = arg;
	/* safety net: NOTIFYs can be lost (reconnects) and run_after passes */
	wake(e);
	arm_ms(e->poll_timer, e->cfg->poll_interval_ms);
}

static bool serves_route(const Engine *e, const char *route)
{
	return config_find_route(e->cfg, route) != NULL;
}

static void on_notify(Db *db, const char *channel, const char *payload, void *arg)
{
	Engine *e = arg;
	if (strcmp(channel, "batchd_work") == 0 && (!payload || !*payload || serves_route(e, payload))) {
		wake(e);
	} else if (strcmp(channel, "batchd_cancel") == 0 && payload && *payload) {
		int n = dispatch_cancel_batch(e, payload);
		if (n > 0) {
			LogCtx ctx = { payload, 0, NULL, NULL };
			log_ctx(LG_INFO, &ctx, "batch %s cancelled: %d item(s) not yet sent dropped",
				payload, n);
			engine_maybe_flush(e, true);
		}
	}
}

/* ------------------------------------------------------- connection setup */

static void fail_startup(Engine *e, const char *msg)
{
	log_error("%s", msg);
	e->stop = STOP_DONE;
	db_close(e->db);
	batchd_engine_stopped(e->bd, 1);
}

static void setup_listen_done(PGresult *res, void *arg)
{
	Engine *e = arg;
	if (!res)
		return;
	if (!db_result_ok(res)) {
		log_error("LISTEN failed: %s", db_result_error(res));
		return;
	}
	e->setup_done = true;
	e->db_down_since_us = 0;
	if (!e->ever_ready) {
		e->ever_ready = true;
		log_info("worker %s ready: %d route(s), max_inflight %d", e->bd->worker_id,
			 e->cfg->nroutes, e->cfg->max_inflight);
		batchd_engine_ready(e->bd);
	}
	if (e->stop != STOP_NONE) {
		stop_progress(e);
		return;
	}
	/* catch up on anything submitted while we were away */
	engine_maybe_flush(e, true);
	wake(e);
}

/* Items this process holds: jobs, and completions not yet recorded. */
static char *held_ids_param(Engine *e)
{
	StrBuf sb;
	bool first = true;

	sb_init(&sb);
	sb_putc(&sb, '{');
	for (Job *j = e->jobs; j; j = j->next) {
		sb_printf(&sb, "%s%lld", first ? "" : ",", (long long)j->id);
		first = false;
	}
	for (int l = 0; l < 2; l++) {
		RecList *rl = l ? &e->flushing : &e->pending;
		for (int i = 0; i < rl->n; i++) {
			/* every record starts with {"id":N */
			long long id = strtoll(rl->v[i] + 6, NULL, 10);
			sb_printf(&sb, "%s%lld", first ? "" : ",", id);
			first = false;
		}
	}
	sb_putc(&sb, '}');
	return sb_steal(&sb);
}

static void setup_reconcile_done(PGresult *res, void *arg)
{
	Engine *e = arg;
	if (!res)
		return;
	if (!db_result_ok(res)) {
		log_error("reconciling leases failed: %s", db_result_error(res));
	} else if (atoi(PQgetvalue(res, 0, 0)) > 0) {
		/* claims whose answer was lost with the connection */
		log_warn("released %s item(s) claimed under our id that this process does not "
			 "hold", PQgetvalue(res, 0, 0));
	}
	if (db_query(e->db, "LISTEN batchd_cancel", 0, NULL, NULL, NULL) < 0 ||
	    db_query(e->db, "LISTEN batchd_work", 0, NULL, setup_listen_done, e) < 0)
		return;
}

/* [route] hook and on_batch_done live in batchd.routes, so that every SQL
 * path (completions, cancel, reaper) can call them. */
static char *routes_json(const Config *cfg)
{
	StrBuf sb;
	sb_init(&sb);
	sb_putc(&sb, '[');
	for (int i = 0; i < cfg->nroutes; i++) {
		const Route *r = cfg->routes[i];
		sb_puts(&sb, i ? ",{\"name\":" : "{\"name\":");
		json_append_string(&sb, r->name, strlen(r->name));
		sb_puts(&sb, ",\"hook\":");
		if (r->hook)
			json_append_string(&sb, r->hook, strlen(r->hook));
		else
			sb_puts(&sb, "null");
		sb_puts(&sb, ",\"on_batch_done\":");
		if (r->on_batch_done)
			json_append_string(&sb, r->on_batch_done, strlen(r->on_batch_done));
		else
			sb_puts(&sb, "null");
		sb_putc(&sb, '}');
	}
	sb_putc(&sb, ']');
	return sb_steal(&sb);
}

static int send_sync_routes(Engine *e, db_result_cb cb)
{
	char *json = routes_json(e->cfg);
	const char *params[1] = { json };
	int rc = db_query(e->db, "SELECT batchd.sync_routes($1::jsonb)", 1, params, cb, e);
	free(json);
	return rc;
}

static void reload_sync_done(PGresult *res, void *arg)
{
	if (res && !db_result_ok(res))
		log_error("reload: recording route hooks failed: %s", db_result_error(res));
}

static void setup_routes_done(PGresult *res, void *arg)
{
	Engine *e = arg;
	const char *params[2];
	char *held;
	int rc;

	if (!res)
		return;
	if (!db_result_ok(res)) {
		char msg[700];
		snprintf(msg, sizeof(msg), "recording the routes' hooks failed: %s",
			 db_result_error(res));
		fail_startup(e, msg);
		return;
	}
	/*
	 * A claim committed just before a connection loss leaves items running
	 * under our id that we never heard of; our heartbeat would keep them
	 * leased forever.  Put them back (no attempt spent).
	 */
	held = held_ids_param(e);
	params[0] = e->bd->worker_id;
	params[1] = held;
	rc = db_query(e->db, "SELECT batchd.release_unheld($1::uuid, $2::bigint[])", 2, params,
		      setup_reconcile_done, e);
	free(held);
	(void)rc;
}

static void setup_register_done(PGresult *res, void *arg)
{
	Engine *e = arg;

	if (!res)
		return;
	if (!db_result_ok(res)) {
		char msg[600];
		snprintf(msg, sizeof(msg), "registering the worker failed: %s", db_result_error(res));
		fail_startup(e, msg);
		return;
	}
	registered(e, res);
	if (send_sync_routes(e, setup_routes_done) < 0)
		return;
}

/* register_worker: also the providers we call, for the fleet's rate shares */
static int send_register(Engine *e, db_result_cb cb)
{
	char pid[16], lease[24];
	const char *params[6];
	StrBuf pv;
	int rc;

	sb_init(&pv);
	sb_putc(&pv, '{');
	for (int i = 0; i < e->nprovs; i++)
		array_text(&pv, e->provs[i]->name);
	sb_putc(&pv, '}');
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	params[0] = e->bd->worker_id;
	params[1] = e->bd->hostname;
	params[2] = pid;
	params[3] = PACKAGE_VERSION;
	params[4] = pv.data;
	params[5] = lease;
	snprintf(lease, sizeof(lease), "%lld", (long long)e->cfg->lease_timeout_ms);
	rc = db_query(e->db, "SELECT existed, shares FROM batchd.worker_register($1::uuid, $2, "
		      "$3::int, $4, $5::text[], $6::bigint)", 6, params, cb, e);
	sb_free(&pv);
	return rc;
}

static void setup_version_done(PGresult *res, void *arg)
{
	Engine *e = arg;
	char msg[600];
	int have, want = migrate_latest_version();

	if (!res)
		return;
	if (!db_result_ok(res)) {
		if (strcmp(db_result_sqlstate(res), "42P01") == 0 ||
		    strcmp(db_result_sqlstate(res), "3F000") == 0)
			snprintf(msg, sizeof(msg), "the batchd schema is not installed in this database, "
				 "or is older than this batchd: run 'batchd migrate' first");
		else
			snprintf(msg, sizeof(msg), "checking the schema version failed: %s",
				 db_result_error(res));
		fail_startup(e, msg);
		return;
	}
	have = atoi(PQgetvalue(res, 0, 0));
	if (have != want) {
		snprintf(msg, sizeof(msg), "schema version is %d but this batchd needs %d: run "
			 "'batchd migrate'%s", have, want,
			 have > want ? " with the newer batchd, or upgrade this one" : "");
		fail_startup(e, msg);
		return;
	}
	/* the function files (sql/functions) as this binary has them */
	if (strcmp(PQgetvalue(res, 0, 1), function_files_checksums) != 0) {
		snprintf(msg, sizeof(msg), "the schema's functions are not the ones of this "
			 "batchd (sql/functions differ from batchd.schema_functions): run "
			 "'batchd migrate'");
		fail_startup(e, msg);
		return;
	}
	if (send_register(e, setup_register_done) < 0)
		return;
}

static void on_connect(Db *db, void *arg)
{
	Engine *e = arg;
	e->setup_done = false;
	if (db_query(db, "SELECT coalesce(max(version), 0), " MIGRATE_FUNCTIONS_QUERY
		     " FROM batchd.schema_migrations", 0, NULL, setup_version_done, e) < 0)
		return;
}

static void on_disconnect(Db *db, void *arg)
{
	Engine *e = arg;
	e->hb_inflight = false;
	e->db_down_since_us = now_monotonic_us();
	e->setup_done = false;
	e->claim_inflight = false;
	e->resume_ok = false;
	e->dereg_inflight = false;
	log_warn("database unavailable: %d transfer(s) continue, %d completion(s) buffered",
		 e->ntransfers, e->pending.n);
}

/* --------------------------------------------------------------- heartbeat */

/*
 * Live workers per provider (from registration and every heartbeat): each
 * process takes rate / workers of a provider's rate (and its share of the
 * burst), so a fleet together never exceeds the configured rate.  A process
 * joining a busy fleet starts with an empty bucket and waits one heartbeat
 * interval, the time its peers need to lower their own share.
 */
static void apply_shares(Engine *e, const char *json, bool joining)
{
	yajl_val shares = yajl_tree_parse(json, NULL, 0);
	int64_t now = now_monotonic_us();

	for (int i = 0; i < e->nprovs; i++) {
		ProvState *ps = e->provs[i];
		yajl_val n = shares ? json_get_path(shares, ps->name) : NULL;
		double workers = n && YAJL_IS_NUMBER(n) ? YAJL_GET_DOUBLE(n) : 1.0;
		double share = workers >= 1.0 ? 1.0 / workers : 1.0;
		if (ps->removed || ps->cfg->rate <= 0) {
			ps->share = share;
			continue;
		}
		if (share != ps->share) {
			int burst = (int)ceil((double)ps->cfg->burst * share);
			log_info("provider %s: %g live worker(s), taking %.3g of rate %g/s", ps->name,
				 workers, share, ps->cfg->rate);
			ps->share = share;
			tb_configure(&ps->tb, ps->cfg->rate * share, burst < 1 ? 1 : burst, now);
		}
		if (joining && workers > 1.0) {
			int64_t until = now + e->cfg->heartbeat_interval_ms * 1000;
			ps->tb.tokens = 0;
			if (until > ps->paused_until)
				ps->paused_until = until;
		}
	}
	yajl_tree_free(shares);
}

/*
 * Another worker declared us dead while we were away and requeued our
 * items: whatever we still hold is no longer ours.  Transfers already out
 * finish (their results are fenced); nothing else goes to a provider.
 */
static void lease_lost(Engine *e, const char *why)
{
	int held_jobs = e->njobs - e->ntransfers;
	log_warn("%s: our lease was lost; dropping %d item(s) not yet sent (other workers own "
		 "them now), %d transfer(s) finish and will be fenced", why, held_jobs,
		 e->ntransfers);
	dispatch_drop_waiting(e);
}

/* Registration answer: existed (false: we were reaped) and the shares. */
static void registered(Engine *e, PGresult *res)
{
	bool existed = strcmp(PQgetvalue(res, 0, 0), "t") == 0;

	if (!existed && e->ever_ready && e->stop == STOP_NONE)
		lease_lost(e, "worker row gone at reconnect");
	e->lease_ok_us = now_monotonic_us();
	apply_shares(e, PQgetvalue(res, 0, 1), !e->ever_ready || !existed);
	dispatch_wake_all(e);
}

static void registered_again(PGresult *res, void *arg)
{
	Engine *e = arg;
	if (res && db_result_ok(res) && PQntuples(res) == 1)
		registered(e, res);
}

/*
 * Heartbeat answer: whether our row still exists, and for each provider the
 * number of live workers calling it.  Each process takes rate / workers of a
 * provider's rate (and its share of the burst), so a fleet together never
 * exceeds the configured rate; shares follow workers joining and leaving.
 */
static void heartbeat_done(PGresult *res, void *arg)
{
	Engine *e = arg;
	bool was_ok = engine_lease_ok(e);

	e->hb_inflight = false;
	if (!res || !db_result_ok(res) || PQntuples(res) != 1)
		return;
	if (strcmp(PQgetvalue(res, 0, 0), "f") == 0) {
		if (e->stop == STOP_NONE) {
			lease_lost(e, "worker row missing at heartbeat");
			if (send_register(e, registered_again) < 0)
				return;
		}
		return;
	}
	/* the row was there when this heartbeat ran: the lease held until then */
	e->lease_ok_us = e->hb_sent_us;
	apply_shares(e, PQgetvalue(res, 0, 1), false);
	if (!was_ok)
		dispatch_wake_all(e);
}

static void heartbeat_cb(evutil_socket_t fd, short what, void *arg)
{
	Engine *e = arg;
	char n[16], lease[24];
	const char *params[3];

	arm_ms(e->heartbeat_timer, e->cfg->heartbeat_interval_ms);
	if (!e->setup_done || e->hb_inflight)
		return;
	snprintf(n, sizeof(n), "%d", e->ntransfers);
	snprintf(lease, sizeof(lease), "%lld", (long long)e->cfg->lease_timeout_ms);
	params[0] = e->bd->worker_id;
	params[1] = n;
	params[2] = lease;
	if (db_query(e->db, "SELECT registered, shares FROM batchd.worker_heartbeat($1::uuid, "
		     "$2::int, $3::bigint)", 3, params, heartbeat_done, e) < 0)
		return;
	e->hb_inflight = true;
	e->hb_sent_us = now_monotonic_us();
}

/*
 * Is our lease surely still ours?  Only if a heartbeat that went out less
 * than lease_timeout ago was acknowledged: after a stall (SIGSTOP, a long
 * loop lag, a database outage) other workers may have declared us dead and
 * taken our items, and we must not call a provider for them.  Until a
 * heartbeat says, providers hold their queues (dispatch asks for one).
 */
bool engine_lease_ok(Engine *e)
{
	return now_monotonic_us() - e->lease_ok_us < e->cfg->lease_timeout_ms * 1000;
}

void engine_check_lease(Engine *e)
{
	if (!e->hb_inflight && e->setup_done)
		heartbeat_cb(-1, 0, e);
}

/* --------------------------------------------------------- lag and depth */

#define LAG_TICK_US 250000

/* A 250 ms timer that notes how late it fires: the loop's lag. */
static void lag_cb(evutil_socket_t fd, short what, void *arg)
{
	Engine *e = arg;
	int64_t now = now_monotonic_us();
	double lag = (double)(now - e->lag_expected_us) / 1e6;

	if (lag > e->lag_max_s)
		e->lag_max_s = lag;
	if (lag > 1.0)
		log_warn("event loop lagged %.3f s", lag);
	e->lag_expected_us = now + LAG_TICK_US;
	arm_ms(e->lag_timer, LAG_TICK_US / 1000);
}

double engine_take_loop_lag(Engine *e)
{
	double v = e->lag_max_s;
	e->lag_max_s = 0;
	return v < 0 ? 0 : v;
}

bool engine_healthy(const Engine *e)
{
	/* not yet ready counts as healthy: TimeoutStartSec covers the start */
	if (e->db_down_since_us == 0 || !e->ever_ready)
		return true;
	return now_monotonic_us() - e->db_down_since_us <= e->cfg->watchdog_db_grace_ms * 1000;
}

static void depth_done(PGresult *res, void *arg)
{
	Engine *e = arg;
	if (!res || !db_result_ok(res))
		return;
	for (int i = 0; i < e->cfg->nroutes; i++)
		e->route_stats[i].queue_depth = 0;
	for (int r = 0; r < PQntuples(res); r++)
		for (int i = 0; i < e->cfg->nroutes; i++)
			if (strcmp(e->cfg->routes[i]->name, PQgetvalue(res, r, 0)) == 0)
				e->route_stats[i].queue_depth = strtoll(PQgetvalue(res, r, 1), NULL, 10);
}

/* Queue depth per route for the metrics: one cheap count on the claim
 * index every 15 s. */
static void depth_cb(evutil_socket_t fd, short what, void *arg)
{
	Engine *e = arg;
	const char *params[1];

	arm_ms(e->depth_timer, 15000);
	if (!e->setup_done || !db_is_ready(e->mdb))
		return;
	params[0] = e->routes_param;
	if (db_query(e->mdb, "SELECT route, count(*) FROM batchd.items WHERE status = 'queued' "
		     "AND route = ANY ($1::text[]) GROUP BY route", 1, params, depth_done, e) < 0)
		return;
}

/* --------------------------------------------------------------- retention */

static void retention_done(PGresult *res, void *arg)
{
	Engine *e = arg;
	int n;

	if (!res)
		return;
	if (!db_result_ok(res)) {
		log_error("retention: deleting old batches failed: %s", db_result_error(res));
		return;
	}
	n = atoi(PQgetvalue(res, 0, 0));
	e->st.purged += (uint64_t)n;
	if (n > 0) {
		log_info("retention: deleted %d finished batch(es) older than %lld s", n,
			 (long long)(e->cfg->retention_ms / 1000));
		/* a full chunk: more may be waiting, continue soon */
		if (n >= 20)
			arm_ms(e->retention_timer, 200);
	}
}

/* retention = AGE: delete finished batches older than AGE, a chunk at a
 * time on the maintenance connection, so claims never wait behind it. */
static void retention_cb(evutil_socket_t fd, short what, void *arg)
{
	Engine *e = arg;
	char age[24];
	const char *params[1];

	arm_ms(e->retention_timer, 60000);
	if (!e->setup_done || e->stop != STOP_NONE || !db_is_ready(e->mdb))
		return;
	/* group rows of idle groups would slow the grouped claim down */
	if (e->have_groups &&
	    db_query(e->mdb, "SELECT batchd.gc_groups()", 0, NULL, NULL, NULL) < 0)
		return;
	if (e->cfg->retention_ms <= 0)
		return;
	snprintf(age, sizeof(age), "%lld", (long long)e->cfg->retention_ms);
	params[0] = age;
	if (db_query(e->mdb, "SELECT batchd.purge_finished($1::bigint)", 1, params,
		     retention_done, e) < 0)
		return;
}

/* ------------------------------------------------------------------ reaper */

static void reap_done(PGresult *res, void *arg)
{
	Engine *e = arg;
	int workers, requeued, failed;

	if (!res)
		return;
	if (!db_result_ok(res)) {
		log_error("reaping dead workers failed: %s", db_result_error(res));
		return;
	}
	workers = atoi(PQgetvalue(res, 0, 0));
	requeued = atoi(PQgetvalue(res, 0, 1));
	failed = atoi(PQgetvalue(res, 0, 2));
	if (workers > 0) {
		log_warn("recovered %d dead worker(s): %d item(s) requeued, %d failed after "
			 "max_attempts (worker lost)", workers, requeued, failed);
		e->st.recovered += (uint64_t)(requeued + failed);
		if (requeued > 0)
			wake(e);
	}
}

/*
 * Every live worker looks for dead ones (heartbeat older than
 * lease_timeout) at a jittered heartbeat interval; the SQL skips workers
 * another reaper is handling, so two reapers never requeue an item twice.
 */
static void reaper_cb(evutil_socket_t fd, short what, void *arg)
{
	Engine *e = arg;
	char lease[24];
	const char *params[2];
	/* between half and one heartbeat interval: an item of a dead worker
	 * waits at most lease_timeout + heartbeat_interval */
	int64_t next = e->cfg->heartbeat_interval_ms / 2 +
		random() % (e->cfg->heartbeat_interval_ms / 2 + 1);

	arm_ms(e->reaper_timer, next);
	if (!e->setup_done || e->stop != STOP_NONE || !db_is_ready(e->mdb))
		return;
	snprintf(lease, sizeof(lease), "%lld", (long long)e->cfg->lease_timeout_ms);
	params[0] = e->bd->worker_id;
	params[1] = lease;
	if (db_query(e->mdb, "SELECT workers, requeued, failed FROM batchd.reap_workers($1::uuid, "
		     "$2::bigint)", 2, params, reap_done, e) < 0)
		return;
}

/* -------------------------------------------------------------------- stop */

static void deregister_done(PGresult *res, void *arg)
{
	Engine *e = arg;
	if (!res) {
		/* lost the connection: stop_progress waits for it again */
		return;
	}
	if (!db_result_ok(res))
		log_error("deregistering the worker failed: %s", db_result_error(res));
	else
		log_info("worker %s deregistered; %s item(s) released back to the queue",
			 e->bd->worker_id, PQgetvalue(res, 0, 0));
	e->stop = STOP_DONE;
	evtimer_del(e->stop_timer);
	evtimer_del(e->heartbeat_timer);
	db_close(e->mdb);
	db_close(e->fdb);
	batchd_engine_stopped(e->bd, db_result_ok(res) ? 0 : 1);
}


/*
 * Drive the stop forward: wait for transfers, then flush every completion,
 * then deregister (which releases the items still running under our id
 * without spending their attempt).  Called again by every event that might
 * unblock the next step.
 */
static void stop_progress(Engine *e)
{
	const char *params[1];

	if (e->stop == STOP_DRAINING) {
		if (e->ntransfers > 0)
			return;
		e->stop = STOP_FLUSHING;
		evtimer_del(e->stop_timer);
		arm_ms(e->stop_timer, STOP_DB_GRACE_MS);
	}
	if (e->stop != STOP_FLUSHING)
		return;
	if (e->flush_inflight || e->dereg_inflight)
		return;   /* wait for the flush or the deregistration in progress */
	if (e->pending.n > 0) {
		engine_maybe_flush(e, true);
		return;   /* its end calls us again (or the connection's return) */
	}
	if (!e->setup_done)
		return;   /* wait for the engine connection */
	params[0] = e->bd->worker_id;
	if (db_query(e->db, "SELECT batchd.deregister_worker($1::uuid)", 1, params,
		     deregister_done, e) == 0)
		e->dereg_inflight = true;
}

static void stop_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	Engine *e = arg;

	if (e->stop == STOP_DRAINING) {
		log_warn("shutdown_timeout reached: abandoning %d transfer(s); their items go "
			 "back to the queue", e->ntransfers);
		dispatch_abort_all(e);
		stop_progress(e);
	} else if (e->stop == STOP_FLUSHING) {
		log_error("could not reach the database to record %d completion(s) and release "
			  "leases; other workers will recover the items after lease_timeout",
			  e->pending.n + e->flushing.n);
		e->stop = STOP_DONE;
		batchd_engine_stopped(e->bd, 1);
	}
}

void engine_stop(Engine *e, bool immediate)
{
	if (e->stop == STOP_DONE)
		return;
	/* the heartbeat goes on while we drain: a drain longer than the lease
	 * must not let another worker requeue what we are still finishing */
	evtimer_del(e->poll_timer);
	evtimer_del(e->reaper_timer);
	evtimer_del(e->depth_timer);
	evtimer_del(e->retention_timer);
	evtimer_del(e->group_timer);
	if (!e->ever_ready && !e->setup_done) {
		/* never got going: nothing to release */
		e->stop = STOP_DONE;
		db_close(e->db);
		batchd_engine_stopped(e->bd, 0);
		return;
	}
	if (immediate || e->stop != STOP_NONE) {
		if (e->stop == STOP_DRAINING || e->stop == STOP_NONE) {
			log_info("stopping now: abandoning %d transfer(s)", e->ntransfers);
			dispatch_abort_all(e);
			e->stop = STOP_DRAINING;
		}
		stop_progress(e);
		return;
	}
	e->stop = STOP_DRAINING;
	dispatch_drop_waiting(e);
	log_info("stopping: no new claims; waiting up to %lld ms for %d transfer(s)",
		 (long long)e->cfg->shutdown_timeout_ms, e->ntransfers);
	arm_ms(e->stop_timer, e->cfg->shutdown_timeout_ms);
	stop_progress(e);
}

/* ------------------------------------------------------------------ public */

/* Append a text[] element, quoted for an array literal. */
static void array_text(StrBuf *sb, const char *v)
{
	if (sb->len > 1)
		sb_putc(sb, ',');
	sb_putc(sb, '"');
	for (const char *p = v; *p; p++) {
		if (*p == '"' || *p == '\\')
			sb_putc(sb, '\\');
		sb_putc(sb, *p);
	}
	sb_putc(sb, '"');
}

static char *array_close(StrBuf *sb)
{
	char *s;
	sb_putc(sb, '}');
	s = sb_steal(sb);
	sb_free(sb);
	return s;
}

/* Array literals for the claim: our routes, and the group limits. */
static void build_claim_params(Engine *e)
{
	StrBuf r, gr, gc, gi;

	sb_init(&r);
	sb_init(&gr);
	sb_init(&gc);
	sb_init(&gi);
	sb_putc(&r, '{');
	sb_putc(&gr, '{');
	sb_putc(&gc, '{');
	sb_putc(&gi, '{');
	e->have_groups = false;
	e->group_recheck_ms = 1000;   /* concurrency-only: slots freed elsewhere */
	for (int i = 0; i < e->cfg->nroutes; i++) {
		const Route *rt = e->cfg->routes[i];
		array_text(&r, rt->name);
		if (rt->group_concurrency > 0 || rt->group_rate > 0) {
			array_text(&gr, rt->name);
			sb_printf(&gc, "%s%d", e->have_groups ? "," : "", rt->group_concurrency);
			sb_printf(&gi, "%s%.3f", e->have_groups ? "," : "",
				  rt->group_rate > 0 ? 1000.0 / rt->group_rate : 0.0);
			if (rt->group_rate > 0 && 1000.0 / rt->group_rate < e->group_recheck_ms)
				e->group_recheck_ms = (int64_t)(1000.0 / rt->group_rate);
			if (e->group_recheck_ms < 20)
				e->group_recheck_ms = 20;
			e->have_groups = true;
		}
	}
	free(e->routes_param);
	free(e->group_routes_param);
	free(e->group_conc_param);
	free(e->group_interval_param);
	e->routes_param = array_close(&r);
	e->group_routes_param = array_close(&gr);
	e->group_conc_param = array_close(&gc);
	e->group_interval_param = array_close(&gi);
}

/* The flush connection is back: write what waited. */
static void fdb_on_connect(Db *db, void *arg)
{
	Engine *e = arg;
	if (e->stop == STOP_FLUSHING)
		stop_progress(e);
	else
		engine_maybe_flush(e, true);
}

Engine *engine_new(Batchd *bd)
{
	static const DbHandlers fdb_handlers = { fdb_on_connect, NULL, NULL };
	static const DbHandlers handlers = { on_connect, on_disconnect, on_notify };
	Engine *e = xcalloc(1, sizeof(*e));

	e->bd = bd;
	e->cfg = bd->cfg;
	e->db = db_new(bd->base, bd->cfg->database, "db", &handlers, e);
	e->http = http_new(bd->base, bd->cfg->max_inflight, dispatch_transfer_done, e);
	e->flush_timer = evtimer_new(bd->base, flush_timer_cb, e);
	e->poll_timer = evtimer_new(bd->base, poll_timer_cb, e);
	e->heartbeat_timer = evtimer_new(bd->base, heartbeat_cb, e);
	e->reaper_timer = evtimer_new(bd->base, reaper_cb, e);
	e->lag_timer = evtimer_new(bd->base, lag_cb, e);
	e->depth_timer = evtimer_new(bd->base, depth_cb, e);
	e->retention_timer = evtimer_new(bd->base, retention_cb, e);
	e->group_timer = evtimer_new(bd->base, group_timer_cb, e);
	/* housekeeping (reaper, queue depth, retention) has its own connection */
	e->mdb = db_new(bd->base, bd->cfg->database, "db-maint", NULL, e);
	e->fdb = db_new(bd->base, bd->cfg->database, "db-flush", &fdb_handlers, e);
	e->stop_timer = evtimer_new(bd->base, stop_timer_cb, e);
	dispatch_init(e);
	build_claim_params(e);
	return e;
}

void engine_start(Engine *e)
{
	db_start(e->db);
	db_start(e->mdb);
	db_start(e->fdb);
	arm_ms(e->retention_timer, 5000);
	arm_ms(e->poll_timer, e->cfg->poll_interval_ms);
	arm_ms(e->heartbeat_timer, e->cfg->heartbeat_interval_ms);
	arm_ms(e->reaper_timer, e->cfg->heartbeat_interval_ms);
	e->lag_expected_us = now_monotonic_us() + LAG_TICK_US;
	arm_ms(e->lag_timer, LAG_TICK_US / 1000);
	arm_ms(e->depth_timer, 1000);
}

void engine_free(Engine *e)
{
	if (!e)
		return;
	dispatch_abort_all(e);
	db_free(e->db);
	db_free(e->mdb);
	db_free(e->fdb);
	event_free(e->retention_timer);
	event_free(e->group_timer);
	http_free(e->http);
	dispatch_free(e);
	event_free(e->flush_timer);
	event_free(e->poll_timer);
	event_free(e->heartbeat_timer);
	event_free(e->reaper_timer);
	event_free(e->lag_timer);
	event_free(e->depth_timer);
	for (int i = 0; i < e->nretired; i++)
		config_free(e->retired[i]);
	free(e->retired);
	free(e->retired_jobs);
	event_free(e->stop_timer);
	rec_free(&e->pending);
	rec_free(&e->flushing);
	free(e->routes_param);
	free(e->group_routes_param);
	free(e->group_conc_param);
	free(e->group_interval_param);
	free(e);
}

/*
 * SIGHUP with a valid new config.  Providers keep their breaker state and
 * take the new limits; jobs in flight keep the config generation they were
 * claimed under until they finish (then it is freed).  database and listen
 * need a restart.
 */
void engine_reload(Engine *e, Config *nc)
{
	Config *old = e->cfg;

	if (strcmp(old->database, nc->database) != 0)
		log_warn("reload: database changed; restart batchd for it to take effect");
	if ((old->listen == NULL) != (nc->listen == NULL) ||
	    (old->listen && strcmp(old->listen, nc->listen) != 0))
		log_warn("reload: listen changed; restart batchd for it to take effect");
	dispatch_reload(e, nc);
	if (e->cfg_jobs > 0) {
		e->retired = xrealloc(e->retired, (size_t)(e->nretired + 1) * sizeof(Config *));
		e->retired_jobs = xrealloc(e->retired_jobs, (size_t)(e->nretired + 1) * sizeof(int));
		e->retired[e->nretired] = old;
		e->retired_jobs[e->nretired] = e->cfg_jobs;
		e->nretired++;
	} else {
		config_free(old);
	}
	e->cfg = nc;
	e->cfg_jobs = 0;
	e->bd->cfg = nc;
	build_claim_params(e);
	e->resume_ok = false;   /* routes may have changed: next claim from the head */
	if (e->setup_done && send_sync_routes(e, reload_sync_done) < 0)
		log_warn("reload: database away; route hooks are recorded at reconnect");
	dispatch_wake_all(e);
	log_info("configuration reloaded: %d provider(s), %d route(s)", nc->nproviders,
		 nc->nroutes);
	wake(e);
}

int engine_breakers_open(const Engine *e)
{
	int n = 0;
	for (int i = 0; i < e->nprovs; i++)
		if (!e->provs[i]->removed && e->provs[i]->br.state != BR_CLOSED)
			n++;
	return n;
}

bool engine_is_ready(const Engine *e)
{
	return e->setup_done && db_is_ready(e->db);
}

bool engine_db_up(const Engine *e)
{
	return db_is_ready(e->db);
}

const char *engine_db_error(const Engine *e)
{
	return db_last_error(e->db);
}

void engine_get_stats(const Engine *e, EngineStats *out)
{
	*out = e->st;
	out->inflight = e->ntransfers;
	out->held = e->njobs;
	out->pending = e->pending.n + e->flushing.n;
}
