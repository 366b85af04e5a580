/*
 * migrate.c - "batchd migrate": apply or revert the numbered migrations and
 * apply the repeatable function files that contrib/embed-sql.sh compiled in
 * from sql/ (see sql/README).
 *
 * This is a one-shot command, so it uses blocking libpq on purpose; the
 * daemon's loop never calls into this file.  A session advisory lock makes
 * two concurrent runs take turns, and one run is one transaction: the
 * pending migrations with their bookkeeping rows, then every function file
 * whose text differs from the one recorded in batchd.schema_functions.  A
 * failure anywhere rolls all of it back: the database stays as it was.
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

/* Run one migration's up or down and its bookkeeping row (in the caller's
 * transaction). */
static int apply_one(PGconn *c, const Migration *m, bool up)
{
	char what[160];
	char ver[16];
	const char *params[2] = { ver, m->name };

	snprintf(ver, sizeof(ver), "%d", m->version);
	snprintf(what, sizeof(what), "%s %03d_%s", up ? "applying" : "reverting",
		 m->version, m->name);
	if (exec_ok(c, up ? m->up : m->down, what) < 0)
		return -1;
	if (up) {
		if (exec_params_ok(c, "INSERT INTO batchd.schema_migrations (version, name) "
				   "VALUES ($1::int, $2)", 2, params, what) < 0)
			return -1;
	} else {
		if (exec_params_ok(c, "DELETE FROM batchd.schema_migrations WHERE version = $1::int",
				   1, params, what) < 0)
			return -1;
	}
	log_info("migrate: %s %03d_%s", up ? "applied" : "reverted", m->version, m->name);
	return 0;
}

/*
 * Apply the function files whose text differs from the recorded one (the md5
 * of the text, computed when it was embedded: what the daemon checks at
 * start), in file-name order, and record them.
 * Returns the number applied, or -1.
 */
static int apply_functions(PGconn *c)
{
	int n = 0;

	for (int i = 0; i < function_files_count; i++) {
		const FunctionFile *f = &function_files[i];
		const char *params[2] = { f->name, f->md5 };
		char what[160];
		PGresult *r;
		bool same;

		r = PQexecParams(c, "SELECT EXISTS (SELECT FROM batchd.schema_functions "
				 "WHERE file = $1 AND checksum = $2)", 2, NULL, params,
				 NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			log_error("migrate: reading batchd.schema_functions: %s",
				  PQresultErrorMessage(r));
			PQclear(r);
			return -1;
		}
		same = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
		PQclear(r);
		if (same)
			continue;
		snprintf(what, sizeof(what), "applying functions/%s", f->name);
		if (exec_ok(c, f->sql, what) < 0)
			return -1;
		if (exec_params_ok(c, "INSERT INTO batchd.schema_functions (file, checksum) "
				   "VALUES ($1, $2) ON CONFLICT (file) DO UPDATE "
				   "SET checksum = excluded.checksum, applied_at = now()",
				   2, params, what) < 0)
			return -1;
		log_info("migrate: applied functions/%s", f->name);
		n++;
	}
	return n;
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
	if (exec_ok(c, "BEGIN", "starting the migration") < 0)
		goto unlock;
	if (exec_ok(c, "CREATE SCHEMA IF NOT EXISTS batchd;"
		    "CREATE TABLE IF NOT EXISTS batchd.schema_migrations ("
		    " version int PRIMARY KEY,"
		    " name text NOT NULL,"
		    " applied_at timestamptz NOT NULL DEFAULT now());"
		    "CREATE TABLE IF NOT EXISTS batchd.schema_functions ("
		    " file text PRIMARY KEY,"
		    " checksum text NOT NULL,"
		    " applied_at timestamptz NOT NULL DEFAULT now())",
		    "creating batchd.schema_migrations and batchd.schema_functions") < 0)
		goto rollback;
	napplied = applied_versions(c, &applied);
	if (napplied < 0)
		goto rollback;

	if (down_count == 0) {
		int done = 0, nfun;
		/* migrations[] is in file-name order, which is version order */
		for (int i = 0; i < migrations_count; i++) {
			if (is_applied(applied, napplied, migrations[i].version))
				continue;
			if (apply_one(c, &migrations[i], true) < 0)
				goto rollback;
			done++;
		}
		nfun = apply_functions(c);
		if (nfun < 0)
			goto rollback;
		if (done == 0 && nfun == 0)
			log_info("migrate: schema is up to date (version %d)", migrate_latest_version());
	} else {
		if (down_count > napplied) {
			log_error("migrate: --down %d but only %d migration(s) applied",
				  down_count, napplied);
			goto rollback;
		}
		for (int i = napplied - 1; i >= napplied - down_count; i--) {
			const Migration *m = find_migration(applied[i]);
			if (!m) {
				log_error("migrate: version %d is applied but unknown to this batchd", applied[i]);
				goto rollback;
			}
			if (apply_one(c, m, false) < 0)
				goto rollback;
		}
		/* the downs may have changed functions: the next up applies every file */
		if (exec_ok(c, "DELETE FROM batchd.schema_functions", "forgetting the function files") < 0)
			goto rollback;
	}
	if (exec_ok(c, "COMMIT", "committing the migration") < 0)
		goto rollback;
	rc = 0;
	goto unlock;
rollback:
	PQclear(PQexec(c, "ROLLBACK"));
unlock:
	PQclear(PQexec(c, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")"));
out:
	free(applied);
	PQfinish(c);
	return rc;
}
