/*
 * util.c - string buffer, allocation, clocks and unit parsing.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "batchd/util.h"

/* ------------------------------------------------------------ allocation */

/*
 * Out of memory: write a fixed message and abort.  Deliberately not fatal():
 * logging allocates, which would recurse.
 */
static void oom(void) __attribute__((noreturn));
static void oom(void)
{
	static const char msg[] = "batchd: out of memory\n";
	ssize_t r = write(STDERR_FILENO, msg, sizeof(msg) - 1);

	(void)r;
	abort();
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		oom();
	return p;
}

void *xcalloc(size_t n, size_t m)
{
	void *p = calloc(n ? n : 1, m ? m : 1);

	if (!p)
		oom();
	return p;
}

void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);

	if (!q)
		oom();
	return q;
}

char *xstrdup(const char *s)
{
	return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
	size_t len = strnlen(s, n);
	char *p = xmalloc(len + 1);

	memcpy(p, s, len);
	p[len] = '\0';
	return p;
}

/* ------------------------------------------------------------ StrBuf */

void sb_init(StrBuf *sb)
{
	sb->data = NULL;
	sb->len = 0;
	sb->cap = 0;
}

void sb_free(StrBuf *sb)
{
	free(sb->data);
	sb_init(sb);
}

void sb_reset(StrBuf *sb)
{
	sb->len = 0;
	if (sb->data)
		sb->data[0] = '\0';
}

void sb_reserve(StrBuf *sb, size_t extra)
{
	size_t need, cap;

	/* +1 for the terminating NUL */
	if (extra > SIZE_MAX - sb->len - 1)
		oom();
	need = sb->len + extra + 1;
	if (need <= sb->cap)
		return;
	cap = sb->cap ? sb->cap : 64;
	while (cap < need)
		cap = cap > SIZE_MAX / 2 ? need : cap * 2;
	sb->data = xrealloc(sb->data, cap);
	sb->cap = cap;
}

void sb_append(StrBuf *sb, const char *s, size_t len)
{
	sb_reserve(sb, len);
	if (len)
		memcpy(sb->data + sb->len, s, len);
	sb->len += len;
	sb->data[sb->len] = '\0';
}

void sb_puts(StrBuf *sb, const char *s)
{
	sb_append(sb, s, strlen(s));
}

void sb_putc(StrBuf *sb, char c)
{
	sb_reserve(sb, 1);
	sb->data[sb->len++] = c;
	sb->data[sb->len] = '\0';
}

void sb_put_i64(StrBuf *sb, int64_t v)
{
	char buf[24], *p = buf + sizeof(buf);
	/* through unsigned: INT64_MIN has no positive counterpart */
	uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;

	do {
		*--p = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		*--p = '-';
	sb_append(sb, p, (size_t)(buf + sizeof(buf) - p));
}

void sb_put_array_text(StrBuf *sb, const char *v)
{
	if (sb->len > 1)
		sb_putc(sb, ',');
	sb_putc(sb, '"');
	for (const char *p = v; *p; p++) {
		if (*p == '"' || *p == '\\')
			sb_putc(sb, '\\');
		sb_putc(sb, *p);
	}
	sb_putc(sb, '"');
}

void sb_printf(StrBuf *sb, const char *fmt, ...)
{
	va_list ap;
	int n;

	/* Try in the space we have; if short, grow to the exact size once. */
	sb_reserve(sb, 64);
	va_start(ap, fmt);
	n = vsnprintf(sb->data + sb->len, sb->cap - sb->len, fmt, ap);
	va_end(ap);
	if (n < 0) {
		sb->data[sb->len] = '\0';
		return;
	}
	if ((size_t)n >= sb->cap - sb->len) {
		sb_reserve(sb, (size_t)n);
		va_start(ap, fmt);
		n = vsnprintf(sb->data + sb->len, sb->cap - sb->len, fmt, ap);
		va_end(ap);
	}
	sb->len += (size_t)n;
}

char *sb_steal(StrBuf *sb)
{
	char *p = sb->data ? sb->data : xstrdup("");

	sb_init(sb);
	return p;
}

/*
 * Length of the valid UTF-8 sequence at s (1..4), or 0 when invalid; then
 * *bad is the length of the maximal invalid subpart to replace with one
 * U+FFFD (Unicode "best practice", as WHATWG decoders do).
 */
size_t utf8_seq(const unsigned char *s, size_t avail, size_t *bad)
{
	unsigned char c = s[0], lo = 0x80, hi = 0xBF;
	size_t n, i;

	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF) {
		n = 2;
	} else if (c >= 0xE0 && c <= 0xEF) {
		n = 3;
		if (c == 0xE0)
			lo = 0xA0;      /* overlong */
		else if (c == 0xED)
			hi = 0x9F;      /* UTF-16 surrogates */
	} else if (c >= 0xF0 && c <= 0xF4) {
		n = 4;
		if (c == 0xF0)
			lo = 0x90;      /* overlong */
		else if (c == 0xF4)
			hi = 0x8F;      /* above U+10FFFF */
	} else {
		*bad = 1;
		return 0;
	}
	for (i = 1; i < n; i++) {
		unsigned char lo_i = i == 1 ? lo : 0x80;
		unsigned char hi_i = i == 1 ? hi : 0xBF;

		if (i >= avail || s[i] < lo_i || s[i] > hi_i) {
			*bad = i;
			return 0;
		}
	}
	return n;
}

bool utf8_valid(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, n, bad;

	while (i < len) {
		if (p[i] == 0 || (n = utf8_seq(p + i, len - i, &bad)) == 0)
			return false;
		i += n;
	}
	return true;
}

size_t utf8_count(const char *s, size_t len)
{
	size_t n = 0, i;

	for (i = 0; i < len; i++)
		if (((unsigned char)s[i] & 0xC0) != 0x80)
			n++;
	return n;
}

bool str_in_list(const char *s, const char *const *list)
{
	for (; *list; list++)
		if (strcmp(s, *list) == 0)
			return true;
	return false;
}

void sb_put_json_string(StrBuf *sb, const char *str, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0, run = 0;

	sb_reserve(sb, len + 2);
	sb_putc(sb, '"');
	while (i < len) {
		unsigned char c = s[i];
		size_t n, bad = 0;

		/* Plain printable ASCII is copied in runs. */
		if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
			run++;
			i++;
			continue;
		}
		if (run) {
			sb_append(sb, str + i - run, run);
			run = 0;
		}
		if (c == '"' || c == '\\') {
			char esc[2] = { '\\', (char)c };

			sb_append(sb, esc, 2);
			i++;
		} else if (c == 0) {
			/* PostgreSQL jsonb cannot store \u0000 */
			sb_append(sb, "\xEF\xBF\xBD", 3);
			i++;
		} else if (c < 0x20) {
			char esc[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };

			sb_append(sb, esc, 6);
			i++;
		} else if ((n = utf8_seq(s + i, len - i, &bad)) > 0) {
			sb_append(sb, str + i, n);
			i += n;
		} else {
			sb_append(sb, "\xEF\xBF\xBD", 3);
			i += bad;
		}
	}
	if (run)
		sb_append(sb, str + i - run, run);
	sb_putc(sb, '"');
}

/* ------------------------------------------------------------ clocks */

int64_t now_monotonic_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void rate_meter_roll(RateMeter *m, int64_t now)
{
	int64_t dt;
	double r;

	if (m->t0 == 0) {
		m->t0 = now;
		m->n0 = m->n;
		return;
	}
	dt = now - m->t0;
	if (dt < RATE_WINDOW_US)
		return;
	r = (double)(m->n - m->n0) * 1e6 / (double)dt;
	m->rate = dt >= 4 * RATE_WINDOW_US ? r : 0.5 * m->rate + 0.5 * r;
	m->t0 = now;
	m->n0 = m->n;
}

void rate_meter_add(RateMeter *m, uint64_t k, int64_t now_us)
{
	rate_meter_roll(m, now_us);
	m->n += k;
}

double rate_meter_rate(RateMeter *m, int64_t now_us)
{
	rate_meter_roll(m, now_us);
	return m->rate;
}

int64_t now_realtime_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void format_timestamp(int64_t us, char *buf, size_t len)
{
	/* Floor division so that times before 1970 still get 0..999999 us. */
	int64_t sec = us / 1000000, frac = us % 1000000;
	time_t t;
	struct tm tm;
	char date[24];

	if (frac < 0) {
		frac += 1000000;
		sec -= 1;
	}
	/* the date part changes once a second: format it once a second (this
	 * runs twice per item on the hot path; the processes are single-threaded) */
	static int64_t cached_sec = INT64_MIN;
	static char cached_date[24];
	if (sec != cached_sec) {
		t = (time_t)sec;
		if (!gmtime_r(&t, &tm) ||
		    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm) == 0) {
			snprintf(buf, len, "invalid-time");
			return;
		}
		memcpy(cached_date, date, sizeof(cached_date));
		cached_sec = sec;
	}
	if (len >= 28) {
		/* "YYYY-MM-DDTHH:MM:SS" + ".ffffffZ" without snprintf */
		size_t dl = strlen(cached_date);
		int f = (int)frac;
		memcpy(buf, cached_date, dl);
		buf[dl] = '.';
		for (int i = 6; i >= 1; i--) {
			buf[dl + (size_t)i] = (char)('0' + f % 10);
			f /= 10;
		}
		buf[dl + 7] = 'Z';
		buf[dl + 8] = '\0';
		return;
	}
	snprintf(buf, len, "%s.%06dZ", cached_date, (int)frac);
}

/* ------------------------------------------------------------ parsing */

/*
 * Parse the leading unsigned decimal integer of s (no sign, no spaces).
 * Returns the number of digits consumed, 0 when none or on overflow.
 */
static size_t parse_digits(const char *s, int64_t *out)
{
	int64_t v = 0;
	size_t i;

	for (i = 0; s[i] >= '0' && s[i] <= '9'; i++) {
		int d = s[i] - '0';

		if (v > (INT64_MAX - d) / 10)
			return 0;
		v = v * 10 + d;
	}
	*out = v;
	return i;
}

typedef struct UnitMult {
	const char *unit;
	int64_t mult;
} UnitMult;

/* digits followed by one of the units (exactly); "" as a unit is allowed */
static int parse_with_units(const char *s, const UnitMult *units, size_t nunits,
			    bool nocase, int64_t *out)
{
	int64_t v;
	size_t n, i;

	if (!s || (n = parse_digits(s, &v)) == 0)
		return -1;
	for (i = 0; i < nunits; i++) {
		const char *u = s + n;
		bool eq = nocase ? strcasecmp(u, units[i].unit) == 0 : strcmp(u, units[i].unit) == 0;

		if (!eq)
			continue;
		if (v > INT64_MAX / units[i].mult)
			return -1;
		*out = v * units[i].mult;
		return 0;
	}
	return -1;
}

int parse_duration_ms(const char *s, int64_t *out_ms)
{
	static const UnitMult units[] = {
		{ "", 1000 },
		{ "ms", 1 },
		{ "s", 1000 },
		{ "m", 60 * 1000 },
		{ "h", 3600 * 1000 },
		{ "d", 86400 * 1000 },
	};

	return parse_with_units(s, units, ARRAY_SIZE(units), false, out_ms);
}

int parse_size(const char *s, int64_t *out_bytes)
{
	static const UnitMult units[] = {
		{ "", 1 },
		{ "B", 1 },
		{ "KB", 1024 },
		{ "MB", 1024 * 1024 },
		{ "GB", 1024 * 1024 * 1024 },
	};

	return parse_with_units(s, units, ARRAY_SIZE(units), true, out_bytes);
}

int parse_rate(const char *s, double *out_per_sec)
{
	double v = 0, scale = 1, per;
	size_t i = 0, digits = 0;

	/* Parsed by hand: strtod would follow LC_NUMERIC and accept "inf". */
	if (!s)
		return -1;
	for (; s[i] >= '0' && s[i] <= '9'; i++, digits++)
		v = v * 10 + (s[i] - '0');
	if (digits == 0)
		return -1;
	if (s[i] == '.') {
		size_t frac = 0;

		for (i++; s[i] >= '0' && s[i] <= '9'; i++, frac++) {
			scale /= 10;
			v += (s[i] - '0') * scale;
		}
		if (frac == 0)
			return -1;
		digits += frac;
	}
	if (digits > 15 || s[i] != '/')
		return -1;
	if (strcmp(s + i + 1, "s") == 0)
		per = 1;
	else if (strcmp(s + i + 1, "m") == 0)
		per = 60;
	else if (strcmp(s + i + 1, "h") == 0)
		per = 3600;
	else
		return -1;
	if (v <= 0)
		return -1;
	*out_per_sec = v / per;
	return 0;
}

int parse_int(const char *s, int64_t min, int64_t max, int64_t *out)
{
	char *end;
	long long v;

	/* strtoll would skip leading whitespace; we do not. */
	if (!s || !*s || !(*s == '-' || *s == '+' || (*s >= '0' && *s <= '9')))
		return -1;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0' || end == s)
		return -1;
	if (v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

int parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = { "1", "on", "true", "yes" };
	static const char *const no[] = { "0", "false", "no", "off" };
	size_t i;

	if (!s)
		return -1;
	for (i = 0; i < ARRAY_SIZE(yes); i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*out = true;
			return 0;
		}
	}
	for (i = 0; i < ARRAY_SIZE(no); i++) {
		if (strcasecmp(s, no[i]) == 0) {
			*out = false;
			return 0;
		}
	}
	return -1;
}

char *str_trim(char *s)
{
	size_t len = strlen(s), start = 0;

	while (len > 0 && (s[len - 1] == ' ' || (s[len - 1] >= '\t' && s[len - 1] <= '\r')))
		len--;
	while (start < len && (s[start] == ' ' || (s[start] >= '\t' && s[start] <= '\r')))
		start++;
	if (start)
		memmove(s, s + start, len - start);
	s[len - start] = '\0';
	return s;
}
