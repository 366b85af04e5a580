/*
 * engine.c - the work loop's owner: it wires the modules together and
 * holds what they share (the live jobs, the config generations, the stop).
 *
 *   claim.c     claim statements, resume, wake-up      (engine connection)
 *   worker.c    setup chain, heartbeat, lease, deregistration  (same)
 *   dispatch.c  routing, providers, transfers, retries, failover
 *   complete.c  the outcome buffer and its flushes    (completion connection)
 *   janitor.c   reaper, queue depth, retention, loop lag  (maintenance conn.)
 *
 * Each reports upward through its handler table; the engine is the only
 * module that calls the others.
 *
 * Capacity.  A job holds a slot of max_inflight + claim_ahead (claim.c:
 * the configured value, or one that follows the drain rate) from its
 * claim until its outcome is known (transfer, provider queue, backoff);
 * transfers are capped at max_inflight (dispatch.c), so the claim_ahead
 * items wait in the providers' queues and take a slot the moment a transfer
 * ends, without a claim round trip in between.  Outcomes waiting to be
 * written are bounded separately (claim_capacity), so the buffer cannot grow
 * while the database is slow or away.
 *
 * Stop.  The graceful stop drains the transfers, flushes every outcome,
 * then deregisters (which releases whatever is still running under our
 * worker id).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/claim.h"
#include "batchd/complete.h"
#include "batchd/dispatch.h"
#include "batchd/engine.h"
#include "batchd/janitor.h"
#include "batchd/job.h"
#include "batchd/log.h"
#include "batchd/request.h"
#include "batchd/timer.h"
#include "batchd/worker.h"

#define STOP_DB_GRACE_MS 10000

enum StopPhase {
	STOP_NONE,
	STOP_DRAINING,  /* no claims; waiting for transfers */
	STOP_FLUSHING,  /* recording completions, then deregistering */
	STOP_DONE,
};

struct Engine {
	Batchd *bd;
	const EngineHandlers *h;
	void *harg;
	Config *cfg;
	Db *db;                   /* claims, heartbeats, LISTEN, registration */
	Db *fdb;                  /* completions */
	Db *mdb;                  /* housekeeping */
	Dispatch *disp;
	Completer *comp;
	Claimer *claim;
	Worker *wk;
	Janitor *jan;

	Job *jobs;                /* every live job */
	int njobs;
	Config **retired;         /* older configs still referenced by jobs */
	int *retired_jobs;
	int nretired;
	int cfg_jobs;             /* jobs referencing e->cfg */
	RouteStats *route_stats;  /* aligned with cfg->routes */

	enum StopPhase stop;
	struct event *stop_timer;
	EngineStats st;
};

static void stop_progress(Engine *e);
static void drop_waiting(Engine *e);

/* -------------------------------------------------------------------- jobs */

static RouteStats *route_stats(Engine *e, const Route *r)
{
	for (int i = 0; i < e->cfg->nroutes; i++)
		if (e->cfg->routes[i] == r)
			return &e->route_stats[i];
	return NULL;
}

/* A job let go of its config generation: free retired configs nobody uses. */
static void cfg_unref(Engine *e, Config *cfg)
{
	if (cfg == e->cfg) {
		e->cfg_jobs--;
		return;
	}
	for (int i = 0; i < e->nretired; i++) {
		if (e->retired[i] != cfg)
			continue;
		if (--e->retired_jobs[i] == 0) {
			config_free(cfg);
			e->retired[i] = e->retired[e->nretired - 1];
			e->retired_jobs[i] = e->retired_jobs[e->nretired - 1];
			e->nretired--;
		}
		return;
	}
}

/* The end of every job: unlink, release its request, free it. */
static void job_done(Engine *e, Job *j)
{
	job_set_state(j, JOB_DONE);
	cfg_unref(e, j->cfg);
	if (j->prev)
		j->prev->next = j->next;
	else
		e->jobs = j->next;
	if (j->next)
		j->next->prev = j->prev;
	e->njobs--;
	request_release(j);
	job_free(j);
}

static void job_record(Engine *e, Job *j, const char *status, long http_status,
		       const char *body, size_t blen, const char *error)
{
	RouteStats *rs = route_stats(e, j->route);

	complete_record(e->comp, j, status, http_status, body, blen, error);
	if (strcmp(status, "succeeded") == 0) {
		e->st.succeeded++;
		if (rs)
			rs->succeeded++;
	} else {
		e->st.failed++;
		if (rs)
			rs->failed++;
	}
	if (log_get_level() >= LG_DEBUG) {
		LogCtx ctx = { j->batch_id, j->id, j->ps ? j->ps->name : NULL,
			       j->route ? j->route->name : NULL };
		log_ctx(LG_DEBUG, &ctx, "item %lld %s%s%s", (long long)j->id, status,
			error ? ": " : "", error ? error : "");
	}
	job_done(e, j);
}

/*
 * Its batch was cancelled before we sent it: a "queued" record (no
 * attempt spent), which the cancel trigger turns into a cancelled item,
 * counted in the batch.  The caller logs one line for all of them.
 */
static void job_drop_cancelled(Engine *e, Job *j)
{
	RouteStats *rs = route_stats(e, j->route);

	complete_requeue(e->comp, j, 0, "batch cancelled");
	e->st.cancelled++;
	if (rs)
		rs->cancelled++;
	job_done(e, j);
}

/* ------------------------------------------------------- dispatch handlers */

static void on_record(Job *j, const char *status, long http_status, const char *body,
		      size_t blen, const char *error, void *arg)
{
	job_record(arg, j, status, http_status, body, blen, error);
}

/*
 * Put the item back in the queue until now + delay_ms without spending an
 * attempt (a long Retry-After or backoff, or every breaker open): the wait
 * then survives a restart and holds no capacity here.
 */
static void on_defer(Job *j, int64_t delay_ms, const char *why, void *arg)
{
	Engine *e = arg;
	RouteStats *rs = route_stats(e, j->route);
	LogCtx ctx = { j->batch_id, j->id, j->ps ? j->ps->name : NULL, j->route->name };

	complete_requeue(e->comp, j, delay_ms, why);
	e->st.deferred++;
	if (rs)
		rs->deferred++;
	log_ctx(LG_INFO, &ctx, "item %lld back to the queue for %lld ms: %s",
		(long long)j->id, (long long)delay_ms, why);
	job_done(e, j);
}

static void on_release(Job *j, void *arg)
{
	job_done(arg, j);
}

static bool on_lease_ok(void *arg)
{
	Engine *e = arg;
	return worker_lease_ok(e->wk);
}

static void on_check_lease(void *arg)
{
	Engine *e = arg;
	worker_check_lease(e->wk);
}

/* After anything that may free capacity or add completions. */
static void after_event(Engine *e)
{
	if (e->stop == STOP_DRAINING) {
		stop_progress(e);
		return;
	}
	complete_flush(e->comp, false);
	claim_maybe(e->claim);
}

static void on_transfer_done(void *arg)
{
	after_event(arg);
}

/* ---------------------------------------------------------- claim handlers */

static bool claim_active(void *arg)
{
	Engine *e = arg;
	return worker_state(e->wk) == WK_READY && e->stop == STOP_NONE;
}

/*
 * Free capacity for claims: max_inflight + claim_ahead (claim.c adds its
 * claim_ahead, which follows the drain rate) counts the items this process
 * holds before their outcome (transfers, provider queues, backoff).  An
 * outcome waiting to be written no longer holds a slot, but the buffer of
 * such outcomes is bounded too (as many again), so a slow or absent
 * database stops the claims instead of growing memory.
 */
static int outcome_bound(void *arg)
{
	Engine *e = arg;
	return e->cfg->max_inflight + (e->claim ? claim_ahead(e->claim) : e->cfg->claim_ahead);
}

static int claim_capacity(void *arg)
{
	Engine *e = arg;

	if (complete_buffered(e->comp) >= outcome_bound(e))
		return CLAIM_BLOCKED;
	return e->cfg->max_inflight - e->njobs;
}

static int claim_held(void *arg)
{
	Engine *e = arg;
	return e->njobs;
}

static void claim_item(const ClaimedItem *it, void *arg)
{
	Engine *e = arg;
	Job *j = job_new(e->cfg, it->id, it->batch_id, it->payload, it->attempts,
			 it->max_attempts);
	char perr[256];

	e->cfg_jobs++;
	j->next = e->jobs;
	if (e->jobs)
		e->jobs->prev = j;
	e->jobs = j;
	e->njobs++;
	j->route = config_find_route(e->cfg, it->route);
	if (!j->route) {
		/* cannot happen: we claim only our routes */
		job_record(e, j, "failed", 0, NULL, 0, "route not configured on this worker");
		return;
	}
	j->payload = yajl_tree_parse(j->payload_text, perr, sizeof(perr));
	if (!j->payload) {
		job_record(e, j, "failed", 0, NULL, 0, "payload is not valid JSON");
		return;
	}
	dispatch_route(e->disp, j);
}

static void claim_unpacked(void *arg)
{
	Engine *e = arg;
	complete_flush(e->comp, false);
}

/* ------------------------------------------------------- complete handlers */

static void on_flushed(int applied, void *arg)
{
	Engine *e = arg;

	if (e->stop == STOP_FLUSHING) {
		stop_progress(e);
		return;
	}
	complete_flush(e->comp, complete_due(e->comp));
	/* completions free group slots and end batches (freeing batch
	 * slots): items held back may go now */
	if ((claim_has_groups(e->claim) || claim_has_batch_slots(e->claim)) && applied > 0)
		claim_more(e->claim);
	else
		claim_maybe(e->claim);
}

static bool items_held(void *arg)
{
	Engine *e = arg;
	return e->njobs > 0;
}

/* --------------------------------------------------------- worker handlers */

static void fail_startup(const char *msg, void *arg)
{
	Engine *e = arg;

	log_error("%s", msg);
	e->stop = STOP_DONE;
	db_close(e->db);
	e->h->stopped(1, e->harg);
}

static void on_ready(bool first, void *arg)
{
	Engine *e = arg;

	if (first) {
		complete_enable(e->comp);
		log_info("worker %s ready: %d route(s), max_inflight %d", e->bd->worker_id,
			 e->cfg->nroutes, e->cfg->max_inflight);
		e->h->ready(e->harg);
	}
	if (e->stop != STOP_NONE) {
		stop_progress(e);
		return;
	}
	/* catch up on anything submitted while we were away */
	complete_flush(e->comp, true);
	claim_wake(e->claim);
}

/* Transfers already out finish (their results are fenced); nothing else
 * goes to a provider. */
static void on_lease_lost(const char *why, void *arg)
{
	Engine *e = arg;
	int transfers = dispatch_transfers(e->disp);

	log_warn("%s: our lease was lost; dropping %d item(s) not yet sent (other workers own "
		 "them now), %d transfer(s) finish and will be fenced", why, e->njobs - transfers,
		 transfers);
	drop_waiting(e);
}

static void on_shares(const char *json, bool joining, void *arg)
{
	Engine *e = arg;
	dispatch_set_workers(e->disp, json, joining,
			     now_monotonic_us() + e->cfg->heartbeat_interval_ms * 1000);
}

static void on_lease_confirmed(void *arg)
{
	Engine *e = arg;
	dispatch_wake_all(e->disp);
}

static void worker_providers(StrBuf *sb, void *arg)
{
	Engine *e = arg;
	for (int i = 0; i < dispatch_nproviders(e->disp); i++)
		sb_put_array_text(sb, dispatch_provider(e->disp, i)->name);
}

/* Items this process holds: jobs, and completions not yet recorded. */
static void worker_held_ids(StrBuf *sb, void *arg)
{
	Engine *e = arg;
	bool first = true;

	for (Job *j = e->jobs; j; j = j->next) {
		sb_printf(sb, "%s%lld", first ? "" : ",", (long long)j->id);
		first = false;
	}
	complete_append_ids(e->comp, sb, &first);
}

static int worker_transfers(void *arg)
{
	Engine *e = arg;
	return dispatch_transfers(e->disp);
}

static void on_deregistered(bool ok, void *arg)
{
	Engine *e = arg;

	e->stop = STOP_DONE;
	evtimer_del(e->stop_timer);
	db_close(e->mdb);
	db_close(e->fdb);
	e->h->stopped(ok ? 0 : 1, e->harg);
}

/* -------------------------------------------------------- janitor handlers */

static bool janitor_ready(void *arg)
{
	Engine *e = arg;
	enum WorkerState ws = worker_state(e->wk);
	return ws == WK_READY || ws == WK_DEREGISTERING;
}

static void on_recovered(int requeued, void *arg)
{
	Engine *e = arg;
	claim_wake(e->claim);
}

static void on_depth_begin(void *arg)
{
	Engine *e = arg;
	for (int i = 0; i < e->cfg->nroutes; i++) {
		e->route_stats[i].depth_known = true;
		e->route_stats[i].queue_depth = 0;
		e->route_stats[i].oldest_age_s = 0;
	}
}

static void on_depth(const char *route, int64_t n, double oldest_age_s, void *arg)
{
	Engine *e = arg;
	for (int i = 0; i < e->cfg->nroutes; i++)
		if (strcmp(e->cfg->routes[i]->name, route) == 0) {
			e->route_stats[i].queue_depth = n;
			e->route_stats[i].oldest_age_s = oldest_age_s > 0 ? oldest_age_s : 0;
		}
}

/* ------------------------------------------------------------ db handlers */

static void on_connect(Db *db, void *arg)
{
	Engine *e = arg;
	worker_connected(e->wk);
}

static void on_disconnect(Db *db, void *arg)
{
	Engine *e = arg;

	worker_disconnected(e->wk);
	claim_reset(e->claim);
	log_warn("database unavailable: %d transfer(s) continue, %d completion(s) buffered",
		 dispatch_transfers(e->disp), complete_pending(e->comp));
}

/*
 * A batch was cancelled: its items we hold but have not sent go back to the
 * queue, where the cancel trigger turns them into cancelled items (counted).
 * Transfers already out finish and are recorded, as cancel promises.
 */
static int cancel_batch(Engine *e, const char *batch_id)
{
	int n = 0;

	for (Job *j = e->jobs, *next; j; j = next) {
		next = j->next;
		if (j->state != JOB_RUNNING && strcmp(j->batch_id, batch_id) == 0) {
			dispatch_take_back(e->disp, j);
			job_drop_cancelled(e, j);
			n++;
		}
	}
	return n;
}

static void on_notify(Db *db, const char *channel, const char *payload, void *arg)
{
	Engine *e = arg;

	if (strcmp(channel, "batchd_work") == 0 &&
	    (!payload || !*payload || config_find_route(e->cfg, payload))) {
		claim_wake(e->claim);
	} else if (strcmp(channel, "batchd_cancel") == 0 && payload && *payload) {
		int n = cancel_batch(e, payload);
		if (n > 0) {
			LogCtx ctx = { payload, 0, NULL, NULL };
			log_ctx(LG_INFO, &ctx, "batch %s cancelled: %d item(s) not yet sent dropped",
				payload, n);
			complete_flush(e->comp, true);
		}
	}
}

/* The flush connection is back: write what waited. */
static void fdb_on_connect(Db *db, void *arg)
{
	Engine *e = arg;
	if (e->stop == STOP_FLUSHING)
		stop_progress(e);
	else
		complete_flush(e->comp, true);
}

/* -------------------------------------------------------------------- stop */

/* Let go of every job not transferring (deregister releases the items). */
static void drop_waiting(Engine *e)
{
	for (Job *j = e->jobs, *next; j; j = next) {
		next = j->next;
		if (j->state != JOB_RUNNING) {
			dispatch_take_back(e->disp, j);
			job_done(e, j);
		}
	}
}

/* Stop now: drop every job where it stands. */
static void abort_all(Engine *e)
{
	while (e->jobs) {
		Job *j = e->jobs;
		dispatch_abort(e->disp, j);
		job_done(e, j);
	}
}

/*
 * Drive the stop forward: wait for transfers, then flush every completion,
 * then deregister (which releases the items still running under our id
 * without spending their attempt).  Called again by every event that might
 * unblock the next step.
 */
static void stop_progress(Engine *e)
{
	if (e->stop == STOP_DRAINING) {
		if (dispatch_transfers(e->disp) > 0)
			return;
		e->stop = STOP_FLUSHING;
		evtimer_del(e->stop_timer);
		timer_arm_ms(e->stop_timer, STOP_DB_GRACE_MS);
	}
	if (e->stop != STOP_FLUSHING)
		return;
	if (complete_flushing(e->comp) || worker_state(e->wk) == WK_DEREGISTERING)
		return;   /* wait for the flush or the deregistration in progress */
	if (complete_pending(e->comp) > 0) {
		complete_flush(e->comp, true);
		return;   /* its end calls us again (or the connection's return) */
	}
	/* not READY: wait for the engine connection (its setup calls us) */
	(void)worker_deregister(e->wk);
}

static void stop_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	Engine *e = arg;

	if (e->stop == STOP_DRAINING) {
		log_warn("shutdown_timeout reached: abandoning %d transfer(s); their items go "
			 "back to the queue", dispatch_transfers(e->disp));
		abort_all(e);
		stop_progress(e);
	} else if (e->stop == STOP_FLUSHING) {
		log_error("could not reach the database to record %d completion(s) and release "
			  "leases; other workers will recover the items after lease_timeout",
			  complete_buffered(e->comp));
		e->stop = STOP_DONE;
		e->h->stopped(1, e->harg);
	}
}

void engine_stop(Engine *e, bool immediate)
{
	if (e->stop == STOP_DONE)
		return;
	/* the heartbeat goes on while we drain: a drain longer than the lease
	 * must not let another worker requeue what we are still finishing */
	claim_stop(e->claim);
	janitor_stop(e->jan);
	worker_set_draining(e->wk);
	dispatch_set_stopping(e->disp);
	if (!worker_ever_ready(e->wk) && worker_state(e->wk) != WK_READY) {
		/* never got going: nothing to release */
		e->stop = STOP_DONE;
		db_close(e->db);
		e->h->stopped(0, e->harg);
		return;
	}
	if (immediate || e->stop != STOP_NONE) {
		if (e->stop == STOP_DRAINING || e->stop == STOP_NONE) {
			log_info("stopping now: abandoning %d transfer(s)", dispatch_transfers(e->disp));
			abort_all(e);
			e->stop = STOP_DRAINING;
		}
		stop_progress(e);
		return;
	}
	e->stop = STOP_DRAINING;
	drop_waiting(e);
	log_info("stopping: no new claims; waiting up to %lld ms for %d transfer(s)",
		 (long long)e->cfg->shutdown_timeout_ms, dispatch_transfers(e->disp));
	timer_arm_ms(e->stop_timer, e->cfg->shutdown_timeout_ms);
	stop_progress(e);
}

/* ------------------------------------------------------------------ public */

static const DispatchHandlers dispatch_handlers = {
	on_record, on_defer, on_release, on_lease_ok, on_check_lease, on_transfer_done,
};
static const ClaimHandlers claim_handlers = {
	claim_active, claim_capacity, claim_held, claim_item, claim_unpacked,
};
static const CompleteHandlers complete_handlers = { on_flushed, items_held, outcome_bound };
static const WorkerHandlers worker_handlers = {
	on_ready, fail_startup, on_lease_lost, on_shares, on_lease_confirmed,
	worker_providers, worker_held_ids, worker_transfers, on_deregistered,
};
static const JanitorHandlers janitor_handlers = {
	janitor_ready, on_recovered, on_depth_begin, on_depth,
};

/* Zeroed: the queue figures are unknown (depth_known false) until the
 * janitor's first count answers. */
static RouteStats *route_stats_new(const Config *cfg)
{
	return xcalloc((size_t)cfg->nroutes + 1, sizeof(RouteStats));
}

Engine *engine_new(Batchd *bd, const EngineHandlers *h, void *arg)
{
	static const DbHandlers fdb_handlers = { fdb_on_connect, NULL, NULL };
	static const DbHandlers handlers = { on_connect, on_disconnect, on_notify };
	Engine *e = xcalloc(1, sizeof(*e));

	e->bd = bd;
	e->h = h;
	e->harg = arg;
	e->cfg = bd->cfg;
	e->db = db_new(bd->base, bd->cfg->database, "db", &handlers, e);
	e->mdb = db_new(bd->base, bd->cfg->database, "db-maint", NULL, e);
	e->fdb = db_new(bd->base, bd->cfg->database, "db-flush", &fdb_handlers, e);
	e->stop_timer = evtimer_new(bd->base, stop_timer_cb, e);
	e->route_stats = route_stats_new(e->cfg);
	e->disp = dispatch_new(bd->base, e->cfg, &dispatch_handlers, e);
	e->comp = complete_new(bd->base, e->fdb, bd->worker_id, e->cfg, &complete_handlers, e);
	e->claim = claim_new(bd->base, e->db, bd->worker_id, e->cfg, &claim_handlers, e);
	e->wk = worker_new(bd->base, e->db, bd->worker_id, bd->hostname, e->cfg,
			   &worker_handlers, e);
	e->jan = janitor_new(bd->base, e->mdb, bd->worker_id, &janitor_handlers, e);
	janitor_configure(e->jan, e->cfg, claim_routes_param(e->claim), claim_has_groups(e->claim));
	return e;
}

void engine_start(Engine *e)
{
	db_start(e->db);
	db_start(e->mdb);
	db_start(e->fdb);
	claim_start(e->claim);
	worker_start(e->wk);
	janitor_start(e->jan);
}

void engine_free(Engine *e)
{
	if (!e)
		return;
	abort_all(e);
	db_free(e->db);
	db_free(e->mdb);
	db_free(e->fdb);
	dispatch_free(e->disp);
	complete_free(e->comp);
	claim_free(e->claim);
	worker_free(e->wk);
	janitor_free(e->jan);
	for (int i = 0; i < e->nretired; i++)
		config_free(e->retired[i]);
	free(e->retired);
	free(e->retired_jobs);
	event_free(e->stop_timer);
	free(e->route_stats);
	free(e);
}

/*
 * SIGHUP with a valid new config.  Providers keep their breaker state and
 * take the new limits; jobs in flight keep the config generation they were
 * claimed under until they finish (then it is freed).  database and listen
 * need a restart.
 */
void engine_reload(Engine *e, Config *nc)
{
	Config *old = e->cfg;
	RouteStats *rs;

	if (strcmp(old->database, nc->database) != 0)
		log_warn("reload: database changed; restart batchd for it to take effect");
	if ((old->listen == NULL) != (nc->listen == NULL) ||
	    (old->listen && strcmp(old->listen, nc->listen) != 0))
		log_warn("reload: listen changed; restart batchd for it to take effect");
	dispatch_reload(e->disp, nc);
	/* route counters follow the routes by name */
	rs = route_stats_new(nc);
	for (int i = 0; i < nc->nroutes; i++)
		for (int k = 0; k < old->nroutes; k++)
			if (strcmp(old->routes[k]->name, nc->routes[i]->name) == 0)
				rs[i] = e->route_stats[k];
	free(e->route_stats);
	e->route_stats = rs;
	if (e->cfg_jobs > 0) {
		e->retired = xrealloc(e->retired, (size_t)(e->nretired + 1) * sizeof(Config *));
		e->retired_jobs = xrealloc(e->retired_jobs, (size_t)(e->nretired + 1) * sizeof(int));
		e->retired[e->nretired] = old;
		e->retired_jobs[e->nretired] = e->cfg_jobs;
		e->nretired++;
	} else {
		config_free(old);
	}
	e->cfg = nc;
	e->cfg_jobs = 0;
	e->bd->cfg = nc;
	complete_configure(e->comp, nc);
	claim_configure(e->claim, nc);
	janitor_configure(e->jan, nc, claim_routes_param(e->claim), claim_has_groups(e->claim));
	worker_configure(e->wk, nc);
	dispatch_wake_all(e->disp);
	log_info("configuration reloaded: %d provider(s), %d route(s)", nc->nproviders,
		 nc->nroutes);
	claim_wake(e->claim);
}

int engine_breakers_open(const Engine *e)
{
	return dispatch_breakers_open(e->disp);
}

bool engine_is_ready(const Engine *e)
{
	enum WorkerState ws = worker_state(e->wk);
	return (ws == WK_READY || ws == WK_DEREGISTERING) && db_is_ready(e->db);
}

bool engine_db_up(const Engine *e)
{
	return db_is_ready(e->db);
}

const char *engine_db_error(const Engine *e)
{
	return db_last_error(e->db);
}

void engine_db_latency(const Engine *e, DbLatency *out)
{
	db_get_latency(e->db, out);
}

void engine_get_stats(const Engine *e, EngineStats *out)
{
	*out = e->st;
	out->claimed = claim_claimed(e->claim);
	out->claims = claim_statements(e->claim);
	out->claim_ahead = claim_ahead(e->claim);
	out->flushes = complete_flushes(e->comp);
	out->fenced = complete_fenced(e->comp);
	out->recovered = janitor_recovered(e->jan);
	out->purged = janitor_purged(e->jan);
	out->inflight = dispatch_transfers(e->disp);
	out->held = e->njobs;
	out->pending = complete_buffered(e->comp);
}

void engine_loop_lag(const Engine *e, LoopLag *out)
{
	janitor_loop_lag(e->jan, out);
}

bool engine_healthy(const Engine *e)
{
	int64_t down = worker_db_down_since(e->wk);

	/* not yet ready counts as healthy: TimeoutStartSec covers the start */
	if (down == 0 || !worker_ever_ready(e->wk))
		return true;
	return now_monotonic_us() - down <= e->cfg->watchdog_db_grace_ms * 1000;
}

bool engine_provider_stats(Engine *e, const char *name, ProviderStats *out)
{
	ProvState *ps = dispatch_find(e->disp, name);

	if (!ps || ps->removed)
		return false;
	provider_stats(ps, out);
	return true;
}

int engine_nproviders(const Engine *e)
{
	return dispatch_nproviders(e->disp);
}

ProvState *engine_provider(const Engine *e, int i)
{
	return dispatch_provider(e->disp, i);
}

const Config *engine_config(const Engine *e)
{
	return e->cfg;
}

const RouteStats *engine_route_stats(const Engine *e, int i)
{
	return i >= 0 && i < e->cfg->nroutes ? &e->route_stats[i] : NULL;
}
