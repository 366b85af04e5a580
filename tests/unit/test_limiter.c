/*
 * test_limiter.c - unit tests for limiter.c, with an injected clock and a
 * simulated provider.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "batchd/limiter.h"

#define MS 1000LL
#define SEC 1000000LL

static Limiter lim_new(int initial, int cap, bool adaptive, int64_t now)
{
	LimiterConfig c = { .initial = initial, .cap = cap, .adaptive = adaptive };
	Limiter l;

	limiter_init(&l, &c, now);
	return l;
}

/* Start as many as the window allows; the tickets go to t[]. */
static int start_all(Limiter *l, int64_t now, LimiterTicket *t, int max)
{
	int n = 0;

	while (n < max && limiter_can_start(l, now))
		t[n++] = limiter_on_start(l, now);
	return n;
}

static void finish_all(Limiter *l, int64_t now, LimiterTicket *t, int n,
		       enum LimiterResult r)
{
	for (int i = 0; i < n; i++)
		limiter_on_result(l, now, &t[i], r);
}

/* ------------------------------------------------------------ slow start */

static void test_slow_start_doubles_per_round_trip(void **state)
{
	for (int adaptive = 0; adaptive <= 1; adaptive++) {
		Limiter l = lim_new(4, 64, adaptive, 0);
		LimiterTicket t[128];
		int64_t now = 0;
		int want = 4, rtts = 0;

		(void)state;
		assert_int_equal(limiter_window(&l, now), 4);
		assert_int_equal(l.phase, LIM_SLOW_START);
		while (limiter_window(&l, now) < 64) {
			int n = start_all(&l, now, t, 128);

			assert_int_equal(n, want);
			now += 100 * MS;
			finish_all(&l, now, t, n, LIM_OK);
			want = want * 2 > 64 ? 64 : want * 2;
			rtts++;
			assert_int_equal(limiter_window(&l, now), want);
		}
		assert_int_equal(rtts, 4);   /* log2(64 / 4) */
		assert_int_equal(l.phase, LIM_STEADY);
		/* the cap holds */
		assert_int_equal(start_all(&l, now, t, 128), 64);
		now += 100 * MS;
		finish_all(&l, now, t, 64, LIM_OK);
		assert_true(limiter_window(&l, now) <= 64);
	}
}

/* ss_jump: the cap after initial successes in a row; failures in between
 * start the count again, and a failing provider stays at initial. */
static void test_slow_start_jump(void **state)
{
	LimiterConfig c = { .initial = 5, .cap = 1000, .ss_jump = true };
	LimiterTicket t[1000];
	Limiter l;
	int n;

	(void)state;
	limiter_init(&l, &c, 0);
	n = start_all(&l, 0, t, 1000);
	assert_int_equal(n, 5);
	finish_all(&l, 200 * MS, t, 4, LIM_OK);
	assert_int_equal(limiter_window(&l, 200 * MS), 9);
	finish_all(&l, 200 * MS, t + 4, 1, LIM_OK);
	assert_int_equal(limiter_window(&l, 200 * MS), 1000);
	assert_int_equal(l.phase, LIM_STEADY);
	/* a failure in between: it takes its slot, the count starts again */
	limiter_init(&l, &c, 0);
	n = start_all(&l, 0, t, 1000);
	finish_all(&l, 0, t, 3, LIM_OK);
	finish_all(&l, 0, t + 3, 1, LIM_TRANSIENT);
	finish_all(&l, 0, t + 4, 1, LIM_OK);
	assert_int_equal(limiter_window(&l, 0), 8);   /* 5 + 3 - 1 + 1 */
	/* failing from the first request: the initial window, then one */
	limiter_init(&l, &c, 0);
	for (int i = 0; i < 10; i++) {
		n = start_all(&l, 0, t, 1000);
		assert_int_equal(n, i == 0 ? 5 : 1);
		finish_all(&l, 0, t, n, LIM_TRANSIENT);
	}
	/* adaptive ignores it: doubling */
	c.adaptive = true;
	limiter_init(&l, &c, 0);
	n = start_all(&l, 0, t, 1000);
	finish_all(&l, 0, t, n, LIM_OK);
	assert_int_equal(limiter_window(&l, 0), 10);
}

/* B2 of the benchmark: 50,000 items at 200 ms with a cap of 1000, from a
 * slow start of 5; throughput against 1000 / 0.2 s. */
static double b2_ratio(bool jump)
{
	static LimiterTicket t[1000];
	LimiterConfig c = { .initial = 5, .cap = 1000, .ss_jump = jump };
	Limiter l;
	int64_t now = 0;
	int done = 0, n;

	limiter_init(&l, &c, 0);
	while (done < 50000) {
		n = start_all(&l, now, t, 50000 - done < 1000 ? 50000 - done : 1000);
		now += 200 * MS;
		finish_all(&l, now, t, n, LIM_OK);
		done += n;
	}
	return 10.0 * SEC / (double)now;
}

static void test_slow_start_cost_at_200ms(void **state)
{
	double doubling = b2_ratio(false), jump = b2_ratio(true);

	(void)state;
	print_message("B2-like ramp, 50,000 items at 200 ms, cap 1000: doubling %.3f, "
		      "ss_jump %.3f of the ideal\n", doubling, jump);
	assert_true(doubling > 0.85 && doubling < 0.9);
	assert_true(jump >= 0.98);
}

static void test_initial_is_at_most_cap(void **state)
{
	Limiter l = lim_new(5, 2, false, 0);

	(void)state;
	assert_int_equal(limiter_window(&l, 0), 2);
	assert_int_equal(l.phase, LIM_STEADY);
	l = lim_new(0, 0, false, 0);
	assert_int_equal(limiter_window(&l, 0), 1);
}

static void test_trickle_does_not_open_the_window(void **state)
{
	Limiter l = lim_new(4, 1000, false, 0);
	int64_t now = 0;

	(void)state;
	/* one request at a time, 100 times: the window is never half used
	 * beyond 2, so it stays small */
	for (int i = 0; i < 100; i++) {
		LimiterTicket t = limiter_on_start(&l, now);

		now += 10 * MS;
		limiter_on_result(&l, now, &t, LIM_OK);
	}
	assert_true(limiter_window(&l, now) <= 4);
}

static void test_failing_from_the_first_request(void **state)
{
	for (int adaptive = 0; adaptive <= 1; adaptive++) {
		Limiter l = lim_new(5, 1000, adaptive, 0);
		LimiterTicket t[1000];
		int64_t now = 0;
		int n, total = 0;

		(void)state;
		for (int round = 0; round < 10; round++) {
			n = start_all(&l, now, t, 1000);
			assert_true(n <= 5);
			total += n;
			now += 50 * MS;
			finish_all(&l, now, t, n, round % 2 ? LIM_OVERLOAD : LIM_TRANSIENT);
		}
		/* each failure in slow start took its slot: the window is 1 */
		assert_int_equal(limiter_window(&l, now), 1);
		assert_true(total <= 5 + 9);
	}
}

/*
 * A provider down from the start, answering one request at a time (each
 * failure frees a slot before the next answer comes), behind a breaker
 * that opens after 5 failures in a row: it receives the 5 requests of the
 * initial window and no more, in both modes and whatever the cap.
 */
static void test_down_provider_answers_one_at_a_time(void **state)
{
	for (int adaptive = 0; adaptive <= 1; adaptive++) {
		for (int cap = 200; cap <= 1000; cap += 800) {
			Limiter l = lim_new(5, cap, adaptive, 0);
			LimiterTicket t[1000];
			int64_t now = 0;
			int head = 0, tail = 0, failures = 0;

			(void)state;
			while (failures < 5) {
				while (limiter_can_start(&l, now))
					t[tail++] = limiter_on_start(&l, now);
				assert_true(head < tail);
				now += 1 * MS;
				limiter_on_result(&l, now, &t[head++], LIM_TRANSIENT);
				failures++;
			}
			assert_int_equal(tail, 5);
		}
	}
}

static void test_failures_in_slow_start_stop_growth_fixed(void **state)
{
	Limiter l = lim_new(5, 100, false, 0);
	LimiterTicket t[100];
	int n = start_all(&l, 0, t, 100);

	(void)state;
	assert_int_equal(n, 5);
	/* 2 successes and 3 failures: +2 -3 */
	finish_all(&l, 10 * MS, t, 2, LIM_OK);
	finish_all(&l, 10 * MS, t + 2, 3, LIM_TRANSIENT);
	assert_int_equal(limiter_window(&l, 10 * MS), 4);
}

/* --------------------------------------------------------------- decrease */

/* Drive an adaptive limiter to steady state at a limit near target. */
static Limiter steady_at(int target, int64_t *now)
{
	Limiter l = lim_new(target, 1000, true, 0);
	LimiterTicket t[1000];
	int n = start_all(&l, *now, t, 1000);

	/* one overload ends slow start at target/2, then grow back with
	 * rounds of successes at constant latency */
	*now += 20 * MS;
	finish_all(&l, *now, t, n, LIM_OVERLOAD);
	while (limiter_limit(&l) < target) {
		n = start_all(&l, *now, t, 1000);
		*now += 20 * MS;
		finish_all(&l, *now, t, n, LIM_OK);
	}
	return l;
}

static void test_decrease_once_per_round_trip(void **state)
{
	int64_t now = 0;
	Limiter l = steady_at(40, &now);
	LimiterTicket t[1000];
	int lim = limiter_limit(&l), n;
	uint64_t dec;

	(void)state;
	assert_int_equal(l.phase, LIM_STEADY);
	n = start_all(&l, now, t, 1000);
	assert_int_equal(n, lim);
	dec = l.decreases;
	now += 20 * MS;
	/* a whole window fails: one decrease, not n */
	finish_all(&l, now, t, n, LIM_OVERLOAD);
	assert_int_equal(l.decreases, dec + 1);
	assert_int_equal(limiter_limit(&l), (int)(lim * 0.5));
	/* the next round fails too: one more */
	n = start_all(&l, now, t, 1000);
	now += 20 * MS;
	finish_all(&l, now, t, n, LIM_TRANSIENT);
	assert_int_equal(l.decreases, dec + 2);
	assert_int_equal(limiter_limit(&l), (int)((int)(lim * 0.5) * 0.9));
	/* floor 1 */
	for (int i = 0; i < 100; i++) {
		n = start_all(&l, now, t, 1000);
		now += 20 * MS;
		finish_all(&l, now, t, n, LIM_OVERLOAD);
	}
	assert_int_equal(limiter_limit(&l), 1);
	assert_int_equal(limiter_window(&l, now), 1);
}

static void test_fixed_ignores_failures_after_slow_start(void **state)
{
	Limiter l = lim_new(4, 16, false, 0);
	LimiterTicket t[16];
	int64_t now = 0;
	int n;

	(void)state;
	for (int i = 0; i < 3; i++) {
		n = start_all(&l, now, t, 16);
		now += 10 * MS;
		finish_all(&l, now, t, n, LIM_OK);
	}
	assert_int_equal(limiter_window(&l, now), 16);
	n = start_all(&l, now, t, 16);
	finish_all(&l, now, t, n, LIM_OVERLOAD);
	assert_int_equal(limiter_window(&l, now), 16);
}

static void test_latency_above_base_shrinks(void **state)
{
	int64_t now = 0;
	Limiter l = steady_at(40, &now);
	LimiterTicket t[1000];
	int lim = limiter_limit(&l), n, rtts;
	uint64_t dec;

	(void)state;
	assert_true(limiter_base_latency_us(&l) >= 19 * MS &&
		    limiter_base_latency_us(&l) <= 21 * MS);
	/* latency doubles: the limit shrinks (to half at most) within two
	 * round trips (the first round still holds answers of the last one) */
	dec = l.decreases;
	for (rtts = 0; l.decreases == dec; rtts++) {
		n = start_all(&l, now, t, 1000);
		now += 40 * MS;
		finish_all(&l, now, t, n, LIM_OK);
	}
	assert_true(rtts <= 2);
	assert_true(limiter_limit(&l) >= lim / 2 - 1 && limiter_limit(&l) < lim);
	/* still queueing: at most one decrease per round trip, down to the
	 * floor */
	for (int i = 0; i < 40; i++) {
		dec = l.decreases;
		n = start_all(&l, now, t, 1000);
		now += 40 * MS;
		finish_all(&l, now, t, n, LIM_OK);
		assert_true(l.decreases <= dec + 1);
	}
	assert_int_equal(limiter_limit(&l), 1);
	/* latency 1.2 x base: no decrease, growth */
	lim = limiter_limit(&l);
	for (int i = 0; i < 40; i++) {
		n = start_all(&l, now, t, 1000);
		now += 24 * MS;
		finish_all(&l, now, t, n, LIM_OK);
	}
	assert_true(limiter_limit(&l) > lim);
}

/* ------------------------------------------------------------- reset, idle */

static void test_reset_and_idle_slow_start_again(void **state)
{
	Limiter l = lim_new(4, 64, false, 0);
	LimiterTicket t[64], late;
	int64_t now = 0;
	int n;

	(void)state;
	for (int i = 0; i < 4; i++) {
		n = start_all(&l, now, t, 64);
		now += 10 * MS;
		finish_all(&l, now, t, n, LIM_OK);
	}
	assert_int_equal(limiter_window(&l, now), 64);
	/* breaker closed again: slow start; answers of older transfers only
	 * leave the window */
	late = limiter_on_start(&l, now);
	limiter_reset(&l, now);
	assert_int_equal(limiter_window(&l, now), 4);
	limiter_on_result(&l, now, &late, LIM_OK);
	assert_int_equal(l.inflight, 0);
	assert_int_equal(limiter_window(&l, now), 4);
	for (int i = 0; i < 4; i++) {
		n = start_all(&l, now, t, 64);
		now += 10 * MS;
		finish_all(&l, now, t, n, LIM_OK);
	}
	assert_int_equal(limiter_window(&l, now), 64);
	/* idle just under the period: the window stays */
	assert_int_equal(limiter_window(&l, now + LIMITER_IDLE_US - 1), 64);
	/* idle for the period: slow start */
	now += LIMITER_IDLE_US;
	assert_int_equal(limiter_window(&l, now), 4);
	n = start_all(&l, now, t, 64);
	assert_int_equal(n, 4);
	assert_int_equal(l.phase, LIM_SLOW_START);
	/* but not while something is in flight */
	now += LIMITER_IDLE_US * 2;
	assert_int_equal(limiter_window(&l, now), 4);
	finish_all(&l, now, t, n, LIM_OK);
	assert_int_equal(limiter_window(&l, now), 8);
}

static void test_ignore_and_configure(void **state)
{
	Limiter l = lim_new(4, 64, false, 0);
	LimiterTicket t[64];
	LimiterConfig c = { .initial = 4, .cap = 8, .adaptive = false };
	int n = start_all(&l, 0, t, 64);

	(void)state;
	finish_all(&l, 0, t, n, LIM_IGNORE);
	assert_int_equal(l.inflight, 0);
	assert_int_equal(limiter_window(&l, 0), 4);
	for (int i = 0; i < 5; i++) {
		n = start_all(&l, 0, t, 64);
		finish_all(&l, 0, t, n, LIM_OK);
	}
	assert_int_equal(limiter_window(&l, 0), 64);
	limiter_configure(&l, &c, 0);
	assert_int_equal(limiter_window(&l, 0), 8);
	c.cap = 100;
	limiter_configure(&l, &c, 0);
	assert_int_equal(limiter_window(&l, 0), 8);   /* slow start to 100 */
	n = start_all(&l, 0, t, 64);
	finish_all(&l, 0, t, n, LIM_OK);
	assert_int_equal(limiter_window(&l, 0), 16);
	c.adaptive = true;
	limiter_configure(&l, &c, 0);
	assert_int_equal(limiter_window(&l, 0), 4);
	assert_string_equal(limiter_phase_name(l.phase), "slow_start");
}

/* ------------------------------------------------ a simulated provider */

/*
 * A provider that serves cap requests at once, each in base_us, first come
 * first served; up to qlen more wait (their latency grows with the queue);
 * beyond that it answers 503 after 1 ms.  batchd always has work.  Time
 * steps of 1 ms.
 */
#define SIM_MAX 4096

typedef struct {
	LimiterTicket t;
	int64_t done_us;     /* 0: queued */
	bool rejected;
	bool used;
} SimReq;

typedef struct {
	int cap, qlen;
	int64_t base_us;
	int64_t jitter_us;       /* service time base_us + uniform 0..jitter_us */
	uint64_t rng;
	SimReq r[SIM_MAX];
	int queue[SIM_MAX], qhead, qcount;
	int busy;
	/* measured from measure_from_us on */
	int64_t measure_from_us;
	uint64_t ok, rejected;
	double inflight_us;      /* integral of in-flight over time */
	int64_t measured_us;
	int lim_min, lim_max;
} Sim;

static int64_t sim_service(Sim *s)
{
	if (s->jitter_us <= 0)
		return s->base_us;
	s->rng = s->rng * 6364136223846793005ULL + 1442695040888963407ULL;
	return s->base_us + (int64_t)((s->rng >> 33) % (uint64_t)(s->jitter_us + 1));
}

static void sim_run(Sim *s, Limiter *l, int64_t from_us, int64_t to_us)
{
	for (int64_t now = from_us; now < to_us; now += MS) {
		bool measure = now >= s->measure_from_us;

		for (int i = 0; i < SIM_MAX; i++) {
			SimReq *q = &s->r[i];

			if (!q->used || q->done_us == 0 || q->done_us > now)
				continue;
			limiter_on_result(l, now, &q->t, q->rejected ? LIM_OVERLOAD : LIM_OK);
			if (measure) {
				if (q->rejected)
					s->rejected++;
				else
					s->ok++;
			}
			if (!q->rejected)
				s->busy--;
			q->used = false;
		}
		while (s->busy < s->cap && s->qcount > 0) {
			SimReq *q = &s->r[s->queue[s->qhead]];

			s->qhead = (s->qhead + 1) % SIM_MAX;
			s->qcount--;
			q->done_us = now + sim_service(s);
			s->busy++;
		}
		while (limiter_can_start(l, now)) {
			int i = 0;

			while (s->r[i].used)
				i++;
			assert_true(i < SIM_MAX);
			s->r[i] = (SimReq){ .t = limiter_on_start(l, now), .used = true };
			if (s->busy < s->cap) {
				s->r[i].done_us = now + sim_service(s);
				s->busy++;
			} else if (s->qcount < s->qlen) {
				s->queue[(s->qhead + s->qcount++) % SIM_MAX] = i;
			} else {
				s->r[i].rejected = true;
				s->r[i].done_us = now + MS;
			}
		}
		if (getenv("LIMITER_TRACE") && now % (100 * MS) == 0)
			fprintf(stderr, "t=%.1f limit=%.1f inflight=%d base=%.1f ms phase=%s busy=%d q=%d\n",
				(double)now / SEC, l->limit, l->inflight,
				(double)limiter_base_latency_us(l) / MS,
				limiter_phase_name(l->phase), s->busy, s->qcount);
		if (measure) {
			int lim = limiter_limit(l);

			s->inflight_us += (double)l->inflight * MS;
			s->measured_us += MS;
			if (s->lim_min == 0 || lim < s->lim_min)
				s->lim_min = lim;
			if (lim > s->lim_max)
				s->lim_max = lim;
		}
	}
}

static void sim_measure(Sim *s, int64_t from_us)
{
	s->measure_from_us = from_us;
	s->ok = s->rejected = 0;
	s->inflight_us = 0;
	s->measured_us = 0;
	s->lim_min = s->lim_max = 0;
}

static Sim sim;

static void test_adaptive_finds_capacity_50(void **state)
{
	Limiter l = lim_new(5, 1000, true, 0);
	double mean, tput;

	(void)state;
	memset(&sim, 0, sizeof sim);
	sim.cap = 50;
	sim.qlen = 50;
	sim.base_us = 20 * MS;
	sim_measure(&sim, 2 * SEC);
	sim_run(&sim, &l, 0, 20 * SEC);
	mean = sim.inflight_us / (double)sim.measured_us;
	tput = (double)sim.ok / ((double)sim.measured_us / SEC);
	print_message("capacity 50: limit %d..%d, mean in flight %.1f, %.0f/s "
		      "(%.2f of 2500/s), %llu 503s\n", sim.lim_min, sim.lim_max, mean,
		      tput, tput / 2500, (unsigned long long)sim.rejected);
	assert_true(sim.lim_min >= 35 && sim.lim_max <= 80);
	assert_true(mean >= 35 && mean <= 80);
	assert_true(tput >= 0.85 * 2500);
	assert_true(sim.rejected * 100 < sim.ok + sim.rejected);
}

static void test_adaptive_follows_a_capacity_drop(void **state)
{
	Limiter l = lim_new(5, 1000, true, 0);
	double mean, tput;
	uint64_t total;

	(void)state;
	memset(&sim, 0, sizeof sim);
	sim.cap = 50;
	sim.qlen = 50;
	sim.base_us = 20 * MS;
	sim_measure(&sim, 0);
	sim_run(&sim, &l, 0, 10 * SEC);
	assert_true(limiter_limit(&l) >= 35);
	/* capacity 50 -> 10 at 10 s; within 5 s the limit has followed, and
	 * stays there */
	sim.cap = 10;
	sim_measure(&sim, 10 * SEC);
	sim_run(&sim, &l, 10 * SEC, 15 * SEC);
	total = sim.ok + sim.rejected;
	print_message("drop to 10, first 5 s: limit %d..%d, %llu 503s of %llu\n",
		      sim.lim_min, sim.lim_max, (unsigned long long)sim.rejected,
		      (unsigned long long)total);
	assert_true(sim.rejected * 20 < total);
	sim_measure(&sim, 15 * SEC);
	sim_run(&sim, &l, 15 * SEC, 25 * SEC);
	mean = sim.inflight_us / (double)sim.measured_us;
	tput = (double)sim.ok / ((double)sim.measured_us / SEC);
	print_message("capacity 10 from 15 s: limit %d..%d, mean in flight %.1f, "
		      "%.0f/s, %llu 503s\n", sim.lim_min, sim.lim_max, mean, tput,
		      (unsigned long long)sim.rejected);
	/* followed: at most twice the capacity, about 1.5 x in flight */
	assert_true(sim.lim_min >= 7 && sim.lim_max <= 20);
	assert_true(mean <= 15);
	assert_true(tput >= 0.85 * 500);
	/* and back up to 50 */
	sim.cap = 50;
	sim_measure(&sim, 30 * SEC);
	sim_run(&sim, &l, 25 * SEC, 40 * SEC);
	print_message("back to 50: limit %d..%d\n", sim.lim_min, sim.lim_max);
	assert_true(sim.lim_min >= 35 && sim.lim_max <= 80);
}

static void test_fixed_mode_on_the_simulated_provider(void **state)
{
	Limiter l = lim_new(5, 40, false, 0);

	(void)state;
	memset(&sim, 0, sizeof sim);
	sim.cap = 50;
	sim.qlen = 50;
	sim.base_us = 20 * MS;
	sim_measure(&sim, 200 * MS);     /* 5 -> 40 is 3 round trips: 60 ms */
	sim_run(&sim, &l, 0, 2 * SEC);
	assert_int_equal(sim.lim_min, 40);
	assert_int_equal(sim.lim_max, 40);
}

/* A healthy provider with a lot of jitter (100 to 300 ms, no queueing):
 * the adaptive limit is not taken down by the jitter. */
static void test_adaptive_jitter_is_not_queueing(void **state)
{
	Limiter l = lim_new(5, 200, true, 0);

	(void)state;
	memset(&sim, 0, sizeof sim);
	sim.cap = 10000;
	sim.qlen = 0;
	sim.base_us = 100 * MS;
	sim.jitter_us = 200 * MS;
	sim.rng = 42;
	sim_measure(&sim, 10 * SEC);
	sim_run(&sim, &l, 0, 40 * SEC);
	print_message("jitter 100..300 ms, ceiling 200: limit %d..%d\n", sim.lim_min,
		      sim.lim_max);
	assert_true(sim.lim_min >= 150);
	/* a low ceiling: small rounds */
	l = lim_new(5, 20, true, 0);
	memset(&sim, 0, sizeof sim);
	sim.cap = 10000;
	sim.base_us = 100 * MS;
	sim.jitter_us = 200 * MS;
	sim.rng = 7;
	sim_measure(&sim, 10 * SEC);
	sim_run(&sim, &l, 0, 60 * SEC);
	print_message("jitter 100..300 ms, ceiling 20: limit %d..%d\n", sim.lim_min,
		      sim.lim_max);
	assert_true(sim.lim_min >= 14);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_slow_start_doubles_per_round_trip),
		cmocka_unit_test(test_slow_start_jump),
		cmocka_unit_test(test_slow_start_cost_at_200ms),
		cmocka_unit_test(test_initial_is_at_most_cap),
		cmocka_unit_test(test_trickle_does_not_open_the_window),
		cmocka_unit_test(test_failing_from_the_first_request),
		cmocka_unit_test(test_down_provider_answers_one_at_a_time),
		cmocka_unit_test(test_failures_in_slow_start_stop_growth_fixed),
		cmocka_unit_test(test_decrease_once_per_round_trip),
		cmocka_unit_test(test_fixed_ignores_failures_after_slow_start),
		cmocka_unit_test(test_latency_above_base_shrinks),
		cmocka_unit_test(test_reset_and_idle_slow_start_again),
		cmocka_unit_test(test_ignore_and_configure),
		cmocka_unit_test(test_adaptive_finds_capacity_50),
		cmocka_unit_test(test_adaptive_follows_a_capacity_drop),
		cmocka_unit_test(test_fixed_mode_on_the_simulated_provider),
		cmocka_unit_test(test_adaptive_jitter_is_not_queueing),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
