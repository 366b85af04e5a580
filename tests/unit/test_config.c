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
#include "batchd/expand.h"

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

/* MINIMAL without [batchd], for tests that write their own */
#define PROVIDER_ROUTE \
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
	assert_int_equal(cfg->claim_ahead, 25);      /* a tenth of max_inflight */
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
	assert_int_equal(cfg->claim_ahead, 10);
	assert_int_equal(cfg->log_level, LG_INFO);
	assert_int_equal(cfg->log_format, LOGF_AUTO);
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

	/* [batchd] */
	assert_int_equal(cfg->heartbeat_interval_ms, 5000);
	assert_int_equal(cfg->lease_timeout_ms, 30000);
	assert_int_equal(cfg->max_body_size, 64 * 1024 * 1024);
	assert_int_equal(cfg->retention_ms, 0);
	assert_int_equal(cfg->idempotency_ttl_ms, 86400LL * 1000);
	assert_int_equal(cfg->watchdog_db_grace_ms, 60000);
	/* [provider p] */
	assert_true(p->rate == 0.0);
	assert_int_equal(p->burst, 1);
	assert_int_equal(p->max_concurrency, 0);
	assert_int_equal(p->retries, 3);
	assert_int_equal(p->backoff_ms, 1000);
	assert_int_equal(p->backoff_max_ms, 60000);
	assert_int_equal(p->requeue_after_ms, 30000);
	assert_int_equal(p->breaker_failures, 5);
	assert_int_equal(p->breaker_cooldown_ms, 60000);
	assert_null(p->retry_on);
	assert_int_equal(p->nretry_on, 0);
	assert_null(p->permanent_on);
	assert_int_equal(p->npermanent_on, 0);
	assert_null(p->idempotency_header);
	assert_null(p->secret_headers);
	assert_int_equal(p->nsecret_headers, 0);
	/* [route r] */
	assert_false(cfg->routes[0]->failover_on_permanent);
	assert_int_equal(cfg->routes[0]->group_concurrency, 0);
	assert_true(cfg->routes[0]->group_rate == 0.0);
	assert_null(cfg->routes[0]->hook);
	assert_null(cfg->routes[0]->on_batch_done);
	config_free(cfg);
}

/* The keys added for politeness, resilience, leases and hooks. */
static void test_new_keys(void **state)
{
	Config *cfg;
	Provider *p, *q;
	Route *r, *s;

	cfg = load_ok(
		"[batchd]\n"
		"database = x\n"
		"heartbeat_interval = 2s\n"
		"lease_timeout = 4s\n"             /* exactly twice: allowed */
		"max_body_size = 1KB\n"
		"retention = 30d\n"
		"idempotency_ttl = 7d\n"
		"watchdog_db_grace = 90s\n"
		"[provider p]\n"
		"url = http://h/{id}\n"
		"rate = 20/s\n"
		"burst = 10\n"
		"max_concurrency = 4\n"
		"retries = 0\n"
		"backoff = 250ms\n"
		"backoff_max = 250ms\n"            /* equal: allowed */
		"requeue_after = 0\n"
		"breaker_failures = 100000\n"
		"breaker_cooldown = 10ms\n"
		"retry_on = 404, 409\n"
		"permanent_on =503\n"
		"idempotency_header = Idempotency-Key\n"
		"secret_header = X-Api-Key\n"
		"secret_header = x-other_Token\n"
		"[provider q]\n"
		"url = http://h/{id}\n"
		"rate = 0.5/s\n"
		"max_concurrency = 100000\n"
		"retries = 100\n"
		"backoff = 1h\n"
		"backoff_max = 1d\n"
		"requeue_after = 1d\n"
		"breaker_cooldown = 1d\n"
		"retry_on = 599,100\n"
		"[route r]\n"
		"providers = p, q\n"
		"failover_on_permanent = yes\n"
		"group_concurrency = 1\n"
		"group_rate = 100/m\n"
		"hook = batchd_hooks.on_item\n"
		"on_batch_done = _Notify2\n"
		"[route s]\n"
		"providers = q\n"
		"failover_on_permanent = off\n"
		"group_rate = 1000/h\n"
		"hook = public.A_1\n");

	assert_int_equal(cfg->heartbeat_interval_ms, 2000);
	assert_int_equal(cfg->lease_timeout_ms, 4000);
	assert_int_equal(cfg->max_body_size, 1024);
	assert_int_equal(cfg->retention_ms, 30LL * 86400 * 1000);
	assert_int_equal(cfg->idempotency_ttl_ms, 7LL * 86400 * 1000);
	assert_int_equal(cfg->watchdog_db_grace_ms, 90000);

	p = cfg->providers[0];
	assert_true(p->rate == 20.0);
	assert_int_equal(p->burst, 10);
	assert_int_equal(p->max_concurrency, 4);
	assert_int_equal(p->retries, 0);
	assert_int_equal(p->backoff_ms, 250);
	assert_int_equal(p->backoff_max_ms, 250);
	assert_int_equal(p->requeue_after_ms, 0);
	assert_int_equal(p->breaker_failures, 100000);
	assert_int_equal(p->breaker_cooldown_ms, 10);
	assert_int_equal(p->nretry_on, 2);
	assert_int_equal(p->retry_on[0], 404);
	assert_int_equal(p->retry_on[1], 409);
	assert_int_equal(p->npermanent_on, 1);
	assert_int_equal(p->permanent_on[0], 503);
	assert_string_equal(p->idempotency_header, "Idempotency-Key");
	assert_int_equal(p->nsecret_headers, 2);
	assert_string_equal(p->secret_headers[0], "x-api-key");
	assert_string_equal(p->secret_headers[1], "x-other_token");

	q = cfg->providers[1];
	assert_true(q->rate == 0.5);
	assert_int_equal(q->burst, 1);
	assert_int_equal(q->max_concurrency, 100000);
	assert_int_equal(q->retries, 100);
	assert_int_equal(q->backoff_ms, 3600 * 1000);
	assert_int_equal(q->backoff_max_ms, 86400 * 1000);
	assert_int_equal(q->requeue_after_ms, 86400 * 1000);
	assert_int_equal(q->breaker_failures, 5);
	assert_int_equal(q->breaker_cooldown_ms, 86400 * 1000);
	assert_int_equal(q->nretry_on, 2);
	assert_int_equal(q->retry_on[0], 599);
	assert_int_equal(q->retry_on[1], 100);
	assert_int_equal(q->npermanent_on, 0);
	assert_null(q->idempotency_header);
	assert_int_equal(q->nsecret_headers, 0);

	r = cfg->routes[0];
	assert_true(r->failover_on_permanent);
	assert_int_equal(r->group_concurrency, 1);
	assert_true(r->group_rate > 1.666 && r->group_rate < 1.667);
	assert_string_equal(r->hook, "batchd_hooks.on_item");
	assert_string_equal(r->on_batch_done, "_Notify2");
	s = cfg->routes[1];
	assert_false(s->failover_on_permanent);
	assert_int_equal(s->group_concurrency, 0);
	assert_true(s->group_rate > 0.2777 && s->group_rate < 0.2778);
	assert_string_equal(s->hook, "public.A_1");
	assert_null(s->on_batch_done);
	config_free(cfg);

	/* range edges */
	cfg = load_ok(PROVIDER_ROUTE
		      "[batchd]\n"
		      "database = x\n"
		      "heartbeat_interval = 100ms\n"
		      "lease_timeout = 1s\n"
		      "max_body_size = 1GB\n"
		      "retention = 1h\n"
		      "idempotency_ttl = 1m\n"
		      "watchdog_db_grace = 1s\n"
		      "[provider big]\n"
		      "url = http://h/\n"
		      "rate = 1000000/s\n"
		      "burst = 100000\n"
		      "backoff = 1ms\n"
		      "backoff_max = 1ms\n"
		      "breaker_failures = 1\n"
		      "[route t]\n"
		      "providers = big\n"
		      "group_concurrency = 100000\n"
		      "group_rate = 60000000/m\n"
		      "failover_on_permanent = no\n");
	assert_int_equal(cfg->heartbeat_interval_ms, 100);
	assert_int_equal(cfg->lease_timeout_ms, 1000);
	assert_int_equal(cfg->max_body_size, 1024LL * 1024 * 1024);
	assert_int_equal(cfg->retention_ms, 3600 * 1000);
	assert_int_equal(cfg->idempotency_ttl_ms, 60 * 1000);
	assert_int_equal(cfg->watchdog_db_grace_ms, 1000);
	p = config_find_provider(cfg, "big");
	assert_true(p->rate == 1000000.0);
	assert_int_equal(p->burst, 100000);
	assert_int_equal(p->backoff_ms, 1);
	assert_int_equal(p->backoff_max_ms, 1);
	assert_int_equal(p->breaker_failures, 1);
	r = config_find_route(cfg, "t");
	assert_int_equal(r->group_concurrency, 100000);
	assert_true(r->group_rate == 1000000.0);
	assert_false(r->failover_on_permanent);
	config_free(cfg);

	/* retention: 0 keeps forever, also written with a unit; the longest */
	cfg = load_ok(PROVIDER_ROUTE "[batchd]\ndatabase = x\nretention = 0s\n");
	assert_int_equal(cfg->retention_ms, 0);
	config_free(cfg);
	cfg = load_ok(PROVIDER_ROUTE "[batchd]\ndatabase = x\nretention = 3650d\n");
	assert_int_equal(cfg->retention_ms, 3650LL * 86400 * 1000);
	config_free(cfg);

	/* lease check against the default heartbeat (5s): 10s is enough */
	cfg = load_ok(PROVIDER_ROUTE "[batchd]\ndatabase = x\nlease_timeout = 10s\n");
	assert_int_equal(cfg->lease_timeout_ms, 10000);
	config_free(cfg);
	/* a larger backoff with a larger backoff_max, in either order */
	cfg = load_ok("[provider p]\nurl = http://h/\nbackoff_max = 10m\nbackoff = 2m\n"
		      "[route r]\nproviders = p\n[batchd]\ndatabase = x\n");
	assert_int_equal(cfg->providers[0]->backoff_ms, 120000);
	assert_int_equal(cfg->providers[0]->backoff_max_ms, 600000);
	config_free(cfg);
}

static void test_errors_new_batchd(void **state)
{
	load_err("[batchd]\nheartbeat_interval = 50ms\n", 2,
		 "heartbeat_interval: duration '50ms' out of range (100ms to 3600000ms)");
	load_err("[batchd]\nheartbeat_interval = 2h\n", 2,
		 "heartbeat_interval: duration '2h' out of range (100ms to 3600000ms)");
	load_err("[batchd]\nheartbeat_interval = often\n", 2,
		 "heartbeat_interval: invalid duration 'often' (expected e.g. 250ms, 5s, 2m, 1h, 30d)");
	load_err("[batchd]\nlease_timeout = 500ms\n", 2,
		 "lease_timeout: duration '500ms' out of range (1000ms to 86400000ms)");
	load_err("[batchd]\nlease_timeout = 2d\n", 2,
		 "lease_timeout: duration '2d' out of range (1000ms to 86400000ms)");
	load_err("[batchd]\nlease_timeout = 1.5s\n", 2,
		 "lease_timeout: invalid duration '1.5s' (expected e.g. 250ms, 5s, 2m, 1h, 30d)");
	load_err("[batchd]\nmax_body_size = 512B\n", 2,
		 "max_body_size: size '512B' out of range (1024 to 1073741824 bytes)");
	load_err("[batchd]\nmax_body_size = 2GB\n", 2,
		 "max_body_size: size '2GB' out of range (1024 to 1073741824 bytes)");
	load_err("[batchd]\nmax_body_size = huge\n", 2,
		 "max_body_size: invalid size 'huge' (expected e.g. 512KB, 1MB, 64MB)");
	load_err("[batchd]\nretention = 30m\n", 2,
		 "retention: duration '30m' out of range (0 or 3600000ms to 315360000000ms)");
	load_err("[batchd]\nretention = 3651d\n", 2,
		 "retention: duration '3651d' out of range (0 or 3600000ms to 315360000000ms)");
	load_err("[batchd]\nidempotency_ttl = 59s\n", 2,
		 "idempotency_ttl: duration '59s' out of range (60000ms to 315360000000ms)");
	load_err("[batchd]\nidempotency_ttl = 0\n", 2,
		 "idempotency_ttl: duration '0' out of range (60000ms to 315360000000ms)");
	load_err("[batchd]\nretention = forever\n", 2,
		 "retention: invalid duration 'forever' (expected e.g. 250ms, 5s, 2m, 1h, 30d)");
	load_err("[batchd]\nwatchdog_db_grace = 500ms\n", 2,
		 "watchdog_db_grace: duration '500ms' out of range (1000ms to 86400000ms)");
	load_err("[batchd]\nwatchdog_db_grace = 2d\n", 2,
		 "watchdog_db_grace: duration '2d' out of range (1000ms to 86400000ms)");
	load_err("[batchd]\nwatchdog_db_grace = -1s\n", 2,
		 "watchdog_db_grace: invalid duration '-1s' (expected e.g. 250ms, 5s, 2m, 1h, 30d)");
}

static void test_errors_lease(void **state)
{
	/* the example from the contract; the line of lease_timeout */
	load_err("[batchd]\ndatabase = x\nheartbeat_interval = 5s\nlease_timeout = 3s\n"
		 "[provider p]\nurl = http://h/\n[route r]\nproviders = p\n",
		 4, "lease_timeout (3s) must be at least twice heartbeat_interval (5s)");
	/* lease_timeout before heartbeat_interval: still its line */
	load_err("[batchd]\nlease_timeout = 9s\nheartbeat_interval = 5s\ndatabase = x\n",
		 2, "lease_timeout (9s) must be at least twice heartbeat_interval (5s)");
	/* against the default heartbeat_interval */
	load_err(PROVIDER_ROUTE "[batchd]\nlease_timeout = 9999ms\ndatabase = x\n",
		 6, "lease_timeout (9999ms) must be at least twice heartbeat_interval (5s)");
	/* a default lease_timeout: the line of heartbeat_interval */
	load_err("[batchd]\ndatabase = x\nheartbeat_interval = 20s\n" "[route r]\n",
		 3, "lease_timeout (30s, the default) must be at least twice heartbeat_interval (20s)");
	load_err("[batchd]\nheartbeat_interval = 1h\nlease_timeout = 119m\n",
		 3, "lease_timeout (119m) must be at least twice heartbeat_interval (1h)");
}

static void test_errors_new_provider(void **state)
{
	load_err("[provider p]\nrate = 20\n", 2,
		 "rate: invalid rate '20' (expected e.g. 20/s, 0.5/s, 100/m, 1000/h)");
	load_err("[provider p]\nrate = 0/s\n", 2,
		 "rate: invalid rate '0/s' (expected e.g. 20/s, 0.5/s, 100/m, 1000/h)");
	load_err("[provider p]\nrate = 20/d\n", 2,
		 "rate: invalid rate '20/d' (expected e.g. 20/s, 0.5/s, 100/m, 1000/h)");
	load_err("[provider p]\nrate = -1/s\n", 2,
		 "rate: invalid rate '-1/s' (expected e.g. 20/s, 0.5/s, 100/m, 1000/h)");
	load_err("[provider p]\nrate = 1000001/s\n", 2,
		 "rate: rate '1000001/s' out of range (at most 1000000/s)");
	load_err("[provider p]\nrate = 3600000001/h\n", 2,
		 "rate: rate '3600000001/h' out of range (at most 1000000/s)");
	load_err("[provider p]\nburst = 0\n", 2,
		 "burst: invalid value '0' (expected an integer from 1 to 100000)");
	load_err("[provider p]\nburst = 100001\n", 2,
		 "burst: invalid value '100001' (expected an integer from 1 to 100000)");
	load_err("[provider p]\nmax_concurrency = 0\n", 2,
		 "max_concurrency: invalid value '0' (expected an integer from 1 to 100000, "
		 "auto, or auto N)");
	load_err("[provider p]\nmax_concurrency = many\n", 2,
		 "max_concurrency: invalid value 'many' (expected an integer from 1 to 100000, "
		 "auto, or auto N)");
	load_err("[provider p]\nretries = -1\n", 2,
		 "retries: invalid value '-1' (expected an integer from 0 to 100)");
	load_err("[provider p]\nretries = 101\n", 2,
		 "retries: invalid value '101' (expected an integer from 0 to 100)");
	load_err("[provider p]\nbackoff = 0\n", 2,
		 "backoff: duration '0' out of range (1ms to 3600000ms)");
	load_err("[provider p]\nbackoff = 61m\n", 2,
		 "backoff: duration '61m' out of range (1ms to 3600000ms)");
	load_err("[provider p]\nbackoff = 1 s\n", 2,
		 "backoff: invalid duration '1 s' (expected e.g. 250ms, 5s, 2m, 1h, 30d)");
	load_err("[provider p]\nbackoff_max = 0ms\n", 2,
		 "backoff_max: duration '0ms' out of range (1ms to 86400000ms)");
	load_err("[provider p]\nbackoff_max = 25h\n", 2,
		 "backoff_max: duration '25h' out of range (1ms to 86400000ms)");
	load_err("[provider p]\nrequeue_after = 2d\n", 2,
		 "requeue_after: duration '2d' out of range (0ms to 86400000ms)");
	load_err("[provider p]\nrequeue_after = soon\n", 2,
		 "requeue_after: invalid duration 'soon' (expected e.g. 250ms, 5s, 2m, 1h, 30d)");
	load_err("[provider p]\nbreaker_failures = 0\n", 2,
		 "breaker_failures: invalid value '0' (expected an integer from 1 to 100000)");
	load_err("[provider p]\nbreaker_failures = 100001\n", 2,
		 "breaker_failures: invalid value '100001' (expected an integer from 1 to 100000)");
	load_err("[provider p]\nbreaker_cooldown = 9ms\n", 2,
		 "breaker_cooldown: duration '9ms' out of range (10ms to 86400000ms)");
	load_err("[provider p]\nbreaker_cooldown = 2d\n", 2,
		 "breaker_cooldown: duration '2d' out of range (10ms to 86400000ms)");

	/* status code lists */
	load_err("[provider p]\nretry_on = 404, abc\n", 2,
		 "retry_on: invalid status code 'abc' (expected a comma-separated list of "
		 "HTTP status codes from 100 to 599)");
	load_err("[provider p]\nretry_on = 404 409\n", 2,
		 "retry_on: invalid status code '404 409' (expected a comma-separated list of "
		 "HTTP status codes from 100 to 599)");
	load_err("[provider p]\nretry_on = 404,,409\n", 2,
		 "retry_on: invalid status code '' (expected a comma-separated list of "
		 "HTTP status codes from 100 to 599)");
	load_err("[provider p]\nretry_on = 404,\n", 2,
		 "retry_on: invalid status code '' (expected a comma-separated list of "
		 "HTTP status codes from 100 to 599)");
	load_err("[provider p]\nretry_on =\n", 2,
		 "retry_on: invalid status code '' (expected a comma-separated list of "
		 "HTTP status codes from 100 to 599)");
	load_err("[provider p]\nretry_on = 600\n", 2,
		 "retry_on: invalid status code '600' (expected a comma-separated list of "
		 "HTTP status codes from 100 to 599)");
	load_err("[provider p]\nretry_on = 099\n", 2,
		 "retry_on: invalid status code '099' (expected a comma-separated list of "
		 "HTTP status codes from 100 to 599)");
	load_err("[provider p]\nretry_on = +404\n", 2,
		 "retry_on: invalid status code '+404' (expected a comma-separated list of "
		 "HTTP status codes from 100 to 599)");
	load_err("[provider p]\nretry_on = 4040\n", 2,
		 "retry_on: invalid status code '4040' (expected a comma-separated list of "
		 "HTTP status codes from 100 to 599)");
	load_err("[provider p]\nretry_on = 404, 409, 404\n", 2, "retry_on: 404 is listed twice");
	load_err("[provider p]\npermanent_on = 5xx\n", 2,
		 "permanent_on: invalid status code '5xx' (expected a comma-separated list of "
		 "HTTP status codes from 100 to 599)");
	load_err("[provider p]\npermanent_on = 503,503\n", 2, "permanent_on: 503 is listed twice");

	/* header names */
	load_err("[provider p]\nidempotency_header = Idempotency Key\n", 2,
		 "idempotency_header: invalid header name 'Idempotency Key' "
		 "(expected a token such as Idempotency-Key)");
	load_err("[provider p]\nidempotency_header = Idempotency-Key: {id}\n", 2,
		 "idempotency_header: invalid header name 'Idempotency-Key: {id}' "
		 "(expected a token such as Idempotency-Key)");
	load_err("[provider p]\nidempotency_header =\n", 2,
		 "idempotency_header: invalid header name '' "
		 "(expected a token such as Idempotency-Key)");
	/* the value is not echoed: it may hold the secret itself */
	load_err("[provider p]\nsecret_header = X-Api-Key: s3cr3t\n", 2,
		 "secret_header: invalid header name (expected a token such as X-Api-Key)");
	load_err("[provider p]\nsecret_header =\n", 2,
		 "secret_header: invalid header name (expected a token such as X-Api-Key)");
	load_err("[provider p]\nsecret_header = X-Api-Key\nsecret_header = x-api-KEY\n", 3,
		 "secret_header: 'x-api-KEY' is listed twice");
}

static void test_errors_provider_cross(void **state)
{
	/* backoff_max below backoff: the line of backoff_max */
	load_err("[provider p]\nbackoff_max = 5s\nbackoff = 10s\n", 2,
		 "backoff_max (5s) must be at least backoff (10s)");
	load_err("[provider p]\nbackoff = 1500ms\nbackoff_max = 1s\n[route r]\n", 3,
		 "backoff_max (1s) must be at least backoff (1500ms)");
	/* a default backoff_max (60s): the line of backoff */
	load_err("[batchd]\ndatabase = x\n[provider p]\nurl = http://h/\nbackoff = 2m\n"
		 "[route r]\nproviders = p\n",
		 5, "backoff_max (1m, the default) must be at least backoff (2m)");
	/* against the default backoff (1s) */
	load_err("[provider p]\nbackoff_max = 999ms\n", 2,
		 "backoff_max (999ms) must be at least backoff (1s)");

	/* a code in both lists: the line of the list written last */
	load_err("[provider p]\nretry_on = 404, 409\npermanent_on = 503, 409\n"
		 "[route r]\nproviders = p\n",
		 3, "permanent_on: 409 is also listed in retry_on");
	load_err("[provider p]\npermanent_on = 500,502\nurl = http://h/\nretry_on = 404, 502\n",
		 4, "retry_on: 502 is also listed in permanent_on");
	/* each provider is checked on its own */
	load_err(MINIMAL "[provider q]\nurl = http://h/\nretry_on = 404\n"
		 "[provider z]\nurl = http://h/\npermanent_on = 404\nretry_on = 404\n",
		 13, "retry_on: 404 is also listed in permanent_on");
}

static void test_errors_new_route(void **state)
{
	Config *cfg;

	load_err("[route r]\nfailover_on_permanent = maybe\n", 2,
		 "failover_on_permanent: invalid value 'maybe' (expected yes or no)");
	load_err("[route r]\nfailover_on_permanent =\n", 2,
		 "failover_on_permanent: invalid value '' (expected yes or no)");
	load_err("[route r]\ngroup_concurrency = 0\n", 2,
		 "group_concurrency: invalid value '0' (expected an integer from 1 to 100000)");
	load_err("[route r]\ngroup_concurrency = 100001\n", 2,
		 "group_concurrency: invalid value '100001' (expected an integer from 1 to 100000)");
	load_err("[route r]\ngroup_rate = fast\n", 2,
		 "group_rate: invalid rate 'fast' (expected e.g. 20/s, 0.5/s, 100/m, 1000/h)");
	load_err("[route r]\ngroup_rate = 2000000/s\n", 2,
		 "group_rate: rate '2000000/s' out of range (at most 1000000/s)");

	/* function names are quoted into SQL: only identifiers pass */
#define BAD_FN(key, v) \
	load_err("[route r]\n" key " = " v "\n", 2, \
		 key ": invalid function name '" v "' (expected function or schema.function; " \
		 "letters, digits and '_', not starting with a digit)")
	BAD_FN("hook", "x;drop table batchd.items");
	BAD_FN("hook", "f()");
	BAD_FN("hook", "1abc");
	BAD_FN("hook", "s.1abc");
	BAD_FN("hook", "a.b.c");
	BAD_FN("hook", "a.");
	BAD_FN("hook", ".a");
	BAD_FN("hook", "a..b");
	BAD_FN("hook", "a b");
	BAD_FN("hook", "\"Hook\"");
	BAD_FN("hook", "a-b");
	BAD_FN("hook", "caf\xc3\xa9");
	BAD_FN("hook", "");
	BAD_FN("on_batch_done", "notify'");
	BAD_FN("on_batch_done", "s.f$1");
	BAD_FN("on_batch_done", "");
#undef BAD_FN
	/* PostgreSQL would truncate a name over 63 bytes */
	load_err("[route r]\nhook = s.f234567890123456789012345678901234567890123456789012345678901234\n",
		 2, "hook: name 'f234567890123456789012345678901234567890123456789012345678901234' "
		 "is too long (at most 63 characters)");
	load_err("[route r]\non_batch_done = s234567890123456789012345678901234567890123456789012345678901234.f\n",
		 2, "on_batch_done: name 's234567890123456789012345678901234567890123456789012345678901234' "
		 "is too long (at most 63 characters)");
	cfg = load_ok(MINIMAL
		      "hook = s23456789012345678901234567890123456789012345678901234567890123."
		      "f23456789012345678901234567890123456789012345678901234567890123\n");
	assert_int_equal(strlen(cfg->routes[0]->hook), 63 + 1 + 63);
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

/* A file in /tmp with exactly these bytes; its path to out. */
static void tmp_file(char out[64], const char *data, size_t len)
{
	int fd;

	strcpy(out, "/tmp/batchd_test_secret_XXXXXX");
	fd = mkstemp(out);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	close(fd);
}

static void test_expand_file_and_credential(void **state)
{
	char err[512] = "", path[64], other[64], text[160], dir[64];
	char *s, *big, *slash;

	tmp_file(path, "s3cr3t\n", 7);
	snprintf(text, sizeof(text), "Bearer ${file:%s}!", path);
	s = config_expand(text, NULL, err, sizeof(err));
	assert_non_null(s);
	assert_string_equal(s, "Bearer s3cr3t!");           /* trailing newline stripped */
	free(s);

	/* relative: to base_dir */
	slash = strrchr(path, '/');
	snprintf(text, sizeof(text), "${file:%s}", slash + 1);
	s = config_expand(text, "/tmp", err, sizeof(err));
	assert_non_null(s);
	assert_string_equal(s, "s3cr3t");
	free(s);

	/* CRLF and inner newlines: only the trailing line ends go */
	tmp_file(other, "a\nb\r\n\r\n", 7);
	snprintf(text, sizeof(text), "${file:%s}", other);
	s = config_expand(text, NULL, err, sizeof(err));
	assert_string_equal(s, "a\nb");
	free(s);
	unlink(other);

	/* errors name the reference and the path */
	assert_null(config_expand("${file:/nonexistent/batchd-secret}", NULL, err, sizeof(err)));
	assert_string_equal(err, "${file:/nonexistent/batchd-secret}: cannot read "
			    "/nonexistent/batchd-secret: No such file or directory");
	tmp_file(other, "a\0b", 3);
	snprintf(text, sizeof(text), "${file:%s}", other);
	assert_null(config_expand(text, NULL, err, sizeof(err)));
	assert_non_null(strstr(err, "holds a NUL byte"));
	unlink(other);
	big = calloc(1, 64 * 1024 + 1);
	assert_non_null(big);
	memset(big, 'x', 64 * 1024 + 1);
	tmp_file(other, big, 64 * 1024 + 1);
	free(big);
	snprintf(text, sizeof(text), "${file:%s}", other);
	assert_null(config_expand(text, NULL, err, sizeof(err)));
	assert_non_null(strstr(err, "is larger than 65536 bytes"));
	unlink(other);

	/* ${credential:NAME}: $CREDENTIALS_DIRECTORY/NAME */
	unsetenv("CREDENTIALS_DIRECTORY");
	assert_null(config_expand("${credential:token}", NULL, err, sizeof(err)));
	assert_string_equal(err, "${credential:token}: CREDENTIALS_DIRECTORY is not set "
			    "(systemd sets it for a unit with LoadCredential=)");
	snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
	setenv("CREDENTIALS_DIRECTORY", dir, 1);
	snprintf(text, sizeof(text), "x${credential:%s}y", slash + 1);
	s = config_expand(text, NULL, err, sizeof(err));
	assert_string_equal(s, "xs3cr3ty");
	free(s);
	assert_null(config_expand("${credential:../etc/passwd}", NULL, err, sizeof(err)));
	assert_string_equal(err, "${credential:../etc/passwd}: a credential name has no '/'");
	assert_null(config_expand("${credential:nope-not-there}", NULL, err, sizeof(err)));
	assert_non_null(strstr(err, "cannot read"));
	unsetenv("CREDENTIALS_DIRECTORY");

	/* "$${file:x}" stays literal */
	s = config_expand("$${file:x}", NULL, err, sizeof(err));
	assert_string_equal(s, "${file:x}");
	free(s);
	unlink(path);
}

/* In a config: relative to the config file's directory; errors name the key. */
static void test_config_file_reference(void **state)
{
	char path[64], text[512];
	const char *base;
	Config *cfg;

	tmp_file(path, "tok-123\n", 8);
	base = strrchr(path, '/') + 1;
	snprintf(text, sizeof(text),
		 "[batchd]\ndatabase = dbname=x\n[provider p]\nurl = http://127.0.0.1:9/{id}\n"
		 "header = Authorization: Bearer ${file:%s}\n[route r]\nproviders = p\n", base);
	cfg = load_ok(text);          /* the config is in /tmp too */
	assert_string_equal(cfg->providers[0]->headers[0], "Authorization: Bearer tok-123");
	config_free(cfg);
	unlink(path);
	load_err("[batchd]\ndatabase = ${file:no-such-secret-file}\n"
		 "[provider p]\nurl = http://127.0.0.1:9/{id}\n[route r]\nproviders = p\n", 2,
		 "database: ${file:no-such-secret-file}: cannot read /tmp/no-such-secret-file: "
		 "No such file or directory");
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

/* claim_ahead and max_inflight after loading [batchd] KEYS with one route */
static void claim_ahead_of(const char *keys, int *claim_ahead, int *max_inflight)
{
	char text[256];
	Config *cfg;

	snprintf(text, sizeof(text), "[batchd]\ndatabase = x\n%s"
		 "[provider p]\nurl = http://h/{id}\n[route r]\nproviders = p\n", keys);
	cfg = load_ok(text);
	*claim_ahead = cfg->claim_ahead;
	*max_inflight = cfg->max_inflight;
	config_free(cfg);
}

static void test_claim_ahead(void **state)
{
	int ahead, inflight;

	/* a tenth of max_inflight, at most 100; explicit values as given */
	claim_ahead_of("max_inflight = 5000\n", &ahead, &inflight);
	assert_int_equal(ahead, 100);
	claim_ahead_of("max_inflight = 5\n", &ahead, &inflight);
	assert_int_equal(ahead, 0);
	claim_ahead_of("max_inflight = 1000\nclaim_ahead = 0\n", &ahead, &inflight);
	assert_int_equal(ahead, 0);
	claim_ahead_of("claim_ahead = 500\n", &ahead, &inflight);
	assert_int_equal(ahead, 500);
	assert_int_equal(inflight, 100);
}

static void test_errors_keys(void **state)
{
	load_err("[batchd]\ndatabase = x\nbogus = 1\n", 3, "unknown key 'bogus' in [batchd]");
	load_err("[batchd]\ndatabase = x\n[provider p]\nurl = http://h/\nretry = 3\n",
		 5, "unknown key 'retry' in [provider p]");
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
	load_err("[batchd]\ndatabase = x\nclaim_ahead = -1\n", 3,
		 "claim_ahead: invalid value '-1' (expected an integer from 0 to 100000)");
	load_err("[batchd]\ndatabase = x\nflush_size = ten\n", 3,
		 "flush_size: invalid value 'ten' (expected an integer from 1 to 100000)");
	load_err("[batchd]\ndatabase = x\nlog_level = verbose\n", 3,
		 "log_level: invalid value 'verbose' (expected error, warn, info or debug)");
	load_err("[batchd]\ndatabase = x\nlog_format = xml\n", 3,
		 "log_format: invalid value 'xml' (expected text, json or journal)");
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
	/* a CR/LF from the environment must not inject another header */
	setenv("BATCHD_TEST_TOKEN", "abc\r\nX-Injected: 1", 1);
	load_err("[provider p]\nheader = X-Key: ${BATCHD_TEST_TOKEN}\n", 2,
		 "header 'X-Key' has a control character in its value");
	unsetenv("BATCHD_TEST_TOKEN");
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

static void test_max_concurrency_auto(void **state)
{
	static const struct {
		const char *value;
		bool is_auto;
		int n;
	} ok[] = {
		{ "auto", true, 0 },
		{ "auto 500", true, 500 },
		{ "auto\t7", true, 7 },
		{ "auto   1", true, 1 },
		{ "auto 100000", true, 100000 },
		{ "16", false, 16 },
	};
	static const struct {
		const char *value;
		const char *msg;
	} bad[] = {
		{ "auto 0", "max_concurrency: invalid ceiling '0' in 'auto 0' "
			    "(expected auto N, N an integer from 1 to 100000)" },
		{ "auto x", "max_concurrency: invalid ceiling 'x' in 'auto x' "
			    "(expected auto N, N an integer from 1 to 100000)" },
		{ "auto 100001", "max_concurrency: invalid ceiling '100001' in 'auto 100001' "
				 "(expected auto N, N an integer from 1 to 100000)" },
		{ "auto -5", "max_concurrency: invalid ceiling '-5' in 'auto -5' "
			     "(expected auto N, N an integer from 1 to 100000)" },
		{ "auto 5 6", "max_concurrency: invalid ceiling '5 6' in 'auto 5 6' "
			      "(expected auto N, N an integer from 1 to 100000)" },
		{ "autox", "max_concurrency: invalid value 'autox' (expected an integer "
			   "from 1 to 100000, auto, or auto N)" },
		{ "auto5", "max_concurrency: invalid value 'auto5' (expected an integer "
			   "from 1 to 100000, auto, or auto N)" },
		{ "Auto", "max_concurrency: invalid value 'Auto' (expected an integer "
			  "from 1 to 100000, auto, or auto N)" },
	};
	char text[512];
	size_t i;

	(void)state;
	for (i = 0; i < ARRAY_SIZE(ok); i++) {
		Config *cfg;
		Provider *p;

		snprintf(text, sizeof(text), MINIMAL "[provider q]\nurl = http://127.0.0.1:9/\n"
			 "max_concurrency = %s\n", ok[i].value);
		cfg = load_ok(text);
		p = config_find_provider(cfg, "q");
		assert_non_null(p);
		if (p->concurrency_auto != ok[i].is_auto || p->max_concurrency != ok[i].n)
			fail_msg("'%s': got auto %d, %d", ok[i].value, p->concurrency_auto,
				 p->max_concurrency);
		/* the default is fixed and unlimited */
		p = config_find_provider(cfg, "p");
		assert_false(p->concurrency_auto);
		assert_int_equal(p->max_concurrency, 0);
		config_free(cfg);
	}
	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		snprintf(text, sizeof(text), "[provider p]\nmax_concurrency = %s\n", bad[i].value);
		load_err(text, 2, bad[i].msg);
	}
}

/* Login keys: defaults filled, and what a reload compares. */
static void test_login_keys(void **state)
{
	const char *base = "[batchd]\ndatabase = x\n[provider p]\nurl = http://h/i/{id}\n"
		"login_url = https://auth.example/token\nlogin_body = {\"a\": 1}\n"
		"[route r]\nproviders = p\n";
	const char *other = "[batchd]\ndatabase = x\n[provider p]\nurl = http://h/i/{id}\n"
		"login_url = https://auth.example/token\nlogin_body = {\"a\": 2}\n"
		"[route r]\nproviders = p\n";
	const char *none = "[batchd]\ndatabase = x\n[provider p]\nurl = http://h/i/{id}\n"
		"[route r]\nproviders = p\n";
	Config *a, *a2, *b, *c;
	Provider *p;

	(void)state;
	a = load_ok(base);
	a2 = load_ok(base);
	b = load_ok(other);
	c = load_ok(none);
	p = a->providers[0];
	assert_string_equal(p->login_method, "POST");
	assert_string_equal(p->login_content_type, "application/json");
	assert_string_equal(p->login_token_field, "access_token");
	assert_string_equal(p->login_expires_field, "expires_in");
	assert_string_equal(p->token_header, "Authorization: Bearer {token}");
	assert_int_equal(p->login_token_lifetime_ms, 0);
	assert_int_equal(p->login_refresh_margin_ms, -1);
	assert_null(c->providers[0]->login_url);
	assert_null(c->providers[0]->token_header);
	assert_true(config_login_equal(a->providers[0], a2->providers[0]));
	assert_false(config_login_equal(a->providers[0], b->providers[0]));
	assert_false(config_login_equal(a->providers[0], c->providers[0]));
	assert_true(config_login_equal(c->providers[0], c->providers[0]));
	config_free(a);
	config_free(a2);
	config_free(b);
	config_free(c);
	load_err("[batchd]\ndatabase = x\n[provider p]\nurl = http://h/i/{id}\n"
		 "login_token_field = t\n[route r]\nproviders = p\n", 5,
		 "login_token_field needs login_url in [provider p]");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(test_full, setup),
		cmocka_unit_test_setup(test_defaults, setup),
		cmocka_unit_test_setup(test_new_keys, setup),
		cmocka_unit_test_setup(test_errors_new_batchd, setup),
		cmocka_unit_test_setup(test_errors_lease, setup),
		cmocka_unit_test_setup(test_errors_new_provider, setup),
		cmocka_unit_test_setup(test_errors_provider_cross, setup),
		cmocka_unit_test_setup(test_errors_new_route, setup),
		cmocka_unit_test_setup(test_syntax_variants, setup),
		cmocka_unit_test_setup(test_long_section_name, setup),
		cmocka_unit_test_setup(test_semicolons, setup),
		cmocka_unit_test_setup(test_env_expansion_ok, setup),
		cmocka_unit_test_setup(test_env_unset, setup),
		cmocka_unit_test_setup(test_expand_env_direct, setup),
		cmocka_unit_test_setup(test_expand_file_and_credential, setup),
		cmocka_unit_test_setup(test_config_file_reference, setup),
		cmocka_unit_test_setup(test_database_env, setup),
		cmocka_unit_test_setup(test_claim_ahead, setup),
		cmocka_unit_test_setup(test_errors_keys, setup),
		cmocka_unit_test_setup(test_errors_values, setup),
		cmocka_unit_test_setup(test_max_concurrency_auto, setup),
		cmocka_unit_test_setup(test_errors_sections, setup),
		cmocka_unit_test_setup(test_errors_validation, setup),
		cmocka_unit_test_setup(test_missing_file, setup),
		cmocka_unit_test_setup(test_long_line, setup),
		cmocka_unit_test_setup(test_login_keys, setup),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
