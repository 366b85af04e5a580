/*
 * claim.c - claim statements, resume and wake-up (see claim.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/claim.h"
#include "batchd/log.h"
#include "batchd/timer.h"

/* items one claim statement asks for at most (see claim_maybe) */
#define CLAIM_MAX 250
/* a claim starts from the head of the queue at least this often (ms) */
#define CLAIM_HEAD_MS 500
/*
 * The local queue follows the drain, not the slot count (claim_ahead not
 * set).  At the measured drain rate R (items claimed per second, over
 * windows of RATE_WINDOW_US), a claim asks for at least R x CLAIM_SPACING_US
 * (so at most about 1 / CLAIM_SPACING_US claims a second share the
 * statements and commits, whatever max_inflight is), and the items held
 * beyond max_inflight cover that plus two claim round trips at that rate,
 * so transfers never wait for a claim.  A lease therefore holds unstarted
 * items for about CLAIM_SPACING_US + 2 round trips of work: a slow or
 * rate-limited provider holds next to none beyond the configured floor,
 * and a fleet shares the queue as before; AHEAD_MAX bounds it at any rate.
 * A claim costs the database about 1 ms beyond its items (the function, its
 * pickers' planning, the commit): at 5,000 items/s (B2: 200 ms answers, 1,000
 * in flight) 30 ms instead of 15 took the DB CPU per item from 48-49 to
 * 43-44 us, with 75 more items held (0.1 MiB).
 */
#define CLAIM_SPACING_US 30000
#define AHEAD_MAX 1000

struct Claimer {
	Db *db;
	const char *worker_id;
	const ClaimHandlers *h;
	void *harg;
	int max_inflight;
	int64_t poll_interval_ms;

	bool inflight;            /* a claim statement is out */
	bool more_work;           /* the last claim was full, or we were woken */
	bool urgent;              /* woken by NOTIFY/poll: claim even a little */
	int asked;
	int landing;              /* rows of the last claim not yet handed over */
	unsigned wake_seq;
	unsigned asked_wake_seq;
	/* Where the next claim resumes (see claim_maybe): the priority and id of
	 * the last item of the last full claim, while resume_ok. */
	bool resume_ok;
	bool resumed;             /* the claim in flight resumes */
	int resume_priority;
	long long resume_id;
	int64_t head_claim_us;    /* monotonic start of the last claim from the head */
	uint64_t claimed;
	uint64_t statements;      /* claims that returned rows */
	/* the drain rate and the claim round trip (see CLAIM_SPACING_US) */
	int claim_ahead;          /* the floor (or the fixed value) */
	bool ahead_auto;
	int64_t sent_us;
	double rtt_us;            /* moving average of the claim's round trip */
	RateMeter rate;           /* items claimed per second */

	char *routes_param;       /* text[] literals for the claim */
	char *group_routes_param;
	char *group_conc_param;
	char *group_interval_param;
	char *batch_routes_param;   /* routes with batch_concurrency, and its values */
	char *batch_conc_param;
	bool have_groups;
	bool have_batch_slots;      /* a route has batch_concurrency: claim_items_shared */
	int64_t group_recheck_ms;
	struct event *group_timer;
	struct event *poll_timer;
};

/* items a claim asks for at least, unless woken or idle */
static int claim_threshold(const Claimer *c)
{
	int t = c->max_inflight / 20, r;

	if (t > 50)
		t = 50;
	if (c->ahead_auto) {
		r = (int)(c->rate.rate * CLAIM_SPACING_US / 1e6);
		if (r > t)
			t = r;
	}
	if (t > CLAIM_MAX)
		t = CLAIM_MAX;
	return t < 1 ? 1 : t;
}

int claim_ahead(const Claimer *c)
{
	double want;

	if (!c->ahead_auto)
		return c->claim_ahead;
	/* what arrives in one claim spacing plus two round trips */
	want = c->rate.rate * (CLAIM_SPACING_US + 2 * c->rtt_us) / 1e6;
	if (want > AHEAD_MAX)
		want = AHEAD_MAX;
	return want > c->claim_ahead ? (int)want : c->claim_ahead;
}

static void claim_done(PGresult *res, void *arg)
{
	Claimer *c = arg;
	int64_t now = now_monotonic_us();
	int n;

	c->inflight = false;
	if (!res)
		return;   /* reconnect will claim again */
	if (!db_result_ok(res)) {
		log_error("claim failed: %s", db_result_error(res));
		return;   /* the poll timer tries again */
	}
	n = PQntuples(res);
	c->claimed += (uint64_t)n;
	rate_meter_add(&c->rate, (uint64_t)n, now);
	if (n > 0) {
		c->statements++;
		double rtt = (double)(now - c->sent_us);

		/* a faster claim replaces the estimate, a slower one moves it by
		 * a fifth: the first claims of a connection are cold (function
		 * compilation, plans, caches: 100 ms and more under a sanitizer)
		 * and must not keep the local queue above its floor for seconds */
		c->rtt_us = c->rtt_us > 0 && rtt > c->rtt_us ? 0.8 * c->rtt_us + 0.2 * rtt : rtt;
	}
	if (n > 0)
		log_debug("claimed %d item(s)%s", n, c->resumed ? " (resumed)" : "");
	/* a full claim means there is probably more; so does a NOTIFY that
	 * arrived while the claim was running */
	c->more_work = n >= c->asked || c->wake_seq != c->asked_wake_seq;
	/* the next claim may resume after this one's last item only if this one
	 * was full and nothing was announced meanwhile (see claim_maybe) */
	c->resume_ok = false;
	if (PQnfields(res) >= 7 && n > 0 && n >= c->asked && c->wake_seq == c->asked_wake_seq) {
		c->resume_priority = atoi(PQgetvalue(res, n - 1, 6));
		c->resume_id = strtoll(PQgetvalue(res, n - 1, 0), NULL, 10);
		c->resume_ok = true;
	}
	if ((c->have_groups || c->have_batch_slots) && n < c->asked &&
	    !evtimer_pending(c->group_timer, NULL)) {
		/* group limits may have held items back: their spacing ends on its
		 * own, with no NOTIFY, so look again after the shortest interval;
		 * a batch slot freed by another worker announces nothing either */
		timer_arm_ms(c->group_timer, c->group_recheck_ms);
	}
	if (!c->h->active(c->harg)) {
		/* claimed during stop: deregister releases them, untouched */
		return;
	}
	/*
	 * Ask for the next ones before unpacking these: the database runs that
	 * claim while we parse payloads and start transfers (at a cold start,
	 * 1000 free slots fill in overlapping steps instead of one after the
	 * other).
	 */
	c->landing = n;
	claim_maybe(c);
	for (int i = 0; i < n; i++) {
		ClaimedItem it;

		c->landing--;
		it.id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
		it.batch_id = PQgetvalue(res, i, 1);
		it.route = PQgetvalue(res, i, 2);
		it.payload = PQgetvalue(res, i, 3);
		it.attempts = atoi(PQgetvalue(res, i, 4));
		it.max_attempts = atoi(PQgetvalue(res, i, 5));
		c->h->item(&it, c->harg);
	}
	c->h->done(c->harg);
	claim_maybe(c);
}

void claim_maybe(Claimer *c)
{
	int cap, threshold;
	char limit[16];
	const char *params[6];
	bool resumed;
	int rc;

	if (c->inflight || !c->more_work || !c->h->active(c->harg))
		return;
	rate_meter_rate(&c->rate, now_monotonic_us());
	cap = c->h->capacity(c->harg);
	if (cap <= CLAIM_BLOCKED)
		return;
	cap += claim_ahead(c) - c->landing;
	if (cap <= 0)
		return;
	/* batch small claims unless woken up or idle */
	threshold = claim_threshold(c);
	if (cap < threshold && !c->urgent && c->h->held(c->harg) > 0)
		return;
	/*
	 * At most CLAIM_MAX a statement: at a cold start (1000 free slots)
	 * the first items go out while the next claim runs in the database,
	 * instead of after one long claim and a thousand connects in a row.
	 */
	if (cap > CLAIM_MAX)
		cap = CLAIM_MAX;
	snprintf(limit, sizeof(limit), "%d", cap);
	params[0] = c->worker_id;
	params[1] = c->routes_param;
	params[2] = limit;
	resumed = false;
	if (c->have_batch_slots) {
		/*
		 * Batch slots (sql/functions/claim.sql): the limited routes from at
		 * most batch_concurrency batches at once, fleet-wide, shared between
		 * them; the others as below.  Routes without batch_concurrency
		 * never take this path: theirs is the claim below, unchanged.
		 */
		const char *p8[8] = { c->worker_id, c->routes_param, limit, c->batch_routes_param,
				      c->batch_conc_param, c->group_routes_param,
				      c->group_conc_param, c->group_interval_param };

		rc = db_query(c->db, "SELECT id, batch_id, route, payload, attempts, max_attempts "
			      "FROM batchd.claim_items_shared($1::uuid, $2::text[], $3::int, "
			      "$4::text[], $5::int[], $6::text[], $7::int[], $8::float8[])",
			      8, p8, claim_done, c);
	} else if (c->have_groups) {
		/* routes with per-group limits are enforced in the claim, fleet-wide */
		params[3] = c->group_routes_param;
		params[4] = c->group_conc_param;
		params[5] = c->group_interval_param;
		rc = db_query(c->db, "SELECT id, batch_id, route, payload, attempts, max_attempts "
			      "FROM batchd.claim_items($1::uuid, $2::text[], $3::int, $4::text[], "
			      "$5::int[], $6::float8[])", 6, params, claim_done, c);
	} else {
		/*
		 * Resume after the last item of the previous claim while claims
		 * come back full: a claim from the head steps over the dead index
		 * entries of everything claimed since the last vacuum (sql/010).
		 * From the head after a NOTIFY (new batches, released or retried
		 * items: claim_wake clears resume_ok), after a short claim, and at
		 * least every CLAIM_HEAD_MS for requeued items whose run_after
		 * passed, which announce nothing.
		 */
		char prio[16], after[24];
		int64_t now = now_monotonic_us();

		if (c->resume_ok && now - c->head_claim_us < CLAIM_HEAD_MS * 1000) {
			snprintf(prio, sizeof(prio), "%d", c->resume_priority);
			snprintf(after, sizeof(after), "%lld", c->resume_id);
			params[3] = prio;
			params[4] = after;
			resumed = true;
		} else {
			params[3] = NULL;
			params[4] = NULL;
		}
		rc = db_query(c->db, "SELECT id, batch_id, route, payload, attempts, max_attempts, "
			      "priority FROM batchd.claim_items($1::uuid, $2::text[], "
			      "$3::int, $4::int, $5::bigint)", 5, params, claim_done, c);
		if (rc >= 0 && !resumed)
			c->head_claim_us = now;
	}
	if (rc < 0)
		return;
	c->resumed = resumed;
	c->inflight = true;
	c->sent_us = now_monotonic_us();
	c->asked = cap;
	c->asked_wake_seq = c->wake_seq;
	c->urgent = false;
}

void claim_more(Claimer *c)
{
	c->more_work = true;
	claim_maybe(c);
}

void claim_wake(Claimer *c)
{
	c->more_work = true;
	c->urgent = true;
	c->resume_ok = false;   /* something may be ahead: claim from the head */
	c->wake_seq++;
	claim_maybe(c);
}

static void group_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	claim_more(arg);
}

static void poll_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	Claimer *c = arg;
	/* safety net: NOTIFYs can be lost (reconnects) and run_after passes */
	claim_wake(c);
	timer_arm_ms(c->poll_timer, c->poll_interval_ms);
}

static char *array_close(StrBuf *sb)
{
	char *s;
	sb_putc(sb, '}');
	s = sb_steal(sb);
	sb_free(sb);
	return s;
}

void claim_configure(Claimer *c, const Config *cfg)
{
	StrBuf r, gr, gc, gi, br, bc;

	c->max_inflight = cfg->max_inflight;
	c->claim_ahead = cfg->claim_ahead;
	c->ahead_auto = cfg->claim_ahead_auto;
	c->poll_interval_ms = cfg->poll_interval_ms;
	sb_init(&r);
	sb_init(&gr);
	sb_init(&gc);
	sb_init(&gi);
	sb_putc(&r, '{');
	sb_putc(&gr, '{');
	sb_putc(&gc, '{');
	sb_putc(&gi, '{');
	sb_init(&br);
	sb_init(&bc);
	sb_putc(&br, '{');
	sb_putc(&bc, '{');
	c->have_groups = false;
	c->have_batch_slots = false;
	c->group_recheck_ms = 1000;   /* concurrency-only: slots freed elsewhere */
	for (int i = 0; i < cfg->nroutes; i++) {
		const Route *rt = cfg->routes[i];
		sb_put_array_text(&r, rt->name);
		if (rt->batch_concurrency > 0) {
			sb_put_array_text(&br, rt->name);
			sb_printf(&bc, "%s%d", c->have_batch_slots ? "," : "", rt->batch_concurrency);
			c->have_batch_slots = true;
		}
		if (rt->group_concurrency > 0 || rt->group_rate > 0) {
			sb_put_array_text(&gr, rt->name);
			sb_printf(&gc, "%s%d", c->have_groups ? "," : "", rt->group_concurrency);
			sb_printf(&gi, "%s%.3f", c->have_groups ? "," : "",
				  rt->group_rate > 0 ? 1000.0 / rt->group_rate : 0.0);
			if (rt->group_rate > 0 && 1000.0 / rt->group_rate < c->group_recheck_ms)
				c->group_recheck_ms = (int64_t)(1000.0 / rt->group_rate);
			if (c->group_recheck_ms < 20)
				c->group_recheck_ms = 20;
			c->have_groups = true;
		}
	}
	free(c->routes_param);
	free(c->group_routes_param);
	free(c->group_conc_param);
	free(c->group_interval_param);
	free(c->batch_routes_param);
	free(c->batch_conc_param);
	c->routes_param = array_close(&r);
	c->batch_routes_param = array_close(&br);
	c->batch_conc_param = array_close(&bc);
	c->group_routes_param = array_close(&gr);
	c->group_conc_param = array_close(&gc);
	c->group_interval_param = array_close(&gi);
	c->resume_ok = false;   /* routes may have changed: next claim from the head */
}

Claimer *claim_new(struct event_base *base, Db *db, const char *worker_id, const Config *cfg,
		   const ClaimHandlers *h, void *arg)
{
	Claimer *c = xcalloc(1, sizeof(*c));

	c->db = db;
	c->worker_id = worker_id;
	c->h = h;
	c->harg = arg;
	c->group_timer = evtimer_new(base, group_timer_cb, c);
	c->poll_timer = evtimer_new(base, poll_timer_cb, c);
	claim_configure(c, cfg);
	return c;
}

void claim_free(Claimer *c)
{
	if (!c)
		return;
	event_free(c->group_timer);
	event_free(c->poll_timer);
	free(c->routes_param);
	free(c->group_routes_param);
	free(c->group_conc_param);
	free(c->group_interval_param);
	free(c->batch_routes_param);
	free(c->batch_conc_param);
	free(c);
}

void claim_start(Claimer *c)
{
	timer_arm_ms(c->poll_timer, c->poll_interval_ms);
}

void claim_stop(Claimer *c)
{
	evtimer_del(c->poll_timer);
	evtimer_del(c->group_timer);
}

void claim_reset(Claimer *c)
{
	c->inflight = false;
	c->resume_ok = false;
}

bool claim_has_groups(const Claimer *c)
{
	return c->have_groups;
}

bool claim_has_batch_slots(const Claimer *c)
{
	return c->have_batch_slots;
}

const char *claim_routes_param(const Claimer *c)
{
	return c->routes_param;
}

uint64_t claim_statements(const Claimer *c)
{
	return c->statements;
}

uint64_t claim_claimed(const Claimer *c)
{
	return c->claimed;
}
