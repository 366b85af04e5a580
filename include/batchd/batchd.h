/*
 * batchd.h - the process-wide context shared by the modules on the loop.
 */
#ifndef BATCHD_BATCHD_H
#define BATCHD_BATCHD_H

#include <stdbool.h>
#include <event2/event.h>

#include "batchd/config.h"

typedef struct Engine Engine;
typedef struct Api Api;

typedef struct Batchd {
	struct event_base *base;
	Config *cfg;
	char worker_id[37];        /* fresh uuid per process start */
	char hostname[256];
	Engine *engine;
	Api *api;
	bool ready_sent;           /* READY=1 sent to systemd */
	int64_t start_us;          /* realtime */
	struct event *status_timer;
	int listen_fds;            /* sockets passed by systemd (from fd 3) */
	int exit_code;
} Batchd;

#endif /* BATCHD_BATCHD_H */
