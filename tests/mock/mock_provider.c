/*
 * mock_provider — a scriptable fake "provider" HTTP API for batchd's
 * integration tests, demo and benchmarks.
 *
 * One libevent 2 event loop, one evhttp server, no threads, no blocking
 * calls after start-up.  Delays are evtimers.  Depends on libevent only
 * (and libm); the JSON it needs (control config, validity check of request
 * bodies) is handled by the small parser below.
 *
 *   mock_provider [--host 127.0.0.1] [--port 0] [--config JSON]
 *
 * After binding it prints exactly one line "PORT=<n>" on stdout.
 * SIGTERM / SIGINT: clean exit with status 0.  See tests/mock/README.md.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/util.h>

#define RING_CAP        1000000u  /* request log entries kept */
#define REQUESTS_MAX    10000u    /* entries per /_mock/requests answer */
#define LOG_STR_MAX     8192u     /* longest path / header value logged */
#define LOG_STR_NONE    0xFFFFu   /* "header absent" marker */
#define MAX_BODY        (64u << 20)
#define MAX_HEADERS     (64u << 10)
#define JSON_MAX_DEPTH  512
#define NSTATUS         600

/* ------------------------------------------------------------------ util */

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p) {
		fputs("mock_provider: out of memory\n", stderr);
		abort();
	}
	return p;
}

static void *xcalloc(size_t a, size_t b)
{
	void *p = calloc(a ? a : 1, b ? b : 1);
	if (!p) {
		fputs("mock_provider: out of memory\n", stderr);
		abort();
	}
	return p;
}

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p) {
		fputs("mock_provider: out of memory\n", stderr);
		abort();
	}
	return p;
}

static char *xstrndup(const char *s, size_t n)
{
	char *d = xmalloc(n + 1);
	memcpy(d, s, n);
	d[n] = '\0';
	return d;
}

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng_next(void)
{
	/* xorshift64* */
	uint64_t x = rng_state;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	rng_state = x;
	return x * 0x2545F4914F6CDD1Dull;
}

static double rng_double(void)
{
	return (double)(rng_next() >> 11) * (1.0 / 9007199254740992.0);
}

static uint64_t hash_bytes(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a, then fmix64 */
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 0x100000001b3ull;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 33;
	return h;
}

/* Length of the valid UTF-8 sequence at p, 0 if invalid. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
	unsigned c = p[0];
	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF)
		return (n >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
	if (c >= 0xE0 && c <= 0xEF) {
		if (n < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80)
			return 0;
		if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0))
			return 0;
		return 3;
	}
	if (c >= 0xF0 && c <= 0xF4) {
		if (n < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 ||
		    (p[3] & 0xC0) != 0x80)
			return 0;
		if ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90))
			return 0;
		return 4;
	}
	return 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decode %XX escapes (no '+' translation).  out needs n+1 bytes. */
static size_t pct_decode(const char *s, size_t n, char *out)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 &&
		    hexval(s[i + 2]) >= 0) {
			out[o++] = (char)(hexval(s[i + 1]) << 4 | hexval(s[i + 2]));
			i += 2;
		} else {
			out[o++] = s[i];
		}
	}
	out[o] = '\0';
	return o;
}

/* ------------------------------------------------------- string builder */

typedef struct {
	char *b;
	size_t len, cap;
	char inl[1024];
} sb_t;

static void sb_init(sb_t *s)
{
	s->b = s->inl;
	s->len = 0;
	s->cap = sizeof s->inl;
}

static void sb_free(sb_t *s)
{
	if (s->b != s->inl)
		free(s->b);
	sb_init(s);
}

static void sb_reserve(sb_t *s, size_t need)
{
	if (s->len + need <= s->cap)
		return;
	size_t nc = s->cap * 2;
	while (nc < s->len + need)
		nc *= 2;
	if (s->b == s->inl) {
		char *n = xmalloc(nc);
		memcpy(n, s->inl, s->len);
		s->b = n;
	} else {
		s->b = xrealloc(s->b, nc);
	}
	s->cap = nc;
}

static void sb_put(sb_t *s, const void *p, size_t n)
{
	sb_reserve(s, n);
	memcpy(s->b + s->len, p, n);
	s->len += n;
}

static void sb_puts(sb_t *s, const char *p)
{
	sb_put(s, p, strlen(p));
}

static void sb_putc(sb_t *s, char c)
{
	sb_reserve(s, 1);
	s->b[s->len++] = c;
}

static void sb_u64(sb_t *s, uint64_t v)
{
	char tmp[24];
	int i = (int)sizeof tmp;
	do {
		tmp[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	sb_put(s, tmp + i, sizeof tmp - (size_t)i);
}

static void sb_i64(sb_t *s, int64_t v)
{
	if (v < 0) {
		sb_putc(s, '-');
		sb_u64(s, (uint64_t)0 - (uint64_t)v);
	} else {
		sb_u64(s, (uint64_t)v);
	}
}

/* unix time in microseconds as a float with 6 decimals */
static void sb_time(sb_t *s, int64_t us)
{
	char tmp[40];
	int n = snprintf(tmp, sizeof tmp, "%" PRId64 ".%06" PRId64,
	    us / 1000000, us % 1000000);
	sb_put(s, tmp, (size_t)n);
}

static void sb_double(sb_t *s, double d)
{
	char tmp[40];
	if (!isfinite(d))
		d = 0;
	for (int prec = 1; prec <= 17; prec++) {
		snprintf(tmp, sizeof tmp, "%.*g", prec, d);
		if (strtod(tmp, NULL) == d)
			break;
	}
	sb_puts(s, tmp);
}

/* JSON string literal; invalid UTF-8 bytes are emitted as \u00XX */
static void sb_jstr(sb_t *s, const char *str, size_t n)
{
	static const char hexd[] = "0123456789abcdef";
	const unsigned char *p = (const unsigned char *)str;
	size_t i = 0, run = 0;

	sb_reserve(s, n + 2);
	sb_putc(s, '"');
	while (i < n) {
		unsigned c = p[i];
		size_t l = 1;
		if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
			i++;
			run++;
			continue;
		}
		if (c >= 0x80 && (l = utf8_len(p + i, n - i)) != 0) {
			i += l;
			run += l;
			continue;
		}
		if (run)
			sb_put(s, p + i - run, run);
		run = 0;
		switch (c) {
		case '"': sb_put(s, "\\\"", 2); break;
		case '\\': sb_put(s, "\\\\", 2); break;
		case '\n': sb_put(s, "\\n", 2); break;
		case '\r': sb_put(s, "\\r", 2); break;
		case '\t': sb_put(s, "\\t", 2); break;
		default: {
			char e[6] = { '\\', 'u', '0', '0', hexd[c >> 4], hexd[c & 15] };
			sb_put(s, e, 6);
		}
		}
		i++;
	}
	if (run)
		sb_put(s, p + i - run, run);
	sb_putc(s, '"');
}

static void free_cleanup(const void *data, size_t len, void *arg)
{
	(void)len;
	(void)arg;
	free((void *)data);
}

/* Move the builder's contents into an evbuffer (zero copy when on heap). */
static void sb_to_evbuffer(sb_t *s, struct evbuffer *out)
{
	if (s->b == s->inl) {
		evbuffer_add(out, s->b, s->len);
	} else if (evbuffer_add_reference(out, s->b, s->len, free_cleanup,
	    NULL) != 0) {
		evbuffer_add(out, s->b, s->len);
		free(s->b);
	}
	sb_init(s);
}

/* ------------------------------------------------------------ JSON */

enum { JT_NULL, JT_BOOL, JT_NUM, JT_STR, JT_ARR, JT_OBJ };

typedef struct jv jv;
struct jv {
	int t;
	bool b;
	bool integral;     /* number literal without fraction/exponent */
	double num;
	char *s;           /* JT_STR, NUL terminated */
	size_t slen;
	size_t n;          /* JT_ARR / JT_OBJ: number of items */
	char **keys;       /* JT_OBJ */
	size_t *klens;
	jv **vals;
};

typedef struct {
	const char *p, *end;
	int depth;
	const char *err;
} jparser;

static void jv_free(jv *v)
{
	if (!v)
		return;
	free(v->s);
	for (size_t i = 0; i < v->n; i++) {
		if (v->keys)
			free(v->keys[i]);
		jv_free(v->vals[i]);
	}
	free(v->keys);
	free(v->klens);
	free(v->vals);
	free(v);
}

static void jp_ws(jparser *jp)
{
	while (jp->p < jp->end && (*jp->p == ' ' || *jp->p == '\t' ||
	    *jp->p == '\n' || *jp->p == '\r'))
		jp->p++;
}

static bool jp_hex4(jparser *jp, const char *p, unsigned *out)
{
	unsigned v = 0;
	if (jp->end - p < 4)
		return false;
	for (int i = 0; i < 4; i++) {
		int h = hexval(p[i]);
		if (h < 0)
			return false;
		v = v << 4 | (unsigned)h;
	}
	*out = v;
	return true;
}

static size_t utf8_put(char *o, unsigned cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xC0 | cp >> 6);
		o[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xE0 | cp >> 12);
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		o[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	o[0] = (char)(0xF0 | cp >> 18);
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	o[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* jp->p at the opening quote.  out == NULL: validate only. */
static bool jp_string(jparser *jp, char **out, size_t *outlen)
{
	const char *p = jp->p + 1, *start = p;
	char *o = NULL;
	size_t ol = 0;

	/* find the end first: decoded length <= raw length */
	if (out) {
		const char *q = p;
		while (q < jp->end && *q != '"') {
			if (*q == '\\')
				q++;
			q++;
		}
		o = xmalloc((size_t)(q - start) + 1);
	}
	while (p < jp->end) {
		unsigned char c = (unsigned char)*p;
		if (c == '"') {
			jp->p = p + 1;
			if (out) {
				o[ol] = '\0';
				*out = o;
				*outlen = ol;
			}
			return true;
		}
		if (c < 0x20) {
			jp->err = "control character in string";
			goto fail;
		}
		if (c == '\\') {
			if (p + 1 >= jp->end)
				break;
			char e = p[1];
			char r;
			p += 2;
			switch (e) {
			case '"': r = '"'; break;
			case '\\': r = '\\'; break;
			case '/': r = '/'; break;
			case 'b': r = '\b'; break;
			case 'f': r = '\f'; break;
			case 'n': r = '\n'; break;
			case 'r': r = '\r'; break;
			case 't': r = '\t'; break;
			case 'u': {
				unsigned cp, lo;
				if (!jp_hex4(jp, p, &cp)) {
					jp->err = "bad \\u escape";
					goto fail;
				}
				p += 4;
				if (cp >= 0xD800 && cp <= 0xDBFF && jp->end - p >= 6 &&
				    p[0] == '\\' && p[1] == 'u' && jp_hex4(jp, p + 2, &lo) &&
				    lo >= 0xDC00 && lo <= 0xDFFF) {
					cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
					p += 6;
				} else if (cp >= 0xD800 && cp <= 0xDFFF) {
					cp = 0xFFFD; /* lone surrogate */
				}
				if (o)
					ol += utf8_put(o + ol, cp);
				continue;
			}
			default:
				jp->err = "bad escape";
				goto fail;
			}
			if (o)
				o[ol++] = r;
			continue;
		}
		size_t l = c < 0x80 ? 1 : utf8_len((const unsigned char *)p,
		    (size_t)(jp->end - p));
		if (l == 0) {
			jp->err = "invalid UTF-8";
			goto fail;
		}
		if (o) {
			memcpy(o + ol, p, l);
			ol += l;
		}
		p += l;
	}
	jp->err = "unterminated string";
fail:
	free(o);
	return false;
}

static bool isdig(char c)
{
	return c >= '0' && c <= '9';
}

static bool jp_number(jparser *jp, jv *out)
{
	const char *p = jp->p, *start = p;
	bool integral = true;

	if (p < jp->end && *p == '-')
		p++;
	if (p >= jp->end || !isdig(*p))
		goto bad;
	if (*p == '0')
		p++;
	else
		while (p < jp->end && isdig(*p))
			p++;
	if (p < jp->end && *p == '.') {
		integral = false;
		p++;
		if (p >= jp->end || !isdig(*p))
			goto bad;
		while (p < jp->end && isdig(*p))
			p++;
	}
	if (p < jp->end && (*p == 'e' || *p == 'E')) {
		integral = false;
		p++;
		if (p < jp->end && (*p == '+' || *p == '-'))
			p++;
		if (p >= jp->end || !isdig(*p))
			goto bad;
		while (p < jp->end && isdig(*p))
			p++;
	}
	if (out) {
		char tmp[64];
		size_t n = (size_t)(p - start);
		char *buf = n < sizeof tmp ? tmp : xmalloc(n + 1);
		memcpy(buf, start, n);
		buf[n] = '\0';
		out->num = strtod(buf, NULL);
		out->integral = integral;
		if (buf != tmp)
			free(buf);
	}
	jp->p = p;
	return true;
bad:
	jp->err = "bad number";
	return false;
}

static bool jp_lit(jparser *jp, const char *lit)
{
	size_t n = strlen(lit);
	if ((size_t)(jp->end - jp->p) < n || memcmp(jp->p, lit, n) != 0) {
		jp->err = "unexpected token";
		return false;
	}
	jp->p += n;
	return true;
}

static bool jp_value(jparser *jp, jv **out);

static void jv_push(jv *v, size_t *cap, char *key, size_t klen, jv *val)
{
	if (v->n == *cap) {
		*cap = *cap ? *cap * 2 : 4;
		v->vals = xrealloc(v->vals, *cap * sizeof *v->vals);
		if (v->t == JT_OBJ) {
			v->keys = xrealloc(v->keys, *cap * sizeof *v->keys);
			v->klens = xrealloc(v->klens, *cap * sizeof *v->klens);
		}
	}
	if (v->t == JT_OBJ) {
		v->keys[v->n] = key;
		v->klens[v->n] = klen;
	}
	v->vals[v->n++] = val;
}

static bool jp_container(jparser *jp, jv *v, bool obj)
{
	char close = obj ? '}' : ']';
	size_t cap = 0;

	if (++jp->depth > JSON_MAX_DEPTH) {
		jp->err = "nesting too deep";
		return false;
	}
	jp->p++;
	jp_ws(jp);
	if (jp->p < jp->end && *jp->p == close) {
		jp->p++;
		jp->depth--;
		return true;
	}
	for (;;) {
		char *key = NULL;
		size_t klen = 0;
		jv *item = NULL;

		jp_ws(jp);
		if (obj) {
			if (jp->p >= jp->end || *jp->p != '"') {
				jp->err = "expected object key";
				return false;
			}
			if (!jp_string(jp, v ? &key : NULL, &klen))
				return false;
			jp_ws(jp);
			if (jp->p >= jp->end || *jp->p != ':') {
				free(key);
				jp->err = "expected ':'";
				return false;
			}
			jp->p++;
		}
		if (!jp_value(jp, v ? &item : NULL)) {
			free(key);
			return false;
		}
		if (v)
			jv_push(v, &cap, key, klen, item);
		jp_ws(jp);
		if (jp->p < jp->end && *jp->p == ',') {
			jp->p++;
			continue;
		}
		if (jp->p < jp->end && *jp->p == close) {
			jp->p++;
			jp->depth--;
			return true;
		}
		jp->err = obj ? "expected ',' or '}'" : "expected ',' or ']'";
		return false;
	}
}

static bool jp_value(jparser *jp, jv **out)
{
	jv *v = NULL;
	bool ok;

	jp_ws(jp);
	if (jp->p >= jp->end) {
		jp->err = "unexpected end of input";
		return false;
	}
	if (out)
		v = xcalloc(1, sizeof *v);
	switch (*jp->p) {
	case '{':
	case '[':
		if (v)
			v->t = *jp->p == '{' ? JT_OBJ : JT_ARR;
		ok = jp_container(jp, v, *jp->p == '{');
		break;
	case '"':
		if (v)
			v->t = JT_STR;
		ok = jp_string(jp, v ? &v->s : NULL, v ? &v->slen : NULL);
		break;
	case 't':
	case 'f':
		if (v) {
			v->t = JT_BOOL;
			v->b = *jp->p == 't';
		}
		ok = jp_lit(jp, *jp->p == 't' ? "true" : "false");
		break;
	case 'n':
		ok = jp_lit(jp, "null");
		break;
	default:
		if (v)
			v->t = JT_NUM;
		ok = jp_number(jp, v);
	}
	if (!ok) {
		jv_free(v);
		return false;
	}
	if (out)
		*out = v;
	return true;
}

/* Parse (out != NULL) or just validate (out == NULL) a complete document. */
static bool json_parse(const char *s, size_t n, jv **out, const char **err)
{
	jparser jp = { s, s + n, 0, NULL };
	jv *v = NULL;

	if (!jp_value(&jp, out ? &v : NULL))
		goto fail;
	jp_ws(&jp);
	if (jp.p != jp.end) {
		jv_free(v);
		jp.err = "trailing data";
		goto fail;
	}
	if (out)
		*out = v;
	return true;
fail:
	if (err)
		*err = jp.err ? jp.err : "invalid JSON";
	return false;
}

/* ------------------------------------------------------------- gzip */

static uint32_t crc32_ieee(const unsigned char *p, size_t n)
{
	uint32_t c = 0xFFFFFFFFu;
	while (n--) {
		c ^= *p++;
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
	}
	return ~c;
}

static void put_le32(sb_t *s, uint32_t v)
{
	unsigned char b[4] = { v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF, v >> 24 };
	sb_put(s, b, 4);
}

/*
 * Replace s's contents by a gzip member (RFC 1952) holding them in stored
 * deflate blocks (RFC 1951, BTYPE 00): a valid stream any inflater reads,
 * made without zlib.
 */
static void gzip_stored(sb_t *s)
{
	static const unsigned char hdr[10] = { 0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255 };
	sb_t g;
	size_t off = 0;

	sb_init(&g);
	sb_put(&g, hdr, sizeof hdr);
	do {
		size_t n = s->len - off > 65535 ? 65535 : s->len - off;
		bool last = off + n == s->len;
		unsigned char bh[5] = { last ? 1 : 0, n & 0xFF, (n >> 8) & 0xFF,
		    ~n & 0xFF, (~n >> 8) & 0xFF };
		sb_put(&g, bh, sizeof bh);
		sb_put(&g, s->b + off, n);
		off += n;
	} while (off < s->len);
	put_le32(&g, crc32_ieee((const unsigned char *)s->b, s->len));
	put_le32(&g, (uint32_t)s->len);
	s->len = 0;
	sb_put(s, g.b, g.len);
	sb_free(&g);
}

/* ------------------------------------------------------- behaviour config */

enum mode { M_JSON, M_TEXT, M_BIG, M_EMPTY, M_HANG, M_RESET, M_BADJSON,
	M_HTML, M_GZIP, M_BADUTF8, M__COUNT };
static const char *const mode_names[M__COUNT] = {
	"json", "text", "big", "empty", "hang", "reset", "badjson", "html",
	"gzip", "badutf8",
};

enum field { F_LATENCY, F_JITTER, F_STATUS, F_ERATE, F_ESTATUS, F_FAILFIRST,
	F_DOWN, F_RETRY, F_MODE, F_CTYPE, F_BIG, F__COUNT };
enum ftype { FT_INT, FT_RATE, FT_BOOL, FT_STR, FT_MODE };

static const struct {
	const char *name;
	int type;
	long min, max;
} fields[F__COUNT] = {
	[F_LATENCY]   = { "latency_ms", FT_INT, 0, 86400000 },
	[F_JITTER]    = { "latency_jitter_ms", FT_INT, 0, 86400000 },
	[F_STATUS]    = { "status", FT_INT, 200, 599 },
	[F_ERATE]     = { "error_rate", FT_RATE, 0, 0 },
	[F_ESTATUS]   = { "error_status", FT_INT, 200, 599 },
	[F_FAILFIRST] = { "fail_first", FT_INT, 0, INT_MAX },
	[F_DOWN]      = { "down", FT_BOOL, 0, 1 },
	[F_RETRY]     = { "retry_after", FT_STR, 0, 0 },
	[F_MODE]      = { "mode", FT_MODE, 0, M__COUNT - 1 },
	[F_CTYPE]     = { "content_type", FT_STR, 0, 0 },
	[F_BIG]       = { "big_bytes", FT_INT, 10, 256L << 20 },
};

#define ALL_FIELDS ((1u << F__COUNT) - 1)

/* A set of behaviour settings; mask says which are set.  Strings owned. */
typedef struct {
	unsigned mask;
	long iv[F__COUNT];   /* FT_INT, FT_BOOL, FT_MODE */
	double rate;         /* FT_RATE */
	char *sv[F__COUNT];  /* FT_STR */
} behav_t;

/* Effective behaviour of one request; strings borrowed. */
typedef struct {
	long iv[F__COUNT];
	double rate;
	const char *sv[F__COUNT];
} eff_t;

/* A typed value about to be stored in a field. */
typedef struct {
	long i;
	double d;
	const char *s;
	size_t slen;
} fval;

static int field_find(const char *name, size_t len)
{
	for (int f = 0; f < F__COUNT; f++)
		if (strlen(fields[f].name) == len &&
		    memcmp(fields[f].name, name, len) == 0)
			return f;
	return -1;
}

static void behav_unset(behav_t *b, int f)
{
	free(b->sv[f]);
	b->sv[f] = NULL;
	b->iv[f] = 0;
	if (f == F_ERATE)
		b->rate = 0;
	b->mask &= ~(1u << f);
}

static void behav_clear(behav_t *b)
{
	for (int f = 0; f < F__COUNT; f++)
		free(b->sv[f]);
	memset(b, 0, sizeof *b);
}

static void behav_defaults(behav_t *b)
{
	behav_clear(b);
	b->mask = ALL_FIELDS;
	b->iv[F_STATUS] = 200;
	b->iv[F_ESTATUS] = 500;
	b->iv[F_MODE] = M_JSON;
	b->iv[F_BIG] = 2L << 20;
}

static void behav_default_field(behav_t *b, int f)
{
	behav_t d;
	memset(&d, 0, sizeof d);
	behav_defaults(&d);
	free(b->sv[f]);
	b->sv[f] = NULL;
	b->iv[f] = d.iv[f];
	if (f == F_ERATE)
		b->rate = 0;
	b->mask |= 1u << f;
}

static void behav_copy(behav_t *dst, const behav_t *src)
{
	*dst = *src;
	for (int f = 0; f < F__COUNT; f++)
		if (src->sv[f])
			dst->sv[f] = xstrndup(src->sv[f], strlen(src->sv[f]));
}

static void behav_store(behav_t *b, int f, const fval *v)
{
	switch (fields[f].type) {
	case FT_RATE:
		b->rate = v->d;
		break;
	case FT_STR:
		free(b->sv[f]);
		b->sv[f] = xstrndup(v->s, v->slen);
		break;
	default:
		b->iv[f] = v->i;
	}
	b->mask |= 1u << f;
}

static bool header_value_ok(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
			return false;
	return true;
}

/* Convert a value given as text (query parameter) for field f. */
static int fval_from_str(int f, const char *s, fval *v, char *err,
    size_t errlen)
{
	char *end;
	memset(v, 0, sizeof *v);
	switch (fields[f].type) {
	case FT_INT: {
		errno = 0;
		long l = strtol(s, &end, 10);
		if (!*s || *end || errno || l < fields[f].min || l > fields[f].max) {
			snprintf(err, errlen, "%s must be an integer in %ld..%ld",
			    fields[f].name, fields[f].min, fields[f].max);
			return -1;
		}
		v->i = l;
		return 0;
	}
	case FT_RATE: {
		double d = strtod(s, &end);
		if (!*s || *end || !(d >= 0 && d <= 1)) {
			snprintf(err, errlen, "%s must be a number in 0..1",
			    fields[f].name);
			return -1;
		}
		v->d = d;
		return 0;
	}
	case FT_BOOL:
		if (!strcmp(s, "true") || !strcmp(s, "1") || !strcmp(s, "yes")) {
			v->i = 1;
		} else if (!strcmp(s, "false") || !strcmp(s, "0") ||
		    !strcmp(s, "no") || !*s) {
			v->i = 0;
		} else {
			snprintf(err, errlen, "%s must be a boolean", fields[f].name);
			return -1;
		}
		return 0;
	case FT_STR:
		v->s = s;
		v->slen = strlen(s);
		if (!header_value_ok(s, v->slen)) {
			snprintf(err, errlen, "%s: invalid header value", fields[f].name);
			return -1;
		}
		return 0;
	default: /* FT_MODE */
		for (int m = 0; m < M__COUNT; m++)
			if (!strcmp(s, mode_names[m])) {
				v->i = m;
				return 0;
			}
		snprintf(err, errlen, "unknown mode %.64s", s);
		return -1;
	}
}

/* Convert a JSON value (not null) for field f. numbuf holds number text. */
static int fval_from_json(int f, const jv *j, fval *v, char *numbuf,
    size_t numlen, char *err, size_t errlen)
{
	memset(v, 0, sizeof *v);
	switch (fields[f].type) {
	case FT_INT:
		if (j->t != JT_NUM || !j->integral || j->num < (double)fields[f].min ||
		    j->num > (double)fields[f].max) {
			snprintf(err, errlen, "%s must be an integer in %ld..%ld",
			    fields[f].name, fields[f].min, fields[f].max);
			return -1;
		}
		v->i = (long)j->num;
		return 0;
	case FT_RATE:
		if (j->t != JT_NUM || !(j->num >= 0 && j->num <= 1)) {
			snprintf(err, errlen, "%s must be a number in 0..1",
			    fields[f].name);
			return -1;
		}
		v->d = j->num;
		return 0;
	case FT_BOOL:
		if (j->t == JT_BOOL)
			v->i = j->b;
		else if (j->t == JT_NUM && (j->num == 0 || j->num == 1))
			v->i = j->num == 1;
		else {
			snprintf(err, errlen, "%s must be a boolean", fields[f].name);
			return -1;
		}
		return 0;
	case FT_STR:
		if (j->t == JT_STR) {
			v->s = j->s;
			v->slen = j->slen;
		} else if (j->t == JT_NUM) {
			if (j->integral)
				snprintf(numbuf, numlen, "%.0f", j->num);
			else
				snprintf(numbuf, numlen, "%g", j->num);
			v->s = numbuf;
			v->slen = strlen(numbuf);
		} else {
			snprintf(err, errlen, "%s must be a string", fields[f].name);
			return -1;
		}
		if (!header_value_ok(v->s, v->slen)) {
			snprintf(err, errlen, "%s: invalid header value", fields[f].name);
			return -1;
		}
		return 0;
	default: /* FT_MODE */
		if (j->t == JT_STR)
			for (int m = 0; m < M__COUNT; m++)
				if (!strcmp(j->s, mode_names[m])) {
					v->i = m;
					return 0;
				}
		snprintf(err, errlen, "mode must be one of json, text, big, empty, "
		    "hang, reset, badjson, html");
		return -1;
	}
}

/* The capacity model's settings: global only (g_cap). */
static const struct {
	const char *name;
	long min, max, def;
} cap_keys[] = {
	{ "capacity", 0, 1000000, 0 },
	{ "queue_max", 0, 1000000, 1000000 },
	{ "overflow_status", 200, 599, 503 },
};
#define NCAP_KEYS ((int)(sizeof cap_keys / sizeof cap_keys[0]))

static int cap_key(const char *name, size_t len)
{
	for (int k = 0; k < NCAP_KEYS; k++)
		if (strlen(cap_keys[k].name) == len && !memcmp(cap_keys[k].name, name, len))
			return k;
	return -1;
}

/* Apply the members of JSON object o (except "ids") to b.  null resets a
 * field to its default (global) or removes the override (per id). */
static int behav_apply_json(behav_t *b, const jv *o, bool global,
    char *err, size_t errlen)
{
	for (size_t i = 0; i < o->n; i++) {
		const jv *val = o->vals[i];
		char numbuf[64];
		fval v;
		int f;

		if (global && o->klens[i] == 3 && !memcmp(o->keys[i], "ids", 3))
			continue;
		if (global && cap_key(o->keys[i], o->klens[i]) >= 0)
			continue;
		f = field_find(o->keys[i], o->klens[i]);
		if (f < 0) {
			snprintf(err, errlen, "unknown key %.*s",
			    (int)(o->klens[i] > 200 ? 200 : o->klens[i]), o->keys[i]);
			return -1;
		}
		if (val->t == JT_NULL) {
			if (global)
				behav_default_field(b, f);
			else
				behav_unset(b, f);
			continue;
		}
		if (fval_from_json(f, val, &v, numbuf, sizeof numbuf, err, errlen))
			return -1;
		behav_store(b, f, &v);
	}
	return 0;
}

static void eff_apply(eff_t *e, const behav_t *b)
{
	unsigned m = b->mask;
	for (int f = 0; m && f < F__COUNT; f++) {
		if (!(m & (1u << f)))
			continue;
		switch (fields[f].type) {
		case FT_RATE: e->rate = b->rate; break;
		case FT_STR: e->sv[f] = b->sv[f]; break;
		default: e->iv[f] = b->iv[f];
		}
	}
}

static void behav_json(sb_t *s, const behav_t *b)
{
	bool first = true;
	sb_putc(s, '{');
	for (int f = 0; f < F__COUNT; f++) {
		if (!(b->mask & (1u << f)))
			continue;
		if (!first)
			sb_putc(s, ',');
		first = false;
		sb_putc(s, '"');
		sb_puts(s, fields[f].name);
		sb_puts(s, "\":");
		switch (fields[f].type) {
		case FT_INT: sb_i64(s, b->iv[f]); break;
		case FT_RATE: sb_double(s, b->rate); break;
		case FT_BOOL: sb_puts(s, b->iv[f] ? "true" : "false"); break;
		case FT_MODE:
			sb_putc(s, '"');
			sb_puts(s, mode_names[b->iv[f]]);
			sb_putc(s, '"');
			break;
		default:
			if (b->sv[f])
				sb_jstr(s, b->sv[f], strlen(b->sv[f]));
			else
				sb_puts(s, "null");
		}
	}
	sb_putc(s, '}');
}

/* -------------------------------------------------------------- hash map */

typedef struct {
	uint64_t h;
	const char *key;
	uint32_t klen;
} hnode;

typedef struct {
	hnode **slots;
	size_t cap, n;     /* cap: power of two */
	hnode **order;     /* insertion order */
	size_t ocap;
} hmap;

static hnode *hm_find(const hmap *m, uint64_t h, const char *k, size_t kl)
{
	if (!m->cap)
		return NULL;
	for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
		hnode *n = m->slots[i];
		if (!n)
			return NULL;
		if (n->h == h && n->klen == kl && memcmp(n->key, k, kl) == 0)
			return n;
	}
}

static void hm_place(hnode **slots, size_t cap, hnode *n)
{
	size_t i = n->h & (cap - 1);
	while (slots[i])
		i = (i + 1) & (cap - 1);
	slots[i] = n;
}

static void hm_insert(hmap *m, hnode *n)
{
	if ((m->n + 1) * 2 > m->cap) {
		size_t nc = m->cap ? m->cap * 2 : 64;
		hnode **ns = xcalloc(nc, sizeof *ns);
		for (size_t i = 0; i < m->cap; i++)
			if (m->slots[i])
				hm_place(ns, nc, m->slots[i]);
		free(m->slots);
		m->slots = ns;
		m->cap = nc;
	}
	hm_place(m->slots, m->cap, n);
	if (m->n == m->ocap) {
		m->ocap = m->ocap ? m->ocap * 2 : 64;
		m->order = xrealloc(m->order, m->ocap * sizeof *m->order);
	}
	m->order[m->n++] = n;
}

/* Free the table; nodes are freed by the caller through m->order first. */
static void hm_reset(hmap *m)
{
	free(m->slots);
	free(m->order);
	memset(m, 0, sizeof *m);
}

/* ids seen: id -> request count */
typedef struct {
	hnode n;
	uint64_t count;
	char key[];
} idrec;

/* per-id behaviour overrides (config "ids") */
typedef struct {
	hnode n;
	behav_t b;
	char key[];
} idcfg;

/* ------------------------------------------------------------ state */

enum { A_SEND, A_HANG, A_RESET };

/* A request whose answer is delayed (or that hangs / will be reset). */
typedef struct pend {
	struct pend *prev, *next;
	struct evhttp_request *req;
	struct evhttp_connection *evcon;
	uint64_t seq, gen;
	int status;
	int action;
	bool timer;                      /* timer event pending */
	bool watch;                      /* watch event pending */
	int cap;                         /* CAP_*: its place in the capacity model */
	long service_ms;                 /* its latency once served (CAP_QUEUED) */
	struct pend *qprev, *qnext;      /* g_capq, while CAP_QUEUED */
	_Alignas(16) unsigned char ev[]; /* 2 struct event: timer, watch */
} pend;

/* The capacity model (README): not in it, waiting, being served. */
enum { CAP_NONE, CAP_QUEUED, CAP_SERVING };

/*
 * The value of request header name; when it was sent more than once, all
 * values joined by ", " in *join (as a list-valued header reads), so a
 * duplicate shows in the log. NULL when absent.
 */
static const char *header_values(struct evkeyvalq *h, const char *name, sb_t *join)
{
	struct evkeyval *kv;
	const char *first = NULL;
	int n = 0;

	TAILQ_FOREACH(kv, h, next) {
		if (evutil_ascii_strcasecmp(kv->key, name) != 0)
			continue;
		if (n++ == 0) {
			first = kv->value;
			continue;
		}
		if (n == 2)
			sb_puts(join, first);
		sb_puts(join, ", ");
		sb_puts(join, kv->value);
	}
	if (n < 2)
		return first;
	sb_put(join, "", 1);
	return join->b;
}

/* One logged request, compactly. */
typedef struct {
	int64_t t_us, done_us;   /* done_us 0: not done */
	const idrec *id;
	char *blob;              /* path, then the logged headers (LOG_HDRS) */
	uint16_t path_len;
	uint16_t hlen[4];        /* LOG_STR_NONE: header absent */
	int16_t status;          /* -1: no answer (yet) */
	uint8_t method;
} logent;

/* request headers kept in the log, in blob order, with their JSON names */
static const char *const log_hdrs[4] = {
	"Idempotency-Key", "Authorization", "User-Agent", "Accept-Encoding",
};
static const char *const log_hdr_keys[4] = {
	"idempotency_key", "authorization", "user_agent", "accept_encoding",
};
#define LOG_HDRS 4

static const char *const method_names[] = {
	"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE", "CONNECT",
	"PATCH", "UNKNOWN",
};
#define NMETHODS ((int)(sizeof method_names / sizeof method_names[0]))

static struct {
	uint64_t gen;            /* bumped by reset */
	uint64_t requests;       /* == last seq */
	uint64_t duplicate_ids;
	uint64_t dropped;        /* ended without an answer */
	uint64_t inflight, max_inflight;
	double inflight_area;    /* integral of inflight over time, request-seconds */
	int64_t area_us;         /* time of the last inflight change */
	int64_t since_us;        /* time of the last reset */
	uint64_t max_serving, max_queued;
	uint64_t overflowed;     /* answered overflow_status by the capacity model */
	uint64_t by_status[NSTATUS];
	uint64_t by_method[NMETHODS];
	uint64_t *per_sec;
	size_t per_sec_len;
	int64_t per_sec_base;
} st;

static struct event_base *g_base;
static struct evhttp *g_http;
static struct evconnlistener *g_listener;
static struct event *g_accept_retry;
static behav_t g_cfg;
static hmap g_ids;       /* idrec */
static hmap g_idcfg;     /* idcfg */
static logent *g_ring;
static pend g_pending = { &g_pending, &g_pending, NULL, NULL, 0, 0, 0, 0,
	false, false, CAP_NONE, 0, NULL, NULL };

/* The capacity model: global settings (POST /_mock/config), its queue and
 * its gauges.  capacity 0: off. */
static struct {
	long capacity;           /* requests served at once */
	long queue_max;          /* requests waiting beyond that; more overflow */
	long overflow_status;    /* the answer beyond the queue, 503 */
} g_cap = { 0, 1000000, 503 };
static pend g_capq = { NULL, NULL, NULL, NULL, 0, 0, 0, 0, false, false,
	CAP_NONE, 0, &g_capq, &g_capq };
static uint64_t g_serving, g_queued;
static bool g_stopping;
static size_t g_evsize;          /* aligned event_get_struct_event_size() */
static bool g_early_close;       /* backend supports EV_CLOSED */

#define PEND_TIMER(p) ((struct event *)(void *)(p)->ev)
#define PEND_WATCH(p) ((struct event *)(void *)((p)->ev + g_evsize))

/* --------------------------------------------------------- big bodies */

typedef struct {
	size_t refs, size;
	char data[];
} bigbuf;

static bigbuf *g_big;

static void big_unref(bigbuf *b)
{
	if (b && --b->refs == 0)
		free(b);
}

static void big_cleanup(const void *data, size_t len, void *arg)
{
	(void)data;
	(void)len;
	big_unref(arg);
}

static void big_add(struct evbuffer *out, size_t size)
{
	if (!g_big || g_big->size != size) {
		big_unref(g_big);
		g_big = xmalloc(sizeof *g_big + size);
		g_big->refs = 1;
		g_big->size = size;
		memcpy(g_big->data, "{\"pad\":\"", 8);
		memset(g_big->data + 8, 'x', size - 10);
		memcpy(g_big->data + size - 2, "\"}", 2);
	}
	g_big->refs++;
	if (evbuffer_add_reference(out, g_big->data, size, big_cleanup,
	    g_big) != 0) {
		g_big->refs--;
		evbuffer_add(out, g_big->data, size);
	}
}

/* ------------------------------------------------------------ stats */

static int method_index(enum evhttp_cmd_type cmd)
{
	unsigned c = (unsigned)cmd;
	if (!c || (c & (c - 1)))
		return NMETHODS - 1;
	int i = __builtin_ctz(c);
	return i < NMETHODS - 1 ? i : NMETHODS - 1;
}

static void per_sec_inc(int64_t sec)
{
	if (!st.per_sec) {
		st.per_sec_len = 64;
		st.per_sec = xcalloc(st.per_sec_len, sizeof *st.per_sec);
		st.per_sec_base = sec;
	}
	if (sec < st.per_sec_base) { /* clock stepped back: grow at front */
		size_t shift = (size_t)(st.per_sec_base - sec);
		uint64_t *n = xcalloc(st.per_sec_len + shift, sizeof *n);
		memcpy(n + shift, st.per_sec, st.per_sec_len * sizeof *n);
		free(st.per_sec);
		st.per_sec = n;
		st.per_sec_len += shift;
		st.per_sec_base = sec;
	}
	size_t i = (size_t)(sec - st.per_sec_base);
	if (i >= st.per_sec_len) {
		size_t nl = st.per_sec_len;
		while (nl <= i)
			nl *= 2;
		st.per_sec = xrealloc(st.per_sec, nl * sizeof *st.per_sec);
		memset(st.per_sec + st.per_sec_len, 0,
		    (nl - st.per_sec_len) * sizeof *st.per_sec);
		st.per_sec_len = nl;
	}
	st.per_sec[i]++;
}

static uint64_t ring_oldest(void)
{
	return st.requests > RING_CAP ? st.requests - RING_CAP + 1 : 1;
}

static logent *ring_at(uint64_t seq)
{
	return &g_ring[(seq - 1) % RING_CAP];
}

/* The answer (status >= 0) or the drop (status -1) of request seq. */
/* Account the time at the current inflight, then change it. */
static void inflight_add(int delta)
{
	int64_t t = now_us();

	if (t > st.area_us)
		st.inflight_area += (double)st.inflight * (double)(t - st.area_us) / 1e6;
	st.area_us = t;
	if (delta > 0) {
		if (++st.inflight > st.max_inflight)
			st.max_inflight = st.inflight;
	} else if (delta < 0 && st.inflight) {
		st.inflight--;
	}
}

static void request_done(uint64_t seq, uint64_t gen, int status)
{
	inflight_add(-1);
	if (gen != st.gen)
		return;         /* from before a reset */
	if (status >= 0 && status < NSTATUS)
		st.by_status[status]++;
	else
		st.dropped++;
	if (seq < ring_oldest() || seq > st.requests)
		return;
	logent *e = ring_at(seq);
	e->done_us = now_us();
	e->status = (int16_t)status;
}

static void ids_clear(void)
{
	for (size_t i = 0; i < g_ids.n; i++)
		free(g_ids.order[i]);
	hm_reset(&g_ids);
}

static void idcfg_clear(void)
{
	for (size_t i = 0; i < g_idcfg.n; i++) {
		idcfg *c = (idcfg *)g_idcfg.order[i];
		behav_clear(&c->b);
		free(c);
	}
	hm_reset(&g_idcfg);
}

static void ring_clear(void)
{
	uint64_t n = st.requests < RING_CAP ? st.requests : RING_CAP;
	for (uint64_t i = 0; i < n; i++)
		free(g_ring[i].blob);
	memset(g_ring, 0, n * sizeof *g_ring); /* only the used part */
}

static void stats_reset(void)
{
	ring_clear();
	ids_clear();
	free(st.per_sec);
	st.per_sec = NULL;
	st.per_sec_len = 0;
	st.gen++;
	st.requests = 0;
	st.duplicate_ids = 0;
	st.dropped = 0;
	st.max_inflight = st.inflight;
	st.inflight_area = 0;
	st.area_us = st.since_us = now_us();
	st.max_serving = g_serving;
	st.max_queued = g_queued;
	st.overflowed = 0;
	memset(st.by_status, 0, sizeof st.by_status);
	memset(st.by_method, 0, sizeof st.by_method);
}

/* ------------------------------------------------------------- config */

static idcfg *idcfg_get(const char *id, size_t len, bool create)
{
	uint64_t h = hash_bytes(id, len);
	idcfg *c = (idcfg *)hm_find(&g_idcfg, h, id, len);
	if (c || !create)
		return c;
	c = xcalloc(1, sizeof *c + len + 1);
	memcpy(c->key, id, len);
	c->n.h = h;
	c->n.key = c->key;
	c->n.klen = (uint32_t)len;
	hm_insert(&g_idcfg, &c->n);
	return c;
}

static void cap_dispatch(void);

/* Merge a config object into the global config; atomic (all or nothing). */
static int config_apply(const jv *o, char *err, size_t errlen)
{
	const jv *ids = NULL;
	behav_t tmp;
	long cap[NCAP_KEYS] = { g_cap.capacity, g_cap.queue_max, g_cap.overflow_status };

	if (!o || o->t != JT_OBJ) {
		snprintf(err, errlen, "config must be a JSON object");
		return -1;
	}
	for (size_t i = 0; i < o->n; i++) {
		int k = cap_key(o->keys[i], o->klens[i]);
		const jv *v = o->vals[i];

		if (k < 0)
			continue;
		if (v->t == JT_NULL) {
			cap[k] = cap_keys[k].def;
		} else if (v->t == JT_NUM && v->integral && v->num >= (double)cap_keys[k].min &&
		    v->num <= (double)cap_keys[k].max) {
			cap[k] = (long)v->num;
		} else {
			snprintf(err, errlen, "%s must be an integer in %ld..%ld",
			    cap_keys[k].name, cap_keys[k].min, cap_keys[k].max);
			return -1;
		}
	}
	for (size_t i = 0; i < o->n; i++)
		if (o->klens[i] == 3 && !memcmp(o->keys[i], "ids", 3))
			ids = o->vals[i];
	if (ids && ids->t != JT_OBJ && ids->t != JT_NULL) {
		snprintf(err, errlen, "ids must be an object");
		return -1;
	}
	/* validate everything on copies first */
	behav_copy(&tmp, &g_cfg);
	if (behav_apply_json(&tmp, o, true, err, errlen)) {
		behav_clear(&tmp);
		return -1;
	}
	for (size_t i = 0; ids && ids->t == JT_OBJ && i < ids->n; i++) {
		const jv *e = ids->vals[i];
		behav_t scratch;
		int r;
		if (e->t == JT_NULL)
			continue;
		if (e->t != JT_OBJ) {
			snprintf(err, errlen, "ids.%.*s must be an object or null",
			    (int)(ids->klens[i] > 200 ? 200 : ids->klens[i]),
			    ids->keys[i]);
			behav_clear(&tmp);
			return -1;
		}
		memset(&scratch, 0, sizeof scratch);
		r = behav_apply_json(&scratch, e, false, err, errlen);
		behav_clear(&scratch);
		if (r) {
			behav_clear(&tmp);
			return -1;
		}
	}
	/* commit */
	behav_clear(&g_cfg);
	g_cfg = tmp;
	g_cap.capacity = cap[0];
	g_cap.queue_max = cap[1];
	g_cap.overflow_status = cap[2];
	cap_dispatch();      /* a larger capacity serves waiting requests now */
	if (ids && ids->t == JT_NULL)
		idcfg_clear();
	for (size_t i = 0; ids && ids->t == JT_OBJ && i < ids->n; i++) {
		const jv *e = ids->vals[i];
		idcfg *c = idcfg_get(ids->keys[i], ids->klens[i], e->t != JT_NULL);
		if (!c)
			continue;
		if (e->t == JT_NULL)
			behav_clear(&c->b);
		else
			behav_apply_json(&c->b, e, false, err, errlen);
	}
	return 0;
}

static void config_json(sb_t *s)
{
	bool first = true;
	behav_json(s, &g_cfg);
	s->len--; /* reopen the object */
	for (int k = 0; k < NCAP_KEYS; k++) {
		long v = k == 0 ? g_cap.capacity : k == 1 ? g_cap.queue_max :
		    g_cap.overflow_status;

		sb_puts(s, ",\"");
		sb_puts(s, cap_keys[k].name);
		sb_puts(s, "\":");
		sb_i64(s, v);
	}
	sb_puts(s, ",\"ids\":{");
	for (size_t i = 0; i < g_idcfg.n; i++) {
		const idcfg *c = (const idcfg *)g_idcfg.order[i];
		if (!c->b.mask)
			continue;
		if (!first)
			sb_putc(s, ',');
		first = false;
		sb_jstr(s, c->key, c->n.klen);
		sb_putc(s, ':');
		behav_json(s, &c->b);
	}
	sb_puts(s, "}}");
}

/* --------------------------------------------------------- responses */

/* Reason phrases libevent 2.1 does not know (it would say "Client Error"). */
static const char *reason_phrase(int code)
{
	switch (code) {
	case 308: return "Permanent Redirect";
	case 418: return "I'm a teapot";
	case 421: return "Misdirected Request";
	case 422: return "Unprocessable Entity";
	case 423: return "Locked";
	case 424: return "Failed Dependency";
	case 425: return "Too Early";
	case 426: return "Upgrade Required";
	case 428: return "Precondition Required";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 451: return "Unavailable For Legal Reasons";
	case 504: return "Gateway Timeout";
	case 506: return "Variant Also Negotiates";
	case 507: return "Insufficient Storage";
	case 508: return "Loop Detected";
	case 510: return "Not Extended";
	case 511: return "Network Authentication Required";
	default: return NULL; /* libevent's own */
	}
}

/* Send the prepared response.  libevent 2.1 would send the body even for
 * 204/304 and HEAD (breaking keep-alive framing): strip it here; HEAD
 * keeps the Content-Length the GET would have had. */
static void reply(struct evhttp_request *req, int status)
{
	struct evbuffer *out = evhttp_request_get_output_buffer(req);
	size_t len = evbuffer_get_length(out);

	if (status == 204 || status == 304 || status < 200) {
		evbuffer_drain(out, len);
	} else if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
		char n[24];
		snprintf(n, sizeof n, "%zu", len);
		evhttp_add_header(evhttp_request_get_output_headers(req),
		    "Content-Length", n);
		evbuffer_drain(out, len);
	}
	evhttp_send_reply(req, status, reason_phrase(status), NULL);
}

static void send_sb(struct evhttp_request *req, int code, sb_t *s,
    const char *ctype)
{
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", ctype);
	sb_to_evbuffer(s, evhttp_request_get_output_buffer(req));
	reply(req, code);
}

static void send_error(struct evhttp_request *req, int code, const char *msg)
{
	sb_t s;
	sb_init(&s);
	sb_puts(&s, "{\"error\":");
	sb_jstr(&s, msg, strlen(msg));
	sb_puts(&s, "}\n");
	send_sb(req, code, &s, "application/json");
}

static void pend_unlink(pend *p)
{
	p->prev->next = p->next;
	p->next->prev = p->prev;
	p->prev = p->next = p;
}

static void on_pend_timer(evutil_socket_t fd, short what, void *arg);

/* A waiting request of the capacity model is served: its latency starts. */
static void cap_serve(pend *p)
{
	struct timeval tv = { p->service_ms / 1000, (p->service_ms % 1000) * 1000 };

	p->cap = CAP_SERVING;
	if (++g_serving > st.max_serving)
		st.max_serving = g_serving;
	event_base_update_cache_time(g_base);
	event_assign(PEND_TIMER(p), g_base, -1, 0, on_pend_timer, p);
	p->timer = event_add(PEND_TIMER(p), &tv) == 0;
}

/* Serve waiting requests, first come first served, while there is room. */
static void cap_dispatch(void)
{
	while (!g_stopping && g_capq.qnext != &g_capq &&
	    (g_cap.capacity == 0 || g_serving < (uint64_t)g_cap.capacity)) {
		pend *p = g_capq.qnext;

		p->qprev->qnext = p->qnext;
		p->qnext->qprev = p->qprev;
		p->qprev = p->qnext = NULL;
		g_queued--;
		cap_serve(p);
	}
}

static void pend_free(pend *p)
{
	bool was_serving = p->cap == CAP_SERVING;

	pend_unlink(p);
	if (p->timer)
		event_del(PEND_TIMER(p));
	if (p->watch)
		event_del(PEND_WATCH(p));
	if (p->cap == CAP_QUEUED) {
		p->qprev->qnext = p->qnext;
		p->qnext->qprev = p->qprev;
		g_queued--;
	} else if (was_serving) {
		g_serving--;
	}
	free(p);
	if (was_serving)
		cap_dispatch();
}

static evutil_socket_t conn_fd(struct evhttp_connection *evcon)
{
	struct bufferevent *bev = evcon ?
	    evhttp_connection_get_bufferevent(evcon) : NULL;
	return bev ? bufferevent_getfd(bev) : -1;
}

/* Abort the connection with a RST and no response. */
static void conn_reset(struct evhttp_request *req)
{
	struct evhttp_connection *evcon = evhttp_request_get_connection(req);
	if (!evcon) {
		evhttp_request_free(req);
		return;
	}
	evutil_socket_t fd = conn_fd(evcon);
	if (fd >= 0) {
		struct linger lg = { 1, 0 };
		struct sockaddr unspec;
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
		/* evhttp_connection_free() does shutdown(SHUT_WR) before
		 * close(), which would send a FIN ahead of the RST (the client
		 * then sees a clean EOF).  Disconnecting the socket first
		 * (connect AF_UNSPEC) sends the RST right now. */
		memset(&unspec, 0, sizeof unspec);
		unspec.sa_family = AF_UNSPEC;
		(void)connect(fd, &unspec, sizeof unspec);
	}
	evhttp_connection_free(evcon); /* frees req too */
}

/* Timer of a delayed request fired: answer it (or reset). */
static void on_pend_timer(evutil_socket_t fd, short what, void *arg)
{
	pend *p = arg;
	struct evhttp_request *req = p->req;
	uint64_t seq = p->seq, gen = p->gen;
	int status = p->status, action = p->action;

	(void)fd;
	(void)what;
	p->timer = false;
	if (p->evcon)
		evhttp_connection_set_closecb(p->evcon, NULL, NULL);
	pend_free(p);
	if (action == A_RESET) {
		request_done(seq, gen, -1);
		conn_reset(req);
	} else {
		request_done(seq, gen, status);
		reply(req, status);
	}
}

/* The client went away (or we are shutting down) while a request waits. */
static void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
	pend *p = arg;
	struct evhttp_request *req = p->req;

	evhttp_connection_set_closecb(evcon, NULL, NULL);
	request_done(p->seq, p->gen, -1);
	pend_free(p);
	/* On EOF/timeout evhttp detaches a request the user has not answered
	 * yet and leaves it to us; if it is still attached, evhttp frees it
	 * together with the connection. */
	if (evhttp_request_get_connection(req) == NULL)
		evhttp_request_free(req);
}

/* While a request waits, evhttp does not read from its connection, so it
 * would not notice the client going away.  This event watches the socket:
 * EOF or an error means the client is gone; we then drop the request and
 * free the connection.  If the client sends more bytes instead (pipelining)
 * we cannot consume them: fall back to EV_CLOSED (peer shutdown) only. */
static void on_pend_watch(evutil_socket_t fd, short what, void *arg)
{
	pend *p = arg;
	struct evhttp_connection *evcon = p->evcon;
	char c;

	if (!(what & EV_CLOSED)) {
		ssize_t r = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK ||
		    errno == EINTR))
			return;
		if (r > 0) {
			event_del(PEND_WATCH(p));
			p->watch = false;
			if (g_early_close) {
				event_assign(PEND_WATCH(p), g_base, fd, EV_CLOSED,
				    on_pend_watch, p);
				p->watch = event_add(PEND_WATCH(p), NULL) == 0;
			}
			return;
		}
	}
	evhttp_connection_set_closecb(evcon, NULL, NULL);
	request_done(p->seq, p->gen, -1);
	pend_free(p);
	evhttp_connection_free(evcon); /* frees the request too */
}

static void park(struct evhttp_request *req, uint64_t seq, int status,
    int action, long delay_ms, int cap)
{
	pend *p = xcalloc(1, sizeof *p + 2 * g_evsize);
	evutil_socket_t fd;
	p->req = req;
	p->evcon = evhttp_request_get_connection(req);
	p->seq = seq;
	p->gen = st.gen;
	p->status = status;
	p->action = action;
	p->next = g_pending.next;
	p->prev = &g_pending;
	g_pending.next->prev = p;
	g_pending.next = p;
	if (p->evcon)
		evhttp_connection_set_closecb(p->evcon, on_conn_close, p);
	p->service_ms = delay_ms;
	if (cap == CAP_QUEUED) {
		p->cap = CAP_QUEUED;
		p->qnext = &g_capq;
		p->qprev = g_capq.qprev;
		g_capq.qprev->qnext = p;
		g_capq.qprev = p;
		if (++g_queued > st.max_queued)
			st.max_queued = g_queued;
	} else if (cap == CAP_SERVING) {
		cap_serve(p);
	} else if (action != A_HANG) {
		struct timeval tv = { delay_ms / 1000, (delay_ms % 1000) * 1000 };
		/* timers are based on the loop's cached time, which may be a few
		 * ms old under load: refresh it so we never answer early */
		event_base_update_cache_time(g_base);
		event_assign(PEND_TIMER(p), g_base, -1, 0, on_pend_timer, p);
		p->timer = event_add(PEND_TIMER(p), &tv) == 0;
	}
	fd = conn_fd(p->evcon);
	if (fd >= 0 && (action == A_HANG || delay_ms > 0)) {
		event_assign(PEND_WATCH(p), g_base, fd, EV_READ | EV_PERSIST,
		    on_pend_watch, p);
		p->watch = event_add(PEND_WATCH(p), NULL) == 0;
	}
}

static void html_escaped(sb_t *s, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		switch (p[i]) {
		case '<': sb_puts(s, "&lt;"); break;
		case '>': sb_puts(s, "&gt;"); break;
		case '&': sb_puts(s, "&amp;"); break;
		case '"': sb_puts(s, "&quot;"); break;
		default: sb_putc(s, p[i]);
		}
	}
}

static size_t cap_len(size_t n)
{
	return n > LOG_STR_MAX ? LOG_STR_MAX : n;
}

/* --------------------------------------------------------- login (auth) */

/*
 * A login endpoint and bearer tokens (POST /_mock/login, /_mock/auth): the
 * mock hands out fresh random tokens to a client that names the configured
 * user and password, and with "require" on answers 401 to every provider
 * request without a currently valid one.  Tokens live lifetime_s seconds
 * (0: until revoked).  "revoke" forgets them all (a rotation server-side).
 */
typedef struct {
	char tok[33];
	int64_t exp_us;          /* 0: no expiry */
} token_t;

static struct {
	char *user, *password;   /* NULL: any */
	long lifetime_s;         /* default 3600; 0: no expiry, no expires_in */
	bool require;            /* provider requests need a valid token */
	bool nested;             /* answer {"data":{"token":..,"ttl":..}} */
	int login_status;        /* 0: normal; else answer logins with it */
	long login_latency_ms;
	token_t *tokens;
	size_t ntokens, cap;
	uint64_t logins, login_failures, unauthorized, authorized;
} g_auth = { NULL, NULL, 3600, false, false, 0, 0, NULL, 0, 0, 0, 0, 0, 0 };

static void auth_free(void)
{
	free(g_auth.user);
	free(g_auth.password);
	free(g_auth.tokens);
}

/* Is "Bearer TOKEN" one of ours, alive? */
static bool auth_ok(struct evkeyvalq *ih)
{
	const char *h = evhttp_find_header(ih, "Authorization");
	int64_t now = now_us();

	if (!h || strncmp(h, "Bearer ", 7) != 0)
		return false;
	h += 7;
	for (size_t i = 0; i < g_auth.ntokens; i++)
		if (!strcmp(g_auth.tokens[i].tok, h))
			return g_auth.tokens[i].exp_us == 0 || now < g_auth.tokens[i].exp_us;
	return false;
}

static const char *jv_str_member(const jv *o, const char *name)
{
	for (size_t i = 0; o && o->t == JT_OBJ && i < o->n; i++)
		if (strlen(name) == o->klens[i] && !memcmp(o->keys[i], name, o->klens[i]))
			return o->vals[i]->t == JT_STR ? o->vals[i]->s : NULL;
	return NULL;
}

static int body_json(struct evhttp_request *req, jv **out);

static void ctl_login(struct evhttp_request *req)
{
	jv *body = NULL;
	const char *u, *pw;
	sb_t s;

	if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
		send_error(req, 405, "use POST");
		return;
	}
	if (g_auth.login_status) {
		g_auth.login_failures++;
		send_error(req, g_auth.login_status, "mock login_status");
		return;
	}
	if (body_json(req, &body))
		return;
	u = jv_str_member(body, "user");
	pw = jv_str_member(body, "password");
	if ((g_auth.user && (!u || strcmp(u, g_auth.user))) ||
	    (g_auth.password && (!pw || strcmp(pw, g_auth.password)))) {
		jv_free(body);
		g_auth.login_failures++;
		send_error(req, 401, "bad credentials");
		return;
	}
	jv_free(body);
	if (g_auth.ntokens == g_auth.cap) {
		g_auth.cap = g_auth.cap ? g_auth.cap * 2 : 16;
		g_auth.tokens = xrealloc(g_auth.tokens, g_auth.cap * sizeof(token_t));
	}
	token_t *t = &g_auth.tokens[g_auth.ntokens++];
	snprintf(t->tok, sizeof t->tok, "%016llx%016llx", (unsigned long long)rng_next(),
	    (unsigned long long)rng_next());
	t->exp_us = g_auth.lifetime_s > 0 ? now_us() + g_auth.lifetime_s * 1000000LL : 0;
	g_auth.logins++;
	sb_init(&s);
	sb_puts(&s, g_auth.nested ? "{\"data\":{\"token\":\"" : "{\"access_token\":\"");
	sb_puts(&s, t->tok);
	sb_puts(&s, "\",\"token_type\":\"Bearer\"");
	if (g_auth.lifetime_s > 0) {
		sb_puts(&s, g_auth.nested ? ",\"ttl\":\"" : ",\"expires_in\":");
		sb_i64(&s, g_auth.lifetime_s);
		if (g_auth.nested)
			sb_putc(&s, '"');
	}
	sb_puts(&s, g_auth.nested ? "}}\n" : "}\n");
	send_sb(req, 200, &s, "application/json");
}

static void set_str(char **dst, const jv *v)
{
	free(*dst);
	*dst = v->t == JT_STR ? xstrndup(v->s, v->slen) : NULL;
}

/* GET: the figures; POST: change the settings (user, password, lifetime_s,
 * require, nested, login_status, revoke) and answer the figures. */
static void ctl_auth(struct evhttp_request *req)
{
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	sb_t s;

	if (cmd == EVHTTP_REQ_POST) {
		jv *b;
		if (body_json(req, &b))
			return;
		/* validate first: all or nothing */
		for (size_t i = 0; b && i < b->n; i++) {
			const char *k = b->keys[i];
			const jv *v = b->vals[i];
			bool ok;
			if (!strcmp(k, "user") || !strcmp(k, "password"))
				ok = v->t == JT_STR || v->t == JT_NULL;
			else if (!strcmp(k, "lifetime_s"))
				ok = v->t == JT_NUM && v->integral && v->num >= 0 && v->num <= 86400;
			else if (!strcmp(k, "login_status"))
				ok = v->t == JT_NUM && v->integral && (v->num == 0 ||
				    (v->num >= 200 && v->num <= 599));
			else if (!strcmp(k, "require") || !strcmp(k, "nested") || !strcmp(k, "revoke"))
				ok = v->t == JT_BOOL;
			else {
				jv_free(b);
				send_error(req, 400, "unknown auth key");
				return;
			}
			if (!ok) {
				jv_free(b);
				send_error(req, 400, "bad auth value");
				return;
			}
		}
		for (size_t i = 0; b && i < b->n; i++) {
			const char *k = b->keys[i];
			const jv *v = b->vals[i];
			if (!strcmp(k, "user"))
				set_str(&g_auth.user, v);
			else if (!strcmp(k, "password"))
				set_str(&g_auth.password, v);
			else if (!strcmp(k, "lifetime_s"))
				g_auth.lifetime_s = (long)v->num;
			else if (!strcmp(k, "login_status"))
				g_auth.login_status = (int)v->num;
			else if (!strcmp(k, "require"))
				g_auth.require = v->b;
			else if (!strcmp(k, "nested"))
				g_auth.nested = v->b;
			else if (!strcmp(k, "revoke") && v->b)
				g_auth.ntokens = 0;
		}
		jv_free(b);
	} else if (cmd != EVHTTP_REQ_GET) {
		send_error(req, 405, "use GET or POST");
		return;
	}
	sb_init(&s);
	sb_puts(&s, "{\"logins\":");
	sb_u64(&s, g_auth.logins);
	sb_puts(&s, ",\"login_failures\":");
	sb_u64(&s, g_auth.login_failures);
	sb_puts(&s, ",\"unauthorized\":");
	sb_u64(&s, g_auth.unauthorized);
	sb_puts(&s, ",\"authorized\":");
	sb_u64(&s, g_auth.authorized);
	sb_puts(&s, ",\"require\":");
	sb_puts(&s, g_auth.require ? "true" : "false");
	sb_puts(&s, ",\"lifetime_s\":");
	sb_i64(&s, g_auth.lifetime_s);
	sb_puts(&s, ",\"tokens\":[");
	for (size_t i = 0; i < g_auth.ntokens; i++) {
		if (i)
			sb_putc(&s, ',');
		sb_putc(&s, '"');
		sb_puts(&s, g_auth.tokens[i].tok);
		sb_putc(&s, '"');
	}
	sb_puts(&s, "]}\n");
	send_sb(req, 200, &s, "application/json");
}

/* Every request outside /_mock/. */
static void handle_provider(struct evhttp_request *req, const char *path,
    const struct evhttp_uri *uri)
{
	int64_t t = now_us();
	uint64_t seq = ++st.requests;
	uint64_t gen = st.gen;
	int midx = method_index(evhttp_request_get_command(req));
	struct evkeyvalq *ih = evhttp_request_get_input_headers(req);
	struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
	struct evbuffer *out = evhttp_request_get_output_buffer(req);
	const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
	struct evkeyvalq q;
	const char *id = NULL;
	char idstack[256], *idheap = NULL;
	size_t idlen = 0, plen = strlen(path);
	bool have_q = false;
	char err[256];
	sb_t s;

	TAILQ_INIT(&q);
	if (query && *query && evhttp_parse_query_str(query, &q) == 0) {
		have_q = true;
		id = evhttp_find_header(&q, "id");
		if (id)
			idlen = strlen(id);
	}
	if (!id) {
		size_t end = plen, beg;
		while (end > 0 && path[end - 1] == '/')
			end--;
		beg = end;
		while (beg > 0 && path[beg - 1] != '/')
			beg--;
		char *buf = end - beg < sizeof idstack ? idstack :
		    (idheap = xmalloc(end - beg + 1));
		idlen = pct_decode(path + beg, end - beg, buf);
		id = buf;
	}

	/* ---- record the arrival */
	uint64_t h = hash_bytes(id, idlen);
	idrec *rec = (idrec *)hm_find(&g_ids, h, id, idlen);
	if (!rec) {
		rec = xmalloc(sizeof *rec + idlen + 1);
		memcpy(rec->key, id, idlen);
		rec->key[idlen] = '\0';
		rec->n.h = h;
		rec->n.key = rec->key;
		rec->n.klen = (uint32_t)idlen;
		rec->count = 0;
		hm_insert(&g_ids, &rec->n);
	}
	if (++rec->count == 2)
		st.duplicate_ids++;
	st.by_method[midx]++;
	per_sec_inc(t / 1000000);
	inflight_add(1);
	{
		logent *e = ring_at(seq);
		const char *hv[LOG_HDRS];
		size_t hl[LOG_HDRS], pl = cap_len(plen), total = pl, off = pl;
		sb_t joined[LOG_HDRS];
		for (int k = 0; k < LOG_HDRS; k++) {
			sb_init(&joined[k]);
			hv[k] = header_values(ih, log_hdrs[k], &joined[k]);
			hl[k] = hv[k] ? cap_len(strlen(hv[k])) : 0;
			total += hl[k];
		}
		free(e->blob);
		e->blob = xmalloc(total ? total : 1);
		memcpy(e->blob, path, pl);
		for (int k = 0; k < LOG_HDRS; k++) {
			if (hl[k])
				memcpy(e->blob + off, hv[k], hl[k]);
			off += hl[k];
			e->hlen[k] = hv[k] ? (uint16_t)hl[k] : LOG_STR_NONE;
			sb_free(&joined[k]);
		}
		e->t_us = t;
		e->done_us = 0;
		e->id = rec;
		e->path_len = (uint16_t)pl;
		e->status = -1;
		e->method = (uint8_t)midx;
	}

	/* ---- effective behaviour: global < query < per id */
	eff_t e;
	memset(&e, 0, sizeof e);
	eff_apply(&e, &g_cfg);
	if (have_q) {
		struct evkeyval *kv;
		TAILQ_FOREACH(kv, &q, next) {
			int f = field_find(kv->key, strlen(kv->key));
			fval v;
			if (f < 0)
				continue;
			if (fval_from_str(f, kv->value, &v, err, sizeof err)) {
				request_done(seq, gen, 400);
				send_error(req, 400, err);
				goto out;
			}
			switch (fields[f].type) {
			case FT_RATE: e.rate = v.d; break;
			case FT_STR: e.sv[f] = v.s; break;
			default: e.iv[f] = v.i;
			}
		}
	}
	if (g_idcfg.n) {
		const idcfg *c = (const idcfg *)hm_find(&g_idcfg, h, id, idlen);
		if (c)
			eff_apply(&e, &c->b);
	}

	/* ---- decide */
	const char *why = NULL;
	int status = (int)e.iv[F_STATUS];
	int action = A_SEND;
	const char *ctype = NULL;
	const char *cenc = NULL;
	long delay = e.iv[F_LATENCY];
	int cap = CAP_NONE;

	if (e.iv[F_JITTER] > 0)
		delay += (long)(rng_next() % (uint64_t)(e.iv[F_JITTER] + 1));
	/* the capacity model: served now, waiting, or beyond the queue (a
	 * provider that is down answers outside it) */
	bool in_model = g_cap.capacity > 0 && delay > 0 && !e.iv[F_DOWN] &&
	    e.iv[F_MODE] != M_HANG && e.iv[F_MODE] != M_RESET;
	if (in_model) {
		if (g_serving < (uint64_t)g_cap.capacity && g_queued == 0)
			cap = CAP_SERVING;
		else if (g_queued < (uint64_t)g_cap.queue_max)
			cap = CAP_QUEUED;
	}

	bool unauth = false;
	if (g_auth.require) {
		unauth = !auth_ok(ih);
		if (unauth)
			g_auth.unauthorized++;
		else
			g_auth.authorized++;
	}
	if (unauth) {
		why = "unauthorized";
		delay = 0;
	} else if (e.iv[F_DOWN])
		why = "down";
	else if (in_model && cap == CAP_NONE) {
		why = "overflow";
		delay = 0;
		st.overflowed++;
	} else if (e.iv[F_FAILFIRST] > 0 && rec->count <= (uint64_t)e.iv[F_FAILFIRST])
		why = "fail_first";
	else if (e.rate > 0 && rng_double() < e.rate)
		why = "error_rate";

	sb_init(&s);
	if (why) {
		status = !strcmp(why, "overflow") ? (int)g_cap.overflow_status :
		    unauth ? 401 : (int)e.iv[F_ESTATUS];
		ctype = "application/json";
		sb_puts(&s, "{\"error\":\"mock ");
		sb_puts(&s, why);
		sb_puts(&s, "\",\"id\":");
		sb_jstr(&s, id, idlen);
		sb_puts(&s, ",\"n\":");
		sb_u64(&s, seq);
		sb_puts(&s, ",\"status\":");
		sb_i64(&s, status);
		sb_putc(&s, '}');
	} else {
		switch (e.iv[F_MODE]) {
		case M_JSON:
		case M_GZIP: {
			struct evbuffer *in = evhttp_request_get_input_buffer(req);
			size_t bl = evbuffer_get_length(in);
			ctype = "application/json";
			sb_puts(&s, "{\"id\":");
			sb_jstr(&s, id, idlen);
			sb_puts(&s, ",\"method\":\"");
			sb_puts(&s, method_names[midx]);
			sb_puts(&s, "\",\"path\":");
			sb_jstr(&s, path, plen);
			sb_puts(&s, ",\"n\":");
			sb_u64(&s, seq);
			if (bl) {
				const char *bp = (const char *)evbuffer_pullup(in, -1);
				if (bp && json_parse(bp, bl, NULL, NULL)) {
					sb_puts(&s, ",\"body\":");
					sb_put(&s, bp, bl);
				}
			}
			sb_putc(&s, '}');
			if (e.iv[F_MODE] == M_GZIP) {
				gzip_stored(&s);
				cenc = "gzip";
			}
			break;
		}
		case M_TEXT:
			ctype = "text/plain; charset=utf-8";
			sb_puts(&s, "plain text for ");
			sb_put(&s, id, idlen);
			break;
		case M_HTML:
			ctype = "text/html; charset=utf-8";
			sb_puts(&s, "<!DOCTYPE html>\n<html><head><title>mock</title>"
			    "</head><body><p>html for ");
			html_escaped(&s, id, idlen);
			sb_puts(&s, "</p></body></html>\n");
			break;
		case M_BADJSON:
			ctype = "application/json";
			sb_puts(&s, "{not json");
			break;
		case M_BADUTF8:
			/* JSON in shape, but an overlong UTF-8 '/' in a string */
			ctype = "application/json";
			sb_puts(&s, "{\"s\":\"a\xc0\xaf" "b\"}");
			break;
		case M_BIG:
			ctype = "application/json";
			big_add(out, (size_t)e.iv[F_BIG]);
			break;
		case M_EMPTY:
			break;
		case M_HANG:
			action = A_HANG;
			break;
		case M_RESET:
			action = A_RESET;
			break;
		}
	}
	if (action == A_SEND) {
		if (e.sv[F_CTYPE])
			ctype = e.sv[F_CTYPE];
		if (ctype)
			evhttp_add_header(oh, "Content-Type", ctype);
		if (cenc)
			evhttp_add_header(oh, "Content-Encoding", cenc);
		if (e.sv[F_RETRY] && (status == 429 || status == 503))
			evhttp_add_header(oh, "Retry-After", e.sv[F_RETRY]);
		if (s.len)
			sb_to_evbuffer(&s, out);
	}
	sb_free(&s);

	/* ---- answer now or later */
	if (action == A_SEND && delay == 0) {
		request_done(seq, gen, status);
		reply(req, status);
	} else {
		park(req, seq, status, action, delay, cap);
	}
out:
	evhttp_clear_headers(&q);
	free(idheap);
}

/* ----------------------------------------------------- control endpoints */

static void ctl_stats(struct evhttp_request *req)
{
	sb_t s;
	bool first = true;

	sb_init(&s);
	sb_puts(&s, "{\"requests\":");
	sb_u64(&s, st.requests);
	sb_puts(&s, ",\"distinct_ids\":");
	sb_u64(&s, g_ids.n);
	sb_puts(&s, ",\"duplicate_ids\":");
	sb_u64(&s, st.duplicate_ids);
	sb_puts(&s, ",\"inflight\":");
	sb_u64(&s, st.inflight);
	sb_puts(&s, ",\"max_inflight\":");
	sb_u64(&s, st.max_inflight);
	inflight_add(0);         /* the area up to now */
	sb_puts(&s, ",\"inflight_area\":");
	sb_double(&s, st.inflight_area);
	sb_puts(&s, ",\"since\":");
	sb_time(&s, st.since_us);
	sb_puts(&s, ",\"now\":");
	sb_time(&s, st.area_us);
	sb_puts(&s, ",\"mean_inflight\":");
	sb_double(&s, st.area_us > st.since_us ?
	    st.inflight_area / ((double)(st.area_us - st.since_us) / 1e6) : 0);
	sb_puts(&s, ",\"capacity\":");
	sb_i64(&s, g_cap.capacity);
	sb_puts(&s, ",\"serving\":");
	sb_u64(&s, g_serving);
	sb_puts(&s, ",\"queued\":");
	sb_u64(&s, g_queued);
	sb_puts(&s, ",\"max_serving\":");
	sb_u64(&s, st.max_serving);
	sb_puts(&s, ",\"max_queued\":");
	sb_u64(&s, st.max_queued);
	sb_puts(&s, ",\"overflowed\":");
	sb_u64(&s, st.overflowed);
	sb_puts(&s, ",\"dropped\":");
	sb_u64(&s, st.dropped);
	sb_puts(&s, ",\"by_status\":{");
	for (int i = 0; i < NSTATUS; i++) {
		if (!st.by_status[i])
			continue;
		if (!first)
			sb_putc(&s, ',');
		first = false;
		sb_putc(&s, '"');
		sb_u64(&s, (uint64_t)i);
		sb_puts(&s, "\":");
		sb_u64(&s, st.by_status[i]);
	}
	sb_puts(&s, "},\"per_second\":{");
	first = true;
	for (size_t i = 0; i < st.per_sec_len; i++) {
		if (!st.per_sec[i])
			continue;
		if (!first)
			sb_putc(&s, ',');
		first = false;
		sb_putc(&s, '"');
		sb_i64(&s, st.per_sec_base + (int64_t)i);
		sb_puts(&s, "\":");
		sb_u64(&s, st.per_sec[i]);
	}
	sb_puts(&s, "},\"by_method\":{");
	first = true;
	for (int i = 0; i < NMETHODS; i++) {
		if (!st.by_method[i])
			continue;
		if (!first)
			sb_putc(&s, ',');
		first = false;
		sb_putc(&s, '"');
		sb_puts(&s, method_names[i]);
		sb_puts(&s, "\":");
		sb_u64(&s, st.by_method[i]);
	}
	sb_puts(&s, "}}\n");
	send_sb(req, 200, &s, "application/json");
}

static void sb_logstr(sb_t *s, const char *p, uint16_t len)
{
	if (len == LOG_STR_NONE)
		sb_puts(s, "null");
	else
		sb_jstr(s, p, len);
}

static void ctl_requests(struct evhttp_request *req, struct evkeyvalq *q)
{
	const char *sv = evhttp_find_header(q, "since");
	const char *lv = evhttp_find_header(q, "limit");
	uint64_t since = 0, limit = REQUESTS_MAX;
	char *end;
	sb_t s;

	if (sv) {
		errno = 0;
		since = strtoull(sv, &end, 10);
		if (!*sv || *end || errno || *sv == '-') {
			send_error(req, 400, "since must be a non-negative integer");
			return;
		}
	}
	if (lv) {
		errno = 0;
		limit = strtoull(lv, &end, 10);
		if (!*lv || *end || errno || *lv == '-') {
			send_error(req, 400, "limit must be a non-negative integer");
			return;
		}
		if (limit > REQUESTS_MAX)
			limit = REQUESTS_MAX;
	}
	uint64_t start = since > ring_oldest() ? since : ring_oldest();
	uint64_t stop = start; /* exclusive */
	if (start <= st.requests) {
		stop = st.requests + 1;
		if (stop - start > limit)
			stop = start + limit;
	}
	sb_init(&s);
	sb_puts(&s, "{\"next\":");
	sb_u64(&s, stop);
	sb_puts(&s, ",\"requests\":[");
	for (uint64_t seq = start; seq < stop; seq++) {
		const logent *e = ring_at(seq);
		const char *b = e->blob;
		if (seq != start)
			sb_putc(&s, ',');
		sb_puts(&s, "{\"seq\":");
		sb_u64(&s, seq);
		sb_puts(&s, ",\"t\":");
		sb_time(&s, e->t_us);
		sb_puts(&s, ",\"done\":");
		if (e->done_us)
			sb_time(&s, e->done_us);
		else
			sb_puts(&s, "null");
		sb_puts(&s, ",\"id\":");
		sb_jstr(&s, e->id->key, e->id->n.klen);
		sb_puts(&s, ",\"method\":\"");
		sb_puts(&s, method_names[e->method]);
		sb_puts(&s, "\",\"path\":");
		sb_jstr(&s, b, e->path_len);
		sb_puts(&s, ",\"status\":");
		if (e->status >= 0)
			sb_i64(&s, e->status);
		else
			sb_puts(&s, "null");
		{
			size_t off = e->path_len;
			for (int k = 0; k < LOG_HDRS; k++) {
				sb_puts(&s, ",\"");
				sb_puts(&s, log_hdr_keys[k]);
				sb_puts(&s, "\":");
				sb_logstr(&s, b + off, e->hlen[k]);
				if (e->hlen[k] != LOG_STR_NONE)
					off += e->hlen[k];
			}
		}
		sb_putc(&s, '}');
	}
	sb_puts(&s, "]}\n");
	send_sb(req, 200, &s, "application/json");
}

static void ctl_ids(struct evhttp_request *req)
{
	sb_t s;
	sb_init(&s);
	sb_putc(&s, '{');
	for (size_t i = 0; i < g_ids.n; i++) {
		const idrec *r = (const idrec *)g_ids.order[i];
		if (i)
			sb_putc(&s, ',');
		sb_jstr(&s, r->key, r->n.klen);
		sb_putc(&s, ':');
		sb_u64(&s, r->count);
	}
	sb_puts(&s, "}\n");
	send_sb(req, 200, &s, "application/json");
}

/* Parse the request body as JSON; empty body gives *out = NULL. */
static int body_json(struct evhttp_request *req, jv **out)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t n = evbuffer_get_length(in);
	const char *err = NULL;
	char msg[128];

	*out = NULL;
	if (n == 0)
		return 0;
	const char *p = (const char *)evbuffer_pullup(in, -1);
	if (!p || !json_parse(p, n, out, &err)) {
		snprintf(msg, sizeof msg, "invalid JSON: %s", err ? err : "?");
		send_error(req, 400, msg);
		return -1;
	}
	return 0;
}

static void ctl_config(struct evhttp_request *req)
{
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	sb_t s;

	if (cmd == EVHTTP_REQ_POST || cmd == EVHTTP_REQ_PUT ||
	    cmd == EVHTTP_REQ_PATCH) {
		jv *body;
		char err[300];
		if (body_json(req, &body))
			return;
		if (body && config_apply(body, err, sizeof err)) {
			jv_free(body);
			send_error(req, 400, err);
			return;
		}
		jv_free(body);
	} else if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		send_error(req, 405, "use GET or POST");
		return;
	}
	sb_init(&s);
	config_json(&s);
	sb_putc(&s, '\n');
	send_sb(req, 200, &s, "application/json");
}

static void ctl_reset(struct evhttp_request *req)
{
	jv *body;
	bool reset_config = false;

	if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
		send_error(req, 405, "use POST");
		return;
	}
	if (body_json(req, &body))
		return;
	if (body && body->t != JT_OBJ) {
		jv_free(body);
		send_error(req, 400, "body must be a JSON object");
		return;
	}
	for (size_t i = 0; body && i < body->n; i++) {
		if (body->klens[i] == 6 && !memcmp(body->keys[i], "config", 6) &&
		    (body->vals[i]->t == JT_BOOL || body->vals[i]->t == JT_NULL)) {
			reset_config = body->vals[i]->b;
			continue;
		}
		char err[256];
		snprintf(err, sizeof err, "unknown key %.*s",
		    (int)(body->klens[i] > 200 ? 200 : body->klens[i]),
		    body->keys[i]);
		jv_free(body);
		send_error(req, 400, err);
		return;
	}
	jv_free(body);
	stats_reset();
	if (reset_config) {
		behav_defaults(&g_cfg);
		idcfg_clear();
		g_cap.capacity = cap_keys[0].def;
		g_cap.queue_max = cap_keys[1].def;
		g_cap.overflow_status = cap_keys[2].def;
		cap_dispatch();
	}
	sb_t s;
	sb_init(&s);
	sb_puts(&s, "{\"ok\":true}\n");
	send_sb(req, 200, &s, "application/json");
}

static void handle_control(struct evhttp_request *req, const char *what,
    const struct evhttp_uri *uri)
{
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
	bool get = cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_HEAD;

	if (!strcmp(what, "config")) {
		ctl_config(req);
	} else if (!strcmp(what, "login")) {
		ctl_login(req);
	} else if (!strcmp(what, "auth")) {
		ctl_auth(req);
	} else if (!strcmp(what, "reset")) {
		ctl_reset(req);
	} else if (!strcmp(what, "stats") || !strcmp(what, "requests") ||
	    !strcmp(what, "ids")) {
		if (!get) {
			send_error(req, 405, "use GET");
		} else if (what[0] == 's') {
			ctl_stats(req);
		} else if (what[0] == 'i') {
			ctl_ids(req);
		} else {
			struct evkeyvalq q;
			const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
			TAILQ_INIT(&q);
			if (query && evhttp_parse_query_str(query, &q) != 0) {
				evhttp_clear_headers(&q);
				send_error(req, 400, "bad query string");
				return;
			}
			ctl_requests(req, &q);
			evhttp_clear_headers(&q);
		}
	} else {
		send_error(req, 404, "unknown control endpoint");
	}
}

static void on_request(struct evhttp_request *req, void *arg)
{
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;

	(void)arg;
	if (!path || !*path)
		path = "/";
	if (strncmp(path, "/_mock/", 7) == 0)
		handle_control(req, path + 7, uri);
	else
		handle_provider(req, path, uri);
}

/* --------------------------------------------------------------- main */

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	event_base_loopbreak(arg);
}

static void on_accept_retry(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	evconnlistener_enable(g_listener);
}

/* accept() failed: on fd exhaustion pause accepting briefly instead of
 * spinning on a listening socket that stays readable. */
static void on_accept_error(struct evconnlistener *lev, void *arg)
{
	int err = EVUTIL_SOCKET_ERROR();
	struct timeval tv = { 0, 100000 };
	(void)arg;
	if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
		evconnlistener_disable(lev);
		event_add(g_accept_retry, &tv);
	}
}

static void raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	rlim_t want = rl.rlim_max;
	if (want == RLIM_INFINITY)
		want = 1048576;
	if (rl.rlim_cur >= want)
		return;
	rl.rlim_cur = want;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0 && want > 1048576) {
		rl.rlim_cur = 1048576;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static int open_listener(const char *host, int port)
{
	struct addrinfo hints, *ai = NULL;
	char portstr[16];
	int fd, one = 1, rc;

	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	snprintf(portstr, sizeof portstr, "%d", port);
	rc = getaddrinfo(host, portstr, &hints, &ai);
	if (rc != 0) {
		fprintf(stderr, "mock_provider: %s: %s\n", host, gai_strerror(rc));
		return -1;
	}
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		perror("mock_provider: socket");
		freeaddrinfo(ai);
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	/* accepted sockets inherit TCP_NODELAY on Linux */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 65535) != 0) {
		fprintf(stderr, "mock_provider: bind %s:%d: %s\n", host, port,
		    strerror(errno));
		close(fd);
		freeaddrinfo(ai);
		return -1;
	}
	freeaddrinfo(ai);
	return fd;
}

static int bound_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
		return -1;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return -1;
}

static void usage(FILE *f)
{
	fputs("usage: mock_provider [--host 127.0.0.1] [--port 0] "
	    "[--config JSON]\n", f);
}

int main(int argc, char **argv)
{
	const char *host = "127.0.0.1", *config = NULL;
	long port = 0;
	struct event *sigterm, *sigint;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = NULL;
		const char *names[] = { "--host", "--port", "--config" };
		int which = -1;
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			return 0;
		}
		for (int k = 0; k < 3; k++) {
			size_t l = strlen(names[k]);
			if (!strncmp(a, names[k], l) && (a[l] == '\0' || a[l] == '=')) {
				which = k;
				v = a[l] == '=' ? a + l + 1 : NULL;
			}
		}
		if (which < 0) {
			fprintf(stderr, "mock_provider: unknown argument %s\n", a);
			usage(stderr);
			return 2;
		}
		if (!v) {
			if (i + 1 >= argc) {
				fprintf(stderr, "mock_provider: %s needs a value\n", a);
				return 2;
			}
			v = argv[++i];
		}
		if (which == 0) {
			host = v;
		} else if (which == 1) {
			char *end;
			port = strtol(v, &end, 10);
			if (!*v || *end || port < 0 || port > 65535) {
				fprintf(stderr, "mock_provider: bad port %s\n", v);
				return 2;
			}
		} else {
			config = v;
		}
	}

	signal(SIGPIPE, SIG_IGN);
	raise_nofile();
	rng_state ^= (uint64_t)now_us() ^ ((uint64_t)getpid() << 32);
	if (!rng_state)
		rng_state = 1;
	behav_defaults(&g_cfg);
	if (config) {
		jv *j = NULL;
		const char *jerr = NULL;
		char err[300];
		if (!json_parse(config, strlen(config), &j, &jerr)) {
			fprintf(stderr, "mock_provider: --config: invalid JSON: %s\n",
			    jerr);
			return 2;
		}
		if (config_apply(j, err, sizeof err)) {
			fprintf(stderr, "mock_provider: --config: %s\n", err);
			jv_free(j);
			return 2;
		}
		jv_free(j);
	}
	g_ring = xcalloc(RING_CAP, sizeof *g_ring);
	st.area_us = st.since_us = now_us();

	/* precise timers: the default coarse monotonic clock has a resolution
	 * of a few ms, which would answer delayed requests slightly early */
	struct event_config *ecfg = event_config_new();
	if (ecfg)
		event_config_set_flag(ecfg, EVENT_BASE_FLAG_PRECISE_TIMER);
	g_base = ecfg ? event_base_new_with_config(ecfg) : NULL;
	if (ecfg)
		event_config_free(ecfg);
	if (!g_base) {
		fputs("mock_provider: event_base_new failed\n", stderr);
		return 1;
	}
	g_evsize = (event_get_struct_event_size() + 15) & ~(size_t)15;
	g_early_close = (event_base_get_features(g_base) &
	    EV_FEATURE_EARLY_CLOSE) != 0;
	g_http = evhttp_new(g_base);
	if (!g_http) {
		fputs("mock_provider: evhttp_new failed\n", stderr);
		return 1;
	}
	evhttp_set_allowed_methods(g_http, EVHTTP_REQ_GET | EVHTTP_REQ_POST |
	    EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
	    EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE | EVHTTP_REQ_PATCH);
	evhttp_set_default_content_type(g_http, NULL);
	evhttp_set_max_body_size(g_http, MAX_BODY);
	evhttp_set_max_headers_size(g_http, MAX_HEADERS);
	evhttp_set_timeout(g_http, 600);
	evhttp_set_gencb(g_http, on_request, NULL);

	int lfd = open_listener(host, (int)port);
	if (lfd < 0)
		return 1;
	g_listener = evconnlistener_new(g_base, NULL, NULL,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, lfd);
	if (!g_listener || !evhttp_bind_listener(g_http, g_listener)) {
		fputs("mock_provider: cannot set up listener\n", stderr);
		return 1;
	}
	evconnlistener_set_error_cb(g_listener, on_accept_error);
	g_accept_retry = evtimer_new(g_base, on_accept_retry, NULL);

	sigterm = evsignal_new(g_base, SIGTERM, on_signal, g_base);
	sigint = evsignal_new(g_base, SIGINT, on_signal, g_base);
	event_add(sigterm, NULL);
	event_add(sigint, NULL);

	printf("PORT=%d\n", bound_port(lfd));
	fflush(stdout);

	event_base_dispatch(g_base);

	/* ---- clean shutdown: evhttp_free closes every connection; waiting
	 * requests are released through on_conn_close. */
	g_stopping = true;
	evhttp_free(g_http);
	while (g_pending.next != &g_pending) /* not expected */
		pend_free(g_pending.next);
	event_free(g_accept_retry);
	event_free(sigterm);
	event_free(sigint);
	event_base_free(g_base);
	libevent_global_shutdown();
	big_unref(g_big);
	ring_clear();
	free(g_ring);
	ids_clear();
	idcfg_clear();
	behav_clear(&g_cfg);
	free(st.per_sec);
	auth_free();
	return 0;
}
