/*
 * job.c - a claimed item's state and memory (see job.h for the states).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/job.h"
#include "batchd/log.h"

Job *job_new(Config *cfg, int64_t id, const char *batch_id, const char *payload_text,
	     int attempts, int max_attempts)
{
	Job *j = xcalloc(1, sizeof(*j));

	j->cfg = cfg;
	j->state = JOB_NEW;
	j->id = id;
	snprintf(j->batch_id, sizeof(j->batch_id), "%s", batch_id);
	j->payload_text = xstrdup(payload_text);
	j->attempts = attempts;
	j->max_attempts = max_attempts;
	sb_init(&j->url);
	sb_init(&j->body);
	sb_init(&j->resp);
	sb_init(&j->hbuf);
	return j;
}

const char *job_state_name(enum JobState s)
{
	switch (s) {
	case JOB_NEW: return "new";
	case JOB_QUEUED: return "queued";
	case JOB_RUNNING: return "running";
	case JOB_BACKOFF: return "backoff";
	case JOB_DONE: return "done";
	}
	return "?";
}

/*
 * The changes job.h draws.  NEW -> NEW is a failover that found its next
 * provider before the job waited anywhere (a request that cannot be built
 * for one provider may be for the next).
 */
bool job_state_change_ok(enum JobState from, enum JobState to)
{
	if (from == JOB_DONE)
		return false;   /* terminal */
	switch (to) {
	case JOB_NEW:
		return true;
	case JOB_QUEUED:
		return from == JOB_NEW;
	case JOB_RUNNING:
		return from == JOB_NEW || from == JOB_QUEUED;
	case JOB_BACKOFF:
		return from != JOB_BACKOFF;
	case JOB_DONE:
		return true;
	}
	return false;
}

void job_set_state(Job *j, enum JobState to)
{
	if (!job_state_change_ok(j->state, to))
		fatal("item %lld: impossible job state change %s -> %s", (long long)j->id,
		      job_state_name(j->state), job_state_name(to));
	j->state = to;
}

void job_set_last_error(Job *j, const char *err, long status)
{
	free(j->last_error);
	j->last_error = err ? xstrdup(err) : NULL;
	j->last_status = status;
}

void job_free(Job *j)
{
	if (!j)
		return;
	if (j->state != JOB_DONE)
		fatal("item %lld: freed in state %s", (long long)j->id, job_state_name(j->state));
	if (j->retry_timer)
		event_free(j->retry_timer);
	sb_free(&j->url);
	sb_free(&j->body);
	sb_free(&j->resp);
	sb_free(&j->hbuf);
	free(j->hnodes);
	yajl_tree_free(j->payload);
	free(j->payload_text);
	free(j->last_error);
	free(j);
}
