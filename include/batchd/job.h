/*
 * job.h - one claimed item while this process holds it.
 *
 * A job is created from a claimed row (claim.c via the engine), routed and
 * retried by dispatch.c, sent by request.c, and ends exactly once: its
 * outcome recorded (complete.c), deferred back to the queue, or let go at a
 * stop.  job_set_state() is the only writer of its state; JOB_DONE is
 * terminal and the job is freed right after.
 *
 *   NEW ----> QUEUED ----> RUNNING ----> DONE
 *    |  \        |           |  |
 *    |   `-------|--------> BACKOFF ---> NEW (retry)
 *    `-----------+--------------------> DONE
 *   (RUNNING -> NEW: failover; QUEUED -> NEW: its provider's breaker opened)
 */
#ifndef BATCHD_JOB_H
#define BATCHD_JOB_H

#include <stdbool.h>
#include <stdint.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <yajl/yajl_tree.h>

#include "batchd/config.h"
#include "batchd/limiter.h"
#include "batchd/util.h"

#define MAX_ROUTE_PROVIDERS 16

enum Outcome {
	OUT_SUCCESS,    /* 2xx */
	OUT_TRANSIENT,  /* may succeed later: timeouts, resets, 5xx, 408, 429 */
	OUT_PERMANENT,  /* will not: other 4xx, oversize, redirects, bad template */
};

enum JobState {
	JOB_NEW,        /* claimed (or between tries), not waiting anywhere */
	JOB_QUEUED,     /* waiting in a provider's queue (token, cap, pause) */
	JOB_RUNNING,    /* transfer in flight */
	JOB_BACKOFF,    /* waiting on its retry timer */
	JOB_DONE,       /* ended: recorded, deferred or let go; freed next */
};

typedef struct ProvState ProvState;
typedef struct HandlePool HandlePool;
typedef struct Dispatch Dispatch;

typedef struct Job {
	struct Job *prev, *next;   /* the engine's list of every live job */
	struct Job *qnext;         /* provider wait queue */
	Dispatch *disp;            /* for the retry timer */
	Config *cfg;               /* the config generation j->route lives in */
	enum JobState state;       /* written by job_set_state() only */
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
	LimiterTicket lticket;     /* the provider's window, this try */
	int64_t queued_mono;       /* monotonic, entered the provider queue */
	bool fair_queued;          /* queued, and its route has batch_concurrency */
	struct event *retry_timer;
	char *last_error;
	long last_status;
	uint64_t login_gen;        /* the provider's token generation this try carried */
	bool auth_resent;          /* sent again once after a 401 to a current token */

	/* the transfer (request.c) */
	CURL *easy;
	HandlePool *easy_pool;     /* where the handle goes back to */
	uint64_t easy_gen;         /* ... and for which of its generations */
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

/* A job in state NEW for a claimed row (payload not parsed yet). */
Job *job_new(Config *cfg, int64_t id, const char *batch_id, const char *payload_text,
	     int attempts, int max_attempts);
/* The only writer of j->state; an impossible change is a bug (fatal). */
void job_set_state(Job *j, enum JobState to);
const char *job_state_name(enum JobState s);
bool job_state_change_ok(enum JobState from, enum JobState to);
void job_set_last_error(Job *j, const char *err, long status);
/* Free a job in state DONE whose transfer resources were released. */
void job_free(Job *j);

#endif /* BATCHD_JOB_H */
