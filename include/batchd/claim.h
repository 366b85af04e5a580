/*
 * claim.h - take queued items for this worker: one batchd.claim_items()
 * statement at a time on the engine connection, sized to free capacity,
 * woken by LISTEN batchd_work (claim_wake) with a slow poll as a safety net,
 * resuming after the last item of a full claim, with per-group limits
 * applied in the statement when a route has them.
 */
#ifndef BATCHD_CLAIM_H
#define BATCHD_CLAIM_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>

#include "batchd/config.h"
#include "batchd/db.h"

typedef struct Claimer Claimer;

typedef struct ClaimedItem {
	int64_t id;
	const char *batch_id;
	const char *route;
	const char *payload;
	int attempts;
	int max_attempts;
} ClaimedItem;

#define CLAIM_BLOCKED (-(1 << 30))

typedef struct ClaimHandlers {
	/* may we claim at all now (registered, not stopping)? */
	bool (*active)(void *arg);
	/* free slots of max_inflight (negative while items beyond it are
	 * held; the claimer adds its claim_ahead and takes off the rows of a
	 * claim being handed over; CLAIM_BLOCKED or less: claim nothing now),
	 * and items held now */
	int (*capacity)(void *arg);
	int (*held)(void *arg);
	/* one claimed row; then done once after the rows of a claim */
	void (*item)(const ClaimedItem *it, void *arg);
	void (*done)(void *arg);
} ClaimHandlers;

Claimer *claim_new(struct event_base *base, Db *db, const char *worker_id, const Config *cfg,
		   const ClaimHandlers *h, void *arg);
void claim_free(Claimer *c);
/* Routes and group limits of a (new) config; the next claim starts from
 * the head of the queue. */
void claim_configure(Claimer *c, const Config *cfg);
void claim_start(Claimer *c);      /* the poll timer */
void claim_stop(Claimer *c);       /* no more timers */
void claim_reset(Claimer *c);      /* the connection was lost */

/* Something was announced (NOTIFY, poll, reaper): claim now, from the head. */
void claim_wake(Claimer *c);
/* Items may be claimable again (group slots freed): claim when capacity allows. */
void claim_more(Claimer *c);
/* Claim if there is work, capacity, and no claim out. */
void claim_maybe(Claimer *c);

bool claim_has_groups(const Claimer *c);
/* a route has batch_concurrency: a completion may free a batch slot */
bool claim_has_batch_slots(const Claimer *c);
/* text[] literal of our routes */
const char *claim_routes_param(const Claimer *c);
uint64_t claim_claimed(const Claimer *c);
uint64_t claim_statements(const Claimer *c);   /* claims that returned rows */
/* Items held beyond max_inflight now: claim_ahead when it is set, else at
 * least it and as many as the drain rate needs (claim.c). */
int claim_ahead(const Claimer *c);

#endif /* BATCHD_CLAIM_H */
