/*
 * json.c - JSON helpers on top of yajl.
 */
#include <string.h>

#include <yajl/yajl_parse.h>

#include "batchd/json.h"

void json_append_string(StrBuf *sb, const char *s, size_t len)
{
	sb_put_json_string(sb, s, len);
}

bool json_is_valid(const char *buf, size_t len)
{
	yajl_handle h;
	bool ok;

	if (!buf || len == 0)
		return false;
	/*
	 * No callbacks: yajl only validates.  The defaults are what we want:
	 * strings must be valid UTF-8, and trailing garbage or a second value
	 * ("1 2", "{} x") is an error (yajl_allow_trailing_garbage and
	 * yajl_allow_multiple_values are both off).
	 */
	h = yajl_alloc(NULL, NULL, NULL);
	if (!h)
		return false;
	ok = yajl_parse(h, (const unsigned char *)buf, len) == yajl_status_ok &&
		yajl_complete_parse(h) == yajl_status_ok;
	yajl_free(h);
	return ok;
}

static int hex4(const char *p, size_t avail)
{
	int v = 0, i;

	if (avail < 4)
		return -1;
	for (i = 0; i < 4; i++) {
		char c = p[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return -1;
	}
	return v;
}

/*
 * True when valid JSON text holds a \u escape that PostgreSQL's jsonb
 * rejects although JSON allows it: \u0000 ("unsupported Unicode escape
 * sequence") and an unpaired UTF-16 surrogate.  Backslashes only occur in
 * strings of valid JSON, so a flat scan over the escapes is exact.
 */
static bool has_pg_unsafe_escape(const char *buf, size_t len)
{
	size_t i = 0;

	while (i < len) {
		int cp, lo;

		if (buf[i] != '\\') {
			i++;
			continue;
		}
		if (i + 1 >= len)
			return false;
		if (buf[i + 1] != 'u') {
			i += 2;         /* \" \\ \n ...: skip the escaped char */
			continue;
		}
		cp = hex4(buf + i + 2, len - i - 2);
		if (cp < 0)
			return true;    /* cannot happen in valid JSON */
		i += 6;
		if (cp == 0)
			return true;
		if (cp >= 0xDC00 && cp <= 0xDFFF)
			return true;    /* low surrogate without a high one */
		if (cp >= 0xD800 && cp <= 0xDBFF) {
			if (i + 6 > len || buf[i] != '\\' || buf[i + 1] != 'u')
				return true;
			lo = hex4(buf + i + 2, len - i - 2);
			if (lo < 0xDC00 || lo > 0xDFFF)
				return true;
			i += 6;
		}
	}
	return false;
}

void json_append_body(StrBuf *sb, const char *buf, size_t len)
{
	if (json_is_valid(buf, len) && !has_pg_unsafe_escape(buf, len))
		sb_append(sb, buf, len);
	else
		json_append_string(sb, buf ? buf : "", buf ? len : 0);
}

void json_append_value(StrBuf *sb, yajl_val v)
{
	size_t i;

	if (!v) {
		sb_puts(sb, "null");
		return;
	}
	switch (v->type) {
	case yajl_t_string:
		json_append_string(sb, v->u.string, strlen(v->u.string));
		break;
	case yajl_t_number:
		/* original text: no precision lost on big or decimal numbers */
		sb_puts(sb, YAJL_GET_NUMBER(v));
		break;
	case yajl_t_object:
		sb_putc(sb, '{');
		for (i = 0; i < v->u.object.len; i++) {
			if (i)
				sb_putc(sb, ',');
			json_append_string(sb, v->u.object.keys[i], strlen(v->u.object.keys[i]));
			sb_putc(sb, ':');
			json_append_value(sb, v->u.object.values[i]);
		}
		sb_putc(sb, '}');
		break;
	case yajl_t_array:
		sb_putc(sb, '[');
		for (i = 0; i < v->u.array.len; i++) {
			if (i)
				sb_putc(sb, ',');
			json_append_value(sb, v->u.array.values[i]);
		}
		sb_putc(sb, ']');
		break;
	case yajl_t_true:
		sb_puts(sb, "true");
		break;
	case yajl_t_false:
		sb_puts(sb, "false");
		break;
	case yajl_t_null:
	case yajl_t_any:
	default:
		sb_puts(sb, "null");
		break;
	}
}

yajl_val json_get_path(yajl_val root, const char *path)
{
	yajl_val cur = root;
	const char *seg = path;

	if (!path || !*path)
		return NULL;
	for (;;) {
		const char *dot = strchr(seg, '.');
		size_t n = dot ? (size_t)(dot - seg) : strlen(seg), i;
		yajl_val next = NULL;

		if (n == 0 || !YAJL_IS_OBJECT(cur))
			return NULL;
		/* first match wins when a key repeats */
		for (i = 0; i < cur->u.object.len; i++) {
			const char *k = cur->u.object.keys[i];

			if (strncmp(k, seg, n) == 0 && k[n] == '\0') {
				next = cur->u.object.values[i];
				break;
			}
		}
		if (!next)
			return NULL;
		cur = next;
		if (!dot)
			return cur;
		seg = dot + 1;
	}
}
