/*
 * api_req.h - what the files of the REST API share: the server (Api), a
 * request (Req) and its steps, the replies, the query pool and the rendering
 * of result rows.  Included by api.c (server, routing, request lifecycle,
 * auth), api_batches.c (batch endpoints), api_submit.c (POST /v1/batches),
 * api_status.c (GET /v1/status) and api_results.c (NDJSON streams) only.
 */
#ifndef BATCHD_API_REQ_H
#define BATCHD_API_REQ_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>
#include <event2/http.h>
#include <libpq-fe.h>

#include "batchd/api.h"
#include "batchd/db.h"
#include "batchd/log.h"
#include "batchd/util.h"

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
	bool closing;
};


/* ---------------------------------------------------------------- api.c */

/* Free a Req whose client went away (its answer will never be sent). */
void req_drop(Req *r);
/* Send the final answer (evhttp owns the request from then on). */
void req_send(Req *r, int status, struct evbuffer *body);
void reply_json(Req *r, int status, const char *body, size_t len);
/* {"error":{"code":...,"message":...}} with the code for the status. */
void reply_error(Req *r, int status, const char *fmt, ...) _PRINTF(3, 4);
/* A failed query: 400/404/409/503 from its SQLSTATE. */
void reply_db_error(Req *r, PGresult *res);
/* Pool connections up. */
int pool_ready(const Api *api);
/* Run one step's query (see api.c). */
void req_query(Req *r, bool same_db, const char *sql, int n, const char *const *params,
	       req_step_fn step);
bool is_json_content_type(const char *ct);

/* ---------------------------------------------------------------- api_batches.c */

enum ColKind { CK_STR, CK_NUM, CK_JSON, CK_BOOL };

typedef struct Col {
	const char *name;
	enum ColKind kind;
} Col;

/* One result row as a JSON object: columns first..first+n-1 named by cols. */
void render_row(StrBuf *sb, const PGresult *res, int row, int first, const Col *cols, int n);

/* The item object's columns, and their names and kinds. */
#define ITEM_COLS \
	"i.id, i.seq, i.status, i.attempts, i.provider, i.http_status, i.payload, i.result, " \
	"i.error, batchd.api_ts(i.started_at) AS started, batchd.api_ts(i.finished_at) AS finished"
extern const Col item_cols[];
extern const int item_ncols;

/* GET /v1/batches/{id} (also the answer after submit, cancel and retry). */
void read_batch(Req *r, bool same_db);
void do_list(Req *r);
void do_items(Req *r);
void do_progress(Req *r);
void do_state_change(Req *r);   /* cancel, retry, delete */

/* ---------------------------------------------------------------- the others */

void do_submit(Req *r);          /* api_submit.c */
void rate_tick(evutil_socket_t fd, short what, void *arg);   /* api_status.c */
void do_status(Req *r);
void do_results(Req *r);         /* api_results.c */
/* Stop a stream's database side: no more callbacks act on it. */
void stream_stop(Req *r);

#endif /* BATCHD_API_REQ_H */
