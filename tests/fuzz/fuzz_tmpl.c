/*
 * fuzz_tmpl.c - libFuzzer target for tmpl_check_url() and tmpl_render()
 * (src/tmpl.c), and through them json_get_path() / json_append_value().
 *
 * Input: TEMPLATE NUL PAYLOAD.  The template is everything before the first
 * NUL byte; the payload (JSON text, parsed with yajl_tree_parse) everything
 * after it.  Without a NUL the whole input is the template and a fixed
 * payload is used.  A payload that does not parse is passed as NULL (the
 * "payload is missing" path).
 *
 * The template is checked with tmpl_check_url and rendered in all three
 * modes, into an empty buffer and into one holding a prefix.  Contracts
 * asserted beyond the sanitizers (abort() = crash):
 *   - on error: -1, a message, and the buffer exactly as before the call;
 *   - on success: the output is a C string of out->len bytes;
 *   - HEADER mode never adds a CR or LF that the template did not hold;
 *   - URL mode on a template that passes tmpl_check_url keeps the scheme and
 *     host[:port] exactly as written (payload data never picks the server),
 *     and adds no byte outside RFC 3986's unreserved set and '%';
 *   - JSON mode: "{.}" of a parsed payload is valid JSON.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <yajl/yajl_tree.h>

#include "batchd/json.h"
#include "batchd/tmpl.h"

static yajl_val default_payload;

static const char default_json[] =
	"{\"id\": 42, \"vin\": \"WVW ZZZ/1J?#&\", \"country\": \"de\", \"term\": 36,"
	" \"mileage\": 12000.5, \"big\": 123456789012345678901234567890,"
	" \"neg\": -1e-7, \"ok\": true, \"no\": false, \"nil\": null,"
	" \"crlf\": \"a\\r\\nX-Injected: 1\", \"nul\": \"a\\u0000b\","
	" \"utf8\": \"\\u00e9\\ud83d\\ude00\", \"q\": \"\\\"quoted\\\\\","
	" \"vehicle\": {\"vin\": \"X\", \"year\": 2020, \"tags\": [1, \"a\", {}]},"
	" \"a\": {\"b\": {\"c\": \"deep\"}, \"b.c\": \"dotted\"}, \"\": \"emptykey\","
	" \"empty\": \"\", \"list\": [], \"obj\": {}, \"dup\": 1, \"dup\": 2}";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char errbuf[256];

	(void)argc;
	(void)argv;
	default_payload = yajl_tree_parse(default_json, errbuf, sizeof(errbuf));
	if (!default_payload) {
		fprintf(stderr, "fuzz_tmpl: bad built-in payload: %s\n", errbuf);
		abort();
	}
	return 0;
}

static void check(bool ok, const char *what, const char *tmpl)
{
	if (!ok) {
		fprintf(stderr, "fuzz_tmpl: contract broken: %s (template '%s')\n", what, tmpl);
		abort();
	}
}

static bool is_unreserved(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		(c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
}

/* Length of "scheme://authority" of a URL template that passed the check. */
static size_t url_origin_len(const char *t)
{
	size_t skip = strncasecmp(t, "https://", 8) == 0 ? 8 : 7;

	return skip + strcspn(t + skip, "/?#");
}

/* Bytes in out that come from neither the template's literal text: in URL
 * mode only unreserved characters and '%' may be added. */
static void check_url_bytes(const char *tmpl, const char *out)
{
	bool allowed[256] = { false };
	const unsigned char *p;

	for (p = (const unsigned char *)tmpl; *p; p++)
		allowed[*p] = true;
	for (p = (const unsigned char *)out; *p; p++)
		check(allowed[*p] || is_unreserved(*p) || *p == '%',
		      "URL mode inserted a reserved or control byte", tmpl);
}

static void render_one(const char *tmpl, yajl_val payload, enum TmplMode mode,
		       bool url_ok, const char *prefix)
{
	StrBuf sb;
	char err[300];
	size_t plen = prefix ? strlen(prefix) : 0;
	int rc;

	sb_init(&sb);
	if (prefix)
		sb_puts(&sb, prefix);
	err[0] = '\0';
	rc = tmpl_render(tmpl, payload, mode, &sb, err, sizeof(err));
	check(rc == 0 || rc == -1, "tmpl_render returned neither 0 nor -1", tmpl);
	if (rc < 0) {
		check(err[0] != '\0', "error without a message", tmpl);
		check(memchr(err, '\0', sizeof(err)) != NULL, "err not NUL-terminated", tmpl);
		check(sb.len == plen, "error left partial output", tmpl);
		check(!prefix || strcmp(sb.data, prefix) == 0, "error damaged earlier output",
		      tmpl);
		sb_free(&sb);
		return;
	}
	check(sb.data != NULL, "success without a C string", tmpl);
	check(strlen(sb.data) == sb.len, "output length != strlen (NUL inside)", tmpl);
	check(sb.len >= plen && (!prefix || memcmp(sb.data, prefix, plen) == 0),
	      "earlier output changed", tmpl);

	if (mode == TMPL_HEADER && !strpbrk(tmpl, "\r\n"))
		check(!strpbrk(sb.data + plen, "\r\n"), "HEADER mode let a CR or LF in", tmpl);
	if (mode == TMPL_URL) {
		check_url_bytes(tmpl, sb.data + plen);
		if (url_ok) {
			size_t olen = url_origin_len(tmpl);
			char err2[256];

			check(sb.len - plen >= olen &&
			      memcmp(sb.data + plen, tmpl, olen) == 0,
			      "URL mode changed scheme or host", tmpl);
			check(url_origin_len(sb.data + plen) == olen,
			      "rendered URL has another authority", tmpl);
			check(tmpl_check_url(sb.data + plen, err2, sizeof(err2)) == 0,
			      "rendered URL fails tmpl_check_url", tmpl);
		}
	}
	sb_free(&sb);
}

static void run(const char *tmpl, yajl_val payload)
{
	char err[256];
	bool url_ok;
	int rc;

	err[0] = '\0';
	rc = tmpl_check_url(tmpl, err, sizeof(err));
	check(rc == 0 || (rc == -1 && err[0]), "tmpl_check_url result", tmpl);
	url_ok = rc == 0;

	render_one(tmpl, payload, TMPL_URL, url_ok, NULL);
	render_one(tmpl, payload, TMPL_URL, url_ok, "GET ");
	render_one(tmpl, payload, TMPL_JSON, false, NULL);
	render_one(tmpl, payload, TMPL_JSON, false, "[");
	render_one(tmpl, payload, TMPL_HEADER, false, NULL);
	render_one(tmpl, payload, TMPL_HEADER, false, "X: ");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, '\0', size);
	size_t tlen = nul ? (size_t)(nul - data) : size;
	char *tmpl = malloc(tlen + 1);
	yajl_val payload = default_payload, parsed = NULL;

	memcpy(tmpl, data, tlen);
	tmpl[tlen] = '\0';

	if (nul) {
		size_t jlen = size - tlen - 1;
		char *json = malloc(jlen + 1);
		char errbuf[128];

		memcpy(json, nul + 1, jlen);
		json[jlen] = '\0';
		parsed = yajl_tree_parse(json, errbuf, sizeof(errbuf));
		free(json);
		payload = parsed;       /* NULL: the payload is missing */
		if (parsed && !YAJL_IS_NULL(parsed)) {
			StrBuf sb;
			char err[256];

			sb_init(&sb);
			check(tmpl_render("{.}", parsed, TMPL_JSON, &sb, err, sizeof(err)) == 0,
			      "{.} of a parsed payload failed", "{.}");
			check(json_is_valid(sb.data, sb.len),
			      "JSON mode rendered invalid JSON", "{.}");
			sb_free(&sb);
		}
	}
	run(tmpl, payload);
	yajl_tree_free(parsed);
	free(tmpl);
	return 0;
}
