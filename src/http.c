/*
 * http.c - curl multi_socket glue on libevent (after curl's hiperfifo.c and
 * multi-event.c examples).
 *
 * Rules we follow (see docs/libcurl/curl_multi_socket_action.md):
 *  - curl's socket callback only (re)arms or frees our per-socket event;
 *  - curl's timer callback only (re)arms our single timer, never calls curl;
 *  - every readiness event and timer expiry calls curl_multi_socket_action
 *    and then drains curl_multi_info_read;
 *  - done callbacks run from the drain, so they may add handles;
 *  - a socket context may be freed inside socket_action: never touch it
 *    afterwards.
 */
#include <stdlib.h>
#include <string.h>

#include "batchd/http.h"
#include "batchd/log.h"

typedef struct SockCtx {
	struct event *ev;
	curl_socket_t fd;
	Http *h;
} SockCtx;

struct Http {
	struct event_base *base;
	CURLM *multi;
	struct event *timer;
	int running;
	http_done_cb done;
	void *arg;
	bool draining;
};

static void http_drain(Http *h);

static void sock_event_cb(evutil_socket_t fd, short what, void *arg)
{
	SockCtx *sc = arg;
	Http *h = sc->h;
	int flags = 0;
	CURLMcode rc;

	if (what & EV_READ)
		flags |= CURL_CSELECT_IN;
	if (what & EV_WRITE)
		flags |= CURL_CSELECT_OUT;
	/* sc may be freed inside this call */
	rc = curl_multi_socket_action(h->multi, fd, flags, &h->running);
	if (rc != CURLM_OK && rc != CURLM_BAD_SOCKET)
		log_error("http: curl_multi_socket_action: %s", curl_multi_strerror(rc));
	http_drain(h);
}

static void timer_event_cb(evutil_socket_t fd, short what, void *arg)
{
	Http *h = arg;
	CURLMcode rc = curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &h->running);
	if (rc != CURLM_OK)
		log_error("http: curl_multi_socket_action(timeout): %s", curl_multi_strerror(rc));
	http_drain(h);
}

/* CURLMOPT_TIMERFUNCTION: -1 deletes the timer, anything else re-arms it. */
static int curl_timer_cb(CURLM *multi, long timeout_ms, void *arg)
{
	Http *h = arg;
	struct timeval tv;

	if (timeout_ms < 0) {
		evtimer_del(h->timer);
		return 0;
	}
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	evtimer_add(h->timer, &tv);
	return 0;
}

/* CURLMOPT_SOCKETFUNCTION */
static int curl_socket_cb(CURL *easy, curl_socket_t s, int what, void *arg, void *sockp)
{
	Http *h = arg;
	SockCtx *sc = sockp;
	short kind;

	if (what == CURL_POLL_REMOVE) {
		/* curl may send REMOVE for a socket it never assigned */
		if (sc) {
			event_free(sc->ev);
			free(sc);
		}
		curl_multi_assign(h->multi, s, NULL);
		return 0;
	}
	kind = EV_PERSIST;
	if (what & CURL_POLL_IN)
		kind |= EV_READ;
	if (what & CURL_POLL_OUT)
		kind |= EV_WRITE;
	if (!sc) {
		sc = xcalloc(1, sizeof(*sc));
		sc->h = h;
		sc->fd = s;
		sc->ev = event_new(h->base, s, kind, sock_event_cb, sc);
		curl_multi_assign(h->multi, s, sc);
	} else {
		event_del(sc->ev);
		event_assign(sc->ev, h->base, s, kind, sock_event_cb, sc);
	}
	event_add(sc->ev, NULL);
	return 0;
}

static void http_drain(Http *h)
{
	CURLMsg *msg;
	int left;

	if (h->draining)
		return;
	h->draining = true;
	while ((msg = curl_multi_info_read(h->multi, &left)) != NULL) {
		CURL *easy;
		CURLcode code;
		void *priv = NULL;

		if (msg->msg != CURLMSG_DONE)
			continue;
		/* copy before remove: the message dies with it */
		easy = msg->easy_handle;
		code = msg->data.result;
		curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&priv);
		curl_multi_remove_handle(h->multi, easy);
		h->done(easy, code, priv, h->arg);
	}
	h->draining = false;
}

Http *http_new(struct event_base *base, int max_connections, http_done_cb done, void *arg)
{
	Http *h = xcalloc(1, sizeof(*h));
	h->base = base;
	h->done = done;
	h->arg = arg;
	h->multi = curl_multi_init();
	if (!h->multi)
		fatal("curl_multi_init failed");
	h->timer = evtimer_new(base, timer_event_cb, h);
	curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb);
	curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
	curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
	curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
	/* keep a connection per concurrent transfer alive for reuse */
	curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, (long)max_connections);
	curl_multi_setopt(h->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
	return h;
}

void http_free(Http *h)
{
	if (!h)
		return;
	/* the socket callback fires inside cleanup: base must still exist */
	curl_multi_cleanup(h->multi);
	event_free(h->timer);
	free(h);
}

int http_start(Http *h, CURL *easy)
{
	CURLMcode rc = curl_multi_add_handle(h->multi, easy);
	if (rc != CURLM_OK) {
		log_error("http: curl_multi_add_handle: %s", curl_multi_strerror(rc));
		return -1;
	}
	h->running++;
	return 0;
}

void http_abort(Http *h, CURL *easy)
{
	curl_multi_remove_handle(h->multi, easy);
}

int http_running(const Http *h)
{
	return h->running;
}
