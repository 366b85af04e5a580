/*
 * base64url.c - RFC 4648 base64url, unpadded (see base64url.h).
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "batchd/base64url.h"

static const char b64u[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

void base64url_encode(StrBuf *sb, const char *data, size_t len)
{
	const unsigned char *s = (const unsigned char *)data;
	size_t i;

	for (i = 0; i + 2 < len; i += 3) {
		uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
		sb_putc(sb, b64u[v >> 18]);
		sb_putc(sb, b64u[(v >> 12) & 63]);
		sb_putc(sb, b64u[(v >> 6) & 63]);
		sb_putc(sb, b64u[v & 63]);
	}
	if (len - i == 1) {
		uint32_t v = (uint32_t)s[i] << 16;
		sb_putc(sb, b64u[v >> 18]);
		sb_putc(sb, b64u[(v >> 12) & 63]);
	} else if (len - i == 2) {
		uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
		sb_putc(sb, b64u[v >> 18]);
		sb_putc(sb, b64u[(v >> 12) & 63]);
		sb_putc(sb, b64u[(v >> 6) & 63]);
	}
}

/* Strict: alphabet only, no padding, canonical.  Returns the length or -1. */
int base64url_decode(const char *s, char *out, size_t cap)
{
	size_t len = strlen(s), n = 0, i;
	uint32_t acc = 0;
	int bits = 0;
	StrBuf check;
	bool ok;

	if (len == 0 || len % 4 == 1 || len / 4 * 3 + 3 > cap)
		return -1;
	for (i = 0; i < len; i++) {
		const char *p = strchr(b64u, s[i]);
		if (!p || !s[i])
			return -1;
		acc = (acc << 6) | (uint32_t)(p - b64u);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[n++] = (char)((acc >> bits) & 0xff);
		}
	}
	out[n] = '\0';
	/* canonical: re-encoding gives the input back (unused bits zero) */
	sb_init(&check);
	base64url_encode(&check, out, n);
	ok = check.data && strcmp(check.data, s) == 0;
	sb_free(&check);
	return ok ? (int)n : -1;
}

