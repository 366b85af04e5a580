/*
 * provider.c - one provider's gate and counters (see provider.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/log.h"
#include "batchd/timer.h"
#include "batchd/provider.h"

const double lat_bucket_le[LAT_BUCKETS] = {
	0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
};

static void wake(ProvState *ps)
{
	ps->h->wake(ps, ps->harg);
}

static void breaker_changed(Breaker *br, enum BreakerState from, enum BreakerState to,
			    const char *reason, void *arg)
{
	ProvState *ps = arg;
	LogCtx ctx = { NULL, 0, ps->name, NULL };

	log_ctx(LG_WARN, &ctx, "provider %s: circuit breaker %s -> %s (%s)", ps->name,
		br_state_name(from), br_state_name(to), reason);
	if (to == BR_CLOSED) {
		/* answering again: slow start, not the whole window at once */
		limiter_reset(&ps->lim, now_monotonic_us());
	} else if (to == BR_OPEN) {
		evtimer_del(ps->br_timer);
		timer_arm_us(ps->br_timer, br_half_open_at(br) - now_monotonic_us());
		/* items waiting here move on to the next provider now */
		wake(ps);
	}
}

static void br_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	ProvState *ps = arg;
	int64_t now = now_monotonic_us();

	if (br_tick(&ps->br, now)) {
		wake(ps);
	} else if (ps->br.state == BR_OPEN) {
		/* libevent's clock may fire a few ms early: wait out the rest */
		int64_t left = br_half_open_at(&ps->br) - now;
		timer_arm_us(ps->br_timer, left > 1000 ? left : 1000);
	}
}

static void wake_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	wake(arg);
}

static void login_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	ProvState *ps = arg;

	ps->h->login_timer(ps, ps->harg);
}

/*
 * The concurrency window: slow start from breaker_failures (a provider
 * failing from the start gets that many requests before its breaker
 * opens), up to max_concurrency (fixed) or, with max_concurrency = auto,
 * adaptive up to auto N or LIMITER_AUTO_CEILING; never above max_inflight.
 * Fixed mode jumps to its cap after breaker_failures successes in a row,
 * so a healthy provider loses one round trip, not log2(cap) of them.
 */
static LimiterConfig limiter_config(const Provider *p, int max_inflight)
{
	LimiterConfig c = { 0 };
	int cap;

	if (p->concurrency_auto)
		cap = p->max_concurrency > 0 ? p->max_concurrency : LIMITER_AUTO_CEILING;
	else
		cap = p->max_concurrency > 0 ? p->max_concurrency : max_inflight;
	if (cap > max_inflight)
		cap = max_inflight;
	c.cap = cap >= 1 ? cap : 1;
	c.initial = p->breaker_failures >= 1 ? p->breaker_failures : 1;
	c.adaptive = p->concurrency_auto;
	c.ss_jump = !p->concurrency_auto;
	return c;
}

/* this worker's part of the rate and burst */
static void configure_bucket(ProvState *ps, int64_t now)
{
	int burst = (int)ceil((double)ps->cfg->burst * ps->share);
	tb_configure(&ps->tb, ps->cfg->rate * ps->share, burst < 1 ? 1 : burst, now);
}

ProvState *provider_new(struct event_base *base, Provider *p, int max_inflight,
			const ProvHandlers *h, void *arg)
{
	ProvState *ps = xcalloc(1, sizeof(*ps));
	int64_t now = now_monotonic_us();
	LimiterConfig lc = limiter_config(p, max_inflight);

	ps->name = xstrdup(p->name);
	ps->cfg = p;
	ps->share = 1.0;
	ps->h = h;
	ps->harg = arg;
	tb_init(&ps->tb, p->rate, p->burst, now);
	br_init(&ps->br, p->breaker_failures, p->breaker_cooldown_ms * 1000, breaker_changed, ps);
	ps->max_inflight = max_inflight;
	limiter_init(&ps->lim, &lc, now);
	ps->wake_timer = evtimer_new(base, wake_timer_cb, ps);
	ps->br_timer = evtimer_new(base, br_timer_cb, ps);
	login_init(&ps->login, base, login_timer_cb, ps);
	return ps;
}

void provider_free(ProvState *ps)
{
	if (!ps)
		return;
	handle_pool_free(&ps->pool);
	login_free(&ps->login);
	event_free(ps->wake_timer);
	event_free(ps->br_timer);
	free(ps->name);
	free(ps);
}

void provider_reconfigure(ProvState *ps, Provider *np, int max_inflight)
{
	LimiterConfig lc = limiter_config(np, max_inflight);
	int64_t now = now_monotonic_us();

	ps->cfg = np;
	ps->removed = false;
	ps->max_inflight = max_inflight;
	handle_pool_renew(&ps->pool);   /* pooled handles carry the old section */
	configure_bucket(ps, now);
	br_configure(&ps->br, np->breaker_failures, np->breaker_cooldown_ms * 1000);
	limiter_configure(&ps->lim, &lc, now);
}

void provider_remove(ProvState *ps)
{
	if (ps->removed)
		return;
	log_warn("provider %s removed by reload; its waiting items move on", ps->name);
	ps->removed = true;
	handle_pool_close(&ps->pool);
}

void provider_set_workers(ProvState *ps, double workers)
{
	double share = workers >= 1.0 ? 1.0 / workers : 1.0;

	if (share == ps->share)
		return;
	ps->share = share;
	if (ps->removed || ps->cfg->rate <= 0)
		return;
	log_info("provider %s: %g live worker(s), taking %.3g of rate %g/s", ps->name,
		 workers, share, ps->cfg->rate);
	configure_bucket(ps, now_monotonic_us());
}

void provider_join_fleet(ProvState *ps, int64_t until)
{
	if (ps->removed || ps->cfg->rate <= 0)
		return;
	ps->tb.tokens = 0;
	provider_pause(ps, until);
}

void provider_pause(ProvState *ps, int64_t until)
{
	if (until > ps->paused_until)
		ps->paused_until = until;
}

/* ------------------------------------------------------------------- queue */

static bool takes_turns(const Job *j)
{
	return j->route && j->route->batch_concurrency > 0;
}

/* fair_seq of batch's last start here; 0: none remembered (oldest). */
static uint64_t fair_last_start(const ProvState *ps, const char *batch_id)
{
	for (int i = 0; i < ps->nfair_batches; i++)
		if (strcmp(ps->fair_batches[i].batch_id, batch_id) == 0)
			return ps->fair_batches[i].seq;
	return 0;
}

/* j's batch started here now (the table full: forget the least recent). */
static void fair_note_start(ProvState *ps, const Job *j)
{
	int k = -1;

	for (int i = 0; i < ps->nfair_batches && k < 0; i++)
		if (strcmp(ps->fair_batches[i].batch_id, j->batch_id) == 0)
			k = i;
	if (k < 0 && ps->nfair_batches < PROV_FAIR_BATCHES) {
		k = ps->nfair_batches++;
	} else if (k < 0) {
		k = 0;
		for (int i = 1; i < PROV_FAIR_BATCHES; i++)
			if (ps->fair_batches[i].seq < ps->fair_batches[k].seq)
				k = i;
	}
	snprintf(ps->fair_batches[k].batch_id, sizeof(ps->fair_batches[k].batch_id), "%s",
		 j->batch_id);
	ps->fair_batches[k].seq = ++ps->fair_seq;
}

/* Unlink j, whose predecessor in the queue is prev (NULL: the head). */
static void queue_unlink(ProvState *ps, Job *j, Job *prev)
{
	if (prev)
		prev->qnext = j->qnext;
	else
		ps->qhead = j->qnext;
	if (ps->qtail == j)
		ps->qtail = prev;
	j->qnext = NULL;
	ps->nqueued--;
	if (j->fair_queued) {
		ps->nfair--;
		j->fair_queued = false;
	}
}

void provider_push(ProvState *ps, Job *j)
{
	j->qnext = NULL;
	if (ps->qtail)
		ps->qtail->qnext = j;
	else
		ps->qhead = j;
	ps->qtail = j;
	ps->nqueued++;
	j->fair_queued = takes_turns(j);
	if (j->fair_queued)
		ps->nfair++;
	job_set_state(j, JOB_QUEUED);
	j->ps = ps;
	j->queued_mono = now_monotonic_us();
}

/*
 * The next waiting job, in state NEW (the caller starts or reroutes it):
 * the head, or with turns by batch (provider.h) the first job of the batch
 * least recently started here among the run of such jobs at the head.
 */
Job *provider_pop(ProvState *ps)
{
	Job *j = ps->qhead, *prev = NULL;
	if (!j)
		return NULL;
	if (ps->nfair > 0 && j->fair_queued) {
		const Job *last = NULL;   /* the previous job looked at, and its seq */
		uint64_t last_seq = 0, best_seq = UINT64_MAX;
		Job *p = NULL;
		int n = 0;
		for (Job *c = ps->qhead; c && c->fair_queued && n < PROV_FAIR_SCAN;
		     p = c, c = c->qnext, n++) {
			uint64_t seq = last && strcmp(last->batch_id, c->batch_id) == 0 ?
				last_seq : fair_last_start(ps, c->batch_id);
			last = c;
			last_seq = seq;
			if (seq < best_seq) {   /* ties: the first in queue order */
				best_seq = seq;
				j = c;
				prev = p;
				if (seq == 0)
					break;  /* never started here: none goes before it */
			}
		}
	}
	queue_unlink(ps, j, prev);
	ps->wait_seconds += (double)(now_monotonic_us() - j->queued_mono) / 1e6;
	job_set_state(j, JOB_NEW);
	return j;
}

/* Take a specific job out of the queue (cancel, stop); it is NEW after. */
void provider_unqueue(ProvState *ps, Job *j)
{
	Job *prev = NULL, *c = ps->qhead;
	while (c && c != j) {
		prev = c;
		c = c->qnext;
	}
	if (!c)
		return;
	queue_unlink(ps, j, prev);
	job_set_state(j, JOB_NEW);
}

/* -------------------------------------------------------------------- gate */

bool provider_window_full(const ProvState *ps, int64_t now)
{
	return !limiter_can_start(&ps->lim, now);
}

bool provider_can_start(ProvState *ps, int64_t now, int64_t *wait_us)
{
	if (ps->cfg->login_url && !login_usable(&ps->login, now)) {
		*wait_us = -1;   /* the login's end wakes the provider */
		return false;
	}
	if (ps->paused_until > now) {
		*wait_us = ps->paused_until - now;
		return false;
	}
	if (!limiter_can_start(&ps->lim, now)) {
		*wait_us = -1;
		return false;
	}
	if (!tb_take(&ps->tb, now)) {
		*wait_us = tb_wait_us(&ps->tb, now);
		if (*wait_us < 1)
			*wait_us = 1;
		return false;
	}
	return true;
}

void provider_wake_in(ProvState *ps, int64_t wait_us)
{
	evtimer_del(ps->wake_timer);
	timer_arm_us(ps->wake_timer, wait_us);
}

void provider_wake_cancel(ProvState *ps)
{
	evtimer_del(ps->wake_timer);
}

/* ---------------------------------------------------------------- counting */

/* Count a request in the one-second ring used for status "recent rate". */
static void sec_count(ProvState *ps, bool error)
{
	int64_t sec = now_monotonic_us() / 1000000;
	int slot = (int)(sec % PROVIDER_HISTORY_S);
	if (ps->sec_stamp[slot] != sec) {
		ps->sec_stamp[slot] = sec;
		ps->sec_req[slot] = 0;
		ps->sec_err[slot] = 0;
	}
	ps->sec_req[slot]++;
	if (error)
		ps->sec_err[slot]++;
}

void provider_started(ProvState *ps, Job *j)
{
	br_on_start(&ps->br);
	j->lticket = limiter_on_start(&ps->lim, now_monotonic_us());
	ps->inflight++;
	ps->requests++;
	if (takes_turns(j))
		fair_note_start(ps, j);
}

void provider_aborted(ProvState *ps, Job *j)
{
	ps->inflight--;
	limiter_on_result(&ps->lim, now_monotonic_us(), &j->lticket, LIM_IGNORE);
	br_on_abort(&ps->br);
}

/* What an answer says of the provider's load, for the window. */
static enum LimiterResult limiter_result(CURLcode code, long status, enum Outcome out)
{
	if (code == CURLE_OPERATION_TIMEDOUT || (code == CURLE_OK && (status == 429 || status == 503)))
		return LIM_OVERLOAD;
	return out == OUT_TRANSIENT ? LIM_TRANSIENT : LIM_OK;
}

void provider_finished(ProvState *ps, Job *j, CURLcode code, long status, double secs,
		       enum Outcome out, const char *err)
{
	ps->inflight--;
	limiter_on_result(&ps->lim, now_monotonic_us(), &j->lticket,
			  limiter_result(code, status, out));
	ps->lat_count++;
	ps->lat_sum += secs;
	for (int i = 0; i < LAT_BUCKETS; i++)
		if (secs <= lat_bucket_le[i])
			ps->lat_buckets[i]++;
	ps->by_code[code == CURLE_OK && status > 0 && status < 600 ? status : 0]++;
	sec_count(ps, out != OUT_SUCCESS);
	/* a permanent error still proves the provider is up */
	if (out == OUT_TRANSIENT)
		br_on_failure(&ps->br, now_monotonic_us(), err);
	else
		br_on_success(&ps->br, now_monotonic_us());
}

void provider_stats(ProvState *ps, ProviderStats *out)
{
	int64_t now = now_monotonic_us(), sec = now / 1000000;
	uint64_t req = 0, err = 0;

	memset(out, 0, sizeof(*out));
	br_tick(&ps->br, now);
	out->breaker_state = br_state_name(ps->br.state);
	out->half_open_in_ms = ps->br.state == BR_OPEN ?
		(br_half_open_at(&ps->br) - now) / 1000 : -1;
	if (out->half_open_in_ms < -1)
		out->half_open_in_ms = 0;
	out->failures = ps->br.failures;
	out->tokens = tb_available(&ps->tb, now);
	out->rate_share = ps->tb.rate;
	out->inflight = ps->inflight;
	out->queued = ps->nqueued;
	out->paused_ms = ps->paused_until > now ? (ps->paused_until - now) / 1000 : 0;
	out->requests = ps->requests;
	out->concurrency_limit = limiter_window(&ps->lim, now);
	out->concurrency_mode = ps->lim.cfg.adaptive ? "auto" : "fixed";
	out->limiter_phase = limiter_phase_name(ps->lim.phase);
	out->base_latency_us = limiter_base_latency_us(&ps->lim);
	if (ps->cfg->login_url && !ps->removed) {
		const Login *l = &ps->login;
		out->login_state = login_state_name(l, now);
		out->login_expires_in_ms = login_usable(l, now) && l->expires_at ?
			(l->expires_at - now) / 1000 : -1;
		out->logins = l->ok_total;
		out->login_failures = l->err_total;
		out->relogins_401 = l->relogins_401;
		out->login_last_error = l->last_error;
	}
	for (int k = 0; k < PROVIDER_HISTORY_S; k++) {
		int64_t s = sec - (PROVIDER_HISTORY_S - 1) + k;
		int slot = (int)(s % PROVIDER_HISTORY_S);
		uint32_t n = ps->sec_stamp[slot] == s ? ps->sec_req[slot] : 0;
		out->per_second[k] = n;
		if (k >= PROVIDER_HISTORY_S - 60) {
			req += n;
			err += ps->sec_stamp[slot] == s ? ps->sec_err[slot] : 0;
		}
	}
	out->req_per_s = (double)req / 60.0;
	out->error_ratio = req ? (double)err / (double)req : 0.0;
}
