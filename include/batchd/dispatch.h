/*
 * dispatch.h - send each claimed item to a provider, politely and robustly:
 * routing along a route's providers, breakers and failover, the providers'
 * queues, max_inflight, transfers, outcome classification, Retry-After,
 * retries with backoff.
 *
 * Every job handed to dispatch_route() ends through exactly one of the
 * terminal handlers (record, defer, release), which the engine implements;
 * dispatch never frees a job.
 */
#ifndef BATCHD_DISPATCH_H
#define BATCHD_DISPATCH_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>

#include "batchd/config.h"
#include "batchd/job.h"
#include "batchd/provider.h"

typedef struct DispatchHandlers {
	/* j ended with an outcome to record ("succeeded" or "failed") */
	void (*record)(Job *j, const char *status, long http_status, const char *body,
		       size_t blen, const char *error, void *arg);
	/* j goes back to the queue until now + delay_ms, no attempt spent */
	void (*defer)(Job *j, int64_t delay_ms, const char *why, void *arg);
	/* j is let go unrecorded (stopping: deregistering releases the item) */
	void (*release)(Job *j, void *arg);
	/* is our lease surely still ours?  If not, check_lease asks the
	 * database; its answer calls dispatch_wake_all() */
	bool (*lease_ok)(void *arg);
	void (*check_lease)(void *arg);
	/* a transfer ended (after its job's handler): capacity is free */
	void (*transfer_done)(void *arg);
} DispatchHandlers;

Dispatch *dispatch_new(struct event_base *base, Config *cfg, const DispatchHandlers *h,
		       void *arg);
/* Free providers and transfers; every job must have ended. */
void dispatch_free(Dispatch *d);

/* Pick j's provider and queue or start it; j ends through a handler. */
void dispatch_route(Dispatch *d, Job *j);
/* From now on nothing new starts: routed and retried jobs are released. */
void dispatch_set_stopping(Dispatch *d);
/* Take a job that is not transferring out of its queue or backoff (cancel,
 * stop); it is NEW after and the caller ends it. */
void dispatch_take_back(Dispatch *d, Job *j);
/* Abandon a running job's transfer (stop now); it is NEW after. */
void dispatch_abort(Dispatch *d, Job *j);
int dispatch_transfers(const Dispatch *d);

/* SIGHUP: new sections for the providers, before the config switches;
 * then dispatch_wake_all() after it did. */
void dispatch_reload(Dispatch *d, Config *nc);
void dispatch_wake_all(Dispatch *d);
/* Live workers per provider ({"name": n, ...}, from registration and each
 * heartbeat); joining: a worker new to the fleet holds its rate-limited
 * providers until hold_until (monotonic us). */
void dispatch_set_workers(Dispatch *d, const char *json, bool joining, int64_t hold_until);

int dispatch_breakers_open(const Dispatch *d);
int dispatch_nproviders(const Dispatch *d);
ProvState *dispatch_provider(const Dispatch *d, int i);
ProvState *dispatch_find(const Dispatch *d, const char *name);

/* Pure parts, for tests. */
enum Outcome dispatch_classify(const Provider *p, long status);
/* Retry-After (delta-seconds or HTTP date) in ms from now_s (unix time),
 * capped at an hour; -1 when absent or unreadable. */
int64_t dispatch_retry_after_ms(const char *v, int64_t now_s);
/* Full jitter: u * min(backoff_max, backoff * 2^(n-1)), u in [0, 1). */
int64_t dispatch_backoff_ms(const Provider *p, int n, double u);

#endif /* BATCHD_DISPATCH_H */
