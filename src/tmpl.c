/*
 * tmpl.c - templates filled from an item's JSON payload.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "batchd/json.h"
#include "batchd/tmpl.h"

static bool is_name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		(c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
}

/*
 * If s points at "{NAME}", return the length of NAME (s + 1 .. s + n);
 * else 0, and the brace is literal text.
 */
static size_t placeholder_len(const char *s)
{
	size_t n = 0;

	if (s[0] != '{')
		return 0;
	while (is_name_char(s[1 + n]))
		n++;
	return n > 0 && s[1 + n] == '}' ? n : 0;
}

/* RFC 3986 section 2.3 */
static bool is_unreserved(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		(c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
}

static void put_url_encoded(StrBuf *out, const char *s, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t i;

	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (is_unreserved(c)) {
			sb_putc(out, (char)c);
		} else {
			char enc[3] = { '%', hex[c >> 4], hex[c & 15] };

			sb_append(out, enc, 3);
		}
	}
}

static const char *mode_where(enum TmplMode mode)
{
	return mode == TMPL_URL ? "a URL" : mode == TMPL_HEADER ? "a header" : "a body";
}

/* Scalar text of a value (string, number, boolean); NULL for the rest. */
static const char *scalar_text(yajl_val v)
{
	if (YAJL_IS_STRING(v))
		return v->u.string;
	if (YAJL_IS_NUMBER(v))
		return YAJL_GET_NUMBER(v);
	if (YAJL_IS_TRUE(v))
		return "true";
	if (YAJL_IS_FALSE(v))
		return "false";
	return NULL;
}

static int render_value(const char *name, yajl_val v, enum TmplMode mode,
			StrBuf *out, char *err, size_t errlen)
{
	const char *text;
	size_t len;

	if (YAJL_IS_NULL(v)) {
		snprintf(err, errlen, "field '%s' is null", name);
		return -1;
	}
	if (mode == TMPL_JSON) {
		json_append_value(out, v);
		return 0;
	}
	text = scalar_text(v);
	if (!text) {
		snprintf(err, errlen, "field '%s' is %s and cannot be used in %s", name,
			 YAJL_IS_OBJECT(v) ? "an object" : "an array", mode_where(mode));
		return -1;
	}
	len = strlen(text);
	if (mode == TMPL_URL) {
		put_url_encoded(out, text, len);
		return 0;
	}
	/* TMPL_HEADER: a CR or LF would let payload data inject headers */
	if (strpbrk(text, "\r\n")) {
		snprintf(err, errlen, "field '%s' contains CR or LF and cannot be used in a header",
			 name);
		return -1;
	}
	sb_append(out, text, len);
	return 0;
}

int tmpl_render(const char *tmpl, yajl_val payload, enum TmplMode mode,
		StrBuf *out, char *err, size_t errlen)
{
	const char *p = tmpl, *lit = tmpl;
	char name[256];

	/* Render into out directly, but undo the partial output on error. */
	size_t start_len = out->len;

	while (*p) {
		size_t n = placeholder_len(p);
		yajl_val v;

		if (n == 0) {
			p++;
			continue;
		}
		if (p > lit)
			sb_append(out, lit, (size_t)(p - lit));
		if (n >= sizeof(name)) {
			snprintf(err, errlen, "placeholder name too long: '%.32s...'", p + 1);
			goto fail;
		}
		memcpy(name, p + 1, n);
		name[n] = '\0';
		v = strcmp(name, ".") == 0 ? payload : json_get_path(payload, name);
		if (!v) {
			if (strcmp(name, ".") == 0)
				snprintf(err, errlen, "payload is missing");
			else
				snprintf(err, errlen, "payload has no field '%s'", name);
			goto fail;
		}
		if (render_value(name, v, mode, out, err, errlen) < 0)
			goto fail;
		p += n + 2;
		lit = p;
	}
	if (p > lit)
		sb_append(out, lit, (size_t)(p - lit));
	if (!out->data)
		sb_append(out, "", 0);  /* empty template: still a C string */
	return 0;
fail:
	out->len = start_len;
	if (out->data)
		out->data[start_len] = '\0';
	return -1;
}

int tmpl_check_url(const char *tmpl, char *err, size_t errlen)
{
	const char *p, *auth;
	size_t alen, i;

	if (strncasecmp(tmpl, "http://", 7) == 0) {
		auth = tmpl + 7;
	} else if (strncasecmp(tmpl, "https://", 8) == 0) {
		auth = tmpl + 8;
	} else {
		snprintf(err, errlen, "URL must start with http:// or https://");
		return -1;
	}
	for (p = tmpl; *p; p++) {
		unsigned char c = (unsigned char)*p;

		if (c <= 0x20 || c == 0x7f) {
			snprintf(err, errlen, "URL contains a space or control character");
			return -1;
		}
	}
	/* authority: up to the first '/', '?' or '#' (RFC 3986 section 3.2) */
	alen = strcspn(auth, "/?#");
	if (alen == 0) {
		snprintf(err, errlen, "URL has no host");
		return -1;
	}
	/*
	 * No placeholder in the host: payload data must never choose which
	 * server receives the request (and its credentials).
	 */
	for (i = 0; i < alen; i++) {
		if (auth[i] == '{' || auth[i] == '}') {
			snprintf(err, errlen, "placeholders are not allowed in the URL scheme or host");
			return -1;
		}
	}
	return 0;
}
