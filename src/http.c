/*
 * http.c - curl multi_socket glue on libevent (after curl's hiperfifo.c and
 * multi-event.c examples).
 *
 * Rules we follow (see docs/libcurl/curl_multi_socket_action.md):
 *  - curl's socket callback only (re)arms or frees our per-socket event;
 *  - curl's timer callback only (re)arms its shard's timer, never calls curl;
 *  - every readiness event and timer expiry calls curl_multi_socket_action
 *    and then drains curl_multi_info_read;
 *  - done callbacks run from the drain, so they may add handles; a handle
 *    added by them on the draining shard is started by one more
 *    socket_action(TIMEOUT) before the drain returns, not after the rest
 *    of the loop turn;
 *  - a socket context may be freed inside socket_action: never touch it
 *    afterwards.
 */
#include <stdlib.h>
#include <string.h>

#include "batchd/http.h"
#include "batchd/log.h"

/*
 * Shards: one CURLM per (about) HTTP_SHARD_SIZE concurrent transfers.
 *
 * libcurl 7.88 picks a connection for a transfer by walking every connection
 * it holds to that host (ConnectionExists), and with HTTP/1.1 there is one
 * connection per concurrent transfer: at max_inflight 1000 that walk was the
 * largest single cost in the process (~15,000 instructions per request,
 * callgrind). Each CURLM has its own connection cache, so K multi handles
 * bound the walk to the connections of one shard. A new transfer goes to the
 * shard with the fewest transfers, which keeps each shard's connections in
 * use (an idle one is there when a transfer arrives) and the shards even.
 */
#define HTTP_SHARD_SIZE 64
#define HTTP_MAX_SHARDS 64
#define HTTP_SHARD_SLACK 4

typedef struct Shard Shard;

typedef struct SockCtx {
	struct event *ev;
	curl_socket_t fd;
	Shard *s;
} SockCtx;

struct Shard {
	Http *h;
	CURLM *multi;
	struct event *timer;
	int running;		/* curl's count, from curl_multi_socket_action */
	int added;		/* handles added and not yet removed */
	bool draining;
	bool kick;		/* a transfer was started here while draining */
};

struct Http {
	struct event_base *base;
	Shard *shards;
	int nshards;
	Shard *draining;	/* whose done callbacks are running, or NULL */
	http_done_cb done;
	void *arg;
};

static void http_drain(Shard *s);

static void sock_event_cb(evutil_socket_t fd, short what, void *arg)
{
	SockCtx *sc = arg;
	Shard *s = sc->s;
	int flags = 0;
	CURLMcode rc;

	if (what & EV_READ)
		flags |= CURL_CSELECT_IN;
	if (what & EV_WRITE)
		flags |= CURL_CSELECT_OUT;
	/* sc may be freed inside this call */
	rc = curl_multi_socket_action(s->multi, fd, flags, &s->running);
	if (rc != CURLM_OK && rc != CURLM_BAD_SOCKET)
		log_error("http: curl_multi_socket_action: %s", curl_multi_strerror(rc));
	http_drain(s);
}

static void timer_event_cb(evutil_socket_t fd, short what, void *arg)
{
	Shard *s = arg;
	CURLMcode rc = curl_multi_socket_action(s->multi, CURL_SOCKET_TIMEOUT, 0, &s->running);
	if (rc != CURLM_OK)
		log_error("http: curl_multi_socket_action(timeout): %s", curl_multi_strerror(rc));
	http_drain(s);
}

/* CURLMOPT_TIMERFUNCTION: -1 deletes the timer, anything else re-arms it. */
static int curl_timer_cb(CURLM *multi, long timeout_ms, void *arg)
{
	Shard *s = arg;
	struct timeval tv;

	if (timeout_ms < 0) {
		evtimer_del(s->timer);
		return 0;
	}
	tv.tv_sec = timeout_ms / 1000;
	tv.tv_usec = (timeout_ms % 1000) * 1000;
	evtimer_add(s->timer, &tv);
	return 0;
}

/* CURLMOPT_SOCKETFUNCTION */
static int curl_socket_cb(CURL *easy, curl_socket_t fd, int what, void *arg, void *sockp)
{
	Shard *s = arg;
	SockCtx *sc = sockp;
	short kind;

	if (what == CURL_POLL_REMOVE) {
		/* curl may send REMOVE for a socket it never assigned */
		if (sc) {
			event_free(sc->ev);
			free(sc);
		}
		curl_multi_assign(s->multi, fd, NULL);
		return 0;
	}
	kind = EV_PERSIST;
	if (what & CURL_POLL_IN)
		kind |= EV_READ;
	if (what & CURL_POLL_OUT)
		kind |= EV_WRITE;
	if (!sc) {
		sc = xcalloc(1, sizeof(*sc));
		sc->s = s;
		sc->fd = fd;
		sc->ev = event_new(s->h->base, fd, kind, sock_event_cb, sc);
		curl_multi_assign(s->multi, fd, sc);
	} else {
		event_del(sc->ev);
		event_assign(sc->ev, s->h->base, fd, kind, sock_event_cb, sc);
	}
	event_add(sc->ev, NULL);
	return 0;
}

static void http_drain(Shard *s)
{
	Http *h = s->h;
	Shard *outer;
	CURLMsg *msg;
	int left;

	if (s->draining)
		return;
	s->draining = true;
	outer = h->draining;
	h->draining = s;
	for (;;) {
		while ((msg = curl_multi_info_read(s->multi, &left)) != NULL) {
			CURL *easy;
			CURLcode code;
			void *priv = NULL;

			if (msg->msg != CURLMSG_DONE)
				continue;
			/* copy before remove: the message dies with it */
			easy = msg->easy_handle;
			code = msg->data.result;
			curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&priv);
			curl_multi_remove_handle(s->multi, easy);
			s->added--;
			h->done(easy, code, priv, h->arg);
		}
		if (!s->kick)
			break;
		/*
		 * The done callbacks started transfers here (the next item, on the
		 * connection just freed). curl would send them from its zero
		 * timeout, i.e. after every other event of this loop turn: under a
		 * burst of answers that is the whole burst later. Send them now;
		 * this is outside any curl callback, so socket_action may be called.
		 */
		s->kick = false;
		CURLMcode rc = curl_multi_socket_action(s->multi, CURL_SOCKET_TIMEOUT, 0, &s->running);
		if (rc != CURLM_OK)
			log_error("http: curl_multi_socket_action(kick): %s", curl_multi_strerror(rc));
	}
	h->draining = outer;
	s->draining = false;
}

static int http_shards_for(int max_connections)
{
	int n = (max_connections + HTTP_SHARD_SIZE - 1) / HTTP_SHARD_SIZE;

	if (n < 1)
		n = 1;
	return n > HTTP_MAX_SHARDS ? HTTP_MAX_SHARDS : n;
}

Http *http_new(struct event_base *base, int max_connections, http_done_cb done, void *arg)
{
	Http *h = xcalloc(1, sizeof(*h));
	long keep;

	h->base = base;
	h->done = done;
	h->arg = arg;
	h->nshards = http_shards_for(max_connections);
	h->shards = xcalloc((size_t)h->nshards, sizeof(*h->shards));
	/*
	 * Keep a connection per concurrent transfer alive for reuse: the shards
	 * share the transfers evenly; a quarter more each absorbs the unevenness
	 * of the moment without closing connections that are about to be needed.
	 */
	keep = (max_connections + h->nshards - 1) / h->nshards;
	keep += keep / 4 + 1;
	for (int i = 0; i < h->nshards; i++) {
		Shard *s = &h->shards[i];

		s->h = h;
		s->multi = curl_multi_init();
		if (!s->multi)
			fatal("curl_multi_init failed");
		s->timer = evtimer_new(base, timer_event_cb, s);
		curl_multi_setopt(s->multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb);
		curl_multi_setopt(s->multi, CURLMOPT_SOCKETDATA, s);
		curl_multi_setopt(s->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
		curl_multi_setopt(s->multi, CURLMOPT_TIMERDATA, s);
		curl_multi_setopt(s->multi, CURLMOPT_MAXCONNECTS, keep);
		curl_multi_setopt(s->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
	}
	return h;
}

void http_free(Http *h)
{
	if (!h)
		return;
	for (int i = 0; i < h->nshards; i++) {
		/* the socket callback fires inside cleanup: base must still exist */
		curl_multi_cleanup(h->shards[i].multi);
		event_free(h->shards[i].timer);
	}
	free(h->shards);
	free(h);
}

int http_start(Http *h, CURL *easy)
{
	int best = 0;
	Shard *s;
	CURLMcode rc;

	for (int i = 1; i < h->nshards; i++)
		if (h->shards[i].added < h->shards[best].added)
			best = i;
	/*
	 * Started from a done callback: the shard that just freed a connection
	 * has an idle one to the host (and is about to send), unless it is
	 * already well above the least busy.
	 */
	if (h->draining && h->draining->added <= h->shards[best].added + HTTP_SHARD_SLACK)
		best = (int)(h->draining - h->shards);
	s = &h->shards[best];
	rc = curl_multi_add_handle(s->multi, easy);
	if (rc != CURLM_OK) {
		log_error("http: curl_multi_add_handle: %s", curl_multi_strerror(rc));
		return -1;
	}
	s->added++;
	if (s->draining)
		s->kick = true;
	return best;
}

void http_abort(Http *h, CURL *easy, int shard)
{
	Shard *s;

	if (shard < 0 || shard >= h->nshards)
		return;
	s = &h->shards[shard];
	if (curl_multi_remove_handle(s->multi, easy) == CURLM_OK && s->added > 0)
		s->added--;
}
