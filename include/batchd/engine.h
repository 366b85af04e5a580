/*
 * engine.h - the work loop: claim items, call providers, record outcomes.
 *
 *   claim (one statement, SKIP LOCKED, sized to free capacity; woken by
 *   LISTEN batchd_work, with a slow poll as safety net)
 *     -> dispatch (render the provider request, start a curl transfer)
 *     -> outcome (classify: success / transient / permanent)
 *     -> completion buffer (many items per statement, fenced by worker id)
 */
#ifndef BATCHD_ENGINE_H
#define BATCHD_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "batchd/batchd.h"

typedef struct EngineStats {
	uint64_t claimed;
	uint64_t succeeded;
	uint64_t failed;
	uint64_t fenced;
	uint64_t deferred;         /* back to the queue to wait (retry, breakers) */
	uint64_t cancelled;        /* dropped before sending: their batch was cancelled */
	uint64_t flushes;
	uint64_t recovered;        /* items of dead workers requeued or failed by us */
	uint64_t purged;           /* batches deleted by retention */
	int inflight;              /* transfers running */
	int held;                  /* items claimed and not yet finished here */
	int pending;               /* completions not yet recorded */
} EngineStats;

Engine *engine_new(Batchd *bd);
void engine_free(Engine *e);

/* Connect to the database and start working. */
void engine_start(Engine *e);
/* Graceful stop (first call) or immediate stop (second call). */
void engine_stop(Engine *e, bool immediate);

/* Database connected, schema current, worker registered. */
bool engine_is_ready(const Engine *e);
bool engine_db_up(const Engine *e);
const char *engine_db_error(const Engine *e);
void engine_get_stats(const Engine *e, EngineStats *out);
/* Largest loop lag seen since the last call, seconds. */
double engine_take_loop_lag(Engine *e);
/* Healthy for the systemd watchdog: database away no longer than the grace. */
bool engine_healthy(const Engine *e);
int engine_breakers_open(const Engine *e);

/* Live figures of one provider, for /v1/status and the status page. */
#define PROVIDER_HISTORY_S 180
typedef struct ProviderStats {
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
} ProviderStats;
bool engine_provider_stats(Engine *e, const char *provider, ProviderStats *out);
/* Apply a new configuration (SIGHUP); the engine takes ownership. */
void engine_reload(Engine *e, Config *cfg);

#endif /* BATCHD_ENGINE_H */
