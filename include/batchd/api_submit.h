/*
 * api_submit.h - the check POST /v1/batches runs on a body before any
 * query (JSON shape, types, ranges, route configured in cfg), without a
 * server.  batchd.api_submit() checks again in SQL when it stores the batch.
 */
#ifndef BATCHD_API_SUBMIT_H
#define BATCHD_API_SUBMIT_H

#include <stddef.h>

#include "batchd/config.h"
#include "batchd/util.h"

/* 0, or -1 with the 400 message in err.  body need not be NUL-terminated. */
int api_validate_submit(const char *body, size_t len, const Config *cfg,
			char *err, size_t errlen) _MUSTCHECK;
/* The same; on success *route (when route is not NULL) is the body's route,
 * which the caller frees. */
int api_submit_check(const char *body, size_t len, const Config *cfg, char **route,
		     char *err, size_t errlen) _MUSTCHECK;

#endif /* BATCHD_API_SUBMIT_H */
