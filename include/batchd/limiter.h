/*
 * limiter.h - per-provider concurrency window: slow start, and an opt-in
 * adaptive limit (max_concurrency = auto) that follows the provider's
 * capacity from its errors and latency.  Pure: no loop, no allocation, no
 * clock of its own (every call takes now_us, a monotonic time).
 *
 * The caller (the provider gating) asks limiter_can_start() next to its
 * other gates, calls limiter_on_start() when a transfer starts and keeps
 * the ticket with the transfer, and hands the ticket back to
 * limiter_on_result() exactly once per started transfer, with the
 * classified answer (LIM_IGNORE for a transfer that says nothing about the
 * provider, e.g. cancelled at shutdown; it still leaves the window).
 *
 * Rules (batchd.ini(5), max_concurrency, says the same for users):
 *
 *  Slow start.  After limiter_init(), limiter_reset() (breaker closed
 *  again) and after LIMITER_IDLE_US with nothing in flight, the window is
 *  cfg.initial (at most cap) and grows by one per successful answer, so it
 *  doubles per round trip, up to cfg.cap (fixed) or the slow-start
 *  threshold (adaptive).  A success counts only when the window was at
 *  least half used at the start or the end of its request (a trickle
 *  does not open the window).  Each failure of a request started in
 *  slow start takes one off the window (floor 1), in both modes: a slot freed by a failure does not send another
 *  request, so a provider failing from the start receives at most
 *  cfg.initial requests before its breaker (threshold cfg.initial) opens.
 *  In fixed mode, after slow start, failures never move the window: the
 *  breaker deals with a failing provider.
 *  Doubling from 5 to 1000 takes 8 round trips and loses about 1.3 s of
 *  full-window throughput at 200 ms; with cfg.ss_jump (fixed mode) the loss
 *  is the first round trip only: a provider failing from the start still
 *  gets cfg.initial requests, one answering gets its full window after
 *  cfg.initial successes in a row.
 *
 *  Adaptive (cfg.adaptive).  Additive increase, multiplicative decrease:
 *   - LIM_OVERLOAD (429, 503, timeout): limit * LIMITER_MD_OVERLOAD (0.5);
 *   - LIM_TRANSIENT (other transient failures): limit * LIMITER_MD_TRANSIENT
 *     (0.9), mild because a transient failure is not necessarily load;
 *   - at most one decrease per round trip: after a decrease, answers to
 *     requests started before it are not counted again;
 *   - a round ends at the first answer to a request started after the
 *     round began, once the round holds LIMITER_ROUND_MIN (16) answers (so a
 *     round is one round trip, or more at a small window).  At the end of a
 *     round without failures, the mean latency of its successes is compared
 *     with the base latency: the lowest round mean over the last one or two
 *     LIMITER_BASE_WINDOW_US windows (so it is measured again every 10 to
 *     20 s).  Above base * LIMITER_QUEUE_RATIO (1.2) plus LIMITER_NOISE_SE (3)
 *     standard errors of the round's mean (the provider's jitter), the
 *     provider is queueing: the limit becomes what it serves at once, the
 *     requests in flight when the round's answers started times
 *     base / mean (Little's law), and at least limit * 0.5;
 *   - otherwise, once out of slow start and with the window at least half
 *     used, the limit grows by max(1, LIMITER_AI_SQRT * sqrt(limit)) per
 *     round (0.3 sqrt);
 *   - floor 1, ceiling cfg.cap.  The first decrease ends slow start.
 */
#ifndef BATCHD_LIMITER_H
#define BATCHD_LIMITER_H

#include <stdbool.h>
#include <stdint.h>

#define LIMITER_IDLE_US        (30 * 1000000LL) /* idle: slow start again */
#define LIMITER_BASE_WINDOW_US (10 * 1000000LL) /* base latency re-measured */
#define LIMITER_QUEUE_RATIO    1.2              /* mean/base above: queueing */
#define LIMITER_MD_OVERLOAD    0.5
#define LIMITER_MD_TRANSIENT   0.9
#define LIMITER_MD_QUEUE_MIN   0.5              /* latency decrease floor */
#define LIMITER_ROUND_MIN      16               /* answers in a round, at least */
#define LIMITER_NOISE_SE       3.0              /* standard errors of a round mean */
#define LIMITER_AI_SQRT        0.3              /* growth per round: 0.3 sqrt(limit) */
#define LIMITER_AUTO_CEILING   1000             /* auto without N: at most this */

enum LimiterResult {
	LIM_OK,           /* an answer the provider served: 2xx, 4xx, permanent */
	LIM_TRANSIENT,    /* transient failure: 5xx, connection error */
	LIM_OVERLOAD,     /* 429, 503, timeout */
	LIM_IGNORE,       /* no signal (cancelled, shut down); leaves the window */
};

enum LimiterPhase {
	LIM_SLOW_START,
	LIM_STEADY,
};

typedef struct LimiterConfig {
	int initial;      /* slow-start window: the breaker_failures threshold; >= 1 */
	int cap;          /* fixed: the window after slow start (max_concurrency,
	                     else the route's or the global max_inflight);
	                     adaptive: the ceiling (auto N, else
	                     min(max_inflight, LIMITER_AUTO_CEILING)); >= 1 */
	bool adaptive;    /* max_concurrency = auto */
	bool ss_jump;     /* fixed only: after cfg.initial successes in a row in
	                     slow start (the provider answers), the cap at once
	                     instead of doubling per round trip (see below) */
} LimiterConfig;

/* Kept with a transfer from limiter_on_start() to limiter_on_result(). */
typedef struct LimiterTicket {
	uint64_t seq;     /* start order */
	int64_t start_us;
	int inflight;     /* in flight before this one started */
	int window;       /* the window when it started */
	bool slow_start;  /* started in slow start */
} LimiterTicket;

typedef struct Limiter {
	LimiterConfig cfg;
	enum LimiterPhase phase;
	double limit;             /* the window, fractional for growth */
	double ssthresh;          /* slow start ends here */
	int inflight;             /* started, no result yet */
	uint64_t next_seq;
	uint64_t epoch_seq;       /* tickets before a reset only leave the window */
	uint64_t decrease_seq;    /* failures of earlier tickets do not decrease again */
	uint64_t round_seq;       /* the round ends at the first result of a ticket >= */
	int64_t last_active_us;   /* last start or result */
	/* the current round */
	int ss_streak;            /* successes in a row in slow start */
	int round_ok;
	double round_lat_sum;     /* microseconds, successes */
	double round_lat_sq_sum;  /* squares, for the jitter */
	double round_inflight_sum;/* ticket.inflight + 1, successes */
	int round_max_used;       /* most of the window used by a success */
	bool round_failed;
	/* base latency: lowest round mean, this window and the one before */
	double base_cur_us, base_prev_us; /* 0: none yet */
	int64_t base_window_us;   /* start of the current window */
	uint64_t decreases;       /* for metrics and tests */
} Limiter;

void limiter_init(Limiter *l, const LimiterConfig *cfg, int64_t now_us);
/* A reload that keeps the provider: new initial/cap/mode, the state kept
 * (the limit clamped to the new cap; a change of mode starts over). */
void limiter_configure(Limiter *l, const LimiterConfig *cfg, int64_t now_us);
/* Slow start again from cfg.initial (the breaker closed again).  Transfers
 * in flight still leave the window when their result comes, but say
 * nothing more. */
void limiter_reset(Limiter *l, int64_t now_us);

/* The window now (>= 1): after an idle period this is already the
 * slow-start window that limiter_on_start() will apply. */
int limiter_window(const Limiter *l, int64_t now_us);
/* inflight < window */
bool limiter_can_start(const Limiter *l, int64_t now_us);
LimiterTicket limiter_on_start(Limiter *l, int64_t now_us);
/* Exactly once per ticket; latency is now_us - t->start_us. */
void limiter_on_result(Limiter *l, int64_t now_us, const LimiterTicket *t,
		       enum LimiterResult r);

/* The current limit (rounded down, >= 1), for metrics and /v1/status. */
int limiter_limit(const Limiter *l);
/* The base latency in microseconds, 0 when not measured yet. */
int64_t limiter_base_latency_us(const Limiter *l);
const char *limiter_phase_name(enum LimiterPhase p);

#endif /* BATCHD_LIMITER_H */
