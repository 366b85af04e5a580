/*
 * provider.h - the live state of one provider: its wait queue, token
 * bucket, concurrency count, Retry-After pause, circuit breaker, handle
 * pool and counters.  Survives reloads by name.
 *
 * The provider decides whether a request may start (provider_can_start:
 * pause, concurrency window, tokens) and counts what happened
 * (provider_finished); it does not route or send.  Its concurrency window
 * is a Limiter (limiter.h): slow start from breaker_failures after start,
 * idle and a breaker that closed again, up to max_concurrency or
 * max_inflight; with max_concurrency = auto the adaptive limit.
 * When waiting jobs may be able to go (a token is due, a pause or the
 * breaker's cooldown ended, the breaker opened and they must move on) it
 * tells its owner through ProvHandlers.wake.
 */
#ifndef BATCHD_PROVIDER_H
#define BATCHD_PROVIDER_H

#include <stdbool.h>
#include <stdint.h>

#include <curl/curl.h>
#include <event2/event.h>

#include "batchd/breaker.h"
#include "batchd/config.h"
#include "batchd/job.h"
#include "batchd/limiter.h"
#include "batchd/login.h"
#include "batchd/ratelimit.h"
#include "batchd/request.h"

typedef struct ProvState ProvState;
typedef struct ProviderStats ProviderStats;

/* Fair turns (provider_pop): how many queued jobs one pop looks at, and
 * how many batches' last start a provider remembers. */
#define PROV_FAIR_SCAN 64
#define PROV_FAIR_BATCHES 64

/* Live figures of one provider, for /v1/status and the status page. */
#define PROVIDER_HISTORY_S 180
struct ProviderStats {
	const char *breaker_state;   /* "closed", "open", "half_open" */
	int64_t half_open_in_ms;     /* open: time to half-open; else -1 */
	int failures;                /* consecutive transient failures */
	double tokens;
	double rate_share;           /* this worker's rate, requests/s (0: unlimited) */
	int inflight;
	int queued;
	double req_per_s;            /* over the last 60 s */
	double error_ratio;          /* failed / requests over the last 60 s */
	int64_t paused_ms;           /* Retry-After pause left */
	uint64_t requests;
	uint32_t per_second[PROVIDER_HISTORY_S];   /* oldest first, last = now */
	int concurrency_limit;       /* the limiter's window now */
	const char *concurrency_mode;  /* "fixed" or "auto" */
	const char *limiter_phase;   /* "slow_start" or "steady" */
	int64_t base_latency_us;     /* auto: the no-load latency, 0: not yet */
	/* login (login_url set; else login_state NULL) */
	const char *login_state;     /* login_state_name() */
	int64_t login_expires_in_ms; /* -1: no token or no expiry known */
	uint64_t logins, login_failures, relogins_401;
	const char *login_last_error;/* "" when the last login succeeded */
};

/* Latency histogram bucket upper bounds, seconds (Prometheus style). */
#define LAT_BUCKETS 12
extern const double lat_bucket_le[LAT_BUCKETS];

typedef struct ProvHandlers {
	/* jobs waiting at ps may be able to go, or must move on */
	void (*wake)(ProvState *ps, void *arg);
	/* the login's timer fired: refresh the token, or retry a failed login */
	void (*login_timer)(ProvState *ps, void *arg);
} ProvHandlers;

struct ProvState {
	char *name;
	Provider *cfg;             /* current config section */
	TokenBucket tb;
	Breaker br;
	Limiter lim;               /* the concurrency window */
	int max_inflight;          /* the worker's, for the window's cap */
	int inflight;
	int64_t paused_until;      /* monotonic us; Retry-After */
	Job *qhead, *qtail;
	int nqueued;
	/* fair turns between batches (routes with batch_concurrency): how many
	 * such jobs wait here, and when each recent batch last started here */
	int nfair;
	uint64_t fair_seq;
	int nfair_batches;
	struct {
		char batch_id[37];
		uint64_t seq;          /* fair_seq at its last start here */
	} fair_batches[PROV_FAIR_BATCHES];
	struct event *wake_timer;  /* token, pause */
	struct event *br_timer;    /* OPEN -> HALF_OPEN */
	bool removed;              /* gone from the config at a reload */
	double share;              /* this worker's share of the rate (fleet) */
	HandlePool pool;           /* idle easy handles set up for cfg */
	Login login;               /* with cfg->login_url: the token (login.h) */
	const ProvHandlers *h;
	void *harg;

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

ProvState *provider_new(struct event_base *base, Provider *p, int max_inflight,
			const ProvHandlers *h, void *arg);
void provider_free(ProvState *ps);
/* Reload: a new section for the same name (breaker and window kept), or gone. */
void provider_reconfigure(ProvState *ps, Provider *np, int max_inflight);
void provider_remove(ProvState *ps);
/* Live workers calling the provider: this worker takes 1 / workers of its
 * rate and burst, so that the fleet together keeps the configured rate. */
void provider_set_workers(ProvState *ps, double workers);
/* Joining a busy fleet: an empty bucket and no request before until, the
 * time the peers need to lower their own share (rate-limited providers). */
void provider_join_fleet(ProvState *ps, int64_t until);
/* No request before until (monotonic us): Retry-After, or a joining worker. */
void provider_pause(ProvState *ps, int64_t until);

/*
 * The queue of jobs waiting for this provider: FIFO, except that jobs of
 * routes with batch_concurrency take turns by batch.  When the head is such
 * a job, pop takes, among the run of such jobs at the head (at most
 * PROV_FAIR_SCAN, never past a job of another route), the first one of the
 * batch least recently started here (a batch never started here first), so
 * that the active batches alternate and a batch given its slot later is not
 * served after everything claimed before it.  Jobs of other routes keep
 * strict FIFO, and nothing is scanned while none of those jobs waits.
 */
void provider_push(ProvState *ps, Job *j);
Job *provider_pop(ProvState *ps);
void provider_unqueue(ProvState *ps, Job *j);

/*
 * May a request start now (login token, pause, concurrency window, tokens)?
 * Takes the token on yes.  On no, *wait_us says when to look again (-1: when
 * one of its transfers ends, or its login does).
 */
bool provider_can_start(ProvState *ps, int64_t now, int64_t *wait_us);
/* Is the concurrency window full (a transfer must end first)? */
bool provider_window_full(const ProvState *ps, int64_t now);
/* Look again in wait_us (the wake handler runs then), or not at all. */
void provider_wake_in(ProvState *ps, int64_t wait_us);
void provider_wake_cancel(ProvState *ps);

/* j's transfer started (j keeps the window's ticket); it was aborted (says
 * nothing of the provider), or it ended with an outcome (err: breaker's
 * reason). */
void provider_started(ProvState *ps, Job *j);
void provider_aborted(ProvState *ps, Job *j);
void provider_finished(ProvState *ps, Job *j, CURLcode code, long status, double secs,
		       enum Outcome out, const char *err);

void provider_stats(ProvState *ps, ProviderStats *out);

#endif /* BATCHD_PROVIDER_H */
