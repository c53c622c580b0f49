/* api_jobs.c - the REST jobs API (create, list, get, cancel), /healthz and
 * /metrics.  Runs on the lws service thread; the store and the scheduler
 * are reached through their thread-safe calls, none of which waits for an
 * engine step. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "job.h"
#include "status.h"
#include "strategy.h"

/* "single, sc, ..." for error messages. */
static void
strategy_names(char *buf, size_t len)
{
	size_t off = 0;
	buf[0] = 0;
	for (const struct strategy *st = strat_table; st->name && off < len; st++)
		off += (size_t)snprintf(buf + off, len - off, "%s%s", off ? ", " : "", st->name);
}

int
api_submit(struct api_sess *s, struct job_req *r, api_event_fn fn, char id_out[EV_JOB_ID_MAX])
{
	char err[256];
	if (!r->id[0])
		job_new_id(r->id);
	if (!strat_find(r->strategy)) {
		char names[200];
		strategy_names(names, sizeof names);
		api_error(s, 400, "unknown strategy '%s' (known: %s)", r->strategy, names);
		return -1;
	}
	memcpy(id_out, r->id, EV_JOB_ID_MAX);
	if (fn) {
		/* subscribe before submitting: job.queued is published inside */
		snprintf(s->job, sizeof s->job, "%s", r->id);
		if (api_subscribe(s, r->id, 0, fn) < 0) {
			api_error(s, 500, "out of memory");
			return -1;
		}
	}
	err[0] = 0;
	int rc = sched_submit(s->ctx->sched, r, err, sizeof err);
	if (rc == 0)
		return 0;
	bus_unsubscribe(s->ctx->bus, s->sub);
	s->sub = NULL;
	s->job[0] = 0;
	if (rc == ENG_ERR_RANGE) {
		api_header(s, "retry-after:", "1");
		api_error(s, 429, "the job queue is full; retry later%s%s", err[0] ? ": " : "", err);
	} else if (rc == ENG_ERR_INVALID) {
		api_error(s, 400, "%s", err[0] ? err : "invalid job");
	} else {
		api_error(s, 500, "cannot queue the job: %s", err[0] ? err : eng_strerror(rc));
	}
	return -1;
}

int
api_jobs_create(struct api_sess *s, const char *arg)
{
	(void)arg;
	json_t *body = api_body_json(s);
	if (!body)
		return 0;
	const struct sched_params *sp = sched_params(s->ctx->sched);
	int max_n = sp && sp->max_threads_per_job > 0 ? sp->max_threads_per_job : 64;
	int max_tok = sp && sp->max_tokens > 0 ? sp->max_tokens : 4096;
	struct job_req r;
	char err[256] = "";
	job_req_init(&r);
	int rc = job_req_from_json(body, &r, max_n, max_tok, err, sizeof err);
	json_decref(body);
	if (rc < 0) {
		job_req_free(&r);
		return api_error(s, 400, "%s", err[0] ? err : "invalid job request");
	}
	char id[EV_JOB_ID_MAX];
	rc = api_submit(s, &r, NULL, id);
	job_req_free(&r);
	if (rc < 0)
		return 0;
	return api_respond_json(s, 202, json_pack("{s:s, s:s}", "id", id, "status", "queued"));
}

int
api_jobs_list(struct api_sess *s, const char *arg)
{
	(void)arg;
	char buf[64], status[32];
	long limit = 50;
	if (api_query(s, "limit", buf, sizeof buf)) {
		char *end;
		limit = strtol(buf, &end, 10);
		if (*end || limit < 1 || limit > 1000)
			return api_error(s, 400, "limit must be an integer in [1, 1000]");
	}
	int has_status = api_query(s, "status", status, sizeof status);
	if (has_status && strcmp(status, "queued") && strcmp(status, "running") &&
	    strcmp(status, "done") && strcmp(status, "failed"))
		return api_error(s, 400, "status must be queued, running, done or failed");
	json_t *arr = NULL;
	int rc = store_job_list(s->ctx->store, (int)limit, has_status ? status : NULL, &arr);
	if (rc < 0)
		return api_error(s, 500, "store: %s", eng_strerror(rc));
	return api_respond_json(s, 200, json_pack("{s:o}", "jobs", arr));
}

/* The job from the store; the writer may lag behind the bus by a batch, so
 * a miss waits for it once. */
static int
job_lookup(struct api_sess *s, const char *id, json_t **out)
{
	*out = NULL;
	int rc = store_job_get(s->ctx->store, id, out);
	if (rc == ENG_ERR_NOT_FOUND) {
		store_sync(s->ctx->store);
		rc = store_job_get(s->ctx->store, id, out);
	}
	return rc;
}

int
api_jobs_get(struct api_sess *s, const char *id)
{
	if (!id || !job_id_valid(id))
		return api_error(s, 404, "no such job (not a job id)");
	json_t *j = NULL;
	int rc = job_lookup(s, id, &j);
	if (rc == ENG_ERR_NOT_FOUND)
		return api_error(s, 404, "no such job: %s", id);
	if (rc < 0)
		return api_error(s, 500, "store: %s", eng_strerror(rc));
	return api_respond_json(s, 200, j);
}

int
api_jobs_cancel(struct api_sess *s, const char *id)
{
	if (!id || !job_id_valid(id))
		return api_error(s, 404, "no such job (not a job id)");
	int rc = sched_cancel(s->ctx->sched, id);
	if (rc == 0)
		return api_respond_json(s, 202, json_pack("{s:s, s:s}", "id", id, "status", "cancelling"));
	if (rc != ENG_ERR_NOT_FOUND)
		return api_error(s, 500, "cancel: %s", eng_strerror(rc));
	json_t *j = NULL;
	rc = job_lookup(s, id, &j);
	if (rc == ENG_ERR_NOT_FOUND)
		return api_error(s, 404, "no such job: %s", id);
	const char *st = json_string_value(json_object_get(j, "status"));
	api_error(s, 409, "job %s is already %s", id, st ? st : "finished");
	json_decref(j);
	return 0;
}

int
api_healthz(struct api_sess *s, const char *arg)
{
	(void)arg;
	return api_respond_json(s, 200, json_pack("{s:s, s:I}", "status", "ok", "uptime_ms",
						  (json_int_t)(ev_now_ms() - s->ctx->started_ms)));
}

int
api_metrics(struct api_sess *s, const char *arg)
{
	(void)arg;
	struct sched_stats t;
	memset(&t, 0, sizeof t);
	sched_stats(s->ctx->sched, &t);
	char *m = NULL;
	size_t ml = 0;
	FILE *f = open_memstream(&m, &ml);
	if (!f)
		return api_error(s, 500, "out of memory");
	fprintf(f, "# HELP braid_jobs Jobs by state (queued and running now; done and failed since start).\n"
		   "# TYPE braid_jobs gauge\n"
		   "braid_jobs{state=\"queued\"} %d\nbraid_jobs{state=\"running\"} %d\n"
		   "braid_jobs{state=\"done\"} %llu\nbraid_jobs{state=\"failed\"} %llu\n",
		t.queued, t.running, t.jobs_done, t.jobs_failed);
	fprintf(f, "# HELP braid_queue_depth Jobs waiting for a slot.\n# TYPE braid_queue_depth gauge\n"
		   "braid_queue_depth %d\n", t.queued);
	fprintf(f, "# HELP braid_live_threads Reasoning threads decoding now.\n"
		   "# TYPE braid_live_threads gauge\nbraid_live_threads %d\n", t.live_threads);
	fprintf(f, "# HELP braid_tokens_per_second Tokens generated per second, recent.\n"
		   "# TYPE braid_tokens_per_second gauge\nbraid_tokens_per_second %.3f\n", t.tokens_per_s);
	fprintf(f, "# HELP braid_tokens_total Tokens generated since start.\n"
		   "# TYPE braid_tokens_total counter\nbraid_tokens_total %llu\n", t.tokens_total);
	fprintf(f, "# HELP braid_engine_steps_total Engine steps since start.\n"
		   "# TYPE braid_engine_steps_total counter\nbraid_engine_steps_total %llu\n", t.steps);
	fprintf(f, "# HELP braid_step_ms Engine step time, exponential average.\n"
		   "# TYPE braid_step_ms gauge\nbraid_step_ms %.3f\n", t.step_ms_avg);
	fprintf(f, "# HELP braid_kv_blocks KV cache blocks.\n# TYPE braid_kv_blocks gauge\n"
		   "braid_kv_blocks{state=\"used\"} %d\nbraid_kv_blocks{state=\"total\"} %d\n",
		t.kv_blocks_used, t.kv_blocks_total);
	fprintf(f, "# HELP braid_bus_events_total Events published on the bus.\n"
		   "# TYPE braid_bus_events_total counter\nbraid_bus_events_total %llu\n",
		bus_published(s->ctx->bus));
	fprintf(f, "# HELP braid_bus_dropped_total Events dropped for slow subscribers.\n"
		   "# TYPE braid_bus_dropped_total counter\nbraid_bus_dropped_total %llu\n",
		bus_dropped(s->ctx->bus));
	fprintf(f, "# HELP braid_bus_subscribers Bus subscriptions now.\n"
		   "# TYPE braid_bus_subscribers gauge\nbraid_bus_subscribers %zu\n",
		bus_subscribers(s->ctx->bus));
	fprintf(f, "# HELP braid_http_responses_total HTTP responses by status code.\n"
		   "# TYPE braid_http_responses_total counter\n");
	for (int c = 100; c < 600; c++)
		if (s->ctx->http_by_code[c])
			fprintf(f, "braid_http_responses_total{code=\"%d\"} %llu\n", c,
				s->ctx->http_by_code[c]);
	if (fclose(f) != 0 || !m) {
		free(m);
		return api_error(s, 500, "out of memory");
	}
	int rc = api_respond(s, 200, "text/plain; version=0.0.4; charset=utf-8", m, ml);
	free(m);
	return rc;
}
