/*
 * fuzz_json.c - libFuzzer target for json_is_valid() and json_append_body()
 * (src/json.c: batchd's own strict JSON checker, run on every provider
 * answer before it is stored as jsonb).
 *
 * The input is an answer body as received. The checker is compared with an
 * independent reference built on yajl's parser (no callbacks but the ones
 * counting depth); any disagreement is a crash. The reference rules:
 *   - yajl accepts the input as exactly one JSON value (its defaults: no
 *     comments, no trailing data, UTF-8 checked in strings), fed a newline
 *     after it (see yajl_accepts);
 *   - yajl's looser edges are tightened: only space, tab, CR and LF count as
 *     whitespace (RFC 8259), and every byte sequence is well-formed UTF-8 as
 *     Unicode defines it (no overlong forms, no surrogates, nothing above
 *     U+10FFFF) -- outside strings only ASCII is valid JSON anyway;
 *   - containers nest at most 512 deep.
 * And for json_append_body: its output is always valid JSON that jsonb
 * takes (no \u0000 escape, no unpaired surrogate escape); when the input is
 * valid and jsonb-safe it is copied unchanged, else it becomes a string.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_parse.h>

#include "batchd/json.h"

#define MAX_DEPTH 512

typedef struct {
	int depth, max;
} Depth;

static int open_c(void *ctx)
{
	Depth *d = ctx;
	if (++d->depth > d->max)
		d->max = d->depth;
	return 1;
}

static int close_c(void *ctx)
{
	((Depth *)ctx)->depth--;
	return 1;
}

static const yajl_callbacks depth_cb = {
	.yajl_start_map = open_c, .yajl_end_map = close_c,
	.yajl_start_array = open_c, .yajl_end_array = close_c,
};

/*
 * yajl on d + "\n". The newline makes yajl finish lexing the last token: by
 * itself it reports success on a complete value followed by the start of
 * a token cut by the end of input ('true"', '1 t'). JSON allows a
 * trailing newline, so this changes nothing else.
 */
static bool yajl_accepts(const uint8_t *d, size_t n, int *max_depth)
{
	Depth dp = { 0, 0 };
	yajl_handle h = yajl_alloc(&depth_cb, NULL, &dp);
	bool ok = yajl_parse(h, d, n) == yajl_status_ok &&
		yajl_parse(h, (const unsigned char *)"\n", 1) == yajl_status_ok &&
		yajl_complete_parse(h) == yajl_status_ok;

	yajl_free(h);
	*max_depth = dp.max;
	return ok;
}

/* Well-formed UTF-8 everywhere (Unicode 15, table 3-7). */
static bool utf8_strict(const uint8_t *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		uint8_t c = s[i];
		uint8_t lo = 0x80, hi = 0xBF;
		size_t len;

		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xC2 && c <= 0xDF)
			len = 2;
		else if (c == 0xE0)
			len = 3, lo = 0xA0;
		else if (c >= 0xE1 && c <= 0xEC)
			len = 3;
		else if (c == 0xED)
			len = 3, hi = 0x9F;
		else if (c >= 0xEE && c <= 0xEF)
			len = 3;
		else if (c == 0xF0)
			len = 4, lo = 0x90;
		else if (c >= 0xF1 && c <= 0xF3)
			len = 4;
		else if (c == 0xF4)
			len = 4, hi = 0x8F;
		else
			return false;
		if (i + len > n || s[i + 1] < lo || s[i + 1] > hi)
			return false;
		for (size_t k = 2; k < len; k++)
			if (s[i + k] < 0x80 || s[i + k] > 0xBF)
				return false;
		i += len;
	}
	return true;
}

/* Whitespace yajl takes that JSON does not (\v, \f), outside strings. */
static bool odd_whitespace(const uint8_t *s, size_t n)
{
	bool in_str = false;

	for (size_t i = 0; i < n; i++) {
		if (in_str) {
			if (s[i] == '\\')
				i++;
			else if (s[i] == '"')
				in_str = false;
		} else if (s[i] == '"') {
			in_str = true;
		} else if (s[i] == '\v' || s[i] == '\f') {
			return true;
		}
	}
	return false;
}

static int hexv(uint8_t c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* In valid JSON: a \u0000 escape or an unpaired surrogate escape. */
static bool jsonb_refuses(const uint8_t *s, size_t n)
{
	bool in_str = false;

	for (size_t i = 0; i < n; i++) {
		if (!in_str) {
			in_str = s[i] == '"';
			continue;
		}
		if (s[i] == '"') {
			in_str = false;
			continue;
		}
		if (s[i] != '\\')
			continue;
		if (s[i + 1] != 'u') {
			i++;
			continue;
		}
		int cp = (hexv(s[i + 2]) << 12) | (hexv(s[i + 3]) << 8) | (hexv(s[i + 4]) << 4) |
			hexv(s[i + 5]);
		i += 5;
		if (cp == 0 || (cp >= 0xDC00 && cp <= 0xDFFF))
			return true;
		if (cp >= 0xD800 && cp <= 0xDBFF) {
			int lo;
			if (i + 6 >= n || s[i + 1] != '\\' || s[i + 2] != 'u')
				return true;
			lo = (hexv(s[i + 3]) << 12) | (hexv(s[i + 4]) << 8) | (hexv(s[i + 5]) << 4) |
				hexv(s[i + 6]);
			if (lo < 0xDC00 || lo > 0xDFFF)
				return true;
			i += 6;
		}
	}
	return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int depth = 0;
	bool ref, got;
	StrBuf sb;

	ref = size > 0 && yajl_accepts(data, size, &depth) && utf8_strict(data, size) &&
		!odd_whitespace(data, size) && depth <= MAX_DEPTH;
	got = json_is_valid((const char *)data, size);
	if (ref != got) {
		fprintf(stderr, "json_is_valid says %d, the reference %d (depth %d)\n", got, ref, depth);
		abort();
	}

	sb_init(&sb);
	json_append_body(&sb, (const char *)data, size);
	if (!json_is_valid(sb.data, sb.len) || jsonb_refuses((const uint8_t *)sb.data, sb.len)) {
		fprintf(stderr, "json_append_body wrote what jsonb refuses: %.*s\n", (int)sb.len, sb.data);
		abort();
	}
	if (ref && !jsonb_refuses(data, size)) {
		if (sb.len != size || memcmp(sb.data, data, size) != 0) {
			fprintf(stderr, "json_append_body changed a valid, jsonb-safe body\n");
			abort();
		}
	} else if (sb.len < 2 || sb.data[0] != '"') {
		fprintf(stderr, "json_append_body kept a body jsonb refuses as JSON\n");
		abort();
	}
	sb_free(&sb);
	return 0;
}
