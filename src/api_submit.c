/*
 * api_submit.c - the check POST /v1/batches runs on a body before any
 * query (see api_submit.h).  yajl's event parser, no tree, so memory stays
 * linear in the body: types, ranges, unknown or duplicate fields, depth <=
 * API_MAX_DEPTH; then json.c's strict scanner (UTF-8, one value, what jsonb
 * refuses) and the route against the configuration.  No server, database
 * or event loop is needed (tests/fuzz/fuzz_submit.c links it alone).
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_parse.h>

#include "batchd/api_submit.h"
#include "batchd/json.h"
#include "batchd/log.h"

#define API_MAX_DEPTH 64            /* JSON nesting in a request body */

/* A JSON number (its text) that is an integer from lo to hi; 5.0 counts,
 * as it does for batchd.submit_batch. */
static bool json_int_in_range(const char *s, size_t len, int lo, int hi)
{
	char buf[64], *end;
	double d;

	if (len == 0 || len >= sizeof(buf))
		return false;
	memcpy(buf, s, len);
	buf[len] = '\0';
	errno = 0;
	d = strtod(buf, &end);
	if (*end || errno == ERANGE || !isfinite(d) || d != floor(d))
		return false;
	return d >= lo && d <= hi;
}

enum SubKey { SK_NONE = -1, SK_ROUTE, SK_ITEMS, SK_NAME, SK_PRIORITY, SK_MAX_ATTEMPTS,
	      SK_GROUP_KEY, SK_METADATA, SK_COUNT };

static const char *const sub_keys[SK_COUNT] = {
	"route", "items", "name", "priority", "max_attempts", "group_key", "metadata",
};
static const char *const sub_type_msg[SK_COUNT] = {
	"route must be a string naming a configured route",
	"items must be a non-empty array of JSON objects",
	"name must be a string of at most 200 characters",
	"priority must be an integer from 0 to 10",
	"max_attempts must be an integer from 1 to 100",
	"group_key must be a string naming a payload field",
	"metadata must be a JSON object",
};

/* State of the event-parser check of a submit body. */
typedef struct SubmitCheck {
	int depth;                  /* open containers; 1: inside the body object */
	int key;                    /* top-level field whose value comes next */
	unsigned seen;
	bool in_items;              /* the items array (depth 2) is open */
	long long nitems;
	char *route;
	char err[512];
} SubmitCheck;

static int sc_fail(SubmitCheck *c, const char *fmt, ...) _PRINTF(2, 3);
static int sc_fail(SubmitCheck *c, const char *fmt, ...)
{
	va_list ap;

	if (!c->err[0]) {
		va_start(ap, fmt);
		vsnprintf(c->err, sizeof(c->err), fmt, ap);
		va_end(ap);
	}
	return 0;   /* stops yajl */
}

enum ScalarKind { SV_NULL, SV_BOOL, SV_NUMBER, SV_STRING };

static int sc_scalar(SubmitCheck *c, enum ScalarKind kind, const char *s, size_t len)
{
	int k;

	if (c->depth == 0)
		return sc_fail(c, "the request body must be a JSON object");
	if (c->in_items && c->depth == 2)
		return sc_fail(c, "items[%lld] must be a JSON object", c->nitems);
	if (c->depth != 1)
		return 1;
	k = c->key;
	c->key = SK_NONE;
	switch (k) {
	case SK_ROUTE:
		if (kind != SV_STRING || len == 0)
			return sc_fail(c, "%s", sub_type_msg[k]);
		c->route = xstrndup(s, len);
		return 1;
	case SK_NAME:
		if (kind == SV_NULL ||
		    (kind == SV_STRING && utf8_count(s, len) <= 200))
			return 1;
		return sc_fail(c, "%s", sub_type_msg[k]);
	case SK_PRIORITY:
		if (kind == SV_NULL || (kind == SV_NUMBER && json_int_in_range(s, len, 0, 10)))
			return 1;
		return sc_fail(c, "%s", sub_type_msg[k]);
	case SK_MAX_ATTEMPTS:
		if (kind == SV_NULL || (kind == SV_NUMBER && json_int_in_range(s, len, 1, 100)))
			return 1;
		return sc_fail(c, "%s", sub_type_msg[k]);
	case SK_GROUP_KEY:
		if (kind == SV_NULL || (kind == SV_STRING && len > 0))
			return 1;
		return sc_fail(c, "%s", sub_type_msg[k]);
	case SK_METADATA:
		if (kind == SV_NULL)
			return 1;
		return sc_fail(c, "%s", sub_type_msg[k]);
	case SK_ITEMS:
	default:
		return sc_fail(c, "%s", sub_type_msg[SK_ITEMS]);
	}
}

static int sc_null(void *ctx)
{
	return sc_scalar(ctx, SV_NULL, NULL, 0);
}

static int sc_boolean(void *ctx, int b)
{
	return sc_scalar(ctx, SV_BOOL, NULL, 0);
}

static int sc_number(void *ctx, const char *s, size_t len)
{
	return sc_scalar(ctx, SV_NUMBER, s, len);
}

static int sc_string(void *ctx, const unsigned char *s, size_t len)
{
	if (memchr(s, '\0', len))
		return sc_fail(ctx, "strings must not contain the NUL character (\\u0000)");
	return sc_scalar(ctx, SV_STRING, (const char *)s, len);
}

static int sc_container(SubmitCheck *c, bool is_map)
{
	if (c->depth == 0) {
		if (!is_map)
			return sc_fail(c, "the request body must be a JSON object");
	} else if (c->depth == 1) {
		int k = c->key;
		c->key = SK_NONE;
		if (is_map && k == SK_METADATA)
			;
		else if (!is_map && k == SK_ITEMS)
			c->in_items = true;
		else
			return sc_fail(c, "%s", sub_type_msg[k >= 0 ? k : SK_ITEMS]);
	} else if (c->in_items && c->depth == 2) {
		if (!is_map)
			return sc_fail(c, "items[%lld] must be a JSON object", c->nitems);
		c->nitems++;
	}
	if (++c->depth > API_MAX_DEPTH)
		return sc_fail(c, "JSON nested deeper than %d levels", API_MAX_DEPTH);
	return 1;
}

static int sc_start_map(void *ctx)
{
	return sc_container(ctx, true);
}

static int sc_start_array(void *ctx)
{
	return sc_container(ctx, false);
}

static int sc_end(void *ctx)
{
	SubmitCheck *c = ctx;

	if (c->in_items && c->depth == 2)
		c->in_items = false;
	c->depth--;
	return 1;
}

static int sc_map_key(void *ctx, const unsigned char *key, size_t len)
{
	SubmitCheck *c = ctx;
	int k;

	if (memchr(key, '\0', len))
		return sc_fail(c, "strings must not contain the NUL character (\\u0000)");
	if (c->depth != 1)
		return 1;
	for (k = 0; k < SK_COUNT; k++)
		if (strlen(sub_keys[k]) == len && memcmp(sub_keys[k], key, len) == 0)
			break;
	if (k == SK_COUNT)
		return sc_fail(c, "unknown field \"%.*s\" (known: route, items, name, priority, "
			       "max_attempts, group_key, metadata)", len > 64 ? 64 : (int)len, key);
	if (c->seen & (1u << k))
		return sc_fail(c, "duplicate field \"%s\"", sub_keys[k]);
	c->seen |= 1u << k;
	c->key = k;
	return 1;
}

static const yajl_callbacks submit_callbacks = {
	sc_null, sc_boolean, NULL, NULL, sc_number, sc_string,
	sc_start_map, sc_map_key, sc_end, sc_start_array, sc_end,
};

/* Check a submit body; 0, or -1 with a message in c->err. */
static int submit_check(const Config *cfg, const char *body, size_t len, SubmitCheck *c)
{
	yajl_handle h;
	yajl_status st;

	memset(c, 0, sizeof(*c));
	c->key = SK_NONE;
	if (len == 0) {
		snprintf(c->err, sizeof(c->err), "the request body is empty: want a JSON object");
		return -1;
	}
	if (memchr(body, '\0', len)) {
		snprintf(c->err, sizeof(c->err), "malformed JSON: NUL byte in the body");
		return -1;
	}
	h = yajl_alloc(&submit_callbacks, NULL, c);
	if (!h)
		fatal("yajl_alloc failed");
	st = yajl_parse(h, (const unsigned char *)body, len);
	if (st == yajl_status_ok)
		st = yajl_complete_parse(h);
	if (st != yajl_status_ok && !c->err[0]) {
		unsigned char *e = yajl_get_error(h, 0, NULL, 0);
		char *nl;
		snprintf(c->err, sizeof(c->err), "malformed JSON: %s", (const char *)e);
		yajl_free_error(h, e);
		if ((nl = strchr(c->err, '\n')) != NULL)
			*nl = '\0';
	}
	yajl_free(h);
	if (c->err[0])
		return -1;
	/*
	 * yajl checks UTF-8 loosely (overlong forms, surrogates, code points
	 * past U+10FFFF pass), takes \v and \f as whitespace, and decodes a
	 * high surrogate escape with whatever escape follows (so "\ud83d\u0000"
	 * shows it no NUL); PostgreSQL would refuse the body later. The strict
	 * scanner decides.
	 */
	if (!json_is_valid(body, len)) {
		snprintf(c->err, sizeof(c->err),
			 "malformed JSON: not well-formed UTF-8, or not exactly one JSON value");
		return -1;
	}
	if (!json_is_valid_jsonb(body, len)) {
		snprintf(c->err, sizeof(c->err), "strings must not contain the NUL character "
			 "(\\u0000) or an unpaired UTF-16 surrogate escape");
		return -1;
	}
	if (!(c->seen & (1u << SK_ROUTE)))
		snprintf(c->err, sizeof(c->err), "route is required");
	else if (!(c->seen & (1u << SK_ITEMS)) || c->nitems == 0)
		snprintf(c->err, sizeof(c->err), "%s", sub_type_msg[SK_ITEMS]);
	else if (!config_find_route(cfg, c->route))
		snprintf(c->err, sizeof(c->err), "unknown route \"%.200s\"", c->route);
	return c->err[0] ? -1 : 0;
}

int api_submit_check(const char *body, size_t len, const Config *cfg, char **route,
		     char *err, size_t errlen)
{
	SubmitCheck c;
	int rc = submit_check(cfg, body, len, &c);

	if (errlen)
		snprintf(err, errlen, "%s", c.err);
	if (rc == 0 && route) {
		*route = c.route;
		c.route = NULL;
	}
	free(c.route);
	return rc;
}

int api_validate_submit(const char *body, size_t len, const Config *cfg,
			char *err, size_t errlen)
{
	return api_submit_check(body, len, cfg, NULL, err, errlen);
}

