/*
 * sd.c - talk to systemd (Type=notify).
 *
 * The watchdog ping is a timer on the loop at half of WATCHDOG_USEC: when
 * the loop stalls, pings stop and systemd restarts us, which is the point.
 */
#include <stdio.h>
#include <systemd/sd-daemon.h>

#include "batchd/sd.h"
#include "batchd/log.h"

static struct event *wd_timer;
static uint64_t wd_usec;

static void wd_cb(evutil_socket_t fd, short what, void *arg)
{
	struct timeval tv = { (time_t)(wd_usec / 2 / 1000000), (suseconds_t)(wd_usec / 2 % 1000000) };
	sd_notify(0, "WATCHDOG=1");
	evtimer_add(wd_timer, &tv);
}

void sdn_start(struct event_base *base)
{
	if (sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec > 0) {
		wd_timer = evtimer_new(base, wd_cb, NULL);
		wd_cb(-1, 0, NULL);
		log_info("systemd watchdog every %llu ms", (unsigned long long)(wd_usec / 2000));
	}
}

void sdn_ready(const char *status)
{
	sd_notifyf(0, "READY=1\nSTATUS=%s", status);
}

void sdn_status(const char *status)
{
	sd_notifyf(0, "STATUS=%s", status);
}

void sdn_stopping(void)
{
	sd_notify(0, "STOPPING=1");
}

void sdn_stop(void)
{
	if (wd_timer) {
		event_free(wd_timer);
		wd_timer = NULL;
	}
}
