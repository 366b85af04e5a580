/*
 * util.h - small helpers shared by every module: attributes, a growable
 * string buffer, UTF-8 checks, clocks and unit parsing (durations, sizes,
 * rates).
 */
#ifndef BATCHD_UTIL_H
#define BATCHD_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define _MUSTCHECK __attribute__((warn_unused_result))
#define _PRINTF(f, a) __attribute__((format(printf, f, a)))
#define _UNUSED __attribute__((unused))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define container_of(ptr, type, member) \
	((type *)((char *)(ptr) - offsetof(type, member)))

/* Growable byte buffer, always NUL-terminated after the first append. */
typedef struct StrBuf {
	char *data;
	size_t len;
	size_t cap;
} StrBuf;

void sb_init(StrBuf *sb);
void sb_free(StrBuf *sb);
void sb_reset(StrBuf *sb);                     /* len = 0, keeps memory */
void sb_reserve(StrBuf *sb, size_t extra);
void sb_append(StrBuf *sb, const char *s, size_t len);
void sb_puts(StrBuf *sb, const char *s);
void sb_putc(StrBuf *sb, char c);
void sb_printf(StrBuf *sb, const char *fmt, ...) _PRINTF(2, 3);
void sb_put_i64(StrBuf *sb, int64_t v);          /* decimal, no printf */
/* Append v as a quoted element of a PostgreSQL array literal that sb holds
 * from its opening '{' (a comma first unless it is the first element). */
void sb_put_array_text(StrBuf *sb, const char *v);
char *sb_steal(StrBuf *sb);                    /* caller frees; sb reset */
/* Append s as a quoted JSON string: invalid UTF-8 and NUL become U+FFFD,
 * control characters \u00XX.  Lives here rather than in json.c because
 * log.c needs it and must link without yajl. */
void sb_put_json_string(StrBuf *sb, const char *s, size_t len);

/* Length of the well-formed UTF-8 sequence at s (1..4; Unicode table 3-7:
 * no overlong forms, no surrogates, nothing past U+10FFFF), or 0 when
 * ill-formed; then *bad is the length of the maximal invalid subpart. */
size_t utf8_seq(const unsigned char *s, size_t avail, size_t *bad);
/* Well-formed UTF-8 (every sequence passes utf8_seq) without a NUL byte:
 * what PostgreSQL's text and jsonb accept. */
bool utf8_valid(const char *s, size_t len);
/* Number of code points in s[0..len), counted as the bytes that are not
 * continuation bytes (10xxxxxx); exact for valid UTF-8 (a length limit in
 * characters, a column width in batchctl's tables). */
size_t utf8_count(const char *s, size_t len);

/* s equals one of the strings of the NULL-terminated list. */
bool str_in_list(const char *s, const char *const *list);

/* Allocation that aborts on out-of-memory (a daemon cannot go on without). */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t m);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* Clocks. */
int64_t now_monotonic_us(void);
int64_t now_realtime_us(void);

/*
 * A rate of events per second: a moving average over windows of
 * RATE_WINDOW_US, halved in weight each window; a gap of four windows or
 * more with no event replaces it (an idle worker's rate decays without an
 * event to notice it).
 */
#define RATE_WINDOW_US 100000
typedef struct RateMeter {
	int64_t t0;      /* start of the current window (0: not started) */
	uint64_t n;      /* events counted */
	uint64_t n0;     /* n at t0 */
	double rate;
} RateMeter;
void rate_meter_add(RateMeter *m, uint64_t k, int64_t now_us);
double rate_meter_rate(RateMeter *m, int64_t now_us);
/* Format a realtime timestamp (microseconds since epoch) as RFC 3339 UTC
 * with microseconds, e.g. 2026-11-23T01:02:03.123456Z. buf >= 32 bytes. */
void format_timestamp(int64_t us, char *buf, size_t len);

/*
 * Unit parsing.  Each returns 0 on success, -1 on a malformed value.
 *  durations: "250ms", "5s", "2m", "1h", "30d"; a bare number is seconds.
 *  sizes:     "512", "512B", "512KB", "1MB", "64MB", "1GB" (powers of 1024).
 *  rates:     "20/s", "0.5/s", "100/m", "1000/h" -> requests per second.
 */
int parse_duration_ms(const char *s, int64_t *out_ms) _MUSTCHECK;
int parse_size(const char *s, int64_t *out_bytes) _MUSTCHECK;
int parse_rate(const char *s, double *out_per_sec) _MUSTCHECK;
int parse_int(const char *s, int64_t min, int64_t max, int64_t *out) _MUSTCHECK;
int parse_bool(const char *s, bool *out) _MUSTCHECK;

/* Trim leading and trailing whitespace in place; returns s. */
char *str_trim(char *s);

#endif /* BATCHD_UTIL_H */
