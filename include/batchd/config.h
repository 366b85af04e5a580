/*
 * config.h - the INI configuration (contract: see README "Configuration").
 *
 *   [batchd]            database, listen, max_inflight, log_level, log_format,
 *                       shutdown_timeout, poll_interval, flush_interval,
 *                       flush_size
 *   [provider NAME]     url, method, header (repeatable), body, timeout,
 *                       connect_timeout, max_response_size
 *   [route NAME]        providers
 *
 * Values may use ${VAR} (environment); BATCHD_DATABASE overrides database.
 * Every error names the file and line: "FILE:LINE: message".
 */
#ifndef BATCHD_CONFIG_H
#define BATCHD_CONFIG_H

#include <stdint.h>
#include "batchd/util.h"
#include "batchd/log.h"

typedef struct Provider {
	char *name;
	char *url;                 /* URL template, {field} from the payload */
	char *method;              /* GET, POST, PUT, PATCH, DELETE (upper case) */
	char **headers;            /* "Name: value" templates, NULL-terminated list */
	int nheaders;
	char *body;                /* body template, NULL: payload as JSON (POST/PUT/PATCH) */
	int64_t timeout_ms;        /* whole transfer, default 30s */
	int64_t connect_timeout_ms;/* default 10s */
	int64_t max_response_size; /* bytes, default 1 MiB */
	int line;                  /* line of the section header */
} Provider;

typedef struct Route {
	char *name;
	char **provider_names;     /* as written, in order */
	Provider **providers;      /* resolved, same order */
	int nproviders;
	int line;
	int providers_line;        /* line of the providers key, for messages */
} Route;

typedef struct Config {
	char *path;
	char *database;            /* libpq conninfo string or URI */
	char *listen;              /* "127.0.0.1:8080", "[::1]:8080"; NULL: no HTTP */
	int max_inflight;          /* default 100, 1..100000 */
	enum LogLevel log_level;   /* default info */
	enum LogFormat log_format; /* default text */
	int64_t shutdown_timeout_ms; /* default 30s */
	int64_t poll_interval_ms;  /* safety-net claim poll, default 5s */
	int64_t flush_interval_ms; /* completion flush delay, default 20ms */
	int flush_size;            /* completions per flush statement, default 500 */
	Provider **providers;
	int nproviders;
	Route **routes;
	int nroutes;
} Config;

/*
 * Load and validate a config file.  On error returns NULL and writes
 * "FILE:LINE: message" (or "FILE: message") into err.
 */
Config *config_load(const char *path, char *err, size_t errlen) _MUSTCHECK;
void config_free(Config *cfg);

Provider *config_find_provider(const Config *cfg, const char *name);
Route *config_find_route(const Config *cfg, const char *name);

/*
 * Expand ${VAR} references from the environment.  An unset variable is an
 * error (err names it).  "$$" is a literal "$".  Returns malloc'd string or
 * NULL.
 */
char *config_expand_env(const char *s, char *err, size_t errlen);

#endif /* BATCHD_CONFIG_H */
