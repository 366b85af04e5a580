/*
 * ratelimit.c - token bucket.
 *
 * Refill is computed lazily from the clock on every call, so an idle bucket
 * costs nothing and waiting is one timer set to tb_wait_us().
 */
#include <math.h>

#include "batchd/ratelimit.h"

static void refill(TokenBucket *tb, int64_t now_us)
{
	if (now_us > tb->last_us) {
		tb->tokens += tb->rate * (double)(now_us - tb->last_us) / 1e6;
		if (tb->tokens > tb->burst)
			tb->tokens = tb->burst;
		tb->last_us = now_us;
	}
}

void tb_init(TokenBucket *tb, double rate, int burst, int64_t now_us)
{
	tb->rate = rate > 0 ? rate : 0;
	tb->burst = burst > 0 ? burst : 1;
	tb->tokens = tb->burst;
	tb->last_us = now_us;
}

void tb_configure(TokenBucket *tb, double rate, int burst, int64_t now_us)
{
	refill(tb, now_us);
	tb->rate = rate > 0 ? rate : 0;
	tb->burst = burst > 0 ? burst : 1;
	if (tb->tokens > tb->burst)
		tb->tokens = tb->burst;
}

bool tb_take(TokenBucket *tb, int64_t now_us)
{
	if (tb->rate <= 0)
		return true;
	refill(tb, now_us);
	/* a hair of tolerance for floating-point refill arithmetic */
	if (tb->tokens >= 1.0 - 1e-9) {
		tb->tokens -= 1.0;
		if (tb->tokens < 0)
			tb->tokens = 0;
		return true;
	}
	return false;
}

int64_t tb_wait_us(TokenBucket *tb, int64_t now_us)
{
	double missing;

	if (tb->rate <= 0)
		return 0;
	refill(tb, now_us);
	missing = 1.0 - tb->tokens;
	if (missing <= 1e-9)
		return 0;
	return (int64_t)ceil(missing / tb->rate * 1e6);
}

double tb_available(TokenBucket *tb, int64_t now_us)
{
	if (tb->rate <= 0)
		return tb->burst;
	refill(tb, now_us);
	return tb->tokens;
}
