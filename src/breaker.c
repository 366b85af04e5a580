/*
 * breaker.c - circuit breaker state machine.
 */
#include <stdio.h>

#include "batchd/breaker.h"

const char *br_state_name(enum BreakerState s)
{
	switch (s) {
	case BR_CLOSED: return "closed";
	case BR_OPEN: return "open";
	case BR_HALF_OPEN: return "half_open";
	}
	return "unknown";
}

static void change(Breaker *br, enum BreakerState to, const char *reason)
{
	enum BreakerState from = br->state;
	if (from == to)
		return;
	br->state = to;
	br->transitions[to]++;
	if (br->cb)
		br->cb(br, from, to, reason, br->arg);
}

void br_init(Breaker *br, int threshold, int64_t cooldown_us, breaker_cb cb, void *arg)
{
	br->state = BR_CLOSED;
	br->failures = 0;
	br->threshold = threshold > 0 ? threshold : 1;
	br->cooldown_us = cooldown_us;
	br->opened_at_us = 0;
	br->probe_inflight = false;
	br->transitions[0] = br->transitions[1] = br->transitions[2] = 0;
	br->cb = cb;
	br->arg = arg;
}

void br_configure(Breaker *br, int threshold, int64_t cooldown_us)
{
	br->threshold = threshold > 0 ? threshold : 1;
	br->cooldown_us = cooldown_us;
}

bool br_admits(const Breaker *br)
{
	switch (br->state) {
	case BR_CLOSED:
		return true;
	case BR_HALF_OPEN:
		return !br->probe_inflight;
	case BR_OPEN:
		return false;
	}
	return false;
}

void br_on_start(Breaker *br)
{
	if (br->state == BR_HALF_OPEN)
		br->probe_inflight = true;
}

void br_on_success(Breaker *br, int64_t now_us)
{
	br->failures = 0;
	if (br->state == BR_HALF_OPEN) {
		br->probe_inflight = false;
		change(br, BR_CLOSED, "probe succeeded");
	}
}

void br_on_failure(Breaker *br, int64_t now_us, const char *reason)
{
	char why[256];

	switch (br->state) {
	case BR_CLOSED:
		if (++br->failures >= br->threshold) {
			snprintf(why, sizeof(why), "%d consecutive failures, last: %s",
				 br->failures, reason);
			br->opened_at_us = now_us;
			br->failures = 0;
			change(br, BR_OPEN, why);
		}
		break;
	case BR_HALF_OPEN:
		br->probe_inflight = false;
		snprintf(why, sizeof(why), "probe failed: %s", reason);
		br->opened_at_us = now_us;
		change(br, BR_OPEN, why);
		break;
	case BR_OPEN:
		/* a request started before the breaker opened: no news */
		break;
	}
}

void br_on_abort(Breaker *br)
{
	if (br->state == BR_HALF_OPEN)
		br->probe_inflight = false;
}

bool br_tick(Breaker *br, int64_t now_us)
{
	if (br->state == BR_OPEN && now_us >= br->opened_at_us + br->cooldown_us) {
		br->probe_inflight = false;
		change(br, BR_HALF_OPEN, "cooldown elapsed");
		return true;
	}
	return false;
}

int64_t br_half_open_at(const Breaker *br)
{
	return br->opened_at_us + br->cooldown_us;
}
