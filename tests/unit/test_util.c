/*
 * test_util.c - unit tests for util.c (and log.c output, status.c names).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "batchd/log.h"
#include "batchd/status.h"
#include "batchd/util.h"

static void assert_duration(const char *s, int64_t want)
{
	int64_t v = -12345;

	if (parse_duration_ms(s, &v) != 0)
		fail_msg("parse_duration_ms(\"%s\") failed", s);
	if (v != want)
		fail_msg("parse_duration_ms(\"%s\") = %lld, want %lld", s, (long long)v,
			 (long long)want);
}

static void assert_duration_bad(const char *s)
{
	int64_t v = -12345;

	if (parse_duration_ms(s, &v) != -1)
		fail_msg("parse_duration_ms(\"%s\") accepted (%lld)", s, (long long)v);
	assert_int_equal(v, -12345);    /* untouched on error */
}

static void test_duration(void **state)
{
	assert_duration("250ms", 250);
	assert_duration("5s", 5000);
	assert_duration("2m", 120000);
	assert_duration("1h", 3600000);
	assert_duration("30d", 30LL * 86400 * 1000);
	assert_duration("5", 5000);
	assert_duration("0", 0);
	assert_duration("0ms", 0);
	assert_duration("9223372036854775807ms", INT64_MAX);

	assert_duration_bad("");
	assert_duration_bad("5x");
	assert_duration_bad("-1s");
	assert_duration_bad("+1s");
	assert_duration_bad("ms");
	assert_duration_bad("s");
	assert_duration_bad("5 s");
	assert_duration_bad(" 5s");
	assert_duration_bad("5s ");
	assert_duration_bad("1.5s");
	assert_duration_bad("5S");
	assert_duration_bad("5sec");
	assert_duration_bad("5ms5");
	/* overflow: of the digits, and of the unit multiplication */
	assert_duration_bad("99999999999999999999ms");
	assert_duration_bad("9223372036854775807s");
	assert_duration_bad("106751991168d");
	assert_duration("106751991167d", 106751991167LL * 86400 * 1000);
	{
		int64_t v;

		assert_int_equal(parse_duration_ms(NULL, &v), -1);
	}
}

static void assert_size(const char *s, int64_t want)
{
	int64_t v = -1;

	if (parse_size(s, &v) != 0)
		fail_msg("parse_size(\"%s\") failed", s);
	if (v != want)
		fail_msg("parse_size(\"%s\") = %lld, want %lld", s, (long long)v, (long long)want);
}

static void assert_size_bad(const char *s)
{
	int64_t v = -1;

	if (parse_size(s, &v) != -1)
		fail_msg("parse_size(\"%s\") accepted (%lld)", s, (long long)v);
}

static void test_size(void **state)
{
	assert_size("512", 512);
	assert_size("512B", 512);
	assert_size("512KB", 512 * 1024);
	assert_size("1MB", 1024 * 1024);
	assert_size("64MB", 64LL * 1024 * 1024);
	assert_size("1GB", 1024LL * 1024 * 1024);
	assert_size("0", 0);
	assert_size("1kb", 1024);       /* unit case does not matter */

	assert_size_bad("");
	assert_size_bad("MB");
	assert_size_bad("-1MB");
	assert_size_bad("-1");
	assert_size_bad("1.5MB");
	assert_size_bad("1 MB");
	assert_size_bad("1XB");
	assert_size_bad("1MBB");
	assert_size_bad("junk");
	assert_size_bad("99999999999GB"); /* overflow */
}

static void assert_rate(const char *s, double want)
{
	double v = -1;

	if (parse_rate(s, &v) != 0)
		fail_msg("parse_rate(\"%s\") failed", s);
	if (v < want * 0.999999 || v > want * 1.000001)
		fail_msg("parse_rate(\"%s\") = %g, want %g", s, v, want);
}

static void assert_rate_bad(const char *s)
{
	double v = -1;

	if (parse_rate(s, &v) != -1)
		fail_msg("parse_rate(\"%s\") accepted (%g)", s, v);
}

static void test_rate(void **state)
{
	assert_rate("20/s", 20.0);
	assert_rate("0.5/s", 0.5);
	assert_rate("100/m", 100.0 / 60);
	assert_rate("1000/h", 1000.0 / 3600);
	assert_rate("1/s", 1.0);
	assert_rate("2.25/m", 2.25 / 60);

	assert_rate_bad("0/s");
	assert_rate_bad("0.0/s");
	assert_rate_bad("-1/s");
	assert_rate_bad("/s");
	assert_rate_bad("5");
	assert_rate_bad("5/");
	assert_rate_bad("5/x");
	assert_rate_bad("5/sec");
	assert_rate_bad("5/s ");
	assert_rate_bad(".5/s");
	assert_rate_bad("5./s");
	assert_rate_bad("inf/s");
	assert_rate_bad("nan/s");
	assert_rate_bad("1e3/s");
	assert_rate_bad("");
}

static void test_parse_int(void **state)
{
	int64_t v = 0;

	assert_int_equal(parse_int("42", 0, 100, &v), 0);
	assert_int_equal(v, 42);
	assert_int_equal(parse_int("-5", -10, 10, &v), 0);
	assert_int_equal(v, -5);
	assert_int_equal(parse_int("1", 1, 1, &v), 0);
	assert_int_equal(v, 1);
	assert_int_equal(parse_int("9223372036854775807", 0, INT64_MAX, &v), 0);
	assert_true(v == INT64_MAX);

	v = 7;
	assert_int_equal(parse_int("101", 0, 100, &v), -1);
	assert_int_equal(parse_int("0", 1, 100, &v), -1);
	assert_int_equal(parse_int("", 0, 100, &v), -1);
	assert_int_equal(parse_int(" 5", 0, 100, &v), -1);
	assert_int_equal(parse_int("5 ", 0, 100, &v), -1);
	assert_int_equal(parse_int("5x", 0, 100, &v), -1);
	assert_int_equal(parse_int("0x10", 0, 100, &v), -1);
	assert_int_equal(parse_int("-", 0, 100, &v), -1);
	assert_int_equal(parse_int("9223372036854775808", 0, INT64_MAX, &v), -1);
	assert_int_equal(v, 7);
}

static void test_parse_bool(void **state)
{
	static const char *const yes[] = { "yes", "true", "on", "1", "YES", "True" };
	static const char *const no[] = { "no", "false", "off", "0", "NO", "Off" };
	bool b;
	size_t i;

	for (i = 0; i < ARRAY_SIZE(yes); i++) {
		b = false;
		assert_int_equal(parse_bool(yes[i], &b), 0);
		assert_true(b);
	}
	for (i = 0; i < ARRAY_SIZE(no); i++) {
		b = true;
		assert_int_equal(parse_bool(no[i], &b), 0);
		assert_false(b);
	}
	assert_int_equal(parse_bool("", &b), -1);
	assert_int_equal(parse_bool("y", &b), -1);
	assert_int_equal(parse_bool("2", &b), -1);
	assert_int_equal(parse_bool("yes ", &b), -1);
}

static void test_strbuf(void **state)
{
	StrBuf sb;
	char *s;
	int i;

	sb_init(&sb);
	assert_null(sb.data);
	assert_int_equal(sb.len, 0);

	/* growth across many reallocations keeps content and terminator */
	for (i = 0; i < 10000; i++)
		sb_putc(&sb, (char)('a' + i % 26));
	assert_int_equal(sb.len, 10000);
	assert_true(sb.cap > sb.len);
	assert_int_equal(sb.data[10000], '\0');
	assert_int_equal(sb.data[9999], 'a' + 9999 % 26);
	assert_memory_equal(sb.data, "abcdefghijklmnopqrstuvwxyzab", 28);

	sb_reset(&sb);
	assert_int_equal(sb.len, 0);
	assert_string_equal(sb.data, "");

	sb_puts(&sb, "hello");
	sb_append(&sb, ", world!!", 7);
	sb_putc(&sb, '.');
	assert_string_equal(sb.data, "hello, world.");
	assert_int_equal(sb.len, 13);

	/* printf that fits, then one far larger than the spare capacity */
	sb_printf(&sb, " %d-%s", 42, "x");
	assert_string_equal(sb.data, "hello, world. 42-x");
	sb_reset(&sb);
	sb_printf(&sb, "%5000d|", 7);
	assert_int_equal(sb.len, 5001);
	assert_int_equal(sb.data[4999], '7');
	assert_int_equal(sb.data[5000], '|');
	assert_int_equal(sb.data[5001], '\0');

	/* integers without printf, the extremes included */
	sb_reset(&sb);
	sb_put_i64(&sb, 0);
	sb_putc(&sb, ' ');
	sb_put_i64(&sb, -7);
	sb_putc(&sb, ' ');
	sb_put_i64(&sb, 1234567890123LL);
	sb_putc(&sb, ' ');
	sb_put_i64(&sb, INT64_MAX);
	sb_putc(&sb, ' ');
	sb_put_i64(&sb, INT64_MIN);
	assert_string_equal(sb.data, "0 -7 1234567890123 9223372036854775807 -9223372036854775808");

	/* embedded NUL via sb_append is kept in len */
	sb_reset(&sb);
	sb_append(&sb, "a\0b", 3);
	assert_int_equal(sb.len, 3);
	assert_memory_equal(sb.data, "a\0b", 4);

	s = sb_steal(&sb);
	assert_null(sb.data);
	assert_int_equal(sb.len, 0);
	assert_int_equal(sb.cap, 0);
	assert_memory_equal(s, "a\0b", 3);
	free(s);

	/* steal from an empty buffer gives an empty string, not NULL */
	s = sb_steal(&sb);
	assert_non_null(s);
	assert_string_equal(s, "");
	free(s);

	sb_append(&sb, "", 0);
	assert_non_null(sb.data);
	assert_string_equal(sb.data, "");
	sb_free(&sb);
	assert_null(sb.data);
}

static void test_format_timestamp(void **state)
{
	char buf[32];

	format_timestamp(0, buf, sizeof(buf));
	assert_string_equal(buf, "1970-01-01T00:00:00.000000Z");
	/* 2026-11-23T01:02:03Z = 1795395723 */
	format_timestamp(1795395723LL * 1000000 + 123456, buf, sizeof(buf));
	assert_string_equal(buf, "2026-11-23T01:02:03.123456Z");
	format_timestamp(1795395723LL * 1000000 + 7, buf, sizeof(buf));
	assert_string_equal(buf, "2026-11-23T01:02:03.000007Z");
	/* before the epoch: fraction stays positive */
	format_timestamp(-1, buf, sizeof(buf));
	assert_string_equal(buf, "1969-12-31T23:59:59.999999Z");
}

static void test_clocks(void **state)
{
	int64_t a = now_monotonic_us(), b = now_monotonic_us();
	int64_t r = now_realtime_us();

	assert_true(a > 0);
	assert_true(b >= a);
	/* after 2020-01-01 and before 2200 */
	assert_true(r > 1577836800LL * 1000000);
	assert_true(r < 7258118400LL * 1000000);
}

static void test_str_trim(void **state)
{
	char a[] = "  \t hello world \r\n";
	char b[] = "   ";
	char c[] = "x";

	assert_string_equal(str_trim(a), "hello world");
	assert_string_equal(str_trim(b), "");
	assert_string_equal(str_trim(c), "x");
}

static void test_xstrndup(void **state)
{
	char *s = xstrndup("abcdef", 3);

	assert_string_equal(s, "abc");
	free(s);
	s = xstrndup("ab", 10);
	assert_string_equal(s, "ab");
	free(s);
}

static void test_json_string(void **state)
{
	StrBuf sb;

	sb_init(&sb);
	sb_put_json_string(&sb, "a\"b\\c\n\x01", 7);
	assert_string_equal(sb.data, "\"a\\\"b\\\\c\\u000a\\u0001\"");
	sb_free(&sb);
}

/* Run fn with stderr redirected into a temp file; return what was written. */
static char *capture_stderr(void (*fn)(void))
{
	char path[] = "/tmp/batchd_test_log_XXXXXX";
	int fd = mkstemp(path), saved = dup(STDERR_FILENO);
	char *buf = calloc(1, 4096);
	ssize_t n;

	assert_true(fd >= 0 && saved >= 0 && buf);
	unlink(path);
	dup2(fd, STDERR_FILENO);
	fn();
	dup2(saved, STDERR_FILENO);
	close(saved);
	lseek(fd, 0, SEEK_SET);
	n = read(fd, buf, 4095);
	assert_true(n >= 0);
	close(fd);
	return buf;
}

static void log_text_lines(void)
{
	log_set_format(LOGF_TEXT);
	log_set_level(LG_INFO);
	log_info("hello %d", 5);
	log_debug("hidden %d", 6);
	log_error("two\nlines");
}

static void log_json_lines(void)
{
	log_set_format(LOGF_JSON);
	log_set_level(LG_DEBUG);
	log_debug("quote \" and \\ and \x01 and \xff");
	log_set_format(LOGF_TEXT);
	log_set_level(LG_INFO);
}

static void test_log_text(void **state)
{
	char *out = capture_stderr(log_text_lines);
	char *second = strchr(out, '\n');

	/* "2026-11-23T01:02:03.123Z INFO hello 5", debug suppressed */
	assert_non_null(second);
	second++;
	assert_int_equal(out[4], '-');
	assert_int_equal(out[10], 'T');
	assert_int_equal(out[19], '.');
	assert_memory_equal(out + 23, "Z INFO hello 5\n", 15);
	assert_int_equal(second - out, 38);
	/* a newline in the message must not start a new record */
	assert_string_equal(second + 23, "Z ERROR two\\nlines\n");
	free(out);
}

static void test_log_json(void **state)
{
	char *out = capture_stderr(log_json_lines);

	assert_memory_equal(out, "{\"ts\":\"", 7);
	assert_int_equal(out[7 + 23], 'Z');
	assert_string_equal(out + 7 + 24,
			    "\",\"level\":\"debug\",\"msg\":"
			    "\"quote \\\" and \\\\ and \\u0001 and \xEF\xBF\xBD\"}\n");
	free(out);
}

static void log_secret_lines(void)
{
	LogCtx ctx = { "b-1", 42, "prov", "r1" };

	log_add_secret("Bearer s3cr3t-token");
	log_add_secret("s3cr3t-token");
	log_add_secret("abc");   /* too short to redact safely: ignored */
	log_set_format(LOGF_JSON);
	log_set_worker_id("w-9");
	log_ctx(LG_WARN, &ctx, "sent Bearer s3cr3t-token then s3cr3t-token, abc");
	log_set_format(LOGF_TEXT);
	log_ctx(LG_WARN, &ctx, "x s3cr3t-token");
	log_set_worker_id("");
	log_clear_secrets();
	log_info("s3cr3t-token");
}

static void test_log_secrets_and_context(void **state)
{
	char *out = capture_stderr(log_secret_lines);
	char *l2 = strchr(out, '\n') + 1;
	char *l3 = strchr(l2, '\n') + 1;

	assert_null(strstr(out, "s3cr3t") < l3 ? strstr(out, "s3cr3t") : NULL);
	assert_non_null(strstr(out, "\"msg\":\"sent [redacted] then [redacted], abc\","
			       "\"worker_id\":\"w-9\",\"batch_id\":\"b-1\",\"item_id\":42,"
			       "\"provider\":\"prov\",\"route\":\"r1\"}\n"));
	assert_non_null(strstr(l2, "WARN x [redacted] [ route=r1 provider=prov batch=b-1 item=42 ]\n"));
	/* cleared: shown again */
	assert_non_null(strstr(l3, "INFO s3cr3t-token\n"));
	free(out);
}

static int sink_prio;
static char sink_msg[256], sink_batch[64], sink_worker[64];

static void fake_sink(int priority, const char *msg, const LogCtx *ctx, const char *worker)
{
	sink_prio = priority;
	snprintf(sink_msg, sizeof(sink_msg), "%s", msg);
	snprintf(sink_batch, sizeof(sink_batch), "%s", ctx && ctx->batch_id ? ctx->batch_id : "");
	snprintf(sink_worker, sizeof(sink_worker), "%s", worker);
}

static void test_log_journal_sink(void **state)
{
	LogCtx ctx = { "b-2", 0, NULL, NULL };
	enum LogFormat f = LOGF_TEXT;

	assert_int_equal(log_parse_format("journal", &f), 0);
	assert_int_equal(f, LOGF_JOURNAL);
	log_set_journal_sink(fake_sink);
	log_set_worker_id("w-1");
	log_set_format(LOGF_JOURNAL);
	log_ctx(LG_ERROR, &ctx, "failed %d", 3);
	log_set_format(LOGF_TEXT);
	log_set_journal_sink(NULL);
	log_set_worker_id("");
	assert_int_equal(sink_prio, 3);
	assert_string_equal(sink_msg, "failed 3");
	assert_string_equal(sink_batch, "b-2");
	assert_string_equal(sink_worker, "w-1");
}

static void test_log_parse(void **state)
{
	enum LogLevel l = LG_ERROR;
	enum LogFormat f = LOGF_TEXT;

	assert_int_equal(log_parse_level("debug", &l), 0);
	assert_int_equal(l, LG_DEBUG);
	assert_int_equal(log_parse_level("warn", &l), 0);
	assert_int_equal(l, LG_WARN);
	assert_int_equal(log_parse_level("error", &l), 0);
	assert_int_equal(l, LG_ERROR);
	assert_int_equal(log_parse_level("info", &l), 0);
	assert_int_equal(l, LG_INFO);
	assert_int_equal(log_parse_level("verbose", &l), -1);
	assert_int_equal(log_parse_level("", &l), -1);
	assert_int_equal(log_parse_format("json", &f), 0);
	assert_int_equal(f, LOGF_JSON);
	assert_int_equal(log_parse_format("text", &f), 0);
	assert_int_equal(f, LOGF_TEXT);
	assert_int_equal(log_parse_format("xml", &f), -1);
}

static void test_utf8_valid(void **state)
{
	(void)state;
	assert_true(utf8_valid("", 0));
	assert_true(utf8_valid("plain", 5));
	assert_true(utf8_valid("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14));
	assert_true(utf8_valid("\xf4\x8f\xbf\xbf", 4));          /* U+10FFFF */
	assert_false(utf8_valid("a\0b", 3));                       /* NUL */
	assert_false(utf8_valid("\xc0\xaf", 2));                   /* overlong */
	assert_false(utf8_valid("\xe0\x80\xaf", 3));               /* overlong */
	assert_false(utf8_valid("\xed\xa0\x80", 3));               /* surrogate */
	assert_false(utf8_valid("\xf4\x90\x80\x80", 4));           /* > U+10FFFF */
	assert_false(utf8_valid("\xe2\x82", 2));                   /* truncated */
	assert_false(utf8_valid("\x80", 1));                       /* lone continuation */
	assert_false(utf8_valid("\xff", 1));
	/* the length counts, not a NUL terminator */
	assert_true(utf8_valid("\xe2\x82\xac", 3));
	assert_false(utf8_valid("\xe2\x82\xac", 2));
}

static void test_utf8_count(void **state)
{
	(void)state;
	assert_int_equal(utf8_count("", 0), 0);
	assert_int_equal(utf8_count("abc", 3), 3);
	assert_int_equal(utf8_count("caf\xc3\xa9", 5), 4);
	assert_int_equal(utf8_count("\xe2\x82\xac\xf0\x9f\x98\x80", 7), 2);
	assert_int_equal(utf8_count("abc", 2), 2);
}

static void test_str_in_list(void **state)
{
	static const char *const list[] = { "a", "bc", NULL };

	(void)state;
	assert_true(str_in_list("a", list));
	assert_true(str_in_list("bc", list));
	assert_false(str_in_list("b", list));
	assert_false(str_in_list("", list));
}

/* the message texts list the names in order */
static void assert_joined(const char *const *names, const char *text)
{
	StrBuf sb;

	sb_init(&sb);
	for (int i = 0; names[i]; i++)
		sb_printf(&sb, "%s%s", i ? ", " : "", names[i]);
	assert_string_equal(sb.data, text);
	sb_free(&sb);
}

static void test_status_names(void **state)
{
	(void)state;
	assert_joined(status_batch_names, STATUS_BATCH_NAMES_TEXT);
	assert_joined(status_item_names, STATUS_ITEM_NAMES_TEXT);
	assert_true(status_is_batch("completed_with_errors"));
	assert_false(status_is_batch("queued"));
	assert_true(status_is_item("queued"));
	assert_false(status_is_item("pending"));
	assert_false(status_is_item(NULL));
	assert_false(status_batch_terminal("pending"));
	assert_false(status_batch_terminal("processing"));
	assert_true(status_batch_terminal("completed"));
	assert_true(status_batch_terminal("completed_with_errors"));
	assert_true(status_batch_terminal("failed"));
	assert_true(status_batch_terminal("cancelled"));
	assert_false(status_batch_terminal("bogus"));
	assert_false(status_batch_terminal(NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_log_secrets_and_context),
		cmocka_unit_test(test_log_journal_sink),
		cmocka_unit_test(test_duration),
		cmocka_unit_test(test_size),
		cmocka_unit_test(test_rate),
		cmocka_unit_test(test_parse_int),
		cmocka_unit_test(test_parse_bool),
		cmocka_unit_test(test_strbuf),
		cmocka_unit_test(test_format_timestamp),
		cmocka_unit_test(test_clocks),
		cmocka_unit_test(test_str_trim),
		cmocka_unit_test(test_xstrndup),
		cmocka_unit_test(test_json_string),
		cmocka_unit_test(test_utf8_valid),
		cmocka_unit_test(test_utf8_count),
		cmocka_unit_test(test_str_in_list),
		cmocka_unit_test(test_status_names),
		cmocka_unit_test(test_log_text),
		cmocka_unit_test(test_log_json),
		cmocka_unit_test(test_log_parse),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
