/*
 * log.c - levelled logging to stderr.
 *
 * Each record is built in memory and written with one write(2), so records
 * from a process never interleave mid-line, also when stderr is a pipe shared
 * with other processes (journald, a supervisor).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "batchd/log.h"

static enum LogLevel log_level = LG_INFO;
static enum LogFormat log_format = LOGF_TEXT;
static log_sink_fn journal_sink;
static char worker_id[40];
static char **secrets;
static int nsecrets;

void log_set_journal_sink(log_sink_fn sink)
{
	journal_sink = sink;
}

void log_set_worker_id(const char *id)
{
	snprintf(worker_id, sizeof(worker_id), "%s", id ? id : "");
}

void log_add_secret(const char *value)
{
	/* very short values would redact ordinary words */
	if (!value || strlen(value) < 4)
		return;
	for (int i = 0; i < nsecrets; i++)
		if (strcmp(secrets[i], value) == 0)
			return;
	secrets = xrealloc(secrets, (size_t)(nsecrets + 1) * sizeof(char *));
	secrets[nsecrets++] = xstrdup(value);
}

void log_clear_secrets(void)
{
	for (int i = 0; i < nsecrets; i++)
		free(secrets[i]);
	free(secrets);
	secrets = NULL;
	nsecrets = 0;
}

/* Replace every occurrence of every known secret in msg. */
static void redact(StrBuf *msg)
{
	for (int i = 0; i < nsecrets && msg->data; i++) {
		const char *sec = secrets[i];
		size_t sl = strlen(sec);
		char *p;
		while ((p = strstr(msg->data, sec)) != NULL) {
			StrBuf out;
			sb_init(&out);
			sb_append(&out, msg->data, (size_t)(p - msg->data));
			sb_puts(&out, "[redacted]");
			sb_puts(&out, p + sl);
			sb_free(msg);
			*msg = out;
		}
	}
}

static const char *const level_names[] = {
	[LG_ERROR] = "error",
	[LG_WARN] = "warn",
	[LG_INFO] = "info",
	[LG_DEBUG] = "debug",
};

static const char *const level_labels[] = {
	[LG_ERROR] = "ERROR",
	[LG_WARN] = "WARN",
	[LG_INFO] = "INFO",
	[LG_DEBUG] = "DEBUG",
};

void log_set_level(enum LogLevel lvl)
{
	log_level = lvl;
}

void log_set_format(enum LogFormat fmt)
{
	log_format = fmt;
}

enum LogLevel log_get_level(void)
{
	return log_level;
}

int log_parse_level(const char *s, enum LogLevel *out)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(level_names); i++) {
		if (s && strcasecmp(s, level_names[i]) == 0) {
			*out = (enum LogLevel)i;
			return 0;
		}
	}
	return -1;
}

int log_parse_format(const char *s, enum LogFormat *out)
{
	if (s && strcasecmp(s, "text") == 0)
		*out = LOGF_TEXT;
	else if (s && strcasecmp(s, "json") == 0)
		*out = LOGF_JSON;
	else if (s && strcasecmp(s, "journal") == 0)
		*out = LOGF_JOURNAL;
	else
		return -1;
	return 0;
}

/* 2026-11-23T01:02:03.123Z: milliseconds are enough for a log line. */
static void log_timestamp(char *buf, size_t len)
{
	struct timespec ts;
	struct tm tm;
	char date[24];

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf, len, "%s.%03dZ", date, (int)(ts.tv_nsec / 1000000));
}

/* Text lines stay one record per line: control characters are escaped. */
static void put_text_escaped(StrBuf *sb, const char *s, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '\n')
			sb_puts(sb, "\\n");
		else if (c == '\r')
			sb_puts(sb, "\\r");
		else if (c == '\t')
			sb_putc(sb, '\t');
		else if (c < 0x20 || c == 0x7f)
			sb_printf(sb, "\\x%02x", c);
		else
			sb_putc(sb, (char)c);
	}
}

static void write_all(const char *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(STDERR_FILENO, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return;         /* nowhere left to report it */
		}
		p += n;
		len -= (size_t)n;
	}
}

static void log_emit(enum LogLevel lvl, const char *name, const char *label, const LogCtx *ctx,
		     const char *fmt, va_list ap) _PRINTF(5, 0);
static void log_emit(enum LogLevel lvl, const char *name, const char *label, const LogCtx *ctx,
		     const char *fmt, va_list ap)
{
	StrBuf msg, line;
	char ts[40];
	int saved_errno = errno;    /* so callers may log before using errno */

	sb_init(&msg);
	sb_init(&line);
	log_timestamp(ts, sizeof(ts));

	/* vsnprintf twice: size, then format (ap is consumed each time) */
	{
		va_list ap2;
		int n;

		va_copy(ap2, ap);
		n = vsnprintf(NULL, 0, fmt, ap2);
		va_end(ap2);
		if (n > 0) {
			sb_reserve(&msg, (size_t)n);
			vsnprintf(msg.data, (size_t)n + 1, fmt, ap);
			msg.len = (size_t)n;
		}
	}

	if (nsecrets) {
		redact(&msg);
	}
	if (log_format == LOGF_JOURNAL && journal_sink) {
		static const int prio[] = { 3, 4, 6, 7 };   /* err, warning, info, debug */
		journal_sink(lvl >= LG_ERROR && lvl <= LG_DEBUG ? prio[lvl] : 2,
			     msg.data ? msg.data : "", ctx, worker_id);
		sb_free(&msg);
		errno = saved_errno;
		return;
	}
	if (log_format == LOGF_JSON) {
		sb_puts(&line, "{\"ts\":\"");
		sb_puts(&line, ts);
		sb_puts(&line, "\",\"level\":\"");
		sb_puts(&line, name);
		sb_puts(&line, "\",\"msg\":");
		sb_put_json_string(&line, msg.data ? msg.data : "", msg.len);
		if (worker_id[0])
			sb_printf(&line, ",\"worker_id\":\"%s\"", worker_id);
		if (ctx && ctx->batch_id)
			sb_printf(&line, ",\"batch_id\":\"%s\"", ctx->batch_id);
		if (ctx && ctx->item_id)
			sb_printf(&line, ",\"item_id\":%lld", ctx->item_id);
		if (ctx && ctx->provider) {
			sb_puts(&line, ",\"provider\":");
			sb_put_json_string(&line, ctx->provider, strlen(ctx->provider));
		}
		if (ctx && ctx->route) {
			sb_puts(&line, ",\"route\":");
			sb_put_json_string(&line, ctx->route, strlen(ctx->route));
		}
		sb_puts(&line, "}\n");
	} else {
		sb_puts(&line, ts);
		sb_putc(&line, ' ');
		sb_puts(&line, label);
		sb_putc(&line, ' ');
		put_text_escaped(&line, msg.data ? msg.data : "", msg.len);
		if (ctx && (ctx->batch_id || ctx->item_id || ctx->provider || ctx->route)) {
			sb_puts(&line, " [");
			if (ctx->route)
				sb_printf(&line, " route=%s", ctx->route);
			if (ctx->provider)
				sb_printf(&line, " provider=%s", ctx->provider);
			if (ctx->batch_id)
				sb_printf(&line, " batch=%s", ctx->batch_id);
			if (ctx->item_id)
				sb_printf(&line, " item=%lld", ctx->item_id);
			sb_puts(&line, " ]");
		}
		sb_putc(&line, '\n');
	}
	write_all(line.data, line.len);
	sb_free(&msg);
	sb_free(&line);
	errno = saved_errno;
}

void log_msg(enum LogLevel lvl, const char *fmt, ...)
{
	va_list ap;

	if (lvl > log_level || lvl < LG_ERROR)
		return;
	va_start(ap, fmt);
	log_emit(lvl, level_names[lvl], level_labels[lvl], NULL, fmt, ap);
	va_end(ap);
}

void log_ctx(enum LogLevel lvl, const LogCtx *ctx, const char *fmt, ...)
{
	va_list ap;

	if (lvl > log_level || lvl < LG_ERROR)
		return;
	va_start(ap, fmt);
	log_emit(lvl, level_names[lvl], level_labels[lvl], ctx, fmt, ap);
	va_end(ap);
}

void fatal(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_emit(LG_ERROR, "fatal", "FATAL", NULL, fmt, ap);
	va_end(ap);
	abort();
}
