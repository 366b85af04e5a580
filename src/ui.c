/*
 * ui.c - the web dashboard's static files, served from memory.
 *
 * The HTML, JavaScript, CSS and icon in ui/ are compiled into the binary
 * (contrib/embed-ui.sh -> ui_embed.c) so that the daemon has nothing to find
 * on disk and no CDN to reach.  They are public: they embed no token and no
 * tenant data; the page asks the REST API for everything with the token the
 * user typed (kept in the browser's session storage).
 *
 * Every answer here carries the same security headers: a Content-Security-
 * Policy that allows the page's own origin only (no inline script or style,
 * which the page does not use), X-Content-Type-Options: nosniff,
 * Referrer-Policy: no-referrer, and X-Frame-Options: DENY for browsers that
 * predate frame-ancestors.  Assets revalidate on every load (no-cache) with a
 * strong ETag, so an upgraded batchd serves its new page at once and an
 * unchanged one answers 304 with no body.
 */
#include <stdint.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "batchd/api.h"
#include "batchd/log.h"
#include "batchd/ui.h"

static void add_security_headers(struct evkeyvalq *h)
{
	evhttp_add_header(h, "Content-Security-Policy", UI_CSP);
	evhttp_add_header(h, "X-Content-Type-Options", "nosniff");
	evhttp_add_header(h, "Referrer-Policy", "no-referrer");
	evhttp_add_header(h, "X-Frame-Options", "DENY");
	evhttp_add_header(h, "Cross-Origin-Opener-Policy", "same-origin");
	evhttp_add_header(h, "Cross-Origin-Resource-Policy", "same-origin");
}

/* Does an If-None-Match list name etag (or "*")?  Weak validators compare
 * weakly, as RFC 9110 asks for If-None-Match. */
static bool etag_matches(const char *inm, const char *etag)
{
	size_t elen = strlen(etag);
	const char *p = inm;

	while (p && *p) {
		const char *end;
		size_t n;

		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		if (*p == '*')
			return true;
		if (strncmp(p, "W/", 2) == 0)
			p += 2;
		end = strchr(p, ',');
		n = end ? (size_t)(end - p) : strlen(p);
		while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		if (n == elen && memcmp(p, etag, n) == 0)
			return true;
		p = end;
	}
	return false;
}

static void reply_text(struct evhttp_request *req, int code, const char *reason, const char *msg)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	struct evbuffer *buf = evbuffer_new();

	evhttp_add_header(h, "Content-Type", "text/plain; charset=utf-8");
	evhttp_add_header(h, "Cache-Control", "no-store");
	evbuffer_add(buf, msg, strlen(msg));
	evhttp_send_reply(req, code, reason, buf);
	evbuffer_free(buf);
}

static void handle_asset(struct evhttp_request *req, void *arg)
{
	const UiAsset *a = arg;
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	enum evhttp_cmd_type m = evhttp_request_get_command(req);
	const char *inm;
	struct evbuffer *buf;

	add_security_headers(h);
	if (m != EVHTTP_REQ_GET && m != EVHTTP_REQ_HEAD) {
		evhttp_add_header(h, "Allow", "GET, HEAD");
		reply_text(req, 405, "Method Not Allowed", "405 method not allowed (GET, HEAD)\n");
		return;
	}
	/* evhttp matches the path without the query; the query means nothing
	 * here (and is never a place for a token) */
	evhttp_add_header(h, "Cache-Control", "no-cache");
	evhttp_add_header(h, "ETag", a->etag);
	inm = evhttp_find_header(evhttp_request_get_input_headers(req), "If-None-Match");
	if (inm && etag_matches(inm, a->etag)) {
		evhttp_send_reply(req, 304, "Not Modified", NULL);
		return;
	}
	evhttp_add_header(h, "Content-Type", a->content_type);
	buf = evbuffer_new();
	if (!buf || evbuffer_add_reference(buf, a->data, a->len, NULL, NULL) < 0) {
		if (buf)
			evbuffer_free(buf);
		reply_text(req, 500, "Internal Server Error", "500 out of memory\n");
		return;
	}
	evhttp_send_reply(req, 200, "OK", buf);
	evbuffer_free(buf);
}

int ui_register(Api *api)
{
	int rc = 0;

	for (int i = 0; i < ui_assets_count; i++) {
		/* the callback only reads the asset, a static const */
		if (api_add_handler(api, ui_assets[i].path, handle_asset,
				    (void *)(uintptr_t)&ui_assets[i]) < 0) {
			log_error("web UI: cannot serve %s", ui_assets[i].path);
			rc = -1;
		}
	}
	return rc;
}
