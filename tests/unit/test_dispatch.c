/*
 * test_dispatch.c - the pure parts of dispatch (outcome classification,
 * Retry-After, backoff), a provider's gate and queue, and the job states.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "batchd/dispatch.h"
#include "batchd/job.h"
#include "batchd/login.h"
#include "batchd/provider.h"

static Provider prov(void)
{
	Provider p;

	memset(&p, 0, sizeof(p));
	p.name = (char *)"p";
	p.method = (char *)"GET";
	p.burst = 1;
	p.retries = 3;
	p.backoff_ms = 100;
	p.backoff_max_ms = 1000;
	p.breaker_failures = 5;
	p.breaker_cooldown_ms = 60000;
	return p;
}

static void test_classify_defaults(void **state)
{
	Provider p = prov();

	assert_int_equal(dispatch_classify(&p, 200), OUT_SUCCESS);
	assert_int_equal(dispatch_classify(&p, 204), OUT_SUCCESS);
	assert_int_equal(dispatch_classify(&p, 299), OUT_SUCCESS);
	assert_int_equal(dispatch_classify(&p, 500), OUT_TRANSIENT);
	assert_int_equal(dispatch_classify(&p, 503), OUT_TRANSIENT);
	assert_int_equal(dispatch_classify(&p, 599), OUT_TRANSIENT);
	assert_int_equal(dispatch_classify(&p, 408), OUT_TRANSIENT);
	assert_int_equal(dispatch_classify(&p, 429), OUT_TRANSIENT);
	assert_int_equal(dispatch_classify(&p, 400), OUT_PERMANENT);
	assert_int_equal(dispatch_classify(&p, 404), OUT_PERMANENT);
	assert_int_equal(dispatch_classify(&p, 422), OUT_PERMANENT);
	/* redirects are not followed: a 3xx is no answer to store */
	assert_int_equal(dispatch_classify(&p, 301), OUT_PERMANENT);
	assert_int_equal(dispatch_classify(&p, 100), OUT_PERMANENT);
}

static void test_classify_overrides(void **state)
{
	Provider p = prov();
	int retry[] = { 404, 409 }, perm[] = { 503, 409 };

	p.retry_on = retry;
	p.nretry_on = 2;
	p.permanent_on = perm;
	p.npermanent_on = 2;
	assert_int_equal(dispatch_classify(&p, 404), OUT_TRANSIENT);
	assert_int_equal(dispatch_classify(&p, 503), OUT_PERMANENT);
	/* named in both: permanent wins */
	assert_int_equal(dispatch_classify(&p, 409), OUT_PERMANENT);
	assert_int_equal(dispatch_classify(&p, 500), OUT_TRANSIENT);
	assert_int_equal(dispatch_classify(&p, 200), OUT_SUCCESS);
}

static void test_retry_after(void **state)
{
	/* 1994-11-06 08:49:37 UTC */
	const int64_t t0 = 784111777;

	assert_int_equal(dispatch_retry_after_ms(NULL, t0), -1);
	assert_int_equal(dispatch_retry_after_ms("", t0), -1);
	assert_int_equal(dispatch_retry_after_ms("soon", t0), -1);
	assert_int_equal(dispatch_retry_after_ms("-5", t0), -1);
	assert_int_equal(dispatch_retry_after_ms("12x", t0), -1);
	assert_int_equal(dispatch_retry_after_ms("0", t0), 0);
	assert_int_equal(dispatch_retry_after_ms("120", t0), 120000);
	/* capped at an hour, without overflowing on absurd values */
	assert_int_equal(dispatch_retry_after_ms("3600", t0), 3600000);
	assert_int_equal(dispatch_retry_after_ms("3601", t0), 3600000);
	assert_int_equal(dispatch_retry_after_ms("99999999999999999999", t0), 3600000);
	/* HTTP dates, relative to now */
	assert_int_equal(dispatch_retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", t0), 0);
	assert_int_equal(dispatch_retry_after_ms("Sun, 06 Nov 1994 08:50:07 GMT", t0), 30000);
	assert_int_equal(dispatch_retry_after_ms("Sun, 06 Nov 1994 08:49:00 GMT", t0), 0);
	assert_int_equal(dispatch_retry_after_ms("Mon, 07 Nov 1994 08:49:37 GMT", t0), 3600000);
}

static void test_backoff(void **state)
{
	Provider p = prov();

	/* random(0, min(backoff_max, backoff * 2^(n-1))) with u the random part */
	assert_int_equal(dispatch_backoff_ms(&p, 1, 0.0), 0);
	assert_int_equal(dispatch_backoff_ms(&p, 1, 0.5), 50);
	assert_int_equal(dispatch_backoff_ms(&p, 2, 0.5), 100);
	assert_int_equal(dispatch_backoff_ms(&p, 3, 0.5), 200);
	assert_int_equal(dispatch_backoff_ms(&p, 4, 0.999), 799);
	/* capped at backoff_max */
	assert_int_equal(dispatch_backoff_ms(&p, 5, 0.5), 500);
	assert_int_equal(dispatch_backoff_ms(&p, 60, 0.5), 500);
	assert_true(dispatch_backoff_ms(&p, 60, 0.999999) < 1000);
	/* the first try's number may be 0 or 1 */
	assert_int_equal(dispatch_backoff_ms(&p, 0, 0.5), 50);
}

static void test_job_states(void **state)
{
	static const enum JobState all[] = {
		JOB_NEW, JOB_QUEUED, JOB_RUNNING, JOB_BACKOFF, JOB_DONE,
	};

	/* DONE is terminal */
	for (size_t i = 0; i < 5; i++)
		assert_false(job_state_change_ok(JOB_DONE, all[i]));
	/* everything else can end, and go back to NEW */
	for (size_t i = 0; i < 4; i++) {
		assert_true(job_state_change_ok(all[i], JOB_DONE));
		assert_true(job_state_change_ok(all[i], JOB_NEW));
	}
	assert_true(job_state_change_ok(JOB_NEW, JOB_QUEUED));
	assert_false(job_state_change_ok(JOB_QUEUED, JOB_QUEUED));
	assert_false(job_state_change_ok(JOB_RUNNING, JOB_QUEUED));
	assert_false(job_state_change_ok(JOB_BACKOFF, JOB_QUEUED));
	assert_true(job_state_change_ok(JOB_NEW, JOB_RUNNING));
	assert_true(job_state_change_ok(JOB_QUEUED, JOB_RUNNING));
	assert_false(job_state_change_ok(JOB_RUNNING, JOB_RUNNING));
	assert_false(job_state_change_ok(JOB_BACKOFF, JOB_RUNNING));
	assert_true(job_state_change_ok(JOB_RUNNING, JOB_BACKOFF));
	assert_false(job_state_change_ok(JOB_BACKOFF, JOB_BACKOFF));
}

static int wakes;
static void on_wake(ProvState *ps, void *arg)
{
	wakes++;
}
static void on_login_timer(ProvState *ps, void *arg)
{
}
static const ProvHandlers handlers = { on_wake, on_login_timer };

static Job *fair_job(Route *r, int64_t id, const char *batch)
{
	Job *j = job_new(NULL, id, batch, "{}", 0, 3);
	j->route = r;
	return j;
}

/* the job just popped starts on ps (and ends at once) */
static void fair_start(ProvState *ps, Job *j)
{
	provider_started(ps, j);
	provider_aborted(ps, j);
}

/* Routes with batch_concurrency: the queue takes turns by batch, least
 * recently started first; other routes' jobs are never overtaken. */
static void test_provider_queue_fair(void **state)
{
	struct event_base *base = event_base_new();
	Provider p = prov();
	ProvState *ps = provider_new(base, &p, 100, &handlers, NULL);
	Route fair, plain;
	Job *j[12];
	int n = 0;

	memset(&fair, 0, sizeof(fair));
	memset(&plain, 0, sizeof(plain));
	fair.batch_concurrency = 2;
	/* A1 A2 A3 B1 B2: A first (ties: queue order), then B, then A again */
	j[n++] = fair_job(&fair, 1, "A");
	j[n++] = fair_job(&fair, 2, "A");
	j[n++] = fair_job(&fair, 3, "A");
	j[n++] = fair_job(&fair, 4, "B");
	j[n++] = fair_job(&fair, 5, "B");
	for (int i = 0; i < 5; i++)
		provider_push(ps, j[i]);
	assert_int_equal(ps->nfair, 5);
	assert_ptr_equal(provider_pop(ps), j[0]);
	assert_int_equal(j[0]->state, JOB_NEW);
	fair_start(ps, j[0]);
	assert_ptr_equal(provider_pop(ps), j[3]);
	fair_start(ps, j[3]);
	/* a batch never started here goes first */
	j[n++] = fair_job(&fair, 6, "C");
	provider_push(ps, j[5]);
	assert_ptr_equal(provider_pop(ps), j[5]);
	fair_start(ps, j[5]);
	assert_ptr_equal(provider_pop(ps), j[1]);   /* A: least recently started */
	fair_start(ps, j[1]);
	/* out of the middle keeps the counts */
	provider_unqueue(ps, j[4]);
	assert_int_equal(j[4]->state, JOB_NEW);
	assert_int_equal(ps->nqueued, 1);
	assert_int_equal(ps->nfair, 1);
	assert_ptr_equal(provider_pop(ps), j[2]);
	fair_start(ps, j[2]);
	assert_null(provider_pop(ps));
	assert_int_equal(ps->nfair, 0);
	assert_null(ps->qtail);

	/* another route's job is never overtaken: B2 X D1 -> B2, X, D1 (D never
	 * started: it would go before B2 only); X first at the head: X */
	j[n++] = fair_job(&plain, 7, "X");
	j[n++] = fair_job(&fair, 8, "D");
	provider_push(ps, j[4]);
	provider_push(ps, j[6]);
	provider_push(ps, j[7]);
	assert_int_equal(ps->nfair, 2);
	assert_ptr_equal(provider_pop(ps), j[4]);
	assert_ptr_equal(provider_pop(ps), j[6]);
	assert_ptr_equal(provider_pop(ps), j[7]);
	assert_int_equal(ps->nfair, 0);
	assert_int_equal(ps->nqueued, 0);
	assert_null(ps->qhead);
	assert_null(ps->qtail);
	/* the tail stays right when the chosen job is the last one */
	provider_push(ps, j[4]);
	provider_push(ps, j[7]);
	assert_ptr_equal(provider_pop(ps), j[7]);
	assert_ptr_equal(ps->qtail, j[4]);
	provider_push(ps, j[6]);
	assert_ptr_equal(j[4]->qnext, j[6]);
	assert_ptr_equal(provider_pop(ps), j[4]);
	assert_ptr_equal(provider_pop(ps), j[6]);
	assert_null(provider_pop(ps));

	for (int i = 0; i < n; i++) {
		job_set_state(j[i], JOB_DONE);
		job_free(j[i]);
	}
	provider_free(ps);
	event_base_free(base);
}

static void test_provider_queue(void **state)
{
	struct event_base *base = event_base_new();
	Provider p = prov();
	ProvState *ps = provider_new(base, &p, 100, &handlers, NULL);
	Job *a = job_new(NULL, 1, "b", "{}", 0, 3), *b = job_new(NULL, 2, "b", "{}", 0, 3);
	Job *c = job_new(NULL, 3, "b", "{}", 0, 3);

	provider_push(ps, a);
	provider_push(ps, b);
	provider_push(ps, c);
	assert_int_equal(ps->nqueued, 3);
	assert_int_equal(b->state, JOB_QUEUED);
	assert_ptr_equal(b->ps, ps);
	/* out of the middle, then first in first out */
	provider_unqueue(ps, b);
	assert_int_equal(b->state, JOB_NEW);
	assert_int_equal(ps->nqueued, 2);
	provider_unqueue(ps, b);    /* not there: nothing happens */
	assert_int_equal(ps->nqueued, 2);
	assert_ptr_equal(provider_pop(ps), a);
	assert_int_equal(a->state, JOB_NEW);
	assert_ptr_equal(provider_pop(ps), c);
	assert_null(provider_pop(ps));
	assert_int_equal(ps->nqueued, 0);
	assert_null(ps->qtail);
	provider_push(ps, b);
	assert_ptr_equal(ps->qhead, b);
	assert_ptr_equal(ps->qtail, b);
	assert_ptr_equal(provider_pop(ps), b);

	job_set_state(a, JOB_DONE);
	job_set_state(b, JOB_DONE);
	job_set_state(c, JOB_DONE);
	job_free(a);
	job_free(b);
	job_free(c);
	provider_free(ps);
	event_base_free(base);
}

static void test_provider_gate(void **state)
{
	struct event_base *base = event_base_new();
	Provider p = prov();
	ProvState *ps;
	Job *jobs[3];
	int64_t now, wait = 0;

	p.rate = 10;
	p.burst = 2;
	p.max_concurrency = 3;
	for (int i = 0; i < 3; i++)
		jobs[i] = job_new(NULL, i + 1, "b", "{}", 0, 3);
	ps = provider_new(base, &p, 100, &handlers, NULL);
	now = now_monotonic_us();   /* the bucket's clock starts in provider_new */

	/* the burst, then a token every 100 ms */
	assert_true(provider_can_start(ps, now, &wait));
	assert_true(provider_can_start(ps, now, &wait));
	assert_false(provider_can_start(ps, now, &wait));
	assert_in_range(wait, 99000, 100000);
	assert_true(provider_can_start(ps, now + 100000, &wait));

	/* max_concurrency: wait for a transfer to end (-1) */
	for (int i = 0; i < 3; i++)
		provider_started(ps, jobs[i]);
	assert_true(provider_window_full(ps, now + 10000000));
	assert_false(provider_can_start(ps, now + 10000000, &wait));
	assert_int_equal(wait, -1);
	for (int i = 0; i < 3; i++)
		provider_finished(ps, jobs[i], CURLE_OK, 200, 0.01, OUT_SUCCESS, NULL);
	assert_false(provider_window_full(ps, now + 10000000));

	/* a pause (Retry-After) holds everything until it ends; a shorter one
	 * does not shorten it */
	provider_pause(ps, now + 20000000);
	provider_pause(ps, now + 15000000);
	assert_false(provider_can_start(ps, now + 10000000, &wait));
	assert_int_equal(wait, 10000000);
	assert_true(provider_can_start(ps, now + 20000000, &wait));

	/* a fleet of 4: a quarter of the rate, and the burst rounded up */
	provider_set_workers(ps, 4);
	assert_true(ps->tb.rate > 2.49 && ps->tb.rate < 2.51);
	for (int i = 0; i < 3; i++) {
		job_set_state(jobs[i], JOB_DONE);
		job_free(jobs[i]);
	}
	provider_free(ps);
	event_base_free(base);
}

static int started_until_full(ProvState *ps, Job **jobs, int n, int64_t now)
{
	int k = 0;

	while (k < n && !provider_window_full(ps, now))
		provider_started(ps, jobs[k++]);
	return k;
}

/*
 * The concurrency window through the provider: slow start from
 * breaker_failures (5) with max_inflight 200 and no max_concurrency; a
 * provider down from the start gets 5 requests before its breaker opens,
 * one that answers gets the whole window after 5 successes, and after the
 * breaker closes again it starts slow again.
 */
static void test_provider_slow_start(void **state)
{
	struct event_base *base = event_base_new();
	Provider p = prov();
	Job *jobs[200];
	ProvState *ps;
	int64_t now;
	int n;

	(void)state;
	for (int i = 0; i < 200; i++)
		jobs[i] = job_new(NULL, i + 1, "b", "{}", 0, 3);
	ps = provider_new(base, &p, 200, &handlers, NULL);
	now = now_monotonic_us();
	n = started_until_full(ps, jobs, 200, now);
	assert_int_equal(n, 5);
	/* failing one at a time: no slot opens, the breaker opens at the 5th */
	for (int i = 0; i < 5; i++) {
		provider_finished(ps, jobs[i], CURLE_OK, 500, 0.01, OUT_TRANSIENT, "HTTP 500");
		assert_true(i == 4 || provider_window_full(ps, now));
	}
	assert_int_equal(ps->br.state, BR_OPEN);
	assert_int_equal(ps->requests, 5);
	/* half open: a probe that succeeds closes it, and the window starts at 5 */
	ps->br.opened_at_us -= (int64_t)p.breaker_cooldown_ms * 1000 + 1;
	br_tick(&ps->br, now_monotonic_us());
	assert_int_equal(ps->br.state, BR_HALF_OPEN);
	provider_started(ps, jobs[0]);
	provider_finished(ps, jobs[0], CURLE_OK, 200, 0.01, OUT_SUCCESS, NULL);
	assert_int_equal(ps->br.state, BR_CLOSED);
	now = now_monotonic_us();
	n = started_until_full(ps, jobs, 200, now);
	assert_int_equal(n, 5);
	/* five answers: the whole window */
	for (int i = 0; i < 5; i++)
		provider_finished(ps, jobs[i], CURLE_OK, 200, 0.01, OUT_SUCCESS, NULL);
	assert_int_equal(started_until_full(ps, jobs, 200, now), 200);
	for (int i = 0; i < 200; i++)
		provider_aborted(ps, jobs[i]);
	for (int i = 0; i < 200; i++) {
		job_set_state(jobs[i], JOB_DONE);
		job_free(jobs[i]);
	}
	provider_free(ps);
	event_base_free(base);
}

/* The login answer: token at a dotted path, lifetime as number or string. */
static void test_login_answer(void **state)
{
	char err[300], *tok;
	double life;
	const char *ok = "{\"access_token\":\"abc\",\"expires_in\":120}";
	const char *nested = "{\"data\":{\"token\":\"t-1\",\"ttl\":\"30\"}}";

	(void)state;
	assert_int_equal(login_parse_answer(ok, strlen(ok), 200, "access_token", "expires_in",
					    &tok, &life, err, sizeof(err)), 0);
	assert_string_equal(tok, "abc");
	assert_true(life == 120);
	free(tok);
	assert_int_equal(login_parse_answer(nested, strlen(nested), 201, "data.token", "data.ttl",
					    &tok, &life, err, sizeof(err)), 0);
	assert_string_equal(tok, "t-1");
	assert_true(life == 30);
	free(tok);
	/* no lifetime: -1 */
	assert_int_equal(login_parse_answer("{\"access_token\":\"x\"}", 20, 200, "access_token",
					    "expires_in", &tok, &life, err, sizeof(err)), 0);
	assert_true(life == -1);
	free(tok);

	assert_int_equal(login_parse_answer(ok, strlen(ok), 401, "access_token", "expires_in",
					    &tok, &life, err, sizeof(err)), -1);
	assert_string_equal(err, "login answered HTTP 401");
	assert_null(tok);
	assert_int_equal(login_parse_answer("{nope", 5, 200, "access_token", "expires_in",
					    &tok, &life, err, sizeof(err)), -1);
	assert_string_equal(err, "login answer is not JSON");
	assert_int_equal(login_parse_answer("[1]", 3, 200, "access_token", "expires_in",
					    &tok, &life, err, sizeof(err)), -1);
	assert_string_equal(err, "login answer is not a JSON object");
	assert_int_equal(login_parse_answer("{\"token\":\"x\"}", 13, 200, "access_token",
					    "expires_in", &tok, &life, err, sizeof(err)), -1);
	assert_string_equal(err, "login answer has no field access_token");
	assert_int_equal(login_parse_answer("{\"access_token\":5}", 18, 200, "access_token",
					    "expires_in", &tok, &life, err, sizeof(err)), -1);
	assert_string_equal(err, "login answer's access_token is not a non-empty string");
	assert_int_equal(login_parse_answer("{\"access_token\":\"a\\nb\"}", 23, 200,
					    "access_token", "expires_in", &tok, &life, err,
					    sizeof(err)), -1);
	assert_string_equal(err, "login answer's access_token has a control character");
	assert_int_equal(login_parse_answer("{\"access_token\":\"a\",\"expires_in\":-5}", 36, 200,
					    "access_token", "expires_in", &tok, &life, err,
					    sizeof(err)), -1);
	assert_string_equal(err, "login answer's expires_in is out of range (-5)");
	assert_int_equal(login_parse_answer("{\"access_token\":\"a\",\"expires_in\":\"soon\"}", 40,
					    200, "access_token", "expires_in", &tok, &life, err,
					    sizeof(err)), -1);
	assert_string_equal(err, "login answer's expires_in is not a number");
	assert_null(strstr(err, "\"a\""));
}

static void test_login_header_and_refresh(void **state)
{
	char *h;

	(void)state;
	h = login_render_header("Authorization: Bearer {token}", "T0K");
	assert_string_equal(h, "Authorization: Bearer T0K");
	free(h);
	h = login_render_header("X-Auth: tok={token};v=1", "abc");
	assert_string_equal(h, "X-Auth: tok=abc;v=1");
	free(h);
	/* margin given: lifetime - margin, at least half the lifetime */
	assert_int_equal(login_refresh_in_us(2000000, 1000), 1000000);
	assert_int_equal(login_refresh_in_us(2000000, 1900), 1000000);
	assert_int_equal(login_refresh_in_us(3600000000LL, 120000), 3480000000LL);
	/* default: a tenth, at most 60 s */
	assert_int_equal(login_refresh_in_us(100000000, -1), 90000000);
	assert_int_equal(login_refresh_in_us(3600000000LL, -1), 3540000000LL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_classify_defaults),
		cmocka_unit_test(test_classify_overrides),
		cmocka_unit_test(test_retry_after),
		cmocka_unit_test(test_backoff),
		cmocka_unit_test(test_job_states),
		cmocka_unit_test(test_provider_queue),
		cmocka_unit_test(test_provider_queue_fair),
		cmocka_unit_test(test_provider_gate),
		cmocka_unit_test(test_provider_slow_start),
		cmocka_unit_test(test_login_answer),
		cmocka_unit_test(test_login_header_and_refresh),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
