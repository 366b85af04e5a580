/*
 * sd.c - talk to systemd (Type=notify).
 *
 * The watchdog ping is a timer on the loop at half of WATCHDOG_USEC, sent
 * only while the process is healthy: a stalled loop sends nothing because
 * the timer cannot fire, and a database away longer than watchdog_db_grace
 * stops the pings on purpose, so systemd restarts us.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <time.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>

#include "batchd/log.h"
#include "batchd/sd.h"

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

bool sdn_stderr_is_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;

	if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2)
		return false;
	if (fstat(STDERR_FILENO, &st) != 0)
		return false;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

const char *sdn_journal_socket(void)
{
	const char *p = getenv("BATCHD_JOURNAL_SOCKET");

	return p && *p ? p : "/run/systemd/journal/socket";
}

bool sdn_journal_available(void)
{
	struct stat st;

	return stat(sdn_journal_socket(), &st) == 0 && S_ISSOCK(st.st_mode);
}

void sdn_journal_sink(int priority, const char *msg, const struct LogCtx *ctx,
		      const char *worker_id)
{
	char f[7][128];
	struct iovec iov[9];
	int n = 0;
	char *m;
	size_t ml = strlen(msg) + sizeof("MESSAGE=");

	m = malloc(ml);
	if (!m)
		return;
	snprintf(m, ml, "MESSAGE=%s", msg);
	iov[n].iov_base = m;
	iov[n++].iov_len = strlen(m);
#define FIELD(i, ...) do { snprintf(f[i], sizeof(f[i]), __VA_ARGS__); \
		iov[n].iov_base = f[i]; iov[n++].iov_len = strlen(f[i]); } while (0)
	FIELD(0, "PRIORITY=%d", priority);
	FIELD(1, "SYSLOG_IDENTIFIER=batchd");
	if (worker_id && *worker_id)
		FIELD(2, "WORKER_ID=%s", worker_id);
	if (ctx && ctx->batch_id)
		FIELD(3, "BATCH_ID=%s", ctx->batch_id);
	if (ctx && ctx->item_id)
		FIELD(4, "ITEM_ID=%lld", ctx->item_id);
	if (ctx && ctx->provider)
		FIELD(5, "PROVIDER=%s", ctx->provider);
	if (ctx && ctx->route)
		FIELD(6, "ROUTE=%s", ctx->route);
#undef FIELD
	if (sd_journal_sendv(iov, n) < 0) {
		/* journald went away: the message still goes somewhere */
		fprintf(stderr, "batchd[%d]: %s\n", (int)getpid(), msg);
	}
	free(m);
}

int sdn_listen_fds(void)
{
	int n = sd_listen_fds(1);
	return n > 0 ? n : 0;
}
