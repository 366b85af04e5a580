/*
 * engine.c - claim, dispatch, outcome and completion on one event loop.
 *
 * Capacity.  An item is "held" by this process from its claim until its
 * completion is recorded: while its transfer runs (ntransfers) and while its
 * completion waits in the buffer or in the flush statement (npending).  We
 * claim only up to max_inflight - held, so the completion buffer is bounded
 * by max_inflight too, also while the database is away.
 *
 * Statements.  A claim is one call of batchd.claim_items(); a flush is one
 * call of batchd.complete_items() with every buffered completion as a JSON
 * array; both run on the same connection in FIFO order, which is what makes
 * the graceful stop simple: flush, then deregister (which releases whatever
 * is still running under our worker id).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <curl/curl.h>
#include <yajl/yajl_tree.h>

#include "batchd/engine.h"
#include "batchd/db.h"
#include "batchd/http.h"
#include "batchd/json.h"
#include "batchd/log.h"
#include "batchd/migrate.h"
#include "batchd/tmpl.h"

#define HEARTBEAT_MS 5000
#define STOP_DB_GRACE_MS 10000

enum Outcome {
	OUT_SUCCESS,    /* 2xx */
	OUT_TRANSIENT,  /* may succeed later: timeouts, resets, 5xx, 408, 429 */
	OUT_PERMANENT,  /* will not: other 4xx, oversize, bad template */
};

enum StopPhase {
	STOP_NONE,
	STOP_DRAINING,  /* no claims; waiting for transfers */
	STOP_FLUSHING,  /* recording completions, then deregistering */
	STOP_DONE,
};

typedef struct Job {
	struct Job *prev, *next;   /* active transfers list */
	Engine *e;
	int64_t id;
	char batch_id[37];
	Route *route;
	Provider *provider;
	char *payload_text;
	yajl_val payload;
	int attempts;
	int max_attempts;
	int64_t started_us;        /* realtime, transfer start */
	CURL *easy;
	struct curl_slist *headers;
	StrBuf url;
	StrBuf body;
	StrBuf resp;
	int64_t max_size;
	bool too_big;
	char errbuf[CURL_ERROR_SIZE];
} Job;

/* Pending completions: one JSON object each, flushed as one array. */
typedef struct RecList {
	char **v;
	int n;
	int cap;
} RecList;

struct Engine {
	Batchd *bd;
	Config *cfg;
	Db *db;
	Http *http;

	bool setup_done;          /* schema checked, worker registered, LISTENing */
	bool ever_ready;
	bool claim_inflight;
	bool more_work;           /* the last claim was full, or we were woken */
	bool urgent;              /* woken by NOTIFY/poll: claim even a little */
	int claim_asked;          /* limit of the claim in flight */
	unsigned wake_seq;        /* bumped by every wake-up */
	unsigned claim_wake_seq;  /* wake_seq when the claim was sent */
	char *routes_param;       /* text[] literal of the routes we serve */

	Job *jobs;                /* active transfers */
	int ntransfers;

	RecList pending;          /* waiting to be flushed */
	RecList flushing;         /* in the flush statement now */
	bool flush_inflight;
	bool isolate;             /* a flush failed: record one at a time */

	struct event *flush_timer;
	struct event *poll_timer;
	struct event *heartbeat_timer;
	struct event *stop_timer;
	enum StopPhase stop;
	bool stop_immediate;

	EngineStats st;
};

static void engine_maybe_claim(Engine *e);
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

static void arm_ms(struct event *ev, int64_t ms)
{
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
	evtimer_add(ev, &tv);
}

static int held(const Engine *e)
{
	return e->ntransfers + e->pending.n + e->flushing.n;
}

/* ------------------------------------------------------------ completions */

/*
 * Append one completion record.  body may be NULL (no result).  Records are
 * JSON objects consumed by batchd.complete_items().
 */
static void record(Engine *e, Job *j, const char *status, long http_status,
		   const char *body, size_t blen, const char *error)
{
	StrBuf sb;
	char ts[40];

	sb_init(&sb);
	sb_printf(&sb, "{\"id\":%lld,\"status\":\"%s\",\"http_status\":", (long long)j->id, status);
	if (http_status > 0)
		sb_printf(&sb, "%ld", http_status);
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
	if (j->provider)
		json_append_string(&sb, j->provider->name, strlen(j->provider->name));
	else
		sb_puts(&sb, "null");
	if (j->started_us) {
		format_timestamp(j->started_us, ts, sizeof(ts));
		sb_printf(&sb, ",\"started_at\":\"%s\"", ts);
	}
	format_timestamp(now_realtime_us(), ts, sizeof(ts));
	sb_printf(&sb, ",\"finished_at\":\"%s\"}", ts);

	if (strcmp(status, "succeeded") == 0)
		e->st.succeeded++;
	else
		e->st.failed++;
	rec_push(&e->pending, sb_steal(&sb));
	sb_free(&sb);
	log_debug("item %lld %s%s%s", (long long)j->id, status, error ? ": " : "", error ? error : "");
}

static void flush_done(PGresult *res, void *arg);

static void flush_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	engine_maybe_flush(arg, true);
}

/*
 * Send buffered completions.  Without force we wait for flush_size records
 * or the flush timer, except when no transfer is running (nothing more is
 * coming soon, so waiting would only add latency).
 */
static void engine_maybe_flush(Engine *e, bool force)
{
	StrBuf sb;
	int n;
	const char *params[2];

	if (e->flush_inflight || e->pending.n == 0 || !e->setup_done)
		return;
	if (!force && e->pending.n < e->cfg->flush_size && e->ntransfers > 0) {
		if (!evtimer_pending(e->flush_timer, NULL))
			arm_ms(e->flush_timer, e->cfg->flush_interval_ms);
		return;
	}
	evtimer_del(e->flush_timer);

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
	if (db_query(e->db, "SELECT applied, fenced FROM batchd.complete_items($1::uuid, $2::jsonb)",
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
		rec_clear(&e->flushing);
		if (e->isolate && e->pending.n == 0)
			e->isolate = false;
	}
	if (e->stop == STOP_FLUSHING) {
		stop_progress(e);
		return;
	}
	engine_maybe_flush(e, e->pending.n >= e->cfg->flush_size || e->isolate);
	engine_maybe_claim(e);
}

/* --------------------------------------------------------------- outcomes */

static void job_free(Engine *e, Job *j)
{
	if (j->easy)
		http_easy_release(e->http, j->easy);
	curl_slist_free_all(j->headers);
	sb_free(&j->url);
	sb_free(&j->body);
	sb_free(&j->resp);
	yajl_tree_free(j->payload);
	free(j->payload_text);
	free(j);
}

static void job_unlink(Engine *e, Job *j)
{
	if (j->prev)
		j->prev->next = j->next;
	else
		e->jobs = j->next;
	if (j->next)
		j->next->prev = j->prev;
	j->prev = j->next = NULL;
	e->ntransfers--;
}

/* One line of the body for an error text: printable ASCII, at most n bytes. */
static void body_snippet(const char *body, size_t len, char *out, size_t n)
{
	size_t o = 0;
	for (size_t i = 0; i < len && o + 1 < n; i++) {
		unsigned char c = (unsigned char)body[i];
		out[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : ' ';
	}
	out[o] = '\0';
}

/*
 * Decide what happens to a finished item.  Retries, backoff, breakers and
 * failover hook in here: for now transient and permanent outcomes both end
 * the item as failed.
 */
static void job_outcome(Engine *e, Job *j, enum Outcome out, long status, const char *error)
{
	switch (out) {
	case OUT_SUCCESS:
		record(e, j, "succeeded", status, j->resp.data, j->resp.len, NULL);
		break;
	case OUT_TRANSIENT:
	case OUT_PERMANENT:
		record(e, j, "failed", status, j->resp.data, j->resp.len, error);
		break;
	}
}

static enum Outcome classify_status(long status)
{
	if (status >= 200 && status < 300)
		return OUT_SUCCESS;
	if (status >= 500 || status == 408 || status == 429)
		return OUT_TRANSIENT;
	return OUT_PERMANENT;
}

static void transfer_done(CURL *easy, CURLcode code, void *priv, void *arg)
{
	Engine *e = arg;
	Job *j = priv;
	long status = 0;
	char err[512];

	job_unlink(e, j);
	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);

	if (code == CURLE_OK) {
		enum Outcome out = classify_status(status);
		if (out == OUT_SUCCESS) {
			job_outcome(e, j, out, status, NULL);
		} else {
			char snip[201];
			body_snippet(j->resp.data ? j->resp.data : "", j->resp.len, snip, sizeof(snip));
			if (snip[0])
				snprintf(err, sizeof(err), "HTTP %ld from %s: %s", status, j->provider->name, snip);
			else
				snprintf(err, sizeof(err), "HTTP %ld from %s", status, j->provider->name);
			job_outcome(e, j, out, status, err);
		}
	} else if (j->too_big || code == CURLE_FILESIZE_EXCEEDED) {
		snprintf(err, sizeof(err), "response larger than max_response_size (%lld bytes) from %s",
			 (long long)j->max_size, j->provider->name);
		/* the partial body is not a result */
		sb_reset(&j->resp);
		j->resp.len = 0;
		job_outcome(e, j, OUT_PERMANENT, status, err);
	} else {
		const char *detail = j->errbuf[0] ? j->errbuf : curl_easy_strerror(code);
		if (code == CURLE_OPERATION_TIMEDOUT)
			snprintf(err, sizeof(err), "timeout after %lld ms calling %s: %s",
				 (long long)j->provider->timeout_ms, j->provider->name, detail);
		else
			snprintf(err, sizeof(err), "request to %s failed: %s", j->provider->name, detail);
		sb_reset(&j->resp);
		job_outcome(e, j, OUT_TRANSIENT, 0, err);
	}
	job_free(e, j);

	if (e->stop == STOP_DRAINING) {
		stop_progress(e);
		return;
	}
	engine_maybe_flush(e, false);
	engine_maybe_claim(e);
}

/* ---------------------------------------------------------------- dispatch */

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
	Job *j = ud;
	size_t n = size * nmemb;

	if ((int64_t)(j->resp.len + n) > j->max_size) {
		j->too_big = true;
		return 0;  /* CURLE_WRITE_ERROR */
	}
	sb_append(&j->resp, ptr, n);
	return n;
}

/* Fail an item before any request was made (bad template, bad payload). */
static void job_fail_early(Engine *e, Job *j, const char *error)
{
	record(e, j, "failed", 0, NULL, 0, error);
	job_free(e, j);
}

static bool has_header(const Provider *p, const char *name)
{
	size_t n = strlen(name);
	for (int i = 0; i < p->nheaders; i++)
		if (strncasecmp(p->headers[i], name, n) == 0 && p->headers[i][n] == ':')
			return true;
	return false;
}

static int job_prepare(Engine *e, Job *j, char *err, size_t errlen)
{
	Provider *p = j->provider;
	CURL *c;

	if (tmpl_render(p->url, j->payload, TMPL_URL, &j->url, err, errlen) < 0)
		return -1;
	for (int i = 0; i < p->nheaders; i++) {
		StrBuf h;
		sb_init(&h);
		if (tmpl_render(p->headers[i], j->payload, TMPL_HEADER, &h, err, errlen) < 0) {
			sb_free(&h);
			return -1;
		}
		j->headers = curl_slist_append(j->headers, h.data);
		sb_free(&h);
	}
	if (p->body) {
		if (tmpl_render(p->body, j->payload, TMPL_JSON, &j->body, err, errlen) < 0)
			return -1;
	} else if (strcmp(p->method, "GET") != 0 && strcmp(p->method, "DELETE") != 0) {
		sb_puts(&j->body, j->payload_text);
	}
	if (j->body.len > 0 && !has_header(p, "Content-Type"))
		j->headers = curl_slist_append(j->headers, "Content-Type: application/json");
	/* no "Expect: 100-continue" round trip on larger bodies */
	j->headers = curl_slist_append(j->headers, "Expect:");

	c = j->easy = http_easy_get(e->http);
	curl_easy_setopt(c, CURLOPT_URL, j->url.data);
	curl_easy_setopt(c, CURLOPT_PRIVATE, j);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, j->errbuf);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, j);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)p->timeout_ms);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)p->connect_timeout_ms);
	curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)p->max_response_size);
	curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, "");
	curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "batchd/" PACKAGE_VERSION);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, j->headers);
	if (strcmp(p->method, "GET") == 0) {
		curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
	} else {
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, p->method);
		if (j->body.len > 0 || strcmp(p->method, "DELETE") != 0) {
			curl_easy_setopt(c, CURLOPT_POSTFIELDS, j->body.data ? j->body.data : "");
			curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)j->body.len);
		}
	}
	j->max_size = p->max_response_size;
	return 0;
}

static void dispatch(Engine *e, Job *j)
{
	char err[512];

	if (job_prepare(e, j, err, sizeof(err)) < 0) {
		job_fail_early(e, j, err);
		return;
	}
	j->started_us = now_realtime_us();
	if (http_start(e->http, j->easy) < 0) {
		job_fail_early(e, j, "could not start the transfer");
		return;
	}
	j->next = e->jobs;
	if (e->jobs)
		e->jobs->prev = j;
	e->jobs = j;
	e->ntransfers++;
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
		log_debug("claimed %d item(s)", n);
	/* a full claim means there is probably more; so does a NOTIFY that
	 * arrived while the claim was running */
	e->more_work = n >= e->claim_asked || e->wake_seq != e->claim_wake_seq;
	if (e->stop != STOP_NONE) {
		/* claimed during stop: deregister releases them, untouched */
		return;
	}
	for (int i = 0; i < n; i++) {
		Job *j = xcalloc(1, sizeof(*j));
		char perr[256];
		const char *route = PQgetvalue(res, i, 2);

		j->e = e;
		j->id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
		snprintf(j->batch_id, sizeof(j->batch_id), "%s", PQgetvalue(res, i, 1));
		j->payload_text = xstrdup(PQgetvalue(res, i, 3));
		j->attempts = atoi(PQgetvalue(res, i, 4));
		j->max_attempts = atoi(PQgetvalue(res, i, 5));
		sb_init(&j->url);
		sb_init(&j->body);
		sb_init(&j->resp);
		j->route = config_find_route(e->cfg, route);
		if (!j->route) {
			/* cannot happen: we claim only our routes */
			job_fail_early(e, j, "route not configured on this worker");
			continue;
		}
		j->provider = j->route->providers[0];
		j->payload = yajl_tree_parse(j->payload_text, perr, sizeof(perr));
		if (!j->payload) {
			job_fail_early(e, j, "payload is not valid JSON");
			continue;
		}
		dispatch(e, j);
	}
	engine_maybe_flush(e, false);
	engine_maybe_claim(e);
}

static void engine_maybe_claim(Engine *e)
{
	int cap, threshold;
	char limit[16];
	const char *params[3];

	if (!e->setup_done || e->claim_inflight || e->stop != STOP_NONE || !e->more_work)
		return;
	cap = e->cfg->max_inflight - held(e);
	if (cap <= 0)
		return;
	/* batch small claims unless woken up or idle */
	threshold = e->cfg->max_inflight / 4;
	if (threshold > 100)
		threshold = 100;
	if (threshold < 1)
		threshold = 1;
	if (cap < threshold && !e->urgent && held(e) > 0)
		return;
	if (cap > 1000)
		cap = 1000;
	snprintf(limit, sizeof(limit), "%d", cap);
	params[0] = e->bd->worker_id;
	params[1] = e->routes_param;
	params[2] = limit;
	if (db_query(e->db, "SELECT id, batch_id, route, payload, attempts, max_attempts "
		     "FROM batchd.claim_items($1::uuid, $2::text[], $3::int)",
		     3, params, claim_done, e) < 0)
		return;
	e->claim_inflight = true;
	e->claim_asked = cap;
	e->claim_wake_seq = e->wake_seq;
	e->urgent = false;
}

static void wake(Engine *e)
{
	e->more_work = true;
	e->urgent = true;
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
	if (strcmp(channel, "batchd_work") == 0 && (!payload || !*payload || serves_route(e, payload)))
		wake(e);
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
	if (db_query(e->db, "LISTEN batchd_work", 0, NULL, setup_listen_done, e) < 0)
		return;
}

static void setup_version_done(PGresult *res, void *arg)
{
	Engine *e = arg;
	char msg[600];
	char pid[16];
	const char *params[4];
	int have, want = migrate_latest_version();

	if (!res)
		return;
	if (!db_result_ok(res)) {
		if (strcmp(db_result_sqlstate(res), "42P01") == 0 ||
		    strcmp(db_result_sqlstate(res), "3F000") == 0)
			snprintf(msg, sizeof(msg), "the batchd schema is not installed in this database: "
				 "run 'batchd migrate' first");
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
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	params[0] = e->bd->worker_id;
	params[1] = e->bd->hostname;
	params[2] = pid;
	params[3] = PACKAGE_VERSION;
	if (db_query(e->db, "SELECT batchd.register_worker($1::uuid, $2, $3::int, $4)",
		     4, params, setup_register_done, e) < 0)
		return;
}

static void on_connect(Db *db, void *arg)
{
	Engine *e = arg;
	e->setup_done = false;
	if (db_query(db, "SELECT coalesce(max(version), 0) FROM batchd.schema_migrations",
		     0, NULL, setup_version_done, e) < 0)
		return;
}

static void on_disconnect(Db *db, void *arg)
{
	Engine *e = arg;
	e->setup_done = false;
	e->claim_inflight = false;
	e->flush_inflight = false;
	log_warn("database unavailable: %d transfer(s) continue, %d completion(s) buffered",
		 e->ntransfers, e->pending.n);
}

/* --------------------------------------------------------------- heartbeat */

static void heartbeat_done(PGresult *res, void *arg)
{
	Engine *e = arg;
	if (!res || !db_result_ok(res))
		return;
	if (strcmp(PQgetvalue(res, 0, 0), "f") == 0 && e->stop == STOP_NONE) {
		/* our row is gone (another worker reaped us): register again */
		char pid[16];
		const char *params[4];
		log_warn("worker row missing at heartbeat: registering again");
		snprintf(pid, sizeof(pid), "%d", (int)getpid());
		params[0] = e->bd->worker_id;
		params[1] = e->bd->hostname;
		params[2] = pid;
		params[3] = PACKAGE_VERSION;
		if (db_query(e->db, "SELECT batchd.register_worker($1::uuid, $2, $3::int, $4)",
			     4, params, NULL, NULL) < 0)
			return;
	}
}

static void heartbeat_cb(evutil_socket_t fd, short what, void *arg)
{
	Engine *e = arg;
	char n[16];
	const char *params[2];

	arm_ms(e->heartbeat_timer, HEARTBEAT_MS);
	if (!e->setup_done)
		return;
	snprintf(n, sizeof(n), "%d", e->ntransfers);
	params[0] = e->bd->worker_id;
	params[1] = n;
	if (db_query(e->db, "SELECT batchd.heartbeat($1::uuid, $2::int)", 2, params,
		     heartbeat_done, e) < 0)
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
	batchd_engine_stopped(e->bd, db_result_ok(res) ? 0 : 1);
}

static void abort_transfers(Engine *e)
{
	while (e->jobs) {
		Job *j = e->jobs;
		job_unlink(e, j);
		http_abort(e->http, j->easy);
		job_free(e, j);
	}
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
	if (!e->setup_done || e->flush_inflight)
		return;   /* wait for the connection or the flush in progress */
	if (e->pending.n > 0) {
		engine_maybe_flush(e, true);
		if (e->flush_inflight)
			return;
	}
	if (e->pending.n > 0)
		return;
	params[0] = e->bd->worker_id;
	if (db_query(e->db, "SELECT batchd.deregister_worker($1::uuid)", 1, params,
		     deregister_done, e) == 0)
		e->flush_inflight = true;  /* blocks re-entry until deregister_done */
}

static void stop_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	Engine *e = arg;

	if (e->stop == STOP_DRAINING) {
		log_warn("shutdown_timeout reached: abandoning %d transfer(s); their items go "
			 "back to the queue", e->ntransfers);
		abort_transfers(e);
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
	evtimer_del(e->poll_timer);
	evtimer_del(e->heartbeat_timer);
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
			abort_transfers(e);
			e->stop = STOP_DRAINING;
		}
		stop_progress(e);
		return;
	}
	e->stop = STOP_DRAINING;
	log_info("stopping: no new claims; waiting up to %lld ms for %d transfer(s)",
		 (long long)e->cfg->shutdown_timeout_ms, e->ntransfers);
	arm_ms(e->stop_timer, e->cfg->shutdown_timeout_ms);
	stop_progress(e);
}

/* ------------------------------------------------------------------ public */

Engine *engine_new(Batchd *bd)
{
	static const DbHandlers handlers = { on_connect, on_disconnect, on_notify };
	Engine *e = xcalloc(1, sizeof(*e));
	StrBuf r;

	e->bd = bd;
	e->cfg = bd->cfg;
	e->db = db_new(bd->base, bd->cfg->database, "db", &handlers, e);
	e->http = http_new(bd->base, bd->cfg->max_inflight, transfer_done, e);
	e->flush_timer = evtimer_new(bd->base, flush_timer_cb, e);
	e->poll_timer = evtimer_new(bd->base, poll_timer_cb, e);
	e->heartbeat_timer = evtimer_new(bd->base, heartbeat_cb, e);
	e->stop_timer = evtimer_new(bd->base, stop_timer_cb, e);

	/* text[] literal of our routes, each element quoted */
	sb_init(&r);
	sb_putc(&r, '{');
	for (int i = 0; i < bd->cfg->nroutes; i++) {
		if (i)
			sb_putc(&r, ',');
		sb_putc(&r, '"');
		for (const char *p = bd->cfg->routes[i]->name; *p; p++) {
			if (*p == '"' || *p == '\\')
				sb_putc(&r, '\\');
			sb_putc(&r, *p);
		}
		sb_putc(&r, '"');
	}
	sb_putc(&r, '}');
	e->routes_param = sb_steal(&r);
	sb_free(&r);
	return e;
}

void engine_start(Engine *e)
{
	db_start(e->db);
	arm_ms(e->poll_timer, e->cfg->poll_interval_ms);
	arm_ms(e->heartbeat_timer, HEARTBEAT_MS);
}

void engine_free(Engine *e)
{
	if (!e)
		return;
	abort_transfers(e);
	db_free(e->db);
	http_free(e->http);
	event_free(e->flush_timer);
	event_free(e->poll_timer);
	event_free(e->heartbeat_timer);
	event_free(e->stop_timer);
	rec_free(&e->pending);
	rec_free(&e->flushing);
	free(e->routes_param);
	free(e);
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
	out->pending = e->pending.n + e->flushing.n;
}
