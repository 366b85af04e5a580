/*
 * engine_int.h - internals shared by engine.c (claims, completions, stop)
 * and dispatch.c (providers: rate limits, caps, breakers, retries,
 * failover).  Not for other modules.
 */
#ifndef BATCHD_ENGINE_INT_H
#define BATCHD_ENGINE_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <yajl/yajl_tree.h>

#include "batchd/breaker.h"
#include "batchd/db.h"
#include "batchd/engine.h"
#include "batchd/http.h"
#include "batchd/ratelimit.h"

#define MAX_ROUTE_PROVIDERS 16
/* Latency histogram bucket upper bounds, seconds (Prometheus style). */
#define LAT_BUCKETS 12
extern const double lat_bucket_le[LAT_BUCKETS];

enum Outcome {
	OUT_SUCCESS,    /* 2xx */
	OUT_TRANSIENT,  /* may succeed later: timeouts, resets, 5xx, 408, 429 */
	OUT_PERMANENT,  /* will not: other 4xx, oversize, redirects, bad template */
};

enum JobState {
	JOB_NEW,        /* claimed, not yet routed */
	JOB_QUEUED,     /* waiting in a provider's queue (token, cap, pause) */
	JOB_RUNNING,    /* transfer in flight */
	JOB_BACKOFF,    /* waiting on its retry timer */
};

typedef struct ProvState ProvState;

typedef struct Job {
	struct Job *prev, *next;   /* engine's list of every live job */
	struct Job *qnext;         /* provider wait queue */
	Engine *e;
	Config *cfg;               /* the config generation j->route lives in */
	enum JobState state;
	int64_t id;
	char batch_id[37];
	Route *route;
	int pidx;                  /* current provider index in the route */
	int tries;                 /* tries on the current provider */
	int tries_by[MAX_ROUTE_PROVIDERS];
	ProvState *ps;             /* provider of the running/queued try */
	char *payload_text;
	yajl_val payload;
	int attempts;
	int max_attempts;
	int64_t started_us;        /* realtime, first transfer start */
	int64_t try_started_mono;  /* monotonic, this try's start */
	int64_t queued_mono;       /* monotonic, entered the provider queue */
	struct event *retry_timer;
	char *last_error;
	long last_status;

	/* the transfer */
	CURL *easy;
	ProvState *easy_ps;        /* whose pool the handle goes back to */
	uint64_t easy_gen;         /* ... and for which of its sections */
	int http_shard;            /* the curl multi shard it runs on */
	struct curl_slist *headers;  /* -> hnodes[0], or NULL */
	struct curl_slist *hnodes;   /* the request's header list, job-owned */
	int hnodes_cap;
	StrBuf hbuf;                 /* rendered header lines, NUL-separated */
	StrBuf url;
	StrBuf body;
	StrBuf resp;
	int64_t max_size;
	bool too_big;
	char retry_after[64];      /* Retry-After header of the last answer */
	char errbuf[CURL_ERROR_SIZE];
} Job;

/* Per-provider live state; survives reloads by name. */
struct ProvState {
	Engine *e;
	char *name;
	Provider *cfg;             /* current config section */
	TokenBucket tb;
	Breaker br;
	int inflight;
	int64_t paused_until;      /* monotonic us; Retry-After */
	Job *qhead, *qtail;
	int nqueued;
	struct event *wake_timer;  /* token, pause */
	struct event *br_timer;    /* OPEN -> HALF_OPEN */
	bool removed;              /* gone from the config at a reload */
	double share;              /* this worker's share of the rate (fleet) */
	uint64_t gen;              /* bumped when cfg changes (reload) */
	CURL **pool;               /* idle easy handles set up for cfg */
	int npool, pool_cap;

	/* counters for metrics and status */
	uint64_t requests;
	uint64_t by_code[600];     /* by HTTP status; [0]: no answer */
	uint64_t retries;
	uint64_t failovers_from;
	double wait_seconds;       /* time jobs spent waiting for a token/slot */
	uint64_t lat_count;
	double lat_sum;
	uint64_t lat_buckets[LAT_BUCKETS];
	/* recent requests and errors, one slot a second */
	uint32_t sec_req[PROVIDER_HISTORY_S];
	uint32_t sec_err[PROVIDER_HISTORY_S];
	int64_t sec_stamp[PROVIDER_HISTORY_S];
};

typedef struct RouteStats {
	uint64_t succeeded;
	uint64_t failed;
	uint64_t deferred;
	uint64_t cancelled;
	int64_t queue_depth;       /* queued items, periodic query; -1 unknown */
} RouteStats;

/* Pending completions: one JSON object each, flushed as one array. */
typedef struct RecList {
	char **v;
	int n;
	int cap;
} RecList;

enum StopPhase {
	STOP_NONE,
	STOP_DRAINING,  /* no claims; waiting for transfers */
	STOP_FLUSHING,  /* recording completions, then deregistering */
	STOP_DONE,
};

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
	int claim_asked;
	int claim_landing;        /* rows of the last claim not yet made jobs */
	unsigned wake_seq;
	unsigned claim_wake_seq;
	/* Where the next claim resumes (see engine_maybe_claim): the priority
	 * and id of the last item of the last full claim, while resume_ok. */
	bool resume_ok;
	bool claim_resumed;       /* the claim in flight resumes */
	int resume_priority;
	long long resume_id;
	int64_t head_claim_us;    /* monotonic start of the last claim from the head */
	char *routes_param;       /* text[] literals for the claim */
	char *group_routes_param;
	char *group_conc_param;
	char *group_interval_param;
	bool have_groups;

	Job *jobs;                /* every live job */
	int njobs;
	int ntransfers;            /* none starts at cfg->max_inflight or more */
	bool transfers_full;       /* a provider waits for a transfer slot */

	Config **retired;         /* older configs still referenced by jobs */
	int *retired_jobs;
	int nretired;
	int cfg_jobs;             /* jobs referencing e->cfg */

	ProvState **provs;
	int nprovs;
	RouteStats *route_stats;  /* aligned with cfg->routes */

	RecList pending;
	RecList flushing;
	bool flush_inflight;
	bool isolate;

	struct event *flush_timer;
	struct event *poll_timer;
	struct event *heartbeat_timer;
	struct event *reaper_timer;
	struct event *lag_timer;
	struct event *depth_timer;
	struct event *retention_timer;
	struct event *group_timer;
	int64_t group_recheck_ms;
	Db *mdb;                  /* maintenance connection */
	Db *fdb;                  /* completion (flush) connection */
	int64_t last_flush_us;
	bool dereg_inflight;
	int64_t lag_expected_us;
	double lag_max_s;
	int64_t db_down_since_us;  /* monotonic; 0 while the database is up */
	int64_t lease_ok_us;       /* sent time of the last acknowledged heartbeat */
	int64_t hb_sent_us;
	bool hb_inflight;
	struct event *stop_timer;
	enum StopPhase stop;

	EngineStats st;
};

/* engine.c */
bool engine_lease_ok(Engine *e);           /* see engine.c */
void engine_check_lease(Engine *e);        /* heartbeat now, if none is out */
void engine_record(Engine *e, Job *j, const char *status, long http_status,
		   const char *body, size_t blen, const char *error);
void engine_defer(Engine *e, Job *j, int64_t delay_ms, const char *why);
/* Drop a job not yet sent whose batch was cancelled (back to the queue, where
 * the database counts it cancelled). */
void engine_drop_cancelled(Engine *e, Job *j);
void engine_job_done(Engine *e, Job *j);   /* unlink and free */
void engine_after_event(Engine *e);        /* flush/claim as capacity allows */

/* dispatch.c */
void dispatch_init(Engine *e);
void dispatch_free(Engine *e);
void dispatch_route(Engine *e, Job *j);    /* pick provider, queue or start */
void dispatch_transfer_done(CURL *easy, CURLcode code, void *priv, void *arg);
void dispatch_abort_all(Engine *e);        /* stop: drop every job */
void dispatch_drop_waiting(Engine *e);     /* stop: drop jobs not transferring */
int dispatch_cancel_batch(Engine *e, const char *batch_id);
ProvState *dispatch_find(Engine *e, const char *name);
void dispatch_job_release(Engine *e, Job *j);  /* free transfer resources */
void dispatch_reload(Engine *e, Config *nc);   /* before e->cfg switches */
void dispatch_wake_all(Engine *e);             /* after it switched */

#endif /* BATCHD_ENGINE_INT_H */
