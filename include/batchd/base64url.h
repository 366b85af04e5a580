/*
 * base64url.h - RFC 4648 section 5 base64url without padding, for the REST
 * API's opaque page cursors.
 */
#ifndef BATCHD_BASE64URL_H
#define BATCHD_BASE64URL_H

#include <stddef.h>

#include "batchd/util.h"

/* Append the encoding of data[0..len) to sb (no padding). */
void base64url_encode(StrBuf *sb, const char *data, size_t len);
/*
 * Decode the NUL-terminated s into out (cap bytes, NUL-terminated; cap must
 * be at least strlen(s) / 4 * 3 + 3).  Strict: the alphabet only, no
 * padding, canonical (unused bits zero).  Returns the decoded length, or -1
 * (out is then unspecified).
 */
int base64url_decode(const char *s, char *out, size_t cap) _MUSTCHECK;

#endif /* BATCHD_BASE64URL_H */
