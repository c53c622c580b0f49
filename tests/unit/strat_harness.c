/* strat_harness.c - run one job through a real scheduler and bus on a real
 * model and collect its events (test thread + the scheduler's engine thread). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bus.h"
#include "job.h"
#include "sched.h"
#include "strat_harness.h"

const char *
sh_model(void)
{
	static char buf[4096];
	const char *root = getenv("BRAID_SRCDIR");
	snprintf(buf, sizeof buf, "%s/models/braid-arith", root ? root : ".");
	return buf;
}

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int
sh_run_job(const char *model_dir, const char *body, int timeout_s, struct sh_run *out)
{
	char err[512] = "";
	int rc = -1;
	json_error_t jerr;
	json_t *req_json = json_loads(body, 0, &jerr);
	struct job_req req;
	job_req_init(&req);
	memset(out, 0, sizeof *out);
	bus *b = bus_create();
	sched *s = NULL;
	bus_sub *sub = NULL;
	if (!req_json || !b) {
		fprintf(stderr, "sh_run_job: bad body: %s\n", req_json ? "" : jerr.text);
		goto done;
	}
	struct sched_params sp = sched_default_params();
	if (job_req_from_json(req_json, &req, sp.max_threads_per_job, sp.max_tokens, err, sizeof err) < 0) {
		fprintf(stderr, "sh_run_job: request: %s\n", err);
		goto done;
	}
	struct eng_params ep = eng_default_params();
	ep.model_dir = model_dir;
	if (!(s = sched_create(&ep, b, &sp, err, sizeof err))) {
		fprintf(stderr, "sh_run_job: sched_create: %s\n", err);
		goto done;
	}
	const eng *e = sched_engine(s);
	int total = eng_kv_blocks_total(e);
	out->kv_idle_used = total - eng_kv_blocks_free(e);
	if (!(sub = bus_subscribe(b, NULL, 0, NULL, NULL)))
		goto done;
	double t0 = now_s();
	if (sched_submit(s, &req, err, sizeof err) < 0) {
		fprintf(stderr, "sh_run_job: submit: %s\n", err);
		goto done;
	}
	out->events = json_array();
	while (now_s() - t0 < timeout_s) {
		struct sched_stats st;
		sched_stats(s, &st);
		if (st.kv_blocks_used > out->kv_peak_used)
			out->kv_peak_used = st.kv_blocks_used;
		struct ev *ev = bus_pop_wait(sub, 100);
		if (!ev)
			continue;
		json_array_append(out->events, ev->body);
		int final = ev->type == EV_JOB_DONE || ev->type == EV_JOB_FAILED;
		ev_unref(ev);
		if (final) {
			out->final = json_array_get(out->events, json_array_size(out->events) - 1);
			rc = 0;
			break;
		}
	}
	out->wall_s = now_s() - t0;
	if (rc != 0)
		fprintf(stderr, "sh_run_job: no job.done/job.failed within %d s\n", timeout_s);
	else {
		/* The scheduler refreshes its stats snapshot (threads, blocks)
		 * after it publishes the final event and retires the job: wait
		 * (at most 2 s) for it to settle.  A real leak still shows: the
		 * blocks stay in use past the wait. */
		struct sched_stats st;
		for (int i = 0; i < 200; i++) {
			sched_stats(s, &st);
			if (st.running == 0 && st.queued == 0 && st.live_threads == 0 &&
			    st.kv_blocks_used == 0)
				break;
			struct timespec ts = { 0, 10 * 1000 * 1000 };
			nanosleep(&ts, NULL);
		}
		out->kv_idle_used = st.kv_blocks_used;
	}
done:
	bus_unsubscribe(b, sub);
	sched_destroy(s);
	bus_destroy(b);
	job_req_free(&req);
	json_decref(req_json);
	return rc;
}

void
sh_run_free(struct sh_run *r)
{
	json_decref(r->events);
	memset(r, 0, sizeof *r);
}

static int
matches(const json_t *e, const char *type, int thread)
{
	const char *t = json_string_value(json_object_get(e, "type"));
	if (!t || strcmp(t, type))
		return 0;
	return thread < 0 || json_integer_value(json_object_get(e, "thread")) == thread;
}

int
sh_count(const json_t *events, const char *type, int thread)
{
	size_t i;
	json_t *e;
	int n = 0;
	json_array_foreach(events, i, e)
		n += matches(e, type, thread);
	return n;
}

const json_t *
sh_nth(const json_t *events, const char *type, int k)
{
	size_t i;
	json_t *e;
	json_array_foreach(events, i, e)
		if (matches(e, type, -1) && k-- == 0)
			return e;
	return NULL;
}

const json_t *
sh_find(const json_t *events, const char *type, int thread)
{
	size_t i;
	json_t *e;
	if (thread < 0)
		return NULL;
	json_array_foreach(events, i, e)
		if (matches(e, type, thread))
			return e;
	return NULL;
}

int
sh_unended(const json_t *events)
{
	const json_t *e;
	for (int i = 0; (e = sh_nth(events, "thread.spawned", i)); i++) {
		const int t = (int)json_integer_value(json_object_get(e, "thread"));
		if (sh_count(events, "thread.done", t) + sh_count(events, "thread.pruned", t) != 1)
			return t;
	}
	return -1;
}
