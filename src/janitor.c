/*
 * janitor.c - reaper, queue depth, retention and loop lag (see janitor.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/janitor.h"
#include "batchd/log.h"
#include "batchd/timer.h"

#define LAG_TICK_US 250000
#define LAG_WINDOW_S 60

const double loop_lag_bucket_le[LOOP_LAG_BUCKETS] = {
	0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1,
};

struct Janitor {
	Db *mdb;
	const char *worker_id;
	const JanitorHandlers *h;
	void *harg;
	const Config *cfg;
	char *routes_param;
	unsigned routes_gen;            /* bumped by janitor_configure */
	unsigned depth_gen;             /* routes_gen of the count in flight */
	bool have_groups;
	bool stopped;
	struct event *reaper_timer;
	struct event *depth_timer;
	struct event *retention_timer;
	struct event *lag_timer;
	int64_t lag_expected_us;
	LoopLag lag;                    /* histogram; never reset */
	struct { int64_t sec; double max_s; } lag_win[LAG_WINDOW_S];  /* per second */
	uint64_t recovered;
	uint64_t purged;
};

static bool can_run(const Janitor *j)
{
	return !j->stopped && j->h->ready(j->harg) && db_is_ready(j->mdb);
}

/* ------------------------------------------------------------------ reaper */

static void reap_done(PGresult *res, void *arg)
{
	Janitor *j = arg;
	int workers, requeued, failed;

	if (!res)
		return;
	if (!db_result_ok(res)) {
		log_error("reaping dead workers failed: %s", db_result_error(res));
		return;
	}
	workers = atoi(PQgetvalue(res, 0, 0));
	requeued = atoi(PQgetvalue(res, 0, 1));
	failed = atoi(PQgetvalue(res, 0, 2));
	if (workers > 0) {
		log_warn("recovered %d dead worker(s): %d item(s) requeued, %d failed after "
			 "max_attempts (worker lost)", workers, requeued, failed);
		j->recovered += (uint64_t)(requeued + failed);
		if (requeued > 0)
			j->h->recovered(requeued, j->harg);
	}
}

/*
 * Every live worker looks for dead ones (heartbeat older than
 * lease_timeout) at a jittered heartbeat interval; the SQL skips workers
 * another reaper is handling, so two reapers never requeue an item twice.
 */
static void reaper_cb(evutil_socket_t fd, short what, void *arg)
{
	Janitor *j = arg;
	char lease[24];
	const char *params[2];
	/* between half and one heartbeat interval: an item of a dead worker
	 * waits at most lease_timeout + heartbeat_interval */
	int64_t next = j->cfg->heartbeat_interval_ms / 2 +
		random() % (j->cfg->heartbeat_interval_ms / 2 + 1);

	timer_arm_ms(j->reaper_timer, next);
	if (!can_run(j))
		return;
	snprintf(lease, sizeof(lease), "%lld", (long long)j->cfg->lease_timeout_ms);
	params[0] = j->worker_id;
	params[1] = lease;
	if (db_query(j->mdb, "SELECT workers, requeued, failed FROM batchd.reap_workers($1::uuid, "
		     "$2::bigint)", 2, params, reap_done, j) < 0)
		return;
}

/* ------------------------------------------------------------- queue depth */

static void depth_done(PGresult *res, void *arg)
{
	Janitor *j = arg;
	if (!res || !db_result_ok(res))
		return;
	/* sent before a reload: it may lack new routes, which it would report
	 * as empty; the next count comes in 15 s */
	if (j->depth_gen != j->routes_gen)
		return;
	j->h->depth_begin(j->harg);
	for (int r = 0; r < PQntuples(res); r++)
		j->h->depth(PQgetvalue(res, r, 0), strtoll(PQgetvalue(res, r, 1), NULL, 10),
			    strtod(PQgetvalue(res, r, 2), NULL), j->harg);
}

/*
 * Queue depth and the age of the oldest claimable item per route, for the
 * metrics: one statement every 15 s, an index-only scan of the queued
 * items of our routes (items_group_claim_idx: its route key is COLLATE "C",
 * so the route test is written with that collation to be an index condition
 * rather than a filter over every queued item; equality is the same).  The
 * age counts from run_after: an item deferred or backing off counts from
 * when it became due again, the way the claim sees it.
 */
static void depth_cb(evutil_socket_t fd, short what, void *arg)
{
	Janitor *j = arg;
	const char *params[1];

	timer_arm_ms(j->depth_timer, 15000);
	if (!j->h->ready(j->harg) || !db_is_ready(j->mdb))
		return;
	params[0] = j->routes_param;
	j->depth_gen = j->routes_gen;
	if (db_query(j->mdb, "SELECT route, count(*), coalesce(extract(epoch FROM now() - "
		     "min(run_after) FILTER (WHERE run_after <= now())), 0) FROM batchd.items "
		     "WHERE status = 'queued' AND route COLLATE \"C\" = ANY ($1::text[]) "
		     "GROUP BY route", 1, params, depth_done, j) < 0)
		return;
}

/* --------------------------------------------------------------- retention */

static void retention_done(PGresult *res, void *arg)
{
	Janitor *j = arg;
	int n;

	if (!res)
		return;
	if (!db_result_ok(res)) {
		log_error("retention: deleting old batches failed: %s", db_result_error(res));
		return;
	}
	n = atoi(PQgetvalue(res, 0, 0));
	j->purged += (uint64_t)n;
	if (n > 0) {
		log_info("retention: deleted %d finished batch(es) older than %lld s", n,
			 (long long)(j->cfg->retention_ms / 1000));
		/* a full chunk: more may be waiting, continue soon */
		if (n >= 20 && !j->stopped)
			timer_arm_ms(j->retention_timer, 200);
	}
}

/* retention = AGE: delete finished batches older than AGE, a chunk at a
 * time. */
static void retention_cb(evutil_socket_t fd, short what, void *arg)
{
	Janitor *j = arg;
	char age[24];
	const char *params[1];

	timer_arm_ms(j->retention_timer, 60000);
	if (!can_run(j))
		return;
	/* group rows of idle groups would slow the grouped claim down */
	if (j->have_groups &&
	    db_query(j->mdb, "SELECT batchd.gc_groups()", 0, NULL, NULL, NULL) < 0)
		return;
	if (j->cfg->retention_ms <= 0)
		return;
	snprintf(age, sizeof(age), "%lld", (long long)j->cfg->retention_ms);
	params[0] = age;
	if (db_query(j->mdb, "SELECT batchd.purge_finished($1::bigint)", 1, params,
		     retention_done, j) < 0)
		return;
}

/* ---------------------------------------------------------------- loop lag */

/*
 * A 250 ms timer that notes how late it fires: the loop's lag.  Every tick
 * goes into a histogram (cumulative, never reset: rates and quantiles come
 * from Prometheus) and into a per-second maximum for the last 60 s, so the
 * largest lag of the last minute does not depend on who scraped when.
 */
static void lag_cb(evutil_socket_t fd, short what, void *arg)
{
	Janitor *j = arg;
	int64_t now = now_monotonic_us();
	double lag = (double)(now - j->lag_expected_us) / 1e6;
	int64_t sec = now / 1000000;
	int slot = (int)(sec % LAG_WINDOW_S);

	if (lag < 0)
		lag = 0;
	j->lag.count++;
	j->lag.sum += lag;
	for (int b = 0; b < LOOP_LAG_BUCKETS; b++)
		if (lag <= loop_lag_bucket_le[b])
			j->lag.buckets[b]++;
	if (j->lag_win[slot].sec != sec) {
		j->lag_win[slot].sec = sec;
		j->lag_win[slot].max_s = 0;
	}
	if (lag > j->lag_win[slot].max_s)
		j->lag_win[slot].max_s = lag;
	if (lag > 1.0)
		log_warn("event loop lagged %.3f s", lag);
	j->lag_expected_us = now + LAG_TICK_US;
	timer_arm_us(j->lag_timer, LAG_TICK_US);
}

void janitor_loop_lag(const Janitor *j, LoopLag *out)
{
	int64_t sec = now_monotonic_us() / 1000000;

	*out = j->lag;
	out->max_s = 0;
	for (int i = 0; i < LAG_WINDOW_S; i++)
		if (sec - j->lag_win[i].sec < LAG_WINDOW_S && j->lag_win[i].max_s > out->max_s)
			out->max_s = j->lag_win[i].max_s;
}

/* ------------------------------------------------------------------ public */

Janitor *janitor_new(struct event_base *base, Db *mdb, const char *worker_id,
		     const JanitorHandlers *h, void *arg)
{
	Janitor *j = xcalloc(1, sizeof(*j));

	j->mdb = mdb;
	j->worker_id = worker_id;
	j->h = h;
	j->harg = arg;
	j->reaper_timer = evtimer_new(base, reaper_cb, j);
	j->depth_timer = evtimer_new(base, depth_cb, j);
	j->retention_timer = evtimer_new(base, retention_cb, j);
	j->lag_timer = evtimer_new(base, lag_cb, j);
	return j;
}

void janitor_free(Janitor *j)
{
	if (!j)
		return;
	event_free(j->reaper_timer);
	event_free(j->depth_timer);
	event_free(j->retention_timer);
	event_free(j->lag_timer);
	free(j->routes_param);
	free(j);
}

void janitor_configure(Janitor *j, const Config *cfg, const char *routes, bool groups)
{
	j->cfg = cfg;
	free(j->routes_param);
	j->routes_param = xstrdup(routes);
	j->routes_gen++;
	j->have_groups = groups;
}

void janitor_start(Janitor *j)
{
	timer_arm_ms(j->retention_timer, 5000);
	timer_arm_ms(j->reaper_timer, j->cfg->heartbeat_interval_ms);
	timer_arm_ms(j->depth_timer, 1000);
	j->lag_expected_us = now_monotonic_us() + LAG_TICK_US;
	timer_arm_us(j->lag_timer, LAG_TICK_US);
}

void janitor_stop(Janitor *j)
{
	j->stopped = true;
	evtimer_del(j->reaper_timer);
	evtimer_del(j->depth_timer);
	evtimer_del(j->retention_timer);
}

uint64_t janitor_recovered(const Janitor *j)
{
	return j->recovered;
}

uint64_t janitor_purged(const Janitor *j)
{
	return j->purged;
}
