/*
 * api_status.c - what the API says about this worker and the fleet:
 * GET /v1/status (the worker, its engine's counters and recent rate, the
 * database, the fleet's heartbeats, the providers' live state, the routes)
 * and the token-free probes /healthz (the process answers) and /readyz
 * (engine_is_ready(), else why not).  /metrics is metrics.c's.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "batchd/api_req.h"
#include "batchd/engine.h"
#include "batchd/provider.h"
#include "batchd/json.h"

static void rate_tick(evutil_socket_t fd, short what, void *arg)
{
	Api *api = arg;
	EngineStats st;
	struct timeval tv = { RATE_EVERY_MS / 1000, (RATE_EVERY_MS % 1000) * 1000 };

	engine_get_stats(api->bd->engine, &st);
	api->rate_pos = (api->rate_pos + 1) % RATE_SLOTS;
	api->rate[api->rate_pos].at_us = now_monotonic_us();
	api->rate[api->rate_pos].done = st.succeeded + st.failed;
	evtimer_add(api->rate_timer, &tv);
}

/* Items this worker finished per second over about the last minute. */
static double recent_rate(const Api *api, uint64_t done_now)
{
	int64_t now = now_monotonic_us(), oldest_at = 0;
	uint64_t oldest_done = 0;

	for (int i = 0; i < RATE_SLOTS; i++) {
		const RateSample *s = &api->rate[i];
		if (s->at_us == 0 || now - s->at_us > 65 * 1000000LL)
			continue;
		if (oldest_at == 0 || s->at_us < oldest_at) {
			oldest_at = s->at_us;
			oldest_done = s->done;
		}
	}
	if (oldest_at == 0 || now - oldest_at < 1000000 || done_now < oldest_done)
		return 0.0;
	return (double)(done_now - oldest_done) / ((double)(now - oldest_at) / 1e6);
}

/* The batch slots a route's unfinished batches hold, from the status
 * query's last column: "route=n,route=n" (route names have no '=' or ','). */
static long long slots_held(PGresult *res, const char *route)
{
	const char *s, *p;
	size_t len = strlen(route);

	if (PQntuples(res) < 1 || PQnfields(res) < 12 || PQgetisnull(res, 0, 11))
		return 0;
	s = PQgetvalue(res, 0, 11);
	for (p = s; *p; ) {
		if (strncmp(p, route, len) == 0 && p[len] == '=')
			return atoll(p + len + 1);
		p = strchr(p, ',');
		if (!p)
			break;
		p++;
	}
	return 0;
}

static void step_status(Req *r, PGresult *res)
{
	Api *api = r->api;
	Batchd *bd = api->bd;
	EngineStats st;
	StrBuf sb;
	char ts[40];
	int64_t now = now_realtime_us();
	const char *dberr;
	bool dbup;

	if (!db_result_ok(res)) {
		reply_db_error(r, res);
		return;
	}
	engine_get_stats(bd->engine, &st);
	sb_init(&sb);

	sb_puts(&sb, "{\"worker\":{\"id\":");
	json_append_string(&sb, bd->worker_id, strlen(bd->worker_id));
	sb_puts(&sb, ",\"hostname\":");
	json_append_string(&sb, bd->hostname, strlen(bd->hostname));
	format_timestamp(api->started_us, ts, sizeof(ts));
	sb_printf(&sb, ",\"pid\":%d,\"version\":\"%s\",\"started_at\":\"%s\",\"uptime_s\":%.1f,"
		  "\"ready\":%s}", (int)getpid(), PACKAGE_VERSION, ts,
		  (double)(now - api->started_us) / 1e6,
		  engine_is_ready(bd->engine) ? "true" : "false");

	sb_printf(&sb, ",\"engine\":{\"inflight\":%d,\"pending_completions\":%d,"
		  "\"claimed\":%llu,\"succeeded\":%llu,\"failed\":%llu,\"fenced\":%llu,"
		  "\"rate_per_s\":%.3f}",
		  st.inflight, st.pending, (unsigned long long)st.claimed,
		  (unsigned long long)st.succeeded, (unsigned long long)st.failed,
		  (unsigned long long)st.fenced, recent_rate(api, st.succeeded + st.failed));

	dbup = engine_db_up(bd->engine);
	dberr = engine_db_error(bd->engine);
	sb_printf(&sb, ",\"database\":{\"up\":%s,\"error\":", dbup ? "true" : "false");
	if (dbup)
		sb_puts(&sb, "null");
	else
		json_append_string(&sb, dberr, strlen(dberr));
	sb_printf(&sb, ",\"api_connections\":%d,\"api_connections_ready\":%d}",
		  API_POOL_SIZE, api_pool_ready(api));

	sb_printf(&sb, ",\"api\":{\"requests\":%d,\"streams\":%d,\"max_streams\":%d}",
		  api->nreqs, api->nstreams, API_MAX_STREAMS);

	sb_puts(&sb, ",\"fleet\":[");
	for (int i = 0; i < PQntuples(res); i++) {
		static const ApiCol fleet_cols[] = {
			{ "id", CK_STR }, { "hostname", CK_STR }, { "pid", CK_NUM },
			{ "version", CK_STR }, { "started_at", CK_STR }, { "heartbeat_at", CK_STR },
			{ "inflight", CK_NUM }, { "heartbeat_age_s", CK_NUM },
			{ "held_items", CK_NUM }, { "held_item_ids", CK_JSON },
			{ "held_item_ids_truncated", CK_BOOL },
		};
		double age = atof(PQgetvalue(res, i, 7));
		if (i)
			sb_putc(&sb, ',');
		api_render_row(&sb, res, i, 0, fleet_cols, (int)ARRAY_SIZE(fleet_cols));
		sb.len--;   /* reopen the object */
		sb_printf(&sb, ",\"alive\":%s,\"self\":%s}",
			  age * 1000.0 < (double)api->bd->cfg->lease_timeout_ms ? "true" : "false",
			  strcmp(PQgetvalue(res, i, 0), bd->worker_id) == 0 ? "true" : "false");
	}
	sb_puts(&sb, "]");

	/*
	 * Providers: the configured figures, then the live ones the engine
	 * keeps (engine_provider_stats(): breaker state, tokens in the bucket,
	 * transfers in flight and queued, request and error rates, the last
	 * PROVIDER_HISTORY_S seconds).  A provider the engine has no state for
	 * (not, or no longer, in its configuration) gets nulls and the breaker
	 * state "unknown".
	 */
	sb_puts(&sb, ",\"providers\":[");
	for (int i = 0; i < api->bd->cfg->nproviders; i++) {
		const Provider *p = api->bd->cfg->providers[i];
		ProviderStats ps;
		if (i)
			sb_putc(&sb, ',');
		sb_puts(&sb, "{\"name\":");
		json_append_string(&sb, p->name, strlen(p->name));
		sb_printf(&sb, ",\"rate\":%.6g,\"burst\":%d,\"max_concurrency\":%d",
			  p->rate, p->burst, p->max_concurrency);
		if (engine_provider_stats(bd->engine, p->name, &ps)) {
			sb_printf(&sb, ",\"breaker\":{\"state\":\"%s\",\"half_open_in_s\":",
				  ps.breaker_state);
			if (ps.half_open_in_ms >= 0)
				sb_printf(&sb, "%.3f", (double)ps.half_open_in_ms / 1000.0);
			else
				sb_puts(&sb, "null");
			sb_printf(&sb, ",\"failures\":%d},\"tokens\":%.3f,\"rate_share\":%.6g,"
				  "\"inflight\":%d,\"queued\":%d,\"rate_per_s\":%.3f,"
				  "\"error_rate\":%.4f,\"paused_for_s\":%.3f,\"requests\":%llu,",
				  ps.failures, ps.tokens, ps.rate_share, ps.inflight,
				  ps.queued, ps.req_per_s, ps.error_ratio, (double)ps.paused_ms / 1000.0,
				  (unsigned long long)ps.requests);
			sb_printf(&sb, "\"concurrency\":{\"mode\":\"%s\",\"limit\":%d,"
				  "\"phase\":\"%s\",\"base_latency_ms\":", ps.concurrency_mode,
				  ps.concurrency_limit, ps.limiter_phase);
			if (ps.base_latency_us > 0)
				sb_printf(&sb, "%.3f},", (double)ps.base_latency_us / 1000.0);
			else
				sb_puts(&sb, "null},");
			if (ps.login_state) {
				sb_printf(&sb, "\"login\":{\"state\":\"%s\",\"expires_in_s\":",
					  ps.login_state);
				if (ps.login_expires_in_ms >= 0)
					sb_printf(&sb, "%.3f", (double)ps.login_expires_in_ms / 1000.0);
				else
					sb_puts(&sb, "null");
				sb_printf(&sb, ",\"logins\":%llu,\"failures\":%llu,\"after_401\":%llu,"
					  "\"last_error\":", (unsigned long long)ps.logins,
					  (unsigned long long)ps.login_failures,
					  (unsigned long long)ps.relogins_401);
				if (ps.login_last_error[0])
					json_append_string(&sb, ps.login_last_error,
							   strlen(ps.login_last_error));
				else
					sb_puts(&sb, "null");
				sb_puts(&sb, "},");
			} else {
				sb_puts(&sb, "\"login\":null,");
			}
			sb_puts(&sb, "\"per_second\":[");
			for (int k = 0; k < PROVIDER_HISTORY_S; k++)
				sb_printf(&sb, "%s%u", k ? "," : "", ps.per_second[k]);
			sb_puts(&sb, "]}");
		} else {
			sb_puts(&sb, ",\"breaker\":{\"state\":\"unknown\"},\"tokens\":null,"
				"\"inflight\":null,\"rate_per_s\":null}");
		}
	}
	sb_puts(&sb, "],\"routes\":[");
	for (int i = 0; i < api->bd->cfg->nroutes; i++) {
		const Route *rt = api->bd->cfg->routes[i];
		if (i)
			sb_putc(&sb, ',');
		sb_puts(&sb, "{\"name\":");
		json_append_string(&sb, rt->name, strlen(rt->name));
		sb_puts(&sb, ",\"providers\":[");
		for (int j = 0; j < rt->nproviders; j++) {
			if (j)
				sb_putc(&sb, ',');
			json_append_string(&sb, rt->provider_names[j], strlen(rt->provider_names[j]));
		}
		sb_printf(&sb, "],\"batch_concurrency\":%d,\"active_batches\":", rt->batch_concurrency);
		if (rt->batch_concurrency > 0)
			sb_printf(&sb, "%lld}", slots_held(res, rt->name));
		else
			sb_puts(&sb, "null}");
	}
	sb_puts(&sb, "]}");
	reply_json(r, 200, sb.data, sb.len);
	sb_free(&sb);
}

/*
 * The fleet: each worker's row (inflight is what its last heartbeat said)
 * and, from the items themselves, what it holds now: the count of items
 * running under its id and the first STATUS_HELD_IDS of their ids.  For a
 * dead worker that is what the reaper will requeue; for a live one, what it
 * has claimed (in flight, waiting for a provider, or being completed).  One
 * statement: a lateral aggregate per worker row, on the partial index
 * items_running_worker_idx (worker_id WHERE status = 'running').
 */
#define STATUS_HELD_IDS 100
#define STR_(x) #x
#define STR(x) STR_(x)

void ep_status(Req *r)
{
	static const char sql[] =
		"SELECT w.id, w.hostname, w.pid, w.version, batchd.api_ts(w.started_at), "
		"batchd.api_ts(w.heartbeat_at), w.inflight, "
		"round(extract(epoch FROM now() - w.heartbeat_at), 3), "
		"h.n, coalesce(to_jsonb((h.ids)[1:" STR(STATUS_HELD_IDS) "]), '[]'), "
		"h.n > " STR(STATUS_HELD_IDS) ", "
		/* the batch slots held (routes with batch_concurrency), once */
		"(SELECT string_agg(x.route || '=' || x.n, ',') FROM "
		"  (SELECT s.route, count(*) AS n FROM batchd.batch_slots AS s "
		"     JOIN batchd.batches AS b ON b.id = s.batch_id "
		"    WHERE b.finished_at IS NULL GROUP BY s.route) AS x) "
		"FROM batchd.workers AS w "
		"CROSS JOIN LATERAL (SELECT count(*) AS n, array_agg(i.id ORDER BY i.id) AS ids "
		"  FROM batchd.items AS i "
		"  WHERE i.status = 'running' AND i.worker_id = w.id) AS h "
		"ORDER BY w.started_at, w.id";

	req_query(r, false, sql, 0, NULL, step_status);
}

static void reply_plain(struct evhttp_request *req, int code, const char *body)
{
	struct evbuffer *buf = evbuffer_new();
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);

	evhttp_add_header(h, "Content-Type", "application/json");
	evhttp_add_header(h, "Cache-Control", "no-store");
	evbuffer_add(buf, body, strlen(body));
	evbuffer_add(buf, "\n", 1);
	evhttp_send_reply(req, code, NULL, buf);
	evbuffer_free(buf);
}

static bool method_is_get(struct evhttp_request *req)
{
	enum evhttp_cmd_type m = evhttp_request_get_command(req);
	if (m == EVHTTP_REQ_GET || m == EVHTTP_REQ_HEAD)
		return true;
	evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
	reply_plain(req, 405, "{\"error\":{\"code\":\"method_not_allowed\",\"message\":"
		    "\"this endpoint accepts GET and HEAD\"}}");
	return false;
}

static void handle_healthz(struct evhttp_request *req, void *arg)
{
	if (!method_is_get(req))
		return;
	reply_plain(req, 200, "{\"status\":\"ok\"}");
}

static void handle_readyz(struct evhttp_request *req, void *arg)
{
	Api *api = arg;
	StrBuf sb;

	if (!method_is_get(req))
		return;
	sb_init(&sb);
	if (engine_is_ready(api->bd->engine)) {
		reply_plain(req, 200, "{\"status\":\"ready\"}");
	} else {
		const char *why = engine_db_up(api->bd->engine) ? "starting" :
			engine_db_error(api->bd->engine);
		sb_puts(&sb, "{\"status\":\"not_ready\",\"reason\":");
		json_append_string(&sb, why, strlen(why));
		sb_putc(&sb, '}');
		reply_plain(req, 503, sb.data);
	}
	sb_free(&sb);
}

void api_status_init(Api *api)
{
	struct timeval tv = { RATE_EVERY_MS / 1000, (RATE_EVERY_MS % 1000) * 1000 };

	evhttp_set_cb(api->http, "/healthz", handle_healthz, api);
	evhttp_set_cb(api->http, "/readyz", handle_readyz, api);
	api->rate_timer = evtimer_new(api->bd->base, rate_tick, api);
	evtimer_add(api->rate_timer, &tv);
}

void api_status_free(Api *api)
{
	event_free(api->rate_timer);
}
