/*
 * fuzz_submit.c - libFuzzer target for the POST /v1/batches body check
 * (api_validate_submit in src/api_submit.c: yajl's event parser, no tree).
 *
 * The input is the request body as received.  The configured routes are
 * "verify", "quotes" and "r" (a Config built here; only its routes matter).
 *
 * Beyond the sanitizers, the check is compared with a reference written
 * independently on top of yajl_tree (README "POST /v1/batches"): any
 * disagreement is a crash.  The reference rules:
 *   - the body is exactly one valid JSON value (no comments, no trailing
 *     data, UTF-8), no NUL byte, no \u0000 and no unpaired UTF-16
 *     surrogate escape in any string or key (jsonb refuses both);
 *   - containers nest at most 64 deep (the body object is level 1);
 *   - it is an object whose keys are route, items, name, priority,
 *     max_attempts, group_key, metadata, each at most once;
 *   - route: non-empty string naming a configured route (required);
 *   - items: non-empty array of objects (required);
 *   - name: null or a string of at most 200 characters;
 *   - priority: null or an integral number from 0 to 10, max_attempts:
 *     null or from 1 to 100 (as a C double; number text of at most 63 bytes);
 *   - group_key: null or a non-empty string; metadata: null or an object.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_tree.h>

#include "batchd/api_submit.h"
#include "batchd/json.h"

#define MAX_DEPTH 64

static Route route_verify = { .name = "verify" };
static Route route_quotes = { .name = "quotes" };
static Route route_r = { .name = "r" };
static Route *routes[] = { &route_verify, &route_quotes, &route_r };
static Config cfg = { .routes = routes, .nroutes = 3 };
static bool verbose;            /* FUZZ_VERBOSE=1: print each outcome */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	verbose = getenv("FUZZ_VERBOSE") != NULL;
	return 0;
}

/* The code of the \uXXXX escape at s (valid JSON text), or -1. */
static long u_escape(const char *s, size_t left)
{
	char hex[5];

	if (left < 6 || s[0] != '\\' || s[1] != 'u')
		return -1;
	memcpy(hex, s + 2, 4);
	hex[4] = '\0';
	return strtol(hex, NULL, 16);
}

/*
 * An escape jsonb refuses in the (valid JSON) text: \u0000, or a UTF-16
 * surrogate escape that is not a high one followed at once by a low one.
 */
static bool has_jsonb_refused_escape(const char *s, size_t len)
{
	size_t i;

	for (i = 0; i + 1 < len; i++) {
		long u, lo;

		if (s[i] != '\\')
			continue;
		u = u_escape(s + i, len - i);
		if (u < 0) {
			i++;    /* skip the escaped character */
			continue;
		}
		if (u == 0 || (u >= 0xDC00 && u <= 0xDFFF))
			return true;
		if (u >= 0xD800 && u <= 0xDBFF) {
			lo = u_escape(s + i + 6, len - i - 6);
			if (lo < 0xDC00 || lo > 0xDFFF)
				return true;
			i += 6;   /* the low half */
		}
		i += 5;
	}
	return false;
}

static int depth_of(yajl_val v)
{
	int d = 0;
	size_t i;

	if (YAJL_IS_OBJECT(v)) {
		for (i = 0; i < v->u.object.len; i++) {
			int c = depth_of(v->u.object.values[i]);
			if (c > d)
				d = c;
		}
		return d + 1;
	}
	if (YAJL_IS_ARRAY(v)) {
		for (i = 0; i < v->u.array.len; i++) {
			int c = depth_of(v->u.array.values[i]);
			if (c > d)
				d = c;
		}
		return d + 1;
	}
	return 0;
}

static bool int_in_range(yajl_val v, int lo, int hi)
{
	const char *s = YAJL_GET_NUMBER(v);
	char *end;
	double d;

	if (strlen(s) > 63)
		return false;
	errno = 0;
	d = strtod(s, &end);
	return *end == '\0' && errno != ERANGE && isfinite(d) && d == floor(d) &&
		d >= lo && d <= hi;
}

static size_t utf8_len(const char *s)
{
	size_t n = 0;

	for (; *s; s++)
		n += ((unsigned char)*s & 0xC0) != 0x80;
	return n;
}

/* 0: accepted, -1: rejected (why: a short reason for the report). */
static int reference(const char *body, size_t len, const char **why)
{
	static const char *const keys[] = {
		"route", "items", "name", "priority", "max_attempts", "group_key", "metadata",
	};
	char *text, errbuf[128];
	yajl_val root, items = NULL, route = NULL;
	int rc = -1;
	size_t i, j;
	unsigned seen = 0;

	*why = "empty body";
	if (len == 0)
		return -1;
	*why = "NUL byte";
	if (memchr(body, '\0', len))
		return -1;
	*why = "not exactly one valid JSON value";
	if (!json_is_valid(body, len))
		return -1;
	*why = "\\u0000 or unpaired surrogate escape";
	if (has_jsonb_refused_escape(body, len))
		return -1;
	text = malloc(len + 1);
	memcpy(text, body, len);
	text[len] = '\0';
	root = yajl_tree_parse(text, errbuf, sizeof(errbuf));
	free(text);
	*why = "yajl_tree_parse failed on valid JSON";
	if (!root) {
		fprintf(stderr, "fuzz_submit: json_is_valid but yajl_tree_parse: %s\n", errbuf);
		abort();
	}
	*why = "not an object";
	if (!YAJL_IS_OBJECT(root))
		goto out;
	*why = "nested too deep";
	if (depth_of(root) > MAX_DEPTH)
		goto out;
	for (i = 0; i < root->u.object.len; i++) {
		const char *k = root->u.object.keys[i];
		yajl_val v = root->u.object.values[i];

		for (j = 0; j < 7; j++)
			if (strcmp(k, keys[j]) == 0)
				break;
		*why = "unknown key";
		if (j == 7)
			goto out;
		*why = "duplicate key";
		if (seen & (1u << j))
			goto out;
		seen |= 1u << j;
		*why = keys[j];
		switch (j) {
		case 0:
			if (!YAJL_IS_STRING(v) || !*v->u.string)
				goto out;
			route = v;
			break;
		case 1:
			if (!YAJL_IS_ARRAY(v) || v->u.array.len == 0)
				goto out;
			for (size_t n = 0; n < v->u.array.len; n++)
				if (!YAJL_IS_OBJECT(v->u.array.values[n]))
					goto out;
			items = v;
			break;
		case 2:
			if (!YAJL_IS_NULL(v) && !(YAJL_IS_STRING(v) && utf8_len(v->u.string) <= 200))
				goto out;
			break;
		case 3:
			if (!YAJL_IS_NULL(v) && !(YAJL_IS_NUMBER(v) && int_in_range(v, 0, 10)))
				goto out;
			break;
		case 4:
			if (!YAJL_IS_NULL(v) && !(YAJL_IS_NUMBER(v) && int_in_range(v, 1, 100)))
				goto out;
			break;
		case 5:
			if (!YAJL_IS_NULL(v) && !(YAJL_IS_STRING(v) && *v->u.string))
				goto out;
			break;
		case 6:
			if (!YAJL_IS_NULL(v) && !YAJL_IS_OBJECT(v))
				goto out;
			break;
		}
	}
	*why = "route missing";
	if (!route)
		goto out;
	*why = "items missing";
	if (!items)
		goto out;
	*why = "unknown route";
	if (!config_find_route(&cfg, route->u.string))
		goto out;
	rc = 0;
out:
	yajl_tree_free(root);
	return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* an exact-size copy: ASan sees any read past the body */
	char *body = malloc(size ? size : 1);
	char err[600];
	const char *why = "";
	int rc, ref;

	memcpy(body, data, size);
	memset(err, 'X', sizeof(err));
	rc = api_validate_submit(body, size, &cfg, err, sizeof(err));
	if (rc != 0 && rc != -1) {
		fprintf(stderr, "fuzz_submit: api_validate_submit returned %d\n", rc);
		abort();
	}
	if (!memchr(err, '\0', sizeof(err)) || (rc == 0) != (err[0] == '\0')) {
		fprintf(stderr, "fuzz_submit: rc %d with err '%.600s'\n", rc, err);
		abort();
	}
	ref = reference(body, size, &why);
	if (verbose)
		fprintf(stderr, "fuzz_submit: %s\n", rc == 0 ? "accepted" : err);
	if (rc != ref) {
		fprintf(stderr, "fuzz_submit: validator %s, reference %s (%s); validator says '%s'\n",
			rc == 0 ? "accepts" : "rejects", ref == 0 ? "accepts" : "rejects", why, err);
		abort();
	}
	free(body);
	return 0;
}
