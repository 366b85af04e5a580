/*
 * timer.h - arm a libevent timer for a relative time (negative: now).
 */
#ifndef BATCHD_TIMER_H
#define BATCHD_TIMER_H

#include <stdint.h>
#include <event2/event.h>

void timer_arm_us(struct event *ev, int64_t us);
void timer_arm_ms(struct event *ev, int64_t ms);

#endif /* BATCHD_TIMER_H */
