/*
 * request.c - render and send-ready one job's request (see request.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "batchd/log.h"
#include "batchd/request.h"
#include "batchd/tmpl.h"

/* ---------------------------------------------------------- callbacks */

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
	Job *j = ud;
	size_t n = size * nmemb;

	if ((int64_t)(j->resp.len + n) > j->max_size) {
		j->too_big = true;
		return 0;  /* CURLE_WRITE_ERROR */
	}
	sb_append(&j->resp, ptr, n);
	return n;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *ud)
{
	Job *j = ud;
	size_t n = size * nitems;
	static const char name[] = "retry-after:";

	if (n > sizeof(name) - 1 && strncasecmp(buf, name, sizeof(name) - 1) == 0) {
		size_t off = sizeof(name) - 1, len;
		while (off < n && (buf[off] == ' ' || buf[off] == '\t'))
			off++;
		len = n - off;
		while (len > 0 && (buf[off + len - 1] == '\r' || buf[off + len - 1] == '\n' ||
				   buf[off + len - 1] == ' '))
			len--;
		if (len >= sizeof(j->retry_after))
			len = sizeof(j->retry_after) - 1;
		memcpy(j->retry_after, buf + off, len);
		j->retry_after[len] = '\0';
	}
	return n;
}

static bool has_header(const Provider *p, const char *name)
{
	size_t n = strlen(name);
	for (int i = 0; i < p->nheaders; i++)
		if (strncasecmp(p->headers[i], name, n) == 0 && p->headers[i][n] == ':')
			return true;
	return false;
}

/* ------------------------------------------------------ easy-handle pool */

/*
 * Each provider keeps (in its HandlePool) the easy handles of its finished
 * transfers, set up with what is the same for every request to it (method,
 * timeouts, limits, callbacks, proxy choice): the next transfer sets only
 * what differs per item (URL, headers, body, its own pointers).  A reset and
 * twenty setopts per request were a measurable share of batchd's CPU per
 * item.  A reload gives the provider a new section and a new generation:
 * handles of an older one are dropped, never reused.
 */
#define POOL_MAX 4096

static bool proxy_env_checked, proxy_env_set;

/* curl reads these on every transfer (several getenv scans each); when
 * none is set we tell it so once, on the handle, with the same effect. */
static bool proxy_from_env(void)
{
	static const char *const vars[] = {
		"http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
		"no_proxy", "NO_PROXY",
	};

	if (!proxy_env_checked) {
		proxy_env_checked = true;
		for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
			if (getenv(vars[i]))
				proxy_env_set = true;
	}
	return proxy_env_set;
}

static bool is_method(const Provider *p, const char *m)
{
	return strcmp(p->method, m) == 0;
}

static CURL *easy_new(const Provider *p)
{
	CURL *c = curl_easy_init();

	if (!c)
		fatal("curl_easy_init failed");
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)p->timeout_ms);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)p->connect_timeout_ms);
	curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)p->max_response_size);
	curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, "");
	curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
	/* 16 KiB by default, per transfer: with 1000 in flight that is most of
	 * the heap; small answers are the norm, big ones just take more reads */
	curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 4096L);
	/* User-Agent and Accept-Encoding go in the header list (job_headers) */
	if (!proxy_from_env()) {
		curl_easy_setopt(c, CURLOPT_PROXY, "");
		curl_easy_setopt(c, CURLOPT_NOPROXY, "");
	}
	if (is_method(p, "GET"))
		curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
	else
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, p->method);
	return c;
}

static CURL *pool_get(HandlePool *pool, const Provider *p)
{
	if (pool->n > 0)
		return pool->v[--pool->n];
	return easy_new(p);
}

static void pool_put(HandlePool *pool, CURL *c, uint64_t gen)
{
	/* the job, its error buffer and its header list go away now */
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
	if (gen != pool->gen || pool->closed || pool->n >= POOL_MAX) {
		curl_easy_cleanup(c);
		return;
	}
	if (pool->n == pool->cap) {
		pool->cap = pool->cap ? pool->cap * 2 : 16;
		pool->v = xrealloc(pool->v, (size_t)pool->cap * sizeof(CURL *));
	}
	pool->v[pool->n++] = c;
}

void handle_pool_clear(HandlePool *pool)
{
	while (pool->n > 0)
		curl_easy_cleanup(pool->v[--pool->n]);
}

void handle_pool_renew(HandlePool *pool)
{
	pool->gen++;
	pool->closed = false;
	handle_pool_clear(pool);
}

void handle_pool_close(HandlePool *pool)
{
	pool->closed = true;
	handle_pool_clear(pool);
}

void handle_pool_free(HandlePool *pool)
{
	handle_pool_clear(pool);
	free(pool->v);
	pool->v = NULL;
	pool->cap = 0;
}

void request_release(Job *j)
{
	if (j->easy) {
		pool_put(j->easy_pool, j->easy, j->easy_gen);
		j->easy = NULL;
		j->easy_pool = NULL;
	}
	j->headers = NULL;   /* its nodes and text are the job's, reused */
	sb_reset(&j->url);
	sb_reset(&j->body);
	sb_reset(&j->resp);
	j->too_big = false;
	j->retry_after[0] = '\0';
	j->errbuf[0] = '\0';
}

/*
 * "Accept-Encoding: <what this libcurl decodes>", the header curl itself
 * would send for CURLOPT_ACCEPT_ENCODING "" (its list: deflate and gzip with
 * zlib, br with brotli, zstd with zstd), or NULL when it decodes nothing.
 * We send it as our own header, so curl skips building it per request (one
 * aprintf, then a second pass through its printf into the request); the
 * handle keeps CURLOPT_ACCEPT_ENCODING "" so that answers are decoded.
 */
static const char *accept_encoding_header(void)
{
	static char hdr[96];
	static bool done;

	if (!done) {
		const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
		StrBuf sb;

		done = true;
		sb_init(&sb);
		if (v->features & CURL_VERSION_LIBZ)
			sb_puts(&sb, ", deflate, gzip");
		if (v->features & CURL_VERSION_BROTLI)
			sb_puts(&sb, ", br");
		if (v->features & CURL_VERSION_ZSTD)
			sb_puts(&sb, ", zstd");
		if (sb.len > 0)
			snprintf(hdr, sizeof(hdr), "Accept-Encoding: %s", sb.data + 2);
		sb_free(&sb);
	}
	return hdr[0] ? hdr : NULL;
}

#define USER_AGENT_HEADER "User-Agent: batchd/" PACKAGE_VERSION

/*
 * The request's header list: the provider's headers (templates rendered),
 * the idempotency key, Content-Type, User-Agent and Accept-Encoding unless
 * the provider sets them, and "Expect:" (no 100-continue round trip on
 * larger bodies). Built in the job's own nodes and text buffer, kept from
 * one try to the next: no allocation per header. curl reads the list during
 * the transfer only; the job outlives its transfer.
 */
static int job_headers(Job *j, const Provider *p, const char *token_header, char *err,
		       size_t errlen)
{
	const char *fixed[4], *ae = accept_encoding_header();
	size_t small[16], *offs = small;
	int nfixed = 0, ndyn = 0, n, rc = -1;

	sb_reset(&j->hbuf);
	if (p->nheaders + 2 > (int)(sizeof(small) / sizeof(small[0])))
		offs = xcalloc((size_t)p->nheaders + 2, sizeof(*offs));
	for (int i = 0; i < p->nheaders; i++) {
		offs[ndyn++] = j->hbuf.len;
		if (tmpl_render(p->headers[i], j->payload, TMPL_HEADER, &j->hbuf, err, errlen) < 0)
			goto fail;
		sb_putc(&j->hbuf, '\0');
	}
	if (token_header) {
		/* the login's token (login.h), already rendered */
		offs[ndyn++] = j->hbuf.len;
		sb_puts(&j->hbuf, token_header);
		sb_putc(&j->hbuf, '\0');
	}
	if (p->idempotency_header) {
		/* stable for the item across tries, providers and workers */
		offs[ndyn++] = j->hbuf.len;
		sb_puts(&j->hbuf, p->idempotency_header);
		sb_puts(&j->hbuf, ": ");
		sb_puts(&j->hbuf, j->batch_id);
		sb_putc(&j->hbuf, '-');
		sb_put_i64(&j->hbuf, j->id);
		sb_putc(&j->hbuf, '\0');
	}
	if (j->body.len > 0 && !has_header(p, "Content-Type"))
		fixed[nfixed++] = "Content-Type: application/json";
	if (!has_header(p, "User-Agent"))
		fixed[nfixed++] = USER_AGENT_HEADER;
	if (!has_header(p, "Accept-Encoding") && ae)
		fixed[nfixed++] = ae;
	fixed[nfixed++] = "Expect:";

	n = ndyn + nfixed;
	if (n > j->hnodes_cap) {
		j->hnodes = xrealloc(j->hnodes, (size_t)n * sizeof(*j->hnodes));
		j->hnodes_cap = n;
	}
	/* the text buffer is complete: pointers into it stay put */
	for (int i = 0; i < ndyn; i++)
		j->hnodes[i].data = j->hbuf.data + offs[i];
	for (int i = 0; i < nfixed; i++)
		j->hnodes[ndyn + i].data = (char *)fixed[i];
	for (int i = 0; i < n; i++)
		j->hnodes[i].next = i + 1 < n ? &j->hnodes[i + 1] : NULL;
	j->headers = &j->hnodes[0];
	rc = 0;
fail:
	if (offs != small)
		free(offs);
	return rc;
}

int request_prepare(Job *j, const Provider *p, HandlePool *pool, const char *token_header,
		    char *err, size_t errlen)
{
	CURL *c;

	if (j->easy)
		fatal("item %lld: request prepared twice", (long long)j->id);
	if (tmpl_render(p->url, j->payload, TMPL_URL, &j->url, err, errlen) < 0)
		return -1;
	if (p->body) {
		if (tmpl_render(p->body, j->payload, TMPL_JSON, &j->body, err, errlen) < 0)
			return -1;
	} else if (!is_method(p, "GET") && !is_method(p, "DELETE")) {
		sb_puts(&j->body, j->payload_text);
	}
	if (job_headers(j, p, token_header, err, errlen) < 0)
		return -1;

	c = j->easy = pool_get(pool, p);
	j->easy_pool = pool;
	j->easy_gen = pool->gen;
	curl_easy_setopt(c, CURLOPT_URL, j->url.data);
	curl_easy_setopt(c, CURLOPT_PRIVATE, j);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, j->errbuf);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, j);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, j);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, j->headers);
	if (!is_method(p, "GET")) {
		if (j->body.len > 0 || !is_method(p, "DELETE")) {
			curl_easy_setopt(c, CURLOPT_POSTFIELDS, j->body.data ? j->body.data : "");
			curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)j->body.len);
		} else {
			/* a DELETE without a body: no POST state left from the last use
			 * (CURLOPT_CUSTOMREQUEST stays) */
			curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
		}
	}
	j->max_size = p->max_response_size;
	return 0;
}

