/*
 * json.c - JSON helpers: a strict checker of our own, writers, yajl trees.
 */
#include <string.h>


#include "batchd/json.h"

void json_append_string(StrBuf *sb, const char *s, size_t len)
{
	sb_put_json_string(sb, s, len);
}

/*
 * A strict JSON checker of our own (RFC 8259), one pass, no allocation.
 *
 * It replaced yajl here for two reasons. yajl checks UTF-8 only loosely:
 * it takes overlong forms, UTF-16 surrogates and code points above
 * U+10FFFF inside strings, which PostgreSQL refuses ("invalid byte sequence
 * for encoding UTF8") -- one such answer stored as JSON would fail the whole
 * completion statement it travels in. And it runs on every answer: a
 * parser handle allocated and freed per call was ~4% of batchd's
 * instructions per item.
 *
 * Beyond validity it tells whether jsonb can take the text as it is: no
 * \u0000 escape, no unpaired UTF-16 surrogate escape, nesting no deeper than
 * JSON_MAX_DEPTH (PostgreSQL's recursive parser has a stack limit).
 */
#define JSON_MAX_DEPTH 512

static int hex4(const unsigned char *p, size_t avail)
{
	int v = 0;

	if (avail < 4)
		return -1;
	for (int i = 0; i < 4; i++) {
		unsigned char c = p[i];

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

/* The string starting at p[*i] == '"'; *i ends after the closing quote. */
static bool scan_string(const unsigned char *p, size_t len, size_t *i, bool *pg_ok)
{
	size_t k = *i + 1;

	while (k < len) {
		unsigned char c = p[k];

		if (c == '"') {
			*i = k + 1;
			return true;
		}
		if (c < 0x20)
			return false;
		if (c < 0x80 && c != '\\') {
			k++;
			continue;
		}
		if (c >= 0x80) {
			size_t bad, n = utf8_seq(p + k, len - k, &bad);
			if (!n)
				return false;
			k += n;
			continue;
		}
		/* an escape */
		if (k + 1 >= len)
			return false;
		c = p[k + 1];
		if (c != 'u') {
			if (!strchr("\"\\/bfnrt", c) || c == '\0')
				return false;
			k += 2;
			continue;
		}
		{
			int cp = hex4(p + k + 2, len - k - 2);
			if (cp < 0)
				return false;
			k += 6;
			if (cp == 0 || (cp >= 0xDC00 && cp <= 0xDFFF)) {
				*pg_ok = false;
			} else if (cp >= 0xD800 && cp <= 0xDBFF) {
				/* jsonb wants the low half right after */
				int lo = k + 1 < len && p[k] == '\\' && p[k + 1] == 'u'
					? hex4(p + k + 2, len - k - 2) : -1;
				if (lo >= 0xDC00 && lo <= 0xDFFF)
					k += 6;
				else
					*pg_ok = false;
			}
		}
	}
	return false;
}

static bool scan_number(const unsigned char *p, size_t len, size_t *i)
{
	size_t k = *i;

#define DIGIT(x) ((x) >= '0' && (x) <= '9')
	if (k < len && p[k] == '-')
		k++;
	if (k < len && p[k] == '0')
		k++;
	else if (k < len && p[k] >= '1' && p[k] <= '9')
		while (k < len && DIGIT(p[k]))
			k++;
	else
		return false;
	if (k < len && p[k] == '.') {
		k++;
		if (k >= len || !DIGIT(p[k]))
			return false;
		while (k < len && DIGIT(p[k]))
			k++;
	}
	if (k < len && (p[k] == 'e' || p[k] == 'E')) {
		k++;
		if (k < len && (p[k] == '+' || p[k] == '-'))
			k++;
		if (k >= len || !DIGIT(p[k]))
			return false;
		while (k < len && DIGIT(p[k]))
			k++;
	}
#undef DIGIT
	*i = k;
	return true;
}

/*
 * True when buf[0..len) is exactly one JSON value (whitespace around it
 * allowed). *pg_ok becomes false when jsonb would refuse it (see above);
 * nesting beyond JSON_MAX_DEPTH counts as invalid.
 */
static bool json_scan(const char *buf, size_t len, bool *pg_ok)
{
	const unsigned char *p = (const unsigned char *)buf;
	unsigned char open[JSON_MAX_DEPTH];   /* '{' or '[' per level */
	enum { VALUE, VALUE_OR_END, KEY, KEY_OR_END, COLON, AFTER } st = VALUE;
	size_t i = 0;
	int depth = 0;

	*pg_ok = true;
	if (!buf)
		return false;
	for (;;) {
		unsigned char c;

		while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
			i++;
		if (i == len)
			return st == AFTER && depth == 0;
		c = p[i];
		switch (st) {
		case VALUE_OR_END:
			if (c == ']') {
				depth--;
				i++;
				st = AFTER;
				break;
			}
			/* fall through */
		case VALUE:
			if (c == '{' || c == '[') {
				if (depth == JSON_MAX_DEPTH)
					return false;
				open[depth++] = c;
				i++;
				st = c == '{' ? KEY_OR_END : VALUE_OR_END;
			} else if (c == '"') {
				if (!scan_string(p, len, &i, pg_ok))
					return false;
				st = AFTER;
			} else if (c == '-' || (c >= '0' && c <= '9')) {
				if (!scan_number(p, len, &i))
					return false;
				st = AFTER;
			} else if (len - i >= 4 && !memcmp(p + i, "true", 4)) {
				i += 4;
				st = AFTER;
			} else if (len - i >= 5 && !memcmp(p + i, "false", 5)) {
				i += 5;
				st = AFTER;
			} else if (len - i >= 4 && !memcmp(p + i, "null", 4)) {
				i += 4;
				st = AFTER;
			} else {
				return false;
			}
			break;
		case KEY_OR_END:
			if (c == '}') {
				depth--;
				i++;
				st = AFTER;
				break;
			}
			/* fall through */
		case KEY:
			if (c != '"' || !scan_string(p, len, &i, pg_ok))
				return false;
			st = COLON;
			break;
		case COLON:
			if (c != ':')
				return false;
			i++;
			st = VALUE;
			break;
		case AFTER:
			if (depth == 0)
				return false;   /* a second value, or garbage */
			if (c == ',')
				st = open[depth - 1] == '{' ? KEY : VALUE;
			else if ((c == '}' && open[depth - 1] == '{') ||
				 (c == ']' && open[depth - 1] == '['))
				depth--;
			else
				return false;
			i++;
			break;
		}
	}
}

bool json_is_valid(const char *buf, size_t len)
{
	bool pg_ok;

	return len > 0 && json_scan(buf, len, &pg_ok);
}

bool json_is_valid_jsonb(const char *buf, size_t len)
{
	bool pg_ok;

	return len > 0 && json_scan(buf, len, &pg_ok) && pg_ok;
}

void json_append_body(StrBuf *sb, const char *buf, size_t len)
{
	if (buf && json_is_valid_jsonb(buf, len))
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
