/*
 * test_codec.c - unit tests for sha256.c (FIPS 180-4 / NIST vectors),
 * base64url.c (RFC 4648 vectors, strict decoding), the UTF-8 helpers of
 * util.c and status_names.c.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "batchd/base64url.h"
#include "batchd/sha256.h"
#include "batchd/status_names.h"
#include "batchd/util.h"

static void check_sha(const char *data, size_t len, const char *want)
{
	char out[65];

	memset(out, 'x', sizeof(out));
	sha256_hex(data, len, out);
	assert_string_equal(out, want);
}

static void test_sha256_vectors(void **state)
{
	(void)state;
	check_sha("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	check_sha("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	check_sha("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56,
		  "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
	check_sha("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnop"
		  "jklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu", 112,
		  "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}

static void test_sha256_million_a(void **state)
{
	size_t n = 1000000;
	char *a = malloc(n);

	(void)state;
	assert_non_null(a);
	memset(a, 'a', n);
	check_sha(a, n, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
	free(a);
}

/* Lengths around the 55/56/64-byte padding boundaries hash differently. */
static void test_sha256_block_boundaries(void **state)
{
	char buf[130], seen[6][65];
	const size_t lens[6] = { 55, 56, 63, 64, 65, 119 };

	(void)state;
	memset(buf, 'q', sizeof(buf));
	for (int i = 0; i < 6; i++) {
		sha256_hex(buf, lens[i], seen[i]);
		assert_int_equal(strlen(seen[i]), 64);
		for (int j = 0; j < i; j++)
			assert_string_not_equal(seen[i], seen[j]);
	}
	/* no state is kept between calls: the same input, the same digest */
	check_sha(buf, 64, seen[3]);
}

static void check_b64(const char *raw, size_t len, const char *want)
{
	StrBuf sb;
	char out[64];

	sb_init(&sb);
	b64url_encode(&sb, raw, len);
	assert_string_equal(sb.data ? sb.data : "", want);
	sb_free(&sb);
	if (len == 0)
		return;
	assert_int_equal(b64url_decode(want, out, sizeof(out)), (int)len);
	assert_memory_equal(out, raw, len);
	assert_int_equal(out[len], '\0');
}

static void test_base64url_rfc4648(void **state)
{
	(void)state;
	check_b64("", 0, "");
	check_b64("f", 1, "Zg");
	check_b64("fo", 2, "Zm8");
	check_b64("foo", 3, "Zm9v");
	check_b64("foob", 4, "Zm9vYg");
	check_b64("fooba", 5, "Zm9vYmE");
	check_b64("foobar", 6, "Zm9vYmFy");
	check_b64("\xfb\xff", 2, "-_8");               /* the URL-safe letters */
	check_b64("\x00\x01\x02", 3, "AAEC");
}

static void test_base64url_decode_is_strict(void **state)
{
	char out[16];

	(void)state;
	assert_int_equal(b64url_decode("", out, sizeof(out)), -1);
	assert_int_equal(b64url_decode("Zm9v=", out, sizeof(out)), -1);   /* padding */
	assert_int_equal(b64url_decode("+_8", out, sizeof(out)), -1);     /* base64, not url */
	assert_int_equal(b64url_decode("-/8", out, sizeof(out)), -1);
	assert_int_equal(b64url_decode("Zh", out, sizeof(out)), -1);      /* unused bits set */
	assert_int_equal(b64url_decode("Zm9vY", out, sizeof(out)), -1);   /* 4n + 1 */
	assert_int_equal(b64url_decode("Zm 9v", out, sizeof(out)), -1);
	assert_int_equal(b64url_decode("Zm9vYmFyZm9vYmFy", out, 8), -1); /* does not fit */
	assert_int_equal(b64url_decode("Zm9vYmFy", out, sizeof(out)), 6);
}

static void test_utf8_helpers(void **state)
{
	(void)state;
	assert_int_equal(utf8_count("", 0), 0);
	assert_int_equal(utf8_count("abc", 3), 3);
	assert_int_equal(utf8_count("h\xc3\xa9llo", 6), 5);              /* é */
	assert_int_equal(utf8_count("\xe2\x82\xac\xf0\x9f\x98\x80", 7), 2); /* € and an emoji */
	assert_true(utf8_valid("h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80", 15));
	assert_true(utf8_valid("", 0));
	assert_false(utf8_valid("a\0b", 3));                             /* NUL */
	assert_false(utf8_valid("\xc0\xaf", 2));                         /* overlong / */
	assert_false(utf8_valid("\xe0\x80\xaf", 3));                     /* overlong */
	assert_false(utf8_valid("\xed\xa0\x80", 3));                     /* surrogate */
	assert_false(utf8_valid("\xf4\x90\x80\x80", 4));                 /* > U+10FFFF */
	assert_false(utf8_valid("\xc3", 1));                             /* truncated */
	assert_false(utf8_valid("\x80", 1));                             /* lone continuation */
}

static void test_status_names(void **state)
{
	(void)state;
	assert_true(str_in_list("completed_with_errors", batch_statuses));
	assert_false(str_in_list("succeeded", batch_statuses));
	assert_true(str_in_list("succeeded", item_statuses));
	assert_false(str_in_list("done", item_statuses));
	assert_false(str_in_list("", item_statuses));
	assert_true(batch_status_terminal("cancelled"));
	assert_true(batch_status_terminal("failed"));
	assert_false(batch_status_terminal("processing"));
	assert_false(batch_status_terminal(NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sha256_vectors),
		cmocka_unit_test(test_sha256_million_a),
		cmocka_unit_test(test_sha256_block_boundaries),
		cmocka_unit_test(test_base64url_rfc4648),
		cmocka_unit_test(test_base64url_decode_is_strict),
		cmocka_unit_test(test_utf8_helpers),
		cmocka_unit_test(test_status_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
