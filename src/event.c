/* event.c - immutable, refcounted stream events (ev_): the JSON text is built
 * once by the publishing thread; any thread may then hold a reference. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "event.h"

/* In the order of enum ev_type. */
static const char *const ev_type_names[EV_N_TYPES] = {
	[EV_JOB_QUEUED] = "job.queued",
	[EV_JOB_STARTED] = "job.started",
	[EV_THREAD_SPAWNED] = "thread.spawned",
	[EV_THREAD_DELTA] = "thread.delta",
	[EV_THREAD_PRUNED] = "thread.pruned",
	[EV_THREAD_DONE] = "thread.done",
	[EV_MERGE] = "merge",
	[EV_MEMORY_HIT] = "memory.hit",
	[EV_MEMORY_STORED] = "memory.stored",
	[EV_JOB_DONE] = "job.done",
	[EV_JOB_FAILED] = "job.failed",
	[EV_GAP] = "gap",
};

const char *
ev_type_name(enum ev_type t)
{
	if ((int)t < 0 || t >= EV_N_TYPES)
		return NULL;
	return ev_type_names[t];
}

int
ev_type_from_name(const char *name)
{
	if (!name)
		return -1;
	for (int i = 0; i < EV_N_TYPES; i++)
		if (strcmp(ev_type_names[i], name) == 0)
			return i;
	return -1;
}

int64_t
ev_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct ev *
ev_new(enum ev_type t, const char *job, int64_t seq, int thread, json_t *payload)
{
	struct ev *e = NULL;
	json_t *body = NULL;
	const char *name = ev_type_name(t);

	if (!name || (payload && !json_is_object(payload)))
		goto fail;
	e = calloc(1, sizeof *e);
	if (!e)
		goto fail;
	atomic_init(&e->refs, 1);
	e->type = t;
	/* Job ids are validated upstream (job_id_valid); truncate, never overrun. */
	snprintf(e->job, sizeof e->job, "%s", job ? job : "");
	e->seq = seq;
	e->ts_ms = ev_now_ms();
	e->thread = thread >= 0 ? thread : -1;

	/* The envelope fields first (jansson keeps insertion order), then the
	 * payload's; an envelope field wins over a payload field of that name. */
	body = json_object();
	if (!body ||
	    json_object_set_new(body, "type", json_string(name)) ||
	    json_object_set_new(body, "job", json_string(e->job)) ||
	    json_object_set_new(body, "seq", json_integer(seq)) ||
	    json_object_set_new(body, "ts", json_integer(e->ts_ms)) ||
	    (e->thread >= 0 && json_object_set_new(body, "thread", json_integer(e->thread))))
		goto fail;
	if (payload && json_object_update_missing(body, payload))
		goto fail;
	e->json = json_dumps(body, JSON_COMPACT);
	if (!e->json)
		goto fail;
	e->len = strlen(e->json);
	e->body = body;
	json_decref(payload);
	return e;
fail:
	json_decref(payload);
	json_decref(body);
	free(e);
	return NULL;
}

void
ev_ref(struct ev *e)
{
	atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
}

void
ev_unref(struct ev *e)
{
	if (!e)
		return;
	if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) != 1)
		return;
	json_decref(e->body);
	free(e->json);
	free(e);
}
