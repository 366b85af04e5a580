/*
 * worker.h - this process as a row of batchd.workers: the setup chain on
 * each (re)connect of the engine connection (schema version and function
 * checksums, registration, the routes' hooks, leases reconciled, LISTEN),
 * the heartbeat that keeps our lease and brings the fleet's rate shares,
 * and the deregistration at a stop.
 *
 *   OFFLINE --connect--> SETTING_UP --LISTEN done--> READY --deregister-->
 *   DEREGISTERING --done--> GONE;  any --connection lost--> OFFLINE;
 *   SETTING_UP --schema wrong / registration refused--> GONE
 */
#ifndef BATCHD_WORKER_H
#define BATCHD_WORKER_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/event.h>

#include "batchd/config.h"
#include "batchd/db.h"

typedef struct Worker Worker;

enum WorkerState {
	WK_OFFLINE,        /* no engine connection */
	WK_SETTING_UP,     /* connected: the setup chain runs */
	WK_READY,          /* registered and listening: claims may run */
	WK_DEREGISTERING,  /* deregister_worker() is out */
	WK_GONE,           /* deregistered, or setup refused: no more statements */
};

typedef struct WorkerHandlers {
	/* setup done (first: for the first time since the start) */
	void (*ready)(bool first, void *arg);
	/* setup refused (schema, registration): the process cannot work */
	void (*failed)(const char *msg, void *arg);
	/* another worker declared us dead: what we hold is no longer ours */
	void (*lease_lost)(const char *why, void *arg);
	/* live workers per provider ({"name": n}); joining: new to the fleet */
	void (*shares)(const char *json, bool joining, void *arg);
	/* our lease is confirmed again: providers may send */
	void (*lease_confirmed)(void *arg);
	/* the provider names we call (text[] literal from '{'), the ids of the
	 * items we hold (int array literal from '{'), the transfers running */
	void (*providers)(StrBuf *sb, void *arg);
	void (*held_ids)(StrBuf *sb, void *arg);
	int (*transfers)(void *arg);
	/* deregistration answered (ok: our items were released) */
	void (*deregistered)(bool ok, void *arg);
} WorkerHandlers;

Worker *worker_new(struct event_base *base, Db *db, const char *worker_id,
		   const char *hostname, const Config *cfg, const WorkerHandlers *h, void *arg);
void worker_free(Worker *w);
/* A new config: lease, heartbeat; the routes' hooks are recorded again. */
void worker_configure(Worker *w, const Config *cfg);
void worker_start(Worker *w);                /* heartbeat timer */
void worker_connected(Worker *w);            /* the engine connection is up */
void worker_disconnected(Worker *w);         /* ... and lost */
/* Stopping: a lost lease is no longer news; the heartbeat goes on. */
void worker_set_draining(Worker *w);
/* Deregister (releases the items still running under our id); -1 when not
 * READY (the caller waits for the connection). */
int worker_deregister(Worker *w);

enum WorkerState worker_state(const Worker *w);
bool worker_ever_ready(const Worker *w);
/* Is our lease surely ours: a heartbeat sent less than lease_timeout ago
 * was acknowledged.  worker_check_lease() sends one now unless one is out. */
bool worker_lease_ok(const Worker *w);
void worker_check_lease(Worker *w);
/* monotonic us since which the database is away; 0 while it is up */
int64_t worker_db_down_since(const Worker *w);

#endif /* BATCHD_WORKER_H */
