/*
 * db.c - asynchronous libpq connection driven by libevent.
 *
 * States: IDLE -> CONNECTING -> READY -> (lost) WAIT_RETRY -> CONNECTING ...
 *
 * While CONNECTING, each PQconnectPoll answer re-arms a one-shot event for
 * read or write on a freshly fetched PQsocket (the socket can change between
 * steps, e.g. when libpq tries the next host).  libpq ignores
 * connect_timeout in this mode, so a timer of our own bounds the attempt.
 *
 * While READY, a persistent read event stays armed (results and NOTIFYs may
 * arrive at any time) and a one-shot write event is armed only while PQflush
 * reports unsent data.  Queries run one at a time from a FIFO; the engine
 * batches many items per statement, so this is not a round trip per item.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/db.h"
#include "batchd/log.h"

enum DbState {
	DB_IDLE,          /* not started, or closed */
	DB_CONNECTING,    /* PQconnectPoll in progress */
	DB_READY,         /* connected; queries run */
	DB_WAIT_RETRY,    /* lost or failed; reconnect timer armed */
};

#define DB_CONNECT_TIMEOUT_MS 10000
#define DB_BACKOFF_MIN_MS 100
#define DB_BACKOFF_MAX_MS 5000

const double db_lat_bucket_le[DB_LAT_BUCKETS] = {
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5,
};

typedef struct DbQuery {
	struct DbQuery *next;
	int64_t sent_us;
	char *sql;
	int nparams;
	char **params;
	db_result_cb cb;
	void *arg;
} DbQuery;

struct Db {
	struct event_base *base;
	char *conninfo;
	char *name;
	DbHandlers h;
	void *arg;

	enum DbState state;
	PGconn *conn;
	struct event *ev_io;      /* CONNECTING: one-shot; READY: persistent read */
	struct event *ev_write;   /* READY: one-shot write while flushing */
	struct event *ev_timer;   /* connect timeout or reconnect delay */
	int backoff_ms;

	DbQuery *head, *tail;     /* waiting to be sent */
	int queued;
	DbQuery *current;         /* sent, results pending */
	PGresult *current_res;    /* result kept for the callback */
	bool stopped;             /* db_close called: no reconnect */
	DbLatency lat;
	char last_error[256];
};

static void db_connect_step(evutil_socket_t fd, short what, void *arg);
static void db_on_read(evutil_socket_t fd, short what, void *arg);
static void db_on_write(evutil_socket_t fd, short what, void *arg);
static void db_on_timer(evutil_socket_t fd, short what, void *arg);
static void db_lost(Db *db, const char *why);
static void db_send_next(Db *db);

static void set_error(Db *db, const char *msg)
{
	size_t n;
	snprintf(db->last_error, sizeof(db->last_error), "%s", msg ? msg : "unknown error");
	/* libpq messages end with newlines; keep one line for logs */
	for (char *p = db->last_error; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	n = strlen(db->last_error);
	while (n > 0 && db->last_error[n - 1] == ' ')
		db->last_error[--n] = '\0';
}

Db *db_new(struct event_base *base, const char *conninfo, const char *name,
	   const DbHandlers *h, void *arg)
{
	Db *db = xcalloc(1, sizeof(*db));
	db->base = base;
	db->conninfo = xstrdup(conninfo);
	db->name = xstrdup(name ? name : "db");
	if (h)
		db->h = *h;
	db->arg = arg;
	db->state = DB_IDLE;
	db->backoff_ms = DB_BACKOFF_MIN_MS;
	db->ev_timer = evtimer_new(base, db_on_timer, db);
	snprintf(db->last_error, sizeof(db->last_error), "not connected");
	return db;
}

bool db_is_ready(const Db *db) { return db->state == DB_READY; }
const char *db_last_error(const Db *db) { return db->last_error; }
int db_queue_length(const Db *db) { return db->queued + (db->current ? 1 : 0); }

static void free_query(DbQuery *q)
{
	for (int i = 0; i < q->nparams; i++)
		free(q->params[i]);
	free(q->params);
	free(q->sql);
	free(q);
}

static void drop_events(Db *db)
{
	if (db->ev_io) {
		event_free(db->ev_io);
		db->ev_io = NULL;
	}
	if (db->ev_write) {
		event_free(db->ev_write);
		db->ev_write = NULL;
	}
}

/* Fail every pending query with a NULL result (connection gone). */
static void fail_pending(Db *db)
{
	DbQuery *cur = db->current;
	DbQuery *list = db->head;

	db->current = NULL;
	db->head = db->tail = NULL;
	db->queued = 0;
	if (db->current_res) {
		PQclear(db->current_res);
		db->current_res = NULL;
	}
	if (cur) {
		if (cur->cb)
			cur->cb(NULL, cur->arg);
		free_query(cur);
	}
	while (list) {
		DbQuery *q = list;
		list = q->next;
		if (q->cb)
			q->cb(NULL, q->arg);
		free_query(q);
	}
}

static void schedule_retry(Db *db)
{
	struct timeval tv;
	int delay;

	if (db->stopped) {
		db->state = DB_IDLE;
		return;
	}
	/* full jitter between half and all of the current backoff */
	delay = db->backoff_ms / 2 + (int)(random() % (db->backoff_ms / 2 + 1));
	db->backoff_ms *= 2;
	if (db->backoff_ms > DB_BACKOFF_MAX_MS)
		db->backoff_ms = DB_BACKOFF_MAX_MS;
	db->state = DB_WAIT_RETRY;
	tv.tv_sec = delay / 1000;
	tv.tv_usec = (delay % 1000) * 1000;
	evtimer_add(db->ev_timer, &tv);
	log_debug("%s: reconnecting in %d ms", db->name, delay);
}

static void arm_connect_io(Db *db, short what)
{
	int fd = PQsocket(db->conn);
	if (db->ev_io)
		event_free(db->ev_io);
	db->ev_io = event_new(db->base, fd, what, db_connect_step, db);
	event_add(db->ev_io, NULL);
}

static void connect_failed(Db *db, const char *why)
{
	set_error(db, why);
	log_warn("%s: connection failed: %s", db->name, db->last_error);
	evtimer_del(db->ev_timer);
	drop_events(db);
	if (db->conn) {
		PQfinish(db->conn);
		db->conn = NULL;
	}
	schedule_retry(db);
}

void db_start(Db *db)
{
	const char *keys[] = { "dbname", "application_name", NULL };
	const char *vals[] = { db->conninfo, "batchd", NULL };
	struct timeval tv = { DB_CONNECT_TIMEOUT_MS / 1000, 0 };

	if (db->state == DB_CONNECTING || db->state == DB_READY)
		return;
	db->stopped = false;
	evtimer_del(db->ev_timer);
	/* expand_dbname=1: database may be a conninfo string or a URI; a later
	 * application_name in it wins over ours. */
	db->conn = PQconnectStartParams(keys, vals, 1);
	if (!db->conn) {
		connect_failed(db, "out of memory");
		return;
	}
	if (PQstatus(db->conn) == CONNECTION_BAD) {
		connect_failed(db, PQerrorMessage(db->conn));
		return;
	}
	db->state = DB_CONNECTING;
	evtimer_add(db->ev_timer, &tv);
	arm_connect_io(db, EV_WRITE);
}

/* Server notices (RAISE NOTICE in a hook, say) go to our log, not raw to
 * stderr, so that every log line keeps the configured format. */
static void notice_receiver(void *arg, const PGresult *res)
{
	Db *db = arg;
	const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
	const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	enum LogLevel lvl = LG_INFO;

	if (sev && strcmp(sev, "WARNING") == 0)
		lvl = LG_WARN;
	else if (sev && (strcmp(sev, "DEBUG") == 0 || strcmp(sev, "LOG") == 0))
		lvl = LG_DEBUG;
	log_msg(lvl, "%s: server %s: %s", db->name, sev ? sev : "notice", msg ? msg : "");
}

static void on_ready(Db *db)
{
	int fd = PQsocket(db->conn);

	evtimer_del(db->ev_timer);
	drop_events(db);
	PQsetNoticeReceiver(db->conn, notice_receiver, db);
	if (PQsetnonblocking(db->conn, 1) != 0) {
		connect_failed(db, PQerrorMessage(db->conn));
		return;
	}
	db->ev_io = event_new(db->base, fd, EV_READ | EV_PERSIST, db_on_read, db);
	db->ev_write = event_new(db->base, fd, EV_WRITE, db_on_write, db);
	event_add(db->ev_io, NULL);
	db->state = DB_READY;
	db->backoff_ms = DB_BACKOFF_MIN_MS;
	snprintf(db->last_error, sizeof(db->last_error), "connected");
	log_info("%s: connected (server %d, pid %d)", db->name,
		 PQserverVersion(db->conn), PQbackendPID(db->conn));
	if (db->h.on_connect)
		db->h.on_connect(db, db->arg);
	if (db->state == DB_READY)
		db_send_next(db);
}

static void db_connect_step(evutil_socket_t fd, short what, void *arg)
{
	Db *db = arg;

	switch (PQconnectPoll(db->conn)) {
	case PGRES_POLLING_READING:
		arm_connect_io(db, EV_READ);
		break;
	case PGRES_POLLING_WRITING:
		arm_connect_io(db, EV_WRITE);
		break;
	case PGRES_POLLING_OK:
		on_ready(db);
		break;
	case PGRES_POLLING_FAILED:
	default:
		connect_failed(db, PQerrorMessage(db->conn));
		break;
	}
}

static void db_on_timer(evutil_socket_t fd, short what, void *arg)
{
	Db *db = arg;

	if (db->state == DB_CONNECTING)
		connect_failed(db, "timeout while connecting");
	else if (db->state == DB_WAIT_RETRY)
		db_start(db);
}

/* The connection broke while READY: fail queries, notify, reconnect. */
static void db_lost(Db *db, const char *why)
{
	set_error(db, why);
	log_warn("%s: connection lost: %s", db->name, db->last_error);
	drop_events(db);
	if (db->conn) {
		PQfinish(db->conn);
		db->conn = NULL;
	}
	db->state = DB_WAIT_RETRY;
	fail_pending(db);
	if (db->h.on_disconnect)
		db->h.on_disconnect(db, db->arg);
	if (db->state == DB_WAIT_RETRY)
		schedule_retry(db);
}

static void db_flush(Db *db)
{
	int r = PQflush(db->conn);
	if (r < 0)
		db_lost(db, PQerrorMessage(db->conn));
	else if (r > 0)
		event_add(db->ev_write, NULL);
}

static void db_send_next(Db *db)
{
	DbQuery *q;

	if (db->state != DB_READY || db->current || !db->head)
		return;
	q = db->head;
	db->head = q->next;
	if (!db->head)
		db->tail = NULL;
	db->queued--;
	q->next = NULL;
	db->current = q;
	q->sent_us = now_monotonic_us();
	if (!PQsendQueryParams(db->conn, q->sql, q->nparams, NULL,
			       (const char *const *)q->params, NULL, NULL, 0)) {
		db_lost(db, PQerrorMessage(db->conn));
		return;
	}
	db_flush(db);
}

int db_query(Db *db, const char *sql, int nparams, const char *const *params,
	     db_result_cb cb, void *arg)
{
	DbQuery *q;

	if (db->state != DB_READY)
		return -1;
	q = xcalloc(1, sizeof(*q));
	q->sql = xstrdup(sql);
	q->nparams = nparams;
	if (nparams > 0) {
		q->params = xcalloc((size_t)nparams, sizeof(char *));
		for (int i = 0; i < nparams; i++)
			q->params[i] = params[i] ? xstrdup(params[i]) : NULL;
	}
	q->cb = cb;
	q->arg = arg;
	if (db->tail)
		db->tail->next = q;
	else
		db->head = q;
	db->tail = q;
	db->queued++;
	db_send_next(db);
	return 0;
}

static void deliver_notifies(Db *db)
{
	PGnotify *n;
	while (db->state == DB_READY && (n = PQnotifies(db->conn)) != NULL) {
		if (db->h.on_notify)
			db->h.on_notify(db, n->relname, n->extra, db->arg);
		PQfreemem(n);
	}
}

static void db_on_write(evutil_socket_t fd, short what, void *arg)
{
	Db *db = arg;
	if (db->state == DB_READY)
		db_flush(db);
}

static void db_on_read(evutil_socket_t fd, short what, void *arg)
{
	Db *db = arg;

	if (!PQconsumeInput(db->conn)) {
		db_lost(db, PQerrorMessage(db->conn));
		return;
	}
	/* reading may have made room for the rest of a large query */
	if (PQisnonblocking(db->conn) && db->current) {
		db_flush(db);
		if (db->state != DB_READY)
			return;
	}
	while (db->state == DB_READY && db->current && !PQisBusy(db->conn)) {
		PGresult *res = PQgetResult(db->conn);
		if (res) {
			/* keep the first error, else the last result */
			if (!db->current_res)
				db->current_res = res;
			else if (PQresultStatus(db->current_res) == PGRES_FATAL_ERROR)
				PQclear(res);
			else {
				PQclear(db->current_res);
				db->current_res = res;
			}
			continue;
		}
		/* NULL: the query is complete */
		DbQuery *q = db->current;
		PGresult *r = db->current_res;
		double secs = (double)(now_monotonic_us() - q->sent_us) / 1e6;
		db->lat.count++;
		db->lat.sum += secs;
		for (int b = 0; b < DB_LAT_BUCKETS; b++)
			if (secs <= db_lat_bucket_le[b])
				db->lat.buckets[b]++;
		db->current = NULL;
		db->current_res = NULL;
		if (q->cb)
			q->cb(r, q->arg);
		PQclear(r);
		free_query(q);
		if (db->state != DB_READY)
			return;
		db_send_next(db);
	}
	deliver_notifies(db);
	if (db->state == DB_READY && PQstatus(db->conn) == CONNECTION_BAD)
		db_lost(db, PQerrorMessage(db->conn));
}

void db_close(Db *db)
{
	db->stopped = true;
	evtimer_del(db->ev_timer);
	drop_events(db);
	if (db->conn) {
		PQfinish(db->conn);
		db->conn = NULL;
	}
	db->state = DB_IDLE;
	fail_pending(db);
}

void db_free(Db *db)
{
	if (!db)
		return;
	db_close(db);
	event_free(db->ev_timer);
	free(db->conninfo);
	free(db->name);
	free(db);
}

void db_get_latency(const Db *db, DbLatency *out)
{
	*out = db->lat;
}

bool db_result_ok(const PGresult *res)
{
	ExecStatusType st;
	if (!res)
		return false;
	st = PQresultStatus(res);
	return st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK;
}

const char *db_result_error(const PGresult *res)
{
	static char buf[512];
	const char *m;
	if (!res)
		return "connection lost";
	m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	if (!m)
		m = PQresultErrorMessage(res);
	snprintf(buf, sizeof(buf), "%s", m && *m ? m : "unknown error");
	for (char *p = buf; *p; p++)
		if (*p == '\n')
			*p = ' ';
	return buf;
}

const char *db_result_sqlstate(const PGresult *res)
{
	const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	return s ? s : "";
}
