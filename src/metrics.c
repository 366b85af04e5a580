/*
 * metrics.c - render every counter batchd keeps as Prometheus text.
 *
 * Nothing here touches the database: the figures are counters the loop
 * keeps anyway, plus the queue depth and oldest age from the janitor's
 * periodic query, plus process figures from /proc.  Names carry their unit
 * (_seconds, _bytes, _total) and the batchd_ prefix; every family has its
 * HELP and TYPE.  Two rules: a figure not known yet has no sample (never a
 * -1), and reading the page changes nothing (no value is reset by a scrape:
 * the loop lag is a histogram plus a maximum over a fixed 60 s window).
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "batchd/engine.h"
#include "batchd/metrics.h"
#include "batchd/provider.h"

static void help(StrBuf *sb, const char *name, const char *type, const char *text)
{
	sb_printf(sb, "# HELP %s %s\n# TYPE %s %s\n", name, text, name, type);
}

/* Label values: escape backslash, double quote and newline. */
static void label(StrBuf *sb, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			sb_putc(sb, '\\');
		if (*v == '\n') {
			sb_puts(sb, "\\n");
			continue;
		}
		sb_putc(sb, *v);
	}
}

static void sample1(StrBuf *sb, const char *name, const char *k, const char *v, double value)
{
	sb_printf(sb, "%s{%s=\"", name, k);
	label(sb, v);
	sb_printf(sb, "\"} %.17g\n", value);
}

static void sample2(StrBuf *sb, const char *name, const char *k1, const char *v1,
		    const char *k2, const char *v2, double value)
{
	sb_printf(sb, "%s{%s=\"", name, k1);
	label(sb, v1);
	sb_printf(sb, "\",%s=\"", k2);
	label(sb, v2);
	sb_printf(sb, "\"} %.17g\n", value);
}

static bool ps_live(const ProvState *ps)
{
	return !ps->removed;
}

static void render_providers(Engine *e, StrBuf *sb)
{
	int np = engine_nproviders(e);
	int64_t now = now_monotonic_us();

	help(sb, "batchd_provider_requests_total", "counter",
	     "Requests answered by a provider, by HTTP status (code=\"none\": no answer).");
	for (int i = 0; i < np; i++) {
		ProvState *ps = engine_provider(e, i);
		char code[8];
		for (int c = 0; c < 600; c++) {
			if (!ps->by_code[c])
				continue;
			if (c == 0)
				snprintf(code, sizeof(code), "none");
			else
				snprintf(code, sizeof(code), "%d", c);
			sample2(sb, "batchd_provider_requests_total", "provider", ps->name, "code", code,
				(double)ps->by_code[c]);
		}
	}
	help(sb, "batchd_provider_request_duration_seconds", "histogram",
	     "Time from the start of a request to its outcome.");
	for (int i = 0; i < np; i++) {
		ProvState *ps = engine_provider(e, i);
		for (int b = 0; b < LAT_BUCKETS; b++) {
			char le[32];
			snprintf(le, sizeof(le), "%g", lat_bucket_le[b]);
			sample2(sb, "batchd_provider_request_duration_seconds_bucket", "provider", ps->name,
				"le", le, (double)ps->lat_buckets[b]);
		}
		sample2(sb, "batchd_provider_request_duration_seconds_bucket", "provider", ps->name,
			"le", "+Inf", (double)ps->lat_count);
		sample1(sb, "batchd_provider_request_duration_seconds_sum", "provider", ps->name,
			ps->lat_sum);
		sample1(sb, "batchd_provider_request_duration_seconds_count", "provider", ps->name,
			(double)ps->lat_count);
	}
	help(sb, "batchd_provider_retries_total", "counter",
	     "Transient failures retried on the same provider.");
	for (int i = 0; i < np; i++)
		sample1(sb, "batchd_provider_retries_total", "provider", engine_provider(e, i)->name,
			(double)engine_provider(e, i)->retries);
	help(sb, "batchd_provider_failovers_total", "counter",
	     "Items that left this provider for the next one of their route.");
	for (int i = 0; i < np; i++)
		sample1(sb, "batchd_provider_failovers_total", "provider", engine_provider(e, i)->name,
			(double)engine_provider(e, i)->failovers_from);
	help(sb, "batchd_provider_inflight", "gauge", "Requests in flight to a provider.");
	for (int i = 0; i < np; i++)
		sample1(sb, "batchd_provider_inflight", "provider", engine_provider(e, i)->name,
			engine_provider(e, i)->inflight);
	help(sb, "batchd_provider_queued", "gauge",
	     "Items waiting for a provider's token, slot or pause to end.");
	for (int i = 0; i < np; i++)
		sample1(sb, "batchd_provider_queued", "provider", engine_provider(e, i)->name,
			engine_provider(e, i)->nqueued);
	help(sb, "batchd_provider_concurrency_limit", "gauge",
	     "Requests a provider may have in flight now: its concurrency window "
	     "(slow start, max_concurrency, or the adaptive limit of max_concurrency = auto).");
	for (int i = 0; i < np; i++)
		sample1(sb, "batchd_provider_concurrency_limit", "provider", engine_provider(e, i)->name,
			limiter_window(&engine_provider(e, i)->lim, now_monotonic_us()));
	help(sb, "batchd_breaker_state", "gauge",
	     "Circuit breaker state: 0 closed, 1 open, 2 half-open.");
	for (int i = 0; i < np; i++)
		sample1(sb, "batchd_breaker_state", "provider", engine_provider(e, i)->name,
			(double)engine_provider(e, i)->br.state);
	help(sb, "batchd_breaker_in_state", "gauge",
	     "1 for the circuit breaker state a provider is in, 0 for the other two.");
	for (int i = 0; i < np; i++) {
		static const enum BreakerState states[3] = { BR_CLOSED, BR_OPEN, BR_HALF_OPEN };
		for (int s = 0; s < 3; s++)
			sample2(sb, "batchd_breaker_in_state", "provider", engine_provider(e, i)->name,
				"state", br_state_name(states[s]),
				engine_provider(e, i)->br.state == states[s] ? 1 : 0);
	}
	help(sb, "batchd_breaker_transitions_total", "counter",
	     "Circuit breaker transitions, by the state entered.");
	for (int i = 0; i < np; i++) {
		static const char *const to[3] = { "closed", "open", "half_open" };
		for (int s = 0; s < 3; s++)
			sample2(sb, "batchd_breaker_transitions_total", "provider", engine_provider(e, i)->name,
				"to", to[s], (double)engine_provider(e, i)->br.transitions[s]);
	}
	help(sb, "batchd_provider_login_total", "counter",
	     "Logins of a provider with login_url, by result (ok: a token; error: none).");
	for (int i = 0; i < np; i++) {
		ProvState *ps = engine_provider(e, i);
		if (!ps_live(ps) || !ps->cfg->login_url)
			continue;
		sample2(sb, "batchd_provider_login_total", "provider", ps->name, "result", "ok",
			(double)ps->login.ok_total);
		sample2(sb, "batchd_provider_login_total", "provider", ps->name, "result", "error",
			(double)ps->login.err_total);
	}
	help(sb, "batchd_provider_login_token_valid", "gauge",
	     "1 when a provider with login_url holds a token that has not expired, else 0.");
	for (int i = 0; i < np; i++) {
		ProvState *ps = engine_provider(e, i);
		if (ps_live(ps) && ps->cfg->login_url)
			sample1(sb, "batchd_provider_login_token_valid", "provider", ps->name,
				login_usable(&ps->login, now) ? 1 : 0);
	}
	help(sb, "batchd_ratelimit_wait_seconds_total", "counter",
	     "Time items spent waiting for a provider's token, slot or pause.");
	for (int i = 0; i < np; i++)
		sample1(sb, "batchd_ratelimit_wait_seconds_total", "provider", engine_provider(e, i)->name,
			engine_provider(e, i)->wait_seconds);
	help(sb, "batchd_ratelimit_tokens", "gauge",
	     "Tokens in a provider's bucket now (burst when unlimited).");
	for (int i = 0; i < np; i++)
		if (ps_live(engine_provider(e, i)))
			sample1(sb, "batchd_ratelimit_tokens", "provider", engine_provider(e, i)->name,
				tb_available(&engine_provider(e, i)->tb, now));
	help(sb, "batchd_ratelimit_rate", "gauge",
	     "This process's share of a provider's rate, requests per second (0: unlimited).");
	for (int i = 0; i < np; i++)
		if (ps_live(engine_provider(e, i)))
			sample1(sb, "batchd_ratelimit_rate", "provider", engine_provider(e, i)->name,
				engine_provider(e, i)->tb.rate);
}

static long proc_rss_bytes(void)
{
	long pages = 0, rss = 0;
	FILE *f = fopen("/proc/self/statm", "r");
	if (f) {
		if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
			rss = 0;
		fclose(f);
	}
	return rss * sysconf(_SC_PAGESIZE);
}

static int proc_open_fds(void)
{
	int n = 0;
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	if (!d)
		return -1;
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1;   /* the directory's own fd */
}

static double proc_cpu_seconds(void)
{
	char buf[1024];
	unsigned long ut = 0, st = 0;
	FILE *f = fopen("/proc/self/stat", "r");
	char *p;
	if (!f)
		return 0;
	if (!fgets(buf, sizeof(buf), f)) {
		fclose(f);
		return 0;
	}
	fclose(f);
	/* fields after the command name, which may hold spaces */
	p = strrchr(buf, ')');
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
		return 0;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

void metrics_render(Batchd *bd, StrBuf *sb)
{
	Engine *e = bd->engine;
	const Config *cfg = engine_config(e);
	EngineStats st;
	int nfds;
	static const char *const outcomes[4] = { "succeeded", "failed", "deferred", "cancelled" };

	engine_get_stats(e, &st);

	help(sb, "batchd_info", "gauge", "Version and worker id of this process.");
	sb_printf(sb, "batchd_info{version=\"%s\",worker=\"%s\"} 1\n", PACKAGE_VERSION,
		  bd->worker_id);

	help(sb, "batchd_items_total", "counter",
	     "Items finished by this process, by route and outcome (deferred: back to the "
	     "queue to wait; cancelled: dropped before sending, their batch was cancelled).");
	for (int i = 0; i < cfg->nroutes; i++) {
		const RouteStats *rs = engine_route_stats(e, i);
		const uint64_t v[4] = { rs->succeeded, rs->failed, rs->deferred, rs->cancelled };
		for (int k = 0; k < 4; k++)
			sample2(sb, "batchd_items_total", "route", cfg->routes[i]->name,
				"outcome", outcomes[k], (double)v[k]);
	}
	/* both from the janitor's count every 15 s; a route has no sample until
	 * the first count after the start (or after a reload added it) */
	help(sb, "batchd_queue_depth", "gauge",
	     "Items queued per route, due or not (from a query every 15 s).");
	for (int i = 0; i < cfg->nroutes; i++)
		if (engine_route_stats(e, i)->depth_known)
			sample1(sb, "batchd_queue_depth", "route", cfg->routes[i]->name,
				(double)engine_route_stats(e, i)->queue_depth);
	help(sb, "batchd_queue_oldest_age_seconds", "gauge",
	     "Time the oldest claimable queued item of a route has been due (from the same "
	     "query; 0 when none is).");
	for (int i = 0; i < cfg->nroutes; i++)
		if (engine_route_stats(e, i)->depth_known) {
			sb_puts(sb, "batchd_queue_oldest_age_seconds{route=\"");
			label(sb, cfg->routes[i]->name);
			sb_printf(sb, "\"} %.3f\n", engine_route_stats(e, i)->oldest_age_s);
		}

	render_providers(e, sb);

	help(sb, "batchd_inflight", "gauge", "Transfers in flight.");
	sb_printf(sb, "batchd_inflight %d\n", st.inflight);
	help(sb, "batchd_held_items", "gauge",
	     "Items claimed and not finished here (in flight, waiting or backing off).");
	sb_printf(sb, "batchd_held_items %d\n", st.held);
	help(sb, "batchd_completions_pending", "gauge", "Outcomes not yet written to the database.");
	sb_printf(sb, "batchd_completions_pending %d\n", st.pending);
	help(sb, "batchd_claimed_total", "counter", "Items claimed by this process.");
	sb_printf(sb, "batchd_claimed_total %llu\n", (unsigned long long)st.claimed);
	help(sb, "batchd_claims_total", "counter",
	     "Claim statements that returned items (batchd_claimed_total / this: items per claim).");
	sb_printf(sb, "batchd_claims_total %llu\n", (unsigned long long)st.claims);
	help(sb, "batchd_claim_ahead", "gauge",
	     "Items this process may hold beyond max_inflight now (claim_ahead, or what the drain rate needs).");
	sb_printf(sb, "batchd_claim_ahead %d\n", st.claim_ahead);
	help(sb, "batchd_items_recovered_total", "counter",
	     "Items of dead workers requeued or failed by this process's reaper.");
	sb_printf(sb, "batchd_items_recovered_total %llu\n", (unsigned long long)st.recovered);
	help(sb, "batchd_completions_fenced_total", "counter",
	     "Completions discarded because the item was no longer ours.");
	sb_printf(sb, "batchd_completions_fenced_total %llu\n", (unsigned long long)st.fenced);
	help(sb, "batchd_flushes_total", "counter", "Completion statements written.");
	sb_printf(sb, "batchd_flushes_total %llu\n", (unsigned long long)st.flushes);
	help(sb, "batchd_db_up", "gauge", "1 when the database connection is ready.");
	sb_printf(sb, "batchd_db_up %d\n", engine_is_ready(e) ? 1 : 0);

	help(sb, "batchd_db_query_duration_seconds", "histogram",
	     "Time from sending a statement to its result, engine connection.");
	{
		DbLatency lat;
		engine_db_latency(e, &lat);
		for (int b = 0; b < DB_LAT_BUCKETS; b++)
			sb_printf(sb, "batchd_db_query_duration_seconds_bucket{le=\"%g\"} %llu\n",
				  db_lat_bucket_le[b], (unsigned long long)lat.buckets[b]);
		sb_printf(sb, "batchd_db_query_duration_seconds_bucket{le=\"+Inf\"} %llu\n",
			  (unsigned long long)lat.count);
		sb_printf(sb, "batchd_db_query_duration_seconds_sum %.9f\n", lat.sum);
		sb_printf(sb, "batchd_db_query_duration_seconds_count %llu\n",
			  (unsigned long long)lat.count);
	}
	{
		LoopLag lag;
		engine_loop_lag(e, &lag);
		help(sb, "batchd_loop_lag_seconds", "histogram",
		     "Lateness of each tick of a 250 ms loop timer.");
		for (int b = 0; b < LOOP_LAG_BUCKETS; b++)
			sb_printf(sb, "batchd_loop_lag_seconds_bucket{le=\"%g\"} %llu\n",
				  loop_lag_bucket_le[b], (unsigned long long)lag.buckets[b]);
		sb_printf(sb, "batchd_loop_lag_seconds_bucket{le=\"+Inf\"} %llu\n",
			  (unsigned long long)lag.count);
		sb_printf(sb, "batchd_loop_lag_seconds_sum %.9f\n", lag.sum);
		sb_printf(sb, "batchd_loop_lag_seconds_count %llu\n", (unsigned long long)lag.count);
		help(sb, "batchd_loop_lag_max_seconds", "gauge",
		     "Largest lateness of a 250 ms loop timer in the last 60 s.");
		sb_printf(sb, "batchd_loop_lag_max_seconds %.6f\n", lag.max_s);
	}

	help(sb, "batchd_process_resident_memory_bytes", "gauge", "Resident set size.");
	sb_printf(sb, "batchd_process_resident_memory_bytes %ld\n", proc_rss_bytes());
	help(sb, "batchd_process_open_fds", "gauge", "Open file descriptors.");
	if ((nfds = proc_open_fds()) >= 0)   /* no sample when /proc cannot tell */
		sb_printf(sb, "batchd_process_open_fds %d\n", nfds);
	help(sb, "batchd_process_cpu_seconds_total", "counter", "User and system CPU time.");
	sb_printf(sb, "batchd_process_cpu_seconds_total %.2f\n", proc_cpu_seconds());
	help(sb, "batchd_process_start_time_seconds", "gauge", "Start time, seconds since the epoch.");
	sb_printf(sb, "batchd_process_start_time_seconds %.3f\n", (double)bd->start_us / 1e6);
}
