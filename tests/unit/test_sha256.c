/*
 * test_sha256.c - unit tests for sha256.c: the FIPS 180-2 / NIST CSRC
 * example vectors, and lengths around the padding boundaries.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "batchd/sha256.h"

static void assert_sha(const char *data, size_t len, const char *want)
{
	char hex[65];

	memset(hex, 'x', sizeof(hex));
	sha256_hex(data, len, hex);
	assert_string_equal(hex, want);
}

static void test_nist_vectors(void **state)
{
	(void)state;
	assert_sha("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	assert_sha("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	/* the 448-bit message: padding needs a second block */
	assert_sha("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56,
		   "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
	/* the 896-bit message */
	assert_sha("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmn"
		   "hijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu", 112,
		   "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}

static void test_million_a(void **state)
{
	size_t n = 1000000;
	char *a = malloc(n);

	(void)state;
	assert_non_null(a);
	memset(a, 'a', n);
	assert_sha(a, n, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
	free(a);
}

/* 55, 56 and 64 bytes: the length field fits, just does not, a full block */
static void test_block_edges(void **state)
{
	char buf[64];

	(void)state;
	memset(buf, 'a', sizeof(buf));
	assert_sha(buf, 55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
	assert_sha(buf, 56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
	assert_sha(buf, 64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_nist_vectors),
		cmocka_unit_test(test_million_a),
		cmocka_unit_test(test_block_edges),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
