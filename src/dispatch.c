/*
 * dispatch.c - send each claimed item to a provider, politely and robustly.
 *
 * For an item on route R with providers p0, p1, ... the dispatcher
 *   1. takes the item's current provider (p0 at first); if its breaker does
 *      not admit (OPEN, or HALF_OPEN with the probe out) it fails over to the
 *      next provider whose breaker admits; when none does, the item goes
 *      back to the queue with run_after at the earliest half-open time and
 *      no attempt spent;
 *   2. waits in that provider's FIFO while the provider is paused by a
 *      Retry-After, at its max_concurrency, or out of tokens (one timer per
 *      provider, set to the exact time a token or the pause ends);
 *   3. starts the transfer.
 * When a transfer ends the outcome decides: success records the item;
 * a transient failure is retried on the same provider after a jittered
 * exponential backoff (a long wait requeues the item in the database
 * instead of holding it), and once the provider's retries are spent the
 * item fails over to the next provider or fails; a permanent failure fails
 * the item, or fails over with failover_on_permanent.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "batchd/engine_int.h"
#include "batchd/json.h"
#include "batchd/log.h"
#include "batchd/tmpl.h"

const double lat_bucket_le[LAT_BUCKETS] = {
	0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
};

#define RETRY_AFTER_MAX_MS (3600 * 1000LL)

static void ps_wake(ProvState *ps);
static Job *q_pop(ProvState *ps);
static void job_outcome(Engine *e, Job *j, enum Outcome out, long status, const char *error);

/* ------------------------------------------------------------- utilities */

static void arm_us(struct event *ev, int64_t us)
{
	struct timeval tv;
	if (us < 0)
		us = 0;
	tv.tv_sec = (time_t)(us / 1000000);
	tv.tv_usec = (suseconds_t)(us % 1000000);
	evtimer_add(ev, &tv);
}

static void set_last_error(Job *j, const char *err, long status)
{
	free(j->last_error);
	j->last_error = err ? xstrdup(err) : NULL;
	j->last_status = status;
}

/* Count a request in the one-second ring used for status "recent rate". */
static void sec_count(ProvState *ps, bool error)
{
	int64_t sec = now_monotonic_us() / 1000000;
	int slot = (int)(sec % PROVIDER_HISTORY_S);
	if (ps->sec_stamp[slot] != sec) {
		ps->sec_stamp[slot] = sec;
		ps->sec_req[slot] = 0;
		ps->sec_err[slot] = 0;
	}
	ps->sec_req[slot]++;
	if (error)
		ps->sec_err[slot]++;
}

/* ---------------------------------------------------------- provider state */

static void breaker_changed(Breaker *br, enum BreakerState from, enum BreakerState to,
			    const char *reason, void *arg)
{
	ProvState *ps = arg;
	LogCtx ctx = { NULL, 0, ps->name, NULL };

	log_ctx(LG_WARN, &ctx, "provider %s: circuit breaker %s -> %s (%s)", ps->name,
		br_state_name(from), br_state_name(to), reason);
	if (to == BR_OPEN) {
		evtimer_del(ps->br_timer);
		arm_us(ps->br_timer, br_half_open_at(br) - now_monotonic_us());
		/* items waiting here move on to the next provider now */
		ps_wake(ps);
	}
}

static void br_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	ProvState *ps = arg;
	int64_t now = now_monotonic_us();

	if (br_tick(&ps->br, now)) {
		ps_wake(ps);
	} else if (ps->br.state == BR_OPEN) {
		/* libevent's clock may fire a few ms early: wait out the rest */
		int64_t left = br_half_open_at(&ps->br) - now;
		arm_us(ps->br_timer, left > 1000 ? left : 1000);
	}
}

static void wake_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	ps_wake(arg);
}

static double effective_rate(const ProvState *ps)
{
	return ps->cfg->rate * ps->share;
}

static ProvState *ps_new(Engine *e, Provider *p)
{
	ProvState *ps = xcalloc(1, sizeof(*ps));
	int64_t now = now_monotonic_us();

	ps->e = e;
	ps->name = xstrdup(p->name);
	ps->cfg = p;
	ps->share = 1.0;
	tb_init(&ps->tb, effective_rate(ps), p->burst, now);
	br_init(&ps->br, p->breaker_failures, p->breaker_cooldown_ms * 1000, breaker_changed, ps);
	ps->wake_timer = evtimer_new(e->bd->base, wake_timer_cb, ps);
	ps->br_timer = evtimer_new(e->bd->base, br_timer_cb, ps);
	return ps;
}

static void ps_pool_clear(ProvState *ps);

static void ps_free(ProvState *ps)
{
	ps_pool_clear(ps);
	free(ps->pool);
	event_free(ps->wake_timer);
	event_free(ps->br_timer);
	free(ps->name);
	free(ps);
}

void dispatch_init(Engine *e)
{
	e->nprovs = e->cfg->nproviders;
	e->provs = xcalloc((size_t)e->nprovs + 1, sizeof(ProvState *));
	for (int i = 0; i < e->nprovs; i++)
		e->provs[i] = ps_new(e, e->cfg->providers[i]);
	e->route_stats = xcalloc((size_t)e->cfg->nroutes + 1, sizeof(RouteStats));
	for (int i = 0; i < e->cfg->nroutes; i++)
		e->route_stats[i].queue_depth = -1;
}

void dispatch_free(Engine *e)
{
	for (int i = 0; i < e->nprovs; i++)
		ps_free(e->provs[i]);
	free(e->provs);
	free(e->route_stats);
	e->provs = NULL;
	e->nprovs = 0;
}

bool engine_provider_stats(Engine *e, const char *name, ProviderStats *out)
{
	ProvState *ps = dispatch_find(e, name);
	int64_t now = now_monotonic_us(), sec = now / 1000000;
	uint64_t req = 0, err = 0;

	if (!ps || ps->removed)
		return false;
	memset(out, 0, sizeof(*out));
	br_tick(&ps->br, now);
	out->breaker_state = br_state_name(ps->br.state);
	out->half_open_in_ms = ps->br.state == BR_OPEN ?
		(br_half_open_at(&ps->br) - now) / 1000 : -1;
	if (out->half_open_in_ms < -1)
		out->half_open_in_ms = 0;
	out->failures = ps->br.failures;
	out->tokens = tb_available(&ps->tb, now);
	out->rate_share = ps->tb.rate;
	out->inflight = ps->inflight;
	out->queued = ps->nqueued;
	out->paused_ms = ps->paused_until > now ? (ps->paused_until - now) / 1000 : 0;
	out->requests = ps->requests;
	for (int k = 0; k < PROVIDER_HISTORY_S; k++) {
		int64_t s = sec - (PROVIDER_HISTORY_S - 1) + k;
		int slot = (int)(s % PROVIDER_HISTORY_S);
		uint32_t n = ps->sec_stamp[slot] == s ? ps->sec_req[slot] : 0;
		out->per_second[k] = n;
		if (k >= PROVIDER_HISTORY_S - 60) {
			req += n;
			err += ps->sec_stamp[slot] == s ? ps->sec_err[slot] : 0;
		}
	}
	out->req_per_s = (double)req / 60.0;
	out->error_ratio = req ? (double)err / (double)req : 0.0;
	return true;
}

ProvState *dispatch_find(Engine *e, const char *name)
{
	for (int i = 0; i < e->nprovs; i++)
		if (strcmp(e->provs[i]->name, name) == 0)
			return e->provs[i];
	return NULL;
}

/* The live provider state for a route's idx-th provider; NULL when the
 * provider was removed by a reload (the item then skips it). */
static ProvState *route_ps(Engine *e, const Route *r, int idx)
{
	ProvState *ps = dispatch_find(e, r->providers[idx]->name);
	return ps && !ps->removed ? ps : NULL;
}

/* SIGHUP: new limits for existing providers (breaker state kept), states
 * for new ones; removed ones stop taking work. */
void dispatch_reload(Engine *e, Config *nc)
{
	int64_t now = now_monotonic_us();
	int n = e->nprovs;

	for (int i = 0; i < n; i++) {
		ProvState *ps = e->provs[i];
		Provider *np = config_find_provider(nc, ps->name);
		if (np) {
			int burst = (int)ceil((double)np->burst * ps->share);
			ps->cfg = np;
			ps->gen++;         /* pooled handles carry the old section */
			ps_pool_clear(ps);
			ps->removed = false;
			tb_configure(&ps->tb, np->rate * ps->share, burst < 1 ? 1 : burst, now);
			br_configure(&ps->br, np->breaker_failures, np->breaker_cooldown_ms * 1000);
		} else if (!ps->removed) {
			log_warn("provider %s removed by reload; its waiting items move on", ps->name);
			ps->removed = true;
			ps_pool_clear(ps);
		}
	}
	for (int i = 0; i < nc->nproviders; i++) {
		if (dispatch_find(e, nc->providers[i]->name))
			continue;
		e->provs = xrealloc(e->provs, (size_t)(e->nprovs + 2) * sizeof(ProvState *));
		e->provs[e->nprovs++] = ps_new(e, nc->providers[i]);
		e->provs[e->nprovs] = NULL;
	}
	/* route counters follow the routes by name */
	{
		RouteStats *rs = xcalloc((size_t)nc->nroutes + 1, sizeof(RouteStats));
		for (int i = 0; i < nc->nroutes; i++) {
			rs[i].queue_depth = -1;
			for (int k = 0; k < e->cfg->nroutes; k++)
				if (strcmp(e->cfg->routes[k]->name, nc->routes[i]->name) == 0)
					rs[i] = e->route_stats[k];
		}
		free(e->route_stats);
		e->route_stats = rs;
	}
}

/* After the config switch: wake every provider (new limits, removed ones
 * hand their queue on). */
void dispatch_wake_all(Engine *e)
{
	for (int i = 0; i < e->nprovs; i++) {
		ProvState *ps = e->provs[i];
		if (ps->removed) {
			Job *j;
			while ((j = q_pop(ps)) != NULL)
				dispatch_route(e, j);
		} else {
			ps_wake(ps);
		}
	}
}

static void q_push(ProvState *ps, Job *j)
{
	j->qnext = NULL;
	if (ps->qtail)
		ps->qtail->qnext = j;
	else
		ps->qhead = j;
	ps->qtail = j;
	ps->nqueued++;
	j->state = JOB_QUEUED;
	j->ps = ps;
	j->queued_mono = now_monotonic_us();
}

static Job *q_pop(ProvState *ps)
{
	Job *j = ps->qhead;
	if (!j)
		return NULL;
	ps->qhead = j->qnext;
	if (!ps->qhead)
		ps->qtail = NULL;
	j->qnext = NULL;
	ps->nqueued--;
	ps->wait_seconds += (double)(now_monotonic_us() - j->queued_mono) / 1e6;
	return j;
}

/* Remove a specific job from its provider queue (abort path). */
static void q_remove(ProvState *ps, Job *j)
{
	Job **pp = &ps->qhead;
	Job *prev = NULL;
	while (*pp && *pp != j) {
		prev = *pp;
		pp = &(*pp)->qnext;
	}
	if (!*pp)
		return;
	*pp = j->qnext;
	if (ps->qtail == j)
		ps->qtail = prev;
	j->qnext = NULL;
	ps->nqueued--;
}

/*
 * Can a request to ps start now?  When not, *wait_us says when to look
 * again (-1: when a running transfer ends).  Takes the token on yes.
 */
static bool ps_can_start(ProvState *ps, int64_t now, int64_t *wait_us)
{
	const Provider *p = ps->cfg;

	if (ps->paused_until > now) {
		*wait_us = ps->paused_until - now;
		return false;
	}
	if (p->max_concurrency > 0 && ps->inflight >= p->max_concurrency) {
		*wait_us = -1;
		return false;
	}
	if (ps->e->ntransfers >= ps->e->cfg->max_inflight) {
		/* the claim_ahead items wait here for a transfer to end */
		ps->e->transfers_full = true;
		*wait_us = -1;
		return false;
	}
	if (!tb_take(&ps->tb, now)) {
		*wait_us = tb_wait_us(&ps->tb, now);
		if (*wait_us < 1)
			*wait_us = 1;
		return false;
	}
	return true;
}

/* ---------------------------------------------------------------- transfers */

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
	Job *j = ud;
	size_t n = size * nmemb;

	if ((int64_t)(j->resp.len + n) > j->max_size) {
		j->too_big = true;
		return 0;  /* CURLE_WRITE_ERROR */
	}
	sb_append(&j->resp, ptr, n);
	return n;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *ud)
{
	Job *j = ud;
	size_t n = size * nitems;
	static const char name[] = "retry-after:";

	if (n > sizeof(name) - 1 && strncasecmp(buf, name, sizeof(name) - 1) == 0) {
		size_t off = sizeof(name) - 1, len;
		while (off < n && (buf[off] == ' ' || buf[off] == '\t'))
			off++;
		len = n - off;
		while (len > 0 && (buf[off + len - 1] == '\r' || buf[off + len - 1] == '\n' ||
				   buf[off + len - 1] == ' '))
			len--;
		if (len >= sizeof(j->retry_after))
			len = sizeof(j->retry_after) - 1;
		memcpy(j->retry_after, buf + off, len);
		j->retry_after[len] = '\0';
	}
	return n;
}

static bool has_header(const Provider *p, const char *name)
{
	size_t n = strlen(name);
	for (int i = 0; i < p->nheaders; i++)
		if (strncasecmp(p->headers[i], name, n) == 0 && p->headers[i][n] == ':')
			return true;
	return false;
}

/* ------------------------------------------------------ easy-handle pool */

/*
 * Each provider keeps the easy handles of its finished transfers, set up
 * with what is the same for every request to it (method, timeouts, limits,
 * callbacks, proxy choice): the next transfer sets only what
 * differs per item (URL, headers, body, its own pointers).  A reset and
 * twenty setopts per request were a measurable share of batchd's CPU per
 * item.  A reload gives the provider a new section and a new generation:
 * handles of an older one are dropped, never reused.
 */
#define PS_POOL_MAX 4096

static bool proxy_env_checked, proxy_env_set;

/* curl reads these on every transfer (several getenv scans each); when
 * none is set we tell it so once, on the handle, with the same effect. */
static bool proxy_from_env(void)
{
	static const char *const vars[] = {
		"http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
		"no_proxy", "NO_PROXY",
	};

	if (!proxy_env_checked) {
		proxy_env_checked = true;
		for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
			if (getenv(vars[i]))
				proxy_env_set = true;
	}
	return proxy_env_set;
}

static bool is_method(const Provider *p, const char *m)
{
	return strcmp(p->method, m) == 0;
}

static CURL *easy_new(const Provider *p)
{
	CURL *c = curl_easy_init();

	if (!c)
		fatal("curl_easy_init failed");
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)p->timeout_ms);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)p->connect_timeout_ms);
	curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)p->max_response_size);
	curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, "");
	curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
	/* 16 KiB by default, per transfer: with 1000 in flight that is most of
	 * the heap; small answers are the norm, big ones just take more reads */
	curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 4096L);
	/* User-Agent and Accept-Encoding go in the header list (job_headers) */
	if (!proxy_from_env()) {
		curl_easy_setopt(c, CURLOPT_PROXY, "");
		curl_easy_setopt(c, CURLOPT_NOPROXY, "");
	}
	if (is_method(p, "GET"))
		curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
	else
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, p->method);
	return c;
}

static CURL *ps_easy_get(ProvState *ps)
{
	if (ps->npool > 0)
		return ps->pool[--ps->npool];
	return easy_new(ps->cfg);
}

static void ps_easy_put(ProvState *ps, CURL *c, uint64_t gen)
{
	/* the job, its error buffer and its header list go away now */
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
	if (gen != ps->gen || ps->removed || ps->npool >= PS_POOL_MAX) {
		curl_easy_cleanup(c);
		return;
	}
	if (ps->npool == ps->pool_cap) {
		ps->pool_cap = ps->pool_cap ? ps->pool_cap * 2 : 16;
		ps->pool = xrealloc(ps->pool, (size_t)ps->pool_cap * sizeof(CURL *));
	}
	ps->pool[ps->npool++] = c;
}

static void ps_pool_clear(ProvState *ps)
{
	while (ps->npool > 0)
		curl_easy_cleanup(ps->pool[--ps->npool]);
}

void dispatch_job_release(Engine *e, Job *j)
{
	if (j->easy) {
		ps_easy_put(j->easy_ps, j->easy, j->easy_gen);
		j->easy = NULL;
		j->easy_ps = NULL;
	}
	j->headers = NULL;   /* its nodes and text are the job's, reused */
	sb_reset(&j->url);
	sb_reset(&j->body);
	sb_reset(&j->resp);
	j->too_big = false;
	j->retry_after[0] = '\0';
	j->errbuf[0] = '\0';
}

/*
 * "Accept-Encoding: <what this libcurl decodes>", the header curl itself
 * would send for CURLOPT_ACCEPT_ENCODING "" (its list: deflate and gzip with
 * zlib, br with brotli, zstd with zstd), or NULL when it decodes nothing.
 * We send it as our own header, so curl skips building it per request (one
 * aprintf, then a second pass through its printf into the request); the
 * handle keeps CURLOPT_ACCEPT_ENCODING "" so that answers are decoded.
 */
static const char *accept_encoding_header(void)
{
	static char hdr[96];
	static bool done;

	if (!done) {
		const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
		StrBuf sb;

		done = true;
		sb_init(&sb);
		if (v->features & CURL_VERSION_LIBZ)
			sb_puts(&sb, ", deflate, gzip");
		if (v->features & CURL_VERSION_BROTLI)
			sb_puts(&sb, ", br");
		if (v->features & CURL_VERSION_ZSTD)
			sb_puts(&sb, ", zstd");
		if (sb.len > 0)
			snprintf(hdr, sizeof(hdr), "Accept-Encoding: %s", sb.data + 2);
		sb_free(&sb);
	}
	return hdr[0] ? hdr : NULL;
}

#define USER_AGENT_HEADER "User-Agent: batchd/" PACKAGE_VERSION

/*
 * The request's header list: the provider's headers (templates rendered),
 * the idempotency key, Content-Type, User-Agent and Accept-Encoding unless
 * the provider sets them, and "Expect:" (no 100-continue round trip on
 * larger bodies). Built in the job's own nodes and text buffer, kept from
 * one try to the next: no allocation per header. curl reads the list during
 * the transfer only; the job outlives its transfer.
 */
static int job_headers(Job *j, const Provider *p, char *err, size_t errlen)
{
	const char *fixed[4], *ae = accept_encoding_header();
	size_t small[16], *offs = small;
	int nfixed = 0, ndyn = 0, n, rc = -1;

	sb_reset(&j->hbuf);
	if (p->nheaders + 1 > (int)(sizeof(small) / sizeof(small[0])))
		offs = xcalloc((size_t)p->nheaders + 1, sizeof(*offs));
	for (int i = 0; i < p->nheaders; i++) {
		offs[ndyn++] = j->hbuf.len;
		if (tmpl_render(p->headers[i], j->payload, TMPL_HEADER, &j->hbuf, err, errlen) < 0)
			goto fail;
		sb_putc(&j->hbuf, '\0');
	}
	if (p->idempotency_header) {
		/* stable for the item across tries, providers and workers */
		offs[ndyn++] = j->hbuf.len;
		sb_puts(&j->hbuf, p->idempotency_header);
		sb_puts(&j->hbuf, ": ");
		sb_puts(&j->hbuf, j->batch_id);
		sb_putc(&j->hbuf, '-');
		sb_put_i64(&j->hbuf, j->id);
		sb_putc(&j->hbuf, '\0');
	}
	if (j->body.len > 0 && !has_header(p, "Content-Type"))
		fixed[nfixed++] = "Content-Type: application/json";
	if (!has_header(p, "User-Agent"))
		fixed[nfixed++] = USER_AGENT_HEADER;
	if (!has_header(p, "Accept-Encoding") && ae)
		fixed[nfixed++] = ae;
	fixed[nfixed++] = "Expect:";

	n = ndyn + nfixed;
	if (n > j->hnodes_cap) {
		j->hnodes = xrealloc(j->hnodes, (size_t)n * sizeof(*j->hnodes));
		j->hnodes_cap = n;
	}
	/* the text buffer is complete: pointers into it stay put */
	for (int i = 0; i < ndyn; i++)
		j->hnodes[i].data = j->hbuf.data + offs[i];
	for (int i = 0; i < nfixed; i++)
		j->hnodes[ndyn + i].data = (char *)fixed[i];
	for (int i = 0; i < n; i++)
		j->hnodes[i].next = i + 1 < n ? &j->hnodes[i + 1] : NULL;
	j->headers = &j->hnodes[0];
	rc = 0;
fail:
	if (offs != small)
		free(offs);
	return rc;
}

static int job_prepare(Engine *e, Job *j, ProvState *ps, char *err, size_t errlen)
{
	const Provider *p = ps->cfg;
	CURL *c;

	dispatch_job_release(e, j);
	if (tmpl_render(p->url, j->payload, TMPL_URL, &j->url, err, errlen) < 0)
		return -1;
	if (p->body) {
		if (tmpl_render(p->body, j->payload, TMPL_JSON, &j->body, err, errlen) < 0)
			return -1;
	} else if (!is_method(p, "GET") && !is_method(p, "DELETE")) {
		sb_puts(&j->body, j->payload_text);
	}
	if (job_headers(j, p, err, errlen) < 0)
		return -1;

	c = j->easy = ps_easy_get(ps);
	j->easy_ps = ps;
	j->easy_gen = ps->gen;
	curl_easy_setopt(c, CURLOPT_URL, j->url.data);
	curl_easy_setopt(c, CURLOPT_PRIVATE, j);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, j->errbuf);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, j);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, j);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, j->headers);
	if (!is_method(p, "GET")) {
		if (j->body.len > 0 || !is_method(p, "DELETE")) {
			curl_easy_setopt(c, CURLOPT_POSTFIELDS, j->body.data ? j->body.data : "");
			curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)j->body.len);
		} else {
			/* a DELETE without a body: no POST state left from the last use
			 * (CURLOPT_CUSTOMREQUEST stays) */
			curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
		}
	}
	j->max_size = p->max_response_size;
	return 0;
}

/* Start the transfer for j on ps (a token has been taken). */
static void ps_start(ProvState *ps, Job *j)
{
	Engine *e = ps->e;
	char err[512];

	j->ps = ps;
	j->tries++;
	j->tries_by[j->pidx]++;
	if (job_prepare(e, j, ps, err, sizeof(err)) < 0) {
		/* the request cannot even be built from this payload */
		job_outcome(e, j, OUT_PERMANENT, 0, err);
		return;
	}
	if (!j->started_us)
		j->started_us = now_realtime_us();
	j->try_started_mono = now_monotonic_us();
	br_on_start(&ps->br);
	j->http_shard = http_start(e->http, j->easy);
	if (j->http_shard < 0) {
		br_on_abort(&ps->br);
		job_outcome(e, j, OUT_TRANSIENT, 0, "could not start the transfer");
		return;
	}
	j->state = JOB_RUNNING;
	ps->inflight++;
	e->ntransfers++;
	ps->requests++;
	if (log_get_level() >= LG_DEBUG) {
		/* no query string in logs: it may carry an API key */
		LogCtx ctx = { j->batch_id, j->id, ps->name, j->route->name };
		int pathlen = (int)strcspn(j->url.data, "?");
		log_ctx(LG_DEBUG, &ctx, "item %lld -> %s (try %d): %s %.*s%s", (long long)j->id,
			ps->name, j->tries, ps->cfg->method, pathlen, j->url.data,
			j->url.data[pathlen] ? "?..." : "");
	}
}

/* Let waiting jobs go as far as the provider allows. */
static void ps_wake(ProvState *ps)
{
	int64_t now = now_monotonic_us();
	int64_t wait;

	evtimer_del(ps->wake_timer);
	br_tick(&ps->br, now);
	if (ps->qhead && !engine_lease_ok(ps->e)) {
		/* not sure the items are still ours: ask first (its answer wakes us) */
		engine_check_lease(ps->e);
		return;
	}
	while (ps->qhead) {
		if (!ps->removed && ps->br.state == BR_HALF_OPEN && ps->br.probe_inflight)
			return;   /* the probe's outcome decides; its end wakes us */
		if (ps->removed || !br_admits(&ps->br)) {
			/* breaker open (or probe out): everybody here moves on */
			Job *j = q_pop(ps);
			dispatch_route(ps->e, j);
			continue;
		}
		if (!ps_can_start(ps, now, &wait)) {
			if (wait >= 0)
				arm_us(ps->wake_timer, wait);
			return;
		}
		ps_start(ps, q_pop(ps));
	}
}

/* ----------------------------------------------------------------- routing */

/*
 * Route j to a provider: the current one if its breaker admits, else the
 * next that does; none -> back to the queue until the earliest half-open.
 */
void dispatch_route(Engine *e, Job *j)
{
	const Route *r = j->route;
	int64_t now = now_monotonic_us();
	int64_t wait;
	ProvState *ps = NULL;
	int k;

	if (e->stop != STOP_NONE) {
		/* stopping: start nothing new; deregister puts the item back */
		engine_job_done(e, j);
		return;
	}
	for (k = j->pidx; k < r->nproviders; k++) {
		ProvState *cand = route_ps(e, r, k);
		if (cand)
			br_tick(&cand->br, now);   /* cooldown over: half-open now */
		if (cand && br_admits(&cand->br)) {
			ps = cand;
			break;
		}
	}
	if (!ps) {
		/* a probe is out: wait here for its outcome rather than defer */
		for (k = j->pidx; k < r->nproviders; k++) {
			ProvState *cand = route_ps(e, r, k);
			if (cand && cand->br.state == BR_HALF_OPEN) {
				if (k != j->pidx) {
					j->pidx = k;
					j->tries = 0;
				}
				q_push(cand, j);
				return;
			}
		}
	}
	if (!ps) {
		int64_t earliest = INT64_MAX;
		char why[256];
		for (k = j->pidx; k < r->nproviders; k++) {
			ProvState *cand = route_ps(e, r, k);
			int64_t at;
			if (!cand)
				continue;
			at = cand->br.state == BR_OPEN ? br_half_open_at(&cand->br) :
				now + cand->cfg->breaker_cooldown_ms * 1000;
			if (at < earliest)
				earliest = at;
		}
		if (earliest == INT64_MAX) {
			/* every provider of the route is gone (reload): try again later */
			earliest = now + 60 * 1000000LL;
		}
		snprintf(why, sizeof(why), "every provider of route %s has its circuit breaker open",
			 r->name);
		/* no attempt spent: the item never reached a provider */
		engine_defer(e, j, (earliest - now) / 1000 + 1, why);
		return;
	}
	if (k != j->pidx) {
		ProvState *from = route_ps(e, r, j->pidx);
		LogCtx ctx = { j->batch_id, j->id, ps->name, r->name };
		log_ctx(LG_INFO, &ctx, "item %lld: failing over from %s to %s (breaker)",
			(long long)j->id, r->providers[j->pidx]->name, ps->name);
		if (from)
			from->failovers_from++;
		j->pidx = k;
		j->tries = 0;
	}
	/* FIFO: nobody overtakes jobs already waiting for this provider */
	if (!ps->qhead && engine_lease_ok(e) && ps_can_start(ps, now, &wait)) {
		ps_start(ps, j);
		return;
	}
	q_push(ps, j);
	if (ps->qhead == j)
		ps_wake(ps);   /* arms the timer for the token or the pause */
}

/* ----------------------------------------------------------------- outcomes */

static bool code_in(const int *codes, int n, long status)
{
	for (int i = 0; i < n; i++)
		if (codes[i] == status)
			return true;
	return false;
}

static enum Outcome classify_status(const Provider *p, long status)
{
	if (code_in(p->permanent_on, p->npermanent_on, status))
		return OUT_PERMANENT;
	if (code_in(p->retry_on, p->nretry_on, status))
		return OUT_TRANSIENT;
	if (status >= 200 && status < 300)
		return OUT_SUCCESS;
	if (status >= 500 || status == 408 || status == 429)
		return OUT_TRANSIENT;
	return OUT_PERMANENT;
}

/* Retry-After: delta-seconds or an HTTP date; ms from now, -1 if none. */
static int64_t parse_retry_after(const char *v)
{
	char *end;
	long long secs;
	time_t t;

	if (!v || !*v)
		return -1;
	secs = strtoll(v, &end, 10);
	if (end != v && *end == '\0') {
		if (secs < 0)
			return -1;
		return secs * 1000 > RETRY_AFTER_MAX_MS ? RETRY_AFTER_MAX_MS : secs * 1000;
	}
	t = curl_getdate(v, NULL);
	if (t < 0)
		return -1;
	secs = (long long)t - (long long)(now_realtime_us() / 1000000);
	if (secs <= 0)
		return 0;
	return secs * 1000 > RETRY_AFTER_MAX_MS ? RETRY_AFTER_MAX_MS : secs * 1000;
}

/* Full jitter: random(0, min(backoff_max, backoff * 2^(n-1))). */
static int64_t backoff_ms(const Provider *p, int n)
{
	double cap = (double)p->backoff_ms * pow(2.0, n > 1 ? n - 1 : 0);
	if (cap > (double)p->backoff_max_ms)
		cap = (double)p->backoff_max_ms;
	return (int64_t)((double)random() / ((double)RAND_MAX + 1.0) * cap);
}

static void retry_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	Job *j = arg;
	j->state = JOB_NEW;
	dispatch_route(j->e, j);
}

static void job_retry_later(Engine *e, Job *j, int64_t delay_ms)
{
	if (e->stop != STOP_NONE) {
		engine_job_done(e, j);  /* released by deregister, attempt refunded */
		return;
	}
	if (delay_ms > j->ps->cfg->requeue_after_ms) {
		char why[600];
		snprintf(why, sizeof(why), "waiting %lld ms to retry: %s", (long long)delay_ms,
			 j->last_error ? j->last_error : "transient failure");
		engine_defer(e, j, delay_ms, why);
		return;
	}
	if (!j->retry_timer)
		j->retry_timer = evtimer_new(e->bd->base, retry_timer_cb, j);
	j->state = JOB_BACKOFF;
	arm_us(j->retry_timer, delay_ms * 1000);
}

/* The current provider is done with j (retries spent or permanent). */
static bool job_failover(Engine *e, Job *j, const char *why)
{
	if (j->pidx + 1 >= j->route->nproviders)
		return false;
	LogCtx ctx = { j->batch_id, j->id, j->route->providers[j->pidx + 1]->name, j->route->name };

	log_ctx(LG_INFO, &ctx, "item %lld: failing over from %s to %s (%s)", (long long)j->id,
		j->route->providers[j->pidx]->name, j->route->providers[j->pidx + 1]->name, why);
	if (j->ps)
		j->ps->failovers_from++;
	j->pidx++;
	j->tries = 0;
	j->state = JOB_NEW;
	dispatch_route(e, j);
	return true;
}

static void job_outcome(Engine *e, Job *j, enum Outcome out, long status, const char *error)
{
	const Provider *p = j->ps->cfg;
	int64_t ra_ms = -1;

	set_last_error(j, error, status);
	switch (out) {
	case OUT_SUCCESS:
		engine_record(e, j, "succeeded", status, j->resp.data, j->resp.len, NULL);
		engine_job_done(e, j);
		return;
	case OUT_PERMANENT:
		if (j->route->failover_on_permanent && job_failover(e, j, "permanent error"))
			return;
		engine_record(e, j, "failed", status, j->resp.data, j->resp.len, error);
		engine_job_done(e, j);
		return;
	case OUT_TRANSIENT:
		break;
	}
	if (status == 429 || status == 503) {
		ra_ms = parse_retry_after(j->retry_after);
		if (ra_ms > 0) {
			int64_t until = now_monotonic_us() + ra_ms * 1000;
			if (until > j->ps->paused_until) {
				j->ps->paused_until = until;
				log_warn("provider %s: paused for %lld ms (Retry-After: %s)",
					 j->ps->name, (long long)ra_ms, j->retry_after);
			}
		}
	}
	if (j->tries <= p->retries) {
		int64_t d = backoff_ms(p, j->tries);
		if (ra_ms > d)
			d = ra_ms;
		j->ps->retries++;
		log_debug("item %lld: transient failure on %s (try %d of %d), retry in %lld ms: %s",
			  (long long)j->id, j->ps->name, j->tries, p->retries + 1, (long long)d,
			  error ? error : "");
		dispatch_job_release(e, j);
		job_retry_later(e, j, d);
		return;
	}
	if (job_failover(e, j, "retries spent"))
		return;
	engine_record(e, j, "failed", status, j->resp.data, j->resp.len, error);
	engine_job_done(e, j);
}

/* One line of the body for an error text: printable ASCII, at most n bytes. */
static void body_snippet(const char *body, size_t len, char *out, size_t n)
{
	size_t o = 0;
	for (size_t i = 0; i < len && o + 1 < n; i++) {
		unsigned char c = (unsigned char)body[i];
		out[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : ' ';
	}
	out[o] = '\0';
}

static void observe_latency(ProvState *ps, double secs)
{
	ps->lat_count++;
	ps->lat_sum += secs;
	for (int i = 0; i < LAT_BUCKETS; i++)
		if (secs <= lat_bucket_le[i])
			ps->lat_buckets[i]++;
}

/*
 * A transfer ended while providers waited for one of max_inflight's slots:
 * let each try in turn, starting after the provider that just freed one,
 * so that no provider keeps the slots to itself.
 */
static void wake_for_slot(Engine *e, ProvState *from)
{
	int n = e->nprovs, k0 = 0;

	e->transfers_full = false;
	for (int k = 0; k < n; k++)
		if (e->provs[k] == from)
			k0 = k;
	for (int i = 1; i <= n; i++) {
		ProvState *ps = e->provs[(k0 + i) % n];
		if (ps->qhead || ps == from)
			ps_wake(ps);
	}
}

void dispatch_transfer_done(CURL *easy, CURLcode code, void *priv, void *arg)
{
	Engine *e = arg;
	Job *j = priv;
	ProvState *ps = j->ps;
	long status = 0;
	char err[768];
	enum Outcome out;

	ps->inflight--;
	e->ntransfers--;
	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
	observe_latency(ps, (double)(now_monotonic_us() - j->try_started_mono) / 1e6);
	ps->by_code[code == CURLE_OK && status > 0 && status < 600 ? status : 0]++;

	if (code == CURLE_OK) {
		out = classify_status(ps->cfg, status);
		if (out == OUT_SUCCESS) {
			err[0] = '\0';
		} else {
			char snip[201];
			body_snippet(j->resp.data ? j->resp.data : "", j->resp.len, snip, sizeof(snip));
			if (status >= 300 && status < 400)
				snprintf(err, sizeof(err), "HTTP %ld from %s: redirects are not followed",
					 status, ps->name);
			else if (snip[0])
				snprintf(err, sizeof(err), "HTTP %ld from %s: %s", status, ps->name, snip);
			else
				snprintf(err, sizeof(err), "HTTP %ld from %s", status, ps->name);
		}
	} else if (j->too_big || code == CURLE_FILESIZE_EXCEEDED) {
		out = OUT_PERMANENT;
		snprintf(err, sizeof(err), "response larger than max_response_size (%lld bytes) from %s",
			 (long long)j->max_size, ps->name);
		sb_reset(&j->resp);   /* a partial body is not a result */
		status = 0;
	} else {
		const char *detail = j->errbuf[0] ? j->errbuf : curl_easy_strerror(code);
		out = OUT_TRANSIENT;
		if (code == CURLE_OPERATION_TIMEDOUT)
			snprintf(err, sizeof(err), "timeout after %lld ms calling %s: %s",
				 (long long)ps->cfg->timeout_ms, ps->name, detail);
		else
			snprintf(err, sizeof(err), "request to %s failed: %s", ps->name, detail);
		sb_reset(&j->resp);
		status = 0;
	}
	sec_count(ps, out != OUT_SUCCESS);

	/* breaker bookkeeping: a permanent error still proves the provider is up */
	if (out == OUT_TRANSIENT)
		br_on_failure(&ps->br, now_monotonic_us(), err);
	else
		br_on_success(&ps->br, now_monotonic_us());

	job_outcome(e, j, out, status, out == OUT_SUCCESS ? NULL : err);
	/* a slot is free on ps, and one of max_inflight */
	if (e->transfers_full)
		wake_for_slot(e, ps);
	else
		ps_wake(ps);
	engine_after_event(e);
}

/*
 * A batch was cancelled: its items we hold but have not sent go back to the
 * queue, where the 006 trigger turns them into cancelled items (counted).
 * Transfers already out finish and are recorded, as cancel promises.
 */
int dispatch_cancel_batch(Engine *e, const char *batch_id)
{
	Job *j = e->jobs;
	int n = 0;

	while (j) {
		Job *next = j->next;
		if (j->state != JOB_RUNNING && strcmp(j->batch_id, batch_id) == 0) {
			if (j->state == JOB_QUEUED)
				q_remove(j->ps, j);
			if (j->retry_timer)
				evtimer_del(j->retry_timer);
			engine_drop_cancelled(e, j);
			n++;
		}
		j = next;
	}
	return n;
}

/* Stop: drop every job that is not transferring (deregister releases them). */
void dispatch_drop_waiting(Engine *e)
{
	Job *j = e->jobs;
	while (j) {
		Job *next = j->next;
		if (j->state == JOB_QUEUED) {
			q_remove(j->ps, j);
			engine_job_done(e, j);
		} else if (j->state != JOB_RUNNING) {
			engine_job_done(e, j);
		}
		j = next;
	}
}

/* Stop now: drop every job where it stands (deregister releases the items). */
void dispatch_abort_all(Engine *e)
{
	while (e->jobs) {
		Job *j = e->jobs;
		switch (j->state) {
		case JOB_RUNNING:
			http_abort(e->http, j->easy, j->http_shard);
			j->ps->inflight--;
			e->ntransfers--;
			br_on_abort(&j->ps->br);
			break;
		case JOB_QUEUED:
			q_remove(j->ps, j);
			break;
		case JOB_BACKOFF:
		case JOB_NEW:
			break;
		}
		engine_job_done(e, j);
	}
}
