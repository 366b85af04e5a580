/*
 * api.h - the evhttp server: health and readiness for now (the REST API
 * arrives with its own issue).
 */
#ifndef BATCHD_API_H
#define BATCHD_API_H

#include "batchd/batchd.h"

/* Bind cfg->listen; returns NULL with err on failure. */
Api *api_new(Batchd *bd, char *err, size_t errlen);
void api_free(Api *api);

/* Split "host:port" / "[v6]:port" into parts; 0 or -1. */
int api_parse_listen(const char *listen, char *host, size_t hostlen, int *port) _MUSTCHECK;

#endif /* BATCHD_API_H */
