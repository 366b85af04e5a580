/*
 * api_req.h - what the REST API's files share (internal to api*.c; nothing
 * else includes it): the server state Api, the request context Req, the
 * request lifecycle and answers (api_req.c), the endpoint handlers the
 * route table of api.c names, and the results streams' hooks.  See api.c
 * for how a request runs.
 */
#ifndef BATCHD_API_REQ_H
#define BATCHD_API_REQ_H

#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "batchd/batchd.h"
#include "batchd/db.h"

struct evhttp;
struct evhttp_connection;
struct evhttp_request;
struct evbuffer;
struct event;

#define API_POOL_SIZE 3             /* connections for request queries */
#define API_MAX_STREAMS 16          /* concurrent results streams */
#define API_DEFAULT_LIMIT 100       /* page size of list and items */
#define API_MAX_LIMIT 1000

#define RATE_SLOTS 13               /* samples of the engine's counters ... */
#define RATE_EVERY_MS 5000          /* ... every 5 s: the last minute */

enum Endpoint {
	EP_LIST, EP_SUBMIT, EP_GET, EP_DELETE, EP_PROGRESS, EP_ITEMS, EP_RESULTS,
	EP_CANCEL, EP_RETRY, EP_STATUS, EP_EVENTS,
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

/* One request, from its arrival until its answer is sent AND no database
 * callback naming it is due (busy == 0). */
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
	char cur_seq[24];           /* items cursor: seq; events cursor: event id */

	/* submit */
	char *route;
	char *idem;
	int answer;                 /* 200 or 201 after the follow-up read */

	/* results stream (api_results.c) */
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
	struct event *rate_timer;   /* api_status.c */
	RateSample rate[RATE_SLOTS];
	int rate_pos;
	int64_t started_us;         /* realtime */
	bool closing;
};

/* ---------------------------------------------------------- api_req.c */

Req *req_new(Api *api, struct evhttp_request *req);
void req_free(Req *r);
/* Let go of the client side (the request, the stream), never answer. */
void req_forget(Req *r);
/* req_forget, then free the Req unless a query callback is due. */
void req_drop(Req *r);
/* evhttp close callback of the connection of a request in progress. */
void req_on_conn_close(struct evhttp_connection *evcon, void *arg);
/* Final answer (body may be NULL); the Req is gone afterwards. */
void req_send(Req *r, int status, struct evbuffer *body);
void reply_json(Req *r, int status, const char *body, size_t len);
void reply_error(Req *r, int status, const char *fmt, ...) _PRINTF(3, 4);
/* A failed query (res NULL: connection lost) as 400/409/503/500. */
void reply_db_error(Req *r, PGresult *res);
/* A query for one batch of the tenant: true when it found a row, else it
 * answered (the error, or 404 "no such batch"). */
bool req_batch_found(Req *r, PGresult *res);
/* Run one step's query; same_db: on the previous step's connection.  On
 * failure to queue it answers 503 (and the Req is gone). */
void req_query(Req *r, bool same_db, const char *sql, int n, const char *const *params,
	       req_step_fn step);

/* The pool of request connections. */
void api_pool_open(Api *api);
void api_pool_close(Api *api);
int api_pool_ready(const Api *api);
const char *api_pool_error(const Api *api);

/* Checks shared by the router and the endpoints. */
bool api_parse_uuid(const char *s, char out[37]);
bool api_is_json_content_type(const char *ct);

/* One result row as a JSON object: columns first..first+n-1 named by cols. */
enum ColKind { CK_STR, CK_NUM, CK_JSON, CK_BOOL };
typedef struct ApiCol {
	const char *name;
	enum ColKind kind;
} ApiCol;
void api_render_row(StrBuf *sb, const PGresult *res, int row, int first, const ApiCol *cols,
		    int n);

/* ------------------------------------------------------ api_batches.c */

/* The item object: ITEM_COLS selected from batchd.items AS i, rendered by
 * api_item_cols (the items page and the results stream). */
#define ITEM_COLS \
	"i.id, i.seq, i.status, i.attempts, i.provider, i.http_status, i.payload, i.result, " \
	"i.error, batchd.api_ts(i.started_at) AS started, batchd.api_ts(i.finished_at) AS finished"
extern const ApiCol api_item_cols[];
extern const int api_item_ncols;

/* Endpoint handlers, run after authentication and the router's checks. */
void ep_list(Req *r);
void ep_events(Req *r);
void ep_submit(Req *r);
void ep_get(Req *r);
void ep_items(Req *r);
void ep_progress(Req *r);
void ep_state_change(Req *r);           /* cancel, retry, delete */

/* ------------------------------------------------------ api_results.c */

void ep_results(Req *r);
void results_init(Api *api);
void results_free(Api *api);
/* Stop the request's stream, if any: no more callbacks act on it. */
void results_stop(Req *r);

/* ------------------------------------------------------- api_status.c */

void ep_status(Req *r);
/* /healthz, /readyz and the rate sampling of /v1/status. */
void api_status_init(Api *api);
void api_status_free(Api *api);

#endif /* BATCHD_API_REQ_H */
