/*
 * json.h - JSON helpers on top of yajl.
 */
#ifndef BATCHD_JSON_H
#define BATCHD_JSON_H

#include <yajl/yajl_tree.h>
#include "batchd/util.h"

/* Append s as a quoted JSON string.  Invalid UTF-8 bytes become U+FFFD and
 * NUL becomes U+FFFD too (PostgreSQL's jsonb cannot hold \u0000). */
void json_append_string(StrBuf *sb, const char *s, size_t len);

/* True when buf holds exactly one complete, valid JSON value (RFC 8259,
 * well-formed UTF-8, nesting at most 512 deep). */
bool json_is_valid(const char *buf, size_t len);

/* json_is_valid, and jsonb accepts it as it is: no \u0000 escape and no
 * unpaired UTF-16 surrogate escape. */
bool json_is_valid_jsonb(const char *buf, size_t len);

/* Append a provider body as a JSON value: the body itself when
 * json_is_valid_jsonb, else the body as a JSON string. */
void json_append_body(StrBuf *sb, const char *buf, size_t len);

/* Append a yajl tree value as compact JSON. */
void json_append_value(StrBuf *sb, yajl_val v);

/* Look up a dotted path ("a.b.c") in an object tree; NULL when missing. */
yajl_val json_get_path(yajl_val root, const char *path);

#endif /* BATCHD_JSON_H */
