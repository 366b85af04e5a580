/*
 * test_json.c - unit tests for json.c.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "batchd/json.h"

#define VALID(lit) json_is_valid(lit, sizeof(lit) - 1)

static void test_valid(void **state)
{
	assert_true(VALID("{}"));
	assert_true(VALID("[]"));
	assert_true(VALID("0"));
	assert_true(VALID("-1.5e+10"));
	assert_true(VALID("\"str\""));
	assert_true(VALID("true"));
	assert_true(VALID("null"));
	assert_true(VALID("  {\"a\": [1, 2, {\"b\": null}]}\n"));
	assert_true(VALID("123456789012345678901234567890"));   /* big number */
	assert_true(VALID("1e400"));
	assert_true(VALID("[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]"));
	assert_true(VALID("\"\\u00e9\xc3\xa9\xf0\x9f\x98\x80\""));
	assert_true(VALID("{\"a\":\"\\u0000\"}"));     /* valid JSON, see body tests */
}

static void test_invalid(void **state)
{
	assert_false(VALID(""));
	assert_false(json_is_valid(NULL, 0));
	assert_false(VALID("   "));
	assert_false(VALID("\n\t"));
	assert_false(VALID("{} x"));             /* trailing garbage */
	assert_false(VALID("{}x"));
	assert_false(VALID("1 2"));              /* two values */
	assert_false(VALID("{}{}"));
	assert_false(VALID("[1] [2]"));
	assert_false(VALID("\"a\" \"b\""));
	assert_false(VALID("{"));                /* truncated */
	assert_false(VALID("[1,"));
	assert_false(VALID("\"abc"));
	assert_false(VALID("[1,]"));
	assert_false(VALID("{'a':1}"));
	assert_false(VALID("nul"));
	assert_false(VALID("-"));
	assert_false(VALID("01"));
	assert_false(VALID("<html>"));
	assert_false(VALID("\"\xff\""));          /* invalid UTF-8 in a string */
	assert_false(VALID("\"a\nb\""));          /* raw control char */
	assert_false(VALID("/* c */ 1"));         /* comments are off */
	assert_false(json_is_valid("1\0", 2));    /* NUL after the value */
	/* UTF-8 as Unicode defines it (yajl took all of these) */
	assert_false(VALID("\"\xc0\xaf\""));      /* overlong '/' */
	assert_false(VALID("\"\xe0\x80\xaf\""));  /* overlong, 3 bytes */
	assert_false(VALID("\"\xed\xa0\x80\""));  /* UTF-16 surrogate D800 */
	assert_false(VALID("\"\xf4\x90\x80\x80\"")); /* above U+10FFFF */
	assert_false(VALID("\"\xf5\x80\x80\x80\""));
	assert_false(VALID("\"\xc3\""));          /* truncated sequence */
	assert_false(VALID("\"\xe2\x82\""));
	assert_true(VALID("\"\xed\x9f\xbf\xee\x80\x80\xf4\x8f\xbf\xbf\"")); /* D7FF E000 10FFFF */
	/* escapes */
	assert_true(VALID("\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u00E9\""));
	assert_false(VALID("\"\\x\""));
	assert_false(VALID("\"\\u12\""));
	assert_false(VALID("\"\\u12g4\""));
	assert_false(VALID("\"\\"));
	assert_false(json_is_valid("\"\\\0\"", 4));  /* backslash NUL */
	/* numbers */
	assert_true(VALID("-0"));
	assert_true(VALID("0e0"));
	assert_true(VALID("1E-5"));
	assert_true(VALID("[0,-0.0,1e+2]"));
	assert_false(VALID("1."));
	assert_false(VALID("1.e5"));
	assert_false(VALID(".5"));
	assert_false(VALID("+1"));
	assert_false(VALID("1e"));
	assert_false(VALID("-01"));
	assert_false(VALID("0x10"));
	/* structure */
	assert_false(VALID("{\"a\"}"));
	assert_false(VALID("{\"a\":}"));
	assert_false(VALID("{\"a\":1,}"));
	assert_false(VALID("{1:2}"));
	assert_false(VALID("[1}"));
	assert_false(VALID("{\"a\":1]"));
	assert_false(VALID("]"));
	assert_false(VALID("\f1"));                /* form feed is not JSON whitespace */
	assert_false(VALID("tru"));
	assert_false(VALID("nulls"));
	assert_true(VALID("{\"a\":{\"b\":[true,false,null,{}]},\"c\":[]}"));
	/* only len counts: "1" followed by junk outside the length is fine */
	assert_true(json_is_valid("1xyz", 1));
}

static void assert_string_json(const char *in, size_t len, const char *want)
{
	StrBuf sb;

	sb_init(&sb);
	json_append_string(&sb, in, len);
	if (strcmp(sb.data, want) != 0)
		fail_msg("json_append_string: got %s, want %s", sb.data, want);
	/* whatever we produce must itself be valid JSON */
	assert_true(json_is_valid(sb.data, sb.len));
	sb_free(&sb);
}

#define STR(lit, want) assert_string_json(lit, sizeof(lit) - 1, want)
#define FFFD "\xEF\xBF\xBD"

static void test_string_escape(void **state)
{
	STR("", "\"\"");
	STR("plain", "\"plain\"");
	STR("a\"b", "\"a\\\"b\"");
	STR("back\\slash", "\"back\\\\slash\"");
	STR("/", "\"/\"");
	STR("\n\r\t\b\f", "\"\\u000a\\u000d\\u0009\\u0008\\u000c\"");
	STR("\x01\x1f", "\"\\u0001\\u001f\"");
	STR("\x7f", "\"\x7f\"");
	/* NUL becomes U+FFFD: jsonb cannot hold \u0000 */
	STR("a\0b", "\"a" FFFD "b\"");
	/* valid multibyte UTF-8 kept as is: 2, 3 and 4 bytes */
	STR("\xc3\xa9", "\"\xc3\xa9\"");
	STR("\xe2\x82\xac", "\"\xe2\x82\xac\"");
	STR("\xf0\x9f\x98\x80", "\"\xf0\x9f\x98\x80\"");
	STR("\xf4\x8f\xbf\xbf", "\"\xf4\x8f\xbf\xbf\"");          /* U+10FFFF */
	/* invalid UTF-8 */
	STR("\xff", "\"" FFFD "\"");
	STR("a\x80z", "\"a" FFFD "z\"");                          /* lone continuation */
	STR("\xc0\xaf", "\"" FFFD FFFD "\"");                     /* overlong '/' */
	STR("\xe0\x80\xaf", "\"" FFFD FFFD FFFD "\"");            /* overlong */
	STR("\xed\xa0\x80", "\"" FFFD FFFD FFFD "\"");            /* surrogate D800 */
	STR("\xf4\x90\x80\x80", "\"" FFFD FFFD FFFD FFFD "\"");   /* > U+10FFFF */
	STR("\xf5\x80", "\"" FFFD FFFD "\"");
	/* truncated sequences: one U+FFFD for the maximal subpart */
	STR("\xe2\x82", "\"" FFFD "\"");
	STR("\xe2\x82z", "\"" FFFD "z\"");
	STR("\xf0\x9f\x98", "\"" FFFD "\"");
	STR("\xf0\x9f\x98\"", "\"" FFFD "\\\"\"");
	STR("\xc3", "\"" FFFD "\"");
}

static void test_valid_depth(void **state)
{
	char buf[2 * 513 + 1];

	/* 512 levels: fine; 513: refused (jsonb's parser recurses) */
	memset(buf, '[', 512);
	memset(buf + 512, ']', 512);
	assert_true(json_is_valid(buf, 1024));
	memset(buf, '[', 513);
	memset(buf + 513, ']', 513);
	assert_false(json_is_valid(buf, 1026));
	/* deep objects count the same */
	{
		StrBuf sb;
		sb_init(&sb);
		for (int i = 0; i < 513; i++)
			sb_puts(&sb, "{\"a\":");
		sb_puts(&sb, "1");
		for (int i = 0; i < 513; i++)
			sb_putc(&sb, '}');
		assert_false(json_is_valid(sb.data, sb.len));
		sb_reset(&sb);
		json_append_body(&sb, "[[1]]", 5);
		assert_string_equal(sb.data, "[[1]]");
		sb_free(&sb);
	}
}

static void assert_body(const char *in, size_t len, const char *want)
{
	StrBuf sb;

	sb_init(&sb);
	sb_puts(&sb, "[");
	json_append_body(&sb, in, len);
	sb_puts(&sb, "]");
	if (strcmp(sb.data, want) != 0)
		fail_msg("json_append_body: got %s, want %s", sb.data, want);
	assert_true(json_is_valid(sb.data, sb.len));
	sb_free(&sb);
}

#define BODY(lit, want) assert_body(lit, sizeof(lit) - 1, want)

static void test_body(void **state)
{
	BODY("{\"ok\":true}", "[{\"ok\":true}]");
	BODY(" [1, 2] ", "[ [1, 2] ]");
	BODY("42", "[42]");
	BODY("not json", "[\"not json\"]");
	BODY("<html>\n</html>", "[\"<html>\\u000a</html>\"]");
	BODY("{\"a\":1} trailing", "[\"{\\\"a\\\":1} trailing\"]");
	BODY("", "[\"\"]");
	BODY("\xff\xfe", "[\"" FFFD FFFD "\"]");
	/* valid JSON but jsonb rejects \u0000: stored as a string instead */
	BODY("{\"a\":\"x\\u0000y\"}", "[\"{\\\"a\\\":\\\"x\\\\u0000y\\\"}\"]");
	/* an escaped backslash followed by u0000 is plain text, keep as JSON */
	BODY("{\"a\":\"\\\\u0000\"}", "[{\"a\":\"\\\\u0000\"}]");
	/* surrogates: a pair is fine, an unpaired one is not (jsonb rejects) */
	BODY("\"\\ud83d\\ude00\"", "[\"\\ud83d\\ude00\"]");
	BODY("\"\\ud83d\"", "[\"\\\"\\\\ud83d\\\"\"]");
	BODY("\"\\ude00x\"", "[\"\\\"\\\\ude00x\\\"\"]");
	BODY("\"\\u00e9\"", "[\"\\u00e9\"]");
	/* UTF-8 PostgreSQL refuses is never passed through as JSON */
	BODY("{\"a\":\"\xc0\xaf\"}", "[\"{\\\"a\\\":\\\"" FFFD FFFD "\\\"}\"]");
	BODY("\"\xed\xa0\x80\"", "[\"\\\"" FFFD FFFD FFFD "\\\"\"]");
}

#define JSONB(lit) json_is_valid_jsonb(lit, sizeof(lit) - 1)

static void test_valid_jsonb(void **state)
{
	assert_true(JSONB("{\"a\":\"\\ud83d\\ude00 \\u00e9\"}"));
	assert_true(JSONB("\"\\\\u0000\""));          /* an escaped backslash, then text */
	assert_false(JSONB("\"x\\u0000\""));
	assert_false(JSONB("{\"\\u0000\":1}"));        /* in a key too */
	assert_false(JSONB("\"\\ud83d\""));
	assert_false(JSONB("\"\\ud83dx\""));
	assert_false(JSONB("\"\\ude00\""));
	assert_false(JSONB("\"\\ud83d\\u0000\""));    /* yajl shows no NUL here */
	assert_false(JSONB("\"\\ud83d\\ud83d\\ude00\""));
	assert_false(JSONB("not json"));
	assert_false(json_is_valid_jsonb(NULL, 0));
	assert_false(json_is_valid_jsonb("", 0));
}

static void test_body_null_sb_safe(void **state)
{
	StrBuf sb;

	sb_init(&sb);
	json_append_body(&sb, NULL, 0);
	assert_string_equal(sb.data, "\"\"");
	sb_free(&sb);
}

static void assert_roundtrip(const char *in, const char *want)
{
	char errbuf[128];
	yajl_val v = yajl_tree_parse(in, errbuf, sizeof(errbuf));
	StrBuf sb;

	if (!v)
		fail_msg("yajl_tree_parse(%s): %s", in, errbuf);
	sb_init(&sb);
	json_append_value(&sb, v);
	if (strcmp(sb.data, want) != 0)
		fail_msg("json_append_value(%s): got %s, want %s", in, sb.data, want);
	yajl_tree_free(v);
	sb_free(&sb);
}

static void test_value(void **state)
{
	assert_roundtrip("{ \"a\" : [ 1 , 2.50 , -3e+2 ] , \"b\" : { } , \"c\" : [ ] }",
			 "{\"a\":[1,2.50,-3e+2],\"b\":{},\"c\":[]}");
	assert_roundtrip("[true,false,null]", "[true,false,null]");
	/* numbers keep their text, beyond double and int64 precision */
	assert_roundtrip("[12345678901234567890123, 0.1000000000000000055511151231257827]",
			 "[12345678901234567890123,0.1000000000000000055511151231257827]");
	assert_roundtrip("\"tab\\there \\\"q\\\" \\u00e9 \\ud83d\\ude00\"",
			 "\"tab\\u0009here \\\"q\\\" \xc3\xa9 \xf0\x9f\x98\x80\"");
	assert_roundtrip("{\"k\\\"ey\":\"v\"}", "{\"k\\\"ey\":\"v\"}");
	assert_roundtrip("{\"x\":{\"y\":{\"z\":[{}]}}}", "{\"x\":{\"y\":{\"z\":[{}]}}}");

	{
		StrBuf sb;

		sb_init(&sb);
		json_append_value(&sb, NULL);
		assert_string_equal(sb.data, "null");
		sb_free(&sb);
	}
}

static void test_get_path(void **state)
{
	char errbuf[128];
	yajl_val root = yajl_tree_parse(
		"{\"id\": 7, \"vehicle\": {\"vin\": \"ABC\", \"owner\": {\"name\": \"Ann\"}},"
		" \"dup\": 1, \"dup\": 2, \"arr\": [1], \"n\": null}", errbuf, sizeof(errbuf));
	yajl_val v;

	assert_non_null(root);
	v = json_get_path(root, "id");
	assert_true(YAJL_IS_NUMBER(v));
	assert_string_equal(YAJL_GET_NUMBER(v), "7");
	v = json_get_path(root, "vehicle.vin");
	assert_true(YAJL_IS_STRING(v));
	assert_string_equal(YAJL_GET_STRING(v), "ABC");
	v = json_get_path(root, "vehicle.owner.name");
	assert_string_equal(YAJL_GET_STRING(v), "Ann");
	assert_true(YAJL_IS_OBJECT(json_get_path(root, "vehicle.owner")));
	assert_string_equal(YAJL_GET_NUMBER(json_get_path(root, "dup")), "1");
	assert_true(YAJL_IS_NULL(json_get_path(root, "n")));
	assert_non_null(json_get_path(root, "n"));

	assert_null(json_get_path(root, "missing"));
	assert_null(json_get_path(root, "vehicle.missing"));
	assert_null(json_get_path(root, "id.x"));          /* walk into a number */
	assert_null(json_get_path(root, "arr.0"));         /* arrays are not walked */
	assert_null(json_get_path(root, "vehicle."));
	assert_null(json_get_path(root, ".vehicle"));
	assert_null(json_get_path(root, "vehicle..vin"));
	assert_null(json_get_path(root, ""));
	assert_null(json_get_path(root, "i"));             /* prefix of "id" */
	assert_null(json_get_path(root, "idx"));
	assert_null(json_get_path(NULL, "id"));
	yajl_tree_free(root);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid),
		cmocka_unit_test(test_invalid),
		cmocka_unit_test(test_string_escape),
		cmocka_unit_test(test_valid_depth),
		cmocka_unit_test(test_body),
		cmocka_unit_test(test_valid_jsonb),
		cmocka_unit_test(test_body_null_sb_safe),
		cmocka_unit_test(test_value),
		cmocka_unit_test(test_get_path),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
