/*
 * log.h - levelled logging to stderr, as text or one JSON object a line.
 */
#ifndef BATCHD_LOG_H
#define BATCHD_LOG_H

#include "batchd/util.h"

enum LogLevel { LG_ERROR = 0, LG_WARN = 1, LG_INFO = 2, LG_DEBUG = 3 };
enum LogFormat { LOGF_TEXT = 0, LOGF_JSON = 1 };

void log_set_level(enum LogLevel lvl);
void log_set_format(enum LogFormat fmt);
enum LogLevel log_get_level(void);
int log_parse_level(const char *s, enum LogLevel *out) _MUSTCHECK;
int log_parse_format(const char *s, enum LogFormat *out) _MUSTCHECK;

void log_msg(enum LogLevel lvl, const char *fmt, ...) _PRINTF(2, 3);

#define log_error(...) log_msg(LG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LG_INFO, __VA_ARGS__)
#define log_debug(...) \
	do { if (log_get_level() >= LG_DEBUG) log_msg(LG_DEBUG, __VA_ARGS__); } while (0)

/* Broken invariant: log and abort. */
void fatal(const char *fmt, ...) _PRINTF(1, 2) __attribute__((noreturn));

#endif /* BATCHD_LOG_H */
