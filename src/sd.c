/*
 * sd.c - talk to systemd (Type=notify).
 *
 * The watchdog ping is a timer on the loop at half of WATCHDOG_USEC, sent
 * only while the process is healthy: a stalled loop sends nothing because
 * the timer cannot fire, and a database away longer than watchdog_db_grace
 * stops the pings on purpose, so systemd restarts us.
 */
#include <stdio.h>
#include <time.h>
#include <systemd/sd-daemon.h>

#include "batchd/sd.h"
#include "batchd/log.h"

static struct event *wd_timer;
static uint64_t wd_usec;
static bool (*wd_healthy)(void *arg);
static void *wd_arg;
static bool wd_warned;

static void wd_cb(evutil_socket_t fd, short what, void *arg)
{
	struct timeval tv = { (time_t)(wd_usec / 2 / 1000000), (suseconds_t)(wd_usec / 2 % 1000000) };

	if (!wd_healthy || wd_healthy(wd_arg)) {
		sd_notify(0, "WATCHDOG=1");
		wd_warned = false;
	} else if (!wd_warned) {
		log_error("unhealthy: withholding watchdog pings so that systemd restarts batchd");
		wd_warned = true;
	}
	evtimer_add(wd_timer, &tv);
}

void sdn_start(struct event_base *base, bool (*healthy)(void *arg), void *arg)
{
	wd_healthy = healthy;
	wd_arg = arg;
	if (sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec > 0) {
		wd_timer = evtimer_new(base, wd_cb, NULL);
		wd_cb(-1, 0, NULL);
		log_info("systemd watchdog: ping every %llu ms", (unsigned long long)(wd_usec / 2000));
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

void sdn_reloading(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	/* systemd 253+ wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload) */
	sd_notifyf(0, "RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=%llu",
		   (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
}

void sdn_stopping(void)
{
	sd_notify(0, "STOPPING=1\nSTATUS=stopping");
}

void sdn_stop(void)
{
	if (wd_timer) {
		event_free(wd_timer);
		wd_timer = NULL;
	}
}

int sdn_listen_fds(void)
{
	int n = sd_listen_fds(1);
	return n > 0 ? n : 0;
}
