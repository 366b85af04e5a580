/*
 * complete.h - the outcome buffer: every finished item becomes one JSON
 * record, and many records are written by one call of
 * batchd.record_completions() on the completion connection, fenced by our
 * worker id.  A record the database refuses is isolated (one at a time)
 * and, if it still fails, rewritten as a plain failure: one bad record
 * never sinks the others.
 */
#ifndef BATCHD_COMPLETE_H
#define BATCHD_COMPLETE_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>

#include "batchd/config.h"
#include "batchd/db.h"
#include "batchd/job.h"

typedef struct Completer Completer;

typedef struct CompleteHandlers {
	/* a flush ended (applied: items recorded; 0 after a failure) */
	void (*flushed)(int applied, void *arg);
	/* is an item still held here (in flight, queued, in backoff)?  With
	 * none, nothing else is coming to share the statement: flush now */
	bool (*items_held)(void *arg);
	/* outcomes buffered beyond which claims stop (the engine's
	 * claim_capacity): a flush starts before half of it waits */
	int (*buffer_bound)(void *arg);
} CompleteHandlers;

Completer *complete_new(struct event_base *base, Db *fdb, const char *worker_id,
			const Config *cfg, const CompleteHandlers *h, void *arg);
void complete_free(Completer *c);
void complete_configure(Completer *c, const Config *cfg);   /* reload */
/* Flushes may start (the worker is registered: fencing holds). */
void complete_enable(Completer *c);

/* Buffer j's outcome: "succeeded" or "failed"; body may be NULL. */
void complete_record(Completer *c, const Job *j, const char *status, long http_status,
		     const char *body, size_t blen, const char *error);
/* Buffer "back to the queue until now + delay_ms", no attempt spent. */
void complete_requeue(Completer *c, const Job *j, int64_t delay_ms, const char *why);

/* Write what waits if it is time (force: now, if the connection is idle). */
void complete_flush(Completer *c, bool force);
bool complete_flushing(const Completer *c);     /* a flush is in flight */
int complete_pending(const Completer *c);       /* records not yet sent */
int complete_buffered(const Completer *c);      /* pending + in flight */
/* After a flush ended: flush again at once (enough waiting, or isolating). */
bool complete_due(const Completer *c);
/* Append the item ids of every buffered record to an int array literal. */
void complete_append_ids(const Completer *c, StrBuf *sb, bool *first);
uint64_t complete_flushes(const Completer *c);
uint64_t complete_fenced(const Completer *c);

#endif /* BATCHD_COMPLETE_H */
