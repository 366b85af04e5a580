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
 * Results streams.  Each GET .../results gets a connection of its own
 * (capped: API_MAX_STREAMS, then 503) holding a read-only transaction with a
 * cursor; rows are FETCHed a bounded number at a time, sent as one chunk, and
 * the next FETCH is sent only when evhttp reports the chunk written to the
 * socket, so memory is bounded by one chunk whatever the batch size.  A lost
 * database connection mid-stream aborts the HTTP connection, so the client
 * sees a truncated chunked body, never a short but well-formed one.
 *
 * Bodies.  POST /v1/batches is validated in C by yajl's event parser
 * (types, ranges, unknown or duplicate fields, depth <= API_MAX_DEPTH, no
 * tree, so memory stays linear in the body) and then stored by ONE
 * statement, batchd.api_submit(), which validates again (SQLSTATE 22023 ->
 * 400) and inserts all items in one INSERT ... SELECT; any error rolls the
 * whole statement back.  Bodies over max_body_size are refused by evhttp
 * itself (see api_new: libevent 2.1 answers those with its own HTML page).
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <yajl/yajl_parse.h>

#include "batchd/api.h"
#include "batchd/db.h"
#include "batchd/engine.h"
#include "batchd/json.h"
#include "batchd/log.h"

#define API_POOL_SIZE 3             /* connections for request queries */
#define API_MAX_STREAMS 16          /* concurrent results streams */
#define API_TIMEOUT_S 60            /* idle read/write on a client connection */
#define API_MAX_HEADERS (64 * 1024) /* request line + headers */
#define API_MAX_DEPTH 64            /* JSON nesting in a request body */
#define API_DEFAULT_LIMIT 100
#define API_MAX_LIMIT 1000
#define API_TOKEN_MAX 512
#define API_STATEMENT_TIMEOUT "120s"

#define STREAM_FETCH_MAX 500        /* rows per FETCH */
#define STREAM_CHUNK_TARGET (2 * 1024 * 1024) /* bytes per chunk we aim at */
#define STREAM_CONNECT_MS 5000      /* a stream's connection must be up by then */

#define RATE_SLOTS 13               /* samples of the engine's counters ... */
#define RATE_EVERY_MS 5000          /* ... every 5 s: the last minute */

enum Endpoint {
	EP_LIST, EP_SUBMIT, EP_GET, EP_DELETE, EP_PROGRESS, EP_ITEMS, EP_RESULTS,
	EP_CANCEL, EP_RETRY, EP_STATUS,
};

enum StreamState {
	ST_NONE,        /* not a stream (yet) */
	ST_CONNECTING,  /* own connection starting */
	ST_FETCHING,    /* a FETCH is in flight */
	ST_SENDING,     /* a chunk is being written to the client */
	ST_STOPPED,     /* finished or failed: callbacks are ignored */
};

typedef struct Req Req;
typedef void (*req_step_fn)(Req *r, PGresult *res);

struct Req {
	Req *prev, *next;           /* api->reqs */
	Api *api;
	struct evhttp_request *req; /* NULL once it is not ours to touch */
	enum Endpoint ep;
	bool head;                  /* HEAD: answer without a body */
	bool gone;                  /* the client went away */
	int busy;                   /* query callbacks due */
	int64_t start_us;           /* monotonic */
	Db *db;                     /* connection of the last query */
	req_step_fn step;
	char *tenant;
	char idseg[64];             /* {id} path segment as given (truncated) */
	bool idseg_long;
	char id[37];                /* validated, lower case */

	/* query parameters */
	char status[24];            /* "" when not given */
	int limit;
	char cur_ts[32];            /* batches cursor: created_at ... */
	char cur_id[37];            /* ... and id */
	char cur_seq[16];           /* items cursor: seq */

	/* submit */
	char *route;
	char *idem;
	int answer;                 /* 200 or 201 after the follow-up read */

	/* results stream */
	enum StreamState sstate;
	Db *sdb;
	struct event *stimer;       /* connect timeout, then deferred abort */
	bool headers_sent;
	int fetch_rows;
	uint64_t rows_sent;
};

typedef struct RateSample {
	int64_t at_us;              /* monotonic; 0: empty slot */
	uint64_t done;              /* engine succeeded + failed */
} RateSample;

typedef struct DeadDb {
	struct DeadDb *next;
	Db *db;
} DeadDb;

struct Api {
	Batchd *bd;
	struct evhttp *http;
	Db *pool[API_POOL_SIZE];
	unsigned rr;
	Req *reqs;
	int nreqs;
	int nstreams;
	DeadDb *dead;               /* closed stream connections, freed by reap_ev */
	struct event *reap_ev;
	struct event *rate_timer;
	RateSample rate[RATE_SLOTS];
	int rate_pos;
	int64_t started_us;         /* realtime */
	uint64_t answered[6];       /* by status class */
	bool closing;
};

static void req_free(Req *r);
static void stream_stop(Req *r);
static void stream_fail(Req *r, const char *why);

/* ================================================================ helpers */

static const char *const batch_statuses[] = {
	"pending", "processing", "completed", "completed_with_errors", "failed", "cancelled", NULL,
};
static const char *const item_statuses[] = {
	"queued", "running", "succeeded", "failed", "cancelled", NULL,
};

static bool in_list(const char *s, const char *const *list)
{
	for (; *list; list++)
		if (strcmp(s, *list) == 0)
			return true;
	return false;
}

/* ---------------------------------------------------------------- SHA-256 */

/*
 * FIPS 180-4 SHA-256, for bearer tokens only: the token is hashed here and
 * only its hash goes to the database.  Small enough not to add a crypto
 * library to the daemon's dependencies.
 */
static const uint32_t sha_k[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR32(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const unsigned char *p)
{
	uint32_t w[64], a, b, c, d, e, f, g, k;
	int i;

	for (i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
			(uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
	for (i = 16; i < 64; i++) {
		uint32_t s0 = ROR32(w[i - 15], 7) ^ ROR32(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = ROR32(w[i - 2], 17) ^ ROR32(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; k = h[7];
	for (i = 0; i < 64; i++) {
		uint32_t t1 = k + (ROR32(e, 6) ^ ROR32(e, 11) ^ ROR32(e, 25)) +
			((e & f) ^ (~e & g)) + sha_k[i] + w[i];
		uint32_t t2 = (ROR32(a, 2) ^ ROR32(a, 13) ^ ROR32(a, 22)) +
			((a & b) ^ (a & c) ^ (b & c));
		k = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
	}
	h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}

static void sha256_hex(const char *data, size_t len, char out[65])
{
	static const char hex[] = "0123456789abcdef";
	uint32_t h[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
			  0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
	const unsigned char *p = (const unsigned char *)data;
	unsigned char blk[64];
	uint64_t bits = (uint64_t)len * 8;
	size_t n = len;
	int i;

	for (; n >= 64; n -= 64, p += 64)
		sha256_block(h, p);
	memset(blk, 0, sizeof(blk));
	if (n)
		memcpy(blk, p, n);
	blk[n] = 0x80;
	if (n >= 56) {
		sha256_block(h, blk);
		memset(blk, 0, sizeof(blk));
	}
	for (i = 0; i < 8; i++)
		blk[63 - i] = (unsigned char)(bits >> (8 * i));
	sha256_block(h, blk);
	for (i = 0; i < 32; i++) {
		unsigned char byte = (unsigned char)(h[i / 4] >> (24 - 8 * (i % 4)));
		out[2 * i] = hex[byte >> 4];
		out[2 * i + 1] = hex[byte & 15];
	}
	out[64] = '\0';
}

/* ---------------------------------------------------------------- base64url */

static const char b64u[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void b64url_encode(StrBuf *sb, const char *data, size_t len)
{
	const unsigned char *s = (const unsigned char *)data;
	size_t i;

	for (i = 0; i + 2 < len; i += 3) {
		uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
		sb_putc(sb, b64u[v >> 18]);
		sb_putc(sb, b64u[(v >> 12) & 63]);
		sb_putc(sb, b64u[(v >> 6) & 63]);
		sb_putc(sb, b64u[v & 63]);
	}
	if (len - i == 1) {
		uint32_t v = (uint32_t)s[i] << 16;
		sb_putc(sb, b64u[v >> 18]);
		sb_putc(sb, b64u[(v >> 12) & 63]);
	} else if (len - i == 2) {
		uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
		sb_putc(sb, b64u[v >> 18]);
		sb_putc(sb, b64u[(v >> 12) & 63]);
		sb_putc(sb, b64u[(v >> 6) & 63]);
	}
}

/* Strict: alphabet only, no padding, canonical.  Returns the length or -1. */
static int b64url_decode(const char *s, char *out, size_t cap)
{
	size_t len = strlen(s), n = 0, i;
	uint32_t acc = 0;
	int bits = 0;
	StrBuf check;
	bool ok;

	if (len == 0 || len % 4 == 1 || len / 4 * 3 + 3 > cap)
		return -1;
	for (i = 0; i < len; i++) {
		const char *p = strchr(b64u, s[i]);
		if (!p || !s[i])
			return -1;
		acc = (acc << 6) | (uint32_t)(p - b64u);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[n++] = (char)((acc >> bits) & 0xff);
		}
	}
	out[n] = '\0';
	/* canonical: re-encoding gives the input back (unused bits zero) */
	sb_init(&check);
	b64url_encode(&check, out, n);
	ok = check.data && strcmp(check.data, s) == 0;
	sb_free(&check);
	return ok ? (int)n : -1;
}

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
static bool is_json_content_type(const char *ct)
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

/* Number of characters (code points) of valid UTF-8. */
static size_t utf8_chars(const unsigned char *s, size_t len)
{
	size_t n = 0, i;

	for (i = 0; i < len; i++)
		if ((s[i] & 0xC0) != 0x80)
			n++;
	return n;
}

/* A JSON number (its text) that is an integer from lo to hi; 5.0 counts,
 * as it does for batchd.submit_batch. */
static bool json_int_in_range(const char *s, size_t len, int lo, int hi)
{
	char buf[64], *end;
	double d;

	if (len == 0 || len >= sizeof(buf))
		return false;
	memcpy(buf, s, len);
	buf[len] = '\0';
	errno = 0;
	d = strtod(buf, &end);
	if (*end || errno == ERANGE || !isfinite(d) || d != floor(d))
		return false;
	return d >= lo && d <= hi;
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
static void req_drop(Req *r)
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
static void req_send(Req *r, int status, struct evbuffer *body)
{
	if (r->req && !r->gone) {
		struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
		if (evcon)
			evhttp_connection_set_closecb(evcon, NULL, NULL);
		evhttp_send_reply(r->req, status, NULL, body);
		r->req = NULL;
		if (status >= 100 && status < 600)
			r->api->answered[status / 100]++;
	}
	log_debug("api: %s %d (%.1f ms)", r->tenant ? r->tenant : "-", status,
		  (double)(now_monotonic_us() - r->start_us) / 1000.0);
	req_drop(r);
}

static void reply_json(Req *r, int status, const char *body, size_t len)
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

static void reply_error(Req *r, int status, const char *fmt, ...) _PRINTF(3, 4);
static void reply_error(Req *r, int status, const char *fmt, ...)
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
static void reply_db_error(Req *r, PGresult *res)
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

static int pool_ready(const Api *api)
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
static void req_query(Req *r, bool same_db, const char *sql, int n, const char *const *params,
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

/* ================================================================ rendering */

enum ColKind { CK_STR, CK_NUM, CK_JSON, CK_BOOL };

typedef struct Col {
	const char *name;
	enum ColKind kind;
} Col;

/* One result row as a JSON object: columns first..first+n-1 named by cols. */
static void render_row(StrBuf *sb, const PGresult *res, int row, int first, const Col *cols, int n)
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

static const Col batch_cols[] = {
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

#define ITEM_COLS \
	"i.id, i.seq, i.status, i.attempts, i.provider, i.http_status, i.payload, i.result, " \
	"i.error, batchd.api_ts(i.started_at) AS started, batchd.api_ts(i.finished_at) AS finished"

static const Col item_cols[] = {
	{ "id", CK_NUM }, { "seq", CK_NUM }, { "status", CK_STR }, { "attempts", CK_NUM },
	{ "provider", CK_STR }, { "http_status", CK_NUM }, { "payload", CK_JSON },
	{ "result", CK_JSON }, { "error", CK_STR }, { "started_at", CK_STR },
	{ "finished_at", CK_STR },
};
#define ITEM_NCOLS ((int)ARRAY_SIZE(item_cols))

/* ================================================================ endpoints */

static const char *const get_batch_sql = BATCH_SELECT "WHERE b.id = $1::uuid AND b.tenant = $2";

/* GET /v1/batches/{id}, and the answer after submit, cancel and retry. */
static void step_batch(Req *r, PGresult *res)
{
	StrBuf sb;

	if (!db_result_ok(res)) {
		reply_db_error(r, res);
		return;
	}
	if (PQntuples(res) == 0) {
		reply_error(r, 404, "no such batch");
		return;
	}
	sb_init(&sb);
	render_row(&sb, res, 0, 0, batch_cols, BATCH_NCOLS);
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

/* ------------------------------------------------------------------ list */

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
		render_row(&sb, res, i, 0, batch_cols, BATCH_NCOLS);
	}
	sb_puts(&sb, "],\"next_cursor\":");
	if (n > r->limit) {
		StrBuf raw, cur;
		sb_init(&raw);
		sb_init(&cur);
		sb_printf(&raw, "%s|%s", PQgetvalue(res, r->limit - 1, BATCH_COL_CREATED),
			  PQgetvalue(res, r->limit - 1, BATCH_COL_ID));
		b64url_encode(&cur, raw.data, raw.len);
		json_append_string(&sb, cur.data, cur.len);
		sb_free(&raw);
		sb_free(&cur);
	} else {
		sb_puts(&sb, "null");
	}
	sb_putc(&sb, '}');
	reply_json(r, 200, sb.data, sb.len);
	sb_free(&sb);
}

static void do_list(Req *r)
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

	if (!db_result_ok(res)) {
		reply_db_error(r, res);
		return;
	}
	n = PQntuples(res);
	if (n == 0) {
		reply_error(r, 404, "no such batch");
		return;
	}
	sb_init(&sb);
	sb_puts(&sb, "{\"items\":[");
	for (int i = 0; i < n && i < r->limit; i++) {
		if (PQgetisnull(res, i, 1))
			break;          /* the batch has no (such) items */
		if (shown++)
			sb_putc(&sb, ',');
		render_row(&sb, res, i, 1, item_cols, ITEM_NCOLS);
	}
	sb_puts(&sb, "],\"next_cursor\":");
	if (n > r->limit) {
		StrBuf cur;
		const char *seq = PQgetvalue(res, r->limit - 1, 2);
		sb_init(&cur);
		b64url_encode(&cur, seq, strlen(seq));
		json_append_string(&sb, cur.data, cur.len);
		sb_free(&cur);
	} else {
		sb_puts(&sb, "null");
	}
	sb_putc(&sb, '}');
	reply_json(r, 200, sb.data, sb.len);
	sb_free(&sb);
}

static void do_items(Req *r)
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

	if (!db_result_ok(res)) {
		reply_db_error(r, res);
		return;
	}
	if (PQntuples(res) == 0) {
		reply_error(r, 404, "no such batch");
		return;
	}
	status = PQgetvalue(res, 0, 1);
	total = atoll(PQgetvalue(res, 0, 2));
	succeeded = atoll(PQgetvalue(res, 0, 3));
	failed = atoll(PQgetvalue(res, 0, 4));
	cancelled = atoll(PQgetvalue(res, 0, 5));
	recent = atoll(PQgetvalue(res, 0, 6));
	elapsed = atof(PQgetvalue(res, 0, 7));
	done = succeeded + failed + cancelled;
	terminal = strcmp(status, "pending") != 0 && strcmp(status, "processing") != 0;
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

static void do_progress(Req *r)
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

static void do_state_change(Req *r)
{
	const char *params[2] = { r->tenant, r->id };
	const char *sql = r->ep == EP_CANCEL ? "SELECT batchd.cancel_batch($1, $2::uuid)" :
		r->ep == EP_RETRY ? "SELECT batchd.retry_batch($1, $2::uuid)" :
		"SELECT batchd.delete_batch($1, $2::uuid)";

	req_query(r, false, sql, 2, params, step_state_change);
}

/* ------------------------------------------------------------------ submit */

enum SubKey { SK_NONE = -1, SK_ROUTE, SK_ITEMS, SK_NAME, SK_PRIORITY, SK_MAX_ATTEMPTS,
	      SK_GROUP_KEY, SK_METADATA, SK_COUNT };

static const char *const sub_keys[SK_COUNT] = {
	"route", "items", "name", "priority", "max_attempts", "group_key", "metadata",
};
static const char *const sub_type_msg[SK_COUNT] = {
	"route must be a string naming a configured route",
	"items must be a non-empty array of JSON objects",
	"name must be a string of at most 200 characters",
	"priority must be an integer from 0 to 10",
	"max_attempts must be an integer from 1 to 100",
	"group_key must be a string naming a payload field",
	"metadata must be a JSON object",
};

/* State of the event-parser check of a submit body. */
typedef struct SubmitCheck {
	int depth;                  /* open containers; 1: inside the body object */
	int key;                    /* top-level field whose value comes next */
	unsigned seen;
	bool in_items;              /* the items array (depth 2) is open */
	long long nitems;
	char *route;
	char err[512];
} SubmitCheck;

static int sc_fail(SubmitCheck *c, const char *fmt, ...) _PRINTF(2, 3);
static int sc_fail(SubmitCheck *c, const char *fmt, ...)
{
	va_list ap;

	if (!c->err[0]) {
		va_start(ap, fmt);
		vsnprintf(c->err, sizeof(c->err), fmt, ap);
		va_end(ap);
	}
	return 0;   /* stops yajl */
}

enum ScalarKind { SV_NULL, SV_BOOL, SV_NUMBER, SV_STRING };

static int sc_scalar(SubmitCheck *c, enum ScalarKind kind, const char *s, size_t len)
{
	int k;

	if (c->depth == 0)
		return sc_fail(c, "the request body must be a JSON object");
	if (c->in_items && c->depth == 2)
		return sc_fail(c, "items[%lld] must be a JSON object", c->nitems);
	if (c->depth != 1)
		return 1;
	k = c->key;
	c->key = SK_NONE;
	switch (k) {
	case SK_ROUTE:
		if (kind != SV_STRING || len == 0)
			return sc_fail(c, "%s", sub_type_msg[k]);
		c->route = xstrndup(s, len);
		return 1;
	case SK_NAME:
		if (kind == SV_NULL ||
		    (kind == SV_STRING && utf8_chars((const unsigned char *)s, len) <= 200))
			return 1;
		return sc_fail(c, "%s", sub_type_msg[k]);
	case SK_PRIORITY:
		if (kind == SV_NULL || (kind == SV_NUMBER && json_int_in_range(s, len, 0, 10)))
			return 1;
		return sc_fail(c, "%s", sub_type_msg[k]);
	case SK_MAX_ATTEMPTS:
		if (kind == SV_NULL || (kind == SV_NUMBER && json_int_in_range(s, len, 1, 100)))
			return 1;
		return sc_fail(c, "%s", sub_type_msg[k]);
	case SK_GROUP_KEY:
		if (kind == SV_NULL || (kind == SV_STRING && len > 0))
			return 1;
		return sc_fail(c, "%s", sub_type_msg[k]);
	case SK_METADATA:
		if (kind == SV_NULL)
			return 1;
		return sc_fail(c, "%s", sub_type_msg[k]);
	case SK_ITEMS:
	default:
		return sc_fail(c, "%s", sub_type_msg[SK_ITEMS]);
	}
}

static int sc_null(void *ctx)
{
	return sc_scalar(ctx, SV_NULL, NULL, 0);
}

static int sc_boolean(void *ctx, int b)
{
	return sc_scalar(ctx, SV_BOOL, NULL, 0);
}

static int sc_number(void *ctx, const char *s, size_t len)
{
	return sc_scalar(ctx, SV_NUMBER, s, len);
}

static int sc_string(void *ctx, const unsigned char *s, size_t len)
{
	if (memchr(s, '\0', len))
		return sc_fail(ctx, "strings must not contain the NUL character (\\u0000)");
	return sc_scalar(ctx, SV_STRING, (const char *)s, len);
}

static int sc_container(SubmitCheck *c, bool is_map)
{
	if (c->depth == 0) {
		if (!is_map)
			return sc_fail(c, "the request body must be a JSON object");
	} else if (c->depth == 1) {
		int k = c->key;
		c->key = SK_NONE;
		if (is_map && k == SK_METADATA)
			;
		else if (!is_map && k == SK_ITEMS)
			c->in_items = true;
		else
			return sc_fail(c, "%s", sub_type_msg[k >= 0 ? k : SK_ITEMS]);
	} else if (c->in_items && c->depth == 2) {
		if (!is_map)
			return sc_fail(c, "items[%lld] must be a JSON object", c->nitems);
		c->nitems++;
	}
	if (++c->depth > API_MAX_DEPTH)
		return sc_fail(c, "JSON nested deeper than %d levels", API_MAX_DEPTH);
	return 1;
}

static int sc_start_map(void *ctx)
{
	return sc_container(ctx, true);
}

static int sc_start_array(void *ctx)
{
	return sc_container(ctx, false);
}

static int sc_end(void *ctx)
{
	SubmitCheck *c = ctx;

	if (c->in_items && c->depth == 2)
		c->in_items = false;
	c->depth--;
	return 1;
}

static int sc_map_key(void *ctx, const unsigned char *key, size_t len)
{
	SubmitCheck *c = ctx;
	int k;

	if (memchr(key, '\0', len))
		return sc_fail(c, "strings must not contain the NUL character (\\u0000)");
	if (c->depth != 1)
		return 1;
	for (k = 0; k < SK_COUNT; k++)
		if (strlen(sub_keys[k]) == len && memcmp(sub_keys[k], key, len) == 0)
			break;
	if (k == SK_COUNT)
		return sc_fail(c, "unknown field \"%.*s\" (known: route, items, name, priority, "
			       "max_attempts, group_key, metadata)", len > 64 ? 64 : (int)len, key);
	if (c->seen & (1u << k))
		return sc_fail(c, "duplicate field \"%s\"", sub_keys[k]);
	c->seen |= 1u << k;
	c->key = k;
	return 1;
}

static const yajl_callbacks submit_callbacks = {
	sc_null, sc_boolean, NULL, NULL, sc_number, sc_string,
	sc_start_map, sc_map_key, sc_end, sc_start_array, sc_end,
};

/* Check a submit body; 0, or -1 with a message in c->err. */
static int submit_check(const Config *cfg, const char *body, size_t len, SubmitCheck *c)
{
	yajl_handle h;
	yajl_status st;

	memset(c, 0, sizeof(*c));
	c->key = SK_NONE;
	if (len == 0) {
		snprintf(c->err, sizeof(c->err), "the request body is empty: want a JSON object");
		return -1;
	}
	if (memchr(body, '\0', len)) {
		snprintf(c->err, sizeof(c->err), "malformed JSON: NUL byte in the body");
		return -1;
	}
	h = yajl_alloc(&submit_callbacks, NULL, c);
	if (!h)
		fatal("yajl_alloc failed");
	st = yajl_parse(h, (const unsigned char *)body, len);
	if (st == yajl_status_ok)
		st = yajl_complete_parse(h);
	if (st != yajl_status_ok && !c->err[0]) {
		unsigned char *e = yajl_get_error(h, 0, NULL, 0);
		char *nl;
		snprintf(c->err, sizeof(c->err), "malformed JSON: %s", (const char *)e);
		yajl_free_error(h, e);
		if ((nl = strchr(c->err, '\n')) != NULL)
			*nl = '\0';
	}
	yajl_free(h);
	if (c->err[0])
		return -1;
	/*
	 * yajl checks UTF-8 loosely (overlong forms, surrogates, code points
	 * past U+10FFFF pass), takes \v and \f as whitespace, and decodes a
	 * high surrogate escape with whatever escape follows (so "\ud83d\u0000"
	 * shows it no NUL); PostgreSQL would refuse the body later. The strict
	 * scanner decides.
	 */
	if (!json_is_valid(body, len)) {
		snprintf(c->err, sizeof(c->err),
			 "malformed JSON: not well-formed UTF-8, or not exactly one JSON value");
		return -1;
	}
	if (!json_is_valid_jsonb(body, len)) {
		snprintf(c->err, sizeof(c->err), "strings must not contain the NUL character "
			 "(\\u0000) or an unpaired UTF-16 surrogate escape");
		return -1;
	}
	if (!(c->seen & (1u << SK_ROUTE)))
		snprintf(c->err, sizeof(c->err), "route is required");
	else if (!(c->seen & (1u << SK_ITEMS)) || c->nitems == 0)
		snprintf(c->err, sizeof(c->err), "%s", sub_type_msg[SK_ITEMS]);
	else if (!config_find_route(cfg, c->route))
		snprintf(c->err, sizeof(c->err), "unknown route \"%.200s\"", c->route);
	return c->err[0] ? -1 : 0;
}

int api_validate_submit(const char *body, size_t len, const Config *cfg,
			char *err, size_t errlen)
{
	SubmitCheck c;
	int rc = submit_check(cfg, body, len, &c);

	if (errlen)
		snprintf(err, errlen, "%s", c.err);
	free(c.route);
	return rc;
}

static void step_submit(Req *r, PGresult *res)
{
	if (!db_result_ok(res)) {
		reply_db_error(r, res);
		return;
	}
	snprintf(r->id, sizeof(r->id), "%s", PQgetvalue(res, 0, 0));
	r->answer = PQgetvalue(res, 0, 1)[0] == 't' ? 201 : 200;
	read_batch(r, true);
}

static void do_submit(Req *r)
{
	struct evkeyvalq *in = evhttp_request_get_input_headers(r->req);
	struct evbuffer *buf = evhttp_request_get_input_buffer(r->req);
	const char *idem = evhttp_find_header(in, "Idempotency-Key");
	const char *params[4];
	SubmitCheck c;
	size_t len;
	char *body;

	if (!is_json_content_type(evhttp_find_header(in, "Content-Type"))) {
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
	if (submit_check(r->api->bd->cfg, body, len, &c) < 0) {
		free(c.route);
		reply_error(r, 400, "%s", c.err);
		return;
	}
	r->route = c.route;

	/* $3 is cast to jsonb once (the parameter's type becomes jsonb) */
	params[0] = r->tenant;
	params[1] = r->route;
	params[2] = body;
	params[3] = r->idem;
	req_query(r, false,
		  "SELECT s.id, s.created FROM batchd.api_submit($1, $2, $3::jsonb -> 'items', "
		  "$3::jsonb - 'route'::text - 'items'::text, $4) AS s",
		  4, params, step_submit);
}

/* ------------------------------------------------------------------ status */

static void rate_tick(evutil_socket_t fd, short what, void *arg)
{
	Api *api = arg;
	EngineStats st;
	struct timeval tv = { RATE_EVERY_MS / 1000, (RATE_EVERY_MS % 1000) * 1000 };

	engine_get_stats(api->bd->engine, &st);
	api->rate_pos = (api->rate_pos + 1) % RATE_SLOTS;
	api->rate[api->rate_pos].at_us = now_monotonic_us();
	api->rate[api->rate_pos].done = st.succeeded + st.failed;
	evtimer_add(api->rate_timer, &tv);
}

/* Items this worker finished per second over about the last minute. */
static double recent_rate(const Api *api, uint64_t done_now)
{
	int64_t now = now_monotonic_us(), oldest_at = 0;
	uint64_t oldest_done = 0;

	for (int i = 0; i < RATE_SLOTS; i++) {
		const RateSample *s = &api->rate[i];
		if (s->at_us == 0 || now - s->at_us > 65 * 1000000LL)
			continue;
		if (oldest_at == 0 || s->at_us < oldest_at) {
			oldest_at = s->at_us;
			oldest_done = s->done;
		}
	}
	if (oldest_at == 0 || now - oldest_at < 1000000 || done_now < oldest_done)
		return 0.0;
	return (double)(done_now - oldest_done) / ((double)(now - oldest_at) / 1e6);
}

static void step_status(Req *r, PGresult *res)
{
	Api *api = r->api;
	Batchd *bd = api->bd;
	EngineStats st;
	StrBuf sb;
	char ts[40];
	int64_t now = now_realtime_us();
	const char *dberr;
	bool dbup;

	if (!db_result_ok(res)) {
		reply_db_error(r, res);
		return;
	}
	engine_get_stats(bd->engine, &st);
	sb_init(&sb);

	sb_puts(&sb, "{\"worker\":{\"id\":");
	json_append_string(&sb, bd->worker_id, strlen(bd->worker_id));
	sb_puts(&sb, ",\"hostname\":");
	json_append_string(&sb, bd->hostname, strlen(bd->hostname));
	format_timestamp(api->started_us, ts, sizeof(ts));
	sb_printf(&sb, ",\"pid\":%d,\"version\":\"%s\",\"started_at\":\"%s\",\"uptime_s\":%.1f,"
		  "\"ready\":%s}", (int)getpid(), PACKAGE_VERSION, ts,
		  (double)(now - api->started_us) / 1e6,
		  engine_is_ready(bd->engine) ? "true" : "false");

	sb_printf(&sb, ",\"engine\":{\"inflight\":%d,\"pending_completions\":%d,"
		  "\"claimed\":%llu,\"succeeded\":%llu,\"failed\":%llu,\"fenced\":%llu,"
		  "\"rate_per_s\":%.3f}",
		  st.inflight, st.pending, (unsigned long long)st.claimed,
		  (unsigned long long)st.succeeded, (unsigned long long)st.failed,
		  (unsigned long long)st.fenced, recent_rate(api, st.succeeded + st.failed));

	dbup = engine_db_up(bd->engine);
	dberr = engine_db_error(bd->engine);
	sb_printf(&sb, ",\"database\":{\"up\":%s,\"error\":", dbup ? "true" : "false");
	if (dbup)
		sb_puts(&sb, "null");
	else
		json_append_string(&sb, dberr, strlen(dberr));
	sb_printf(&sb, ",\"api_connections\":%d,\"api_connections_ready\":%d}",
		  API_POOL_SIZE, pool_ready(api));

	sb_printf(&sb, ",\"api\":{\"requests\":%d,\"streams\":%d,\"max_streams\":%d}",
		  api->nreqs, api->nstreams, API_MAX_STREAMS);

	sb_puts(&sb, ",\"fleet\":[");
	for (int i = 0; i < PQntuples(res); i++) {
		static const Col fleet_cols[] = {
			{ "id", CK_STR }, { "hostname", CK_STR }, { "pid", CK_NUM },
			{ "version", CK_STR }, { "started_at", CK_STR }, { "heartbeat_at", CK_STR },
			{ "inflight", CK_NUM }, { "heartbeat_age_s", CK_NUM },
		};
		double age = atof(PQgetvalue(res, i, 7));
		if (i)
			sb_putc(&sb, ',');
		render_row(&sb, res, i, 0, fleet_cols, (int)ARRAY_SIZE(fleet_cols));
		sb.len--;   /* reopen the object */
		sb_printf(&sb, ",\"alive\":%s,\"self\":%s}",
			  age * 1000.0 < (double)api->bd->cfg->lease_timeout_ms ? "true" : "false",
			  strcmp(PQgetvalue(res, i, 0), bd->worker_id) == 0 ? "true" : "false");
	}
	sb_puts(&sb, "]");

	/*
	 * Providers: the configured figures.  The live ones (breaker state,
	 * tokens in the bucket, transfers in flight, recent rate) belong to the
	 * engine; until it exports them (engine_get_provider_stats(), to be
	 * wired by the lead) they are null and the breaker state "unknown".
	 */
	sb_puts(&sb, ",\"providers\":[");
	for (int i = 0; i < api->bd->cfg->nproviders; i++) {
		const Provider *p = api->bd->cfg->providers[i];
		ProviderStats ps;
		if (i)
			sb_putc(&sb, ',');
		sb_puts(&sb, "{\"name\":");
		json_append_string(&sb, p->name, strlen(p->name));
		sb_printf(&sb, ",\"rate\":%.6g,\"burst\":%d,\"max_concurrency\":%d",
			  p->rate, p->burst, p->max_concurrency);
		if (engine_provider_stats(bd->engine, p->name, &ps)) {
			sb_printf(&sb, ",\"breaker\":{\"state\":\"%s\",\"half_open_in_s\":",
				  ps.breaker_state);
			if (ps.half_open_in_ms >= 0)
				sb_printf(&sb, "%.3f", (double)ps.half_open_in_ms / 1000.0);
			else
				sb_puts(&sb, "null");
			sb_printf(&sb, ",\"failures\":%d},\"tokens\":%.3f,\"rate_share\":%.6g,"
				  "\"inflight\":%d,\"queued\":%d,\"rate_per_s\":%.3f,"
				  "\"error_rate\":%.4f,\"paused_for_s\":%.3f,\"requests\":%llu,"
				  "\"per_second\":[", ps.failures, ps.tokens, ps.rate_share, ps.inflight,
				  ps.queued, ps.req_per_s, ps.error_ratio, (double)ps.paused_ms / 1000.0,
				  (unsigned long long)ps.requests);
			for (int k = 0; k < PROVIDER_HISTORY_S; k++)
				sb_printf(&sb, "%s%u", k ? "," : "", ps.per_second[k]);
			sb_puts(&sb, "]}");
		} else {
			sb_puts(&sb, ",\"breaker\":{\"state\":\"unknown\"},\"tokens\":null,"
				"\"inflight\":null,\"rate_per_s\":null}");
		}
	}
	sb_puts(&sb, "],\"routes\":[");
	for (int i = 0; i < api->bd->cfg->nroutes; i++) {
		const Route *rt = api->bd->cfg->routes[i];
		if (i)
			sb_putc(&sb, ',');
		sb_puts(&sb, "{\"name\":");
		json_append_string(&sb, rt->name, strlen(rt->name));
		sb_puts(&sb, ",\"providers\":[");
		for (int j = 0; j < rt->nproviders; j++) {
			if (j)
				sb_putc(&sb, ',');
			json_append_string(&sb, rt->provider_names[j], strlen(rt->provider_names[j]));
		}
		sb_puts(&sb, "]}");
	}
	sb_puts(&sb, "]}");
	reply_json(r, 200, sb.data, sb.len);
	sb_free(&sb);
}

static void do_status(Req *r)
{
	static const char sql[] =
		"SELECT w.id, w.hostname, w.pid, w.version, batchd.api_ts(w.started_at), "
		"batchd.api_ts(w.heartbeat_at), w.inflight, "
		"round(extract(epoch FROM now() - w.heartbeat_at), 3) "
		"FROM batchd.workers AS w ORDER BY w.started_at, w.id";

	req_query(r, false, sql, 0, NULL, step_status);
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

/* Stop the stream's database side: no more callbacks act on it.  Safe inside
 * the stream connection's own callbacks (the Db is freed later, by reap_ev). */
static void stream_stop(Req *r)
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
	stream_stop(r);
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
		r->api->answered[2]++;
	}
	n = PQntuples(res);
	if (n == 0) {
		struct evhttp_connection *evcon = evhttp_request_get_connection(r->req);
		stream_stop(r);
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
		render_row(&chunk, res, i, 0, item_cols, ITEM_NCOLS);
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

	if (!db_result_ok(res)) {
		reply_db_error(r, res);
		return;
	}
	if (PQntuples(res) == 0) {
		reply_error(r, 404, "no such batch");
		return;
	}
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

static void do_results(Req *r)
{
	const char *params[2] = { r->id, r->tenant };
	req_query(r, false, "SELECT 1 FROM batchd.batches WHERE id = $1::uuid AND tenant = $2",
		  2, params, step_results);
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
			if (!in_list(p->value, ok)) {
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

void api_get_stats(const Api *api, ApiStats *out)
{
	memset(out, 0, sizeof(*out));
	out->requests = api->nreqs;
	out->streams = api->nstreams;
	out->db_ready = pool_ready(api);
	out->db_total = API_POOL_SIZE;
	memcpy(out->answered, api->answered, sizeof(out->answered));
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
