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
	/* queued items of one route (a fresh count: routes not named have 0) */
	void (*depth_begin)(void *arg);
	void (*depth)(const char *route, int64_t n, void *arg);
} JanitorHandlers;

Janitor *janitor_new(struct event_base *base, Db *mdb, const char *worker_id,
		     const JanitorHandlers *h, void *arg);
void janitor_free(Janitor *j);
/* Limits of a (new) config; routes: text[] literal of our routes;
 * groups: some route has per-group limits (their rows are collected). */
void janitor_configure(Janitor *j, const Config *cfg, const char *routes, bool groups);
void janitor_start(Janitor *j);
/* Stopping: no more reaping, counting or deleting (the lag probe goes on). */
void janitor_stop(Janitor *j);

/* Largest loop lag seen since the last call, seconds. */
double janitor_take_loop_lag(Janitor *j);
uint64_t janitor_recovered(const Janitor *j);  /* items requeued or failed by us */
uint64_t janitor_purged(const Janitor *j);     /* batches deleted by retention */

#endif /* BATCHD_JANITOR_H */
