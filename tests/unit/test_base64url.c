/*
 * test_base64url.c - unit tests for base64url.c: the RFC 4648 section 10
 * vectors (without padding, as base64url leaves it out), the URL-safe
 * alphabet, and what the strict decoder refuses.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "batchd/base64url.h"

static const struct { const char *plain, *enc; } vectors[] = {
	{ "f", "Zg" }, { "fo", "Zm8" }, { "foo", "Zm9v" }, { "foob", "Zm9vYg" },
	{ "fooba", "Zm9vYmE" }, { "foobar", "Zm9vYmFy" },
};

static void test_rfc4648(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
		StrBuf sb;
		char out[32];

		sb_init(&sb);
		base64url_encode(&sb, vectors[i].plain, strlen(vectors[i].plain));
		assert_string_equal(sb.data, vectors[i].enc);
		sb_free(&sb);
		assert_int_equal(base64url_decode(vectors[i].enc, out, sizeof(out)),
				 (int)strlen(vectors[i].plain));
		assert_string_equal(out, vectors[i].plain);
	}
}

/* 62 and 63 are '-' and '_' (not '+' and '/') */
static void test_url_alphabet(void **state)
{
	static const char bytes[] = { (char)0xfb, (char)0xff, (char)0xbf };
	StrBuf sb;
	char out[8];

	(void)state;
	sb_init(&sb);
	base64url_encode(&sb, bytes, 3);
	assert_string_equal(sb.data, "-_-_");
	sb_free(&sb);
	assert_int_equal(base64url_decode("-_-_", out, sizeof(out)), 3);
	assert_memory_equal(out, bytes, 3);
	assert_int_equal(base64url_decode("+/+/", out, sizeof(out)), -1);
}

static void test_strict(void **state)
{
	char out[32];

	(void)state;
	assert_int_equal(base64url_decode("", out, sizeof(out)), -1);
	assert_int_equal(base64url_decode("Zg==", out, sizeof(out)), -1);  /* padding */
	assert_int_equal(base64url_decode("Zm9vY", out, sizeof(out)), -1); /* 1 mod 4 */
	assert_int_equal(base64url_decode("Zh", out, sizeof(out)), -1);    /* bits set */
	assert_int_equal(base64url_decode("Zm 9", out, sizeof(out)), -1);
	/* out too small for what the input could decode to */
	assert_int_equal(base64url_decode("Zm9vYmFy", out, 8), -1);
	assert_int_equal(base64url_decode("Zm9vYmFy", out, 9), 6);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rfc4648),
		cmocka_unit_test(test_url_alphabet),
		cmocka_unit_test(test_strict),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
