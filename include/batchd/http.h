/*
 * http.h - libcurl multi_socket transfers driven by libevent.
 *
 * A few CURLM shards (one per 64 transfers of max_inflight: libcurl 7.88
 * walks every cached connection to a host to pick one), each with one
 * timer event; one persistent event per socket curl tells us about.
 * Finished transfers are reported through the done callback from the
 * drain step, never from inside a curl callback, so the callee may start
 * new transfers right away.
 */
#ifndef BATCHD_HTTP_H
#define BATCHD_HTTP_H

#include <curl/curl.h>
#include <event2/event.h>

#include "batchd/util.h"

typedef struct Http Http;

/* Called once per finished transfer with the easy handle's private pointer.
 * The easy handle has been removed from the multi already; the callee owns
 * it again (to reuse or clean up; its connection stays cached in the multi). */
typedef void (*http_done_cb)(CURL *easy, CURLcode code, void *priv, void *arg);

Http *http_new(struct event_base *base, int max_connections, http_done_cb done, void *arg);
void http_free(Http *h);

/* Start a configured transfer on the least busy shard; returns the shard
 * (>= 0, for http_abort) or -1 (then the handle is still the caller's). */
int http_start(Http *h, CURL *easy) _MUSTCHECK;
/* Abort a running transfer started on shard (no done callback). The handle
 * is the caller's. */
void http_abort(Http *h, CURL *easy, int shard);

#endif /* BATCHD_HTTP_H */
