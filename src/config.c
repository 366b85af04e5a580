/*
 * config.c - load and validate the INI configuration.
 *
 * inih does the key = value parsing.  Debian's libinih is built without
 * line numbers in the handler and without a handler call on a new section,
 * so our own reader feeds it line by line: it counts lines (every error names
 * FILE:LINE) and opens sections itself, which lets us report an empty or
 * duplicate section and know where each section starts.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ini.h>

#include "batchd/config.h"
#include "batchd/expand.h"
#include "batchd/tmpl.h"

/* Longest accepted line, bytes; body templates may be long JSON. */
#define CONFIG_MAX_LINE 65536

enum SectionKind { SEC_NONE, SEC_BATCHD, SEC_PROVIDER, SEC_ROUTE };

typedef struct ConfigCtx ConfigCtx;
typedef struct ConfigKey ConfigKey;

/* Parse value into the field at obj + key->offset; on error call ctx_fail. */
typedef int (*KeySetter)(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value);

struct ConfigKey {
	const char *name;
	KeySetter set;
	size_t offset;          /* field in Config, Provider or Route */
	int64_t min, max;       /* for numbers, durations and sizes */
	bool repeatable;        /* may appear more than once per section */
};

struct ConfigCtx {
	Config *cfg;
	const char *path;
	char dir[4096];         /* the file's directory: base of ${file:relative} */
	FILE *f;

	/* reader state */
	char *linebuf;          /* current line, whole */
	size_t linecap;
	size_t linelen;
	size_t lineoff;         /* bytes of linebuf already handed to inih */
	int line;               /* number of the line being parsed */

	/* current section */
	enum SectionKind kind;
	char *section_raw;      /* section text as inih reports it */
	void *obj;              /* Config, Provider or Route being filled */
	const ConfigKey *keys;
	size_t nkeys;
	uint64_t seen;          /* bit i: keys[i] already set in this section */
	int key_line[64];       /* line where keys[i] was last set in this section */
	int batchd_line;        /* line of [batchd], 0 when absent */

	bool failed;
	char *err;
	size_t errlen;
};

static void ctx_fail_at(ConfigCtx *ctx, int line, const char *fmt, ...) _PRINTF(3, 4);
static void ctx_fail_at(ConfigCtx *ctx, int line, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	if (ctx->failed)
		return;         /* keep the first error */
	ctx->failed = true;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (line > 0)
		snprintf(ctx->err, ctx->errlen, "%s:%d: %s", ctx->path, line, msg);
	else
		snprintf(ctx->err, ctx->errlen, "%s: %s", ctx->path, msg);
}

#define ctx_fail(ctx, ...) ctx_fail_at((ctx), (ctx)->line, __VA_ARGS__)

/* ------------------------------------------------------------ setters */

#define FIELD(obj, key, type) ((type *)((char *)(obj) + (key)->offset))

static int set_string(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	char **field = FIELD(obj, key, char *);

	if (key->min > 0 && *value == '\0') {
		ctx_fail(ctx, "%s must not be empty", key->name);
		return -1;
	}
	free(*field);
	*field = xstrdup(value);
	return 0;
}

static int set_int(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	int64_t v;

	if (parse_int(value, key->min, key->max, &v) < 0) {
		ctx_fail(ctx, "%s: invalid value '%s' (expected an integer from %lld to %lld)",
			 key->name, value, (long long)key->min, (long long)key->max);
		return -1;
	}
	*FIELD(obj, key, int) = (int)v;
	return 0;
}

static int set_duration(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	int64_t v;

	if (parse_duration_ms(value, &v) < 0) {
		ctx_fail(ctx, "%s: invalid duration '%s' (expected e.g. 250ms, 5s, 2m, 1h, 30d)",
			 key->name, value);
		return -1;
	}
	if (v < key->min || v > key->max) {
		ctx_fail(ctx, "%s: duration '%s' out of range (%lldms to %lldms)",
			 key->name, value, (long long)key->min, (long long)key->max);
		return -1;
	}
	*FIELD(obj, key, int64_t) = v;
	return 0;
}

static int set_size(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	int64_t v;

	if (parse_size(value, &v) < 0) {
		ctx_fail(ctx, "%s: invalid size '%s' (expected e.g. 512KB, 1MB, 64MB)",
			 key->name, value);
		return -1;
	}
	if (v < key->min || v > key->max) {
		ctx_fail(ctx, "%s: size '%s' out of range (%lld to %lld bytes)",
			 key->name, value, (long long)key->min, (long long)key->max);
		return -1;
	}
	*FIELD(obj, key, int64_t) = v;
	return 0;
}

/* A rate ("20/s", "0.5/s", "100/m", "1000/h") into a double, per second; at most key->max/s. */
static int set_rate(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	double v;

	if (parse_rate(value, &v) < 0) {
		ctx_fail(ctx, "%s: invalid rate '%s' (expected e.g. 20/s, 0.5/s, 100/m, 1000/h)",
			 key->name, value);
		return -1;
	}
	if (v > (double)key->max) {
		ctx_fail(ctx, "%s: rate '%s' out of range (at most %lld/s)",
			 key->name, value, (long long)key->max);
		return -1;
	}
	*FIELD(obj, key, double) = v;
	return 0;
}

/* A duration where 0 means "off"; anything else must be in key->min..key->max. */
static int set_duration_or_zero(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	int64_t v;

	if (parse_duration_ms(value, &v) < 0) {
		ctx_fail(ctx, "%s: invalid duration '%s' (expected e.g. 250ms, 5s, 2m, 1h, 30d)",
			 key->name, value);
		return -1;
	}
	if (v != 0 && (v < key->min || v > key->max)) {
		ctx_fail(ctx, "%s: duration '%s' out of range (0 or %lldms to %lldms)",
			 key->name, value, (long long)key->min, (long long)key->max);
		return -1;
	}
	*FIELD(obj, key, int64_t) = v;
	return 0;
}

static int set_bool(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	if (parse_bool(value, FIELD(obj, key, bool)) < 0) {
		ctx_fail(ctx, "%s: invalid value '%s' (expected yes or no)", key->name, value);
		return -1;
	}
	return 0;
}

static int set_log_level(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	if (log_parse_level(value, FIELD(obj, key, enum LogLevel)) < 0) {
		ctx_fail(ctx, "log_level: invalid value '%s' (expected error, warn, info or debug)",
			 value);
		return -1;
	}
	return 0;
}

static int set_log_format(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	if (log_parse_format(value, FIELD(obj, key, enum LogFormat)) < 0) {
		ctx_fail(ctx, "log_format: invalid value '%s' (expected text, json or journal)", value);
		return -1;
	}
	return 0;
}

/* "host:port" or "[v6]:port"; the address itself is checked at bind time. */
static int set_listen(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	const char *colon = strrchr(value, ':');
	int64_t port;
	bool ok = colon && colon > value &&
		parse_int(colon + 1, 1, 65535, &port) == 0 && colon[1] != '+' && colon[1] != '-';

	if (ok && value[0] == '[')
		ok = colon[-1] == ']' && colon - value > 2;
	else if (ok)
		ok = memchr(value, ':', (size_t)(colon - value)) == NULL; /* bare v6 */
	if (ok)
		ok = strpbrk(value, " \t") == NULL;
	if (!ok) {
		ctx_fail(ctx, "listen: invalid address '%s' (expected HOST:PORT or [IPV6]:PORT)",
			 value);
		return -1;
	}
	return set_string(ctx, key, obj, value);
}

static int set_method(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	static const char *const methods[] = { "DELETE", "GET", "PATCH", "POST", "PUT" };
	size_t i;

	for (i = 0; i < ARRAY_SIZE(methods); i++) {
		if (strcasecmp(value, methods[i]) == 0) {
			char **field = FIELD(obj, key, char *);

			free(*field);
			*field = xstrdup(methods[i]);
			return 0;
		}
	}
	ctx_fail(ctx, "%s: invalid value '%s' (expected GET, POST, PUT, PATCH or DELETE)",
		 key->name, value);
	return -1;
}

static int set_url(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	char msg[256];

	if (tmpl_check_url(value, msg, sizeof(msg)) < 0) {
		ctx_fail(ctx, "url: %s", msg);
		return -1;
	}
	return set_string(ctx, key, obj, value);
}

/* RFC 9110 token characters, for header names */
static bool is_tchar(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		(c >= '0' && c <= '9') || (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* A header name: one or more token characters. */
static bool valid_header_name(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++) {
		if (!is_tchar(*s))
			return false;
	}
	return true;
}

static int set_header_name(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	if (!valid_header_name(value)) {
		ctx_fail(ctx, "%s: invalid header name '%s' (expected a token such as Idempotency-Key)",
			 key->name, value);
		return -1;
	}
	return set_string(ctx, key, obj, value);
}

static int set_secret_header(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	Provider *p = obj;
	char *name;
	int i;

	/* Not echoed: a mistaken "Name: value" here would carry the secret. */
	if (!valid_header_name(value)) {
		ctx_fail(ctx, "secret_header: invalid header name (expected a token such as X-Api-Key)");
		return -1;
	}
	name = xstrdup(value);
	for (i = 0; name[i]; i++) {
		if (name[i] >= 'A' && name[i] <= 'Z')
			name[i] = (char)(name[i] - 'A' + 'a');
	}
	for (i = 0; i < p->nsecret_headers; i++) {
		if (strcmp(p->secret_headers[i], name) == 0) {
			ctx_fail(ctx, "secret_header: '%s' is listed twice", value);
			free(name);
			return -1;
		}
	}
	p->secret_headers = xrealloc(p->secret_headers,
				     sizeof(char *) * ((size_t)p->nsecret_headers + 2));
	p->secret_headers[p->nsecret_headers++] = name;
	p->secret_headers[p->nsecret_headers] = NULL;
	return 0;
}

/* "404, 409": HTTP status codes, three digits each, 100..599, no repeats. */
static int parse_codes(ConfigCtx *ctx, const char *keyname, const char *value,
		       int **out, int *nout)
{
	char *copy = xstrdup(value), *tok = copy, *comma;
	int *codes, n = 1, i;

	for (comma = copy; *comma; comma++)
		n += *comma == ',';
	codes = xcalloc((size_t)n, sizeof(int));
	for (n = 0; tok; tok = comma) {
		int64_t v;

		comma = strchr(tok, ',');
		if (comma)
			*comma++ = '\0';
		str_trim(tok);
		if (strlen(tok) != 3 || strspn(tok, "0123456789") != 3 ||
		    parse_int(tok, 100, 599, &v) < 0) {
			ctx_fail(ctx, "%s: invalid status code '%s' (expected a comma-separated "
				 "list of HTTP status codes from 100 to 599)", keyname, tok);
			goto fail;
		}
		for (i = 0; i < n; i++) {
			if (codes[i] == (int)v) {
				ctx_fail(ctx, "%s: %d is listed twice", keyname, codes[i]);
				goto fail;
			}
		}
		codes[n++] = (int)v;
	}
	free(copy);
	*out = codes;
	*nout = n;
	return 0;
fail:
	free(copy);
	free(codes);
	return -1;
}

static int set_retry_on(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	Provider *p = obj;

	return parse_codes(ctx, key->name, value, &p->retry_on, &p->nretry_on);
}

static int set_permanent_on(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	Provider *p = obj;

	return parse_codes(ctx, key->name, value, &p->permanent_on, &p->npermanent_on);
}

/*
 * max_concurrency: N (a fixed window), "auto" (adaptive, limiter.h, up to
 * the smaller of max_inflight and LIMITER_AUTO_CEILING) or "auto N" (adaptive
 * with ceiling N).  The adaptive mode is kept in concurrency_auto, with the
 * ceiling (0: none given) in max_concurrency.
 */
static int set_concurrency(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	Provider *p = obj;
	const char *n;
	int64_t v;

	if (strncmp(value, "auto", 4) == 0 && (value[4] == '\0' || value[4] == ' ' ||
						value[4] == '\t')) {
		n = value + 4 + strspn(value + 4, " \t");
		if (*n == '\0' && n == value + 4) {
			p->concurrency_auto = true;
			p->max_concurrency = 0;
			return 0;
		}
		if (*n != '\0' && parse_int(n, key->min, key->max, &v) == 0) {
			p->concurrency_auto = true;
			p->max_concurrency = (int)v;
			return 0;
		}
		ctx_fail(ctx, "%s: invalid ceiling '%s' in '%s' (expected auto N, N an integer "
			 "from %lld to %lld)", key->name, n, value, (long long)key->min,
			 (long long)key->max);
		return -1;
	}
	if (parse_int(value, key->min, key->max, &v) < 0) {
		ctx_fail(ctx, "%s: invalid value '%s' (expected an integer from %lld to %lld, "
			 "auto, or auto N)", key->name, value, (long long)key->min,
			 (long long)key->max);
		return -1;
	}
	p->concurrency_auto = false;
	p->max_concurrency = (int)v;
	return 0;
}

/*
 * A PostgreSQL function, "function" or "schema.function", each part
 * [A-Za-z_][A-Za-z0-9_]*.  It is quoted into SQL later, so nothing else
 * passes; a part over 63 bytes (NAMEDATALEN - 1) would be silently
 * truncated by the server and is refused too.
 */
static int set_sql_function(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	const char *s = value;
	int parts = 0;

	for (;;) {
		size_t len = 0;

		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_'))
			goto bad;
		while ((s[len] >= 'a' && s[len] <= 'z') || (s[len] >= 'A' && s[len] <= 'Z') ||
		       (s[len] >= '0' && s[len] <= '9') || s[len] == '_')
			len++;
		if (len > 63) {
			ctx_fail(ctx, "%s: name '%.*s' is too long (at most 63 characters)",
				 key->name, (int)len, s);
			return -1;
		}
		s += len;
		parts++;
		if (*s == '\0')
			break;
		if (*s != '.' || parts == 2)
			goto bad;
		s++;
	}
	return set_string(ctx, key, obj, value);
bad:
	ctx_fail(ctx, "%s: invalid function name '%s' (expected function or schema.function; "
		 "letters, digits and '_', not starting with a digit)", key->name, value);
	return -1;
}

static int set_header(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	Provider *p = obj;
	const char *v = value;

	/* The value is not echoed: headers usually carry credentials. */
	while (is_tchar(*v))
		v++;
	if (v == value || *v != ':') {
		ctx_fail(ctx, "header must look like 'Name: value' (a token name, then a colon)");
		return -1;
	}
	v += strspn(v + 1, " \t") + 1;
	if (*v == '\0') {
		/* curl would take "Name:" as "remove this header" */
		ctx_fail(ctx, "header '%.*s' has an empty value", (int)(strchr(value, ':') - value),
			 value);
		return -1;
	}
	for (const char *c = v; *c; c++) {
		/* a CR or LF (say from ${VAR}) would inject another header */
		if (((unsigned char)*c < 0x20 && *c != '\t') || *c == 0x7f) {
			ctx_fail(ctx, "header '%.*s' has a control character in its value",
				 (int)(strchr(value, ':') - value), value);
			return -1;
		}
	}
	p->headers = xrealloc(p->headers, sizeof(char *) * ((size_t)p->nheaders + 2));
	p->headers[p->nheaders++] = xstrdup(value);
	p->headers[p->nheaders] = NULL;
	return 0;
}

/* A "Name: value" header line (CR/LF/control characters refused); the value
 * is not echoed in errors.  0, or -1 with ctx failed. */
static int check_header_line(ConfigCtx *ctx, const char *keyname, const char *value)
{
	const char *v = value;

	while (is_tchar(*v))
		v++;
	if (v == value || *v != ':') {
		ctx_fail(ctx, "%s must look like 'Name: value' (a token name, then a colon)", keyname);
		return -1;
	}
	v += strspn(v + 1, " \t") + 1;
	if (*v == '\0') {
		ctx_fail(ctx, "%s '%.*s' has an empty value", keyname,
			 (int)(strchr(value, ':') - value), value);
		return -1;
	}
	for (const char *c = v; *c; c++) {
		if (((unsigned char)*c < 0x20 && *c != '\t') || *c == 0x7f) {
			ctx_fail(ctx, "%s '%.*s' has a control character in its value", keyname,
				 (int)(strchr(value, ':') - value), value);
			return -1;
		}
	}
	return 0;
}

static int set_login_header(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	Provider *p = obj;

	if (check_header_line(ctx, key->name, value) < 0)
		return -1;
	p->login_headers = xrealloc(p->login_headers,
				    sizeof(char *) * ((size_t)p->nlogin_headers + 2));
	p->login_headers[p->nlogin_headers++] = xstrdup(value);
	p->login_headers[p->nlogin_headers] = NULL;
	return 0;
}

/* "Name: text{token}text": exactly one {token}, nothing else in braces. */
static int set_token_header(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	const char *t;

	if (check_header_line(ctx, key->name, value) < 0)
		return -1;
	t = strstr(value, "{token}");
	if (!t || strstr(t + 1, "{token}")) {
		ctx_fail(ctx, "%s must hold {token} exactly once (e.g. 'Authorization: Bearer {token}')",
			 key->name);
		return -1;
	}
	if (t < strchr(value, ':')) {
		ctx_fail(ctx, "%s: {token} belongs in the value, not the header name", key->name);
		return -1;
	}
	return set_string(ctx, key, obj, value);
}

/* The login URL: http(s), used as written (no {placeholders}: there is no item). */
static int set_login_url(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	char msg[256];

	if (tmpl_check_url(value, msg, sizeof(msg)) < 0) {
		ctx_fail(ctx, "%s: %s", key->name, msg);
		return -1;
	}
	if (strpbrk(value, "{}")) {
		ctx_fail(ctx, "%s takes no {placeholders} (it is not sent for an item)", key->name);
		return -1;
	}
	return set_string(ctx, key, obj, value);
}

/* A dotted path into a JSON object: "access_token", "data.token". */
static int set_json_path(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	const char *s = value;
	bool ok = *s != '\0';

	for (; ok && *s; s++) {
		if (*s == '.')
			ok = s != value && s[1] != '\0' && s[1] != '.';
		else
			ok = (unsigned char)*s > 0x20 && *s != 0x7f;
	}
	if (!ok) {
		ctx_fail(ctx, "%s: invalid field '%s' (expected a JSON field name, or a dotted "
			 "path such as data.token)", key->name, value);
		return -1;
	}
	return set_string(ctx, key, obj, value);
}

static int set_content_type(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	for (const char *c = value; *c; c++) {
		if ((unsigned char)*c < 0x20 || *c == 0x7f) {
			ctx_fail(ctx, "%s has a control character", key->name);
			return -1;
		}
	}
	if (!*value || !strchr(value, '/')) {
		ctx_fail(ctx, "%s: invalid media type '%s' (expected e.g. application/json)",
			 key->name, value);
		return -1;
	}
	return set_string(ctx, key, obj, value);
}

static int set_providers(ConfigCtx *ctx, const ConfigKey *key, void *obj, const char *value)
{
	Route *r = obj;
	char *copy = xstrdup(value), *save = NULL, *tok;
	const char *p;
	int n = 0, i;

	/* strtok_r would skip empty items; "a,,b" must be an error */
	for (p = value; *p; p++)
		n += *p == ',';
	r->provider_names = xcalloc((size_t)n + 2, sizeof(char *));
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		str_trim(tok);
		if (*tok == '\0')
			break;
		for (i = 0; i < r->nproviders; i++) {
			if (strcmp(r->provider_names[i], tok) == 0) {
				ctx_fail(ctx, "providers: '%s' is listed twice", tok);
				free(copy);
				return -1;
			}
		}
		r->provider_names[r->nproviders++] = xstrdup(tok);
	}
	free(copy);
	if (r->nproviders != n + 1) {
		ctx_fail(ctx, "providers: expected a comma-separated list of provider names");
		return -1;
	}
	r->providers_line = ctx->line;
	return 0;
}

/* Key tables, alphabetical. */

#define CFG(field) offsetof(Config, field)
#define PRV(field) offsetof(Provider, field)
#define RTE(field) offsetof(Route, field)
#define DAY_MS (86400LL * 1000)

#define HOUR_MS (3600LL * 1000)
#define GB (1024LL * 1024 * 1024)
#define MAX_RATE 1000000        /* requests per second */

static const ConfigKey batchd_keys[] = {
	{ "claim_ahead", set_int, CFG(claim_ahead), 0, 100000, false },
	{ "database", set_string, CFG(database), 1, 0, false },
	{ "flush_interval", set_duration, CFG(flush_interval_ms), 0, 60 * 1000, false },
	{ "flush_size", set_int, CFG(flush_size), 1, 100000, false },
	{ "heartbeat_interval", set_duration, CFG(heartbeat_interval_ms), 100, HOUR_MS, false },
	{ "idempotency_ttl", set_duration, CFG(idempotency_ttl_ms), 60 * 1000, 3650 * DAY_MS, false },
	{ "lease_timeout", set_duration, CFG(lease_timeout_ms), 1000, DAY_MS, false },
	{ "listen", set_listen, CFG(listen), 1, 0, false },
	{ "log_format", set_log_format, CFG(log_format), 0, 0, false },
	{ "log_level", set_log_level, CFG(log_level), 0, 0, false },
	{ "max_batch_retries", set_int, CFG(max_batch_retries), 0, 1000000, false },
	{ "max_body_size", set_size, CFG(max_body_size), 1024, GB, false },
	{ "max_inflight", set_int, CFG(max_inflight), 1, 100000, false },
	{ "poll_interval", set_duration, CFG(poll_interval_ms), 10, DAY_MS, false },
	{ "retention", set_duration_or_zero, CFG(retention_ms), HOUR_MS, 3650 * DAY_MS, false },
	{ "shutdown_timeout", set_duration, CFG(shutdown_timeout_ms), 0, DAY_MS, false },
	{ "watchdog_db_grace", set_duration, CFG(watchdog_db_grace_ms), 1000, DAY_MS, false },
};

static const ConfigKey provider_keys[] = {
	{ "backoff", set_duration, PRV(backoff_ms), 1, HOUR_MS, false },
	{ "backoff_max", set_duration, PRV(backoff_max_ms), 1, DAY_MS, false },
	{ "body", set_string, PRV(body), 0, 0, false },
	{ "breaker_cooldown", set_duration, PRV(breaker_cooldown_ms), 10, DAY_MS, false },
	{ "breaker_failures", set_int, PRV(breaker_failures), 1, 100000, false },
	{ "burst", set_int, PRV(burst), 1, 100000, false },
	{ "connect_timeout", set_duration, PRV(connect_timeout_ms), 1, DAY_MS, false },
	{ "header", set_header, 0, 0, 0, true },
	{ "idempotency_header", set_header_name, PRV(idempotency_header), 0, 0, false },
	{ "login_body", set_string, PRV(login_body), 0, 0, false },
	{ "login_content_type", set_content_type, PRV(login_content_type), 0, 0, false },
	{ "login_expires_field", set_json_path, PRV(login_expires_field), 0, 0, false },
	{ "login_header", set_login_header, 0, 0, 0, true },
	{ "login_method", set_method, PRV(login_method), 0, 0, false },
	{ "login_refresh_margin", set_duration, PRV(login_refresh_margin_ms), 0, DAY_MS, false },
	{ "login_token_field", set_json_path, PRV(login_token_field), 0, 0, false },
	{ "login_token_lifetime", set_duration_or_zero, PRV(login_token_lifetime_ms), 1000, 3650 * DAY_MS, false },
	{ "login_url", set_login_url, PRV(login_url), 1, 0, false },
	{ "max_concurrency", set_concurrency, PRV(max_concurrency), 1, 100000, false },
	{ "max_response_size", set_size, PRV(max_response_size), 1, GB, false },
	{ "method", set_method, PRV(method), 0, 0, false },
	{ "permanent_on", set_permanent_on, 0, 0, 0, false },
	{ "rate", set_rate, PRV(rate), 0, MAX_RATE, false },
	{ "requeue_after", set_duration, PRV(requeue_after_ms), 0, DAY_MS, false },
	{ "retries", set_int, PRV(retries), 0, 100, false },
	{ "retry_on", set_retry_on, 0, 0, 0, false },
	{ "secret_header", set_secret_header, 0, 0, 0, true },
	{ "timeout", set_duration, PRV(timeout_ms), 1, DAY_MS, false },
	{ "token_header", set_token_header, PRV(token_header), 0, 0, false },
	{ "url", set_url, PRV(url), 1, 0, false },
};

static const ConfigKey route_keys[] = {
	{ "batch_concurrency", set_int, RTE(batch_concurrency), 0, 100000, false },
	{ "failover_on_permanent", set_bool, RTE(failover_on_permanent), 0, 0, false },
	{ "group_concurrency", set_int, RTE(group_concurrency), 1, 100000, false },
	{ "group_rate", set_rate, RTE(group_rate), 0, MAX_RATE, false },
	{ "hook", set_sql_function, RTE(hook), 0, 0, false },
	{ "on_batch_done", set_sql_function, RTE(on_batch_done), 0, 0, false },
	{ "providers", set_providers, 0, 0, 0, false },
};

/* ConfigCtx.seen has one bit per key */
_Static_assert(ARRAY_SIZE(batchd_keys) <= 64 && ARRAY_SIZE(provider_keys) <= 64 &&
	       ARRAY_SIZE(route_keys) <= 64, "too many keys for the seen bitmask");

/* ------------------------------------------------------------ sections */

static bool valid_name(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++) {
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '_' || *s == '-' || *s == '.'))
			return false;
	}
	return true;
}

static Provider *provider_new(const char *name, int line)
{
	Provider *p = xcalloc(1, sizeof(*p));

	p->name = xstrdup(name);
	p->method = xstrdup("GET");
	p->timeout_ms = 30 * 1000;
	p->connect_timeout_ms = 10 * 1000;
	p->max_response_size = 1024 * 1024;
	p->burst = 1;
	p->retries = 3;
	p->backoff_ms = 1000;
	p->backoff_max_ms = 60 * 1000;
	p->requeue_after_ms = 30 * 1000;
	p->breaker_failures = 5;
	p->breaker_cooldown_ms = 60 * 1000;
	p->login_refresh_margin_ms = -1;
	p->line = line;
	return p;
}

static void provider_free(Provider *p)
{
	int i;

	if (!p)
		return;
	for (i = 0; i < p->nheaders; i++)
		free(p->headers[i]);
	free(p->headers);
	for (i = 0; i < p->nsecret_headers; i++)
		free(p->secret_headers[i]);
	free(p->secret_headers);
	free(p->retry_on);
	free(p->permanent_on);
	free(p->idempotency_header);
	for (i = 0; i < p->nlogin_headers; i++)
		free(p->login_headers[i]);
	free(p->login_headers);
	free(p->login_url);
	free(p->login_method);
	free(p->login_body);
	free(p->login_content_type);
	free(p->login_token_field);
	free(p->login_expires_field);
	free(p->token_header);
	free(p->name);
	free(p->url);
	free(p->method);
	free(p->body);
	free(p);
}

static void route_free(Route *r)
{
	int i;

	if (!r)
		return;
	if (r->provider_names) {
		for (i = 0; r->provider_names[i]; i++)
			free(r->provider_names[i]);
	}
	free(r->provider_names);
	free(r->providers);
	free(r->hook);
	free(r->on_batch_done);
	free(r->name);
	free(r);
}

/* Line where the current section set key name, 0 if it did not. */
static int key_line(const ConfigCtx *ctx, const char *name)
{
	size_t i;

	for (i = 0; i < ctx->nkeys; i++) {
		if (strcmp(ctx->keys[i].name, name) == 0)
			return (ctx->seen & (1ULL << i)) ? ctx->key_line[i] : 0;
	}
	return 0;
}

/* A duration in the largest unit that divides it: "5s", "1500ms", "2m". */
static const char *format_ms(int64_t ms, char *buf, size_t len)
{
	static const struct { const char *unit; int64_t mult; } units[] = {
		{ "d", DAY_MS }, { "h", HOUR_MS }, { "m", 60 * 1000 }, { "s", 1000 },
	};
	size_t i;

	for (i = 0; ms != 0 && i < ARRAY_SIZE(units); i++) {
		if (ms % units[i].mult == 0) {
			snprintf(buf, len, "%lld%s", (long long)(ms / units[i].mult), units[i].unit);
			return buf;
		}
	}
	snprintf(buf, len, "%lldms", (long long)ms);
	return buf;
}

/* Length of a header line's name (up to the colon). */
static size_t header_name_len(const char *h)
{
	const char *colon = strchr(h, ':');

	return colon ? (size_t)(colon - h) : strlen(h);
}

/*
 * The login keys of a provider section: none without login_url; with it,
 * the defaults, and what cannot work together.
 */
static int login_close(ConfigCtx *ctx, Provider *p)
{
	static const char *const keys[] = {
		"login_body", "login_content_type", "login_expires_field", "login_header",
		"login_method", "login_refresh_margin", "login_token_field",
		"login_token_lifetime", "token_header",
	};
	int line;

	if (!p->login_url) {
		for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
			if ((line = key_line(ctx, keys[i])) > 0) {
				ctx_fail_at(ctx, line, "%s needs login_url in [provider %s]", keys[i],
					    p->name);
				return -1;
			}
		}
		return 0;
	}
	if (!p->login_method)
		p->login_method = xstrdup("POST");
	if (!p->login_content_type)
		p->login_content_type = xstrdup("application/json");
	if (!p->login_token_field)
		p->login_token_field = xstrdup("access_token");
	if (!p->login_expires_field)
		p->login_expires_field = xstrdup("expires_in");
	if (!p->token_header)
		p->token_header = xstrdup("Authorization: Bearer {token}");
	if (p->login_body && (strcmp(p->login_method, "GET") == 0 ||
			      strcmp(p->login_method, "DELETE") == 0)) {
		line = key_line(ctx, "login_method");
		ctx_fail_at(ctx, line ? line : key_line(ctx, "login_body"),
			    "login_body needs login_method POST, PUT or PATCH (login_method is %s%s)",
			    p->login_method, line ? "" : ", the default");
		return -1;
	}
	if (p->login_token_lifetime_ms > 0 &&
	    p->login_refresh_margin_ms >= p->login_token_lifetime_ms) {
		ctx_fail_at(ctx, key_line(ctx, "login_refresh_margin"),
			    "login_refresh_margin must be shorter than login_token_lifetime");
		return -1;
	}
	for (int i = 0; i < p->nheaders; i++) {
		size_t n = header_name_len(p->token_header);

		if (header_name_len(p->headers[i]) == n &&
		    strncasecmp(p->headers[i], p->token_header, n) == 0) {
			line = key_line(ctx, "token_header");
			ctx_fail_at(ctx, line ? line : key_line(ctx, "header"),
				    "header %.*s is also the token header of the login (token_header%s): "
				    "remove one", (int)n, p->token_header, line ? "" : ", the default");
			return -1;
		}
	}
	return 0;
}

/*
 * Checks across keys of one section, run when it ends (the next section
 * header or the end of the file), while the lines of its keys are known.
 * An error names the line of the key the message starts with, or of the
 * other key when that one was left at its default; for two lists, the
 * one written last.
 */
static void section_close(ConfigCtx *ctx)
{
	char a[32], b[32];

	if (ctx->failed)
		return;
	if (ctx->kind == SEC_BATCHD) {
		Config *cfg = ctx->obj;
		int lease = key_line(ctx, "lease_timeout");
		int hb = key_line(ctx, "heartbeat_interval");

		if (cfg->lease_timeout_ms < 2 * cfg->heartbeat_interval_ms)
			ctx_fail_at(ctx, lease ? lease : hb,
				    "lease_timeout (%s%s) must be at least twice heartbeat_interval (%s)",
				    format_ms(cfg->lease_timeout_ms, a, sizeof(a)),
				    lease ? "" : ", the default",
				    format_ms(cfg->heartbeat_interval_ms, b, sizeof(b)));
	} else if (ctx->kind == SEC_PROVIDER) {
		Provider *p = ctx->obj;
		int max = key_line(ctx, "backoff_max");
		int base = key_line(ctx, "backoff");
		int retry = key_line(ctx, "retry_on");
		int perm = key_line(ctx, "permanent_on");
		const int *later = p->permanent_on, *other = p->retry_on;
		int nlater = p->npermanent_on, nother = p->nretry_on, i, j;

		if (login_close(ctx, p) < 0)
			return;
		if (p->backoff_max_ms < p->backoff_ms) {
			ctx_fail_at(ctx, max ? max : base,
				    "backoff_max (%s%s) must be at least backoff (%s)",
				    format_ms(p->backoff_max_ms, a, sizeof(a)),
				    max ? "" : ", the default",
				    format_ms(p->backoff_ms, b, sizeof(b)));
			return;
		}
		if (retry > perm) {
			later = p->retry_on;
			other = p->permanent_on;
			nlater = p->nretry_on;
			nother = p->npermanent_on;
		}
		for (i = 0; i < nlater; i++) {
			for (j = 0; j < nother; j++) {
				if (later[i] == other[j]) {
					ctx_fail_at(ctx, retry > perm ? retry : perm,
						    "%s: %d is also listed in %s",
						    retry > perm ? "retry_on" : "permanent_on",
						    later[i],
						    retry > perm ? "permanent_on" : "retry_on");
					return;
				}
			}
		}
	}
}

/*
 * Open the section whose header text (between the brackets) is raw:
 * "batchd", "provider NAME" or "route NAME".
 */
static void section_open(ConfigCtx *ctx, const char *raw)
{
	Config *cfg = ctx->cfg;
	char *text = str_trim(xstrdup(raw)), *name;
	size_t kindlen = strcspn(text, " \t");
	int i;

	name = text + kindlen;
	name += strspn(name, " \t");
	text[kindlen] = '\0';

	section_close(ctx);
	if (ctx->failed)
		goto out;

	free(ctx->section_raw);
	ctx->section_raw = xstrdup(raw);
	/* inih truncates section names to 49 bytes; ours must match it */
	if (strlen(raw) > 49) {
		ctx_fail(ctx, "section header too long (max 49 characters)");
		goto out;
	}
	ctx->seen = 0;

	if (strcmp(text, "batchd") == 0) {
		if (*name) {
			ctx_fail(ctx, "[batchd] takes no name");
		} else if (ctx->batchd_line) {
			ctx_fail(ctx, "duplicate section [batchd] (first at line %d)",
				 ctx->batchd_line);
		} else {
			ctx->batchd_line = ctx->line;
			ctx->kind = SEC_BATCHD;
			ctx->obj = cfg;
			ctx->keys = batchd_keys;
			ctx->nkeys = ARRAY_SIZE(batchd_keys);
		}
	} else if (strcmp(text, "provider") == 0 || strcmp(text, "route") == 0) {
		bool is_prov = text[0] == 'p';

		if (!valid_name(name)) {
			ctx_fail(ctx, "[%s NAME]: %s (letters, digits, '_', '-', '.')", text,
				 *name ? "invalid name" : "missing name");
			goto out;
		}
		for (i = 0; is_prov && i < cfg->nproviders; i++) {
			if (strcmp(cfg->providers[i]->name, name) == 0) {
				ctx_fail(ctx, "duplicate section [provider %s] (first at line %d)",
					 name, cfg->providers[i]->line);
				goto out;
			}
		}
		for (i = 0; !is_prov && i < cfg->nroutes; i++) {
			if (strcmp(cfg->routes[i]->name, name) == 0) {
				ctx_fail(ctx, "duplicate section [route %s] (first at line %d)",
					 name, cfg->routes[i]->line);
				goto out;
			}
		}
		if (is_prov) {
			Provider *p = provider_new(name, ctx->line);

			cfg->providers = xrealloc(cfg->providers,
						  sizeof(Provider *) * ((size_t)cfg->nproviders + 1));
			cfg->providers[cfg->nproviders++] = p;
			ctx->kind = SEC_PROVIDER;
			ctx->obj = p;
			ctx->keys = provider_keys;
			ctx->nkeys = ARRAY_SIZE(provider_keys);
		} else {
			Route *r = xcalloc(1, sizeof(*r));

			r->name = xstrdup(name);
			r->line = ctx->line;
			cfg->routes = xrealloc(cfg->routes,
					       sizeof(Route *) * ((size_t)cfg->nroutes + 1));
			cfg->routes[cfg->nroutes++] = r;
			ctx->kind = SEC_ROUTE;
			ctx->obj = r;
			ctx->keys = route_keys;
			ctx->nkeys = ARRAY_SIZE(route_keys);
		}
	} else {
		ctx_fail(ctx, "unknown section [%s] (expected [batchd], [provider NAME] or [route NAME])",
			 raw);
	}
out:
	free(text);
}

static const char *section_label(ConfigCtx *ctx, char *buf, size_t len)
{
	if (ctx->kind == SEC_PROVIDER)
		snprintf(buf, len, "[provider %s]", ((Provider *)ctx->obj)->name);
	else if (ctx->kind == SEC_ROUTE)
		snprintf(buf, len, "[route %s]", ((Route *)ctx->obj)->name);
	else
		snprintf(buf, len, "[batchd]");
	return buf;
}

/* ------------------------------------------------------------ inih glue */

/*
 * fgets-like reader for ini_parse_stream.  Reads a whole line, counts it,
 * opens sections, and hands the line to inih in chunks of at most num - 1
 * bytes (inih grows its buffer and asks again for the rest of a long line).
 * Returning NULL ends parsing: on EOF, and after an error.
 */
static char *config_reader(char *str, int num, void *stream)
{
	ConfigCtx *ctx = stream;
	size_t n;

	if (ctx->failed)
		return NULL;
	if (num < 2) {
		ctx_fail(ctx, "internal error: inih line buffer too small");
		return NULL;
	}
	if (ctx->lineoff >= ctx->linelen) {
		ssize_t got = getline(&ctx->linebuf, &ctx->linecap, ctx->f);
		char *s;

		if (got < 0) {
			if (ferror(ctx->f))
				ctx_fail_at(ctx, 0, "read error: %s", strerror(errno));
			return NULL;
		}
		ctx->line++;
		ctx->linelen = (size_t)got;
		ctx->lineoff = 0;
		if (memchr(ctx->linebuf, '\0', ctx->linelen)) {
			ctx_fail(ctx, "NUL byte in line");
			return NULL;
		}
		if (ctx->linelen >= CONFIG_MAX_LINE - 2) {
			ctx_fail(ctx, "line too long (over %d bytes)", CONFIG_MAX_LINE - 3);
			return NULL;
		}
		/* Section header? Same rule as inih: first non-space char is '['. */
		s = ctx->linebuf;
		if (ctx->line == 1 && strncmp(s, "\xEF\xBB\xBF", 3) == 0)
			s += 3;
		s += strspn(s, " \t\r\n\v\f");
		if (*s == '[') {
			char *close = strchr(s, ']'), *rest;

			if (!close) {
				ctx_fail(ctx, "section header without ']'");
				return NULL;
			}
			rest = close + 1;
			rest += strspn(rest, " \t\r\n\v\f");
			if (*rest) {
				ctx_fail(ctx, "unexpected text after section header");
				return NULL;
			}
			*close = '\0';
			section_open(ctx, s + 1);
			*close = ']';
			if (ctx->failed)
				return NULL;
		}
	}
	n = ctx->linelen - ctx->lineoff;
	if (n > (size_t)num - 1)
		n = (size_t)num - 1;
	memcpy(str, ctx->linebuf + ctx->lineoff, n);
	str[n] = '\0';
	ctx->lineoff += n;
	return str;
}

static int config_handler(void *user, const char *section, const char *name, const char *value)
{
	ConfigCtx *ctx = user;
	char label[300];
	char msg[256];
	char *expanded;
	size_t i;
	int rc;

	if (ctx->failed)
		return 0;
	if (ctx->kind == SEC_NONE || !ctx->section_raw || strcmp(section, ctx->section_raw) != 0) {
		ctx_fail(ctx, "key '%s' outside of any section", name);
		return 0;
	}
	for (i = 0; i < ctx->nkeys; i++) {
		if (strcmp(ctx->keys[i].name, name) == 0)
			break;
	}
	if (i == ctx->nkeys) {
		ctx_fail(ctx, "unknown key '%s' in %s", name, section_label(ctx, label, sizeof(label)));
		return 0;
	}
	if (!ctx->keys[i].repeatable && (ctx->seen & (1ULL << i))) {
		ctx_fail(ctx, "duplicate key '%s' in %s", name, section_label(ctx, label, sizeof(label)));
		return 0;
	}
	ctx->seen |= 1ULL << i;
	ctx->key_line[i] = ctx->line;

	expanded = config_expand(value, ctx->dir, msg, sizeof(msg));
	if (!expanded) {
		ctx_fail(ctx, "%s: %s", name, msg);
		return 0;
	}
	rc = ctx->keys[i].set(ctx, &ctx->keys[i], ctx->obj, expanded);
	free(expanded);
	return rc == 0;
}

/* ------------------------------------------------------------ validation */

static void config_validate(ConfigCtx *ctx)
{
	Config *cfg = ctx->cfg;
	const char *env = getenv("BATCHD_DATABASE");
	int i, j;

	if (env) {
		free(cfg->database);
		cfg->database = xstrdup(env);
	}
	if (!cfg->database)
		ctx_fail_at(ctx, ctx->batchd_line,
			    "[batchd] database is required (or set BATCHD_DATABASE)");
	if (cfg->claim_ahead < 0) {
		/* the floor; the claimer adds what the drain rate needs (claim.c) */
		cfg->claim_ahead_auto = true;
		cfg->claim_ahead = cfg->max_inflight / 10;
		if (cfg->claim_ahead > 100)
			cfg->claim_ahead = 100;
	}

	for (i = 0; i < cfg->nproviders && !ctx->failed; i++) {
		Provider *p = cfg->providers[i];

		if (!p->url)
			ctx_fail_at(ctx, p->line, "[provider %s] has no url", p->name);
	}
	for (i = 0; i < cfg->nroutes && !ctx->failed; i++) {
		Route *r = cfg->routes[i];

		if (r->nproviders == 0) {
			ctx_fail_at(ctx, r->line, "[route %s] has no providers", r->name);
			break;
		}
		if (r->batch_concurrency > 0 && (r->group_concurrency > 0 || r->group_rate > 0)) {
			/* one claim path per route (claim.sql): batch slots or group limits */
			ctx_fail_at(ctx, r->line, "[route %s] batch_concurrency cannot be combined with "
				    "group_concurrency or group_rate", r->name);
			break;
		}
		r->providers = xcalloc((size_t)r->nproviders, sizeof(Provider *));
		for (j = 0; j < r->nproviders; j++) {
			r->providers[j] = config_find_provider(cfg, r->provider_names[j]);
			if (!r->providers[j]) {
				ctx_fail_at(ctx, r->providers_line,
					    "[route %s] names unknown provider '%s'",
					    r->name, r->provider_names[j]);
				break;
			}
		}
	}
	if (!ctx->failed && cfg->nroutes == 0)
		ctx_fail_at(ctx, 0, "at least one [route NAME] section is required");
}

/* ------------------------------------------------------------ public */

Config *config_load(const char *path, char *err, size_t errlen)
{
	ConfigCtx ctx;
	Config *cfg;
	int rc;

	memset(&ctx, 0, sizeof(ctx));
	ctx.path = path;
	{
		const char *slash = strrchr(path, '/');

		if (!slash)
			snprintf(ctx.dir, sizeof(ctx.dir), ".");
		else if (slash == path)
			snprintf(ctx.dir, sizeof(ctx.dir), "/");
		else
			snprintf(ctx.dir, sizeof(ctx.dir), "%.*s", (int)(slash - path), path);
	}
	ctx.err = err;
	ctx.errlen = errlen;
	if (errlen)
		err[0] = '\0';

	ctx.f = fopen(path, "r");
	if (!ctx.f) {
		snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
		return NULL;
	}

	cfg = xcalloc(1, sizeof(*cfg));
	cfg->path = xstrdup(path);
	cfg->max_inflight = 100;
	cfg->claim_ahead = -1;          /* auto: set in config_validate */
	cfg->log_level = LG_INFO;
	cfg->log_format = LOGF_AUTO;
	cfg->shutdown_timeout_ms = 30 * 1000;
	cfg->poll_interval_ms = 5 * 1000;
	cfg->flush_interval_ms = 20;
	cfg->flush_size = 500;
	cfg->heartbeat_interval_ms = 5 * 1000;
	cfg->lease_timeout_ms = 30 * 1000;
	cfg->max_body_size = 64LL * 1024 * 1024;
	cfg->retention_ms = 0;
	cfg->idempotency_ttl_ms = DAY_MS;
	cfg->max_batch_retries = 10;
	cfg->watchdog_db_grace_ms = 60 * 1000;
	ctx.cfg = cfg;

	/*
	 * inih's runtime options (process-wide; only config loading uses inih):
	 * values may contain ';' and '#', indented lines are ordinary lines,
	 * stop at the first error, and a heap line buffer that grows so our
	 * reader may hand over long lines.
	 */
	ini_allow_inline_comments = false;
	ini_allow_multiline = false;
	ini_allow_no_value = false;
	ini_stop_on_first_error = true;
	ini_use_stack = false;
	ini_allow_realloc = true;
	ini_max_line = CONFIG_MAX_LINE;

	rc = ini_parse_stream(config_reader, &ctx, config_handler, &ctx);
	if (rc == -2)
		ctx_fail_at(&ctx, 0, "out of memory");
	else if (rc != 0 && !ctx.failed)
		ctx_fail(&ctx, "syntax error (expected 'key = value', '[section]' or a comment)");
	else
		section_close(&ctx);    /* the last one */
	fclose(ctx.f);
	free(ctx.linebuf);
	free(ctx.section_raw);

	if (!ctx.failed)
		config_validate(&ctx);
	if (ctx.failed) {
		config_free(cfg);
		return NULL;
	}
	return cfg;
}

void config_free(Config *cfg)
{
	int i;

	if (!cfg)
		return;
	for (i = 0; i < cfg->nproviders; i++)
		provider_free(cfg->providers[i]);
	for (i = 0; i < cfg->nroutes; i++)
		route_free(cfg->routes[i]);
	free(cfg->providers);
	free(cfg->routes);
	free(cfg->path);
	free(cfg->database);
	free(cfg->listen);
	free(cfg);
}

Provider *config_find_provider(const Config *cfg, const char *name)
{
	int i;

	for (i = 0; i < cfg->nproviders; i++) {
		if (strcmp(cfg->providers[i]->name, name) == 0)
			return cfg->providers[i];
	}
	return NULL;
}

static bool str_eq(const char *a, const char *b)
{
	return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

bool config_login_equal(const Provider *a, const Provider *b)
{
	if (!str_eq(a->login_url, b->login_url) || !str_eq(a->login_method, b->login_method) ||
	    !str_eq(a->login_body, b->login_body) ||
	    !str_eq(a->login_content_type, b->login_content_type) ||
	    !str_eq(a->login_token_field, b->login_token_field) ||
	    !str_eq(a->login_expires_field, b->login_expires_field) ||
	    !str_eq(a->token_header, b->token_header) ||
	    a->login_token_lifetime_ms != b->login_token_lifetime_ms ||
	    a->login_refresh_margin_ms != b->login_refresh_margin_ms ||
	    a->nlogin_headers != b->nlogin_headers)
		return false;
	for (int i = 0; i < a->nlogin_headers; i++)
		if (strcmp(a->login_headers[i], b->login_headers[i]) != 0)
			return false;
	return true;
}

Route *config_find_route(const Config *cfg, const char *name)
{
	int i;

	for (i = 0; i < cfg->nroutes; i++) {
		if (strcmp(cfg->routes[i]->name, name) == 0)
			return cfg->routes[i];
	}
	return NULL;
}

