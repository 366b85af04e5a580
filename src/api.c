/*
 * api.c - the REST API (evhttp) on the main loop.
 *
 *   GET  /healthz, /readyz                    no token
 *   POST /v1/batches                          submit (Idempotency-Key)
 *   GET  /v1/batches?status=&limit=&cursor=   list, newest first, keyset pages
 *   GET  /v1/batches/{id}                     one batch
 *   GET  /v1/batches/{id}/progress            counts, rate over the last minute, eta
 *   GET  /v1/batches/{id}/items?status=&limit=&cursor=
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
 * The endpoints live in api_batches.c (batches, items, progress, cancel,
 * retry, delete), api_submit.c (POST /v1/batches), api_status.c (/v1/status)
 * and api_results.c (the NDJSON streams); this file is the server: routing
 * (method, path -> endpoint), query strings, authentication, the request
 * lifecycle, the replies and the pool of query connections.  Bodies over
 * max_body_size are refused by evhttp itself (see api_new: libevent 2.1
 * answers those with its own HTML page).
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>

#include "batchd/api_req.h"
#include "batchd/base64url.h"
#include "batchd/engine.h"
#include "batchd/json.h"
#include "batchd/sha256.h"
#include "batchd/status_names.h"

static void req_free(Req *r);

/* ---------------------------------------------------------------- checks */

/* A uuid in the canonical 8-4-4-4-12 form, any case; out: lower case. */
static bool parse_uuid(const char *s, char out[37])
{
	int i;

	if (strlen(s) != 36)
		return false;
	for (i = 0; i < 36; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (s[i] != '-')
				return false;
		} else if (!isxdigit((unsigned char)s[i])) {
			return false;
		}
		out[i] = (char)tolower((unsigned char)s[i]);
	}
	out[36] = '\0';
	return true;
}

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

/* Content-Type: application/json, optionally with parameters; a charset
 * parameter must name UTF-8. */
bool is_json_content_type(const char *ct)
{
	const char *p;

	if (!ct)
		return false;
	while (*ct == ' ' || *ct == '\t')
		ct++;
	if (strncasecmp(ct, "application/json", 16) != 0)
		return false;
	p = ct + 16;
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p == '\0')
		return true;
	if (*p != ';')
		return false;
	while (*p == ';') {
		const char *name, *val, *end;
		size_t nlen, vlen;

		p++;
		while (*p == ' ' || *p == '\t')
			p++;
		name = p;
		while (*p && *p != '=' && *p != ';')
			p++;
		nlen = (size_t)(p - name);
		while (nlen > 0 && (name[nlen - 1] == ' ' || name[nlen - 1] == '\t'))
			nlen--;
		if (*p != '=')
			return nlen == 0 && *p == '\0';
		val = ++p;
		while (*p && *p != ';')
			p++;
		end = p;
		while (end > val && (end[-1] == ' ' || end[-1] == '\t'))
			end--;
		if (end - val >= 2 && val[0] == '"' && end[-1] == '"') {
			val++;
			end--;
		}
		vlen = (size_t)(end - val);
		if (nlen == 7 && strncasecmp(name, "charset", 7) == 0 &&
		    !((vlen == 5 && strncasecmp(val, "utf-8", 5) == 0) ||
		      (vlen == 4 && strncasecmp(val, "utf8", 4) == 0)))
			return false;
	}
	return *p == '\0';
}

/* ======================================================= request lifecycle */

static const char *ecode_for(int status)
{
	switch (status) {
	case 400: return "bad_request";
	case 401: return "unauthorized";
	case 404: return "not_found";
	case 405: return "method_not_allowed";
	case 409: return "conflict";
	case 413: return "payload_too_large";
	case 415: return "unsupported_media_type";
	case 503: return "unavailable";
	default: return "internal";
	}
}

/*
 * libevent 2.1 answers a few errors itself, before any handler of ours runs
 * (a body over max_body_size: 413; a request it cannot parse: 400), through
 * evhttp_send_error(), with a small HTML page.  Defining evhttp_send_error
 * here replaces libevent's: the library calls it through its PLT, so the
 * dynamic linker binds those calls to the executable's definition, and the
 * answers carry our JSON error shape like every other error.  It does what
 * libevent's does (the reply, then the connection closes) in JSON.
 */
void evhttp_send_error(struct evhttp_request *req, int error, const char *reason)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	struct evbuffer *buf = evbuffer_new();
	const char *msg;

	if (!buf) {
		evhttp_connection_free(evhttp_request_get_connection(req));
		return;
	}
	switch (error) {
	case 400: msg = "the request could not be parsed"; break;
	case 413: msg = "the request body is larger than max_body_size"; break;
	case 404: msg = "no such endpoint"; break;
	case 405: msg = "method not allowed"; break;
	case 501: msg = "method not implemented"; break;
	case 503: msg = "service unavailable"; break;
	default: msg = reason ? reason : "error"; break;
	}
	evhttp_clear_headers(h);
	evhttp_add_header(h, "Content-Type", "application/json");
	evhttp_add_header(h, "Connection", "close");
	evbuffer_add_printf(buf, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}\n",
			    error == 501 ? "not_implemented" : ecode_for(error), msg);
	evhttp_send_reply(req, error, reason, buf);
	evbuffer_free(buf);
}

static Req *req_new(Api *api, struct evhttp_request *req)
{
	Req *r = xcalloc(1, sizeof(*r));

	r->api = api;
	r->req = req;
	r->start_us = now_monotonic_us();
	r->limit = API_DEFAULT_LIMIT;
	r->next = api->reqs;
	if (api->reqs)
		api->reqs->prev = r;
	api->reqs = r;
	api->nreqs++;
	return r;
}

static void req_free(Req *r)
{
	Api *api = r->api;

	if (r->prev)
		r->prev->next = r->next;
	else
		api->reqs = r->next;
	if (r->next)
		r->next->prev = r->prev;
	api->nreqs--;
	if (r->stimer)
		event_free(r->stimer);
	free(r->tenant);
	free(r->route);
	free(r->idem);
	free(r);
}

/* Forget the client side: free the request if it is ours (detached), never
 * answer.  Then free the Req unless a query callback is still due. */
void req_drop(Req *r)
{
	if (r->req) {
		struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
		if (evcon)      /* not reached: attached requests get an answer */
			evhttp_connection_set_closecb(evcon, NULL, NULL);
		else
			evhttp_request_free(r->req);
	}
	r->req = NULL;
	r->gone = true;
	if (r->sstate != ST_NONE && r->sstate != ST_STOPPED)
		stream_stop(r);
	if (r->busy == 0)
		req_free(r);
}

/* The connection of the request in progress is going away. */
static void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
	Req *r = arg;

	r->gone = true;
	/* Still attached: evhttp_free() is freeing it (shutdown).  Detached
	 * (EOF, timeout, write error): it is ours, req_drop frees it. */
	if (r->req && evhttp_request_get_connection(r->req) != NULL)
		r->req = NULL;
	if (r->sstate != ST_NONE && r->sstate != ST_STOPPED)
		stream_stop(r);
	if (r->busy == 0)
		req_drop(r);
}

/* Final answer: hand the request to evhttp and free the Req (not busy). */
void req_send(Req *r, int status, struct evbuffer *body)
{
	if (r->req && !r->gone) {
		struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
		if (evcon)
			evhttp_connection_set_closecb(evcon, NULL, NULL);
		evhttp_send_reply(r->req, status, NULL, body);
		r->req = NULL;
	}
	log_debug("api: %s %d (%.1f ms)", r->tenant ? r->tenant : "-", status,
		  (double)(now_monotonic_us() - r->start_us) / 1000.0);
	req_drop(r);
}

void reply_json(Req *r, int status, const char *body, size_t len)
{
	struct evbuffer *buf;

	if (!r->req || r->gone) {
		req_drop(r);
		return;
	}
	buf = evbuffer_new();
	evhttp_add_header(evhttp_request_get_output_headers(r->req), "Content-Type",
			  "application/json");
	evhttp_add_header(evhttp_request_get_output_headers(r->req), "Cache-Control", "no-store");
	evbuffer_add(buf, body, len);
	evbuffer_add(buf, "\n", 1);
	req_send(r, status, buf);
	evbuffer_free(buf);
}

void reply_error(Req *r, int status, const char *fmt, ...) _PRINTF(3, 4);
void reply_error(Req *r, int status, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	StrBuf sb;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (status >= 500)
		log_warn("api: answering %d: %s", status, msg);
	sb_init(&sb);
	sb_printf(&sb, "{\"error\":{\"code\":\"%s\",\"message\":", ecode_for(status));
	json_append_string(&sb, msg, strlen(msg));
	sb_puts(&sb, "}}");
	reply_json(r, status, sb.data, sb.len);
	sb_free(&sb);
}

static void reply_unauthorized(Req *r, const char *msg)
{
	if (r->req)
		evhttp_add_header(evhttp_request_get_output_headers(r->req), "WWW-Authenticate",
				  "Bearer realm=\"batchd\"");
	reply_error(r, 401, "%s", msg);
}

/* Map a failed query to an answer. */
void reply_db_error(Req *r, PGresult *res)
{
	const char *st = db_result_sqlstate(res);
	const char *msg = db_result_error(res);

	if (!res) {
		reply_error(r, 503, "database connection lost; try again");
	} else if (strcmp(st, "BD409") == 0) {
		reply_error(r, 409, "%s", msg);
	} else if (strncmp(st, "22", 2) == 0) {
		/* data exceptions: submit_batch's 22023, and what jsonb refuses
		 * (\u0000, lone surrogates, numbers out of range) */
		reply_error(r, 400, "%s", msg);
	} else if (strncmp(st, "08", 2) == 0 || strncmp(st, "53", 2) == 0 ||
		   strncmp(st, "57", 2) == 0 || strcmp(st, "40001") == 0 ||
		   strcmp(st, "40P01") == 0 || strcmp(st, "55P03") == 0) {
		reply_error(r, 503, "database busy or unavailable (%s); try again", msg);
	} else {
		log_error("api: query failed: %s (SQLSTATE %s)", msg, st);
		reply_error(r, 500, "internal error (SQLSTATE %s)", st);
	}
}

/* ------------------------------------------------------------------ pool */

/* The READY pool connection with the shortest queue, or NULL. */
static Db *pool_pick(Api *api)
{
	Db *best = NULL;
	int bestq = 0;

	for (int i = 0; i < API_POOL_SIZE; i++) {
		Db *db = api->pool[(api->rr + (unsigned)i) % API_POOL_SIZE];
		int q;

		if (!db_is_ready(db))
			continue;
		q = db_queue_length(db);
		if (!best || q < bestq) {
			best = db;
			bestq = q;
		}
	}
	api->rr++;
	return best;
}

int pool_ready(const Api *api)
{
	int n = 0;
	for (int i = 0; i < API_POOL_SIZE; i++)
		n += db_is_ready(api->pool[i]);
	return n;
}

static const char *pool_error(const Api *api)
{
	return db_last_error(api->pool[0]);
}

static void req_db_cb(PGresult *res, void *arg)
{
	Req *r = arg;

	r->busy--;
	if (r->api->closing || r->gone || !r->req) {
		req_drop(r);
		return;
	}
	if (!res) {
		reply_error(r, 503, "database connection lost; try again");
		return;
	}
	r->step(r, res);
}

/*
 * Run one step's query.  same_db: on the connection of the previous step
 * (a follow-up that must see the previous statement's effect).  On failure
 * to queue, answers 503 (and the Req is gone).
 */
void req_query(Req *r, bool same_db, const char *sql, int n, const char *const *params,
		      req_step_fn step)
{
	Db *db = same_db ? r->db : pool_pick(r->api);

	if (!db || !db_is_ready(db)) {
		reply_error(r, 503, "database unavailable: %s", pool_error(r->api));
		return;
	}
	/* Counted before queueing: a send that fails at once runs the callback
	 * inside db_query (with NULL), which answers and may free r. */
	r->db = db;
	r->step = step;
	r->busy++;
	if (db_query(db, sql, n, params, req_db_cb, r) < 0) {
		r->busy--;
		reply_error(r, 503, "database unavailable: %s", pool_error(r->api));
	}
}

static void pool_on_connect(Db *db, void *arg)
{
	/* our own limits; failures are harmless (logged by nobody, defaults stay) */
	if (db_query(db, "SET statement_timeout = '" API_STATEMENT_TIMEOUT "'", 0, NULL, NULL, NULL) < 0)
		return;
	if (db_query(db, "SET application_name = 'batchd api'", 0, NULL, NULL, NULL) < 0)
		return;
}

/* ================================================================ results stream */

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


/* ================================================================ dispatch */

/* Parse and check the query string into r; answers 400 and returns -1. */
static int parse_query(Req *r, const char *query)
{
	struct evkeyvalq kv;
	struct evkeyval *p;
	bool paged = r->ep == EP_LIST || r->ep == EP_ITEMS;
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
			const char *const *ok = r->ep == EP_LIST ? batch_statuses : item_statuses;
			if (!str_in_list(p->value, ok)) {
				reply_error(r, 400, "status must be one of %s",
					    r->ep == EP_LIST ?
					    "pending, processing, completed, completed_with_errors, "
					    "failed, cancelled" :
					    "queued, running, succeeded, failed, cancelled");
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
			int n = strlen(p->value) < 160 ? b64url_decode(p->value, dec, sizeof(dec)) : -1;
			bool ok = false;

			if (n > 0 && r->ep == EP_LIST) {
				char *bar = strchr(dec, '|');
				if (bar && (size_t)n == strlen(dec)) {
					*bar = '\0';
					ok = is_api_timestamp(dec) && parse_uuid(bar + 1, r->cur_id);
					if (ok)
						snprintf(r->cur_ts, sizeof(r->cur_ts), "%s", dec);
				}
			} else if (n > 0 && (size_t)n == strlen(dec) && n <= 10) {
				int64_t v;
				ok = isdigit((unsigned char)dec[0]) &&
					parse_int(dec, 0, 2147483647, &v) == 0;
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
	const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(r->req));

	if (r->ep != EP_LIST && r->ep != EP_SUBMIT && r->ep != EP_STATUS) {
		if (r->idseg_long || !parse_uuid(r->idseg, r->id)) {
			reply_error(r, 400, "malformed batch id (want a uuid)");
			return;
		}
	}
	if (parse_query(r, query) < 0)
		return;
	if (r->ep == EP_CANCEL || r->ep == EP_RETRY) {
		/* no body needed; one that is sent must be JSON */
		struct evbuffer *buf = evhttp_request_get_input_buffer(r->req);
		size_t len = evbuffer_get_length(buf);
		if (len > 0) {
			const char *ct = evhttp_find_header(evhttp_request_get_input_headers(r->req),
							    "Content-Type");
			if (!is_json_content_type(ct)) {
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
	switch (r->ep) {
	case EP_LIST: do_list(r); break;
	case EP_SUBMIT: do_submit(r); break;
	case EP_GET: read_batch(r, false); break;
	case EP_PROGRESS: do_progress(r); break;
	case EP_ITEMS: do_items(r); break;
	case EP_RESULTS: do_results(r); break;
	case EP_CANCEL:
	case EP_RETRY:
	case EP_DELETE: do_state_change(r); break;
	case EP_STATUS: do_status(r); break;
	}
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

/* Match the path and method; answers 404/405 and returns -1. */
static int route_request(Req *r, const char *path, enum evhttp_cmd_type m)
{
	bool get = m == EVHTTP_REQ_GET || m == EVHTTP_REQ_HEAD;
	const char *allow = NULL;

	r->head = m == EVHTTP_REQ_HEAD;
	if (!path) {
		reply_error(r, 404, "no such endpoint");
		return -1;
	}
	if (strcmp(path, "/v1/batches") == 0) {
		if (get)
			r->ep = EP_LIST;
		else if (m == EVHTTP_REQ_POST)
			r->ep = EP_SUBMIT;
		else
			allow = "GET, HEAD, POST";
	} else if (strcmp(path, "/v1/status") == 0) {
		if (get)
			r->ep = EP_STATUS;
		else
			allow = "GET, HEAD";
	} else if (strncmp(path, "/v1/batches/", 12) == 0 && path[12] && path[12] != '/') {
		const char *seg = path + 12, *slash = strchr(seg, '/');
		size_t n = slash ? (size_t)(slash - seg) : strlen(seg);
		const char *sub = slash ? slash + 1 : NULL;

		if (n >= sizeof(r->idseg)) {
			r->idseg_long = true;
			n = 0;
		}
		memcpy(r->idseg, seg, n);
		r->idseg[n] = '\0';
		if (!sub) {
			if (get)
				r->ep = EP_GET;
			else if (m == EVHTTP_REQ_DELETE)
				r->ep = EP_DELETE;
			else
				allow = "GET, HEAD, DELETE";
		} else if (strcmp(sub, "progress") == 0 || strcmp(sub, "items") == 0 ||
			   strcmp(sub, "results") == 0) {
			if (get)
				r->ep = sub[0] == 'p' ? EP_PROGRESS : sub[0] == 'i' ? EP_ITEMS : EP_RESULTS;
			else
				allow = "GET, HEAD";
		} else if (strcmp(sub, "cancel") == 0 || strcmp(sub, "retry") == 0) {
			if (m == EVHTTP_REQ_POST)
				r->ep = sub[0] == 'c' ? EP_CANCEL : EP_RETRY;
			else
				allow = "POST";
		} else {
			reply_error(r, 404, "no such endpoint");
			return -1;
		}
	} else {
		reply_error(r, 404, "no such endpoint");
		return -1;
	}
	if (allow) {
		evhttp_add_header(evhttp_request_get_output_headers(r->req), "Allow", allow);
		reply_error(r, 405, "method not allowed here (allowed: %s)", allow);
		return -1;
	}
	return 0;
}

static void handle_api(struct evhttp_request *req, void *arg)
{
	Api *api = arg;
	Req *r = req_new(api, req);
	const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));

	/* from here on the Req follows this connection's fate */
	evhttp_connection_set_closecb(evhttp_request_get_connection(req), on_conn_close, r);
	if (route_request(r, path, evhttp_request_get_command(req)) < 0)
		return;
	if (pool_ready(api) == 0) {
		reply_error(r, 503, "database unavailable: %s", pool_error(api));
		return;
	}
	authenticate(r);
}

/* ================================================================ health */

static void reply_plain(struct evhttp_request *req, int code, const char *body)
{
	struct evbuffer *buf = evbuffer_new();
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);

	evhttp_add_header(h, "Content-Type", "application/json");
	evhttp_add_header(h, "Cache-Control", "no-store");
	evbuffer_add(buf, body, strlen(body));
	evbuffer_add(buf, "\n", 1);
	evhttp_send_reply(req, code, NULL, buf);
	evbuffer_free(buf);
}

static bool method_is_get(struct evhttp_request *req)
{
	enum evhttp_cmd_type m = evhttp_request_get_command(req);
	if (m == EVHTTP_REQ_GET || m == EVHTTP_REQ_HEAD)
		return true;
	evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
	reply_plain(req, 405, "{\"error\":{\"code\":\"method_not_allowed\",\"message\":"
		    "\"this endpoint accepts GET and HEAD\"}}");
	return false;
}

static void handle_healthz(struct evhttp_request *req, void *arg)
{
	if (!method_is_get(req))
		return;
	reply_plain(req, 200, "{\"status\":\"ok\"}");
}

static void handle_readyz(struct evhttp_request *req, void *arg)
{
	Api *api = arg;
	StrBuf sb;

	if (!method_is_get(req))
		return;
	sb_init(&sb);
	if (engine_is_ready(api->bd->engine)) {
		reply_plain(req, 200, "{\"status\":\"ready\"}");
	} else {
		const char *why = engine_db_up(api->bd->engine) ? "starting" :
			engine_db_error(api->bd->engine);
		sb_puts(&sb, "{\"status\":\"not_ready\",\"reason\":");
		json_append_string(&sb, why, strlen(why));
		sb_putc(&sb, '}');
		reply_plain(req, 503, sb.data);
	}
	sb_free(&sb);
}

/* ================================================================ setup */

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
	static const DbHandlers pool_handlers = { pool_on_connect, NULL, NULL };
	char host[256], name[32];
	struct timeval tv = { RATE_EVERY_MS / 1000, (RATE_EVERY_MS % 1000) * 1000 };
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
	 * we replace (above) to keep the JSON error shape (likewise the 400 for
	 * oversized headers or unparsable requests).  Lingering close reads and
	 * drops the rest of the body first, so the client gets to read the 413
	 * instead of a connection reset.
	 */
	evhttp_set_max_body_size(api->http, (ev_ssize_t)bd->cfg->max_body_size);
	evhttp_set_flags(api->http, EVHTTP_SERVER_LINGERING_CLOSE);
	/* every method reaches us, so that the wrong one gets our 405 with Allow */
	evhttp_set_allowed_methods(api->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
				   EVHTTP_REQ_DELETE | EVHTTP_REQ_PUT | EVHTTP_REQ_PATCH |
				   EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT);
	evhttp_set_cb(api->http, "/healthz", handle_healthz, api);
	evhttp_set_cb(api->http, "/readyz", handle_readyz, api);
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
	for (int i = 0; i < API_POOL_SIZE; i++) {
		snprintf(name, sizeof(name), "api-db-%d", i + 1);
		api->pool[i] = db_new(bd->base, bd->cfg->database, name, &pool_handlers, api);
		db_start(api->pool[i]);
	}
	api->reap_ev = event_new(bd->base, -1, 0, reap_cb, api);
	api->rate_timer = evtimer_new(bd->base, rate_tick, api);
	evtimer_add(api->rate_timer, &tv);
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
	for (r = api->reqs; r; r = r->next) {
		if (r->req) {
			struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
			if (evcon)
				evhttp_connection_set_closecb(evcon, NULL, NULL);
			else
				evhttp_request_free(r->req);
			r->req = NULL;
		}
		r->gone = true;
		stream_stop(r);
	}
	/* Query callbacks run now (NULL results) and free their Reqs. */
	for (int i = 0; i < API_POOL_SIZE; i++)
		db_free(api->pool[i]);
	for (r = api->reqs; r; r = next) {
		next = r->next;
		req_free(r);
	}
	evhttp_free(api->http);
	reap_cb(-1, 0, api);
	event_free(api->reap_ev);
	event_free(api->rate_timer);
	free(api);
}
