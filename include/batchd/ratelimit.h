/*
 * ratelimit.h - token bucket with an injected clock.
 *
 * A bucket holds up to `burst` tokens and gains `rate` tokens per second.
 * Sending a request takes one token, so in any window of T seconds at most
 * burst + rate * T requests go out.  rate 0 means unlimited.
 */
#ifndef BATCHD_RATELIMIT_H
#define BATCHD_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

typedef struct TokenBucket {
	double rate;       /* tokens per second; 0: unlimited */
	double burst;      /* capacity */
	double tokens;
	int64_t last_us;   /* monotonic time of the last refill */
} TokenBucket;

/* Start full. */
void tb_init(TokenBucket *tb, double rate, int burst, int64_t now_us);
/* Change rate and burst, keeping the tokens earned so far (capped). */
void tb_configure(TokenBucket *tb, double rate, int burst, int64_t now_us);
/* Take a token if one is there. */
bool tb_take(TokenBucket *tb, int64_t now_us);
/* Microseconds until a token is there (0: now). */
int64_t tb_wait_us(TokenBucket *tb, int64_t now_us);
/* Tokens available now (for metrics). */
double tb_available(TokenBucket *tb, int64_t now_us);

#endif /* BATCHD_RATELIMIT_H */
