/*
 * api.c - the REST API (evhttp) on the main loop: the server and its routes.
 *
 *   GET  /healthz, /readyz                    no token
 *   POST /v1/batches                          submit (Idempotency-Key)
 *   GET  /v1/batches?status=&limit=&cursor=   list, newest first, keyset pages
 *   GET  /v1/batches/{id}                     one batch
 *   GET  /v1/batches/{id}/progress            counts, state, rate over 15 s, eta
 *   GET  /v1/batches/{id}/items?status=&limit=&cursor=
 *   GET  /v1/batches/{id}/events?limit=&cursor=
 *   GET  /v1/batches/{id}/results             every item as NDJSON, chunked
 *   POST /v1/batches/{id}/cancel | /retry
 *   DELETE /v1/batches/{id}
 *   GET  /v1/status                           this worker, the fleet, the database
 *
 * Requests.  Each request gets a Req that lives until its answer is sent
 * AND no database callback naming it is due.  Everything that may take time
 * goes through the asynchronous Db layer, on a small pool of connections of
 * our own (the API never queues behind the engine's claims and flushes).
 * A request runs as a chain of steps, each one query: authenticate (the
 * SHA-256 of the bearer token is looked up; tokens are not cached, so a
 * revocation takes effect on the next request), then the endpoint's query,
 * sometimes a follow-up on the same connection (cancel, then read the batch).
 *
 * Clients that go away.  libevent 2.1 does not free a request whose answer
 * we have not sent when its connection fails (EOF, timeout, write error): it
 * detaches it (evhttp_request_get_connection() becomes NULL) and frees the
 * connection, calling its close callback.  From then on the request is ours
 * to free.  The close callback marks the Req gone; the next step of the
 * chain (the query callback, always due while the Req is busy) frees the
 * request instead of answering.  The one case where evhttp frees a pending
 * request itself is evhttp_free() at shutdown: the close callback sees the
 * request still attached and forgets it.  We clear the close callback when
 * we send the final answer, as evhttp owns the request from then on.
 *
 * Results streams (api_results.c).  Each GET .../results gets a connection
 * of its own holding a read-only transaction with a cursor, and sends the
 * next chunk only when the previous one is written: memory is bounded by one
 * chunk whatever the batch size.
 *
 * Bodies.  POST /v1/batches is validated in C by yajl's event parser
 * (api_submit.c: types, ranges, unknown or duplicate fields, nesting depth,
 * no tree, so memory stays linear in the body) and then stored by ONE
 * statement, batchd.api_submit(), which validates again (SQLSTATE 22023 ->
 * 400) and inserts all items in one INSERT ... SELECT; any error rolls the
 * whole statement back.  Bodies over max_body_size are refused by evhttp
 * itself (see api_new; api_req.c replaces libevent's HTML error page).
 *
 * Files.  This one is the server: setup, the route table (path, methods,
 * handler), query-string checks and authentication.  api_req.c: the
 * request lifecycle, answers and the connection pool; api_batches.c: the
 * batch endpoints; api_submit.c: the submit validator; api_results.c: the
 * results streams; api_status.c: /v1/status, /healthz, /readyz.  They share
 * include/batchd/api_req.h.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "batchd/api.h"
#include "batchd/api_req.h"
#include "batchd/base64url.h"
#include "batchd/json.h"
#include "batchd/log.h"
#include "batchd/sha256.h"
#include "batchd/status.h"

#define API_TIMEOUT_S 60            /* idle read/write on a client connection */
#define API_MAX_HEADERS (64 * 1024) /* request line + headers */
#define API_TOKEN_MAX 512

/* ================================================================ routes */

enum RouteFlags {
	RT_ID = 1,          /* the path has a batch {id} */
	RT_PAGED = 2,       /* status, limit and cursor query parameters */
	RT_BODY = 4,        /* an optional body, which must be JSON */
};

#define M_GET (EVHTTP_REQ_GET | EVHTTP_REQ_HEAD)

/*
 * The route table, indexed by enum Endpoint.  "{id}" in a path matches one
 * non-empty path segment.  A path that matches with another method gets
 * 405, its Allow header naming the methods of every route of that path in
 * table order.
 */
typedef struct ApiRoute {
	const char *path;
	unsigned methods;           /* EVHTTP_REQ_* */
	unsigned flags;             /* RT_* */
	void (*handler)(Req *r);
} ApiRoute;

static const ApiRoute routes[] = {
	[EP_LIST] = { "/v1/batches", M_GET, RT_PAGED, ep_list },
	[EP_SUBMIT] = { "/v1/batches", EVHTTP_REQ_POST, 0, ep_submit },
	[EP_GET] = { "/v1/batches/{id}", M_GET, RT_ID, ep_get },
	[EP_DELETE] = { "/v1/batches/{id}", EVHTTP_REQ_DELETE, RT_ID, ep_state_change },
	[EP_PROGRESS] = { "/v1/batches/{id}/progress", M_GET, RT_ID, ep_progress },
	[EP_ITEMS] = { "/v1/batches/{id}/items", M_GET, RT_ID | RT_PAGED, ep_items },
	[EP_RESULTS] = { "/v1/batches/{id}/results", M_GET, RT_ID, ep_results },
	[EP_CANCEL] = { "/v1/batches/{id}/cancel", EVHTTP_REQ_POST, RT_ID | RT_BODY,
			ep_state_change },
	[EP_RETRY] = { "/v1/batches/{id}/retry", EVHTTP_REQ_POST, RT_ID | RT_BODY,
		       ep_state_change },
	[EP_STATUS] = { "/v1/status", M_GET, 0, ep_status },
	[EP_EVENTS] = { "/v1/batches/{id}/events", M_GET, RT_ID | RT_PAGED, ep_events },
};

/* Does path match pat?  A "{id}" segment goes to r->idseg (emptied, with
 * idseg_long, when it does not fit). */
static bool path_match(Req *r, const char *pat, const char *path)
{
	while (*pat) {
		if (strncmp(pat, "{id}", 4) == 0) {
			size_t n = strcspn(path, "/");

			if (n == 0)
				return false;
			r->idseg_long = n >= sizeof(r->idseg);
			if (r->idseg_long)
				n = 0;
			memcpy(r->idseg, path, n);
			r->idseg[n] = '\0';
			pat += 4;
			path += strcspn(path, "/");
		} else if (*pat++ != *path++) {
			return false;
		}
	}
	return *path == '\0';
}

/* Find the route of the path and method (r->ep); answers 404 or 405 and
 * returns -1 when there is none. */
static int route_request(Req *r, const char *path, enum evhttp_cmd_type m)
{
	static const struct { unsigned method; const char *name; } names[] = {
		{ EVHTTP_REQ_GET, "GET" }, { EVHTTP_REQ_HEAD, "HEAD" },
		{ EVHTTP_REQ_POST, "POST" }, { EVHTTP_REQ_DELETE, "DELETE" },
	};
	char allow[64] = "";
	bool found = false;

	r->head = m == EVHTTP_REQ_HEAD;
	for (size_t i = 0; path && i < ARRAY_SIZE(routes); i++) {
		if (!path_match(r, routes[i].path, path))
			continue;
		if (routes[i].methods & (unsigned)m) {
			r->ep = (enum Endpoint)i;
			return 0;
		}
		found = true;
		for (size_t k = 0; k < ARRAY_SIZE(names); k++) {
			size_t len = strlen(allow);
			if (routes[i].methods & names[k].method)
				snprintf(allow + len, sizeof(allow) - len, "%s%s", len ? ", " : "",
					 names[k].name);
		}
	}
	if (!found) {
		reply_error(r, 404, "no such endpoint");
		return -1;
	}
	evhttp_add_header(evhttp_request_get_output_headers(r->req), "Allow", allow);
	reply_error(r, 405, "method not allowed here (allowed: %s)", allow);
	return -1;
}

/* ================================================================ checks */

/* "2026-11-23T01:02:03.123456Z", as batchd.api_ts() writes it. */
static bool is_api_timestamp(const char *s)
{
	static const char pat[] = "dddd-dd-ddTdd:dd:dd.ddddddZ";
	size_t i;

	if (strlen(s) != sizeof(pat) - 1)
		return false;
	for (i = 0; pat[i]; i++) {
		if (pat[i] == 'd' ? !isdigit((unsigned char)s[i]) : s[i] != pat[i])
			return false;
	}
	return true;
}

/* Parse and check the query string into r; answers 400 and returns -1. */
static int parse_query(Req *r, const ApiRoute *rt, const char *query)
{
	struct evkeyvalq kv;
	struct evkeyval *p;
	bool paged = rt->flags & RT_PAGED;
	unsigned seen = 0;
	int rc = 0;

	if (!query || !*query)
		return 0;
	if (strstr(query, "%00")) {
		reply_error(r, 400, "malformed query string");
		return -1;
	}
	TAILQ_INIT(&kv);
	if (evhttp_parse_query_str(query, &kv) != 0) {
		evhttp_clear_headers(&kv);
		reply_error(r, 400, "malformed query string");
		return -1;
	}
	TAILQ_FOREACH(p, &kv, next) {
		unsigned bit;

		if (!paged) {
			reply_error(r, 400, "unknown query parameter \"%.64s\"", p->key);
			rc = -1;
			break;
		}
		bit = strcmp(p->key, "status") == 0 ? 1 : strcmp(p->key, "limit") == 0 ? 2 :
			strcmp(p->key, "cursor") == 0 ? 4 : 0;
		if (bit == 1 && r->ep == EP_EVENTS) {
			reply_error(r, 400, "unknown query parameter \"status\" (known: limit, cursor)");
			rc = -1;
			break;
		}
		if (!bit) {
			reply_error(r, 400, "unknown query parameter \"%.64s\" (known: status, limit, "
				    "cursor)", p->key);
			rc = -1;
			break;
		}
		if (seen & bit) {
			reply_error(r, 400, "query parameter \"%s\" given twice", p->key);
			rc = -1;
			break;
		}
		seen |= bit;
		if (bit == 1) {
			bool batches = r->ep == EP_LIST;
			if (!(batches ? status_is_batch(p->value) : status_is_item(p->value))) {
				reply_error(r, 400, "status must be one of %s",
					    batches ? STATUS_BATCH_NAMES_TEXT : STATUS_ITEM_NAMES_TEXT);
				rc = -1;
				break;
			}
			snprintf(r->status, sizeof(r->status), "%s", p->value);
		} else if (bit == 2) {
			int64_t v;
			if (parse_int(p->value, 1, API_MAX_LIMIT, &v) < 0 ||
			    !isdigit((unsigned char)p->value[0])) {
				reply_error(r, 400, "limit must be an integer from 1 to %d",
					    API_MAX_LIMIT);
				rc = -1;
				break;
			}
			r->limit = (int)v;
		} else {
			char dec[128];
			int n = strlen(p->value) < 160 ? base64url_decode(p->value, dec, sizeof(dec)) : -1;
			bool ok = false;

			if (n > 0 && r->ep == EP_LIST) {
				char *bar = strchr(dec, '|');
				if (bar && (size_t)n == strlen(dec)) {
					*bar = '\0';
					ok = is_api_timestamp(dec) && api_parse_uuid(bar + 1, r->cur_id);
					if (ok)
						snprintf(r->cur_ts, sizeof(r->cur_ts), "%s", dec);
				}
			} else if (n > 0 && (size_t)n == strlen(dec) &&
				   n <= (r->ep == EP_EVENTS ? 19 : 10)) {
				/* items: a seq (int); events: an event id (bigint) */
				int64_t v;
				ok = isdigit((unsigned char)dec[0]) &&
					parse_int(dec, 0, r->ep == EP_EVENTS ? INT64_MAX : 2147483647,
						  &v) == 0;
				if (ok)
					snprintf(r->cur_seq, sizeof(r->cur_seq), "%lld", (long long)v);
			}
			if (!ok) {
				reply_error(r, 400, "malformed cursor (use next_cursor as returned)");
				rc = -1;
				break;
			}
		}
	}
	evhttp_clear_headers(&kv);
	return rc;
}

/* After authentication: the endpoint's own checks, then its query. */
static void run_endpoint(Req *r)
{
	const ApiRoute *rt = &routes[r->ep];
	const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(r->req));

	if (rt->flags & RT_ID) {
		if (r->idseg_long || !api_parse_uuid(r->idseg, r->id)) {
			reply_error(r, 400, "malformed batch id (want a uuid)");
			return;
		}
	}
	if (parse_query(r, rt, query) < 0)
		return;
	if (rt->flags & RT_BODY) {
		/* no body needed; one that is sent must be JSON */
		struct evbuffer *buf = evhttp_request_get_input_buffer(r->req);
		size_t len = evbuffer_get_length(buf);
		if (len > 0) {
			const char *ct = evhttp_find_header(evhttp_request_get_input_headers(r->req),
							    "Content-Type");
			if (!api_is_json_content_type(ct)) {
				reply_error(r, 415, "POST bodies must be JSON (Content-Type: "
					    "application/json)");
				return;
			}
			if (!json_is_valid((const char *)evbuffer_pullup(buf, -1), len)) {
				reply_error(r, 400, "malformed JSON body");
				return;
			}
		}
	}
	rt->handler(r);
}

/* ================================================================ auth */

static void reply_unauthorized(Req *r, const char *msg)
{
	if (r->req)
		evhttp_add_header(evhttp_request_get_output_headers(r->req), "WWW-Authenticate",
				  "Bearer realm=\"batchd\"");
	reply_error(r, 401, "%s", msg);
}

static void step_auth(Req *r, PGresult *res)
{
	if (!db_result_ok(res)) {
		reply_db_error(r, res);
		return;
	}
	if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
		reply_unauthorized(r, "invalid or revoked token");
		return;
	}
	r->tenant = xstrdup(PQgetvalue(res, 0, 0));
	run_endpoint(r);
}

static void authenticate(Req *r)
{
	const char *h = evhttp_find_header(evhttp_request_get_input_headers(r->req), "Authorization");
	const char *tok, *end;
	char hex[65];
	const char *params[1];

	if (!h) {
		reply_unauthorized(r, "missing bearer token (Authorization: Bearer TOKEN)");
		return;
	}
	while (*h == ' ' || *h == '\t')
		h++;
	if (strncasecmp(h, "Bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t')) {
		reply_unauthorized(r, "missing bearer token (Authorization: Bearer TOKEN)");
		return;
	}
	tok = h + 6;
	while (*tok == ' ' || *tok == '\t')
		tok++;
	end = tok + strlen(tok);
	while (end > tok && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	if (end == tok || end - tok > API_TOKEN_MAX) {
		reply_unauthorized(r, "invalid or revoked token");
		return;
	}
	for (const char *p = tok; p < end; p++) {
		if (*p <= 0x20 || *p >= 0x7f) {
			reply_unauthorized(r, "invalid or revoked token");
			return;
		}
	}
	sha256_hex(tok, (size_t)(end - tok), hex);
	params[0] = hex;
	req_query(r, false, "SELECT batchd.api_authenticate(decode($1, 'hex'))", 1, params,
		  step_auth);
}

/* ================================================================ server */

static void handle_api(struct evhttp_request *req, void *arg)
{
	Api *api = arg;
	Req *r = req_new(api, req);
	const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));

	/* from here on the Req follows this connection's fate */
	evhttp_connection_set_closecb(evhttp_request_get_connection(req), req_on_conn_close, r);
	if (route_request(r, path, evhttp_request_get_command(req)) < 0)
		return;
	if (api_pool_ready(api) == 0) {
		reply_error(r, 503, "database unavailable: %s", api_pool_error(api));
		return;
	}
	authenticate(r);
}

int api_parse_listen(const char *listen, char *host, size_t hostlen, int *port)
{
	const char *colon;
	char *end;
	long p;
	size_t n;

	if (!listen || !*listen)
		return -1;
	if (listen[0] == '[') {
		const char *close = strchr(listen, ']');
		if (!close || close[1] != ':')
			return -1;
		n = (size_t)(close - listen - 1);
		colon = close + 1;
		listen++;
	} else {
		colon = strrchr(listen, ':');
		if (!colon)
			return -1;
		n = (size_t)(colon - listen);
	}
	if (n == 0 || n >= hostlen)
		return -1;
	memcpy(host, listen, n);
	host[n] = '\0';
	p = strtol(colon + 1, &end, 10);
	if (*end || end == colon + 1 || p < 0 || p > 65535)
		return -1;
	*port = (int)p;
	return 0;
}

Api *api_new(Batchd *bd, char *err, size_t errlen)
{
	char host[256];
	int port;
	Api *api;

	if (bd->listen_fds == 0 &&
	    api_parse_listen(bd->cfg->listen, host, sizeof(host), &port) < 0) {
		snprintf(err, errlen, "listen: cannot parse '%s' (want host:port or [v6]:port)",
			 bd->cfg->listen ? bd->cfg->listen : "");
		return NULL;
	}
	api = xcalloc(1, sizeof(*api));
	api->bd = bd;
	api->started_us = now_realtime_us();
	api->http = evhttp_new(bd->base);
	if (!api->http)
		fatal("evhttp_new failed");
	evhttp_set_timeout(api->http, API_TIMEOUT_S);
	evhttp_set_max_headers_size(api->http, API_MAX_HEADERS);
	/*
	 * Bodies over max_body_size: evhttp refuses them while reading, before
	 * our handler runs, and answers 413 through evhttp_send_error(), which
	 * api_req.c replaces to keep the JSON error shape (likewise the 400
	 * for oversized headers or unparsable requests).  Lingering close reads and
	 * drops the rest of the body first, so the client gets to read the 413
	 * instead of a connection reset.
	 */
	evhttp_set_max_body_size(api->http, (ev_ssize_t)bd->cfg->max_body_size);
	evhttp_set_flags(api->http, EVHTTP_SERVER_LINGERING_CLOSE);
	/* every method reaches us, so that the wrong one gets our 405 with Allow */
	evhttp_set_allowed_methods(api->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
				   EVHTTP_REQ_DELETE | EVHTTP_REQ_PUT | EVHTTP_REQ_PATCH |
				   EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT);
	evhttp_set_gencb(api->http, handle_api, api);
	if (bd->listen_fds > 0) {
		/* socket activation (batchd.socket): systemd passed the listeners,
		 * from fd 3 on; listen is not bound then */
		for (int i = 0; i < bd->listen_fds; i++) {
			evutil_socket_t fd = 3 + i;
			evutil_make_socket_nonblocking(fd);
			if (!evhttp_accept_socket_with_handle(api->http, fd)) {
				snprintf(err, errlen, "cannot accept on the socket passed by systemd "
					 "(fd %d)", (int)fd);
				evhttp_free(api->http);
				free(api);
				return NULL;
			}
		}
	} else if (!evhttp_bind_socket_with_handle(api->http, host, (ev_uint16_t)port)) {
		snprintf(err, errlen, "listen: cannot bind %s: address in use or not available",
			 bd->cfg->listen);
		evhttp_free(api->http);
		free(api);
		return NULL;
	}
	api_pool_open(api);
	results_init(api);
	api_status_init(api);
	if (bd->listen_fds > 0)
		log_info("listening on %d socket(s) passed by systemd", bd->listen_fds);
	else
		log_info("listening on %s", bd->cfg->listen);
	return api;
}

int api_add_handler(Api *api, const char *path,
		    void (*cb)(struct evhttp_request *req, void *arg), void *arg)
{
	return evhttp_set_cb(api->http, path, cb, arg) == 0 ? 0 : -1;
}

void api_free(Api *api)
{
	Req *r, *next;

	if (!api)
		return;
	api->closing = true;
	/* Let go of the client side first: evhttp_free() frees the requests
	 * still attached to connections; detached ones are ours. */
	for (r = api->reqs; r; r = r->next)
		req_forget(r);
	api_pool_close(api);
	for (r = api->reqs; r; r = next) {
		next = r->next;
		req_free(r);
	}
	evhttp_free(api->http);
	results_free(api);
	api_status_free(api);
	free(api);
}
