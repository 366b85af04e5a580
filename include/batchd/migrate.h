/*
 * migrate.h - numbered schema migrations (sql/NNN_name.{up,down}.sql),
 * compiled into the binary and applied by "batchd migrate".
 */
#ifndef BATCHD_MIGRATE_H
#define BATCHD_MIGRATE_H

typedef struct Migration {
	int version;
	const char *name;
	const char *up;
	const char *down;
} Migration;

extern const Migration migrations[];
extern const int migrations_count;

/* The schema version this binary expects (highest embedded migration). */
int migrate_latest_version(void);

/*
 * Apply pending migrations (down_count == 0) or revert the down_count most
 * recent ones, each in its own transaction under an advisory lock.  Blocking
 * libpq: used only by the "migrate" command, never by the daemon loop.
 * Returns 0 on success, 1 on error (logged).
 */
int migrate_run(const char *conninfo, int down_count);

#endif /* BATCHD_MIGRATE_H */
