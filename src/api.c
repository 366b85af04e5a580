/*
 * api.c - evhttp server on the main loop.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "batchd/api.h"
#include "batchd/engine.h"
#include "batchd/json.h"
#include "batchd/log.h"

struct Api {
	Batchd *bd;
	struct evhttp *http;
};

int api_parse_listen(const char *listen, char *host, size_t hostlen, int *port)
{
	const char *colon;
	char *end;
	long p;
	size_t n;

	if (!listen || !*listen)
		return -1;
	if (listen[0] == '[') {
		const char *close = strchr(listen, ']');
		if (!close || close[1] != ':')
			return -1;
		n = (size_t)(close - listen - 1);
		colon = close + 1;
		listen++;
	} else {
		colon = strrchr(listen, ':');
		if (!colon)
			return -1;
		n = (size_t)(colon - listen);
	}
	if (n == 0 || n >= hostlen)
		return -1;
	memcpy(host, listen, n);
	host[n] = '\0';
	p = strtol(colon + 1, &end, 10);
	if (*end || end == colon + 1 || p < 0 || p > 65535)
		return -1;
	*port = (int)p;
	return 0;
}

static void reply_json(struct evhttp_request *req, int code, const char *reason, const char *body)
{
	struct evbuffer *buf = evbuffer_new();
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);

	evhttp_add_header(h, "Content-Type", "application/json");
	evhttp_add_header(h, "Cache-Control", "no-store");
	evbuffer_add(buf, body, strlen(body));
	evbuffer_add(buf, "\n", 1);
	evhttp_send_reply(req, code, reason, buf);
	evbuffer_free(buf);
}

static void reply_error(struct evhttp_request *req, int code, const char *reason,
			const char *ecode, const char *msg)
{
	StrBuf sb;
	sb_init(&sb);
	sb_printf(&sb, "{\"error\":{\"code\":\"%s\",\"message\":", ecode);
	json_append_string(&sb, msg, strlen(msg));
	sb_puts(&sb, "}}");
	reply_json(req, code, reason, sb.data);
	sb_free(&sb);
}

static bool method_is_get(struct evhttp_request *req)
{
	enum evhttp_cmd_type m = evhttp_request_get_command(req);
	if (m == EVHTTP_REQ_GET || m == EVHTTP_REQ_HEAD)
		return true;
	evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
	reply_error(req, 405, "Method Not Allowed", "method_not_allowed",
		    "this endpoint accepts GET and HEAD");
	return false;
}

static void handle_healthz(struct evhttp_request *req, void *arg)
{
	if (!method_is_get(req))
		return;
	reply_json(req, 200, "OK", "{\"status\":\"ok\"}");
}

static void handle_readyz(struct evhttp_request *req, void *arg)
{
	Api *api = arg;
	StrBuf sb;

	if (!method_is_get(req))
		return;
	sb_init(&sb);
	if (engine_is_ready(api->bd->engine)) {
		reply_json(req, 200, "OK", "{\"status\":\"ready\"}");
	} else {
		const char *why = engine_db_up(api->bd->engine) ? "starting" :
			engine_db_error(api->bd->engine);
		sb_puts(&sb, "{\"status\":\"not_ready\",\"reason\":");
		json_append_string(&sb, why, strlen(why));
		sb_putc(&sb, '}');
		reply_json(req, 503, "Service Unavailable", sb.data);
	}
	sb_free(&sb);
}

static void handle_other(struct evhttp_request *req, void *arg)
{
	reply_error(req, 404, "Not Found", "not_found", "no such endpoint");
}

Api *api_new(Batchd *bd, char *err, size_t errlen)
{
	char host[256];
	int port;
	Api *api;

	if (api_parse_listen(bd->cfg->listen, host, sizeof(host), &port) < 0) {
		snprintf(err, errlen, "listen: cannot parse '%s' (want host:port or [v6]:port)",
			 bd->cfg->listen);
		return NULL;
	}
	api = xcalloc(1, sizeof(*api));
	api->bd = bd;
	api->http = evhttp_new(bd->base);
	if (!api->http)
		fatal("evhttp_new failed");
	evhttp_set_timeout(api->http, 60);
	evhttp_set_max_headers_size(api->http, 64 * 1024);
	evhttp_set_max_body_size(api->http, 64 * 1024 * 1024);
	evhttp_set_allowed_methods(api->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
				   EVHTTP_REQ_DELETE | EVHTTP_REQ_PUT | EVHTTP_REQ_PATCH);
	evhttp_set_cb(api->http, "/healthz", handle_healthz, api);
	evhttp_set_cb(api->http, "/readyz", handle_readyz, api);
	evhttp_set_gencb(api->http, handle_other, api);
	if (!evhttp_bind_socket_with_handle(api->http, host, (ev_uint16_t)port)) {
		snprintf(err, errlen, "listen: cannot bind %s: address in use or not available",
			 bd->cfg->listen);
		evhttp_free(api->http);
		free(api);
		return NULL;
	}
	log_info("listening on %s", bd->cfg->listen);
	return api;
}

void api_free(Api *api)
{
	if (!api)
		return;
	evhttp_free(api->http);
	free(api);
}
