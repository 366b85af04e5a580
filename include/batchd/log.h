/*
 * log.h - levelled logging to stderr, as text or one JSON object a line.
 */
#ifndef BATCHD_LOG_H
#define BATCHD_LOG_H

#include "batchd/util.h"

enum LogLevel { LG_ERROR = 0, LG_WARN = 1, LG_INFO = 2, LG_DEBUG = 3 };
enum LogFormat {
	LOGF_TEXT = 0,
	LOGF_JSON = 1,
	LOGF_JOURNAL = 2,   /* native journal fields, through the sink below */
	LOGF_AUTO = 3,      /* config default: journal when stderr is the journal */
};

/* Context of a record: any field may be NULL / 0. */
typedef struct LogCtx {
	const char *batch_id;
	long long item_id;
	const char *provider;
	const char *route;
} LogCtx;

/* Where LOGF_JOURNAL records go (set by the daemon, which links libsystemd;
 * without a sink they are written as text). priority is syslog's. */
typedef void (*log_sink_fn)(int priority, const char *msg, const LogCtx *ctx,
			    const char *worker_id);
void log_set_journal_sink(log_sink_fn sink);
void log_set_worker_id(const char *worker_id);

/* Values never to appear in a log record (provider secrets): every
 * occurrence is replaced by "[redacted]".  log_clear_secrets forgets all. */
void log_add_secret(const char *value);
void log_clear_secrets(void);

void log_set_level(enum LogLevel lvl);
void log_set_format(enum LogFormat fmt);
enum LogLevel log_get_level(void);
int log_parse_level(const char *s, enum LogLevel *out) _MUSTCHECK;
int log_parse_format(const char *s, enum LogFormat *out) _MUSTCHECK;

void log_msg(enum LogLevel lvl, const char *fmt, ...) _PRINTF(2, 3);
void log_ctx(enum LogLevel lvl, const LogCtx *ctx, const char *fmt, ...) _PRINTF(3, 4);

#define log_error(...) log_msg(LG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LG_INFO, __VA_ARGS__)
#define log_debug(...) \
	do { if (log_get_level() >= LG_DEBUG) log_msg(LG_DEBUG, __VA_ARGS__); } while (0)

/* Broken invariant: log and abort. */
void fatal(const char *fmt, ...) _PRINTF(1, 2) __attribute__((noreturn));

#endif /* BATCHD_LOG_H */
