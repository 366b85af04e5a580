/*
 * timer.c - relative timers (see timer.h).
 */
#include "batchd/timer.h"

void timer_arm_us(struct event *ev, int64_t us)
{
	struct timeval tv;

	if (us < 0)
		us = 0;
	tv.tv_sec = (time_t)(us / 1000000);
	tv.tv_usec = (suseconds_t)(us % 1000000);
	evtimer_add(ev, &tv);
}

void timer_arm_ms(struct event *ev, int64_t ms)
{
	timer_arm_us(ev, ms * 1000);
}
