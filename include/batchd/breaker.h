/*
 * breaker.h - circuit breaker per provider, with an injected clock.
 *
 *   CLOSED --(threshold consecutive transient failures)--> OPEN
 *   OPEN --(cooldown elapsed: br_tick)--> HALF_OPEN
 *   HALF_OPEN: exactly one probe; success -> CLOSED, failure -> OPEN
 *
 * The owner arms a loop timer for br_half_open_at() and calls br_tick()
 * when it fires; every transition is reported through the callback.
 */
#ifndef BATCHD_BREAKER_H
#define BATCHD_BREAKER_H

#include <stdbool.h>
#include <stdint.h>

enum BreakerState { BR_CLOSED = 0, BR_OPEN = 1, BR_HALF_OPEN = 2 };

typedef struct Breaker Breaker;
typedef void (*breaker_cb)(Breaker *br, enum BreakerState from, enum BreakerState to,
			   const char *reason, void *arg);

struct Breaker {
	enum BreakerState state;
	int failures;          /* consecutive transient failures while CLOSED */
	int threshold;
	int64_t cooldown_us;
	int64_t opened_at_us;
	bool probe_inflight;
	uint64_t transitions[3]; /* count of transitions into each state */
	breaker_cb cb;
	void *arg;
};

void br_init(Breaker *br, int threshold, int64_t cooldown_us, breaker_cb cb, void *arg);
void br_configure(Breaker *br, int threshold, int64_t cooldown_us);

/* May a request go now?  Does not change state. */
bool br_admits(const Breaker *br);
/* A request is starting: in HALF_OPEN it becomes the probe. */
void br_on_start(Breaker *br);
/* Outcomes.  Permanent errors count as success: the provider answered. */
void br_on_success(Breaker *br, int64_t now_us);
void br_on_failure(Breaker *br, int64_t now_us, const char *reason);
/* A started request ended without an outcome (aborted): free the probe. */
void br_on_abort(Breaker *br);
/* OPEN and cooldown elapsed -> HALF_OPEN.  Returns true on transition. */
bool br_tick(Breaker *br, int64_t now_us);
int64_t br_half_open_at(const Breaker *br);
const char *br_state_name(enum BreakerState s);

#endif /* BATCHD_BREAKER_H */
