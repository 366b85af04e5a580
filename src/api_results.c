/*
 * api_results.c - GET /v1/batches/{id}/results: every item as NDJSON,
 * chunked.  Each stream gets a database connection of its own (capped:
 * API_MAX_STREAMS, then 503) holding a read-only REPEATABLE READ
 * transaction with a cursor; rows are FETCHed a bounded number at a time,
 * sent as one chunk, and the next FETCH is sent only when evhttp reports the
 * chunk written to the socket, so memory is bounded by one chunk whatever
 * the batch size.  A lost database connection mid-stream aborts the HTTP
 * connection, so the client sees a truncated chunked body, never a short
 * but well-formed one.  Closed stream connections are freed from reap_ev,
 * outside their own callbacks.
 */
#include <stdio.h>
#include <stdlib.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "batchd/api_req.h"
#include "batchd/log.h"

#define STREAM_FETCH_MAX 500        /* rows per FETCH */
#define STREAM_CHUNK_TARGET (2 * 1024 * 1024) /* bytes per chunk we aim at */
#define STREAM_CONNECT_MS 5000      /* a stream's connection must be up by then */

static void reap_cb(evutil_socket_t fd, short what, void *arg)
{
	Api *api = arg;

	while (api->dead) {
		DeadDb *d = api->dead;
		api->dead = d->next;
		db_free(d->db);
		free(d);
	}
}

/* Stop the stream's database side: no more callbacks act on it.  Safe inside
 * the stream connection's own callbacks (the Db is freed later, by reap_ev). */
void results_stop(Req *r)
{
	Api *api = r->api;

	if (r->sstate == ST_STOPPED || r->sstate == ST_NONE)
		return;
	r->sstate = ST_STOPPED;
	if (r->stimer)
		evtimer_del(r->stimer);
	if (r->sdb) {
		DeadDb *d = xcalloc(1, sizeof(*d));
		db_close(r->sdb);       /* callbacks due run now, with NULL: ignored */
		d->db = r->sdb;
		d->next = api->dead;
		api->dead = d;
		r->sdb = NULL;
		api->nstreams--;
		event_active(api->reap_ev, EV_TIMEOUT, 0);
	}
}

/* Cut the client's connection mid-body (deferred: may run inside evhttp). */
static void stream_abort_cb(evutil_socket_t fd, short what, void *arg)
{
	Req *r = arg;

	if (r->req && !r->gone) {
		struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
		if (evcon) {
			evhttp_connection_set_closecb(evcon, NULL, NULL);
			r->req = NULL;  /* freed with the connection */
			evhttp_connection_free(evcon);
		}
	}
	req_drop(r);
}

static void stream_fail(Req *r, const char *why)
{
	bool sent = r->headers_sent;

	log_warn("api: results stream of batch %s failed after %llu item(s): %s", r->id,
		 (unsigned long long)r->rows_sent, why);
	results_stop(r);
	if (!sent) {
		reply_error(r, 503, "database unavailable: %s", why);
		return;
	}
	/* headers are out: break the connection so that the client sees a
	 * truncated body, not a complete-looking short one */
	event_free(r->stimer);
	r->stimer = evtimer_new(r->api->bd->base, stream_abort_cb, r);
	event_active(r->stimer, EV_TIMEOUT, 0);
}

static void stream_fetch(Req *r);

static void stream_chunk_sent(struct evhttp_connection *evcon, void *arg)
{
	Req *r = arg;

	if (r->sstate != ST_SENDING)
		return;
	stream_fetch(r);
}

static void free_chunk(const void *data, size_t len, void *arg)
{
	free((void *)data);
}

static void stream_on_rows(PGresult *res, void *arg)
{
	Req *r = arg;
	struct evbuffer *buf;
	StrBuf chunk;
	size_t bytes;
	int n;

	r->busy--;
	if (r->sstate == ST_STOPPED)
		return;
	if (!db_result_ok(res)) {
		stream_fail(r, db_result_error(res));
		return;
	}
	if (!r->headers_sent) {
		struct evkeyvalq *out = evhttp_request_get_output_headers(r->req);
		evhttp_add_header(out, "Content-Type", "application/x-ndjson");
		evhttp_add_header(out, "Cache-Control", "no-store");
		evhttp_send_reply_start(r->req, 200, NULL);
		r->headers_sent = true;
	}
	n = PQntuples(res);
	if (n == 0) {
		struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
		results_stop(r);
		if (evcon)
			evhttp_connection_set_closecb(evcon, NULL, NULL);
		evhttp_send_reply_end(r->req);
		r->req = NULL;
		log_debug("api: results of batch %s: %llu item(s) streamed", r->id,
			  (unsigned long long)r->rows_sent);
		req_drop(r);
		return;
	}
	/* one buffer for the whole chunk, handed to evbuffer without a copy */
	sb_init(&chunk);
	for (int i = 0; i < n; i++) {
		api_render_row(&chunk, res, i, 0, api_item_cols, api_item_ncols);
		sb_putc(&chunk, '\n');
	}
	bytes = chunk.len;
	buf = evbuffer_new();
	evbuffer_add_reference(buf, chunk.data, chunk.len, free_chunk, NULL);
	r->rows_sent += (uint64_t)n;
	/* aim at STREAM_CHUNK_TARGET bytes per chunk whatever the row size */
	r->fetch_rows = (int)((double)STREAM_CHUNK_TARGET / ((double)bytes / n));
	if (r->fetch_rows < 1)
		r->fetch_rows = 1;
	if (r->fetch_rows > STREAM_FETCH_MAX)
		r->fetch_rows = STREAM_FETCH_MAX;
	r->sstate = ST_SENDING;
	evhttp_send_reply_chunk_with_cb(r->req, buf, stream_chunk_sent, r);
	evbuffer_free(buf);
}

/* Queue a query on the stream's connection; the callback is counted first
 * (a send that fails at once calls it inside db_query).  0 or -1. */
static int stream_query(Req *r, const char *sql, int n, const char *const *params,
			db_result_cb cb)
{
	r->busy++;
	if (db_query(r->sdb, sql, n, params, cb, r) < 0) {
		r->busy--;
		return -1;
	}
	return 0;
}

static void stream_fetch(Req *r)
{
	char sql[64];

	snprintf(sql, sizeof(sql), "FETCH %d FROM results", r->fetch_rows);
	r->sstate = ST_FETCHING;
	if (stream_query(r, sql, 0, NULL, stream_on_rows) < 0 && r->sstate != ST_STOPPED) {
		/* may run inside evhttp's write callback: stream_fail defers the cut */
		stream_fail(r, db_last_error(r->sdb));
	}
}

static void stream_on_setup(PGresult *res, void *arg)
{
	Req *r = arg;

	r->busy--;
	if (r->sstate == ST_STOPPED)
		return;
	if (!db_result_ok(res))
		stream_fail(r, db_result_error(res));
}

static void stream_on_connect(Db *db, void *arg)
{
	Req *r = arg;
	const char *params[2] = { r->id, r->tenant };

	if (r->sstate != ST_CONNECTING)
		return;
	evtimer_del(r->stimer);
	if (db_query(db, "SET application_name = 'batchd api stream'", 0, NULL, NULL, NULL) < 0)
		return;
	/* The cursor's snapshot makes the stream one consistent picture.  A
	 * failure fails the stream through the callbacks (or, if the connection
	 * broke, through stream_on_disconnect). */
	if (stream_query(r, "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", 0, NULL,
			 stream_on_setup) < 0 || r->sstate != ST_CONNECTING)
		return;
	if (stream_query(r, "SET LOCAL idle_in_transaction_session_timeout = '10min'", 0, NULL,
			 stream_on_setup) < 0 || r->sstate != ST_CONNECTING)
		return;
	if (stream_query(r, "DECLARE results NO SCROLL CURSOR FOR SELECT " ITEM_COLS
			 " FROM batchd.items AS i WHERE i.batch_id = $1::uuid AND EXISTS "
			 "(SELECT 1 FROM batchd.batches AS b WHERE b.id = $1::uuid AND b.tenant = $2) "
			 "ORDER BY i.seq", 2, params, stream_on_setup) < 0 ||
	    r->sstate != ST_CONNECTING)
		return;
	stream_fetch(r);
}

static void stream_on_disconnect(Db *db, void *arg)
{
	Req *r = arg;

	/* the queries' callbacks have failed the stream already; just make sure
	 * this connection does not reconnect */
	if (r->sstate != ST_STOPPED)
		stream_fail(r, "database connection lost");
}

static void stream_connect_timeout(evutil_socket_t fd, short what, void *arg)
{
	Req *r = arg;
	char why[300];

	snprintf(why, sizeof(why), "no database connection for the stream within %d ms (%s)",
		 STREAM_CONNECT_MS, r->sdb ? db_last_error(r->sdb) : "closed");
	stream_fail(r, why);
}

static void step_results(Req *r, PGresult *res)
{
	static const DbHandlers handlers = { stream_on_connect, stream_on_disconnect, NULL };
	Api *api = r->api;
	struct timeval tv = { STREAM_CONNECT_MS / 1000, (STREAM_CONNECT_MS % 1000) * 1000 };

	if (!req_batch_found(r, res))
		return;
	if (r->head) {
		evhttp_add_header(evhttp_request_get_output_headers(r->req), "Content-Type",
				  "application/x-ndjson");
		req_send(r, 200, NULL);
		return;
	}
	if (api->nstreams >= API_MAX_STREAMS) {
		reply_error(r, 503, "too many results streams at once (%d); try again later",
			    API_MAX_STREAMS);
		return;
	}
	api->nstreams++;
	r->sstate = ST_CONNECTING;
	r->fetch_rows = STREAM_FETCH_MAX;
	r->sdb = db_new(api->bd->base, api->bd->cfg->database, "api-stream", &handlers, r);
	r->stimer = evtimer_new(api->bd->base, stream_connect_timeout, r);
	evtimer_add(r->stimer, &tv);
	db_start(r->sdb);
}

void ep_results(Req *r)
{
	const char *params[2] = { r->id, r->tenant };
	req_query(r, false, "SELECT 1 FROM batchd.batches WHERE id = $1::uuid AND tenant = $2",
		  2, params, step_results);
}

void results_init(Api *api)
{
	api->reap_ev = event_new(api->bd->base, -1, 0, reap_cb, api);
}

/* After every stream is stopped: free the closed connections. */
void results_free(Api *api)
{
	reap_cb(-1, 0, api);
	event_free(api->reap_ev);
}
