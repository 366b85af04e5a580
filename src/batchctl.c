/*
 * batchctl.c - command-line client for batchd.
 *
 *   batchctl [--url URL] [--token T] [--json] COMMAND [ARGS...]
 *
 * The REST API is spoken with libcurl's easy interface and answers are
 * parsed with yajl.  Blocking calls are fine here: a CLI has nothing else
 * to do while it waits, unlike the daemon's event loop.  `token` talks to
 * PostgreSQL directly with libpq, because issuing the first token cannot go
 * through an API that needs a token.
 *
 * Exit status (documented in --help, relied on by scripts):
 *   0  success
 *   1  the batch ended other than `completed` (submit --wait, watch)
 *   2  bad usage, or an input file that failed local validation; nothing
 *      was sent
 *   3  the server or database answered with an error (any HTTP error status,
 *      401 for a bad token included), the network failed, or the output
 *      could not be written
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <libpq-fe.h>
#include <yajl/yajl_parse.h>
#include <yajl/yajl_tree.h>

#include "batchd/config.h"
#include "batchd/json.h"
#include "batchd/status.h"
#include "batchd/util.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

enum {
	EXIT_OK = 0,
	EXIT_BATCH_FAILED = 1,
	EXIT_USAGE = 2,
	EXIT_SERVER = 3,
};

#define DEFAULT_URL "http://127.0.0.1:8080"

/* Every HTTP call: a dead host must not hang a script for minutes. */
#define CONNECT_TIMEOUT_MS 5000L
#define REQUEST_TIMEOUT_MS 60000L
/* Streams have no total timeout (a big batch takes as long as it takes),
 * but one that stalls below 1 byte/s for this long is given up. */
#define STREAM_STALL_S 60L
/* Buffered (non-streamed) answers are capped so a broken or hostile server
 * cannot make the client eat all memory. */
#define REPLY_MAX ((size_t)64 << 20)
/* One NDJSON line of /results (an item with its payload and result). */
#define LINE_MAX_BYTES ((size_t)128 << 20)
/* Error bodies are only shown to a human: keep the first bit. */
#define ERROR_BODY_MAX ((size_t)64 << 10)
/* Items per page when `results --status` pages the items endpoint: each
 * page is buffered (under REPLY_MAX), and items can carry big results. */
#define ITEMS_PAGE 200
/* watch: how long to keep retrying after the server went away mid-watch. */
#define WATCH_GRACE_MS 30000

/* ------------------------------------------------------------ context */

typedef struct Ctl {
	const char *url_opt;    /* --url (else BATCHD_URL, else DEFAULT_URL) */
	const char *token_opt;  /* --token (else BATCHD_TOKEN) */
	char *url;              /* base URL without trailing '/' (owned) */
	const char *token;
	bool json;
	CURL *curl;             /* one handle for the whole run: keep-alive */
	char errbuf[CURL_ERROR_SIZE];
} Ctl;

typedef struct Command Command;
struct Command {
	const char *name;
	int (*run)(Ctl *ctl, const Command *cmd, int argc, char **argv);
	const char *usage;      /* synopsis after "batchctl " */
	const char *help;       /* the rest of --help */
};

/* ------------------------------------------------------------ messages */

static void msg_error(const char *fmt, ...) _PRINTF(1, 2);
static void msg_error(const char *fmt, ...)
{
	va_list ap;

	fputs("batchctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static int usage_error(const Command *cmd, const char *fmt, ...) _PRINTF(2, 3);
static int usage_error(const Command *cmd, const char *fmt, ...)
{
	va_list ap;

	fputs("batchctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (cmd) {
		fprintf(stderr, "usage: batchctl %s\n", cmd->usage);
		fprintf(stderr, "Try 'batchctl %s --help'.\n", cmd->name);
	} else {
		fputs("usage: batchctl [--url URL] [--token TOKEN] [--json] COMMAND [ARGS...]\n"
		      "Try 'batchctl --help'.\n", stderr);
	}
	return EXIT_USAGE;
}

/*
 * Write all of buf to stdout.  A failure (disk full, closed pipe with
 * SIGPIPE ignored by someone up the chain) is reported once and makes the
 * command fail: silently truncated output is worse than an error.
 */
static bool out_write(const void *buf, size_t len)
{
	if (len && fwrite(buf, 1, len, stdout) != len) {
		msg_error("cannot write output: %s", strerror(errno));
		return false;
	}
	return true;
}

/* Flush stdout and turn a late write error into the exit status. */
static int out_finish(int rc)
{
	if (fflush(stdout) != 0 || ferror(stdout)) {
		msg_error("cannot write output: %s", strerror(errno));
		return rc == EXIT_OK ? EXIT_SERVER : rc;
	}
	return rc;
}

/* Print a server answer as is (--json), with exactly one final newline. */
static void out_body(const StrBuf *body)
{
	size_t len = body->len;

	while (len && (body->data[len - 1] == '\n' || body->data[len - 1] == '\r'))
		len--;
	if (out_write(body->data, len))
		out_write("\n", 1);
}

/* ------------------------------------------------------------ JSON access */

/* Member key of object v, or NULL (also when v is not an object). */
static yajl_val jv_get(yajl_val v, const char *key)
{
	size_t i;

	if (!v || !YAJL_IS_OBJECT(v))
		return NULL;
	for (i = 0; i < v->u.object.len; i++)
		if (strcmp(v->u.object.keys[i], key) == 0)
			return v->u.object.values[i];
	return NULL;
}

static const char *jv_str(yajl_val v, const char *key)
{
	yajl_val m = jv_get(v, key);

	return m && YAJL_IS_STRING(m) ? m->u.string : NULL;
}

/* Integer member; def when missing, null or not a number. */
static int64_t jv_int(yajl_val v, const char *key, int64_t def)
{
	yajl_val m = jv_get(v, key);

	if (m && YAJL_IS_INTEGER(m))
		return m->u.number.i;
	/* a fraction is truncated; out of range (where the cast would be
	 * undefined) counts as missing */
	if (m && YAJL_IS_DOUBLE(m) && m->u.number.d > -9e18 && m->u.number.d < 9e18)
		return (int64_t)m->u.number.d;
	return def;
}

static double jv_double(yajl_val v, const char *key, double def)
{
	yajl_val m = jv_get(v, key);

	if (m && YAJL_IS_DOUBLE(m))
		return m->u.number.d;
	if (m && YAJL_IS_INTEGER(m))
		return (double)m->u.number.i;
	return def;
}

/*
 * Append a scalar as plain text for tables and CSV: strings unquoted,
 * numbers as the server wrote them, null/missing as nothing; objects and
 * arrays as compact JSON.
 */
static void jv_append_text(StrBuf *sb, yajl_val v)
{
	if (!v || YAJL_IS_NULL(v))
		return;
	if (YAJL_IS_STRING(v))
		sb_puts(sb, v->u.string);
	else if (YAJL_IS_NUMBER(v))
		sb_puts(sb, YAJL_GET_NUMBER(v));
	else if (YAJL_IS_TRUE(v))
		sb_puts(sb, "true");
	else if (YAJL_IS_FALSE(v))
		sb_puts(sb, "false");
	else
		json_append_value(sb, v);
}

/* Parse a server answer; on failure report it as a server error. */
static yajl_val jv_parse(const StrBuf *body)
{
	char err[256];
	yajl_val v;

	err[0] = '\0';
	v = yajl_tree_parse(body->data ? body->data : "", err, sizeof(err));
	if (!v) {
		err[strcspn(err, "\n")] = '\0';  /* yajl adds the text and a caret */
		msg_error("malformed answer from server: %s", err[0] ? err : "not JSON");
	}
	return v;
}

/* ------------------------------------------------------------ small parsers */

static bool is_uuid(const char *s)
{
	static const int dash[] = { 8, 13, 18, 23 };
	size_t i, d = 0;

	if (strlen(s) != 36)
		return false;
	for (i = 0; i < 36; i++) {
		if (d < ARRAY_SIZE(dash) && (int)i == dash[d]) {
			if (s[i] != '-')
				return false;
			d++;
		} else if (!isxdigit((unsigned char)s[i])) {
			return false;
		}
	}
	return true;
}

/* A token travels in a header: refuse anything that could break out of it. */
static bool token_ok(const char *t)
{
	if (!*t)
		return false;
	for (; *t; t++)
		if ((unsigned char)*t <= 0x20 || *t == 0x7f)
			return false;
	return true;
}

/*
 * Parse an RFC 3339 timestamp as the API writes it (also PostgreSQL's
 * "2026-01-02 03:04:05.123+00") into seconds since the epoch.
 */
static bool parse_ts(const char *s, double *out) _MUSTCHECK;
static bool parse_ts(const char *s, double *out)
{
	struct tm tm;
	int y, mo, d, h, mi, sec, n = 0, off = 0;
	double frac = 0;
	const char *p;
	time_t t;

	if (!s || sscanf(s, "%4d-%2d-%2d%*1[T ]%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec,
			 &n) != 6 || n == 0)
		return false;
	p = s + n;
	if (*p == '.') {
		double scale = 0.1;

		for (p++; isdigit((unsigned char)*p); p++, scale /= 10)
			frac += (*p - '0') * scale;
	}
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if (*p == '+' || *p == '-') {
		int sign = *p == '-' ? -1 : 1, oh = 0, om = 0;

		if (!isdigit((unsigned char)p[1]) || !isdigit((unsigned char)p[2]))
			return false;
		oh = (p[1] - '0') * 10 + (p[2] - '0');
		p += 3;
		if (*p == ':')
			p++;
		if (isdigit((unsigned char)p[0]) && isdigit((unsigned char)p[1])) {
			om = (p[0] - '0') * 10 + (p[1] - '0');
			p += 2;
		}
		off = sign * (oh * 3600 + om * 60);
	} else {
		return false;
	}
	if (*p)
		return false;
	memset(&tm, 0, sizeof(tm));
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = d;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = sec;
	t = timegm(&tm);
	*out = (double)t - off + frac;
	return true;
}

/* "2026-11-23T01:02:03.123456Z" -> "2026-11-23T01:02:03Z": tables have no
 * room for microseconds. */
static void ts_short(StrBuf *sb, const char *ts)
{
	const char *dot;

	if (!ts) {
		sb_putc(sb, '-');
		return;
	}
	dot = strchr(ts, '.');
	if (!dot) {
		sb_puts(sb, ts);
		return;
	}
	sb_append(sb, ts, (size_t)(dot - ts));
	for (dot++; isdigit((unsigned char)*dot); dot++)
		;
	sb_puts(sb, dot);
}

/* Seconds as "45s", "3m04s", "2h05m", "3d04h". */
static void fmt_duration(StrBuf *sb, double secs)
{
	int64_t s;

	if (!(secs >= 0) || secs > 1e12) {
		sb_putc(sb, '-');
		return;
	}
	s = (int64_t)(secs + 0.5);
	if (s < 60)
		sb_printf(sb, "%" PRId64 "s", s);
	else if (s < 3600)
		sb_printf(sb, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
	else if (s < 86400)
		sb_printf(sb, "%" PRId64 "h%02" PRId64 "m", s / 3600, s % 3600 / 60);
	else
		sb_printf(sb, "%" PRId64 "d%02" PRId64 "h", s / 86400, s % 86400 / 3600);
}

/* ------------------------------------------------------------ tables */

#define TABLE_MAX_COLS 9

typedef struct Table {
	size_t ncols;
	const char *const *head;
	unsigned right;         /* bit i set: right-align column i */
	char **cells;           /* nrows * ncols strings, owned */
	size_t nrows, cap;
} Table;

static void table_init(Table *t, const char *const *head, size_t ncols, unsigned right)
{
	memset(t, 0, sizeof(*t));
	t->head = head;
	t->ncols = ncols < TABLE_MAX_COLS ? ncols : TABLE_MAX_COLS;
	t->right = right;
}

/*
 * Control characters from server data become '?': a batch name must not
 * be able to move the cursor or clear the screen of whoever lists batches.
 */
static void sanitize(char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			*s = '?';
}

/* Add a row of ncols strings (ownership taken). */
static void table_add(Table *t, char **row)
{
	size_t i;

	if (t->nrows == t->cap) {
		t->cap = t->cap ? t->cap * 2 : 16;
		t->cells = xrealloc(t->cells, t->cap * t->ncols * sizeof(*t->cells));
	}
	for (i = 0; i < t->ncols; i++) {
		sanitize(row[i]);
		t->cells[t->nrows * t->ncols + i] = row[i];
	}
	t->nrows++;
}

static void table_print(const Table *t)
{
	size_t w[TABLE_MAX_COLS], r, c;
	StrBuf line;

	for (c = 0; c < t->ncols; c++)
		w[c] = utf8_count(t->head[c], strlen(t->head[c]));
	for (r = 0; r < t->nrows; r++)
		for (c = 0; c < t->ncols; c++) {
			const char *cell = t->cells[r * t->ncols + c];
			size_t cw = utf8_count(cell, strlen(cell));

			if (cw > w[c])
				w[c] = cw;
		}
	sb_init(&line);
	for (r = 0; r <= t->nrows; r++) {
		sb_reset(&line);
		for (c = 0; c < t->ncols; c++) {
			const char *cell = r == 0 ? t->head[c] : t->cells[(r - 1) * t->ncols + c];
			size_t pad = w[c] - utf8_count(cell, strlen(cell)), i;

			if (c)
				sb_puts(&line, "  ");
			if (t->right & (1u << c))
				for (i = 0; i < pad; i++)
					sb_putc(&line, ' ');
			sb_puts(&line, cell);
			if (!(t->right & (1u << c)) && c + 1 < t->ncols)
				for (i = 0; i < pad; i++)
					sb_putc(&line, ' ');
		}
		while (line.len && line.data[line.len - 1] == ' ')
			line.len--;
		sb_putc(&line, '\n');
		if (!out_write(line.data, line.len))
			break;
	}
	sb_free(&line);
}

static void table_free(Table *t)
{
	size_t i;

	for (i = 0; i < t->nrows * t->ncols; i++)
		free(t->cells[i]);
	free(t->cells);
}

/* A table cell from a JSON member (plain text, "-" when missing, null
 * or empty). */
static char *cell_of(yajl_val obj, const char *key)
{
	yajl_val v = jv_get(obj, key);
	StrBuf sb;

	sb_init(&sb);
	jv_append_text(&sb, v);
	if (sb.len == 0)
		sb_putc(&sb, '-');
	return sb_steal(&sb);
}

/* Cut a cell to max code points, "..." marking the cut: one long batch
 * name must not push every other column off the screen. */
static char *cell_clip(char *s, size_t max)
{
	size_t cps = 0;
	char *p;

	if (utf8_count(s, strlen(s)) <= max)
		return s;
	for (p = s; *p; p++) {
		if (((unsigned char)*p & 0xC0) != 0x80 && cps++ == max - 3)
			break;
	}
	memcpy(p, "...", 4);    /* at least 3 bytes were cut, so it fits */
	return s;
}

/* ------------------------------------------------------------ HTTP */

/* curl_slist_append returns NULL only when out of memory (and then
 * leaks the list): like xmalloc, give up. */
static struct curl_slist *hdr_add(struct curl_slist *list, const char *h)
{
	struct curl_slist *l = curl_slist_append(list, h);

	if (!l) {
		msg_error("out of memory");
		abort();
	}
	return l;
}

/* watch retries quietly: the transfer error is kept here instead of shown */
static bool g_quiet;
static char g_lasterr[CURL_ERROR_SIZE + 256];

/* Buffered answer, capped at REPLY_MAX. */
static size_t ctl_collect_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
	StrBuf *body = ud;
	size_t n = size * nmemb;

	if (body->len + n > REPLY_MAX) {
		snprintf(g_lasterr, sizeof(g_lasterr), "answer from server larger than %zu MB",
			 REPLY_MAX >> 20);
		if (!g_quiet)
			msg_error("%s", g_lasterr);
		return 0;       /* aborts the transfer with CURLE_WRITE_ERROR */
	}
	sb_append(body, ptr, n);
	return n;
}

/*
 * Perform one request.  Returns the HTTP status of the answer (whatever it
 * is), or -1 when no answer arrived: the reason is then in g_lasterr and
 * was printed unless g_quiet.  A write callback that aborts the transfer
 * reports its own reason.  body (may be NULL) is sent with POST.
 */
static long ctl_perform(Ctl *ctl, const char *method, const char *path, const StrBuf *body,
			const char *idem_key, bool stream, curl_write_callback cb, void *cb_data)
{
	CURL *c = ctl->curl;
	struct curl_slist *hdrs = NULL;
	StrBuf url, hdr;
	CURLcode rc;
	long status = -1;

	sb_init(&url);
	sb_init(&hdr);
	sb_printf(&url, "%s%s", ctl->url, path);

	/* reset, not a new handle: the connection cache stays (keep-alive
	 * across the polls of watch and the pages of results) */
	curl_easy_reset(c);
	ctl->errbuf[0] = '\0';
	curl_easy_setopt(c, CURLOPT_URL, url.data);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, ctl->errbuf);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(c, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	/* no redirects (the default), said here on purpose: following one
	 * would hand the bearer token to wherever it points */
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, CONNECT_TIMEOUT_MS);
	if (stream) {
		curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
		curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, STREAM_STALL_S);
	} else {
		curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, REQUEST_TIMEOUT_MS);
	}
	curl_easy_setopt(c, CURLOPT_USERAGENT, "batchctl/" PACKAGE_VERSION);

	sb_printf(&hdr, "Authorization: Bearer %s", ctl->token);
	hdrs = hdr_add(hdrs, hdr.data);
	hdrs = hdr_add(hdrs, stream ? "Accept: application/x-ndjson, application/json" :
				 "Accept: application/json");
	if (strcmp(method, "POST") == 0) {
		curl_easy_setopt(c, CURLOPT_POST, 1L);
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body && body->data ? body->data : "");
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE,
				 (curl_off_t)(body ? body->len : 0));
		hdrs = hdr_add(hdrs, "Content-Type: application/json");
		/* curl waits up to 1 s for "100 Continue" before sending a big
		 * body; the API answers after reading the body anyway */
		hdrs = hdr_add(hdrs, "Expect:");
	} else if (strcmp(method, "GET") != 0) {
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	}
	if (idem_key) {
		sb_reset(&hdr);
		sb_printf(&hdr, "Idempotency-Key: %s", idem_key);
		hdrs = hdr_add(hdrs, hdr.data);
	}
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, cb);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, cb_data);

	rc = curl_easy_perform(c);
	if (rc == CURLE_OK) {
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	} else if (rc != CURLE_WRITE_ERROR) {
		snprintf(g_lasterr, sizeof(g_lasterr), "%s %s: %s", method, url.data,
			 ctl->errbuf[0] ? str_trim(ctl->errbuf) : curl_easy_strerror(rc));
		if (!g_quiet)
			msg_error("%s", g_lasterr);
	}
	curl_slist_free_all(hdrs);
	sb_free(&hdr);
	sb_free(&url);
	return status;
}

/*
 * Report an HTTP error answer as "batchctl: <server message> (HTTP 404)".
 * The API's errors are {"error":{"code","message"}}; anything else (a proxy's
 * HTML page, say) is shown as its first line.
 */
static void report_http_error(long status, const StrBuf *body)
{
	char err[128], *text = NULL;
	yajl_val v = NULL;
	const char *msg, *code;

	if (body->data && body->len)
		v = yajl_tree_parse(body->data, err, sizeof(err));
	msg = jv_str(jv_get(v, "error"), "message");
	if (msg)
		text = xstrdup(msg);
	else if (body->data && body->len)
		text = xstrndup(body->data, strcspn(body->data, "\r\n") > 200 ? 200 :
				strcspn(body->data, "\r\n"));
	if (text && *text) {
		sanitize(text);         /* it goes to a terminal */
		msg_error("%s (HTTP %ld)", text, status);
	} else {
		msg_error("server answered HTTP %ld", status);
	}
	if (status == 401)
		msg_error("hint: check --token or BATCHD_TOKEN "
			  "(new tokens: batchctl token create)");
	code = jv_str(jv_get(v, "error"), "code");
	if (code && strcmp(code, "idempotency_key_reused") == 0)
		msg_error("hint: a different batch needs a new --idempotency-key");
	if (code && strcmp(code, "retry_limit_reached") == 0)
		msg_error("hint: batchctl results --status failed --format csv ID writes its "
			  "failed items; submit them as a new batch");
	free(text);
	yajl_tree_free(v);
}

/*
 * One buffered request.  EXIT_OK when a 2xx answer is in *body; otherwise
 * the problem has been reported and the result is EXIT_SERVER.  *status
 * (may be NULL) gets the HTTP status, -1 when no answer arrived.
 */
static int api_call(Ctl *ctl, const char *method, const char *path, const StrBuf *req,
		    const char *idem_key, StrBuf *body, long *status_out)
{
	long status;

	sb_reset(body);
	status = ctl_perform(ctl, method, path, req, idem_key, false, ctl_collect_cb, body);
	if (status_out)
		*status_out = status;
	if (status < 0)
		return EXIT_SERVER;
	if (!body->data)
		sb_puts(body, "");     /* callers may rely on a string */
	if (status < 200 || status > 299) {
		if (!g_quiet)
			report_http_error(status, body);
		return EXIT_SERVER;
	}
	return EXIT_OK;
}

/* GET path and parse the JSON answer; NULL when anything failed (reported). */
static yajl_val api_get_json(Ctl *ctl, const char *path, StrBuf *body)
{
	if (api_call(ctl, "GET", path, NULL, NULL, body, NULL) != EXIT_OK)
		return NULL;
	return jv_parse(body);
}

/*
 * Resolve the URL and token (options win over the environment) and make
 * the curl handle.  Called by each API command after its options are
 * parsed, because --url and --token may also follow the command name.
 */
static int ctl_ready(Ctl *ctl, const Command *cmd) _MUSTCHECK;
static int ctl_ready(Ctl *ctl, const Command *cmd)
{
	const char *url = ctl->url_opt ? ctl->url_opt : getenv("BATCHD_URL");
	const char *token = ctl->token_opt ? ctl->token_opt : getenv("BATCHD_TOKEN");
	size_t len;

	if (!url || !*url)
		url = DEFAULT_URL;
	if (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0)
		return usage_error(cmd, "the API URL must start with http:// or https:// "
				   "(got '%s')", url);
	if (!token || !*token)
		return usage_error(cmd, "no API token: pass --token TOKEN or set BATCHD_TOKEN");
	if (!token_ok(token))
		return usage_error(cmd, "the API token contains spaces or control characters");
	len = strlen(url);
	while (len > 0 && url[len - 1] == '/')
		len--;
	ctl->url = xstrndup(url, len);
	ctl->token = token;
	ctl->curl = curl_easy_init();
	if (!ctl->curl) {
		msg_error("cannot initialise libcurl");
		return EXIT_SERVER;
	}
	return EXIT_OK;
}

/* ------------------------------------------------------------ options */

enum {
	OPT_HANDLED = -1,
	/* long-only options; short ones use their letter */
	OPT_URL = 0x100, OPT_TOKEN, OPT_JSON, OPT_ROUTE, OPT_NAME, OPT_PRIORITY,
	OPT_MAX_ATTEMPTS, OPT_GROUP_KEY, OPT_IDEM_KEY, OPT_METADATA, OPT_FORMAT, OPT_WAIT,
	OPT_INTERVAL, OPT_STATUS, OPT_LIMIT, OPT_CURSOR, OPT_TENANT, OPT_DATABASE, OPT_ID,
};

/* Accepted before and after the command name. */
#define COMMON_OPTS \
	{ "url", required_argument, NULL, OPT_URL }, \
	{ "token", required_argument, NULL, OPT_TOKEN }, \
	{ "json", no_argument, NULL, OPT_JSON }, \
	{ "help", no_argument, NULL, 'h' }

static void cmd_help(const Command *cmd, FILE *f)
{
	fprintf(f, "usage: batchctl [--url URL] [--token TOKEN] [--json] %s\n\n%s", cmd->usage,
		cmd->help);
	fputs("\nCommon options (before or after the command):\n"
	      "  --url URL      API base URL (env BATCHD_URL, default " DEFAULT_URL ")\n"
	      "  --token TOKEN  API token (env BATCHD_TOKEN; prefer the environment: a\n"
	      "                 command line is visible to other users in ps)\n"
	      "  --json         print the server's JSON instead of text\n"
	      "  -h, --help     this help\n"
	      "\nExit status: 0 ok; 1 the batch did not end 'completed' (submit --wait,\n"
	      "watch); 2 bad usage or invalid input file (nothing sent); 3 error answer\n"
	      "from the server or database (including HTTP 401 for a bad token and 404\n"
	      "for an unknown batch), network error, or output write error.\n", f);
}

/*
 * Handle an option every command takes, or a getopt error.  OPT_HANDLED
 * to go on parsing; otherwise the exit status (help shown: 0, error: 2).
 */
static int opt_common(Ctl *ctl, const Command *cmd, int c, char **argv)
{
	switch (c) {
	case OPT_URL:
		ctl->url_opt = optarg;
		return OPT_HANDLED;
	case OPT_TOKEN:
		ctl->token_opt = optarg;
		return OPT_HANDLED;
	case OPT_JSON:
		ctl->json = true;
		return OPT_HANDLED;
	case 'h':
		cmd_help(cmd, stdout);
		return EXIT_OK;
	case ':':
		return usage_error(cmd, "option '%s' needs a value", argv[optind - 1]);
	case '?':
		if (optopt)
			return usage_error(cmd, "unknown option '-%c'", optopt);
		return usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
	default:
		return usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
	}
}

/*
 * Options may stand before or after the command name (and, for "token",
 * before or after its create/revoke): the command line is reordered so that
 * the command comes first and its own parser, which permutes, reads every
 * option wherever it stood. To find the operands, the options that take a
 * value (as "--opt VALUE") must be known: every command's, here. A test
 * (test_batchctl.py) checks that this list matches the option tables.
 */
static const char *const value_options[] = {
	"config", "cursor", "database", "format", "group-key", "id", "idempotency-key",
	"interval", "limit", "max-attempts", "metadata", "name", "priority", "route",
	"status", "tenant", "token", "url", NULL,
};

/* The short options that take a value (as "-c VALUE"; "-cVALUE" holds it). */
static const char short_value_options[] = "c";

static bool option_takes_value(const char *arg)
{
	if (arg[0] == '-' && arg[1] && arg[1] != '-' && !arg[2])
		return strchr(short_value_options, arg[1]) != NULL;
	if (arg[0] != '-' || arg[1] != '-' || strchr(arg, '='))
		return false;
	return str_in_list(arg + 2, value_options);
}

/* Index of the first operand in argv[from..argc), or -1; "--" ends the
 * options, "-" is an operand. */
static int first_operand(int argc, char **argv, int from)
{
	for (int i = from; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--") == 0)
			return i + 1 < argc ? i + 1 : -1;
		if (a[0] != '-' || a[1] == '\0')
			return i;
		if (option_takes_value(a))
			i++;
	}
	return -1;
}

/* Move argv[k] to argv[at] (at <= k), shifting argv[at..k-1] up by one. */
static void argv_move(char **argv, int k, int at)
{
	char *a = argv[k];

	memmove(&argv[at + 1], &argv[at], (size_t)(k - at) * sizeof(*argv));
	argv[at] = a;
}

/* Start option parsing of a command's argv (argv[0] is the command name). */
static void opt_begin(void)
{
	optind = 0;     /* glibc: 0 re-initialises, including the permutation state */
	opterr = 0;     /* errors are reported by opt_common, with the usage line */
}

static int opt_int(const Command *cmd, const char *name, const char *s, int64_t min, int64_t max,
		   int64_t *out)
{
	if (parse_int(s, min, max, out) < 0)
		return usage_error(cmd, "%s must be an integer from %" PRId64 " to %" PRId64
				   " (got '%s')", name, min, max, s);
	return OPT_HANDLED;
}

/* --interval: a duration ("500ms", "2s"), at least 100 ms. */
static int opt_interval(const Command *cmd, const char *s, int64_t *ms)
{
	if (parse_duration_ms(s, ms) < 0 || *ms < 100 || *ms > 3600000)
		return usage_error(cmd, "--interval must be a duration from 100ms to 1h "
				   "(got '%s')", s);
	return OPT_HANDLED;
}

static int opt_batch_id(const Command *cmd, int argc, char **argv, const char **id)
{
	if (optind >= argc)
		return usage_error(cmd, "missing batch ID");
	if (optind + 1 < argc)
		return usage_error(cmd, "unexpected argument '%s'", argv[optind + 1]);
	if (!is_uuid(argv[optind]))
		return usage_error(cmd, "'%s' is not a batch ID (a UUID)", argv[optind]);
	*id = argv[optind];
	return OPT_HANDLED;
}

/* ------------------------------------------------------------ input files */

enum InFormat { IN_AUTO, IN_JSONL, IN_CSV };

/* Items being collected into the request body: "obj,obj,...". */
typedef struct Items {
	StrBuf json;
	size_t count;
} Items;

/* The whole input in memory: the request body holds it all anyway. */
static int input_read(const char *path, StrBuf *out) _MUSTCHECK;
static int input_read(const char *path, StrBuf *out)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
	char chunk[65536];
	size_t n;
	int rc = 0;

	if (!f) {
		msg_error("%s: %s", path, strerror(errno));
		return -1;
	}
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		sb_append(out, chunk, n);
	if (ferror(f)) {
		msg_error("%s: %s", path, strerror(errno));
		rc = -1;
	}
	if (f != stdin)
		fclose(f);
	if (!out->data)
		sb_puts(out, "");
	return rc;
}

/* Length of a UTF-8 byte order mark at the start, which spreadsheet
 * programs like to write and which is not part of the first field. */
static size_t input_bom(const char *data, size_t len)
{
	return len >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;
}

static bool input_blank(const char *data, size_t len)
{
	size_t i;

	for (i = input_bom(data, len); i < len; i++)
		if (!isspace((unsigned char)data[i]))
			return false;
	return true;
}

/* First non-space character '{' means JSON Lines, anything else CSV. */
static enum InFormat input_sniff(const char *data, size_t len)
{
	size_t i;

	for (i = input_bom(data, len); i < len; i++)
		if (!isspace((unsigned char)data[i]))
			return data[i] == '{' ? IN_JSONL : IN_CSV;
	return IN_CSV;
}

/*
 * Escapes that JSON allows but PostgreSQL's jsonb refuses: \u0000 and an
 * unpaired UTF-16 surrogate.  The server would refuse the whole batch
 * naming items[N]; here the message can name the line.  Same scan as
 * json.c's check on provider bodies: in valid JSON a backslash only occurs
 * in strings, so a flat left-to-right walk over escapes is exact.
 */
static const char *jsonl_bad_escape(const char *s, size_t len)
{
	size_t i = 0;

	while (i + 1 < len) {
		unsigned cp = 0, lo = 0;

		if (s[i] != '\\') {
			i++;
			continue;
		}
		if (s[i + 1] != 'u') {
			i += 2;
			continue;
		}
		if (i + 6 > len || sscanf(s + i + 2, "%4x", &cp) != 1)
			return NULL;    /* cannot happen: the line is valid JSON */
		i += 6;
		if (cp == 0)
			return "\\u0000 is not allowed (PostgreSQL cannot store it)";
		if (cp >= 0xDC00 && cp <= 0xDFFF)
			return "unpaired UTF-16 surrogate escape (\\uDC00-\\uDFFF)";
		if (cp >= 0xD800 && cp <= 0xDBFF) {
			if (i + 6 > len || s[i] != '\\' || s[i + 1] != 'u' ||
			    sscanf(s + i + 2, "%4x", &lo) != 1 || lo < 0xDC00 || lo > 0xDFFF)
				return "unpaired UTF-16 surrogate escape (\\uD800-\\uDBFF)";
			i += 6;
		}
	}
	return NULL;
}

/* Check one JSON Lines line: exactly one JSON object.  NULL when fine,
 * else the problem, written to err. */
static const char *jsonl_check(const char *line, size_t len, char *err, size_t errlen)
{
	yajl_handle h = yajl_alloc(NULL, NULL, NULL);
	yajl_status st;
	const char *bad;

	if (!h) {
		msg_error("out of memory");
		abort();
	}
	st = yajl_parse(h, (const unsigned char *)line, len);
	if (st != yajl_status_ok) {
		unsigned char *msg = yajl_get_error(h, 0, NULL, 0);

		snprintf(err, errlen, "invalid JSON near column %zu: %s",
			 yajl_get_bytes_consumed(h) + 1, str_trim((char *)msg));
		yajl_free_error(h, msg);
		yajl_free(h);
		return err;
	}
	if (yajl_complete_parse(h) != yajl_status_ok) {
		unsigned char *msg = yajl_get_error(h, 0, NULL, 0);

		/* the line ended inside the value: no column to point at */
		snprintf(err, errlen, "invalid JSON: %s (a JSON Lines record must fit on "
			 "one line)", str_trim((char *)msg));
		yajl_free_error(h, msg);
		yajl_free(h);
		return err;
	}
	yajl_free(h);
	if (line[0] != '{') {
		const char *what = line[0] == '[' ? "an array" : line[0] == '"' ? "a string" :
			line[0] == 'n' ? "null" : line[0] == 't' || line[0] == 'f' ? "a boolean" :
			"a number";

		snprintf(err, errlen, "each line must be a JSON object, this one is %s", what);
		return err;
	}
	bad = jsonl_bad_escape(line, len);
	if (bad)
		snprintf(err, errlen, "%s", bad);
	return bad ? err : NULL;
}

/* JSON Lines: one object per line, blank lines skipped, kept verbatim. */
static int input_jsonl(const char *name, const char *data, size_t len, Items *it) _MUSTCHECK;
static int input_jsonl(const char *name, const char *data, size_t len, Items *it)
{
	size_t pos = input_bom(data, len);
	long lineno = 0;
	char err[512];

	while (pos < len) {
		const char *line = data + pos, *nl = memchr(line, '\n', len - pos);
		size_t n = nl ? (size_t)(nl - line) : len - pos;

		pos += n + (nl ? 1 : 0);
		lineno++;
		while (n && isspace((unsigned char)line[n - 1]))
			n--;
		while (n && isspace((unsigned char)*line)) {
			line++;
			n--;
		}
		if (!n)
			continue;
		if (jsonl_check(line, n, err, sizeof(err))) {
			msg_error("%s:%ld: %s", name, lineno, err);
			return -1;
		}
		if (it->count++)
			sb_putc(&it->json, ',');
		sb_append(&it->json, line, n);
	}
	return 0;
}

/*
 * RFC 4180 CSV reader over a buffer: fields separated by ',', records by
 * CRLF or LF, fields in double quotes may hold ',', CR, LF and '""' for a
 * quote.  Strict on purpose (a stray quote is an error, not data): a
 * mangled file should stop with its line number, not submit shifted
 * columns.
 */
typedef struct Csv {
	const char *p, *end;
	long line;              /* physical line at p, 1-based */
	StrBuf buf;             /* fields of the current record, NUL-separated */
	size_t *off, *len;      /* field i: buf.data + off[i], len[i] bytes */
	size_t n, cap;
	bool first_quoted;      /* tells `""` (one empty field) from a blank line */
	long err_line;
	char err[160];
} Csv;

static void csv_init(Csv *c, const char *data, size_t len)
{
	memset(c, 0, sizeof(*c));
	c->p = data;
	c->end = data + len;
	c->line = 1;
	sb_init(&c->buf);
}

static void csv_free(Csv *c)
{
	sb_free(&c->buf);
	free(c->off);
	free(c->len);
}

static void csv_field_begin(Csv *c)
{
	if (c->n == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 16;
		c->off = xrealloc(c->off, c->cap * sizeof(*c->off));
		c->len = xrealloc(c->len, c->cap * sizeof(*c->len));
	}
	c->off[c->n] = c->buf.len;
	c->n++;
}

static void csv_field_end(Csv *c)
{
	c->len[c->n - 1] = c->buf.len - c->off[c->n - 1];
	sb_putc(&c->buf, '\0');
}

static bool csv_at_eol(const Csv *c)
{
	return *c->p == '\n' || (*c->p == '\r' && (c->p + 1 == c->end || c->p[1] == '\n'));
}

static void csv_skip_eol(Csv *c)
{
	if (*c->p == '\r')
		c->p++;
	if (c->p < c->end && *c->p == '\n')
		c->p++;
	c->line++;
}

static const char *csv_field(const Csv *c, size_t i)
{
	return c->buf.data + c->off[i];
}

static int csv_fail(Csv *c, long line, const char *msg)
{
	c->err_line = line;
	snprintf(c->err, sizeof(c->err), "%s", msg);
	return -1;
}

/* Read the next record: 1, 0 at the end, -1 on an error (c->err). */
static int csv_next(Csv *c, long *rec_line) _MUSTCHECK;
static int csv_next(Csv *c, long *rec_line)
{
	if (c->p >= c->end)
		return 0;
	*rec_line = c->line;
	sb_reset(&c->buf);
	c->n = 0;
	c->first_quoted = false;
	for (;;) {
		csv_field_begin(c);
		if (c->p < c->end && *c->p == '"') {
			long open = c->line;

			if (c->n == 1)
				c->first_quoted = true;
			c->p++;
			for (;;) {
				char ch;

				if (c->p >= c->end)
					return csv_fail(c, open, "unterminated quoted field: the "
							"file ends before its closing quote");
				ch = *c->p++;
				if (ch == '"') {
					if (c->p < c->end && *c->p == '"') {
						sb_putc(&c->buf, '"');
						c->p++;
						continue;
					}
					break;
				}
				if (ch == '\n')
					c->line++;
				sb_putc(&c->buf, ch);
			}
			csv_field_end(c);
			if (c->p >= c->end)
				return 1;
			if (*c->p == ',') {
				c->p++;
				continue;
			}
			if (csv_at_eol(c)) {
				csv_skip_eol(c);
				return 1;
			}
			return csv_fail(c, c->line, "unexpected character after a closing quote "
					"(a quote inside a quoted field is written \"\")");
		}
		while (c->p < c->end && *c->p != ',' && !csv_at_eol(c)) {
			if (*c->p == '"')
				return csv_fail(c, c->line, "quote inside an unquoted field "
						"(quote the whole field and double the "
						"quote: \"a \"\"b\"\"\")");
			sb_putc(&c->buf, *c->p++);
		}
		csv_field_end(c);
		if (c->p >= c->end)
			return 1;
		if (*c->p == ',') {
			c->p++;
			continue;
		}
		csv_skip_eol(c);
		return 1;
	}
}

/* A record that is one unquoted field of blanks: an empty line. */
static bool csv_blank(const Csv *c)
{
	const char *s;

	if (c->n != 1 || c->first_quoted)
		return false;
	for (s = csv_field(c, 0); *s; s++)
		if (!isspace((unsigned char)*s))
			return false;
	return true;
}

/* Every field of the record is UTF-8 text (also names the column). */
static bool csv_check_text(const Csv *c, const char *name, long line, char **cols,
			   size_t ncols)
{
	size_t i;

	for (i = 0; i < c->n; i++) {
		if (utf8_valid(csv_field(c, i), c->len[i]))
			continue;
		if (cols)
			msg_error("%s:%ld: column \"%s\": not UTF-8 text, or a NUL byte (convert "
				  "the file to UTF-8)", name, line, i < ncols ? cols[i] : "?");
		else
			msg_error("%s:%ld: header field %zu: not UTF-8 text, or a NUL byte "
				  "(convert the file to UTF-8)", name, line, i + 1);
		return false;
	}
	return true;
}

/* The header row: column names, non-empty and distinct.  NULL on error. */
static char **csv_header(const Csv *c, const char *name, long line)
{
	char **cols = xcalloc(c->n, sizeof(*cols));
	size_t i, j;

	for (i = 0; i < c->n; i++) {
		if (c->len[i] == 0) {
			msg_error("%s:%ld: header: column %zu has no name", name, line, i + 1);
			goto fail;
		}
		for (j = 0; j < i; j++)
			if (strcmp(cols[j], csv_field(c, i)) == 0) {
				msg_error("%s:%ld: header: column \"%s\" appears twice", name, line,
					  cols[j]);
				goto fail;
			}
		cols[i] = xstrdup(csv_field(c, i));
	}
	return cols;
fail:
	for (j = 0; j < i; j++)
		free(cols[j]);
	free(cols);
	return NULL;
}

/* CSV with a header row: each record becomes an object of strings. */
static int input_csv(const char *name, const char *data, size_t len, Items *it) _MUSTCHECK;
static int input_csv(const char *name, const char *data, size_t len, Items *it)
{
	size_t bom = input_bom(data, len), ncols = 0, i;
	char **cols = NULL;
	Csv c;
	long line = 0;
	int r, rc = -1;

	csv_init(&c, data + bom, len - bom);
	while ((r = csv_next(&c, &line)) > 0) {
		if (csv_blank(&c))
			continue;
		if (!csv_check_text(&c, name, line, cols, ncols))
			goto out;
		if (!cols) {
			cols = csv_header(&c, name, line);
			if (!cols)
				goto out;
			ncols = c.n;
			continue;
		}
		if (c.n != ncols) {
			msg_error("%s:%ld: %zu field%s, but the header has %zu column%s", name,
				  line, c.n, c.n == 1 ? "" : "s", ncols, ncols == 1 ? "" : "s");
			goto out;
		}
		if (it->count++)
			sb_putc(&it->json, ',');
		sb_putc(&it->json, '{');
		for (i = 0; i < ncols; i++) {
			if (i)
				sb_putc(&it->json, ',');
			json_append_string(&it->json, cols[i], strlen(cols[i]));
			sb_putc(&it->json, ':');
			json_append_string(&it->json, csv_field(&c, i), c.len[i]);
		}
		sb_putc(&it->json, '}');
	}
	if (r < 0) {
		msg_error("%s:%ld: %s", name, c.err_line, c.err);
		goto out;
	}
	if (!cols) {
		msg_error("%s: empty CSV: a header row is needed", name);
		goto out;
	}
	rc = 0;
out:
	for (i = 0; cols && i < ncols; i++)
		free(cols[i]);
	free(cols);
	csv_free(&c);
	return rc;
}

/* ------------------------------------------------------------ watch */

typedef struct Progress {
	char status[32];
	char state[32];                 /* GET .../progress state; status when absent */
	int64_t total, done, succeeded, failed, cancelled, running;
	int64_t behind;                 /* waiting_behind_priority; -1: none */
	bool slot_wait;                 /* waiting_for_batch_slot */
	double percent, rate, eta;      /* eta < 0: unknown */
} Progress;

static void progress_parse(yajl_val v, Progress *pg)
{
	const char *st = jv_str(v, "status"), *state = jv_str(v, "state");

	snprintf(pg->status, sizeof(pg->status), "%s", st ? st : "?");
	snprintf(pg->state, sizeof(pg->state), "%s", state ? state : pg->status);
	pg->total = jv_int(v, "total", 0);
	pg->succeeded = jv_int(v, "succeeded", 0);
	pg->failed = jv_int(v, "failed", 0);
	pg->cancelled = jv_int(v, "cancelled", 0);
	pg->running = jv_int(v, "running", 0);
	pg->behind = jv_int(v, "waiting_behind_priority", -1);
	{
		yajl_val b = yajl_tree_get(v, (const char *[]){ "waiting_for_batch_slot", NULL },
					   yajl_t_any);
		pg->slot_wait = b && YAJL_IS_TRUE(b);
	}
	pg->done = jv_int(v, "done", pg->succeeded + pg->failed + pg->cancelled);
	pg->percent = jv_double(v, "percent", pg->total ? 100.0 * (double)pg->done /
				(double)pg->total : 0);
	pg->rate = jv_double(v, "rate_per_s", 0);
	pg->eta = jv_double(v, "eta_s", -1);
}

static bool progress_same(const Progress *a, const Progress *b)
{
	return strcmp(a->status, b->status) == 0 && strcmp(a->state, b->state) == 0 &&
		a->total == b->total && a->done == b->done && a->succeeded == b->succeeded &&
		a->failed == b->failed && a->cancelled == b->cancelled &&
		a->running == b->running && a->behind == b->behind &&
		a->slot_wait == b->slot_wait;
}

/* Over: the batch is finished and none of its items runs any more (a
 * cancelled batch's running items end on their own). */
static bool progress_over(const Progress *pg)
{
	return status_batch_terminal(pg->status) && pg->running == 0;
}

/* What the batch is doing, in words: "processing", "waiting (behind
 * priority 7)", "waiting for a batch slot", "stalled", "cancelled, 3 still
 * running", "completed". */
static void progress_words(StrBuf *sb, const Progress *pg)
{
	if (strcmp(pg->state, "running") == 0)
		sb_puts(sb, pg->status);
	else if (strcmp(pg->state, "waiting") == 0 && pg->slot_wait)
		sb_puts(sb, "waiting for a batch slot");
	else if (strcmp(pg->state, "waiting") == 0 && pg->behind >= 0)
		sb_printf(sb, "waiting (behind priority %" PRId64 ")", pg->behind);
	else
		sb_puts(sb, pg->state);
	if (status_batch_terminal(pg->status) && pg->running > 0)
		sb_printf(sb, ", %" PRId64 " still running", pg->running);
}

/* "52/100  52.0%  12.3/s  ETA 4s  ok 50  failed 2  cancelled 0"; the ETA
 * is "-" unless the server gave one (running, enough recent samples). */
static void progress_figures(StrBuf *sb, const Progress *pg)
{
	sb_printf(sb, "%" PRId64 "/%" PRId64 "  %5.1f%%  %.1f/s  ETA ", pg->done, pg->total,
		  pg->percent, pg->rate);
	if (status_batch_terminal(pg->status))
		sb_putc(sb, '-');
	else
		fmt_duration(sb, pg->eta);
	sb_printf(sb, "  ok %" PRId64 "  failed %" PRId64 "  cancelled %" PRId64, pg->succeeded,
		  pg->failed, pg->cancelled);
}

static int term_columns(FILE *f)
{
	struct winsize ws;

	if (ioctl(fileno(f), TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20)
		return ws.ws_col;
	return 80;
}

/*
 * One in-place line: "[####......] 52/100  52.0% ...  processing".  The bar
 * goes first when the terminal is too narrow, then the line is cut: a line
 * that wraps cannot be redrawn with \r.
 */
static void progress_draw(FILE *f, const Progress *pg)
{
	StrBuf text, line;
	int cols = term_columns(f), barw, filled, i;
	double frac = pg->total > 0 ? (double)pg->done / (double)pg->total : 0;

	sb_init(&text);
	sb_init(&line);
	progress_figures(&text, pg);
	sb_puts(&text, "  ");
	progress_words(&text, pg);
	barw = cols - 1 - (int)text.len - 3;
	if (barw > 40)
		barw = 40;
	if (barw >= 10) {
		filled = (int)(frac * barw + 0.5);
		if (filled > barw)
			filled = barw;
		sb_putc(&line, '[');
		for (i = 0; i < barw; i++)
			sb_putc(&line, i < filled ? '#' : '.');
		sb_puts(&line, "] ");
	}
	sb_append(&line, text.data, text.len);
	if (line.len > (size_t)cols - 1)
		line.len = (size_t)cols - 1;
	fprintf(f, "\r%.*s\033[K", (int)line.len, line.data);
	fflush(f);
	sb_free(&text);
	sb_free(&line);
}

static void sleep_until(int64_t deadline_us)
{
	for (;;) {
		int64_t left = deadline_us - now_monotonic_us();
		struct timespec ts;

		if (left <= 0)
			return;
		ts.tv_sec = (time_t)(left / 1000000);
		ts.tv_nsec = (long)(left % 1000000) * 1000;
		if (nanosleep(&ts, NULL) == 0)
			return;
	}
}

/* Exit status for a finished batch: 0 only when every item succeeded. */
static int batch_exit(const char *status)
{
	return strcmp(status, "completed") == 0 ? EXIT_OK : EXIT_BATCH_FAILED;
}

/*
 * Poll /progress until the batch is terminal and none of its items runs
 * (a cancelled batch shows its running items until they end).  Output to f: a redrawn bar
 * on a terminal, else one plain line per change; ndjson prints each
 * changed progress object instead.  Once the server has answered, a lost
 * connection or a 502/503/504 (batchd restarting, a proxy in between) is
 * retried quietly for WATCH_GRACE_MS: a long watch should survive a
 * daemon restart.
 */
static int watch_run(Ctl *ctl, const char *id, FILE *f, bool ndjson, int64_t interval_ms)
{
	bool tty = !ndjson && isatty(fileno(f)), have = false, drawn = false;
	int64_t failing_since = 0;
	Progress last, pg;
	StrBuf path, body, line;
	int rc = EXIT_SERVER;

	sb_init(&path);
	sb_init(&body);
	sb_init(&line);
	memset(&last, 0, sizeof(last));
	sb_printf(&path, "/v1/batches/%s/progress", id);
	for (;;) {
		int64_t t0 = now_monotonic_us();
		long status;
		yajl_val v;

		g_quiet = have;
		if (api_call(ctl, "GET", path.data, NULL, NULL, &body, &status) != EXIT_OK) {
			g_quiet = false;
			bool transient = status < 0 || status == 502 || status == 503 ||
				status == 504;

			if (!have || !transient) {
				if (drawn)
					fputc('\n', f);
				if (have && status >= 0)
					report_http_error(status, &body);
				break;
			}
			if (status >= 0)
				snprintf(g_lasterr, sizeof(g_lasterr), "HTTP %ld", status);
			if (!failing_since) {
				failing_since = t0;
				if (drawn)
					fputc('\n', f);
				drawn = false;
				msg_error("lost contact with the server (%s); retrying for %d s",
					  g_lasterr, WATCH_GRACE_MS / 1000);
			} else if (t0 - failing_since > (int64_t)WATCH_GRACE_MS * 1000) {
				msg_error("giving up: %s", g_lasterr);
				break;
			}
			sleep_until(t0 + interval_ms * 1000);
			continue;
		}
		g_quiet = false;
		failing_since = 0;
		v = jv_parse(&body);
		if (!v) {
			if (drawn)
				fputc('\n', f);
			break;
		}
		memset(&pg, 0, sizeof(pg));
		progress_parse(v, &pg);
		if (ndjson) {
			if (!have || !progress_same(&pg, &last)) {
				sb_reset(&line);
				json_append_value(&line, v);
				fprintf(f, "%s\n", line.data);
				fflush(f);
			}
		} else if (tty) {
			progress_draw(f, &pg);
			drawn = true;
		} else if (!have || !progress_same(&pg, &last)) {
			sb_reset(&line);
			progress_words(&line, &pg);
			sb_puts(&line, ": ");
			progress_figures(&line, &pg);
			fprintf(f, "%s\n", line.data);
			fflush(f);
		}
		yajl_tree_free(v);
		have = true;
		last = pg;
		if (progress_over(&pg)) {
			if (drawn)
				fputc('\n', f);
			if (!ndjson)
				fprintf(f, "batch %s %s: %" PRId64 " succeeded, %" PRId64
					" failed, %" PRId64 " cancelled of %" PRId64 "\n", id,
					pg.status, pg.succeeded, pg.failed, pg.cancelled, pg.total);
			rc = batch_exit(pg.status);
			break;
		}
		sleep_until(t0 + interval_ms * 1000);
	}
	g_quiet = false;
	fflush(f);
	sb_free(&path);
	sb_free(&body);
	sb_free(&line);
	return rc;
}

/* ------------------------------------------------------------ submit */

static int cmd_submit(Ctl *ctl, const Command *cmd, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "route", required_argument, NULL, OPT_ROUTE },
		{ "name", required_argument, NULL, OPT_NAME },
		{ "priority", required_argument, NULL, OPT_PRIORITY },
		{ "max-attempts", required_argument, NULL, OPT_MAX_ATTEMPTS },
		{ "group-key", required_argument, NULL, OPT_GROUP_KEY },
		{ "metadata", required_argument, NULL, OPT_METADATA },
		{ "idempotency-key", required_argument, NULL, OPT_IDEM_KEY },
		{ "format", required_argument, NULL, OPT_FORMAT },
		{ "wait", no_argument, NULL, OPT_WAIT },
		{ "interval", required_argument, NULL, OPT_INTERVAL },
		COMMON_OPTS,
		{ NULL, 0, NULL, 0 },
	};
	const char *route = NULL, *name = NULL, *group_key = NULL, *metadata = NULL;
	const char *idem = NULL, *file, *display, *id;
	int64_t priority = -1, max_attempts = -1, interval_ms = 1000;
	enum InFormat fmt = IN_AUTO;
	bool wait = false;
	yajl_val meta = NULL, resp = NULL;
	StrBuf input, req, body;
	Items items;
	int c, rc;

	opt_begin();
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		rc = OPT_HANDLED;
		switch (c) {
		case OPT_ROUTE: route = optarg; break;
		case OPT_NAME: name = optarg; break;
		case OPT_GROUP_KEY: group_key = optarg; break;
		case OPT_METADATA: metadata = optarg; break;
		case OPT_IDEM_KEY: idem = optarg; break;
		case OPT_WAIT: wait = true; break;
		case OPT_PRIORITY:
			rc = opt_int(cmd, "--priority", optarg, 0, 10, &priority);
			break;
		case OPT_MAX_ATTEMPTS:
			rc = opt_int(cmd, "--max-attempts", optarg, 1, 100, &max_attempts);
			break;
		case OPT_INTERVAL:
			rc = opt_interval(cmd, optarg, &interval_ms);
			break;
		case OPT_FORMAT:
			if (strcmp(optarg, "jsonl") == 0)
				fmt = IN_JSONL;
			else if (strcmp(optarg, "csv") == 0)
				fmt = IN_CSV;
			else
				rc = usage_error(cmd, "--format must be jsonl or csv (got '%s')",
						 optarg);
			break;
		default:
			rc = opt_common(ctl, cmd, c, argv);
		}
		if (rc != OPT_HANDLED)
			return rc;
	}
	if (!route || !*route)
		return usage_error(cmd, "--route is required");
	if (optind >= argc)
		return usage_error(cmd, "missing FILE (use - for standard input)");
	if (optind + 1 < argc)
		return usage_error(cmd, "unexpected argument '%s' (one FILE per batch)",
				   argv[optind + 1]);
	if (idem && (!*idem || !token_ok(idem)))
		return usage_error(cmd, "--idempotency-key must be non-empty, without spaces or "
				   "control characters");
	if (group_key && !*group_key)
		return usage_error(cmd, "--group-key must name a payload field");
	if (metadata) {
		char err[256];

		meta = yajl_tree_parse(metadata, err, sizeof(err));
		if (!meta || !YAJL_IS_OBJECT(meta)) {
			yajl_tree_free(meta);
			return usage_error(cmd, "--metadata must be a JSON object");
		}
	}
	file = argv[optind];
	display = strcmp(file, "-") == 0 ? "<stdin>" : file;
	if ((rc = ctl_ready(ctl, cmd)) != EXIT_OK) {
		yajl_tree_free(meta);
		return rc;
	}

	sb_init(&input);
	sb_init(&req);
	sb_init(&body);
	sb_init(&items.json);
	items.count = 0;
	rc = EXIT_USAGE;
	if (input_read(file, &input) < 0)
		goto out;
	if (input_blank(input.data, input.len)) {
		msg_error("%s: empty input, no items", display);
		goto out;
	}
	if (fmt == IN_AUTO)
		fmt = input_sniff(input.data, input.len);
	if ((fmt == IN_JSONL ? input_jsonl(display, input.data, input.len, &items) :
	     input_csv(display, input.data, input.len, &items)) < 0)
		goto out;
	if (items.count == 0) {
		msg_error("%s: no items", display);
		goto out;
	}
	sb_free(&input);        /* items.json holds a copy: lower the peak */

	sb_puts(&req, "{\"route\":");
	json_append_string(&req, route, strlen(route));
	if (name) {
		sb_puts(&req, ",\"name\":");
		json_append_string(&req, name, strlen(name));
	}
	if (priority >= 0)
		sb_printf(&req, ",\"priority\":%" PRId64, priority);
	if (max_attempts >= 0)
		sb_printf(&req, ",\"max_attempts\":%" PRId64, max_attempts);
	if (group_key) {
		sb_puts(&req, ",\"group_key\":");
		json_append_string(&req, group_key, strlen(group_key));
	}
	if (meta) {
		sb_puts(&req, ",\"metadata\":");
		json_append_value(&req, meta);
	}
	sb_puts(&req, ",\"items\":[");
	sb_append(&req, items.json.data, items.json.len);
	sb_puts(&req, "]}");
	sb_free(&items.json);

	rc = api_call(ctl, "POST", "/v1/batches", &req, idem, &body, NULL);
	if (rc != EXIT_OK)
		goto out;
	resp = jv_parse(&body);
	id = jv_str(resp, "id");
	if (!id || !is_uuid(id)) {
		if (resp)
			msg_error("malformed answer from server: no batch id");
		rc = EXIT_SERVER;
		goto out;
	}
	if (ctl->json)
		out_body(&body);
	else
		printf("%s\n", id);
	if (wait) {
		/* the id is on stdout already for scripts; progress goes to
		 * stderr so that $(batchctl submit --wait ...) is just the id */
		fflush(stdout);
		rc = watch_run(ctl, id, stderr, false, interval_ms);
	}
out:
	yajl_tree_free(resp);
	yajl_tree_free(meta);
	sb_free(&input);
	sb_free(&items.json);
	sb_free(&req);
	sb_free(&body);
	return rc;
}

/* ------------------------------------------------------------ status */

static const char *jv_str_or(yajl_val v, const char *key, const char *def)
{
	const char *s = jv_str(v, key);

	return s ? s : def;
}

/* One "label         value" line of `status ID`; value is freed. */
static void show_field(const char *label, char *value)
{
	StrBuf sb;

	sb_init(&sb);
	sanitize(value);
	sb_printf(&sb, "%-12s  %s\n", label, value);
	out_write(sb.data, sb.len);
	sb_free(&sb);
	free(value);
}

/* Key figures of one batch. */
static void status_show(yajl_val b)
{
	int64_t total = jv_int(b, "total", 0), ok = jv_int(b, "succeeded", 0),
		failed = jv_int(b, "failed", 0), cancelled = jv_int(b, "cancelled", 0),
		done = ok + failed + cancelled;
	yajl_val meta = jv_get(b, "metadata");
	StrBuf sb;

	sb_init(&sb);
	show_field("id", cell_of(b, "id"));
	show_field("name", cell_of(b, "name"));
	show_field("route", cell_of(b, "route"));
	show_field("status", cell_of(b, "status"));
	show_field("priority", cell_of(b, "priority"));
	show_field("max attempts", cell_of(b, "max_attempts"));
	if (jv_str(b, "group_key"))
		show_field("group key", cell_of(b, "group_key"));
	sb_printf(&sb, "%" PRId64 "/%" PRId64 " (%.1f%%)", done, total,
		  total ? 100.0 * (double)done / (double)total : 0.0);
	show_field("done", sb_steal(&sb));
	sb_printf(&sb, "%" PRId64 " succeeded, %" PRId64 " failed, %" PRId64 " cancelled, %"
		  PRId64 " running, %" PRId64 " queued", ok, failed, cancelled,
		  jv_int(b, "running", 0), jv_int(b, "queued", 0));
	show_field("items", sb_steal(&sb));
	ts_short(&sb, jv_str(b, "created_at"));
	show_field("created", sb_steal(&sb));
	ts_short(&sb, jv_str(b, "started_at"));
	show_field("started", sb_steal(&sb));
	ts_short(&sb, jv_str(b, "finished_at"));
	show_field("finished", sb_steal(&sb));
	if (meta && YAJL_IS_OBJECT(meta) && meta->u.object.len) {
		json_append_value(&sb, meta);
		show_field("metadata", sb_steal(&sb));
	}
	sb_free(&sb);
}

static void status_list(yajl_val resp, const char *status, int64_t limit)
{
	static const char *const head[] = { "ID", "NAME", "ROUTE", "STATUS", "DONE/TOTAL",
		"CREATED" };
	yajl_val list = jv_get(resp, "batches");
	const char *next = jv_str(resp, "next_cursor");
	size_t i;
	Table t;

	if (!list || !YAJL_IS_ARRAY(list) || list->u.array.len == 0) {
		fputs("no batches\n", stderr);
		return;
	}
	table_init(&t, head, ARRAY_SIZE(head), 1u << 4);
	for (i = 0; i < list->u.array.len; i++) {
		yajl_val b = list->u.array.values[i];
		StrBuf sb;
		char *row[6];

		sb_init(&sb);
		row[0] = cell_of(b, "id");
		row[1] = cell_clip(cell_of(b, "name"), 32);
		row[2] = cell_clip(cell_of(b, "route"), 24);
		row[3] = cell_of(b, "status");
		sb_printf(&sb, "%" PRId64 "/%" PRId64, jv_int(b, "succeeded", 0) +
			  jv_int(b, "failed", 0) + jv_int(b, "cancelled", 0),
			  jv_int(b, "total", 0));
		row[4] = sb_steal(&sb);
		ts_short(&sb, jv_str(b, "created_at"));
		row[5] = sb_steal(&sb);
		table_add(&t, row);
	}
	table_print(&t);
	table_free(&t);
	if (next && *next) {
		/* the same filters with the cursor, ready to paste */
		fputs("next page: batchctl status", stderr);
		if (status)
			fprintf(stderr, " --status %s", status);
		if (limit >= 0)
			fprintf(stderr, " --limit %" PRId64, limit);
		fprintf(stderr, " --cursor %s\n", next);
	}
}

static int cmd_status(Ctl *ctl, const Command *cmd, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "status", required_argument, NULL, OPT_STATUS },
		{ "limit", required_argument, NULL, OPT_LIMIT },
		{ "cursor", required_argument, NULL, OPT_CURSOR },
		COMMON_OPTS,
		{ NULL, 0, NULL, 0 },
	};
	const char *status = NULL, *cursor = NULL, *id = NULL;
	int64_t limit = -1;
	StrBuf path, body;
	yajl_val v;
	int c, rc;

	opt_begin();
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		rc = OPT_HANDLED;
		switch (c) {
		case OPT_STATUS:
			status = optarg;
			if (!status_is_batch(status))
				rc = usage_error(cmd, "--status must be one of "
						 STATUS_BATCH_NAMES_TEXT);
			break;
		case OPT_LIMIT:
			rc = opt_int(cmd, "--limit", optarg, 1, 10000, &limit);
			break;
		case OPT_CURSOR:
			cursor = optarg;
			break;
		default:
			rc = opt_common(ctl, cmd, c, argv);
		}
		if (rc != OPT_HANDLED)
			return rc;
	}
	if (optind < argc) {
		if ((rc = opt_batch_id(cmd, argc, argv, &id)) != OPT_HANDLED)
			return rc;
		if (status || cursor || limit >= 0)
			return usage_error(cmd, "--status, --limit and --cursor list batches: "
					   "not with an ID");
	}
	if ((rc = ctl_ready(ctl, cmd)) != EXIT_OK)
		return rc;

	sb_init(&path);
	sb_init(&body);
	if (id) {
		sb_printf(&path, "/v1/batches/%s", id);
	} else {
		char sep = '?';

		sb_puts(&path, "/v1/batches");
		if (status) {
			sb_printf(&path, "%cstatus=%s", sep, status);
			sep = '&';
		}
		if (limit >= 0) {
			sb_printf(&path, "%climit=%" PRId64, sep, limit);
			sep = '&';
		}
		if (cursor) {
			char *esc = curl_easy_escape(ctl->curl, cursor, 0);

			sb_printf(&path, "%ccursor=%s", sep, esc ? esc : "");
			curl_free(esc);
		}
	}
	rc = api_call(ctl, "GET", path.data, NULL, NULL, &body, NULL);
	if (rc == EXIT_OK) {
		if (ctl->json) {
			out_body(&body);
		} else if ((v = jv_parse(&body)) != NULL) {
			if (id)
				status_show(v);
			else
				status_list(v, status, limit);
			yajl_tree_free(v);
		} else {
			rc = EXIT_SERVER;
		}
	}
	sb_free(&path);
	sb_free(&body);
	return rc;
}

/* ------------------------------------------------------------ watch */

static int cmd_watch(Ctl *ctl, const Command *cmd, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "interval", required_argument, NULL, OPT_INTERVAL },
		COMMON_OPTS,
		{ NULL, 0, NULL, 0 },
	};
	int64_t interval_ms = 1000;
	const char *id = NULL;
	int c, rc;

	opt_begin();
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		if (c == OPT_INTERVAL)
			rc = opt_interval(cmd, optarg, &interval_ms);
		else
			rc = opt_common(ctl, cmd, c, argv);
		if (rc != OPT_HANDLED)
			return rc;
	}
	if ((rc = opt_batch_id(cmd, argc, argv, &id)) != OPT_HANDLED)
		return rc;
	if ((rc = ctl_ready(ctl, cmd)) != EXIT_OK)
		return rc;
	return watch_run(ctl, id, stdout, ctl->json, interval_ms);
}

/* ------------------------------------------------------------ cancel, retry, delete */

/* cancel, retry and delete share everything but the request. */
static int cmd_action(Ctl *ctl, const Command *cmd, int argc, char **argv)
{
	static const struct option opts[] = {
		COMMON_OPTS,
		{ NULL, 0, NULL, 0 },
	};
	bool del = strcmp(cmd->name, "delete") == 0;
	const char *id = NULL;
	StrBuf path, body;
	yajl_val v;
	int c, rc;

	opt_begin();
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1)
		if ((rc = opt_common(ctl, cmd, c, argv)) != OPT_HANDLED)
			return rc;
	if ((rc = opt_batch_id(cmd, argc, argv, &id)) != OPT_HANDLED)
		return rc;
	if ((rc = ctl_ready(ctl, cmd)) != EXIT_OK)
		return rc;
	sb_init(&path);
	sb_init(&body);
	if (del)
		sb_printf(&path, "/v1/batches/%s", id);
	else
		sb_printf(&path, "/v1/batches/%s/%s", id, cmd->name);
	rc = api_call(ctl, del ? "DELETE" : "POST", path.data, NULL, NULL, &body, NULL);
	if (rc == EXIT_OK) {
		if (ctl->json) {
			if (body.len)
				out_body(&body);
		} else if (del) {
			printf("deleted %s\n", id);
		} else {
			/* the answer is the batch; an empty or odd one still
			 * means the server accepted the request */
			v = body.len ? yajl_tree_parse(body.data, NULL, 0) : NULL;
			printf("%s %s\n", id, jv_str_or(v, "status", cmd->name[0] == 'c' ?
							"cancel requested" : "retry requested"));
			yajl_tree_free(v);
		}
	}
	sb_free(&path);
	sb_free(&body);
	return rc;
}

/* ------------------------------------------------------------ results */

enum OutFormat { OUT_JSONL, OUT_CSV };

static const char *const result_cols[] = {
	"id", "seq", "status", "attempts", "provider", "http_status", "error", "result", "payload",
};
#define RESULT_JSON_COLS 7      /* result_cols[7..]: written as JSON text */

/* One CSV field, quoted only when it has to be (RFC 4180). */
static void csv_put(StrBuf *sb, const char *s, size_t len)
{
	size_t i;

	if (strcspn(s, ",\"\r\n") >= len) {
		sb_append(sb, s, len);
		return;
	}
	sb_putc(sb, '"');
	for (i = 0; i < len; i++) {
		if (s[i] == '"')
			sb_putc(sb, '"');
		sb_putc(sb, s[i]);
	}
	sb_putc(sb, '"');
}

static void results_csv_header(StrBuf *sb)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(result_cols); i++) {
		if (i)
			sb_putc(sb, ',');
		sb_puts(sb, result_cols[i]);
	}
	sb_putc(sb, '\n');
}

/* An item as a CSV row; null and missing members are empty fields. */
static void results_csv_row(StrBuf *sb, yajl_val item, StrBuf *tmp)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(result_cols); i++) {
		yajl_val v = jv_get(item, result_cols[i]);

		if (i)
			sb_putc(sb, ',');
		sb_reset(tmp);
		if (v && !YAJL_IS_NULL(v)) {
			if (i >= RESULT_JSON_COLS)
				json_append_value(tmp, v);
			else
				jv_append_text(tmp, v);
		}
		if (tmp->len)
			csv_put(sb, tmp->data, tmp->len);
	}
	sb_putc(sb, '\n');
}

/*
 * The /results stream, passed to stdout as it arrives: memory stays at one
 * line (CSV) or one curl buffer (JSONL) whatever the batch size.  The HTTP
 * status is known by the first body byte, so an error answer is kept aside
 * instead of ending up in the output.
 */
typedef struct Stream {
	CURL *curl;
	enum OutFormat fmt;
	int state;              /* 0: no body yet; 1: 2xx, passing on; -1: error answer */
	bool header_done;
	bool failed;            /* the callback aborted and said why */
	char last;              /* last byte written (JSONL) */
	StrBuf err;             /* error answer, first ERROR_BODY_MAX bytes */
	StrBuf line;            /* CSV: the incomplete last line */
	StrBuf row, tmp;
} Stream;

static bool stream_header(Stream *s)
{
	if (s->header_done || s->fmt != OUT_CSV)
		return true;
	s->header_done = true;
	sb_reset(&s->row);
	results_csv_header(&s->row);
	return out_write(s->row.data, s->row.len);
}

/* One NDJSON line as a CSV row. */
static bool stream_csv_line(Stream *s, char *line, size_t len)
{
	char err[128];
	yajl_val v;
	bool ok;

	while (len && isspace((unsigned char)line[len - 1]))
		len--;
	if (!len)
		return true;
	line[len] = '\0';
	v = yajl_tree_parse(line, err, sizeof(err));
	if (!v || !YAJL_IS_OBJECT(v)) {
		msg_error("malformed result line from server: %s", v ? "not an object" :
			  str_trim(err));
		yajl_tree_free(v);
		return false;
	}
	sb_reset(&s->row);
	results_csv_row(&s->row, v, &s->tmp);
	yajl_tree_free(v);
	ok = out_write(s->row.data, s->row.len);
	return ok;
}

/* Convert the complete lines buffered so far; keep the incomplete rest. */
static bool stream_csv_flush(Stream *s, bool final)
{
	size_t pos = 0;
	char *nl;

	while (pos < s->line.len &&
	       (nl = memchr(s->line.data + pos, '\n', s->line.len - pos)) != NULL) {
		if (!stream_csv_line(s, s->line.data + pos, (size_t)(nl - s->line.data) - pos))
			return false;
		pos = (size_t)(nl - s->line.data) + 1;
	}
	if (final && pos < s->line.len) {
		if (!stream_csv_line(s, s->line.data + pos, s->line.len - pos))
			return false;
		pos = s->line.len;
	}
	if (pos) {
		memmove(s->line.data, s->line.data + pos, s->line.len - pos);
		s->line.len -= pos;
		s->line.data[s->line.len] = '\0';
	}
	return true;
}

static size_t stream_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
	Stream *s = ud;
	size_t n = size * nmemb;

	if (s->state == 0) {
		long code = 0;

		curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &code);
		s->state = code >= 200 && code <= 299 ? 1 : -1;
	}
	if (s->state < 0) {
		if (s->err.len < ERROR_BODY_MAX)
			sb_append(&s->err, ptr, n < ERROR_BODY_MAX - s->err.len ? n :
				  ERROR_BODY_MAX - s->err.len);
		return n;
	}
	if (!stream_header(s))
		goto fail;
	if (s->fmt == OUT_JSONL) {
		if (!out_write(ptr, n))
			goto fail;
		if (n)
			s->last = ptr[n - 1];
		return n;
	}
	sb_append(&s->line, ptr, n);
	if (!stream_csv_flush(s, false))
		goto fail;
	if (s->line.len > LINE_MAX_BYTES) {
		msg_error("a result line from the server is larger than %zu MB",
			  LINE_MAX_BYTES >> 20);
		goto fail;
	}
	return n;
fail:
	s->failed = true;
	return 0;
}

static int results_stream(Ctl *ctl, const char *id, enum OutFormat fmt)
{
	Stream s;
	StrBuf path;
	long status;
	int rc = EXIT_SERVER;

	memset(&s, 0, sizeof(s));
	s.curl = ctl->curl;
	s.fmt = fmt;
	sb_init(&s.err);
	sb_init(&s.line);
	sb_init(&s.row);
	sb_init(&s.tmp);
	sb_init(&path);
	sb_printf(&path, "/v1/batches/%s/results", id);
	status = ctl_perform(ctl, "GET", path.data, NULL, NULL, true, stream_cb, &s);
	if (status >= 0 && (status < 200 || status > 299)) {
		report_http_error(status, &s.err);
	} else if (status >= 0) {
		/* an empty batch has no body at all, a last line may lack its \n */
		if (stream_header(&s) && stream_csv_flush(&s, true) &&
		    (fmt != OUT_JSONL || !s.last || s.last == '\n' || out_write("\n", 1)))
			rc = EXIT_OK;
	}
	sb_free(&s.err);
	sb_free(&s.line);
	sb_free(&s.row);
	sb_free(&s.tmp);
	sb_free(&path);
	return rc;
}

/*
 * --status: page through /items?status=, which the server filters with an
 * index, rather than download every item of a big batch to keep a few.
 */
static int results_paged(Ctl *ctl, const char *id, const char *status, enum OutFormat fmt)
{
	StrBuf path, body, out, tmp;
	char *cursor = NULL;
	bool first = true;
	int rc = EXIT_SERVER;

	sb_init(&path);
	sb_init(&body);
	sb_init(&out);
	sb_init(&tmp);
	for (;;) {
		yajl_val v, list;
		const char *next;
		size_t i;

		sb_reset(&path);
		sb_printf(&path, "/v1/batches/%s/items?status=%s&limit=%d", id, status, ITEMS_PAGE);
		if (cursor) {
			char *esc = curl_easy_escape(ctl->curl, cursor, 0);

			sb_printf(&path, "&cursor=%s", esc ? esc : "");
			curl_free(esc);
		}
		v = api_get_json(ctl, path.data, &body);
		if (!v)
			break;
		list = jv_get(v, "items");
		if (!list || !YAJL_IS_ARRAY(list)) {
			msg_error("malformed answer from server: no items array");
			yajl_tree_free(v);
			break;
		}
		sb_reset(&out);
		if (first && fmt == OUT_CSV)
			results_csv_header(&out);
		first = false;
		for (i = 0; i < list->u.array.len; i++) {
			if (fmt == OUT_CSV) {
				results_csv_row(&out, list->u.array.values[i], &tmp);
			} else {
				json_append_value(&out, list->u.array.values[i]);
				sb_putc(&out, '\n');
			}
		}
		next = jv_str(v, "next_cursor");
		if (!out_write(out.data, out.len)) {
			yajl_tree_free(v);
			break;
		}
		if (!next || !*next || list->u.array.len == 0) {
			yajl_tree_free(v);
			rc = EXIT_OK;
			break;
		}
		if (cursor && strcmp(cursor, next) == 0) {
			msg_error("malformed answer from server: the same cursor twice");
			yajl_tree_free(v);
			break;
		}
		free(cursor);
		cursor = xstrdup(next);
		yajl_tree_free(v);
	}
	free(cursor);
	sb_free(&path);
	sb_free(&body);
	sb_free(&out);
	sb_free(&tmp);
	return rc;
}

static int cmd_results(Ctl *ctl, const Command *cmd, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "status", required_argument, NULL, OPT_STATUS },
		{ "format", required_argument, NULL, OPT_FORMAT },
		COMMON_OPTS,
		{ NULL, 0, NULL, 0 },
	};
	enum OutFormat fmt = OUT_JSONL;
	const char *status = NULL, *id = NULL;
	int c, rc;

	opt_begin();
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		rc = OPT_HANDLED;
		switch (c) {
		case OPT_STATUS:
			status = optarg;
			if (!status_is_item(status))
				rc = usage_error(cmd, "--status must be one of "
						 STATUS_ITEM_NAMES_TEXT);
			break;
		case OPT_FORMAT:
			if (strcmp(optarg, "jsonl") == 0)
				fmt = OUT_JSONL;
			else if (strcmp(optarg, "csv") == 0)
				fmt = OUT_CSV;
			else
				rc = usage_error(cmd, "--format must be jsonl or csv (got '%s')",
						 optarg);
			break;
		default:
			rc = opt_common(ctl, cmd, c, argv);
		}
		if (rc != OPT_HANDLED)
			return rc;
	}
	if ((rc = opt_batch_id(cmd, argc, argv, &id)) != OPT_HANDLED)
		return rc;
	if ((rc = ctl_ready(ctl, cmd)) != EXIT_OK)
		return rc;
	return status ? results_paged(ctl, id, status, fmt) : results_stream(ctl, id, fmt);
}

/* ------------------------------------------------------------ workers */

/* Item ids shown in the ITEMS column of workers; the rest are counted. */
#define WORKERS_IDS_SHOWN 3

/* "12,13,14 (+97)": the first ids a worker holds and how many more (of
 * held_items; held_item_ids is the server's first 100); "-" for none, or
 * from a server that does not say. */
static char *held_ids_cell(yajl_val w)
{
	yajl_val ids = jv_get(w, "held_item_ids");
	int64_t held = jv_int(w, "held_items", 0);
	size_t i, shown;
	StrBuf sb;

	if (!ids || !YAJL_IS_ARRAY(ids) || ids->u.array.len == 0)
		return xstrdup("-");
	if (held < (int64_t)ids->u.array.len)
		held = (int64_t)ids->u.array.len;
	shown = ids->u.array.len < WORKERS_IDS_SHOWN ? ids->u.array.len : WORKERS_IDS_SHOWN;
	sb_init(&sb);
	for (i = 0; i < shown; i++) {
		if (i)
			sb_putc(&sb, ',');
		jv_append_text(&sb, ids->u.array.values[i]);
	}
	if (held > (int64_t)shown)
		sb_printf(&sb, " (+%lld)", (long long)(held - (int64_t)shown));
	return sb_steal(&sb);
}

/*
 * One row per worker: INFLIGHT is what its last heartbeat said (a dead
 * worker's is from before it died), HELD and ITEMS what the database has
 * running under its id now (for a dead worker: what the reaper will
 * requeue).
 */
static void workers_show(yajl_val st)
{
	static const char *const head[] = { "ID", "HOST", "PID", "INFLIGHT", "HELD",
		"HEARTBEAT", "STATE", "ITEMS" };
	yajl_val fleet = jv_get(st, "fleet");
	double now = (double)now_realtime_us() / 1e6;
	size_t i;
	Table t;

	if (!fleet || !YAJL_IS_ARRAY(fleet) || fleet->u.array.len == 0) {
		fputs("no workers\n", stderr);
		return;
	}
	table_init(&t, head, ARRAY_SIZE(head), (1u << 2) | (1u << 3) | (1u << 4) | (1u << 5));
	for (i = 0; i < fleet->u.array.len; i++) {
		yajl_val w = fleet->u.array.values[i], alive = jv_get(w, "alive");
		char *row[8];
		StrBuf sb;
		double hb;

		sb_init(&sb);
		row[0] = cell_of(w, "id");
		row[1] = cell_clip(cell_of(w, "hostname"), 32);
		row[2] = cell_of(w, "pid");
		row[3] = cell_of(w, "inflight");
		row[4] = cell_of(w, "held_items");
		/* age by this machine's clock: skew between hosts shows here */
		if (parse_ts(jv_str(w, "heartbeat_at"), &hb)) {
			fmt_duration(&sb, now > hb ? now - hb : 0);
			sb_puts(&sb, " ago");
		} else {
			sb_putc(&sb, '-');
		}
		row[5] = sb_steal(&sb);
		row[6] = xstrdup(!alive ? "-" : YAJL_IS_TRUE(alive) ? "alive" : "dead");
		row[7] = held_ids_cell(w);
		table_add(&t, row);
	}
	table_print(&t);
	table_free(&t);
}

static int cmd_workers(Ctl *ctl, const Command *cmd, int argc, char **argv)
{
	static const struct option opts[] = {
		COMMON_OPTS,
		{ NULL, 0, NULL, 0 },
	};
	StrBuf body;
	yajl_val v;
	int c, rc;

	opt_begin();
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1)
		if ((rc = opt_common(ctl, cmd, c, argv)) != OPT_HANDLED)
			return rc;
	if (optind < argc)
		return usage_error(cmd, "unexpected argument '%s'", argv[optind]);
	if ((rc = ctl_ready(ctl, cmd)) != EXIT_OK)
		return rc;
	sb_init(&body);
	rc = api_call(ctl, "GET", "/v1/status", NULL, NULL, &body, NULL);
	if (rc == EXIT_OK) {
		if (ctl->json) {
			out_body(&body);
		} else if ((v = jv_parse(&body)) != NULL) {
			workers_show(v);
			yajl_tree_free(v);
		} else {
			rc = EXIT_SERVER;
		}
	}
	sb_free(&body);
	return rc;
}

/* ------------------------------------------------------------ token */

static void db_report(PGconn *pg, const PGresult *res)
{
	const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	char *copy = xstrdup(msg ? msg : PQerrorMessage(pg));

	msg_error("database: %s", str_trim(copy));
	free(copy);
	/* undefined_function, invalid_schema_name */
	if (state && (strcmp(state, "42883") == 0 || strcmp(state, "3F000") == 0))
		msg_error("hint: is the batchd schema installed and current? (batchd migrate)");
}

/*
 * Connect with a 10 s timeout and our application_name, both given before
 * dbname so that the user's conninfo can still override them (libpq
 * keeps the last value of a repeated keyword).
 */
static PGconn *db_connect(const char *conninfo)
{
	static const char *const keys[] = { "connect_timeout", "application_name", "dbname", NULL };
	const char *vals[] = { "10", "batchctl", conninfo, NULL };
	PGconn *pg = PQconnectdbParams(keys, vals, 1);

	if (!pg) {
		msg_error("out of memory");
		abort();
	}
	if (PQstatus(pg) != CONNECTION_OK) {
		char *copy = xstrdup(PQerrorMessage(pg));

		msg_error("cannot connect to the database: %s", str_trim(copy));
		free(copy);
		PQfinish(pg);
		return NULL;
	}
	return pg;
}

/* `token revoke -`: the token from standard input, so that it shows in
 * neither ps nor the shell history. */
static char *token_from_stdin(void)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t n = getline(&line, &cap, stdin);
	char *tok;

	if (n < 0) {
		free(line);
		return NULL;
	}
	tok = xstrdup(str_trim(line));
	free(line);
	return tok;
}

/*
 * The database of the token commands: --database, else the database of
 * -c FILE (read and checked as batchd reads it, ${...} expansions and the
 * BATCHD_DATABASE override included), else BATCHD_DATABASE.  *cfg keeps the
 * configuration that owns the string.  EXIT_OK, or EXIT_USAGE (reported).
 */
static int token_database(const Command *cmd, const char *opt, const char *config_path,
			  Config **cfg, const char **conninfo)
{
	char err[512];

	*conninfo = opt && *opt ? opt : NULL;
	if (!*conninfo && config_path) {
		*cfg = config_load(config_path, err, sizeof(err));
		if (!*cfg) {
			msg_error("%s", err);
			return EXIT_USAGE;
		}
		*conninfo = (*cfg)->database;
	}
	if (!*conninfo || !**conninfo)
		*conninfo = getenv("BATCHD_DATABASE");
	/* empty would silently mean libpq's defaults: likely a mistake */
	if (!*conninfo || !**conninfo)
		return usage_error(cmd, "no database: pass --database CONNINFO or -c FILE, or set "
				   "BATCHD_DATABASE");
	return EXIT_OK;
}

/* A token list cell: the column's text, "-" for NULL. */
static char *pg_cell(const PGresult *res, int row, int col)
{
	return xstrdup(PQgetisnull(res, row, col) ? "-" : PQgetvalue(res, row, col));
}

/* `token list`: the rows of token_list_sql as a table, or JSON. */
static int token_list_show(const Ctl *ctl, const PGresult *res)
{
	static const char *const head[] = { "ID", "TENANT", "CREATED", "LAST USED", "REVOKED" };
	static const char *const names[] = { "id", "tenant", "created_at", "last_used_at",
		"revoked_at" };
	int n = PQntuples(res), i, c;
	bool ok = true;
	StrBuf sb;
	Table t;

	if (ctl->json) {
		sb_init(&sb);
		sb_puts(&sb, "{\"tokens\":[");
		for (i = 0; i < n; i++) {
			sb_puts(&sb, i ? ",{" : "{");
			for (c = 0; c < 5; c++) {
				const char *v = PQgetvalue(res, i, c);

				sb_printf(&sb, "%s\"%s\":", c ? "," : "", names[c]);
				if (PQgetisnull(res, i, c))
					sb_puts(&sb, "null");
				else if (c == 0)
					sb_puts(&sb, v);        /* a bigint */
				else
					json_append_string(&sb, v, strlen(v));
			}
			sb_putc(&sb, '}');
		}
		sb_puts(&sb, "]}\n");
		ok = out_write(sb.data, sb.len);
		sb_free(&sb);
		return ok ? EXIT_OK : EXIT_SERVER;
	}
	if (n == 0) {
		fputs("no tokens\n", stderr);
		return EXIT_OK;
	}
	table_init(&t, head, ARRAY_SIZE(head), 1u << 0);
	for (i = 0; i < n; i++) {
		char *row[5];

		for (c = 0; c < 5; c++) {
			if (c >= 2 && !PQgetisnull(res, i, c)) {
				sb_init(&sb);
				ts_short(&sb, PQgetvalue(res, i, c));
				row[c] = sb_steal(&sb);
			} else {
				row[c] = pg_cell(res, i, c);
			}
		}
		table_add(&t, row);
	}
	table_print(&t);
	table_free(&t);
	return EXIT_OK;
}

/* Oldest first; a token revoked before revoked_at existed shows "yes". */
static const char token_list_sql[] =
	"SELECT t.id, t.tenant, batchd.api_ts(t.created_at), batchd.api_ts(t.last_used_at), "
	"CASE WHEN t.revoked THEN coalesce(batchd.api_ts(t.revoked_at), 'yes') END "
	"FROM batchd.api_tokens AS t WHERE $1::text IS NULL OR t.tenant = $1 ORDER BY t.id";

enum TokenCmd { TOK_CREATE, TOK_REVOKE, TOK_LIST };

static int cmd_token(Ctl *ctl, const Command *cmd, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "tenant", required_argument, NULL, OPT_TENANT },
		{ "database", required_argument, NULL, OPT_DATABASE },
		{ "config", required_argument, NULL, 'c' },
		{ "id", required_argument, NULL, OPT_ID },
		COMMON_OPTS,
		{ NULL, 0, NULL, 0 },
	};
	const char *tenant = NULL, *dbopt = NULL, *config_path = NULL, *conninfo, *sub;
	const char *params[1];
	char *token = NULL, idbuf[24];
	int64_t id = -1;
	Config *cfg = NULL;
	PGconn *pg = NULL;
	PGresult *res = NULL;
	enum TokenCmd what;
	int c, rc;

	if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		cmd_help(cmd, stdout);
		return EXIT_OK;
	}
	/* "token --database X create": the subcommand is the first operand */
	c = first_operand(argc, argv, 1);
	if (c < 0)
		return usage_error(cmd, "missing 'create', 'revoke' or 'list'");
	argv_move(argv, c, 1);
	sub = argv[1];
	if (strcmp(sub, "create") == 0)
		what = TOK_CREATE;
	else if (strcmp(sub, "revoke") == 0)
		what = TOK_REVOKE;
	else if (strcmp(sub, "list") == 0)
		what = TOK_LIST;
	else
		return usage_error(cmd, "unknown token command '%s' (create, revoke or list)", sub);
	argc--;
	argv++;
	opt_begin();
	while ((c = getopt_long(argc, argv, ":hc:", opts, NULL)) != -1) {
		rc = OPT_HANDLED;
		if (c == OPT_TENANT)
			tenant = optarg;
		else if (c == OPT_DATABASE)
			dbopt = optarg;
		else if (c == 'c')
			config_path = optarg;
		else if (c == OPT_ID)
			rc = opt_int(cmd, "--id", optarg, 1, INT64_MAX, &id);
		else
			rc = opt_common(ctl, cmd, c, argv);
		if (rc != OPT_HANDLED)
			return rc;
	}
	if (what != TOK_REVOKE && id >= 0)
		return usage_error(cmd, "--id is for token revoke");
	switch (what) {
	case TOK_CREATE:
		if (!tenant || !*tenant)
			return usage_error(cmd, "token create needs --tenant TENANT");
		if (optind < argc)
			return usage_error(cmd, "unexpected argument '%s'", argv[optind]);
		break;
	case TOK_LIST:
		if (tenant && !*tenant)
			return usage_error(cmd, "--tenant must not be empty");
		if (optind < argc)
			return usage_error(cmd, "unexpected argument '%s'", argv[optind]);
		break;
	case TOK_REVOKE:
		if (tenant)
			return usage_error(cmd, "--tenant is for token create and token list");
		if (id >= 0 && optind < argc)
			return usage_error(cmd, "token revoke takes the TOKEN or --id ID, not both");
		if (id < 0 && optind >= argc)
			return usage_error(cmd, "token revoke needs the TOKEN (or - to read "
					   "it from standard input, or --id ID)");
		if (optind + 1 < argc)
			return usage_error(cmd, "unexpected argument '%s'", argv[optind + 1]);
		break;
	}
	if ((rc = token_database(cmd, dbopt, config_path, &cfg, &conninfo)) != EXIT_OK)
		goto out;
	if (what == TOK_REVOKE && id < 0) {
		token = xstrdup(argv[optind]);
		if (strcmp(token, "-") == 0) {
			free(token);
			token = token_from_stdin();
		}
		if (!token || !*token) {
			rc = usage_error(cmd, "empty token");
			goto out;
		}
	}

	rc = EXIT_SERVER;
	pg = db_connect(conninfo);
	if (!pg)
		goto out;
	switch (what) {
	case TOK_CREATE:
		params[0] = tenant;
		res = PQexecParams(pg, "SELECT batchd.create_token($1)", 1, NULL, params, NULL,
				   NULL, 0);
		break;
	case TOK_REVOKE:
		if (id >= 0) {
			snprintf(idbuf, sizeof(idbuf), "%" PRId64, id);
			params[0] = idbuf;
			res = PQexecParams(pg, "SELECT batchd.revoke_token_id($1::bigint)", 1, NULL,
					   params, NULL, NULL, 0);
		} else {
			params[0] = token;
			res = PQexecParams(pg, "SELECT batchd.revoke_token($1)", 1, NULL, params,
					   NULL, NULL, 0);
		}
		break;
	case TOK_LIST:
		params[0] = tenant;
		res = PQexecParams(pg, token_list_sql, 1, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(res) != PGRES_TUPLES_OK || PQnfields(res) != 5) {
			db_report(pg, res);
			goto out;
		}
		rc = token_list_show(ctl, res);
		goto out;
	}
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQnfields(res) != 1) {
		db_report(pg, res);
		goto out;
	}
	if (what == TOK_CREATE) {
		const char *tok = PQgetvalue(res, 0, 0);
		StrBuf sb;

		if (PQgetisnull(res, 0, 0) || !*tok) {
			msg_error("database: create_token returned no token");
			goto out;
		}
		sb_init(&sb);
		if (ctl->json) {
			sb_puts(&sb, "{\"tenant\":");
			json_append_string(&sb, tenant, strlen(tenant));
			sb_puts(&sb, ",\"token\":");
			json_append_string(&sb, tok, strlen(tok));
			sb_puts(&sb, "}\n");
		} else {
			sb_printf(&sb, "%s\n", tok);
		}
		rc = out_write(sb.data, sb.len) ? EXIT_OK : EXIT_SERVER;
		sb_free(&sb);
		if (rc == EXIT_OK && isatty(STDERR_FILENO))
			fputs("batchctl: keep this token now: it cannot be shown again\n", stderr);
	} else {
		bool revoked = !PQgetisnull(res, 0, 0) && strcmp(PQgetvalue(res, 0, 0), "t") == 0;

		if (ctl->json)
			printf("{\"revoked\":%s}\n", revoked ? "true" : "false");
		else if (revoked)
			printf("revoked\n");
		if (revoked)
			rc = EXIT_OK;
		else if (id >= 0)
			msg_error("no token with id %" PRId64 " (or already revoked)", id);
		else
			msg_error("no such token (or already revoked)");
	}
out:
	PQclear(res);
	if (pg)
		PQfinish(pg);
	free(token);
	config_free(cfg);
	return rc;
}

/* ------------------------------------------------------------ commands */

static int cmd_helpcmd(Ctl *ctl, const Command *cmd, int argc, char **argv);

static const Command commands[] = {
	{ "submit", cmd_submit,
	  "submit --route ROUTE [OPTIONS] FILE",
	  "Submit a batch: one item per JSON Lines line or CSV row of FILE (- for\n"
	  "standard input).  Prints the batch id (the created batch with --json).\n"
	  "\n"
	  "FILE is JSON Lines (one JSON object per line, blank lines skipped) or CSV\n"
	  "(RFC 4180, a header row; each row becomes an object of strings keyed by\n"
	  "the header).  The format is guessed from the first non-blank character\n"
	  "('{' means JSON Lines); --format says it.  The file is checked before\n"
	  "anything is sent, and an error names its line.\n"
	  "\n"
	  "  --route ROUTE            route of the items (required)\n"
	  "  --name NAME              batch name\n"
	  "  --priority N             0 to 10 (server default 5)\n"
	  "  --max-attempts N         1 to 100 (server default 3)\n"
	  "  --group-key FIELD        payload field (dotted path) grouping the items\n"
	  "  --metadata JSON          a JSON object kept with the batch\n"
	  "  --idempotency-key KEY    repeating the same submit with the same key\n"
	  "                           returns the batch created the first time; a\n"
	  "                           different one under a key used less than the\n"
	  "                           server's idempotency_ttl (24h) ago is refused\n"
	  "                           (HTTP 422, exit 3)\n"
	  "  --format jsonl|csv       input format (default: guessed)\n"
	  "  --wait                   then watch the batch until it ends (progress on\n"
	  "                           stderr); exit 1 unless it ends 'completed'\n"
	  "  --interval DURATION      --wait polling interval (default 1s)\n" },
	{ "status", cmd_status,
	  "status [ID] [--status STATUS] [--limit N] [--cursor CURSOR]",
	  "With ID: the batch's key figures.  Without: a table of batches, newest\n"
	  "first (id, name, route, status, done/total, created).\n"
	  "\n"
	  "  --status STATUS   only batches in this status: pending, processing,\n"
	  "                    completed, completed_with_errors, failed, cancelled\n"
	  "  --limit N         batches per page\n"
	  "  --cursor CURSOR   the next page (printed on stderr when there is one)\n" },
	{ "watch", cmd_watch,
	  "watch [--interval DURATION] ID",
	  "Follow a batch until it ends: a progress bar on a terminal (done/total,\n"
	  "percent, rate, ETA, counts), else a line whenever the figures change; a\n"
	  "last line gives the final status.  With --json, one progress object per\n"
	  "change.  Exit 0 when the batch ends 'completed', 1 when it ends failed,\n"
	  "completed_with_errors or cancelled.\n"
	  "\n"
	  "  --interval DURATION   polling interval (default 1s, e.g. 500ms, 5s)\n" },
	{ "cancel", cmd_action, "cancel ID",
	  "Cancel a batch: its queued items become cancelled.\n" },
	{ "retry", cmd_action, "retry ID",
	  "Retry a finished batch: its failed (and cancelled) items are queued again.\n" },
	{ "delete", cmd_action, "delete ID",
	  "Delete a batch with its items and results.\n" },
	{ "results", cmd_results,
	  "results [--status STATUS] [--format jsonl|csv] ID",
	  "Write the batch's items with their results to stdout, streamed.\n"
	  "\n"
	  "  --status STATUS     only items in this status: queued, running,\n"
	  "                      succeeded, failed, cancelled\n"
	  "  --format jsonl|csv  JSON Lines (default, the server's objects) or CSV\n"
	  "                      with the columns id, seq, status, attempts, provider,\n"
	  "                      http_status, error, result, payload (the last two as\n"
	  "                      JSON text)\n" },
	{ "workers", cmd_workers, "workers",
	  "The batchd processes sharing the queue: id, host, pid, items in flight,\n"
	  "age of the last heartbeat (by this machine's clock), alive or dead.\n"
	  "With --json, the server's whole /v1/status answer.\n" },
	{ "token", cmd_token,
	  "token create --tenant TENANT | token revoke TOKEN|-|--id ID | token list "
	  "[--tenant TENANT] [-c FILE | --database CONNINFO]",
	  "Create, revoke or list API tokens.  This talks to PostgreSQL directly (an\n"
	  "admin operation): the database is --database CONNINFO, else the database\n"
	  "of the batchd configuration -c FILE (read as batchd reads it: ${VAR},\n"
	  "${file:PATH} and ${credential:NAME} expanded, BATCHD_DATABASE overriding\n"
	  "it), else BATCHD_DATABASE.\n"
	  "\n"
	  "  token create --tenant TENANT   print a new token for TENANT; it is shown\n"
	  "                                 this once only\n"
	  "  token revoke TOKEN             revoke it (- reads TOKEN from standard\n"
	  "                                 input); exit 3 when no such token\n"
	  "  token revoke --id ID           revoke the token with this id (token list)\n"
	  "  token list [--tenant TENANT]   the tokens, oldest first: id, tenant,\n"
	  "                                 created, last used (updated at most once\n"
	  "                                 a minute), revoked; with --json, an object\n"
	  "                                 {\"tokens\":[...]} (RFC 3339 timestamps)\n"
	  "  -c, --config FILE              take the database from this batchd.ini\n"
	  "  --database CONNINFO            the database (libpq conninfo or URI)\n" },
	{ "help", cmd_helpcmd, "help [COMMAND]",
	  "Help on batchctl or on one command.\n" },
};

static const Command *cmd_find(const char *name)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(commands); i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

static void main_help(FILE *f)
{
	size_t i;

	fputs("usage: batchctl [--url URL] [--token TOKEN] [--json] COMMAND [ARGS...]\n"
	      "\n"
	      "Client for the batchd REST API.\n"
	      "\n"
	      "Commands:\n", f);
	for (i = 0; i < ARRAY_SIZE(commands); i++)
		fprintf(f, "  batchctl %s\n", commands[i].usage);
	fputs("\n"
	      "  --url URL      API base URL (env BATCHD_URL, default " DEFAULT_URL ")\n"
	      "  --token TOKEN  API token (env BATCHD_TOKEN)\n"
	      "  --json         print the server's JSON instead of text\n"
	      "  --version      print the version\n"
	      "  -h, --help     this help; 'batchctl COMMAND --help' for a command\n"
	      "\n"
	      "Exit status: 0 ok; 1 the batch did not end 'completed' (submit --wait,\n"
	      "watch); 2 bad usage or invalid input file (nothing sent); 3 error answer\n"
	      "from the server or database (including HTTP 401 for a bad token and 404\n"
	      "for an unknown batch), network error, or output write error.\n", f);
}

static int cmd_helpcmd(Ctl *ctl, const Command *cmd, int argc, char **argv)
{
	const Command *about;

	if (argc < 2) {
		main_help(stdout);
		return EXIT_OK;
	}
	if (argc > 2)
		return usage_error(cmd, "unexpected argument '%s'", argv[2]);
	about = cmd_find(argv[1]);
	if (!about)
		return usage_error(cmd, "unknown command '%s'", argv[1]);
	cmd_help(about, stdout);
	return EXIT_OK;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		COMMON_OPTS,
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	const Command *cmd;
	Ctl ctl;
	int c, rc;

	memset(&ctl, 0, sizeof(ctl));
	/* "batchctl --url U status": the command name first, then every option */
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0 || (argv[i][0] != '-' || argv[i][1] == '\0'))
			break;
		if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-V") == 0) {
			printf("batchctl %s\n", PACKAGE_VERSION);
			return out_finish(EXIT_OK);
		}
		if (option_takes_value(argv[i]))
			i++;
	}
	c = first_operand(argc, argv, 1);
	if (c > 0 && !cmd_find(argv[c]))
		return usage_error(NULL, "unknown command '%s'", argv[c]);
	if (c > 1)
		argv_move(argv, c, 1);
	opterr = 0;
	/* '+': stop at the command name; its options are its own */
	while ((c = getopt_long(argc, argv, "+:hV", opts, NULL)) != -1) {
		switch (c) {
		case OPT_URL:
			ctl.url_opt = optarg;
			break;
		case OPT_TOKEN:
			ctl.token_opt = optarg;
			break;
		case OPT_JSON:
			ctl.json = true;
			break;
		case 'h':
			main_help(stdout);
			return out_finish(EXIT_OK);
		case 'V':
			printf("batchctl %s\n", PACKAGE_VERSION);
			return out_finish(EXIT_OK);
		case ':':
			return usage_error(NULL, "option '%s' needs a value", argv[optind - 1]);
		default:
			if (optopt)
				return usage_error(NULL, "unknown option '-%c'", optopt);
			return usage_error(NULL, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return usage_error(NULL, "missing COMMAND");
	cmd = cmd_find(argv[optind]);
	if (!cmd)
		return usage_error(NULL, "unknown command '%s'", argv[optind]);
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		msg_error("cannot initialise libcurl");
		return EXIT_SERVER;
	}
	rc = cmd->run(&ctl, cmd, argc - optind, argv + optind);
	if (ctl.curl)
		curl_easy_cleanup(ctl.curl);
	free(ctl.url);
	curl_global_cleanup();
	return out_finish(rc);
}
