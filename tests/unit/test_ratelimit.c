/*
 * test_ratelimit.c - token bucket and circuit breaker with an injected clock.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "batchd/breaker.h"
#include "batchd/ratelimit.h"

#define SEC 1000000LL

/* In any window of T seconds at most burst + rate*T requests pass. */
static void test_bucket_window_bound(void **state)
{
	TokenBucket tb;
	int64_t t = 0;
	int sent[200] = { 0 };   /* sends per 100 ms slot over 20 s */
	int total = 0;

	tb_init(&tb, 20.0, 5, t);
	/* a greedy sender polling every millisecond for 20 s */
	for (t = 0; t < 20 * SEC; t += 1000) {
		while (tb_take(&tb, t)) {
			sent[t / (SEC / 10)]++;
			total++;
		}
	}
	/* 5 up front + 20/s for 20 s, give or take the last partial token */
	assert_in_range(total, 5 + 20 * 20 - 1, 5 + 20 * 20);
	/* every window of 1 s (10 slots) holds at most burst + rate */
	for (int s = 0; s + 10 <= 200; s++) {
		int w = 0;
		for (int k = s; k < s + 10; k++)
			w += sent[k];
		if (w > 5 + 20)
			fail_msg("window at %d00 ms had %d requests", s, w);
	}
}

static void test_bucket_wait_is_exact(void **state)
{
	TokenBucket tb;
	tb_init(&tb, 4.0, 1, 0);
	assert_true(tb_take(&tb, 0));
	assert_false(tb_take(&tb, 0));
	/* one token every 250 ms */
	assert_int_equal(tb_wait_us(&tb, 0), 250000);
	assert_int_equal(tb_wait_us(&tb, 100000), 150000);
	assert_false(tb_take(&tb, 249000));
	assert_true(tb_take(&tb, 250000));
}

static void test_bucket_fractional_and_unlimited(void **state)
{
	TokenBucket tb;
	tb_init(&tb, 0.5, 1, 0);
	assert_true(tb_take(&tb, 0));
	assert_int_equal(tb_wait_us(&tb, 0), 2 * SEC);
	assert_false(tb_take(&tb, SEC));
	assert_true(tb_take(&tb, 2 * SEC));

	tb_init(&tb, 0, 1, 0);   /* unlimited */
	for (int i = 0; i < 1000; i++)
		assert_true(tb_take(&tb, 0));
	assert_int_equal(tb_wait_us(&tb, 0), 0);
}

static void test_bucket_idle_does_not_overfill(void **state)
{
	TokenBucket tb;
	int n = 0;
	tb_init(&tb, 10.0, 3, 0);
	while (tb_take(&tb, 0))
		n++;
	assert_int_equal(n, 3);
	/* an hour idle still gives only burst */
	n = 0;
	while (tb_take(&tb, 3600 * SEC))
		n++;
	assert_int_equal(n, 3);
}

static void test_bucket_reconfigure(void **state)
{
	TokenBucket tb;
	tb_init(&tb, 1.0, 10, 0);
	assert_true(tb_take(&tb, 0));   /* 9 left */
	tb_configure(&tb, 100.0, 2, 0); /* capped to the new burst */
	assert_true(tb_take(&tb, 0));
	assert_true(tb_take(&tb, 0));
	assert_false(tb_take(&tb, 0));
	assert_int_equal(tb_wait_us(&tb, 0), 10000);
}

/* ------------------------------------------------------------- breaker */

static int transitions;
static enum BreakerState last_to;

static void on_change(Breaker *br, enum BreakerState from, enum BreakerState to,
		      const char *reason, void *arg)
{
	transitions++;
	last_to = to;
	assert_non_null(reason);
}

static void test_breaker_opens_after_threshold(void **state)
{
	Breaker br;
	transitions = 0;
	br_init(&br, 3, 10 * SEC, on_change, NULL);
	assert_true(br_admits(&br));
	br_on_failure(&br, 0, "500");
	br_on_failure(&br, 0, "500");
	br_on_success(&br, 0);            /* resets the count */
	br_on_failure(&br, 1, "500");
	br_on_failure(&br, 1, "500");
	assert_int_equal(br.state, BR_CLOSED);
	br_on_failure(&br, 2 * SEC, "500");
	assert_int_equal(br.state, BR_OPEN);
	assert_int_equal(transitions, 1);
	assert_false(br_admits(&br));
	assert_int_equal(br_half_open_at(&br), 12 * SEC);
}

static void test_breaker_half_open_single_probe(void **state)
{
	Breaker br;
	transitions = 0;
	br_init(&br, 1, 5 * SEC, on_change, NULL);
	br_on_failure(&br, 0, "timeout");
	assert_int_equal(br.state, BR_OPEN);
	assert_false(br_tick(&br, 4 * SEC));       /* cooldown not over */
	assert_true(br_tick(&br, 5 * SEC));
	assert_int_equal(br.state, BR_HALF_OPEN);
	assert_true(br_admits(&br));
	br_on_start(&br);                          /* the probe */
	assert_false(br_admits(&br));              /* exactly one */
	br_on_failure(&br, 6 * SEC, "500");
	assert_int_equal(br.state, BR_OPEN);
	assert_int_equal(br_half_open_at(&br), 11 * SEC);
	assert_true(br_tick(&br, 11 * SEC));
	br_on_start(&br);
	br_on_success(&br, 12 * SEC);
	assert_int_equal(br.state, BR_CLOSED);
	assert_int_equal(last_to, BR_CLOSED);
	/* closed -> open -> half -> open -> half -> closed */
	assert_int_equal(transitions, 5);
	assert_int_equal(br.transitions[BR_OPEN], 2);
}

static void test_breaker_abort_frees_probe(void **state)
{
	Breaker br;
	br_init(&br, 1, SEC, NULL, NULL);
	br_on_failure(&br, 0, "x");
	br_tick(&br, SEC);
	br_on_start(&br);
	assert_false(br_admits(&br));
	br_on_abort(&br);
	assert_true(br_admits(&br));
	assert_int_equal(br.state, BR_HALF_OPEN);
}

static void test_breaker_late_failure_while_open_is_ignored(void **state)
{
	Breaker br;
	br_init(&br, 2, SEC, NULL, NULL);
	br_on_failure(&br, 0, "x");
	br_on_failure(&br, 0, "x");
	assert_int_equal(br.state, BR_OPEN);
	br_on_failure(&br, 500000, "late");
	assert_int_equal(br_half_open_at(&br), SEC);  /* not extended */
	assert_string_equal(br_state_name(BR_HALF_OPEN), "half_open");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bucket_window_bound),
		cmocka_unit_test(test_bucket_wait_is_exact),
		cmocka_unit_test(test_bucket_fractional_and_unlimited),
		cmocka_unit_test(test_bucket_idle_does_not_overfill),
		cmocka_unit_test(test_bucket_reconfigure),
		cmocka_unit_test(test_breaker_opens_after_threshold),
		cmocka_unit_test(test_breaker_half_open_single_probe),
		cmocka_unit_test(test_breaker_abort_frees_probe),
		cmocka_unit_test(test_breaker_late_failure_while_open_is_ignored),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
