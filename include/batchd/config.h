/*
 * config.h - the INI configuration (contract).  The reference for every key,
 * its default and its range is batchd.ini(5) (man/batchd.ini.5); README
 * "Configuration" summarises it.  The sections:
 *
 *   [batchd]            one: the database, the listener, capacity (max_inflight,
 *                       claim_ahead), timings (lease, heartbeat, poll, flush,
 *                       shutdown, retention), logging
 *   [provider NAME]     each HTTP API: request templates, timeouts, size cap,
 *                       rate limit and concurrency, retries and backoff,
 *                       circuit breaker
 *   [route NAME]        each route: its providers in failover order, group
 *                       limits, the SQL hook and batch callback
 *
 * Values may use ${VAR} (environment), ${file:PATH} and ${credential:NAME}
 * (secrets from files, see config_expand); BATCHD_DATABASE overrides database.
 * Every error names the file and line: "FILE:LINE: message".  The parsed
 * structs below carry a comment per field.
 */
#ifndef BATCHD_CONFIG_H
#define BATCHD_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include "batchd/log.h"
#include "batchd/util.h"

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

	/* politeness (issue: provider calls) */
	double rate;               /* requests per second; 0: unlimited (default) */
	int burst;                 /* token bucket size, default 1 */
	int max_concurrency;       /* transfers in flight; 0: max_inflight (default);
	                              with concurrency_auto: the ceiling, 0: none given */
	bool concurrency_auto;     /* max_concurrency = auto [N]: the adaptive limit of
	                              limiter.h (provider.c: limiter_config) */

	/* resilience */
	int retries;               /* transient retries on this provider, default 3 */
	int64_t backoff_ms;        /* base delay, default 1s; n-th retry waits
	                              random(0, min(backoff_max, backoff * 2^(n-1))) */
	int64_t backoff_max_ms;    /* default 60s */
	int64_t requeue_after_ms;  /* longer waits requeue the item, default 30s */
	int breaker_failures;      /* consecutive transient failures to open, default 5 */
	int64_t breaker_cooldown_ms; /* open -> half-open, default 60s */
	int *retry_on;             /* status codes made transient, e.g. 404 */
	int nretry_on;
	int *permanent_on;         /* status codes made permanent, e.g. 503 */
	int npermanent_on;
	char *idempotency_header;  /* e.g. "Idempotency-Key"; NULL: none */
	char **secret_headers;     /* header names redacted in logs (lower case);
	                              Authorization always is */
	int nsecret_headers;

	/* login (login.h): a request whose answer holds a bearer token, sent
	 * before the first item request and again before the token expires or
	 * after a 401; NULL login_url: no login.  Values are expanded once per
	 * load (${file:}, ${credential:}), so a reload re-reads them. */
	char *login_url;           /* no placeholders */
	char *login_method;        /* default POST */
	char *login_body;          /* NULL: no body */
	char *login_content_type;  /* default application/json (with a body) */
	char **login_headers;      /* "Name: value" lines of the login request (login_header) */
	int nlogin_headers;
	char *login_token_field;   /* dotted path into the answer, default access_token */
	char *login_expires_field; /* seconds the token lives, default expires_in */
	int64_t login_token_lifetime_ms; /* when the answer says none; 0: until a 401 (default) */
	int64_t login_refresh_margin_ms; /* refresh this long before expiry; -1 (default):
	                                    min(60s, lifetime / 10) */
	char *token_header;        /* what item requests carry: "Name: text{token}text",
	                              default "Authorization: Bearer {token}" */

	int line;                  /* line of the section header */
} Provider;

typedef struct Route {
	char *name;
	char **provider_names;     /* as written, in order */
	Provider **providers;      /* resolved, same order */
	int nproviders;
	int line;
	int providers_line;        /* line of the providers key, for messages */
	bool failover_on_permanent;/* permanent error: try the next provider, default no */
	int group_concurrency;     /* items of one group running at once; 0: no limit */
	double group_rate;         /* starts per second per group; 0: no limit */
	int batch_concurrency;     /* batches with items claimed at once, fleet-wide; 0: no limit */
	char *hook;                /* schema.function(item batchd.items), or NULL */
	char *on_batch_done;       /* schema.function(batch batchd.batches), or NULL */
} Route;

typedef struct Config {
	char *path;
	char *database;            /* libpq conninfo string or URI */
	char *listen;              /* "127.0.0.1:8080", "[::1]:8080"; NULL: no HTTP */
	int max_inflight;          /* transfers at once; default 100, 1..100000 */
	int claim_ahead;           /* items held beyond max_inflight; default
	                            * max_inflight / 10, at most 100 */
	bool claim_ahead_auto;     /* not set: claim_ahead is the floor, and
	                            * the claimer adds what the drain rate needs */
	enum LogLevel log_level;   /* default info */
	enum LogFormat log_format; /* default text */
	int64_t shutdown_timeout_ms; /* default 30s */
	int64_t poll_interval_ms;  /* safety-net claim poll, default 5s */
	int64_t flush_interval_ms; /* completion flush delay, default 20ms */
	int flush_size;            /* completions per flush statement, default 500 */
	int64_t heartbeat_interval_ms; /* default 5s */
	int64_t lease_timeout_ms;  /* a worker silent this long is dead, default 30s */
	int64_t max_body_size;     /* REST request bodies, default 64 MiB */
	int64_t retention_ms;      /* delete finished batches older; 0: keep (default) */
	int64_t idempotency_ttl_ms; /* a submit's Idempotency-Key lives this long, default 24h */
	int max_batch_retries;     /* retries of one batch (POST .../retry), default 10 */
	int64_t watchdog_db_grace_ms; /* stop watchdog pings after the db is away this long, default 60s */
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
/* Do a and b log in the same way, with the same credentials (a reload
 * that changes nothing of it keeps the token)? */
bool config_login_equal(const Provider *a, const Provider *b);
Route *config_find_route(const Config *cfg, const char *name);

#endif /* BATCHD_CONFIG_H */
