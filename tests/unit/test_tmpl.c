/*
 * test_tmpl.c - unit tests for tmpl.c.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "batchd/json.h"
#include "batchd/tmpl.h"

static const char *const payload_json =
	"{\"id\": 42, \"name\": \"a b/c?d&e=f%g\", \"city\": \"K\xc3\xb6ln\","
	" \"safe\": \"AZaz09-._~\", \"ratio\": -1.50e+3, \"big\": 123456789012345678901234,"
	" \"yes\": true, \"no\": false, \"nil\": null, \"empty\": \"\","
	" \"vehicle\": {\"vin\": \"1HG CM\", \"make\": \"Honda\", \"year\": 2019},"
	" \"tags\": [\"x\", \"y\"], \"crlf\": \"a\\r\\nX-Evil: 1\", \"lf\": \"a\\nb\","
	" \"quote\": \"say \\\"hi\\\"\", \"dot-ted_name\": \"ok\"}";

static yajl_val payload;

static int setup(void **state)
{
	char errbuf[128];

	payload = yajl_tree_parse(payload_json, errbuf, sizeof(errbuf));
	if (!payload) {
		print_error("payload: %s\n", errbuf);
		return -1;
	}
	return 0;
}

static int teardown(void **state)
{
	yajl_tree_free(payload);
	return 0;
}

/* Render and compare; the output buffer starts non-empty to check appending. */
static void assert_render(const char *tmpl, enum TmplMode mode, const char *want)
{
	StrBuf sb;
	char err[256] = "";

	sb_init(&sb);
	sb_puts(&sb, ">");
	if (tmpl_render(tmpl, payload, mode, &sb, err, sizeof(err)) != 0)
		fail_msg("tmpl_render(%s) failed: %s", tmpl, err);
	if (strcmp(sb.data + 1, want) != 0)
		fail_msg("tmpl_render(%s): got '%s', want '%s'", tmpl, sb.data + 1, want);
	assert_int_equal(sb.len, strlen(want) + 1);
	sb_free(&sb);
}

static void assert_render_err(const char *tmpl, yajl_val p, enum TmplMode mode,
			      const char *want_err)
{
	StrBuf sb;
	char err[256] = "";

	sb_init(&sb);
	sb_puts(&sb, "keep");
	if (tmpl_render(tmpl, p, mode, &sb, err, sizeof(err)) != -1)
		fail_msg("tmpl_render(%s) succeeded: '%s'", tmpl, sb.data);
	if (strcmp(err, want_err) != 0)
		fail_msg("tmpl_render(%s): error '%s', want '%s'", tmpl, err, want_err);
	/* partial output is rolled back */
	assert_string_equal(sb.data, "keep");
	assert_int_equal(sb.len, 4);
	sb_free(&sb);
}

static void test_url_encoding(void **state)
{
	assert_render("http://h/item/{id}", TMPL_URL, "http://h/item/42");
	assert_render("http://h/?q={name}", TMPL_URL, "http://h/?q=a%20b%2Fc%3Fd%26e%3Df%25g");
	assert_render("http://h/{city}", TMPL_URL, "http://h/K%C3%B6ln");
	assert_render("http://h/{safe}", TMPL_URL, "http://h/AZaz09-._~");
	assert_render("http://h/{quote}", TMPL_URL, "http://h/say%20%22hi%22");
	assert_render("http://h/{empty}/x", TMPL_URL, "http://h//x");
	/* literal text is never encoded */
	assert_render("http://h/a b?x=1&y={id}", TMPL_URL, "http://h/a b?x=1&y=42");
	assert_render("http://h/{dot-ted_name}", TMPL_URL, "http://h/ok");
	assert_render("", TMPL_URL, "");
	assert_render("no placeholders", TMPL_URL, "no placeholders");
}

static void test_nested_numbers_bools(void **state)
{
	assert_render("/v/{vehicle.vin}/{vehicle.year}", TMPL_URL, "/v/1HG%20CM/2019");
	/* numbers render as their JSON text, even beyond double precision */
	assert_render("{ratio}|{big}", TMPL_URL, "-1.50e%2B3|123456789012345678901234");
	assert_render("{ratio}|{big}", TMPL_HEADER, "-1.50e+3|123456789012345678901234");
	assert_render("{yes},{no}", TMPL_URL, "true,false");
	assert_render("{yes},{no}", TMPL_HEADER, "true,false");
	assert_render("{id}{id}", TMPL_URL, "4242");
}

static void test_literal_braces(void **state)
{
	/* only {NAME} with NAME in [A-Za-z0-9_.-]+ is a placeholder */
	assert_render("{}", TMPL_URL, "{}");
	assert_render("{ id }", TMPL_URL, "{ id }");
	assert_render("{id", TMPL_URL, "{id");
	assert_render("id}", TMPL_URL, "id}");
	assert_render("{{id}}", TMPL_URL, "{42}");
	assert_render("{a b}", TMPL_URL, "{a b}");
	assert_render("{\"vin\": {vehicle.vin}}", TMPL_JSON, "{\"vin\": \"1HG CM\"}");
	assert_render("{\"vin\": {vehicle.vin}, \"n\": {id}}", TMPL_JSON,
		      "{\"vin\": \"1HG CM\", \"n\": 42}");
}

static void test_json_mode(void **state)
{
	assert_render("{name}", TMPL_JSON, "\"a b/c?d&e=f%g\"");
	assert_render("{quote}", TMPL_JSON, "\"say \\\"hi\\\"\"");
	assert_render("{lf}", TMPL_JSON, "\"a\\u000ab\"");
	assert_render("{id}", TMPL_JSON, "42");
	assert_render("{ratio}", TMPL_JSON, "-1.50e+3");
	assert_render("{yes}", TMPL_JSON, "true");
	assert_render("{vehicle}", TMPL_JSON,
		      "{\"vin\":\"1HG CM\",\"make\":\"Honda\",\"year\":2019}");
	assert_render("{tags}", TMPL_JSON, "[\"x\",\"y\"]");
	assert_render("{\"data\": {.}}", TMPL_JSON,
		      "{\"data\": {\"id\":42,\"name\":\"a b/c?d&e=f%g\",\"city\":\"K\xc3\xb6ln\","
		      "\"safe\":\"AZaz09-._~\",\"ratio\":-1.50e+3,\"big\":123456789012345678901234,"
		      "\"yes\":true,\"no\":false,\"nil\":null,\"empty\":\"\","
		      "\"vehicle\":{\"vin\":\"1HG CM\",\"make\":\"Honda\",\"year\":2019},"
		      "\"tags\":[\"x\",\"y\"],\"crlf\":\"a\\u000d\\u000aX-Evil: 1\",\"lf\":\"a\\u000ab\","
		      "\"quote\":\"say \\\"hi\\\"\",\"dot-ted_name\":\"ok\"}}");
}

static void test_whole_payload_scalar(void **state)
{
	char errbuf[64];
	yajl_val s = yajl_tree_parse("\"a b\"", errbuf, sizeof(errbuf));
	StrBuf sb;
	char err[128];

	assert_non_null(s);
	sb_init(&sb);
	assert_int_equal(tmpl_render("/x/{.}", s, TMPL_URL, &sb, err, sizeof(err)), 0);
	assert_string_equal(sb.data, "/x/a%20b");
	sb_reset(&sb);
	assert_int_equal(tmpl_render("{.}", s, TMPL_JSON, &sb, err, sizeof(err)), 0);
	assert_string_equal(sb.data, "\"a b\"");
	sb_free(&sb);
	yajl_tree_free(s);
}

static void test_header_mode(void **state)
{
	assert_render("Bearer {name}", TMPL_HEADER, "Bearer a b/c?d&e=f%g");
	assert_render("X-City: {city}", TMPL_HEADER, "X-City: K\xc3\xb6ln");
	assert_render_err("X: {crlf}", payload, TMPL_HEADER,
			  "field 'crlf' contains CR or LF and cannot be used in a header");
	assert_render_err("X: {lf}", payload, TMPL_HEADER,
			  "field 'lf' contains CR or LF and cannot be used in a header");
	/* in a URL the same value is simply encoded */
	assert_render("/{crlf}", TMPL_URL, "/a%0D%0AX-Evil%3A%201");
}

static void test_errors(void **state)
{
	assert_render_err("/item/{missing}", payload, TMPL_URL, "payload has no field 'missing'");
	assert_render_err("/v/{vehicle.color}", payload, TMPL_URL,
			  "payload has no field 'vehicle.color'");
	assert_render_err("/v/{id.x}", payload, TMPL_URL, "payload has no field 'id.x'");
	assert_render_err("/x/{nil}", payload, TMPL_URL, "field 'nil' is null");
	assert_render_err("{nil}", payload, TMPL_JSON, "field 'nil' is null");
	assert_render_err("{nil}", payload, TMPL_HEADER, "field 'nil' is null");
	assert_render_err("/x/{vehicle}", payload, TMPL_URL,
			  "field 'vehicle' is an object and cannot be used in a URL");
	assert_render_err("/x/{tags}", payload, TMPL_URL,
			  "field 'tags' is an array and cannot be used in a URL");
	assert_render_err("X: {vehicle}", payload, TMPL_HEADER,
			  "field 'vehicle' is an object and cannot be used in a header");
	assert_render_err("/x/{.}", payload, TMPL_URL,
			  "field '.' is an object and cannot be used in a URL");
	/* the error is found after some output was produced: rolled back */
	assert_render_err("/a/{id}/b/{missing}", payload, TMPL_URL,
			  "payload has no field 'missing'");
	assert_render_err("/a/{id}", NULL, TMPL_URL, "payload has no field 'id'");
	assert_render_err("{.}", NULL, TMPL_JSON, "payload is missing");
}

static void assert_url_ok(const char *tmpl)
{
	char err[128] = "";

	if (tmpl_check_url(tmpl, err, sizeof(err)) != 0)
		fail_msg("tmpl_check_url(%s) rejected: %s", tmpl, err);
}

static void assert_url_bad(const char *tmpl, const char *want_err)
{
	char err[128] = "";

	if (tmpl_check_url(tmpl, err, sizeof(err)) != -1)
		fail_msg("tmpl_check_url(%s) accepted", tmpl);
	if (strcmp(err, want_err) != 0)
		fail_msg("tmpl_check_url(%s): '%s', want '%s'", tmpl, err, want_err);
}

static void test_check_url(void **state)
{
	static const char host[] = "placeholders are not allowed in the URL scheme or host";
	static const char scheme[] = "URL must start with http:// or https://";

	assert_url_ok("http://127.0.0.1:8080/item/{id}?q={q}");
	assert_url_ok("https://api.example.com/v1/{a.b}/x");
	assert_url_ok("http://h");
	assert_url_ok("http://h?{q}");
	assert_url_ok("http://h#{frag}");
	assert_url_ok("HTTPS://H/{id}");
	assert_url_ok("http://[::1]:8080/{id}");

	assert_url_bad("http://{host}/x", host);
	assert_url_bad("http://a{b}.com/", host);
	assert_url_bad("http://example.com:{port}/", host);
	assert_url_bad("http://{user}@example.com/", host);
	assert_url_bad("{scheme}://x", scheme);
	assert_url_bad("ftp://x", scheme);
	assert_url_bad("http:/x", scheme);
	assert_url_bad("x", scheme);
	assert_url_bad("", scheme);
	assert_url_bad("http://", "URL has no host");
	assert_url_bad("http:///path", "URL has no host");
	assert_url_bad("http://h/a b", "URL contains a space or control character");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_url_encoding),
		cmocka_unit_test(test_nested_numbers_bools),
		cmocka_unit_test(test_literal_braces),
		cmocka_unit_test(test_json_mode),
		cmocka_unit_test(test_whole_payload_scalar),
		cmocka_unit_test(test_header_mode),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_check_url),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
