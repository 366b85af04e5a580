/*
 * janitor.h - housekeeping on the maintenance connection, so that claims
 * never wait behind it: the reaper (dead workers' items back to the queue),
 * the queue depth per route for the metrics, retention (old finished
 * batches deleted) with the idle groups' rows, and the loop-lag probe.
 */
#ifndef BATCHD_JANITOR_H
#define BATCHD_JANITOR_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>

#include "batchd/config.h"
#include "batchd/db.h"

typedef struct Janitor Janitor;

typedef struct JanitorHandlers {
	/* is the worker registered (statements may run)? */
	bool (*ready)(void *arg);
	/* dead workers' items were requeued: claim them */
	void (*recovered)(int requeued, void *arg);
	/* queued items of one route and the age of its oldest claimable one,
	 * seconds (a fresh count: routes not named have 0 of both) */
	void (*depth_begin)(void *arg);
	void (*depth)(const char *route, int64_t n, double oldest_age_s, void *arg);
} JanitorHandlers;

/* The loop-lag probe's figures: a histogram of every tick's lateness
 * (buckets cumulative, le = loop_lag_bucket_le[b]; never reset) and the
 * largest lateness of the last 60 s. */
#define LOOP_LAG_BUCKETS 7
extern const double loop_lag_bucket_le[LOOP_LAG_BUCKETS];
typedef struct LoopLag {
	uint64_t buckets[LOOP_LAG_BUCKETS];
	uint64_t count;
	double sum;
	double max_s;
} LoopLag;

Janitor *janitor_new(struct event_base *base, Db *mdb, const char *worker_id,
		     const JanitorHandlers *h, void *arg);
void janitor_free(Janitor *j);
/* Limits of a (new) config; routes: text[] literal of our routes;
 * groups: some route has per-group limits (their rows are collected). */
void janitor_configure(Janitor *j, const Config *cfg, const char *routes, bool groups);
void janitor_start(Janitor *j);
/* Stopping: no more reaping, counting or deleting (the lag probe goes on). */
void janitor_stop(Janitor *j);

void janitor_loop_lag(const Janitor *j, LoopLag *out);
uint64_t janitor_recovered(const Janitor *j);  /* items requeued or failed by us */
uint64_t janitor_purged(const Janitor *j);     /* batches deleted by retention */

#endif /* BATCHD_JANITOR_H */
