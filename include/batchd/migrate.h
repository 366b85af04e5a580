/*
 * migrate.h - batchd's SQL (sql/README): the numbered schema migrations
 * (sql/migrations/NNN_name.{up,down}.sql) and the repeatable function files
 * (sql/functions/NAME.sql), compiled into the binary by contrib/embed-sql.sh and
 * applied by "batchd migrate".
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

/* A function file: the current definition of functions and triggers of one
 * concern, re-applied whenever its text changes. */
typedef struct FunctionFile {
	const char *name;          /* file name, e.g. "claim.sql" */
	const char *md5;           /* of sql, hex */
	const char *sql;
} FunctionFile;

extern const FunctionFile function_files[];
extern const int function_files_count;
/* "name=md5 name=md5 ..." in file-name order, as MIGRATE_FUNCTIONS_QUERY
 * renders batchd.schema_functions when it is current. */
extern const char function_files_checksums[];
#define MIGRATE_FUNCTIONS_QUERY \
	"(SELECT coalesce(string_agg(file || '=' || checksum, ' ' ORDER BY file COLLATE \"C\"), '') " \
	"FROM batchd.schema_functions)"

/* The schema version this binary expects (highest embedded migration). */
int migrate_latest_version(void);

/*
 * Apply pending migrations and then the function files whose text changed
 * (down_count == 0), or revert the down_count most recent migrations; all in
 * one transaction under an advisory lock.  Blocking
 * libpq: used only by the "migrate" command, never by the daemon loop.
 * Returns 0 on success, 1 on error (logged).
 */
int migrate_run(const char *conninfo, int down_count);

#endif /* BATCHD_MIGRATE_H */
