/*
 * limiter.c - per-provider concurrency window (limiter.h has the rules).
 *
 * The constants, and why:
 *  - slow start +1 per success, counted when the window was at least half
 *    used (TCP's rule, and AIMDLimit's inflight * 2 >= limit); a window of W answered
 *    successes becomes 2W, so a healthy provider is at its cap after
 *    log2(cap / initial) round trips; -1 per failure of a request
 *    started in slow start (floor 1), so one failing from the first request never sees more
 *    than the initial window, even when its answers come one at a time.
 *  - 0.5 on overload (429, 503, timeout): the provider says it is over
 *    capacity; slow start can overshoot by up to 2x, and halving removes
 *    that in one round trip (TCP Reno's factor).
 *  - 0.9 on other transient failures (the backoff ratio of Netflix
 *    concurrency-limits' AIMDLimit): a 500 is as often a bad item as load, so it slows growth
 *    without collapsing the window; the breaker handles a failing provider.
 *  - queueing at 1.2 x the base latency, then down to what the provider
 *    serves at once: in-flight / latency is its throughput, times the base
 *    latency the number it serves without queueing (Little's law), so one
 *    step lands at its capacity.  Envoy's gradient controller keeps a
 *    buffer over its minRTT, Netflix's Gradient2 a tolerance of 1.5; on the
 *    simulated provider of test_limiter (capacity 50) 1.25 lets the limit
 *    swing up to 85 and 1.15 lets jitter take it down, so 1.2.  The
 *    3 standard errors of the round's mean
 *    keep a jittery provider that does not queue from being cut: its round
 *    means vary by sd / sqrt(n), while a queue moves every answer.
 *  - rounds of at least 16 answers: a mean of fewer is all jitter (100 to
 *    300 ms uniform latency took a ceiling-20 limit down to 1 with rounds
 *    of 1 to 4 answers).
 *  - additive increase of 0.3 sqrt(limit) per round (Envoy adds sqrt as
 *    headroom): +1 per round, TCP's, needs minutes to reach a limit in the
 *    hundreds; 0.5 sqrt overshoots the detection lag of about one round.
 *  - base latency: the lowest round mean of this 10 s window and the one
 *    before, so a provider that became slower at no load is followed within
 *    20 s; round means, not single answers, so jitter does not make the
 *    base the fastest outlier.
 */
#include <math.h>

#include "batchd/limiter.h"

static double clampd(double v, double lo, double hi)
{
	return v < lo ? lo : v > hi ? hi : v;
}

static int cfg_initial(const LimiterConfig *c)
{
	int cap = c->cap >= 1 ? c->cap : 1;
	int init = c->initial >= 1 ? c->initial : 1;

	return init < cap ? init : cap;
}

static double cfg_cap(const LimiterConfig *c)
{
	return c->cap >= 1 ? c->cap : 1;
}

static void round_begin(Limiter *l)
{
	l->round_seq = l->next_seq;
	l->round_ok = 0;
	l->round_lat_sum = 0;
	l->round_lat_sq_sum = 0;
	l->round_inflight_sum = 0;
	l->round_max_used = 0;
	l->round_failed = false;
}

/* Slow start from the initial window up to ssthresh. */
static void slow_start(Limiter *l, double ssthresh)
{
	l->limit = cfg_initial(&l->cfg);
	l->ssthresh = clampd(ssthresh, l->limit, cfg_cap(&l->cfg));
	l->phase = l->limit < l->ssthresh ? LIM_SLOW_START : LIM_STEADY;
	l->ss_streak = 0;
	round_begin(l);
}

void limiter_init(Limiter *l, const LimiterConfig *cfg, int64_t now_us)
{
	*l = (Limiter){ 0 };
	l->cfg = *cfg;
	l->last_active_us = now_us;
	l->base_window_us = now_us;
	slow_start(l, cfg_cap(cfg));
}

void limiter_configure(Limiter *l, const LimiterConfig *cfg, int64_t now_us)
{
	bool mode_changed = cfg->adaptive != l->cfg.adaptive;

	l->cfg = *cfg;
	if (mode_changed) {
		limiter_reset(l, now_us);
		return;
	}
	if (!cfg->adaptive)
		l->ssthresh = cfg_cap(cfg);   /* fixed: slow start ends at the cap */
	l->ssthresh = clampd(l->ssthresh, 1, cfg_cap(cfg));
	l->limit = clampd(l->limit, 1, cfg_cap(cfg));
	if (l->limit >= l->ssthresh) {
		l->limit = l->ssthresh;
		l->phase = LIM_STEADY;
	} else if (!cfg->adaptive) {
		l->phase = LIM_SLOW_START;    /* a raised cap is reached by slow start */
	}
}

void limiter_reset(Limiter *l, int64_t now_us)
{
	l->epoch_seq = l->next_seq;
	l->decrease_seq = l->next_seq;
	l->base_cur_us = l->base_prev_us = 0;
	l->base_window_us = now_us;
	l->last_active_us = now_us;
	slow_start(l, cfg_cap(&l->cfg));
}

static bool idle(const Limiter *l, int64_t now_us)
{
	return l->inflight == 0 && now_us - l->last_active_us >= LIMITER_IDLE_US;
}

int limiter_limit(const Limiter *l)
{
	int v = (int)l->limit;

	return v >= 1 ? v : 1;
}

int limiter_window(const Limiter *l, int64_t now_us)
{
	int w = limiter_limit(l), init = cfg_initial(&l->cfg);

	/* after an idle period: min(initial, window), as TCP's restart window */
	if (idle(l, now_us) && w > init)
		return init;
	return w;
}

bool limiter_can_start(const Limiter *l, int64_t now_us)
{
	return l->inflight < limiter_window(l, now_us);
}

LimiterTicket limiter_on_start(Limiter *l, int64_t now_us)
{
	LimiterTicket t;

	if (idle(l, now_us) && l->limit > cfg_initial(&l->cfg)) {
		/* adaptive: back to where it was, then carefully; fixed: the cap */
		slow_start(l, l->cfg.adaptive ? l->limit : cfg_cap(&l->cfg));
	}
	t.seq = l->next_seq++;
	t.start_us = now_us;
	t.inflight = l->inflight++;
	t.window = limiter_limit(l);
	t.slow_start = l->phase == LIM_SLOW_START;
	l->last_active_us = now_us;
	return t;
}

static void decrease(Limiter *l, double factor)
{
	l->limit = clampd(l->limit * factor, 1, cfg_cap(&l->cfg));
	l->ssthresh = l->limit;
	l->phase = LIM_STEADY;
	l->decrease_seq = l->next_seq;
	l->decreases++;
	round_begin(l);
}

static double base_latency(const Limiter *l)
{
	if (l->base_cur_us > 0 && l->base_prev_us > 0)
		return l->base_cur_us < l->base_prev_us ? l->base_cur_us : l->base_prev_us;
	return l->base_cur_us > 0 ? l->base_cur_us : l->base_prev_us;
}

int64_t limiter_base_latency_us(const Limiter *l)
{
	return (int64_t)base_latency(l);
}

static void base_sample(Limiter *l, int64_t now_us, double mean_us)
{
	if (now_us - l->base_window_us >= LIMITER_BASE_WINDOW_US) {
		/* a window with no sample keeps the older one */
		if (l->base_cur_us > 0)
			l->base_prev_us = l->base_cur_us;
		l->base_cur_us = 0;
		l->base_window_us = now_us;
	}
	if (l->base_cur_us <= 0 || mean_us < l->base_cur_us)
		l->base_cur_us = mean_us;
}

/* Adaptive: the end of a round. */
static void round_end(Limiter *l, int64_t now_us, const LimiterTicket *t)
{
	double mean, base, sd, noise, served;

	if (l->round_ok == 0 || l->round_failed) {
		round_begin(l);
		return;
	}
	mean = l->round_lat_sum / l->round_ok;
	base_sample(l, now_us, mean);
	base = base_latency(l);
	/* the jitter of a round's mean: LIMITER_NOISE_SE standard errors */
	sd = l->round_lat_sq_sum / l->round_ok - mean * mean;
	sd = sd > 0 ? sqrt(sd) : 0;
	noise = LIMITER_NOISE_SE * sd / sqrt(l->round_ok);
	if (t->seq >= l->decrease_seq && mean > base * LIMITER_QUEUE_RATIO + noise) {
		/* what the provider serves at once: the requests in flight when
		 * these started, times base / latency (Little's law) */
		served = l->round_inflight_sum / l->round_ok * base / mean;
		decrease(l, clampd(served / l->limit, LIMITER_MD_QUEUE_MIN, 1));
		return;
	}
	if (l->phase == LIM_STEADY && 2 * l->round_max_used >= limiter_limit(l)) {
		double step = sqrt(l->limit) * LIMITER_AI_SQRT;

		l->limit = clampd(l->limit + (step > 1 ? step : 1), 1, cfg_cap(&l->cfg));
	}
	round_begin(l);
}

void limiter_on_result(Limiter *l, int64_t now_us, const LimiterTicket *t,
		       enum LimiterResult r)
{
	/* how much of the window was used: in flight when this one started
	 * (itself included) or when it ended, whichever is more */
	int used = t->inflight + 1 > l->inflight ? t->inflight + 1 : l->inflight;

	if (l->inflight > 0)
		l->inflight--;
	l->last_active_us = now_us;
	if (r == LIM_IGNORE || t->seq < l->epoch_seq)
		return;
	if (r == LIM_OK) {
		/* slow start: +1 when the window was at least half used */
		if (l->phase == LIM_SLOW_START && 2 * used >= t->window) {
			l->limit += 1;
			if (l->cfg.ss_jump && !l->cfg.adaptive &&
			    ++l->ss_streak >= cfg_initial(&l->cfg))
				l->limit = l->ssthresh;
			if (l->limit >= l->ssthresh) {
				l->limit = l->ssthresh;
				l->phase = LIM_STEADY;
			}
		}
		if (!l->cfg.adaptive)
			return;
		/* a request started before the last decrease shows the queue of
		 * the window before it: not a sample of the present one */
		if (t->seq < l->decrease_seq)
			return;
		l->round_ok++;
		l->round_lat_sum += (double)(now_us - t->start_us);
		l->round_lat_sq_sum += (double)(now_us - t->start_us) * (double)(now_us - t->start_us);
		l->round_inflight_sum += t->inflight + 1;
		if (used > l->round_max_used)
			l->round_max_used = used;
	} else {
		/* A request of slow start that fails takes its slot with it
		 * (floor 1): the provider has not shown it can take the window,
		 * and the slot freed by a failure must not send the next
		 * request to a provider that is down, so that one failing from
		 * the start gets the initial window and no more before its
		 * breaker opens (also when the first failure ended slow start
		 * by a decrease).  Fixed, after slow start: failures never
		 * move the window (the breaker acts). */
		l->ss_streak = 0;
		if (t->slow_start || l->phase == LIM_SLOW_START)
			l->limit = clampd(l->limit - 1, 1, cfg_cap(&l->cfg));
		if (!l->cfg.adaptive)
			return;
		if (t->seq >= l->decrease_seq) {
			decrease(l, r == LIM_OVERLOAD ? LIMITER_MD_OVERLOAD : LIMITER_MD_TRANSIENT);
			return;
		}
		l->round_failed = true;
	}
	/* a round: one round trip, and enough answers for a mean that jitter
	 * does not move much */
	if (t->seq >= l->round_seq && l->round_ok + l->round_failed >= LIMITER_ROUND_MIN)
		round_end(l, now_us, t);
}

const char *limiter_phase_name(enum LimiterPhase p)
{
	switch (p) {
	case LIM_SLOW_START: return "slow_start";
	case LIM_STEADY: return "steady";
	}
	return "unknown";
}
