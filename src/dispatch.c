/*
 * dispatch.c - send each claimed item to a provider, politely and robustly.
 *
 * For an item on route R with providers p0, p1, ... the dispatcher
 *   1. takes the item's current provider (p0 at first); if its breaker does
 *      not admit (OPEN, or HALF_OPEN with the probe out) it fails over to the
 *      next provider whose breaker admits; when none does, the item goes
 *      back to the queue with run_after at the earliest half-open time and
 *      no attempt spent;
 *   2. waits in that provider's FIFO while the provider is paused by a
 *      Retry-After, at its max_concurrency, or out of tokens (one timer per
 *      provider, set to the exact time a token or the pause ends);
 *   3. starts the transfer.
 * When a transfer ends the outcome decides: success records the item;
 * a transient failure is retried on the same provider after a jittered
 * exponential backoff (a long wait requeues the item in the database
 * instead of holding it), and once the provider's retries are spent the
 * item fails over to the next provider or fails; a permanent failure fails
 * the item, or fails over with failover_on_permanent.
 *
 * A provider with login_url (login.h) first needs a token: its items wait
 * in its queue while the login runs (one login transfer at a time, on the
 * same curl multi, outside max_inflight), and every request carries the
 * token.  The token is refreshed before it expires; a 401 to a request that
 * carried the current token drops it and logs in again, and the item is
 * sent again with the new one without counting the try (once per item: a
 * second 401 to a fresh token is an ordinary answer).  While the login fails
 * and no token is usable, the provider is unavailable like one whose breaker
 * is open: items fail over, or go back to the queue until the next login try
 * without spending an attempt.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/dispatch.h"
#include "batchd/http.h"
#include "batchd/json.h"
#include "batchd/log.h"
#include "batchd/timer.h"
#include "batchd/request.h"

#define RETRY_AFTER_MAX_MS (3600 * 1000LL)

struct Dispatch {
	struct event_base *base;
	Config *cfg;
	Http *http;
	const DispatchHandlers *h;
	void *harg;
	ProvState **provs;
	int nprovs;
	int ntransfers;            /* none starts at cfg->max_inflight or more */
	bool transfers_full;       /* a provider waits for a transfer slot */
	bool stopping;
	int nlogins;               /* login transfers out */
};

static void ps_wake(ProvState *ps, void *arg);
static void ps_login_timer(ProvState *ps, void *arg);
static void job_outcome(Dispatch *d, Job *j, enum Outcome out, long status, const char *error);
static void transfer_done(CURL *easy, CURLcode code, void *priv, void *arg);

static const ProvHandlers prov_handlers = { ps_wake, ps_login_timer };

/* ------------------------------------------------------------- providers */

Dispatch *dispatch_new(struct event_base *base, Config *cfg, const DispatchHandlers *h,
		       void *arg)
{
	Dispatch *d = xcalloc(1, sizeof(*d));

	d->base = base;
	d->cfg = cfg;
	d->h = h;
	d->harg = arg;
	d->http = http_new(base, cfg->max_inflight, transfer_done, d);
	d->nprovs = cfg->nproviders;
	d->provs = xcalloc((size_t)d->nprovs + 1, sizeof(ProvState *));
	for (int i = 0; i < d->nprovs; i++)
		d->provs[i] = provider_new(base, cfg->providers[i], cfg->max_inflight, &prov_handlers, d);
	return d;
}

static void login_abort(Dispatch *d, ProvState *ps);

void dispatch_free(Dispatch *d)
{
	if (!d)
		return;
	for (int i = 0; i < d->nprovs; i++)
		login_abort(d, d->provs[i]);
	http_free(d->http);
	for (int i = 0; i < d->nprovs; i++)
		provider_free(d->provs[i]);
	free(d->provs);
	free(d);
}

ProvState *dispatch_find(const Dispatch *d, const char *name)
{
	for (int i = 0; i < d->nprovs; i++)
		if (strcmp(d->provs[i]->name, name) == 0)
			return d->provs[i];
	return NULL;
}

int dispatch_nproviders(const Dispatch *d)
{
	return d->nprovs;
}

ProvState *dispatch_provider(const Dispatch *d, int i)
{
	return i >= 0 && i < d->nprovs ? d->provs[i] : NULL;
}

int dispatch_transfers(const Dispatch *d)
{
	return d->ntransfers;
}

int dispatch_breakers_open(const Dispatch *d)
{
	int n = 0;
	for (int i = 0; i < d->nprovs; i++)
		if (!d->provs[i]->removed && d->provs[i]->br.state != BR_CLOSED)
			n++;
	return n;
}

/* The live provider state for a route's idx-th provider; NULL when the
 * provider was removed by a reload (the item then skips it). */
static ProvState *route_ps(Dispatch *d, const Route *r, int idx)
{
	ProvState *ps = dispatch_find(d, r->providers[idx]->name);
	return ps && !ps->removed ? ps : NULL;
}

/* ------------------------------------------------------------------- login */

static bool login_on(const ProvState *ps)
{
	return ps->cfg->login_url != NULL;
}

/* Its login failed and no token is usable: unavailable, like an open breaker. */
static bool login_down(const ProvState *ps, int64_t now)
{
	return login_on(ps) && ps->login.fails > 0 && !login_usable(&ps->login, now);
}

/* May items be routed to ps: its breaker admits and its login is not down. */
static bool ps_admits(ProvState *ps, int64_t now)
{
	return br_admits(&ps->br) && !login_down(ps, now);
}

/* Take a running login transfer off the multi; the provider has no login
 * under way after (its token, if any, is kept). */
static void login_abort(Dispatch *d, ProvState *ps)
{
	Login *l = &ps->login;

	if (l->state != LOGIN_RUNNING)
		return;
	http_abort(d->http, l->easy, l->shard);
	login_release(l);
	d->nlogins--;
	l->state = l->token ? LOGIN_READY : LOGIN_NONE;
}

/* Forget the token and any login state (a reload changed the login). */
static void login_reset(Dispatch *d, ProvState *ps)
{
	Login *l = &ps->login;

	login_abort(d, ps);
	evtimer_del(l->timer);
	login_drop(l);
	l->state = LOGIN_NONE;
	l->fails = 0;
	l->last_error[0] = '\0';
}

/* The login failed.  nested: called while items are being routed (from
 * can_start), where waking ps now would recurse; it is woken on the next
 * loop turn instead. */
static void login_failed(Dispatch *d, ProvState *ps, const char *err, bool nested)
{
	Login *l = &ps->login;
	int64_t now = now_monotonic_us(), delay_ms;

	l->state = LOGIN_FAILED;
	l->fails++;
	l->err_total++;
	snprintf(l->last_error, sizeof(l->last_error), "%s", err);
	/* the provider's backoff, doubling up to backoff_max, jittered by half */
	delay_ms = dispatch_backoff_ms(ps->cfg, l->fails,
				       0.5 + 0.5 * (double)random() / ((double)RAND_MAX + 1.0));
	if (delay_ms < 100)
		delay_ms = 100;
	l->retry_at = now + delay_ms * 1000;
	evtimer_del(l->timer);
	timer_arm_us(l->timer, delay_ms * 1000);
	log_warn("provider %s: login failed (%d in a row), next try in %lld ms: %s", ps->name,
		 l->fails, (long long)delay_ms, err);
	if (login_down(ps, now) && ps->qhead) {
		/* its waiting items move on */
		if (nested)
			provider_wake_in(ps, 0);
		else
			ps_wake(ps, d);
	}
}

/* Start ps's login transfer unless one is out (or we stop). */
static void login_start(Dispatch *d, ProvState *ps, bool after_401)
{
	Login *l = &ps->login;
	char err[256];

	if (l->state == LOGIN_RUNNING || d->stopping || ps->removed || !login_on(ps))
		return;
	evtimer_del(l->timer);
	if (!login_prepare(l, ps->cfg, err, sizeof(err))) {
		login_failed(d, ps, err, true);
		return;
	}
	l->shard = http_start(d->http, l->easy);
	if (l->shard < 0) {
		login_release(l);
		login_failed(d, ps, "could not start the login transfer", true);
		return;
	}
	l->state = LOGIN_RUNNING;
	l->requests_at_login = ps->requests;
	if (after_401)
		l->relogins_401++;
	d->nlogins++;
	log_debug("provider %s: logging in%s", ps->name, after_401 ? " (after a 401)" : "");
}

/* The login transfer ended: a token, or a failure. */
static void login_done(Dispatch *d, ProvState *ps, CURL *easy, CURLcode code)
{
	Login *l = &ps->login;
	const Provider *p = ps->cfg;
	int64_t now = now_monotonic_us(), lifetime_us;
	long status = 0;
	char err[300];
	char *token = NULL;
	double life_s = -1;
	int rc;

	d->nlogins--;
	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
	if (code != CURLE_OK) {
		if (l->too_big || code == CURLE_FILESIZE_EXCEEDED)
			snprintf(err, sizeof(err), "login answer larger than %d bytes",
				 LOGIN_MAX_RESPONSE);
		else
			snprintf(err, sizeof(err), "login request failed: %s",
				 l->errbuf[0] ? l->errbuf : curl_easy_strerror(code));
		rc = -1;
	} else {
		rc = login_parse_answer(l->resp.data ? l->resp.data : "", l->resp.len, status,
					p->login_token_field, p->login_expires_field, &token, &life_s,
					err, sizeof(err));
	}
	login_release(l);
	if (rc < 0) {
		login_failed(d, ps, err, false);
		return;
	}
	login_drop(l);
	l->token = token;
	l->header = login_render_header(p->token_header, token);
	l->gen++;
	l->state = LOGIN_READY;
	l->fails = 0;
	l->ok_total++;
	l->last_error[0] = '\0';
	lifetime_us = life_s > 0 ? (int64_t)(life_s * 1e6) : p->login_token_lifetime_ms * 1000;
	evtimer_del(l->timer);
	if (lifetime_us > 0) {
		int64_t refresh = login_refresh_in_us(lifetime_us, p->login_refresh_margin_ms);

		l->expires_at = now + lifetime_us;
		timer_arm_us(l->timer, refresh);
		log_info("provider %s: logged in (token %llu, expires in %.3g s, refresh in %.3g s)",
			 ps->name, (unsigned long long)l->gen, (double)lifetime_us / 1e6,
			 (double)refresh / 1e6);
	} else {
		l->expires_at = 0;
		log_info("provider %s: logged in (token %llu, no expiry given: kept until a 401)",
			 ps->name, (unsigned long long)l->gen);
	}
	ps_wake(ps, d);
}

/* The refresh timer (READY) or the retry timer (FAILED) fired. */
static void ps_login_timer(ProvState *ps, void *arg)
{
	Dispatch *d = arg;
	Login *l = &ps->login;

	if (ps->removed || !login_on(ps))
		return;
	if (l->state == LOGIN_READY) {
		/* refresh a token in use; an idle provider logs in when next needed */
		if (ps->requests == l->requests_at_login && !ps->qhead && ps->inflight == 0) {
			log_debug("provider %s: idle, token not refreshed", ps->name);
			login_drop(l);
			l->state = LOGIN_NONE;
			return;
		}
		login_start(d, ps, false);
	} else if (l->state == LOGIN_FAILED) {
		login_start(d, ps, false);
	}
}

/*
 * A 401 to j's request on ps: send it again (true) when the token it carried
 * is no longer current, or it is and this is j's first such 401 (then the
 * token is dropped and a login starts: one for all the 401s of a token).
 */
static bool login_resend(Dispatch *d, ProvState *ps, Job *j)
{
	Login *l = &ps->login;

	if (j->login_gen != l->gen)
		return true;   /* an older token: the current one may be good */
	if (j->auth_resent)
		return false;  /* a fresh token refused too: the answer stands */
	j->auth_resent = true;
	if (l->token) {
		log_info("provider %s: HTTP 401 to token %llu: logging in again", ps->name,
			 (unsigned long long)l->gen);
		login_drop(l);
		if (l->state == LOGIN_FAILED) {
			provider_wake_in(ps, 0);   /* down now: the waiting items move on */
		} else if (l->state != LOGIN_RUNNING) {
			l->state = LOGIN_NONE;
			login_start(d, ps, true);
		}
	}
	return true;
}

/* SIGHUP: new limits for existing providers (breaker state kept), states
 * for new ones; removed ones stop taking work.  A provider whose login
 * settings or credentials changed logs in again; unchanged, it keeps its
 * token. */
void dispatch_reload(Dispatch *d, Config *nc)
{
	for (int i = 0; i < d->nprovs; i++) {
		ProvState *ps = d->provs[i];
		Provider *np = config_find_provider(nc, ps->name);
		if (np && !config_login_equal(ps->cfg, np)) {
			if (ps->cfg->login_url || np->login_url)
				log_info("provider %s: login settings changed: the token is dropped",
					 ps->name);
			login_reset(d, ps);
		} else if (!np) {
			login_reset(d, ps);
		}
		if (np)
			provider_reconfigure(ps, np, nc->max_inflight);
		else
			provider_remove(ps);
	}
	for (int i = 0; i < nc->nproviders; i++) {
		if (dispatch_find(d, nc->providers[i]->name))
			continue;
		d->provs = xrealloc(d->provs, (size_t)(d->nprovs + 2) * sizeof(ProvState *));
		d->provs[d->nprovs++] = provider_new(d->base, nc->providers[i], nc->max_inflight, &prov_handlers, d);
		d->provs[d->nprovs] = NULL;
	}
	d->cfg = nc;
}

/* After the config switch, or a lease confirmed: wake every provider (new
 * limits; removed ones hand their queue on). */
void dispatch_wake_all(Dispatch *d)
{
	for (int i = 0; i < d->nprovs; i++) {
		ProvState *ps = d->provs[i];
		if (ps->removed) {
			Job *j;
			while ((j = provider_pop(ps)) != NULL)
				dispatch_route(d, j);
		} else {
			ps_wake(ps, d);
		}
	}
}

void dispatch_set_workers(Dispatch *d, const char *json, bool joining, int64_t hold_until)
{
	yajl_val shares = yajl_tree_parse(json, NULL, 0);

	for (int i = 0; i < d->nprovs; i++) {
		ProvState *ps = d->provs[i];
		yajl_val n = shares ? json_get_path(shares, ps->name) : NULL;
		double workers = n && YAJL_IS_NUMBER(n) ? YAJL_GET_DOUBLE(n) : 1.0;

		provider_set_workers(ps, workers);
		if (joining && workers > 1.0)
			provider_join_fleet(ps, hold_until);
	}
	yajl_tree_free(shares);
}

/* ---------------------------------------------------------------- starting */

/* Can a request to ps start now: the provider's gate and max_inflight. */
static bool can_start(Dispatch *d, ProvState *ps, int64_t now, int64_t *wait_us)
{
	if (login_on(ps) && !login_usable(&ps->login, now)) {
		/* no token yet (or it expired): log in; its end wakes ps */
		if (ps->login.state == LOGIN_NONE || ps->login.state == LOGIN_READY)
			login_start(d, ps, false);
		*wait_us = -1;
		return false;
	}
	if (ps->paused_until <= now && d->ntransfers >= d->cfg->max_inflight &&
	    !provider_window_full(ps, now)) {
		/* the claim_ahead items wait here for a transfer to end */
		d->transfers_full = true;
		*wait_us = -1;
		return false;
	}
	return provider_can_start(ps, now, wait_us);
}

/* Start the transfer for j on ps (a token has been taken). */
static void start(Dispatch *d, ProvState *ps, Job *j)
{
	char err[512];

	j->ps = ps;
	j->tries++;
	j->tries_by[j->pidx]++;
	j->login_gen = ps->login.gen;
	if (request_prepare(j, ps->cfg, &ps->pool, login_on(ps) ? ps->login.header : NULL,
			    err, sizeof(err)) < 0) {
		/* the request cannot even be built from this payload */
		job_outcome(d, j, OUT_PERMANENT, 0, err);
		return;
	}
	if (!j->started_us)
		j->started_us = now_realtime_us();
	j->try_started_mono = now_monotonic_us();
	j->http_shard = http_start(d->http, j->easy);
	if (j->http_shard < 0) {
		job_outcome(d, j, OUT_TRANSIENT, 0, "could not start the transfer");
		return;
	}
	job_set_state(j, JOB_RUNNING);
	provider_started(ps, j);
	d->ntransfers++;
	if (log_get_level() >= LG_DEBUG) {
		/* no query string in logs: it may carry an API key */
		LogCtx ctx = { j->batch_id, j->id, ps->name, j->route->name };
		int pathlen = (int)strcspn(j->url.data, "?");
		log_ctx(LG_DEBUG, &ctx, "item %lld -> %s (try %d): %s %.*s%s", (long long)j->id,
			ps->name, j->tries, ps->cfg->method, pathlen, j->url.data,
			j->url.data[pathlen] ? "?..." : "");
	}
}

/* Let waiting jobs go as far as the provider allows. */
static void ps_wake(ProvState *ps, void *arg)
{
	Dispatch *d = arg;
	int64_t now = now_monotonic_us();
	int64_t wait;

	provider_wake_cancel(ps);
	br_tick(&ps->br, now);
	if (ps->qhead && !d->h->lease_ok(d->harg)) {
		/* not sure the items are still ours: ask first (its answer wakes us) */
		d->h->check_lease(d->harg);
		return;
	}
	while (ps->qhead) {
		if (!ps->removed && ps->br.state == BR_HALF_OPEN && ps->br.probe_inflight)
			return;   /* the probe's outcome decides; its end wakes us */
		if (ps->removed || !ps_admits(ps, now)) {
			/* breaker open (or probe out), login down: everybody here moves on */
			dispatch_route(d, provider_pop(ps));
			continue;
		}
		if (!can_start(d, ps, now, &wait)) {
			if (wait >= 0)
				provider_wake_in(ps, wait);
			return;
		}
		start(d, ps, provider_pop(ps));
	}
}

/* ----------------------------------------------------------------- routing */

/*
 * Route j to a provider: the current one if its breaker admits, else the
 * next that does; none -> back to the queue until the earliest half-open.
 */
void dispatch_route(Dispatch *d, Job *j)
{
	const Route *r = j->route;
	int64_t now = now_monotonic_us();
	int64_t wait;
	ProvState *ps = NULL;
	int k;

	j->disp = d;
	if (d->stopping) {
		/* stopping: start nothing new; deregister puts the item back */
		d->h->release(j, d->harg);
		return;
	}
	for (k = j->pidx; k < r->nproviders; k++) {
		ProvState *cand = route_ps(d, r, k);
		if (cand)
			br_tick(&cand->br, now);   /* cooldown over: half-open now */
		if (cand && ps_admits(cand, now)) {
			ps = cand;
			break;
		}
	}
	if (!ps) {
		/* a probe is out: wait here for its outcome rather than defer */
		for (k = j->pidx; k < r->nproviders; k++) {
			ProvState *cand = route_ps(d, r, k);
			if (cand && cand->br.state == BR_HALF_OPEN && !login_down(cand, now)) {
				if (k != j->pidx) {
					j->pidx = k;
					j->tries = 0;
				}
				provider_push(cand, j);
				return;
			}
		}
	}
	if (!ps) {
		int64_t earliest = INT64_MAX;
		ProvState *login_failing = NULL;
		char why[512];
		for (k = j->pidx; k < r->nproviders; k++) {
			ProvState *cand = route_ps(d, r, k);
			int64_t at;
			if (!cand)
				continue;
			if (login_down(cand, now) && br_admits(&cand->br)) {
				at = cand->login.retry_at > now ? cand->login.retry_at : now;
				if (!login_failing)
					login_failing = cand;
			} else {
				at = cand->br.state == BR_OPEN ? br_half_open_at(&cand->br) :
					now + cand->cfg->breaker_cooldown_ms * 1000;
			}
			if (at < earliest)
				earliest = at;
		}
		if (earliest == INT64_MAX) {
			/* every provider of the route is gone (reload): try again later */
			earliest = now + 60 * 1000000LL;
		}
		if (login_failing)
			snprintf(why, sizeof(why), "no provider of route %s is available: "
				 "provider %s: login failed: %s", r->name, login_failing->name,
				 login_failing->login.last_error);
		else
			snprintf(why, sizeof(why),
				 "every provider of route %s has its circuit breaker open", r->name);
		/* no attempt spent: the item never reached a provider */
		d->h->defer(j, (earliest - now) / 1000 + 1, why, d->harg);
		return;
	}
	if (k != j->pidx) {
		ProvState *from = route_ps(d, r, j->pidx);
		LogCtx ctx = { j->batch_id, j->id, ps->name, r->name };
		log_ctx(LG_INFO, &ctx, "item %lld: failing over from %s to %s (%s)",
			(long long)j->id, r->providers[j->pidx]->name, ps->name,
			from && login_down(from, now) ? "login failed" : "breaker");
		if (from)
			from->failovers_from++;
		j->pidx = k;
		j->tries = 0;
	}
	/* FIFO: nobody overtakes jobs already waiting for this provider */
	if (!ps->qhead && d->h->lease_ok(d->harg) && can_start(d, ps, now, &wait)) {
		start(d, ps, j);
		return;
	}
	provider_push(ps, j);
	if (ps->qhead == j)
		ps_wake(ps, d);   /* arms the timer for the token or the pause */
}

void dispatch_set_stopping(Dispatch *d)
{
	d->stopping = true;
}

void dispatch_take_back(Dispatch *d, Job *j)
{
	switch (j->state) {
	case JOB_QUEUED:
		provider_unqueue(j->ps, j);
		break;
	case JOB_BACKOFF:
		evtimer_del(j->retry_timer);
		job_set_state(j, JOB_NEW);
		break;
	case JOB_NEW:
		break;
	case JOB_RUNNING:
	case JOB_DONE:
		fatal("item %lld: taken back while %s", (long long)j->id, job_state_name(j->state));
	}
}

void dispatch_abort(Dispatch *d, Job *j)
{
	if (j->state != JOB_RUNNING) {
		dispatch_take_back(d, j);
		return;
	}
	http_abort(d->http, j->easy, j->http_shard);
	provider_aborted(j->ps, j);
	d->ntransfers--;
	job_set_state(j, JOB_NEW);
}

/* ----------------------------------------------------------------- outcomes */

static bool code_in(const int *codes, int n, long status)
{
	for (int i = 0; i < n; i++)
		if (codes[i] == status)
			return true;
	return false;
}

enum Outcome dispatch_classify(const Provider *p, long status)
{
	if (code_in(p->permanent_on, p->npermanent_on, status))
		return OUT_PERMANENT;
	if (code_in(p->retry_on, p->nretry_on, status))
		return OUT_TRANSIENT;
	if (status >= 200 && status < 300)
		return OUT_SUCCESS;
	if (status >= 500 || status == 408 || status == 429)
		return OUT_TRANSIENT;
	return OUT_PERMANENT;
}

int64_t dispatch_retry_after_ms(const char *v, int64_t now_s)
{
	char *end;
	long long secs;
	time_t t;

	if (!v || !*v)
		return -1;
	secs = strtoll(v, &end, 10);
	if (end != v && *end == '\0') {
		if (secs < 0)
			return -1;
		return secs > RETRY_AFTER_MAX_MS / 1000 ? RETRY_AFTER_MAX_MS : secs * 1000;
	}
	t = curl_getdate(v, NULL);
	if (t < 0)
		return -1;
	secs = (long long)t - (long long)now_s;
	if (secs <= 0)
		return 0;
	return secs > RETRY_AFTER_MAX_MS / 1000 ? RETRY_AFTER_MAX_MS : secs * 1000;
}

int64_t dispatch_backoff_ms(const Provider *p, int n, double u)
{
	double cap = (double)p->backoff_ms * pow(2.0, n > 1 ? n - 1 : 0);
	if (cap > (double)p->backoff_max_ms)
		cap = (double)p->backoff_max_ms;
	return (int64_t)(u * cap);
}

static void retry_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	Job *j = arg;
	job_set_state(j, JOB_NEW);
	dispatch_route(j->disp, j);
}

static void retry_later(Dispatch *d, Job *j, int64_t delay_ms)
{
	if (d->stopping) {
		d->h->release(j, d->harg);  /* released by deregister, attempt refunded */
		return;
	}
	if (delay_ms > j->ps->cfg->requeue_after_ms) {
		char why[600];
		snprintf(why, sizeof(why), "waiting %lld ms to retry: %s", (long long)delay_ms,
			 j->last_error ? j->last_error : "transient failure");
		d->h->defer(j, delay_ms, why, d->harg);
		return;
	}
	if (!j->retry_timer)
		j->retry_timer = evtimer_new(d->base, retry_timer_cb, j);
	job_set_state(j, JOB_BACKOFF);
	timer_arm_us(j->retry_timer, delay_ms * 1000);
}

/* The current provider is done with j (retries spent or permanent). */
static bool failover(Dispatch *d, Job *j, const char *why)
{
	if (j->pidx + 1 >= j->route->nproviders)
		return false;
	LogCtx ctx = { j->batch_id, j->id, j->route->providers[j->pidx + 1]->name, j->route->name };

	log_ctx(LG_INFO, &ctx, "item %lld: failing over from %s to %s (%s)", (long long)j->id,
		j->route->providers[j->pidx]->name, j->route->providers[j->pidx + 1]->name, why);
	if (j->ps)
		j->ps->failovers_from++;
	j->pidx++;
	j->tries = 0;
	request_release(j);
	job_set_state(j, JOB_NEW);
	dispatch_route(d, j);
	return true;
}

/* j's try ended (or could not start): record it, retry, or fail over. */
static void job_outcome(Dispatch *d, Job *j, enum Outcome out, long status, const char *error)
{
	const Provider *p = j->ps->cfg;
	int64_t ra_ms = -1;

	job_set_last_error(j, error, status);
	switch (out) {
	case OUT_SUCCESS:
		d->h->record(j, "succeeded", status, j->resp.data, j->resp.len, NULL, d->harg);
		return;
	case OUT_PERMANENT:
		if (j->route->failover_on_permanent && failover(d, j, "permanent error"))
			return;
		d->h->record(j, "failed", status, j->resp.data, j->resp.len, error, d->harg);
		return;
	case OUT_TRANSIENT:
		break;
	}
	if (status == 429 || status == 503) {
		ra_ms = dispatch_retry_after_ms(j->retry_after, now_realtime_us() / 1000000);
		if (ra_ms > 0) {
			int64_t until = now_monotonic_us() + ra_ms * 1000;
			if (until > j->ps->paused_until) {
				provider_pause(j->ps, until);
				log_warn("provider %s: paused for %lld ms (Retry-After: %s)",
					 j->ps->name, (long long)ra_ms, j->retry_after);
			}
		}
	}
	if (j->tries <= p->retries) {
		int64_t delay = dispatch_backoff_ms(p, j->tries,
						    (double)random() / ((double)RAND_MAX + 1.0));
		if (ra_ms > delay)
			delay = ra_ms;
		j->ps->retries++;
		log_debug("item %lld: transient failure on %s (try %d of %d), retry in %lld ms: %s",
			  (long long)j->id, j->ps->name, j->tries, p->retries + 1, (long long)delay,
			  error ? error : "");
		request_release(j);
		retry_later(d, j, delay);
		return;
	}
	if (failover(d, j, "retries spent"))
		return;
	d->h->record(j, "failed", status, j->resp.data, j->resp.len, error, d->harg);
}

/* One line of the body for an error text: printable ASCII, at most n bytes. */
static void body_snippet(const char *body, size_t len, char *out, size_t n)
{
	size_t o = 0;
	for (size_t i = 0; i < len && o + 1 < n; i++) {
		unsigned char c = (unsigned char)body[i];
		out[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : ' ';
	}
	out[o] = '\0';
}

/*
 * A transfer ended while providers waited for one of max_inflight's slots:
 * let each try in turn, starting after the provider that just freed one,
 * so that no provider keeps the slots to itself.
 */
static void wake_for_slot(Dispatch *d, ProvState *from)
{
	int n = d->nprovs, k0 = 0;

	d->transfers_full = false;
	for (int k = 0; k < n; k++)
		if (d->provs[k] == from)
			k0 = k;
	for (int i = 1; i <= n; i++) {
		ProvState *ps = d->provs[(k0 + i) % n];
		if (ps->qhead || ps == from)
			ps_wake(ps, d);
	}
}

static void transfer_done(CURL *easy, CURLcode code, void *priv, void *arg)
{
	Dispatch *d = arg;
	Job *j = priv;
	ProvState *ps;
	long status = 0;
	char err[768];
	enum Outcome out;

	if (d->nlogins > 0) {
		for (int i = 0; i < d->nprovs; i++) {
			if (d->provs[i]->login.state == LOGIN_RUNNING && d->provs[i]->login.easy == easy) {
				login_done(d, d->provs[i], easy, code);
				d->h->transfer_done(d->harg);   /* items may have moved */
				return;
			}
		}
	}
	ps = j->ps;
	d->ntransfers--;
	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
	if (code == CURLE_OK) {
		out = dispatch_classify(ps->cfg, status);
		if (out == OUT_SUCCESS) {
			err[0] = '\0';
		} else {
			char snip[201];
			body_snippet(j->resp.data ? j->resp.data : "", j->resp.len, snip, sizeof(snip));
			if (status >= 300 && status < 400)
				snprintf(err, sizeof(err), "HTTP %ld from %s: redirects are not followed",
					 status, ps->name);
			else if (snip[0])
				snprintf(err, sizeof(err), "HTTP %ld from %s: %s", status, ps->name, snip);
			else
				snprintf(err, sizeof(err), "HTTP %ld from %s", status, ps->name);
		}
	} else if (j->too_big || code == CURLE_FILESIZE_EXCEEDED) {
		out = OUT_PERMANENT;
		snprintf(err, sizeof(err), "response larger than max_response_size (%lld bytes) from %s",
			 (long long)j->max_size, ps->name);
		sb_reset(&j->resp);   /* a partial body is not a result */
	} else {
		const char *detail = j->errbuf[0] ? j->errbuf : curl_easy_strerror(code);
		out = OUT_TRANSIENT;
		if (code == CURLE_OPERATION_TIMEDOUT)
			snprintf(err, sizeof(err), "timeout after %lld ms calling %s: %s",
				 (long long)ps->cfg->timeout_ms, ps->name, detail);
		else
			snprintf(err, sizeof(err), "request to %s failed: %s", ps->name, detail);
		sb_reset(&j->resp);
	}
	provider_finished(ps, j, code, status,
			  (double)(now_monotonic_us() - j->try_started_mono) / 1e6, out, err);
	if (code != CURLE_OK)
		status = 0;
	job_set_state(j, JOB_NEW);   /* between tries until the outcome says */
	if (status == 401 && !ps->removed && login_on(ps) && !d->stopping &&
	    login_resend(d, ps, j)) {
		/* the token was refused: again with the next one, the try not counted */
		j->tries--;
		j->tries_by[j->pidx]--;
		request_release(j);
		dispatch_route(d, j);
	} else {
		job_outcome(d, j, out, status, out == OUT_SUCCESS ? NULL : err);
	}
	/* a slot is free on ps, and one of max_inflight */
	if (d->transfers_full)
		wake_for_slot(d, ps);
	else
		ps_wake(ps, d);
	d->h->transfer_done(d->harg);
}
