/*
 * sd.h - systemd notify protocol: READY, STATUS, STOPPING, WATCHDOG.
 * Without NOTIFY_SOCKET every call is a cheap no-op.
 */
#ifndef BATCHD_SD_H
#define BATCHD_SD_H

#include <event2/event.h>

void sdn_start(struct event_base *base);   /* arms the watchdog timer if asked */
void sdn_ready(const char *status);
void sdn_status(const char *status);
void sdn_stopping(void);
void sdn_stop(void);

#endif /* BATCHD_SD_H */
