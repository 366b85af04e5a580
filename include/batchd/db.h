/*
 * db.h - one asynchronous PostgreSQL connection on the event loop.
 *
 * Connects with PQconnectStartParams/PQconnectPoll, runs queued queries one
 * at a time with PQsendQueryParams, reads with PQconsumeInput on read
 * readiness, flushes on write readiness, delivers NOTIFYs, and reconnects
 * with capped, jittered backoff when the connection is lost.  Nothing here
 * blocks.
 */
#ifndef BATCHD_DB_H
#define BATCHD_DB_H

#include <stdbool.h>
#include <stdint.h>
#include <event2/event.h>
#include <libpq-fe.h>

#include "batchd/util.h"

typedef struct Db Db;

/*
 * Result callback.  res is the query's result (PGRES_TUPLES_OK,
 * PGRES_COMMAND_OK or PGRES_FATAL_ERROR with SQLSTATE), or NULL when the
 * connection was lost before the query completed.  The Db owns res and
 * clears it after the callback returns.
 */
typedef void (*db_result_cb)(PGresult *res, void *arg);

typedef struct DbHandlers {
	void (*on_connect)(Db *db, void *arg);     /* READY: send setup queries */
	void (*on_disconnect)(Db *db, void *arg);  /* lost; pending queries failed */
	void (*on_notify)(Db *db, const char *channel, const char *payload, void *arg);
} DbHandlers;

Db *db_new(struct event_base *base, const char *conninfo, const char *name,
	   const DbHandlers *h, void *arg);
void db_start(Db *db);
/* Close now (pending queries fail with NULL results); no reconnect. */
void db_close(Db *db);
void db_free(Db *db);

bool db_is_ready(const Db *db);
/* Last connection error (for logs and /v1/status); never NULL. */
const char *db_last_error(const Db *db);
int db_queue_length(const Db *db);

/*
 * Queue a query with text parameters (copied).  Returns 0, or -1 when the
 * connection is not READY (nothing queued, callback not called).
 */
int db_query(Db *db, const char *sql, int nparams, const char *const *params,
	     db_result_cb cb, void *arg) _MUSTCHECK;

/* Statement latency histogram (send to result), for metrics. */
#define DB_LAT_BUCKETS 10
extern const double db_lat_bucket_le[DB_LAT_BUCKETS];
typedef struct DbLatency {
	uint64_t buckets[DB_LAT_BUCKETS];   /* cumulative */
	uint64_t count;
	double sum;
} DbLatency;
void db_get_latency(const Db *db, DbLatency *out);

/* Helpers for result callbacks. */
bool db_result_ok(const PGresult *res);              /* TUPLES_OK or COMMAND_OK */
const char *db_result_error(const PGresult *res);    /* message, single line */
const char *db_result_sqlstate(const PGresult *res); /* "" when none */

#endif /* BATCHD_DB_H */
