/*
 * sd.h - systemd notify protocol: READY, STATUS, RELOADING, STOPPING,
 * WATCHDOG.  Without NOTIFY_SOCKET every call is a cheap no-op.
 */
#ifndef BATCHD_SD_H
#define BATCHD_SD_H

#include <stdbool.h>
#include <event2/event.h>

/* Arms the watchdog timer when WATCHDOG_USEC asks for it; pings go out only
 * while healthy(arg) says yes. */
void sdn_start(struct event_base *base, bool (*healthy)(void *arg), void *arg);
void sdn_ready(const char *status);
void sdn_status(const char *status);
void sdn_reloading(void);
void sdn_stopping(void);
void sdn_stop(void);
/* The log sink for log_format = journal (structured fields). */
struct LogCtx;
void sdn_journal_sink(int priority, const char *msg, const struct LogCtx *ctx,
		      const char *worker_id);
/* The journal's native socket (BATCHD_JOURNAL_SOCKET overrides the path,
 * for tests), and whether a socket is there. */
const char *sdn_journal_socket(void);
bool sdn_journal_available(void);
/* True when stderr is connected to the journal (JOURNAL_STREAM). */
bool sdn_stderr_is_journal(void);

/* Listening sockets passed by systemd (socket activation): count, fds from 3. */
int sdn_listen_fds(void);

#endif /* BATCHD_SD_H */
