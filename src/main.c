/*
 * main.c - command line, start-up, signals and shutdown.
 *
 *   batchd [-c FILE]                 run the daemon in the foreground
 *   batchd --check-config [-c FILE]  validate the config and exit
 *   batchd migrate [-c FILE] [--down N]
 *   batchd --version
 *
 * Exit status: 0 ok, 1 runtime error, 2 bad usage or bad configuration.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#include "batchd/batchd.h"
#include "batchd/api.h"
#include "batchd/config.h"
#include "batchd/engine.h"
#include "batchd/log.h"
#include "batchd/metrics.h"
#include "batchd/migrate.h"
#include "batchd/sd.h"
#include "batchd/ui.h"

#define DEFAULT_CONFIG SYSCONFDIR "/batchd/batchd.ini"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: batchd [-c FILE]                  run the daemon\n"
		"       batchd --check-config [-c FILE]   check the configuration and exit\n"
		"       batchd migrate [-c FILE] [--down N]\n"
		"                                         apply pending schema migrations,\n"
		"                                         or revert the N most recent\n"
		"       batchd --version\n"
		"\n"
		"  -c, --config FILE   configuration file (default %s)\n"
		"  -h, --help          this help\n"
		"\n"
		"Options may come before or after the command.\n"
		"\n"
		"BATCHD_DATABASE overrides the database setting.\n", DEFAULT_CONFIG);
}

/* Resolve log_format = auto, and teach the logger the provider secrets. */
static void apply_log_settings(const Config *cfg)
{
	enum LogFormat f = cfg->log_format;

	if (f == LOGF_AUTO)
		f = sdn_stderr_is_journal() ? LOGF_JOURNAL : LOGF_TEXT;
	log_set_level(cfg->log_level);
	/* log_format = journal without a journal would print nothing at all */
	if (f == LOGF_JOURNAL && !sdn_journal_available()) {
		f = LOGF_TEXT;
		log_set_format(f);
		log_warn("log_format = journal, but there is no journal socket at %s: "
			 "logging to stderr as text", sdn_journal_socket());
	}
	log_set_format(f);
	log_clear_secrets();
	for (int i = 0; i < cfg->nproviders; i++) {
		const Provider *p = cfg->providers[i];
		for (int h = 0; h < p->nheaders; h++) {
			const char *hdr = p->headers[h];
			const char *colon = strchr(hdr, ':');
			bool secret;
			char name[128], *val, *sp;
			size_t nl;

			if (!colon)
				continue;
			nl = (size_t)(colon - hdr);
			if (nl >= sizeof(name))
				continue;
			memcpy(name, hdr, nl);
			name[nl] = '\0';
			secret = strcasecmp(name, "authorization") == 0 ||
				strcasecmp(name, "proxy-authorization") == 0;
			for (int k = 0; k < p->nsecret_headers && !secret; k++)
				secret = strcasecmp(name, p->secret_headers[k]) == 0;
			if (!secret)
				continue;
			val = xstrdup(colon + 1);
			str_trim(val);
			/* the literal part only: {field} parts vary per item */
			if (!strchr(val, '{')) {
				log_add_secret(val);
				sp = strrchr(val, ' ');
				if (sp)
					log_add_secret(sp + 1);   /* the token of "Bearer TOKEN" */
			}
			free(val);
		}
	}
}

static Config *load_config(const char *path)
{
	char err[1024];
	Config *cfg = config_load(path, err, sizeof(err));
	if (!cfg)
		fprintf(stderr, "%s\n", err);
	return cfg;
}

/* A random (version 4) uuid for this process start. */
static void make_worker_id(char *out, size_t len)
{
	unsigned char b[16];
	FILE *f = fopen("/dev/urandom", "rb");
	if (!f || fread(b, 1, sizeof(b), f) != sizeof(b))
		fatal("cannot read /dev/urandom");
	fclose(f);
	b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
	b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
	snprintf(out, len,
		 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11],
		 b[12], b[13], b[14], b[15]);
}

/* ------------------------------------------------------------------ daemon */

static Batchd g_bd;
static int g_signals;
static const char *g_config_path;

static void engine_ready(void *arg)
{
	Batchd *bd = arg;
	char status[128];
	if (bd->ready_sent)
		return;
	bd->ready_sent = true;
	snprintf(status, sizeof(status), "ready: worker %s", bd->worker_id);
	sdn_ready(status);
}

static void engine_stopped(int exit_code, void *arg)
{
	Batchd *bd = arg;

	bd->exit_code = exit_code;
	event_base_loopexit(bd->base, NULL);
}

static const EngineHandlers engine_handlers = { engine_ready, engine_stopped };

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
	Batchd *bd = arg;
	g_signals++;
	if (g_signals == 1) {
		log_info("received %s: stopping gracefully", sig == SIGINT ? "SIGINT" : "SIGTERM");
		sdn_stopping();
		engine_stop(bd->engine, false);
	} else {
		log_info("received %s again: stopping now", sig == SIGINT ? "SIGINT" : "SIGTERM");
		engine_stop(bd->engine, true);
	}
}

/* SIGHUP: re-read the config; a bad one is logged and the old one kept. */
static void on_hup(evutil_socket_t sig, short what, void *arg)
{
	Batchd *bd = arg;
	char err[1024];
	Config *nc;

	log_info("received SIGHUP: reloading %s", g_config_path);
	sdn_reloading();
	nc = config_load(g_config_path, err, sizeof(err));
	if (!nc) {
		log_error("reload failed, keeping the running configuration: %s", err);
	} else {
		apply_log_settings(nc);
		engine_reload(bd->engine, nc);
	}
	sdn_ready("reloaded");
}

/* GET /metrics: Prometheus text format 0.0.4, no token. */
static void handle_metrics(struct evhttp_request *req, void *arg)
{
	Batchd *bd = arg;
	struct evbuffer *buf;
	StrBuf sb;
	enum evhttp_cmd_type m = evhttp_request_get_command(req);

	if (m != EVHTTP_REQ_GET && m != EVHTTP_REQ_HEAD) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
		evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
				  "application/json");
		buf = evbuffer_new();
		evbuffer_add_printf(buf, "{\"error\":{\"code\":\"method_not_allowed\","
				    "\"message\":\"/metrics accepts GET and HEAD\"}}\n");
		evhttp_send_reply(req, 405, "Method Not Allowed", buf);
		evbuffer_free(buf);
		return;
	}
	sb_init(&sb);
	metrics_render(bd, &sb);
	buf = evbuffer_new();
	evbuffer_add(buf, sb.data, sb.len);
	sb_free(&sb);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "text/plain; version=0.0.4; charset=utf-8");
	evhttp_send_reply(req, 200, "OK", buf);
	evbuffer_free(buf);
}

static bool healthy(void *arg)
{
	Batchd *bd = arg;
	return engine_healthy(bd->engine);
}

/* STATUS= for systemctl status: live figures every few seconds. */
static void status_cb(evutil_socket_t fd, short what, void *arg)
{
	Batchd *bd = arg;
	static uint64_t last_done;
	static int64_t last_us;
	struct timeval tv = { 5, 0 };
	EngineStats st;
	char buf[256];
	int64_t now = now_monotonic_us();
	uint64_t done;
	double rate = 0;

	engine_get_stats(bd->engine, &st);
	done = st.succeeded + st.failed;
	if (last_us)
		rate = (double)(done - last_done) / ((double)(now - last_us) / 1e6);
	last_done = done;
	last_us = now;
	snprintf(buf, sizeof(buf), "%s; in flight %d, held %d; %.1f done/s; %d breaker(s) open; "
		 "%llu succeeded, %llu failed",
		 engine_is_ready(bd->engine) ? "database up" : "database DOWN", st.inflight, st.held,
		 rate, engine_breakers_open(bd->engine), (unsigned long long)st.succeeded,
		 (unsigned long long)st.failed);
	if (bd->ready_sent)
		sdn_status(buf);
	evtimer_add(bd->status_timer, &tv);
}

static int run_daemon(Config *cfg)
{
	Batchd *bd = &g_bd;
	struct event *ev_term, *ev_int, *ev_hup;
	struct timeval tv5 = { 5, 0 };
	char err[512];

	memset(bd, 0, sizeof(*bd));
	bd->cfg = cfg;
	bd->start_us = now_realtime_us();
	make_worker_id(bd->worker_id, sizeof(bd->worker_id));
	log_set_worker_id(bd->worker_id);
	log_set_journal_sink(sdn_journal_sink);
	if (gethostname(bd->hostname, sizeof(bd->hostname) - 1) != 0)
		snprintf(bd->hostname, sizeof(bd->hostname), "unknown");
	srandom((unsigned)(time(NULL) ^ getpid()));

	/* a write to a closed socket must be an error, not our death */
	signal(SIGPIPE, SIG_IGN);
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
		log_error("curl_global_init failed");
		config_free(cfg);
		return 1;
	}
	bd->base = event_base_new();
	if (!bd->base) {
		log_error("event_base_new failed");
		config_free(cfg);
		return 1;
	}
	log_info("batchd %s starting: worker %s on %s, pid %d", PACKAGE_VERSION, bd->worker_id,
		 bd->hostname, (int)getpid());

	bd->engine = engine_new(bd, &engine_handlers, bd);
	/* socket activation: systemd's listeners replace listen */
	bd->listen_fds = sdn_listen_fds();
	if (cfg->listen || bd->listen_fds > 0) {
		bd->api = api_new(bd, err, sizeof(err));
		if (!bd->api) {
			log_error("%s", err);
			engine_free(bd->engine);
			event_base_free(bd->base);
			curl_global_cleanup();
			config_free(cfg);
			return 1;
		}
	}
	ev_term = evsignal_new(bd->base, SIGTERM, on_stop_signal, bd);
	ev_int = evsignal_new(bd->base, SIGINT, on_stop_signal, bd);
	ev_hup = evsignal_new(bd->base, SIGHUP, on_hup, bd);
	evsignal_add(ev_term, NULL);
	evsignal_add(ev_int, NULL);
	evsignal_add(ev_hup, NULL);
	bd->status_timer = evtimer_new(bd->base, status_cb, bd);
	evtimer_add(bd->status_timer, &tv5);
	sdn_start(bd->base, healthy, bd);
	if (bd->api && api_add_handler(bd->api, "/metrics", handle_metrics, bd) < 0)
		log_error("cannot serve /metrics");
	if (bd->api && ui_register(bd->api) < 0)
		log_error("cannot serve the web dashboard");

	engine_start(bd->engine);
	event_base_dispatch(bd->base);

	log_info("batchd stopped (exit status %d)", bd->exit_code);
	sdn_stop();
	event_free(ev_term);
	event_free(ev_int);
	event_free(ev_hup);
	event_free(bd->status_timer);
	api_free(bd->api);
	engine_free(bd->engine);
	/* the engine may have switched configs at reloads: free the current one */
	config_free(bd->cfg);
	event_base_free(bd->base);
	curl_global_cleanup();
	return bd->exit_code;
}

/* -------------------------------------------------------------------- main */

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check-config", no_argument, NULL, 'C' },
		{ "down", required_argument, NULL, 'D' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = DEFAULT_CONFIG;
	const char *down_arg = NULL;
	bool check = false;
	bool migrate = false;
	int down = 0;
	int c, rc;
	Config *cfg;

	/* Options may stand before or after the command ("batchd -c FILE
	 * migrate" and "batchd migrate -c FILE" are the same): getopt_long
	 * permutes, so every option is read first and the operands (the
	 * command) are what is left. */
	while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			path = optarg;
			break;
		case 'C':
			check = true;
			break;
		case 'D':
			down_arg = optarg;
			break;
		case 'V':
			printf("batchd %s\n", PACKAGE_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	for (int i = optind; i < argc; i++) {
		if (strcmp(argv[i], "migrate") != 0) {
			fprintf(stderr, "batchd: unexpected argument '%s' (the only command is "
				"'migrate')\n", argv[i]);
			usage(stderr);
			return 2;
		}
		if (migrate) {
			fprintf(stderr, "batchd: 'migrate' given twice: one command at a time\n");
			usage(stderr);
			return 2;
		}
		migrate = true;
	}
	if (down_arg) {
		char *end;
		long n = strtol(down_arg, &end, 10);
		if (!migrate || *end || end == down_arg || n < 1 || n > 100000) {
			fprintf(stderr, "batchd: --down takes a positive count and only "
				"goes with 'migrate'\n");
			return 2;
		}
		down = (int)n;
	}
	if (check && migrate) {
		fprintf(stderr, "batchd: --check-config does not go with migrate\n");
		return 2;
	}

	g_config_path = path;
	cfg = load_config(path);
	if (!cfg)
		return 2;
	apply_log_settings(cfg);

	if (check) {
		printf("%s: configuration ok (%d provider(s), %d route(s))\n", path,
		       cfg->nproviders, cfg->nroutes);
		config_free(cfg);
		return 0;
	}
	if (migrate) {
		rc = migrate_run(cfg->database, down);
		config_free(cfg);
		return rc;
	}
	return run_daemon(cfg);   /* frees the config */
}
