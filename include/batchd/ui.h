/*
 * ui.h - the web dashboard: GET / (index.html), /app.js, /app.css and
 * /favicon.svg, compiled into the binary from ui/ by contrib/embed-ui.sh
 * (ui_embed.c).  The page holds no data: it signs in with a tenant token
 * and reads everything from the REST API, like any other client.
 */
#ifndef BATCHD_UI_H
#define BATCHD_UI_H

#include <stddef.h>

#include "batchd/batchd.h"
#include "batchd/util.h"

typedef struct UiAsset {
	const char *path;               /* exact URL path: "/", "/app.js", ... */
	const char *content_type;
	const unsigned char *data;      /* len bytes (NUL-terminated beyond) */
	size_t len;
	const char *etag;               /* quoted strong validator */
} UiAsset;

/* ui_embed.c, generated */
extern const UiAsset ui_assets[];
extern const int ui_assets_count;

/* Content-Security-Policy of every UI response: own origin only, no inline
 * script or style, no framing, no form posts. */
#define UI_CSP "default-src 'self'; base-uri 'none'; form-action 'none'; " \
	"frame-ancestors 'none'; object-src 'none'"

/* Serve the assets on the API's listener (no token: they hold no data).
 * 0, or -1 when a path could not be registered. */
int ui_register(Api *api) _MUSTCHECK;

#endif /* BATCHD_UI_H */
