/*
 * fuzz_config.c - libFuzzer target for config_load() (src/config.c).
 *
 * The input is the text of an INI file.  config_load() only takes a path, so
 * the input is written to one memfd per process (a temporary file when memfd
 * is unavailable) and loaded through /proc/self/fd/N on each run.
 *
 * A few environment variables are set once, so that ${VAR} references in
 * the input expand (see tests/fuzz/config.dict): plain values, an empty one,
 * values holding '{', '}', '$', ';', '#', a CR, and a long one.
 * BATCHD_DATABASE is unset: it would override [batchd] database.
 *
 * Beyond the sanitizers, a few contracts are asserted (abort() = crash):
 *   - on failure: NULL, and err is a non-empty "PATH: ..." message;
 *   - on success: database set, at least one route, every route's providers
 *     resolved, every provider has a url that passes tmpl_check_url.
 * A loaded config is then used the way the daemon uses it: every url,
 * header and body template is rendered against a fixed payload.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <yajl/yajl_tree.h>

#include "batchd/config.h"
#include "batchd/tmpl.h"

static int fd = -1;
static char path[64];
static char tmp_path[] = "/tmp/batchd-fuzz-config-XXXXXX";
static yajl_val payload;
static bool verbose;            /* FUZZ_VERBOSE=1: print each outcome */

static const char payload_json[] =
	"{\"id\": 42, \"vin\": \"WVW ZZZ/1J?#&\", \"country\": \"de\", \"term\": 36,"
	" \"mileage\": 12000.5, \"ok\": true, \"no\": false, \"nil\": null,"
	" \"vehicle\": {\"vin\": \"X\\u00e9\\r\\n\", \"year\": 2020, \"tags\": [1, \"a\"]},"
	" \"a\": {\"b\": {\"c\": \"deep\"}}, \"empty\": \"\", \"list\": []}";

static void cleanup(void)
{
	if (tmp_path[sizeof(tmp_path) - 7] != 'X')
		unlink(tmp_path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char errbuf[256];
	char longval[5000];

	(void)argc;
	(void)argv;
	fd = memfd_create("batchd-fuzz-config", MFD_CLOEXEC);
	if (fd < 0) {
		fd = mkstemp(tmp_path);
		if (fd < 0) {
			perror("fuzz_config: mkstemp");
			abort();
		}
		atexit(cleanup);
	}
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);

	verbose = getenv("FUZZ_VERBOSE") != NULL;
	unsetenv("BATCHD_DATABASE");
	setenv("FUZZ_TOKEN", "s3cr3t-token", 1);
	setenv("FUZZ_EMPTY", "", 1);
	setenv("FUZZ_HOST", "api.example.com", 1);
	setenv("FUZZ_PORT", "8443", 1);
	setenv("FUZZ_BRACE", "{id}", 1);
	setenv("FUZZ_DOLLAR", "${FUZZ_TOKEN}$$", 1);
	setenv("FUZZ_SPECIAL", ";#[]=: \t\\\"'", 1);
	setenv("FUZZ_CRLF", "a\r\nInjected: 1", 1);
	setenv("FUZZ_DURATION", "250ms", 1);
	setenv("FUZZ_NUMBER", "100", 1);
	setenv("REGISTRY_TOKEN", "registry-token", 1);
	setenv("BATCHD_PROVIDER_TOKEN", "provider-token", 1);
	memset(longval, 'L', sizeof(longval) - 1);
	longval[sizeof(longval) - 1] = '\0';
	setenv("FUZZ_LONG", longval, 1);
	unsetenv("FUZZ_UNSET");

	payload = yajl_tree_parse(payload_json, errbuf, sizeof(errbuf));
	if (!payload) {
		fprintf(stderr, "fuzz_config: bad built-in payload: %s\n", errbuf);
		abort();
	}
	return 0;
}

static void check(bool ok, const char *what, const char *detail)
{
	if (!ok) {
		fprintf(stderr, "fuzz_config: contract broken: %s (%s)\n", what,
			detail ? detail : "");
		abort();
	}
}

/* Render t in mode, checking the partial-output undo on error. */
static void render(const char *t, enum TmplMode mode)
{
	StrBuf sb;
	char err[256];

	sb_init(&sb);
	sb_puts(&sb, "prefix");
	err[0] = '\0';
	if (tmpl_render(t, payload, mode, &sb, err, sizeof(err)) < 0) {
		check(sb.len == 6 && strcmp(sb.data, "prefix") == 0,
		      "tmpl_render error must undo its partial output", t);
		check(err[0] != '\0', "tmpl_render error without message", t);
	} else {
		check(strlen(sb.data) == sb.len, "tmpl_render output holds a NUL", t);
	}
	sb_free(&sb);
}

static void use_config(const Config *cfg)
{
	char err[256];
	int i, j;

	check(cfg->database != NULL, "loaded config without database", NULL);
	check(cfg->nroutes > 0, "loaded config without routes", NULL);
	for (i = 0; i < cfg->nproviders; i++) {
		const Provider *p = cfg->providers[i];

		check(p->url != NULL, "provider without url", p->name);
		check(tmpl_check_url(p->url, err, sizeof(err)) == 0,
		      "provider url fails tmpl_check_url", p->url);
		check(config_find_provider(cfg, p->name) == p, "config_find_provider", p->name);
		render(p->url, TMPL_URL);
		for (j = 0; j < p->nheaders; j++)
			render(p->headers[j], TMPL_HEADER);
		check(p->headers == NULL || p->headers[p->nheaders] == NULL,
		      "headers list not NULL-terminated", p->name);
		check(p->secret_headers == NULL || p->secret_headers[p->nsecret_headers] == NULL,
		      "secret_headers list not NULL-terminated", p->name);
		if (p->body)
			render(p->body, TMPL_JSON);
		check(p->backoff_max_ms >= p->backoff_ms, "backoff_max < backoff", p->name);
	}
	for (i = 0; i < cfg->nroutes; i++) {
		const Route *r = cfg->routes[i];

		check(r->nproviders > 0, "route without providers", r->name);
		check(config_find_route(cfg, r->name) == r, "config_find_route", r->name);
		for (j = 0; j < r->nproviders; j++) {
			check(r->providers[j] != NULL, "unresolved provider", r->provider_names[j]);
			check(strcmp(r->providers[j]->name, r->provider_names[j]) == 0,
			      "provider resolved to the wrong name", r->provider_names[j]);
		}
	}
	check(cfg->lease_timeout_ms >= 2 * cfg->heartbeat_interval_ms,
	      "lease_timeout < 2 * heartbeat_interval", NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[1024];
	Config *cfg;
	size_t off = 0;

	if (ftruncate(fd, 0) < 0)
		abort();
	while (off < size) {
		ssize_t n = pwrite(fd, data + off, size - off, (off_t)off);

		if (n <= 0)
			abort();
		off += (size_t)n;
	}

	memset(err, 'X', sizeof(err));
	cfg = config_load(path, err, sizeof(err));
	check(memchr(err, '\0', sizeof(err)) != NULL, "err not NUL-terminated", NULL);
	if (verbose)
		fprintf(stderr, "fuzz_config: %s\n", cfg ? "loaded" : err);
	if (!cfg) {
		check(err[0] != '\0', "config_load failed without a message", NULL);
		check(strncmp(err, path, strlen(path)) == 0 && err[strlen(path)] == ':',
		      "error does not start with \"PATH:\"", err);
		return 0;
	}
	check(err[0] == '\0', "config_load succeeded with a message", err);
	use_config(cfg);
	config_free(cfg);
	return 0;
}
