/*
 * engine.h - the work loop: claim items, call providers, record outcomes.
 *
 *   claim (claim.c: one statement, SKIP LOCKED, sized to free capacity;
 *   woken by LISTEN batchd_work, with a slow poll as safety net)
 *     -> dispatch (dispatch.c, provider.c, request.c: route, gate, send)
 *     -> outcome (classify: success / transient / permanent)
 *     -> completion buffer (complete.c: many items per statement, fenced
 *        by worker id)
 * with worker.c (registration, heartbeat, lease) and janitor.c (reaper,
 * queue depth, retention, loop lag) beside them.
 */
#ifndef BATCHD_ENGINE_H
#define BATCHD_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "batchd/batchd.h"
#include "batchd/db.h"
#include "batchd/janitor.h"

typedef struct EngineStats {
	uint64_t claimed;
	uint64_t claims;           /* claim statements that returned rows */
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
	int claim_ahead;           /* items held beyond max_inflight now (claim.c) */
} EngineStats;

/* What the engine tells its owner (main.c). */
typedef struct EngineHandlers {
	void (*ready)(void *arg);                  /* first time ready */
	void (*stopped)(int exit_code, void *arg); /* stop finished, or startup failed */
} EngineHandlers;

typedef struct RouteStats {
	uint64_t succeeded;
	uint64_t failed;
	uint64_t deferred;
	uint64_t cancelled;
	bool depth_known;          /* the periodic query has answered for this route */
	int64_t queue_depth;       /* queued items, periodic query */
	double oldest_age_s;       /* age of the oldest claimable queued item, same query */
} RouteStats;

typedef struct ProvState ProvState;

Engine *engine_new(Batchd *bd, const EngineHandlers *h, void *arg);
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
/* The loop-lag probe's histogram and last-minute maximum (janitor.h). */
void engine_loop_lag(const Engine *e, LoopLag *out);
/* Healthy for the systemd watchdog: database away no longer than the grace. */
bool engine_healthy(const Engine *e);
int engine_breakers_open(const Engine *e);

/* Live figures of one provider (provider.h), for /v1/status and the
 * status page; false when there is no such provider. */
typedef struct ProviderStats ProviderStats;
bool engine_provider_stats(Engine *e, const char *provider, ProviderStats *out);
/* Apply a new configuration (SIGHUP); the engine takes ownership. */
void engine_reload(Engine *e, Config *cfg);

/* For the metrics: the current config, its routes' counters (aligned with
 * cfg->routes), the providers (provider.h; removed ones included) and the
 * engine connection's statement latency. */
const Config *engine_config(const Engine *e);
const RouteStats *engine_route_stats(const Engine *e, int i);
int engine_nproviders(const Engine *e);
ProvState *engine_provider(const Engine *e, int i);
void engine_db_latency(const Engine *e, DbLatency *out);

#endif /* BATCHD_ENGINE_H */
