/*
 * login.c - a provider's login request and its answer (see login.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "batchd/json.h"
#include "batchd/log.h"
#include "batchd/login.h"

void login_init(Login *l, struct event_base *base, event_callback_fn timer_cb, void *arg)
{
	memset(l, 0, sizeof(*l));
	l->shard = -1;
	sb_init(&l->body);
	sb_init(&l->resp);
	l->timer = evtimer_new(base, timer_cb, arg);
}

static void free_secret(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

void login_drop(Login *l)
{
	free_secret(l->token);
	free_secret(l->header);
	l->token = NULL;
	l->header = NULL;
	l->expires_at = 0;
}

void login_release(Login *l)
{
	if (l->easy)
		curl_easy_cleanup(l->easy);
	l->easy = NULL;
	l->shard = -1;
	curl_slist_free_all(l->hdrs);
	l->hdrs = NULL;
	if (l->body.data)
		explicit_bzero(l->body.data, l->body.len);
	sb_reset(&l->body);
	if (l->resp.data)
		explicit_bzero(l->resp.data, l->resp.len);
	sb_reset(&l->resp);
	l->too_big = false;
	l->errbuf[0] = '\0';
}

void login_free(Login *l)
{
	login_release(l);
	login_drop(l);
	sb_free(&l->body);
	sb_free(&l->resp);
	if (l->timer)
		event_free(l->timer);
	l->timer = NULL;
}

bool login_usable(const Login *l, int64_t now)
{
	return l->token && (l->expires_at == 0 || now < l->expires_at);
}

const char *login_state_name(const Login *l, int64_t now)
{
	switch (l->state) {
	case LOGIN_NONE:
		return "none";
	case LOGIN_RUNNING:
		return login_usable(l, now) ? "refreshing" : "logging_in";
	case LOGIN_READY:
		return login_usable(l, now) ? "ready" : "expired";
	case LOGIN_FAILED:
		return login_usable(l, now) ? "refresh_failed" : "failed";
	}
	return "unknown";
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
	Login *l = ud;
	size_t n = size * nmemb;

	if (l->resp.len + n > LOGIN_MAX_RESPONSE) {
		l->too_big = true;
		return 0;
	}
	sb_append(&l->resp, ptr, n);
	return n;
}

#define LOGIN_USER_AGENT "User-Agent: batchd/" PACKAGE_VERSION

CURL *login_prepare(Login *l, const Provider *p, char *err, size_t errlen)
{
	CURL *c;
	struct curl_slist *h = NULL;
	bool has_ct = false, has_ua = false, has_accept = false;

	login_release(l);
	c = curl_easy_init();
	if (!c) {
		snprintf(err, errlen, "curl_easy_init failed");
		return NULL;
	}
	for (int i = 0; i < p->nlogin_headers; i++) {
		const char *hd = p->login_headers[i];
		has_ct |= strncasecmp(hd, "Content-Type:", 13) == 0;
		has_ua |= strncasecmp(hd, "User-Agent:", 11) == 0;
		has_accept |= strncasecmp(hd, "Accept:", 7) == 0;
		h = curl_slist_append(h, hd);
	}
	if (p->login_body) {
		sb_puts(&l->body, p->login_body);
		if (!has_ct) {
			StrBuf ct;
			sb_init(&ct);
			sb_printf(&ct, "Content-Type: %s", p->login_content_type);
			h = curl_slist_append(h, ct.data);
			sb_free(&ct);
		}
	}
	if (!has_ua)
		h = curl_slist_append(h, LOGIN_USER_AGENT);
	if (!has_accept)
		h = curl_slist_append(h, "Accept: application/json");
	h = curl_slist_append(h, "Expect:");
	l->hdrs = h;

	curl_easy_setopt(c, CURLOPT_URL, p->login_url);
	curl_easy_setopt(c, CURLOPT_PRIVATE, l);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)p->timeout_ms);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)p->connect_timeout_ms);
	curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)LOGIN_MAX_RESPONSE);
	curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, "");
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, l);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, l->errbuf);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, l->hdrs);
	if (strcmp(p->login_method, "GET") == 0) {
		curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
	} else {
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, p->login_method);
		if (p->login_body || strcmp(p->login_method, "DELETE") != 0) {
			curl_easy_setopt(c, CURLOPT_POSTFIELDS, l->body.data ? l->body.data : "");
			curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)l->body.len);
		}
	}
	l->easy = c;
	return c;
}

int login_parse_answer(const char *body, size_t len, long status, const char *token_field,
		       const char *expires_field, char **token, double *lifetime_s,
		       char *err, size_t errlen)
{
	char *text;
	yajl_val root, t, e;
	int rc = -1;

	*token = NULL;
	*lifetime_s = -1;
	if (status < 200 || status >= 300) {
		/* the body of a refusal is not quoted: it may echo the credentials */
		snprintf(err, errlen, "login answered HTTP %ld", status);
		return -1;
	}
	if (!json_is_valid(body, len)) {
		snprintf(err, errlen, "login answer is not JSON");
		return -1;
	}
	text = xmalloc(len + 1);
	memcpy(text, body, len);
	text[len] = '\0';
	root = yajl_tree_parse(text, NULL, 0);
	explicit_bzero(text, len);
	free(text);
	if (!root || !YAJL_IS_OBJECT(root)) {
		snprintf(err, errlen, "login answer is not a JSON object");
		goto out;
	}
	t = json_get_path(root, token_field);
	if (!t) {
		snprintf(err, errlen, "login answer has no field %s", token_field);
		goto out;
	}
	if (!YAJL_IS_STRING(t) || !YAJL_GET_STRING(t)[0]) {
		snprintf(err, errlen, "login answer's %s is not a non-empty string", token_field);
		goto out;
	}
	for (const char *c = YAJL_GET_STRING(t); *c; c++) {
		if ((unsigned char)*c < 0x20 || *c == 0x7f) {
			/* it goes into a header line */
			snprintf(err, errlen, "login answer's %s has a control character", token_field);
			goto out;
		}
	}
	e = expires_field ? json_get_path(root, expires_field) : NULL;
	if (e && YAJL_IS_NUMBER(e)) {
		*lifetime_s = YAJL_GET_DOUBLE(e);
	} else if (e && YAJL_IS_STRING(e)) {
		const char *str = YAJL_GET_STRING(e);
		char *end = NULL;
		double v = str ? strtod(str, &end) : 0;
		if (!str || end == str || *end) {
			snprintf(err, errlen, "login answer's %s is not a number", expires_field);
			goto out;
		}
		*lifetime_s = v;
	} else if (e && !YAJL_IS_NULL(e)) {
		snprintf(err, errlen, "login answer's %s is not a number", expires_field);
		goto out;
	}
	if (*lifetime_s != -1 && (!isfinite(*lifetime_s) || *lifetime_s <= 0 ||
				  *lifetime_s > 3650.0 * 86400)) {
		snprintf(err, errlen, "login answer's %s is out of range (%g)", expires_field,
			 *lifetime_s);
		goto out;
	}
	*token = xstrdup(YAJL_GET_STRING(t));
	rc = 0;
out:
	yajl_tree_free(root);
	return rc;
}

char *login_render_header(const char *token_header, const char *token)
{
	const char *at = strstr(token_header, "{token}");
	StrBuf sb;

	sb_init(&sb);
	if (!at) {
		sb_puts(&sb, token_header);
	} else {
		sb_append(&sb, token_header, (size_t)(at - token_header));
		sb_puts(&sb, token);
		sb_puts(&sb, at + 7);
	}
	return sb_steal(&sb);
}

int64_t login_refresh_in_us(int64_t lifetime_us, int64_t margin_ms)
{
	int64_t margin = margin_ms >= 0 ? margin_ms * 1000 : lifetime_us / 10;
	int64_t at;

	if (margin_ms < 0 && margin > 60 * 1000000LL)
		margin = 60 * 1000000LL;
	at = lifetime_us - margin;
	if (at < lifetime_us / 2)
		at = lifetime_us / 2;
	return at;
}
