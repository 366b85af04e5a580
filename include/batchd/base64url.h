/*
 * base64url.h - RFC 4648 section 5 base64url, without padding: the REST
 * API's list cursors.
 */
#ifndef BATCHD_BASE64URL_H
#define BATCHD_BASE64URL_H

#include <stddef.h>

#include "batchd/util.h"

/* Append the encoding of data[0..len) to sb. */
void b64url_encode(StrBuf *sb, const char *data, size_t len);
/* Decode s (no padding, nothing but the alphabet) into out, NUL-terminated;
 * returns the decoded length, or -1 when s is not base64url or does not fit
 * in cap - 1 bytes. */
int b64url_decode(const char *s, char *out, size_t cap);

#endif /* BATCHD_BASE64URL_H */
