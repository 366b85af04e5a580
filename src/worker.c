/*
 * worker.c - setup chain, heartbeat, lease and deregistration (see worker.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "batchd/json.h"
#include "batchd/log.h"
#include "batchd/migrate.h"
#include "batchd/timer.h"
#include "batchd/worker.h"

struct Worker {
	Db *db;
	const char *worker_id;
	const char *hostname;
	const Config *cfg;
	const WorkerHandlers *h;
	void *harg;
	enum WorkerState state;
	bool ever_ready;
	bool draining;
	struct event *heartbeat_timer;
	bool hb_inflight;
	int64_t hb_sent_us;
	int64_t lease_ok_us;       /* sent time of the last acknowledged heartbeat */
	int64_t db_down_since_us;  /* monotonic; 0 while the database is up */
};

static void set_state(Worker *w, enum WorkerState to)
{
	if (w->state == WK_GONE && to != WK_GONE)
		return;   /* a late answer after the end changes nothing */
	w->state = to;
}

static void fail(Worker *w, const char *msg)
{
	set_state(w, WK_GONE);
	w->h->failed(msg, w->harg);
}

/* ------------------------------------------------------------ setup chain */

static void listen_done(PGresult *res, void *arg)
{
	Worker *w = arg;
	bool first;

	if (!res)
		return;
	if (!db_result_ok(res)) {
		log_error("LISTEN failed: %s", db_result_error(res));
		return;
	}
	if (w->state != WK_SETTING_UP)
		return;
	set_state(w, WK_READY);
	w->db_down_since_us = 0;
	first = !w->ever_ready;
	w->ever_ready = true;
	w->h->ready(first, w->harg);
}

static void reconcile_done(PGresult *res, void *arg)
{
	Worker *w = arg;
	if (!res)
		return;
	if (!db_result_ok(res)) {
		log_error("reconciling leases failed: %s", db_result_error(res));
	} else if (atoi(PQgetvalue(res, 0, 0)) > 0) {
		/* claims whose answer was lost with the connection */
		log_warn("released %s item(s) claimed under our id that this process does not "
			 "hold", PQgetvalue(res, 0, 0));
	}
	if (db_query(w->db, "LISTEN batchd_cancel", 0, NULL, NULL, NULL) < 0 ||
	    db_query(w->db, "LISTEN batchd_work", 0, NULL, listen_done, w) < 0)
		return;
}

/* [route] hook and on_batch_done live in batchd.routes, so that every SQL
 * path (completions, cancel, reaper) can call them. */
static char *routes_json(const Config *cfg)
{
	StrBuf sb;
	sb_init(&sb);
	sb_putc(&sb, '[');
	for (int i = 0; i < cfg->nroutes; i++) {
		const Route *r = cfg->routes[i];
		sb_puts(&sb, i ? ",{\"name\":" : "{\"name\":");
		json_append_string(&sb, r->name, strlen(r->name));
		sb_puts(&sb, ",\"hook\":");
		if (r->hook)
			json_append_string(&sb, r->hook, strlen(r->hook));
		else
			sb_puts(&sb, "null");
		sb_puts(&sb, ",\"on_batch_done\":");
		if (r->on_batch_done)
			json_append_string(&sb, r->on_batch_done, strlen(r->on_batch_done));
		else
			sb_puts(&sb, "null");
		sb_putc(&sb, '}');
	}
	sb_putc(&sb, ']');
	return sb_steal(&sb);
}

static int send_sync_routes(Worker *w, db_result_cb cb)
{
	char *json = routes_json(w->cfg);
	const char *params[1] = { json };
	int rc = db_query(w->db, "SELECT batchd.sync_routes($1::jsonb)", 1, params, cb, w);
	free(json);
	return rc;
}

static void reload_sync_done(PGresult *res, void *arg)
{
	if (res && !db_result_ok(res))
		log_error("reload: recording route hooks failed: %s", db_result_error(res));
}

static void routes_done(PGresult *res, void *arg)
{
	Worker *w = arg;
	const char *params[2];
	StrBuf held;

	if (!res)
		return;
	if (!db_result_ok(res)) {
		char msg[700];
		snprintf(msg, sizeof(msg), "recording the routes' hooks failed: %s",
			 db_result_error(res));
		fail(w, msg);
		return;
	}
	/*
	 * A claim committed just before a connection loss leaves items running
	 * under our id that we never heard of; our heartbeat would keep them
	 * leased forever.  Put them back (no attempt spent).
	 */
	sb_init(&held);
	sb_putc(&held, '{');
	w->h->held_ids(&held, w->harg);
	sb_putc(&held, '}');
	params[0] = w->worker_id;
	params[1] = held.data;
	if (db_query(w->db, "SELECT batchd.release_unheld($1::uuid, $2::bigint[])", 2, params,
		     reconcile_done, w) < 0) {
		/* lost: the reconnect starts over */
	}
	sb_free(&held);
}

/*
 * Another worker declared us dead while we were away and requeued our
 * items: whatever we still hold is no longer ours.
 */
static void lease_lost(Worker *w, const char *why)
{
	w->h->lease_lost(why, w->harg);
}

/* Registration answer: existed (false: we were reaped) and the shares. */
static void registered(Worker *w, PGresult *res)
{
	bool existed = strcmp(PQgetvalue(res, 0, 0), "t") == 0;

	if (!existed && w->ever_ready && !w->draining)
		lease_lost(w, "worker row gone at reconnect");
	w->lease_ok_us = now_monotonic_us();
	w->h->shares(PQgetvalue(res, 0, 1), !w->ever_ready || !existed, w->harg);
	w->h->lease_confirmed(w->harg);
}

static void register_done(PGresult *res, void *arg)
{
	Worker *w = arg;

	if (!res)
		return;
	if (!db_result_ok(res)) {
		char msg[600];
		snprintf(msg, sizeof(msg), "registering the worker failed: %s", db_result_error(res));
		fail(w, msg);
		return;
	}
	registered(w, res);
	if (send_sync_routes(w, routes_done) < 0)
		return;
}

static void registered_again(PGresult *res, void *arg)
{
	Worker *w = arg;
	if (res && db_result_ok(res) && PQntuples(res) == 1)
		registered(w, res);
}

/* register_worker: also the providers we call, for the fleet's rate shares */
static int send_register(Worker *w, db_result_cb cb)
{
	char pid[16], lease[24];
	const char *params[6];
	StrBuf pv;
	int rc;

	sb_init(&pv);
	sb_putc(&pv, '{');
	w->h->providers(&pv, w->harg);
	sb_putc(&pv, '}');
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	snprintf(lease, sizeof(lease), "%lld", (long long)w->cfg->lease_timeout_ms);
	params[0] = w->worker_id;
	params[1] = w->hostname;
	params[2] = pid;
	params[3] = PACKAGE_VERSION;
	params[4] = pv.data;
	params[5] = lease;
	rc = db_query(w->db, "SELECT existed, shares FROM batchd.worker_register($1::uuid, $2, "
		      "$3::int, $4, $5::text[], $6::bigint)", 6, params, cb, w);
	sb_free(&pv);
	return rc;
}

static void version_done(PGresult *res, void *arg)
{
	Worker *w = arg;
	char msg[600];
	int have, want = migrate_latest_version();

	if (!res)
		return;
	if (!db_result_ok(res)) {
		if (strcmp(db_result_sqlstate(res), "42P01") == 0 ||
		    strcmp(db_result_sqlstate(res), "3F000") == 0)
			snprintf(msg, sizeof(msg), "the batchd schema is not installed in this database, "
				 "or is older than this batchd: run 'batchd migrate' first");
		else
			snprintf(msg, sizeof(msg), "checking the schema version failed: %s",
				 db_result_error(res));
		fail(w, msg);
		return;
	}
	have = atoi(PQgetvalue(res, 0, 0));
	if (have != want) {
		snprintf(msg, sizeof(msg), "schema version is %d but this batchd needs %d: run "
			 "'batchd migrate'%s", have, want,
			 have > want ? " with the newer batchd, or upgrade this one" : "");
		fail(w, msg);
		return;
	}
	/* the function files (sql/functions) as this binary has them */
	if (strcmp(PQgetvalue(res, 0, 1), function_files_checksums) != 0) {
		snprintf(msg, sizeof(msg), "the schema's functions are not the ones of this "
			 "batchd (sql/functions differ from batchd.schema_functions): run "
			 "'batchd migrate'");
		fail(w, msg);
		return;
	}
	if (send_register(w, register_done) < 0)
		return;
}

void worker_connected(Worker *w)
{
	if (w->state == WK_GONE)
		return;
	set_state(w, WK_SETTING_UP);
	if (db_query(w->db, "SELECT coalesce(max(version), 0), " MIGRATE_FUNCTIONS_QUERY
		     " FROM batchd.schema_migrations", 0, NULL, version_done, w) < 0)
		return;
}

void worker_disconnected(Worker *w)
{
	w->hb_inflight = false;
	w->db_down_since_us = now_monotonic_us();
	set_state(w, WK_OFFLINE);
}

/* --------------------------------------------------------------- heartbeat */

/*
 * Heartbeat answer: whether our row still exists, and for each provider the
 * number of live workers calling it.  Each process takes rate / workers of a
 * provider's rate (and its share of the burst), so a fleet together never
 * exceeds the configured rate; shares follow workers joining and leaving.
 */
static void heartbeat_done(PGresult *res, void *arg)
{
	Worker *w = arg;
	bool was_ok = worker_lease_ok(w);

	w->hb_inflight = false;
	if (!res || !db_result_ok(res) || PQntuples(res) != 1)
		return;
	if (strcmp(PQgetvalue(res, 0, 0), "f") == 0) {
		if (!w->draining) {
			lease_lost(w, "worker row missing at heartbeat");
			if (send_register(w, registered_again) < 0)
				return;
		}
		return;
	}
	/* the row was there when this heartbeat ran: the lease held until then */
	w->lease_ok_us = w->hb_sent_us;
	w->h->shares(PQgetvalue(res, 0, 1), false, w->harg);
	if (!was_ok)
		w->h->lease_confirmed(w->harg);
}

static void send_heartbeat(Worker *w)
{
	char n[16], lease[24];
	const char *params[3];

	if (w->state != WK_READY && w->state != WK_DEREGISTERING)
		return;
	if (w->hb_inflight)
		return;
	snprintf(n, sizeof(n), "%d", w->h->transfers(w->harg));
	snprintf(lease, sizeof(lease), "%lld", (long long)w->cfg->lease_timeout_ms);
	params[0] = w->worker_id;
	params[1] = n;
	params[2] = lease;
	if (db_query(w->db, "SELECT registered, shares FROM batchd.worker_heartbeat($1::uuid, "
		     "$2::int, $3::bigint)", 3, params, heartbeat_done, w) < 0)
		return;
	w->hb_inflight = true;
	w->hb_sent_us = now_monotonic_us();
}

static void heartbeat_cb(evutil_socket_t fd, short what, void *arg)
{
	Worker *w = arg;

	timer_arm_ms(w->heartbeat_timer, w->cfg->heartbeat_interval_ms);
	send_heartbeat(w);
}

/*
 * Is our lease surely still ours?  Only if a heartbeat that went out less
 * than lease_timeout ago was acknowledged: after a stall (SIGSTOP, a long
 * loop lag, a database outage) other workers may have declared us dead and
 * taken our items, and we must not call a provider for them.  Until a
 * heartbeat says, providers hold their queues.
 */
bool worker_lease_ok(const Worker *w)
{
	return now_monotonic_us() - w->lease_ok_us < w->cfg->lease_timeout_ms * 1000;
}

void worker_check_lease(Worker *w)
{
	if (w->hb_inflight || (w->state != WK_READY && w->state != WK_DEREGISTERING))
		return;
	/* now, and the next one a full interval later */
	evtimer_del(w->heartbeat_timer);
	heartbeat_cb(-1, 0, w);
}

/* -------------------------------------------------------------------- stop */

static void deregister_done(PGresult *res, void *arg)
{
	Worker *w = arg;

	if (!res)
		return;   /* lost the connection: the engine waits for it again */
	if (!db_result_ok(res))
		log_error("deregistering the worker failed: %s", db_result_error(res));
	else
		log_info("worker %s deregistered; %s item(s) released back to the queue",
			 w->worker_id, PQgetvalue(res, 0, 0));
	set_state(w, WK_GONE);
	evtimer_del(w->heartbeat_timer);
	w->h->deregistered(db_result_ok(res), w->harg);
}

int worker_deregister(Worker *w)
{
	const char *params[1];

	if (w->state != WK_READY)
		return -1;
	params[0] = w->worker_id;
	if (db_query(w->db, "SELECT batchd.deregister_worker($1::uuid)", 1, params,
		     deregister_done, w) < 0)
		return -1;
	set_state(w, WK_DEREGISTERING);
	return 0;
}

void worker_set_draining(Worker *w)
{
	w->draining = true;
}

/* ------------------------------------------------------------------ public */

Worker *worker_new(struct event_base *base, Db *db, const char *worker_id,
		   const char *hostname, const Config *cfg, const WorkerHandlers *h, void *arg)
{
	Worker *w = xcalloc(1, sizeof(*w));

	w->db = db;
	w->worker_id = worker_id;
	w->hostname = hostname;
	w->cfg = cfg;
	w->h = h;
	w->harg = arg;
	w->state = WK_OFFLINE;
	w->heartbeat_timer = evtimer_new(base, heartbeat_cb, w);
	return w;
}

void worker_free(Worker *w)
{
	if (!w)
		return;
	event_free(w->heartbeat_timer);
	free(w);
}

void worker_configure(Worker *w, const Config *cfg)
{
	w->cfg = cfg;
	if (w->state == WK_READY && send_sync_routes(w, reload_sync_done) < 0)
		log_warn("reload: database away; route hooks are recorded at reconnect");
}

void worker_start(Worker *w)
{
	timer_arm_ms(w->heartbeat_timer, w->cfg->heartbeat_interval_ms);
}

enum WorkerState worker_state(const Worker *w)
{
	return w->state;
}

bool worker_ever_ready(const Worker *w)
{
	return w->ever_ready;
}

int64_t worker_db_down_since(const Worker *w)
{
	return w->db_down_since_us;
}
