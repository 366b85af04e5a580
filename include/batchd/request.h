/*
 * request.h - a job's HTTP request: the provider's templates rendered into
 * URL, headers and body on a pooled curl easy handle, and the callbacks
 * that collect the answer (body up to max_response_size, Retry-After).
 */
#ifndef BATCHD_REQUEST_H
#define BATCHD_REQUEST_H

#include <stdbool.h>
#include <stdint.h>

#include <curl/curl.h>

#include "batchd/config.h"
#include "batchd/job.h"

/*
 * Easy handles of finished transfers, set up for one provider section
 * (method, timeouts, limits, callbacks, proxy choice): the next request
 * sets only what differs per item.  A reload bumps the generation: handles
 * of an older section are dropped when they come back, never reused.
 */
struct HandlePool {
	CURL **v;
	int n, cap;
	uint64_t gen;
	bool closed;       /* provider removed: handles are not kept */
};

void handle_pool_clear(HandlePool *p);                /* free idle handles */
void handle_pool_renew(HandlePool *p);                /* new section: gen++ */
void handle_pool_close(HandlePool *p);                /* provider removed */
void handle_pool_free(HandlePool *p);

/*
 * Render j's request for provider section p on a handle from pool, with
 * token_header (the login's "Authorization: Bearer ..." line, or NULL) among
 * its headers.  The job must hold no handle (request_release first).  -1
 * with err set when the payload does not fit the provider's templates.
 */
int request_prepare(Job *j, const Provider *p, HandlePool *pool, const char *token_header,
		    char *err, size_t errlen);
/* Give the handle back and forget the answer (keeps buffers for reuse). */
void request_release(Job *j);

#endif /* BATCHD_REQUEST_H */
