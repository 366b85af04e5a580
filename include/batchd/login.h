/*
 * login.h - a provider's login: the request whose answer yields a bearer
 * token, and the token's life (issue #20.3).
 *
 * A provider with login_url keeps one Login in its ProvState (so it
 * survives reloads).  Its states:
 *
 *   NONE ----> RUNNING ----> READY ----(refresh timer)----> RUNNING
 *                 |  ^                                 (old token still used)
 *                 v  |
 *               FAILED (retry timer: backoff, doubling up to backoff_max)
 *
 * The token is usable while it has not expired (expires_at, or never when
 * the answer and login_token_lifetime say nothing); a 401 to an item request
 * that carried the current token drops it (login_drop) and logs in again.
 * gen counts the tokens obtained: a 401 to a request with an older
 * generation says nothing of the current token.
 *
 * This file builds the login transfer and reads its answer; dispatch.c
 * starts it on the curl multi, drives the states and wakes the provider.
 * The token and the request body are never logged.
 */
#ifndef BATCHD_LOGIN_H
#define BATCHD_LOGIN_H

#include <stdbool.h>
#include <stdint.h>

#include <curl/curl.h>
#include <event2/event.h>

#include "batchd/config.h"
#include "batchd/util.h"

/* The largest login answer read (a token, not data). */
#define LOGIN_MAX_RESPONSE (64 * 1024)

enum LoginState {
	LOGIN_NONE,      /* no token and no login under way */
	LOGIN_RUNNING,   /* the login transfer is out (a token may still be usable) */
	LOGIN_READY,     /* a token, refresh timer armed when it expires */
	LOGIN_FAILED,    /* the last login failed; retry timer armed */
};

typedef struct Login {
	enum LoginState state;
	char *token;               /* NULL: none */
	char *header;              /* token_header with the token in it */
	uint64_t gen;              /* tokens obtained so far (the current one's number) */
	int64_t expires_at;        /* monotonic us; 0: no expiry known */
	int64_t retry_at;          /* FAILED: the next login, monotonic us */
	int fails;                 /* consecutive failed logins */
	uint64_t ok_total, err_total;
	uint64_t relogins_401;     /* logins started by a 401 */
	uint64_t requests_at_login;/* the provider's request count at the last login */
	char last_error[300];
	struct event *timer;       /* refresh (READY) or retry (FAILED) */

	/* the transfer, while RUNNING */
	CURL *easy;
	int shard;
	struct curl_slist *hdrs;
	StrBuf body;
	StrBuf resp;
	bool too_big;
	char errbuf[CURL_ERROR_SIZE];
} Login;

void login_init(Login *l, struct event_base *base, event_callback_fn timer_cb, void *arg);
/* Free everything; a running transfer must have been taken off its multi. */
void login_free(Login *l);

const char *login_state_name(const Login *l, int64_t now);
/* Has it a token that has not expired? */
bool login_usable(const Login *l, int64_t now);
/* Forget the token (a 401, or a reload that changed the login). */
void login_drop(Login *l);

/* An easy handle for p's login request, owned by l (l->easy), or NULL with
 * err (it cannot be built: out of memory in curl). */
CURL *login_prepare(Login *l, const Provider *p, char *err, size_t errlen);
/* The transfer is over: its handle and buffers go (not the token). */
void login_release(Login *l);

/*
 * Read a login answer: status 2xx, JSON object, the token at token_field
 * (a non-empty string without control characters), the lifetime in seconds
 * at expires_field (a number or numeric string; absent: -1).  0 with
 * *token (malloc'd) and *lifetime_s, or -1 with err (never quoting the
 * token).  Pure, for tests.
 */
int login_parse_answer(const char *body, size_t len, long status, const char *token_field,
		       const char *expires_field, char **token, double *lifetime_s,
		       char *err, size_t errlen) _MUSTCHECK;

/* token_header with {token} replaced (malloc'd). */
char *login_render_header(const char *token_header, const char *token);

/* When to refresh a token living lifetime_us: margin_ms before it expires
 * (-1: min(60 s, a tenth of the lifetime)), never sooner than half its
 * lifetime; in us from now. */
int64_t login_refresh_in_us(int64_t lifetime_us, int64_t margin_ms);

#endif /* BATCHD_LOGIN_H */
