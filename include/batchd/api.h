/*
 * api.h - the evhttp server on the main loop: health and readiness, and the
 * REST API under /v1 (bearer tokens, one tenant per token; see api.c for the
 * endpoints and how requests, streams and vanished clients are handled).
 * The submit body check is api_submit.h.
 */
#ifndef BATCHD_API_H
#define BATCHD_API_H

#include "batchd/batchd.h"

struct evhttp_request;

/* Bind cfg->listen and start the API's database connections; returns NULL
 * with err on failure. */
Api *api_new(Batchd *bd, char *err, size_t errlen);
/* Close everything: requests in progress are dropped, streams cut. */
void api_free(Api *api);

/* Serve an exact path (no token checked), e.g. "/metrics". 0 or -1. */
int api_add_handler(Api *api, const char *path,
		    void (*cb)(struct evhttp_request *req, void *arg), void *arg) _MUSTCHECK;

/* Split "host:port" / "[v6]:port" into parts; 0 or -1. */
int api_parse_listen(const char *listen, char *host, size_t hostlen, int *port) _MUSTCHECK;

#endif /* BATCHD_API_H */
