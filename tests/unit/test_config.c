/*
 * test_config.c - unit tests for config.c.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "batchd/config.h"

static char cfg_path[64];

/* Write text to a fresh temp file; its name goes to cfg_path. */
static void write_config(const char *text)
{
	int fd;
	size_t len = strlen(text);

	strcpy(cfg_path, "/tmp/batchd_test_cfg_XXXXXX");
	fd = mkstemp(cfg_path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	close(fd);
}

static Config *load_ok(const char *text)
{
	char err[512] = "";
	Config *cfg;

	write_config(text);
	cfg = config_load(cfg_path, err, sizeof(err));
	unlink(cfg_path);
	if (!cfg)
		fail_msg("config_load failed: %s", err);
	assert_string_equal(err, "");
	return cfg;
}

/* Expect failure with exactly "PATH:LINE: msg" (line 0: "PATH: msg"). */
static void load_err(const char *text, int line, const char *msg)
{
	char err[512] = "", want[512];
	Config *cfg;

	write_config(text);
	cfg = config_load(cfg_path, err, sizeof(err));
	unlink(cfg_path);
	if (cfg) {
		config_free(cfg);
		fail_msg("config_load accepted, want error '%s'", msg);
	}
	if (line > 0)
		snprintf(want, sizeof(want), "%s:%d: %s", cfg_path, line, msg);
	else
		snprintf(want, sizeof(want), "%s: %s", cfg_path, msg);
	if (strcmp(err, want) != 0)
		fail_msg("error:\n  got  '%s'\n  want '%s'", err, want);
}

static int setup(void **state)
{
	unsetenv("BATCHD_DATABASE");
	unsetenv("BATCHD_TEST_TOKEN");
	unsetenv("BATCHD_TEST_UNSET");
	return 0;
}

#define MINIMAL \
	"[batchd]\n" \
	"database = dbname=x\n" \
	"[provider p]\n" \
	"url = http://127.0.0.1:9/{id}\n" \
	"[route r]\n" \
	"providers = p\n"

static void test_full(void **state)
{
	Config *cfg;
	Provider *p, *fb;
	Route *r;

	setenv("BATCHD_TEST_TOKEN", "s3cr3t", 1);
	cfg = load_ok(
		"; batchd test config\n"
		"# hash comment too\n"
		"[batchd]\n"
		"database = host=/tmp dbname=batchd\n"
		"listen = 127.0.0.1:8080\n"
		"max_inflight = 250\n"
		"log_level = debug\n"
		"log_format = json\n"
		"shutdown_timeout = 2m\n"
		"poll_interval = 250ms\n"
		"flush_interval = 50ms\n"
		"flush_size = 1000\n"
		"\n"
		"[provider registry]\n"
		"url = https://registry.example.com/v1/trucks/{vin}?full=1\n"
		"method = post\n"
		"header = Authorization: Bearer ${BATCHD_TEST_TOKEN}\n"
		"header = X-Request-Id: {id}\n"
		"header = Accept: application/json; charset=utf-8\n"
		"body = {\"vin\": {vin}, \"note\": \"a;b#c\"}\n"
		"timeout = 45s\n"
		"connect_timeout = 3s\n"
		"max_response_size = 64KB\n"
		"\n"
		"[provider fallback]\n"
		"url = http://[::1]:8081/check?vin={vin}\n"
		"\n"
		"[route nightly]\n"
		"providers = registry, fallback\n"
		"[route single]\n"
		"providers=fallback\n");

	assert_string_equal(cfg->database, "host=/tmp dbname=batchd");
	assert_string_equal(cfg->listen, "127.0.0.1:8080");
	assert_int_equal(cfg->max_inflight, 250);
	assert_int_equal(cfg->log_level, LG_DEBUG);
	assert_int_equal(cfg->log_format, LOGF_JSON);
	assert_int_equal(cfg->shutdown_timeout_ms, 120000);
	assert_int_equal(cfg->poll_interval_ms, 250);
	assert_int_equal(cfg->flush_interval_ms, 50);
	assert_int_equal(cfg->flush_size, 1000);

	assert_int_equal(cfg->nproviders, 2);
	p = cfg->providers[0];
	assert_string_equal(p->name, "registry");
	assert_int_equal(p->line, 14);
	assert_string_equal(p->url, "https://registry.example.com/v1/trucks/{vin}?full=1");
	assert_string_equal(p->method, "POST");
	assert_int_equal(p->nheaders, 3);
	assert_string_equal(p->headers[0], "Authorization: Bearer s3cr3t");
	assert_string_equal(p->headers[1], "X-Request-Id: {id}");
	assert_string_equal(p->headers[2], "Accept: application/json; charset=utf-8");
	assert_null(p->headers[3]);
	assert_string_equal(p->body, "{\"vin\": {vin}, \"note\": \"a;b#c\"}");
	assert_int_equal(p->timeout_ms, 45000);
	assert_int_equal(p->connect_timeout_ms, 3000);
	assert_int_equal(p->max_response_size, 65536);

	fb = cfg->providers[1];
	assert_string_equal(fb->name, "fallback");
	assert_int_equal(fb->line, 25);
	assert_string_equal(fb->url, "http://[::1]:8081/check?vin={vin}");
	assert_string_equal(fb->method, "GET");
	assert_int_equal(fb->nheaders, 0);
	assert_null(fb->body);

	assert_int_equal(cfg->nroutes, 2);
	r = cfg->routes[0];
	assert_string_equal(r->name, "nightly");
	assert_int_equal(r->line, 28);
	assert_int_equal(r->providers_line, 29);
	assert_int_equal(r->nproviders, 2);
	assert_string_equal(r->provider_names[0], "registry");
	assert_string_equal(r->provider_names[1], "fallback");
	assert_null(r->provider_names[2]);
	assert_ptr_equal(r->providers[0], p);
	assert_ptr_equal(r->providers[1], fb);
	r = cfg->routes[1];
	assert_string_equal(r->name, "single");
	assert_int_equal(r->nproviders, 1);
	assert_ptr_equal(r->providers[0], fb);

	assert_ptr_equal(config_find_provider(cfg, "fallback"), fb);
	assert_null(config_find_provider(cfg, "nope"));
	assert_ptr_equal(config_find_route(cfg, "single"), cfg->routes[1]);
	assert_null(config_find_route(cfg, "nightl"));
	assert_string_equal(cfg->path, cfg_path);
	config_free(cfg);
}

static void test_defaults(void **state)
{
	Config *cfg = load_ok(MINIMAL);
	Provider *p = cfg->providers[0];

	assert_string_equal(cfg->database, "dbname=x");
	assert_null(cfg->listen);
	assert_int_equal(cfg->max_inflight, 100);
	assert_int_equal(cfg->log_level, LG_INFO);
	assert_int_equal(cfg->log_format, LOGF_TEXT);
	assert_int_equal(cfg->shutdown_timeout_ms, 30000);
	assert_int_equal(cfg->poll_interval_ms, 5000);
	assert_int_equal(cfg->flush_interval_ms, 20);
	assert_int_equal(cfg->flush_size, 500);
	assert_string_equal(p->method, "GET");
	assert_int_equal(p->timeout_ms, 30000);
	assert_int_equal(p->connect_timeout_ms, 10000);
	assert_int_equal(p->max_response_size, 1024 * 1024);
	assert_int_equal(p->nheaders, 0);
	assert_null(p->body);
	config_free(cfg);
}

static void test_syntax_variants(void **state)
{
	/* CRLF endings, a UTF-8 BOM, indentation, spaces around '=', a long line */
	char text[4096];
	char longpath[1001];
	Config *cfg;

	memset(longpath, 'a', 1000);
	longpath[1000] = '\0';
	snprintf(text, sizeof(text),
		 "\xEF\xBB\xBF[batchd]\r\n"
		 "  database   =   dbname=x  \r\n"
		 "\t; indented comment\r\n"
		 "[ provider  p ]\r\n"
		 "\turl = http://h/%s/{id}\r\n"
		 "[route r]\r\n"
		 "    providers = p", longpath);
	cfg = load_ok(text);
	assert_string_equal(cfg->database, "dbname=x");
	assert_string_equal(cfg->providers[0]->name, "p");
	assert_int_equal(strlen(cfg->providers[0]->url), strlen("http://h//{id}") + 1000);
	assert_int_equal(cfg->routes[0]->line, 6);
	assert_int_equal(cfg->routes[0]->providers_line, 7);
	config_free(cfg);
}

static void test_long_section_name(void **state)
{
	/* 49 characters between the brackets: the most inih keeps */
	Config *cfg = load_ok(
		"[batchd]\ndatabase = x\n"
		"[provider p234567890123456789012345678901234567890]\nurl = http://h/\n"
		"[route r]\nproviders = p234567890123456789012345678901234567890\n");

	assert_string_equal(cfg->providers[0]->name, "p234567890123456789012345678901234567890");
	assert_string_equal(cfg->providers[0]->url, "http://h/");
	config_free(cfg);
}

static void test_semicolons(void **state)
{
	Config *cfg = load_ok(
		"[batchd]\n"
		"database = host=/tmp password=a;b#c ; not a comment\n"
		"[provider p]\n"
		"url = http://h/x;y={id}\n"
		"header = Cookie: a=1; b=2\n"
		"[route r]\n"
		"providers = p\n");

	assert_string_equal(cfg->database, "host=/tmp password=a;b#c ; not a comment");
	assert_string_equal(cfg->providers[0]->url, "http://h/x;y={id}");
	assert_string_equal(cfg->providers[0]->headers[0], "Cookie: a=1; b=2");
	config_free(cfg);
}

static void test_env_expansion_ok(void **state)
{
	Config *cfg;

	setenv("BATCHD_TEST_TOKEN", "tok", 1);
	setenv("BATCHD_TEST_N", "42", 1);
	cfg = load_ok(
		"[batchd]\n"
		"database = dbname=${BATCHD_TEST_TOKEN}_db password=$$x$y\n"
		"max_inflight = 1${BATCHD_TEST_N}\n"
		"[provider p]\n"
		"url = http://h/${BATCHD_TEST_TOKEN}/{id}\n"
		"[route r]\n"
		"providers = p\n");
	assert_string_equal(cfg->database, "dbname=tok_db password=$x$y");
	assert_int_equal(cfg->max_inflight, 142);
	assert_string_equal(cfg->providers[0]->url, "http://h/tok/{id}");
	config_free(cfg);
	unsetenv("BATCHD_TEST_N");
}

static void test_env_unset(void **state)
{
	load_err("[batchd]\n"
		 "database = dbname=x\n"
		 "[provider p]\n"
		 "url = http://h/{id}\n"
		 "header = Authorization: Bearer ${BATCHD_TEST_UNSET}\n"
		 "[route r]\n"
		 "providers = p\n",
		 5, "header: environment variable 'BATCHD_TEST_UNSET' is not set");
}

static void test_expand_env_direct(void **state)
{
	char err[128] = "";
	char *s;

	setenv("BATCHD_TEST_TOKEN", "v", 1);
	s = config_expand_env("a${BATCHD_TEST_TOKEN}b${BATCHD_TEST_TOKEN}", err, sizeof(err));
	assert_string_equal(s, "avbv");
	free(s);
	s = config_expand_env("$$ $5 ${BATCHD_TEST_TOKEN}$", err, sizeof(err));
	assert_string_equal(s, "$ $5 v$");
	free(s);
	s = config_expand_env("$${BATCHD_TEST_TOKEN}", err, sizeof(err));
	assert_string_equal(s, "${BATCHD_TEST_TOKEN}");
	free(s);
	s = config_expand_env("", err, sizeof(err));
	assert_string_equal(s, "");
	free(s);
	setenv("BATCHD_TEST_TOKEN", "", 1);
	s = config_expand_env("[${BATCHD_TEST_TOKEN}]", err, sizeof(err));
	assert_string_equal(s, "[]");
	free(s);

	assert_null(config_expand_env("x${BATCHD_TEST_UNSET}", err, sizeof(err)));
	assert_string_equal(err, "environment variable 'BATCHD_TEST_UNSET' is not set");
	assert_null(config_expand_env("${BATCHD_TEST", err, sizeof(err)));
	assert_string_equal(err, "unterminated ${ (missing '}')");
	assert_null(config_expand_env("${}", err, sizeof(err)));
	assert_string_equal(err, "invalid variable name in '${}'");
	assert_null(config_expand_env("${A-B}", err, sizeof(err)));
	assert_string_equal(err, "invalid variable name in '${A-B}'");
	assert_null(config_expand_env("${1A}", err, sizeof(err)));
	assert_string_equal(err, "invalid variable name in '${1A}'");
}

static void test_database_env(void **state)
{
	Config *cfg;

	/* BATCHD_DATABASE overrides the file */
	setenv("BATCHD_DATABASE", "postgresql:///override", 1);
	cfg = load_ok(MINIMAL);
	assert_string_equal(cfg->database, "postgresql:///override");
	config_free(cfg);

	/* ... and makes database, even all of [batchd], optional */
	cfg = load_ok("[provider p]\nurl = http://h/{id}\n[route r]\nproviders = p\n");
	assert_string_equal(cfg->database, "postgresql:///override");
	assert_int_equal(cfg->max_inflight, 100);
	config_free(cfg);
	unsetenv("BATCHD_DATABASE");

	load_err("[provider p]\nurl = http://h/{id}\n[route r]\nproviders = p\n",
		 0, "[batchd] database is required (or set BATCHD_DATABASE)");
	load_err("[batchd]\nmax_inflight = 5\n[provider p]\nurl = http://h/{id}\n"
		 "[route r]\nproviders = p\n",
		 1, "[batchd] database is required (or set BATCHD_DATABASE)");
}

static void test_errors_keys(void **state)
{
	load_err("[batchd]\ndatabase = x\nbogus = 1\n", 3, "unknown key 'bogus' in [batchd]");
	load_err("[batchd]\ndatabase = x\n[provider p]\nurl = http://h/\nrate = 20/s\n",
		 5, "unknown key 'rate' in [provider p]");
	load_err("[route r]\nprovider = p\n", 2, "unknown key 'provider' in [route r]");
	load_err("database = x\n[batchd]\n", 1, "key 'database' outside of any section");
	load_err("[batchd]\ndatabase = x\ndatabase = y\n", 3,
		 "duplicate key 'database' in [batchd]");
	load_err(MINIMAL "providers = p\n", 7, "duplicate key 'providers' in [route r]");
	load_err("[batchd]\ndatabase = x\njust some words\n", 3,
		 "syntax error (expected 'key = value', '[section]' or a comment)");
	load_err("[batchd]\ndatabase =\n", 2, "database must not be empty");
}

static void test_errors_values(void **state)
{
	load_err("[batchd]\ndatabase = x\nshutdown_timeout = 5x\n", 3,
		 "shutdown_timeout: invalid duration '5x' (expected e.g. 250ms, 5s, 2m, 1h, 30d)");
	load_err("[batchd]\ndatabase = x\npoll_interval = 1ms\n", 3,
		 "poll_interval: duration '1ms' out of range (10ms to 86400000ms)");
	load_err("[batchd]\ndatabase = x\nmax_inflight = 0\n", 3,
		 "max_inflight: invalid value '0' (expected an integer from 1 to 100000)");
	load_err("[batchd]\ndatabase = x\nmax_inflight = 100001\n", 3,
		 "max_inflight: invalid value '100001' (expected an integer from 1 to 100000)");
	load_err("[batchd]\ndatabase = x\nflush_size = ten\n", 3,
		 "flush_size: invalid value 'ten' (expected an integer from 1 to 100000)");
	load_err("[batchd]\ndatabase = x\nlog_level = verbose\n", 3,
		 "log_level: invalid value 'verbose' (expected error, warn, info or debug)");
	load_err("[batchd]\ndatabase = x\nlog_format = xml\n", 3,
		 "log_format: invalid value 'xml' (expected text or json)");
	load_err("[batchd]\ndatabase = x\nlisten = 8080\n", 3,
		 "listen: invalid address '8080' (expected HOST:PORT or [IPV6]:PORT)");
	load_err("[batchd]\ndatabase = x\nlisten = ::1:8080\n", 3,
		 "listen: invalid address '::1:8080' (expected HOST:PORT or [IPV6]:PORT)");
	load_err("[batchd]\ndatabase = x\nlisten = h:70000\n", 3,
		 "listen: invalid address 'h:70000' (expected HOST:PORT or [IPV6]:PORT)");
	load_err("[provider p]\nmethod = FETCH\n", 2,
		 "method: invalid value 'FETCH' (expected GET, POST, PUT, PATCH or DELETE)");
	load_err("[provider p]\ntimeout = -1s\n", 2,
		 "timeout: invalid duration '-1s' (expected e.g. 250ms, 5s, 2m, 1h, 30d)");
	load_err("[provider p]\nmax_response_size = lots\n", 2,
		 "max_response_size: invalid size 'lots' (expected e.g. 512KB, 1MB, 64MB)");
	load_err("[provider p]\nmax_response_size = 2GB\n", 2,
		 "max_response_size: size '2GB' out of range (1 to 1073741824 bytes)");
	load_err("[provider p]\nheader = no colon here\n", 2,
		 "header must look like 'Name: value' (a token name, then a colon)");
	load_err("[provider p]\nheader = Bad Name: x\n", 2,
		 "header must look like 'Name: value' (a token name, then a colon)");
	load_err("[provider p]\nheader = : x\n", 2,
		 "header must look like 'Name: value' (a token name, then a colon)");
	load_err("[provider p]\nheader = X-Empty:  \n", 2, "header 'X-Empty' has an empty value");
	load_err("[route r]\nproviders = a,,b\n", 2,
		 "providers: expected a comma-separated list of provider names");
	load_err("[route r]\nproviders = a, b,\n", 2,
		 "providers: expected a comma-separated list of provider names");
	load_err("[route r]\nproviders = a, b, a\n", 2, "providers: 'a' is listed twice");
	/* url problems, reported by tmpl_check_url */
	load_err("[provider p]\nurl = http://{host}/x\n", 2,
		 "url: placeholders are not allowed in the URL scheme or host");
	load_err("[provider p]\nurl = http://a{b}.com/\n", 2,
		 "url: placeholders are not allowed in the URL scheme or host");
	load_err("[provider p]\nurl = {scheme}://x\n", 2,
		 "url: URL must start with http:// or https://");
	load_err("[provider p]\nurl = ftp://x/{id}\n", 2,
		 "url: URL must start with http:// or https://");
}

static void test_errors_sections(void **state)
{
	load_err("[batchd]\ndatabase = x\n\n[workers]\nn = 1\n", 4,
		 "unknown section [workers] (expected [batchd], [provider NAME] or [route NAME])");
	load_err("[batchd]\ndatabase = x\n[provider]\n", 3,
		 "[provider NAME]: missing name (letters, digits, '_', '-', '.')");
	load_err("[route a/b]\n", 1, "[route NAME]: invalid name (letters, digits, '_', '-', '.')");
	load_err("[batchd extra]\n", 1, "[batchd] takes no name");
	load_err("[batchd\n", 1, "section header without ']'");
	load_err("[batchd] x = 1\n", 1, "unexpected text after section header");
	load_err("[provider aaaaaaaaaabbbbbbbbbbccccccccccddddddddddeeeeeeeeee]\n", 1,
		 "section header too long (max 49 characters)");
	/* duplicates name the line of the first definition */
	load_err(MINIMAL "[provider p]\nurl = http://h/\n", 7,
		 "duplicate section [provider p] (first at line 3)");
	load_err(MINIMAL "\n[route r]\n", 8, "duplicate section [route r] (first at line 5)");
	load_err(MINIMAL "[batchd]\n", 7, "duplicate section [batchd] (first at line 1)");
	/* a section without keys is still seen and validated */
	load_err("[provider q]\n" MINIMAL, 1, "[provider q] has no url");
}

static void test_errors_validation(void **state)
{
	/* provider without url: the line of its section header */
	load_err("[batchd]\ndatabase = x\n[provider p]\nmethod = GET\n[route r]\nproviders = p\n",
		 3, "[provider p] has no url");
	/*
	 * route naming an unknown provider: the line of its providers key;
	 * providers may be declared after the route that uses them
	 */
	load_err("[batchd]\ndatabase = x\n[route r]\n\n; comment\nproviders = p, ghost\n"
		 "[provider p]\nurl = http://h/\n",
		 6, "[route r] names unknown provider 'ghost'");
	load_err("[batchd]\ndatabase = x\n[route r]\n[provider p]\nurl = http://h/\n",
		 3, "[route r] has no providers");
	load_err("[batchd]\ndatabase = x\n[provider p]\nurl = http://h/\n",
		 0, "at least one [route NAME] section is required");
	load_err("", 0, "[batchd] database is required (or set BATCHD_DATABASE)");
}

static void test_missing_file(void **state)
{
	char err[256];
	Config *cfg = config_load("/nonexistent/batchd.ini", err, sizeof(err));

	assert_null(cfg);
	assert_string_equal(err, "/nonexistent/batchd.ini: cannot open: No such file or directory");
}

static void test_long_line(void **state)
{
	size_t n = 70000;
	char *text = malloc(n + 64);

	assert_non_null(text);
	strcpy(text, "[batchd]\ndatabase = ");
	memset(text + strlen(text), 'x', n);
	strcpy(text + 20 + n, "\n");
	load_err(text, 2, "line too long (over 65533 bytes)");
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(test_full, setup),
		cmocka_unit_test_setup(test_defaults, setup),
		cmocka_unit_test_setup(test_syntax_variants, setup),
		cmocka_unit_test_setup(test_long_section_name, setup),
		cmocka_unit_test_setup(test_semicolons, setup),
		cmocka_unit_test_setup(test_env_expansion_ok, setup),
		cmocka_unit_test_setup(test_env_unset, setup),
		cmocka_unit_test_setup(test_expand_env_direct, setup),
		cmocka_unit_test_setup(test_database_env, setup),
		cmocka_unit_test_setup(test_errors_keys, setup),
		cmocka_unit_test_setup(test_errors_values, setup),
		cmocka_unit_test_setup(test_errors_sections, setup),
		cmocka_unit_test_setup(test_errors_validation, setup),
		cmocka_unit_test_setup(test_missing_file, setup),
		cmocka_unit_test_setup(test_long_line, setup),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
