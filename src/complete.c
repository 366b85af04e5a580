/*
 * complete.c - buffer outcomes and write them in batches (see complete.h).
 *
 * A flush starts as soon as the connection is idle, at most one per
 * flush_interval unless flush_threshold outcomes are waiting, no item is
 * held (nothing else is coming: the end of a drain is written at once) or
 * it is forced: at a high rate each statement carries many outcomes (cheap
 * per item), at a low rate an outcome waits at most flush_interval.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_tree.h>

#include "batchd/complete.h"
#include "batchd/json.h"
#include "batchd/log.h"
#include "batchd/timer.h"
#include "batchd/provider.h"

/* Records: one JSON object each, flushed as one array. */
typedef struct RecList {
	char **v;
	int n;
	int cap;
} RecList;

struct Completer {
	Db *fdb;
	const char *worker_id;
	const CompleteHandlers *h;
	void *harg;
	int flush_size;
	int64_t flush_interval_ms;
	int max_inflight;
	bool enabled;
	RecList pending;
	RecList flushing;
	bool inflight;             /* flushing is out */
	bool isolate;              /* one record at a time until the bad one is found */
	struct event *timer;
	int64_t last_flush_us;
	RateMeter rate;            /* outcomes buffered per second */
	uint64_t flushes;
	uint64_t fenced;
};

static void flush_done(PGresult *res, void *arg);

/* ------------------------------------------------------------------ lists */

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

/* ---------------------------------------------------------------- records */

/* ,"provider":NAME,"tries":{"p":n,...}: the last provider and every try */
static void append_provider(StrBuf *sb, const Job *j)
{
	bool first = true;

	sb_puts(sb, ",\"provider\":");
	if (j->ps)
		json_append_string(sb, j->ps->name, strlen(j->ps->name));
	else
		sb_puts(sb, "null");
	sb_puts(sb, ",\"tries\":{");
	for (int i = 0; j->route && i < j->route->nproviders && i < MAX_ROUTE_PROVIDERS; i++) {
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

void complete_record(Completer *c, const Job *j, const char *status, long http_status,
		     const char *body, size_t blen, const char *error)
{
	StrBuf sb;
	char ts[40];

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
	append_provider(&sb, j);
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
	rec_push(&c->pending, sb_steal(&sb));
	rate_meter_add(&c->rate, 1, now_monotonic_us());
	sb_free(&sb);
}

void complete_requeue(Completer *c, const Job *j, int64_t delay_ms, const char *why)
{
	StrBuf sb;
	char ts[40];

	sb_init(&sb);
	sb_printf(&sb, "{\"id\":%lld,\"status\":\"queued\",\"error\":", (long long)j->id);
	json_append_string(&sb, why, strlen(why));
	append_provider(&sb, j);
	format_timestamp(now_realtime_us() + delay_ms * 1000, ts, sizeof(ts));
	sb_printf(&sb, ",\"run_after\":\"%s\"}", ts);
	rec_push(&c->pending, sb_steal(&sb));
	rate_meter_add(&c->rate, 1, now_monotonic_us());
	sb_free(&sb);
}

/* ------------------------------------------------------------------ flush */

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	complete_flush(arg, true);
}

/*
 * Outcomes waiting that start a flush without waiting for flush_interval:
 * flush_size, but at most half of the outcome buffer's bound (max_inflight
 * + claim_ahead, see the engine's claim_capacity).  Claims stop when the
 * buffer is full, so a larger threshold would leave them waiting for the
 * flush timer: with max_inflight 256 and flush_size 500, one flush of 256
 * per 20 ms, at most 12,800 items/s however fast the database.  At half,
 * one half is written while the other fills.
 *
 * And at least what arrives in FLUSH_SPACING_US at the current rate: at a
 * small max_inflight and a fast provider, half of max_inflight is a
 * statement and a commit per few items (a thousand commits a second at
 * max_inflight 10); a statement per FLUSH_SPACING_US of outcomes shares
 * them whatever max_inflight is, for at most that much delay.
 */
#define FLUSH_SPACING_US 15000

static int flush_threshold(const Completer *c)
{
	int half = c->max_inflight / 2, t, r;
	int bound_half = c->h->buffer_bound(c->harg) / 2;

	if (half < 1)
		half = 1;
	t = c->flush_size < half ? c->flush_size : half;
	r = (int)(c->rate.rate * FLUSH_SPACING_US / 1e6);
	if (r > bound_half)
		r = bound_half;
	if (r > c->flush_size)
		r = c->flush_size;
	return r > t ? r : t;
}

void complete_flush(Completer *c, bool force)
{
	StrBuf sb;
	int n;
	const char *params[2];
	int64_t now, due;

	if (c->inflight || c->pending.n == 0 || !c->enabled || !db_is_ready(c->fdb))
		return;
	now = now_monotonic_us();
	due = c->last_flush_us + c->flush_interval_ms * 1000;
	if (!force && c->pending.n < flush_threshold(c) && now < due &&
	    c->h->items_held(c->harg)) {
		if (!evtimer_pending(c->timer, NULL))
			timer_arm_ms(c->timer, (due - now) / 1000 + 1);
		return;
	}
	evtimer_del(c->timer);
	c->last_flush_us = now;

	n = c->isolate ? 1 : (c->pending.n < c->flush_size ? c->pending.n : c->flush_size);
	sb_init(&sb);
	sb_putc(&sb, '[');
	for (int i = 0; i < n; i++) {
		if (i)
			sb_putc(&sb, ',');
		sb_puts(&sb, c->pending.v[i]);
		rec_push(&c->flushing, c->pending.v[i]);
	}
	sb_putc(&sb, ']');
	memmove(c->pending.v, c->pending.v + n, (size_t)(c->pending.n - n) * sizeof(char *));
	c->pending.n -= n;

	params[0] = c->worker_id;
	params[1] = sb.data;
	if (db_query(c->fdb, "SELECT applied, fenced, finished FROM batchd.record_completions("
		     "$1::uuid, $2::jsonb)",
		     2, params, flush_done, c) < 0) {
		/* not connected: keep them for after the reconnect */
		rec_prepend(&c->pending, &c->flushing);
	} else {
		c->inflight = true;
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
	Completer *c = arg;
	int applied = 0;

	c->inflight = false;
	if (!res) {
		/* connection lost: retry after reconnect, same records */
		rec_prepend(&c->pending, &c->flushing);
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
				 c->flushing.n, err, state);
			rec_prepend(&c->pending, &c->flushing);
			if (!evtimer_pending(c->timer, NULL))
				timer_arm_ms(c->timer, 50 + random() % 200);
			return;
		}
		if (c->flushing.n > 1) {
			/* one bad record must not sink the others: go one by one */
			log_warn("flush of %d completions failed (%s); recording one at a time",
				 c->flushing.n, err);
			c->isolate = true;
			rec_prepend(&c->pending, &c->flushing);
		} else if (c->flushing.n == 1 && !strstr(c->flushing.v[0], "\"unstorable\":true")) {
			char *rec = record_unstorable(c->flushing.v[0], err);
			log_warn("completion refused by the database (%s); recording the item as failed", err);
			rec_clear(&c->flushing);
			rec_push(&c->flushing, rec);
			rec_prepend(&c->pending, &c->flushing);
		} else {
			log_error("could not record a completion, dropping it (the item stays running "
				  "until its lease is recovered): %s", err);
			rec_clear(&c->flushing);
		}
	} else {
		int fenced = atoi(PQgetvalue(res, 0, 1));
		applied = atoi(PQgetvalue(res, 0, 0));
		c->flushes++;
		c->fenced += (uint64_t)fenced;
		if (fenced > 0)
			log_warn("%d completion(s) discarded: items no longer running under this worker",
				 fenced);
		log_debug("flushed %d completions (%d applied, %d fenced)", c->flushing.n, applied, fenced);
		if (!PQgetisnull(res, 0, 2))
			log_batches_finished(PQgetvalue(res, 0, 2));
		rec_clear(&c->flushing);
		if (c->isolate && c->pending.n == 0)
			c->isolate = false;
	}
	c->h->flushed(applied, c->harg);
}

/* ----------------------------------------------------------------- public */

Completer *complete_new(struct event_base *base, Db *fdb, const char *worker_id,
			const Config *cfg, const CompleteHandlers *h, void *arg)
{
	Completer *c = xcalloc(1, sizeof(*c));

	c->fdb = fdb;
	c->worker_id = worker_id;
	c->h = h;
	c->harg = arg;
	c->timer = evtimer_new(base, timer_cb, c);
	complete_configure(c, cfg);
	return c;
}

void complete_free(Completer *c)
{
	if (!c)
		return;
	event_free(c->timer);
	rec_free(&c->pending);
	rec_free(&c->flushing);
	free(c);
}

void complete_configure(Completer *c, const Config *cfg)
{
	c->flush_size = cfg->flush_size;
	c->flush_interval_ms = cfg->flush_interval_ms;
	c->max_inflight = cfg->max_inflight;
}

void complete_enable(Completer *c)
{
	c->enabled = true;
}

bool complete_flushing(const Completer *c)
{
	return c->inflight;
}

int complete_pending(const Completer *c)
{
	return c->pending.n;
}

int complete_buffered(const Completer *c)
{
	return c->pending.n + c->flushing.n;
}

/* the next flush after one that ended: at once when enough are waiting, or
 * one record at a time while isolating */
bool complete_due(const Completer *c)
{
	return c->pending.n >= flush_threshold(c) || c->isolate;
}

void complete_append_ids(const Completer *c, StrBuf *sb, bool *first)
{
	for (int l = 0; l < 2; l++) {
		const RecList *rl = l ? &c->flushing : &c->pending;
		for (int i = 0; i < rl->n; i++) {
			/* every record starts with {"id":N */
			long long id = strtoll(rl->v[i] + 6, NULL, 10);
			sb_printf(sb, "%s%lld", *first ? "" : ",", id);
			*first = false;
		}
	}
}

uint64_t complete_flushes(const Completer *c)
{
	return c->flushes;
}

uint64_t complete_fenced(const Completer *c)
{
	return c->fenced;
}
