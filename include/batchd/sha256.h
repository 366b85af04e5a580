/*
 * sha256.h - FIPS 180-4 SHA-256, for bearer tokens only: the API hashes a
 * token here and only its hash goes to the database.  Small enough not to
 * add a crypto library to the daemon's dependencies.
 */
#ifndef BATCHD_SHA256_H
#define BATCHD_SHA256_H

#include <stddef.h>

/* The digest of data[0..len) as 64 lower-case hex digits and a NUL. */
void sha256_hex(const char *data, size_t len, char out[65]);

#endif /* BATCHD_SHA256_H */
