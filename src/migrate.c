/*
 * migrate.c - "batchd migrate": apply or revert the numbered migrations that
 * contrib/embed-sql.sh compiled in from sql/.
 *
 * This is a one-shot command, so it uses blocking libpq on purpose; the
 * daemon's loop never calls into this file.  A session advisory lock makes
 * two concurrent runs take turns, and each migration runs in its own
 * transaction together with its bookkeeping row, so a failure leaves the
 * schema at the last good version.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libpq-fe.h>

#include "batchd/migrate.h"
#include "batchd/log.h"

/* pg_advisory_lock key: "batchdmg" as an int64. */
#define MIGRATE_LOCK_KEY "7089063191856883559"

int migrate_latest_version(void)
{
	int v = 0;
	for (int i = 0; i < migrations_count; i++)
		if (migrations[i].version > v)
			v = migrations[i].version;
	return v;
}

static const Migration *find_migration(int version)
{
	for (int i = 0; i < migrations_count; i++)
		if (migrations[i].version == version)
			return &migrations[i];
	return NULL;
}

/* Run a command; on error log it with context and return -1. */
static int exec_ok(PGconn *c, const char *sql, const char *what)
{
	PGresult *r = PQexec(c, sql);
	ExecStatusType st = PQresultStatus(r);
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		const char *msg = PQresultErrorMessage(r);
		log_error("migrate: %s failed: %s", what, msg && *msg ? msg : PQerrorMessage(c));
		PQclear(r);
		return -1;
	}
	PQclear(r);
	return 0;
}

static int exec_params_ok(PGconn *c, const char *sql, int n, const char *const *params,
			  const char *what)
{
	PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
		log_error("migrate: %s failed: %s", what, PQresultErrorMessage(r));
		PQclear(r);
		return -1;
	}
	PQclear(r);
	return 0;
}

static void trim_nl(char *s)
{
	size_t n = strlen(s);
	while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r'))
		s[--n] = '\0';
}

/* Applied versions, ascending; returns count or -1. */
static int applied_versions(PGconn *c, int **out)
{
	PGresult *r = PQexec(c, "SELECT version FROM batchd.schema_migrations ORDER BY version");
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		log_error("migrate: reading batchd.schema_migrations: %s", PQresultErrorMessage(r));
		PQclear(r);
		return -1;
	}
	int n = PQntuples(r);
	int *v = calloc((size_t)n + 1, sizeof(int));
	if (!v)
		fatal("out of memory");
	for (int i = 0; i < n; i++)
		v[i] = atoi(PQgetvalue(r, i, 0));
	PQclear(r);
	*out = v;
	return n;
}

static bool is_applied(const int *v, int n, int version)
{
	for (int i = 0; i < n; i++)
		if (v[i] == version)
			return true;
	return false;
}

static int apply_one(PGconn *c, const Migration *m, bool up)
{
	char what[160];
	char ver[16];
	const char *params[2] = { ver, m->name };

	snprintf(ver, sizeof(ver), "%d", m->version);
	snprintf(what, sizeof(what), "%s %03d_%s", up ? "applying" : "reverting",
		 m->version, m->name);
	if (exec_ok(c, "BEGIN", what) < 0)
		return -1;
	if (exec_ok(c, up ? m->up : m->down, what) < 0)
		goto fail;
	if (up) {
		if (exec_params_ok(c, "INSERT INTO batchd.schema_migrations (version, name) "
				   "VALUES ($1::int, $2)", 2, params, what) < 0)
			goto fail;
	} else {
		if (exec_params_ok(c, "DELETE FROM batchd.schema_migrations WHERE version = $1::int",
				   1, params, what) < 0)
			goto fail;
	}
	if (exec_ok(c, "COMMIT", what) < 0)
		goto fail;
	log_info("migrate: %s %03d_%s", up ? "applied" : "reverted", m->version, m->name);
	return 0;
fail:
	PQclear(PQexec(c, "ROLLBACK"));
	return -1;
}

int migrate_run(const char *conninfo, int down_count)
{
	int rc = 1;
	int *applied = NULL;
	int napplied;
	PGconn *c = PQconnectdb(conninfo);

	if (PQstatus(c) != CONNECTION_OK) {
		char *msg = strdup(PQerrorMessage(c));
		if (msg)
			trim_nl(msg);
		log_error("migrate: cannot connect to the database: %s", msg ? msg : "?");
		free(msg);
		PQfinish(c);
		return 1;
	}
	if (exec_ok(c, "SET client_min_messages = warning", "setup") < 0)
		goto out;
	if (exec_ok(c, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")", "taking the migration lock") < 0)
		goto out;
	if (exec_ok(c, "CREATE SCHEMA IF NOT EXISTS batchd;"
		    "CREATE TABLE IF NOT EXISTS batchd.schema_migrations ("
		    " version int PRIMARY KEY,"
		    " name text NOT NULL,"
		    " applied_at timestamptz NOT NULL DEFAULT now())",
		    "creating batchd.schema_migrations") < 0)
		goto unlock;
	napplied = applied_versions(c, &applied);
	if (napplied < 0)
		goto unlock;

	if (down_count == 0) {
		int done = 0;
		/* migrations[] is in file-name order, which is version order */
		for (int i = 0; i < migrations_count; i++) {
			if (is_applied(applied, napplied, migrations[i].version))
				continue;
			if (apply_one(c, &migrations[i], true) < 0)
				goto unlock;
			done++;
		}
		if (done == 0)
			log_info("migrate: schema is up to date (version %d)", migrate_latest_version());
	} else {
		if (down_count > napplied) {
			log_error("migrate: --down %d but only %d migration(s) applied",
				  down_count, napplied);
			goto unlock;
		}
		for (int i = napplied - 1; i >= napplied - down_count; i--) {
			const Migration *m = find_migration(applied[i]);
			if (!m) {
				log_error("migrate: version %d is applied but unknown to this batchd", applied[i]);
				goto unlock;
			}
			if (apply_one(c, m, false) < 0)
				goto unlock;
		}
	}
	rc = 0;
unlock:
	PQclear(PQexec(c, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")"));
out:
	free(applied);
	PQfinish(c);
	return rc;
}
