/*
 * api_req.c - the request lifecycle of the REST API: a Req per request,
 * the answers (JSON errors, also for the ones libevent makes itself), the
 * pool of database connections request queries run on, and the helpers
 * every endpoint uses (row rendering, uuid and Content-Type checks).  How a
 * request lives and how clients that go away are handled: see api.c.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "batchd/api_req.h"
#include "batchd/json.h"
#include "batchd/log.h"

#define API_STATEMENT_TIMEOUT "120s"

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

Req *req_new(Api *api, struct evhttp_request *req)
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

void req_free(Req *r)
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

/* Let go of the client side: free the request if it is ours (detached),
 * never answer; stop the stream, if any.  At shutdown (api_free) a request
 * may still be attached: evhttp_free() frees it then. */
void req_forget(Req *r)
{
	if (r->req) {
		struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
		if (evcon)
			evhttp_connection_set_closecb(evcon, NULL, NULL);
		else
			evhttp_request_free(r->req);
	}
	r->req = NULL;
	r->gone = true;
	results_stop(r);
}

/* Forget the client side, then free the Req unless a query callback is
 * still due.  Outside shutdown, attached requests get an answer instead. */
void req_drop(Req *r)
{
	req_forget(r);
	if (r->busy == 0)
		req_free(r);
}

/* The connection of the request in progress is going away. */
void req_on_conn_close(struct evhttp_connection *evcon, void *arg)
{
	Req *r = arg;

	r->gone = true;
	/* Still attached: evhttp_free() is freeing it (shutdown).  Detached
	 * (EOF, timeout, write error): it is ours, req_drop frees it. */
	if (r->req && evhttp_request_get_connection(r->req) != NULL)
		r->req = NULL;
	if (r->sstate != ST_NONE && r->sstate != ST_STOPPED)
		results_stop(r);
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

bool req_batch_found(Req *r, PGresult *res)
{
	if (!db_result_ok(res)) {
		reply_db_error(r, res);
		return false;
	}
	if (PQntuples(res) == 0) {
		reply_error(r, 404, "no such batch");
		return false;
	}
	return true;
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

int api_pool_ready(const Api *api)
{
	int n = 0;
	for (int i = 0; i < API_POOL_SIZE; i++)
		n += db_is_ready(api->pool[i]);
	return n;
}

const char *api_pool_error(const Api *api)
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
		reply_error(r, 503, "database unavailable: %s", api_pool_error(r->api));
		return;
	}
	/* Counted before queueing: a send that fails at once runs the callback
	 * inside db_query (with NULL), which answers and may free r. */
	r->db = db;
	r->step = step;
	r->busy++;
	if (db_query(db, sql, n, params, req_db_cb, r) < 0) {
		r->busy--;
		reply_error(r, 503, "database unavailable: %s", api_pool_error(r->api));
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

void api_pool_open(Api *api)
{
	static const DbHandlers pool_handlers = { pool_on_connect, NULL, NULL };
	char name[32];

	for (int i = 0; i < API_POOL_SIZE; i++) {
		snprintf(name, sizeof(name), "api-db-%d", i + 1);
		api->pool[i] = db_new(api->bd->base, api->bd->cfg->database, name, &pool_handlers, api);
		db_start(api->pool[i]);
	}
}

/* Query callbacks due run now (NULL results) and free their Reqs. */
void api_pool_close(Api *api)
{
	for (int i = 0; i < API_POOL_SIZE; i++)
		db_free(api->pool[i]);
}

/* ------------------------------------------------------------------ helpers */

void api_render_row(StrBuf *sb, const PGresult *res, int row, int first, const ApiCol *cols,
		    int n)
{
	sb_putc(sb, '{');
	for (int i = 0; i < n; i++) {
		int c = first + i;
		const char *v;

		if (i)
			sb_putc(sb, ',');
		json_append_string(sb, cols[i].name, strlen(cols[i].name));
		sb_putc(sb, ':');
		if (PQgetisnull(res, row, c)) {
			sb_puts(sb, "null");
			continue;
		}
		v = PQgetvalue(res, row, c);
		switch (cols[i].kind) {
		case CK_STR:
			json_append_string(sb, v, (size_t)PQgetlength(res, row, c));
			break;
		case CK_NUM:
		case CK_JSON:
			sb_append(sb, v, (size_t)PQgetlength(res, row, c));
			break;
		case CK_BOOL:
			sb_puts(sb, v[0] == 't' ? "true" : "false");
			break;
		}
	}
	sb_putc(sb, '}');
}

/* A uuid in the canonical 8-4-4-4-12 form, any case; out: lower case. */
bool api_parse_uuid(const char *s, char out[37])
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

/* Content-Type: application/json, optionally with parameters; a charset
 * parameter must name UTF-8. */
bool api_is_json_content_type(const char *ct)
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
