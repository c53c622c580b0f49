/* test_store.c - the SQLite job store: a whole job's events give the job
 * JSON the events say, list/filter, the event trace, recovery, reopen, bad
 * files, WAL mode, and a burst from another thread. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "bus.h"
#include "job.h"
#include "status.h"
#include "store.h"
#include "testutil.h"

struct fx {
	char *dir;
	char path[512];
	bus *b;
	store *st;
	bus_sub *tap;          /* what was published, to compare with the store */
};

static int
setup(void **state)
{
	struct fx *f = calloc(1, sizeof *f);
	char err[ENG_ERRLEN];
	f->dir = tu_tmpdir();
	snprintf(f->path, sizeof f->path, "%s/braid.db", f->dir);
	f->b = bus_create();
	f->st = store_open(f->path, f->b, err, sizeof err);
	if (!f->st)
		fail_msg("store_open: %s", err);
	f->tap = bus_subscribe(f->b, NULL, 0, NULL, NULL);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fx *f = *state;
	struct ev *e;
	store_close(f->st);
	if (f->tap) {
		while ((e = bus_pop(f->tap)))
			ev_unref(e);
		bus_unsubscribe(f->b, f->tap);
	}
	bus_destroy(f->b);
	tu_rmtree(f->dir);
	free(f->dir);
	free(f);
	return 0;
}

/* Publish one event (payload stolen); returns its body, borrowed until
 * the tap is drained. */
static void
pub(bus *b, enum ev_type t, const char *job, int64_t seq, int thread, json_t *payload)
{
	struct ev *e = ev_new(t, job, seq, thread, payload);
	assert_non_null(e);
	bus_publish(b, e);
	ev_unref(e);
}

static json_t *
request_json(const char *question, int n)
{
	struct job_req r;
	json_t *j;
	job_req_init(&r);
	r.question = strdup(question);
	r.n = n;
	r.sampling.seed = 77;
	j = job_req_to_json(&r);
	job_req_free(&r);
	return j;
}

/* A whole job: 3 threads (1 forked from 0), deltas, a prune, dones, a
 * merge, job.done.  Returns the number of events. */
static int
run_job(bus *b, const char *id, const char *q)
{
	int64_t seq = 0;
	pub(b, EV_JOB_QUEUED, id, seq++, -1, json_pack("{s:o}", "request", request_json(q, 3)));
	pub(b, EV_JOB_STARTED, id, seq++, -1,
	    json_pack("{s:i, s:s, s:i}", "prompt_tokens", 11, "strategy", "sc", "n", 3));
	pub(b, EV_THREAD_SPAWNED, id, seq++, 0, json_pack("{s:i, s:i, s:i}", "thread", 0,
							    "parent", -1, "at_token", 0));
	pub(b, EV_THREAD_SPAWNED, id, seq++, 2, json_pack("{s:i, s:i, s:i}", "thread", 2,
							    "parent", -1, "at_token", 0));
	static const char *const d0[] = { "The ", "answer", "", " is \xc3\xa9", " 4" };
	static const char *const d2[] = { "I think ", "5" };
	for (int i = 0; i < 5; i++) {
		pub(b, EV_THREAD_DELTA, id, seq++, 0,
		    json_pack("{s:i, s:s, s:i, s:f, s:f}", "thread", 0, "text", d0[i], "tokens", i + 1,
			      "logprob", -0.5, "entropy", 1.0));
		if (i < 2)
			pub(b, EV_THREAD_DELTA, id, seq++, 2,
			    json_pack("{s:i, s:s, s:i, s:f, s:f}", "thread", 2, "text", d2[i],
				      "tokens", i + 1, "logprob", -0.1, "entropy", 0.2));
		if (i == 2)
			pub(b, EV_THREAD_SPAWNED, id, seq++, 1,
			    json_pack("{s:i, s:i, s:i}", "thread", 1, "parent", 0, "at_token", 3));
	}
	/* Thread 1's text comes only from its deltas (its done has none). */
	pub(b, EV_THREAD_DELTA, id, seq++, 1, json_pack("{s:i, s:s, s:i}", "thread", 1, "text", " 4",
						      "tokens", 4));
	pub(b, EV_THREAD_DELTA, id, seq++, 1, json_pack("{s:i, s:s, s:i}", "thread", 1, "text", ".",
						      "tokens", 5));
	pub(b, EV_THREAD_PRUNED, id, seq++, 2, json_pack("{s:i, s:s}", "thread", 2, "reason",
						       "low confidence"));
	pub(b, EV_THREAD_DONE, id, seq++, 2,
	    json_pack("{s:i, s:s, s:n, s:i, s:s}", "thread", 2, "finish_reason", "cancelled",
		      "answer", "tokens", 2, "text", "I think 5"));
	pub(b, EV_THREAD_DONE, id, seq++, 0,
	    json_pack("{s:i, s:s, s:s, s:i, s:s}", "thread", 0, "finish_reason", "eos", "answer", "4",
		      "tokens", 5, "text", "The answer is \xc3\xa9 4"));
	pub(b, EV_THREAD_DONE, id, seq++, 1,
	    json_pack("{s:i, s:s, s:s, s:i}", "thread", 1, "finish_reason", "length", "answer", "4",
		      "tokens", 5));
	pub(b, EV_MEMORY_HIT, id, seq++, -1, json_pack("{s:s}", "key", "m1"));
	pub(b, EV_MERGE, id, seq++, -1,
	    json_pack("{s:s, s:{s:i}, s:s}", "method", "vote", "votes", "4", 2, "answer", "4"));
	pub(b, EV_JOB_DONE, id, seq++, -1,
	    json_pack("{s:s, s:{s:i}, s:i, s:i, s:i, s:[{s:i,s:s,s:i,s:s},{s:i,s:s,s:i,s:s},"
		      "{s:i,s:n,s:i,s:s}]}",
		      "answer", "4", "votes", "4", 2, "tokens", 11, "prompt_tokens", 11, "ms", 123,
		      "threads",
		      "thread", 0, "answer", "4", "tokens", 5, "finish_reason", "eos",
		      "thread", 1, "answer", "4", "tokens", 5, "finish_reason", "length",
		      "thread", 2, "answer", "tokens", 2, "finish_reason", "cancelled"));
	return (int)seq;
}

/* What the job JSON must be, computed from the published events alone (a
 * simple reading of sched.h's event list, independent of the SQL). */
static json_t *
expected_job(json_t *events)
{
	json_t *job = json_pack("{s:n, s:s, s:n, s:n, s:n, s:n, s:n, s:n, s:n, s:n, s:n, s:n}",
				"id", "status", "queued", "created_ms", "started_ms", "finished_ms",
				"request", "answer", "votes", "tokens", "prompt_tokens", "ms", "error");
	json_t *threads = json_array();
	size_t i;
	json_t *e;
	json_array_foreach(events, i, e) {
		const char *type = json_string_value(json_object_get(e, "type"));
		json_t *ts = json_object_get(e, "ts");
		int th = (int)json_integer_value(json_object_get(e, "thread"));
		json_t *t = NULL;
		if (json_object_get(e, "thread")) {
			for (size_t k = 0; k < json_array_size(threads); k++)
				if (json_integer_value(json_object_get(json_array_get(threads, k),
								       "thread")) == th)
					t = json_array_get(threads, k);
		}
		if (i == 0) {
			json_object_set(job, "id", json_object_get(e, "job"));
			json_object_set(job, "created_ms", ts);
		}
		if (!strcmp(type, "job.queued")) {
			json_object_set(job, "request", json_object_get(e, "request"));
		} else if (!strcmp(type, "job.started")) {
			json_object_set_new(job, "status", json_string("running"));
			json_object_set(job, "started_ms", ts);
			json_object_set(job, "prompt_tokens", json_object_get(e, "prompt_tokens"));
		} else if (!strcmp(type, "thread.spawned")) {
			json_array_append_new(threads, json_pack("{s:i, s:O, s:s, s:s, s:n, s:i, s:n}",
				"thread", th, "parent", json_object_get(e, "parent"), "status",
				"running", "text", "", "answer", "tokens", 0, "finish_reason"));
		} else if (!strcmp(type, "thread.delta")) {
			char buf[256];
			snprintf(buf, sizeof buf, "%s%s",
				 json_string_value(json_object_get(t, "text")),
				 json_string_value(json_object_get(e, "text")));
			json_object_set_new(t, "text", json_string(buf));
			json_object_set(t, "tokens", json_object_get(e, "tokens"));
		} else if (!strcmp(type, "thread.pruned")) {
			json_object_set_new(t, "status", json_string("pruned"));
		} else if (!strcmp(type, "thread.done")) {
			if (strcmp(json_string_value(json_object_get(t, "status")), "pruned"))
				json_object_set_new(t, "status", json_string("done"));
			json_object_set(t, "finish_reason", json_object_get(e, "finish_reason"));
			json_object_set(t, "answer", json_object_get(e, "answer"));
			json_object_set(t, "tokens", json_object_get(e, "tokens"));
			if (json_object_get(e, "text"))
				json_object_set(t, "text", json_object_get(e, "text"));
		} else if (!strcmp(type, "merge")) {
			json_object_set(job, "votes", json_object_get(e, "votes"));
			json_object_set(job, "answer", json_object_get(e, "answer"));
		} else if (!strcmp(type, "job.done")) {
			json_object_set_new(job, "status", json_string("done"));
			json_object_set(job, "finished_ms", ts);
			static const char *const keys[] = { "answer", "votes", "tokens",
							    "prompt_tokens", "ms" };
			for (int k = 0; k < 5; k++)
				json_object_set(job, keys[k], json_object_get(e, keys[k]));
		} else if (!strcmp(type, "job.failed")) {
			json_object_set_new(job, "status", json_string("failed"));
			json_object_set(job, "finished_ms", ts);
			json_object_set(job, "error", json_object_get(e, "reason"));
		}
	}
	/* Threads sorted by index. */
	json_t *sorted = json_array();
	for (int idx = 0; idx < 64; idx++)
		for (size_t k = 0; k < json_array_size(threads); k++)
			if (json_integer_value(json_object_get(json_array_get(threads, k), "thread")) == idx)
				json_array_append(sorted, json_array_get(threads, k));
	json_decref(threads);
	json_object_set_new(job, "threads", sorted);
	return job;
}

/* Drain the tap: the published bodies of job id, in order. */
static json_t *
tapped(struct fx *f, const char *id)
{
	json_t *arr = json_array();
	struct ev *e;
	while ((e = bus_pop(f->tap))) {
		if (!strcmp(e->job, id))
			json_array_append(arr, e->body);
		ev_unref(e);
	}
	return arr;
}

static void
assert_json_equal(json_t *got, json_t *want)
{
	if (!json_equal(got, want)) {
		char *g = json_dumps(got, JSON_INDENT(1) | JSON_SORT_KEYS);
		char *w = json_dumps(want, JSON_INDENT(1) | JSON_SORT_KEYS);
		print_error("got:\n%s\nwant:\n%s\n", g, w);
		free(g);
		free(w);
		fail();
	}
}

static void
test_whole_job(void **state)
{
	struct fx *f = *state;
	const char *id = "j00000000000000000001";
	int n = run_job(f->b, id, "What is 2+2?");
	assert_int_equal(store_sync(f->st), 0);
	json_t *events = tapped(f, id);
	assert_int_equal(json_array_size(events), n);

	json_t *job = NULL;
	assert_int_equal(store_job_get(f->st, id, &job), 0);
	json_t *want = expected_job(events);
	assert_json_equal(job, want);
	/* A few facts spelled out, in case expected_job shares a mistake. */
	json_t *t0 = json_array_get(json_object_get(job, "threads"), 0);
	assert_string_equal(json_string_value(json_object_get(t0, "text")),
			    "The answer is \xc3\xa9 4");
	json_t *t1 = json_array_get(json_object_get(job, "threads"), 1);
	assert_string_equal(json_string_value(json_object_get(t1, "text")), " 4.");
	assert_int_equal(json_integer_value(json_object_get(t1, "parent")), 0);
	json_t *t2 = json_array_get(json_object_get(job, "threads"), 2);
	assert_string_equal(json_string_value(json_object_get(t2, "status")), "pruned");
	assert_true(json_is_null(json_object_get(t2, "answer")));
	assert_string_equal(json_string_value(json_object_get(job, "status")), "done");
	assert_int_equal(json_integer_value(json_object_get(json_object_get(job, "votes"), "4")), 2);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(job, "request"), "seed")), 77);
	json_decref(want);
	json_decref(job);

	/* The trace: exactly what was published, in order; after_seq filters. */
	json_t *got = NULL;
	assert_int_equal(store_events(f->st, id, -1, &got), 0);
	assert_json_equal(got, events);
	json_decref(got);
	assert_int_equal(store_events(f->st, id, 9, &got), 0);
	assert_int_equal(json_array_size(got), n - 10);
	assert_true(json_equal(json_array_get(got, 0), json_array_get(events, 10)));
	json_decref(got);
	assert_int_equal(store_events(f->st, id, n - 1, &got), 0);
	assert_int_equal(json_array_size(got), 0);
	json_decref(got);
	assert_int_equal(store_events(f->st, "j99999999999999999999", -1, &got), 0);
	assert_int_equal(json_array_size(got), 0);
	json_decref(got);
	json_decref(events);

	assert_int_equal(store_job_get(f->st, "j99999999999999999999", &job), ENG_ERR_NOT_FOUND);
	assert_null(job);
	assert_int_equal(store_job_get(f->st, "'; DROP TABLE jobs; --", &job), ENG_ERR_NOT_FOUND);
}

static void
test_failed_job(void **state)
{
	struct fx *f = *state;
	const char *id = "j00000000000000000002";
	pub(f->b, EV_JOB_QUEUED, id, 0, -1, json_pack("{s:o}", "request", request_json("q", 2)));
	pub(f->b, EV_JOB_STARTED, id, 1, -1, json_pack("{s:i}", "prompt_tokens", 3));
	pub(f->b, EV_THREAD_SPAWNED, id, 2, 0, json_pack("{s:i}", "parent", -1));
	pub(f->b, EV_THREAD_DELTA, id, 3, 0, json_pack("{s:s, s:i}", "text", "ab", "tokens", 1));
	pub(f->b, EV_JOB_FAILED, id, 4, -1, json_pack("{s:s}", "reason", "cancelled"));
	assert_int_equal(store_sync(f->st), 0);
	json_t *job = NULL;
	assert_int_equal(store_job_get(f->st, id, &job), 0);
	json_t *events = tapped(f, id);
	assert_string_equal(json_string_value(json_object_get(job, "status")), "failed");
	assert_string_equal(json_string_value(json_object_get(job, "error")), "cancelled");
	assert_int_equal(json_integer_value(json_object_get(job, "finished_ms")),
			 json_integer_value(json_object_get(json_array_get(events, 4), "ts")));
	json_t *t0 = json_array_get(json_object_get(job, "threads"), 0);
	assert_string_equal(json_string_value(json_object_get(t0, "status")), "failed");
	assert_string_equal(json_string_value(json_object_get(t0, "text")), "ab");
	json_decref(events);
	json_decref(job);
}

/* Job id number k. */
static void
idk(char out[EV_JOB_ID_MAX], int k)
{
	snprintf(out, EV_JOB_ID_MAX, "j%020d", k);
}

static void
test_list(void **state)
{
	struct fx *f = *state;
	char id[EV_JOB_ID_MAX];
	/* 0..9 in order; status by k % 3: 0 queued, 1 running, 2 done. */
	for (int k = 0; k < 10; k++) {
		idk(id, k);
		pub(f->b, EV_JOB_QUEUED, id, 0, -1, json_pack("{s:o}", "request", request_json("q", 1)));
		if (k % 3 >= 1)
			pub(f->b, EV_JOB_STARTED, id, 1, -1, json_pack("{s:i}", "prompt_tokens", k));
		if (k % 3 == 2)
			pub(f->b, EV_JOB_DONE, id, 2, -1, json_pack("{s:s, s:i}", "answer", "x", "tokens", k));
	}
	assert_int_equal(store_sync(f->st), 0);

	json_t *arr = NULL;
	assert_int_equal(store_job_list(f->st, 100, NULL, &arr), 0);
	assert_int_equal(json_array_size(arr), 10);
	for (int i = 0; i < 10; i++) {
		json_t *j = json_array_get(arr, i);
		idk(id, 9 - i);                         /* newest first */
		assert_string_equal(json_string_value(json_object_get(j, "id")), id);
		assert_null(json_object_get(j, "threads"));
		static const char *const st[] = { "queued", "running", "done" };
		assert_string_equal(json_string_value(json_object_get(j, "status")), st[(9 - i) % 3]);
	}
	json_decref(arr);

	assert_int_equal(store_job_list(f->st, 3, NULL, &arr), 0);
	assert_int_equal(json_array_size(arr), 3);
	idk(id, 9);
	assert_string_equal(json_string_value(json_object_get(json_array_get(arr, 0), "id")), id);
	json_decref(arr);

	/* done: 8, 5, 2 */
	assert_int_equal(store_job_list(f->st, 100, "done", &arr), 0);
	assert_int_equal(json_array_size(arr), 3);
	int want[] = { 8, 5, 2 };
	for (int i = 0; i < 3; i++) {
		json_t *j = json_array_get(arr, i);
		idk(id, want[i]);
		assert_string_equal(json_string_value(json_object_get(j, "id")), id);
		assert_int_equal(json_integer_value(json_object_get(j, "tokens")), want[i]);
	}
	json_decref(arr);
	assert_int_equal(store_job_list(f->st, 100, "failed", &arr), 0);
	assert_int_equal(json_array_size(arr), 0);
	json_decref(arr);
	assert_int_equal(store_job_list(f->st, -1, NULL, &arr), ENG_ERR_INVALID);
}

static store *
reopen(struct fx *f)
{
	char err[ENG_ERRLEN];
	struct ev *e;
	store_close(f->st);
	f->st = NULL;
	while ((e = bus_pop(f->tap)))
		ev_unref(e);
	f->st = store_open(f->path, f->b, err, sizeof err);
	if (!f->st)
		fail_msg("reopen: %s", err);
	return f->st;
}

static void
test_reopen(void **state)
{
	struct fx *f = *state;
	const char *id = "j00000000000000000003";
	run_job(f->b, id, "keep me");
	assert_int_equal(store_sync(f->st), 0);
	json_t *before = NULL, *ev_before = NULL, *list_before = NULL;
	assert_int_equal(store_job_get(f->st, id, &before), 0);
	assert_int_equal(store_events(f->st, id, -1, &ev_before), 0);
	assert_int_equal(store_job_list(f->st, 10, NULL, &list_before), 0);

	/* Close right after publishing: close drains the queue. */
	pub(f->b, EV_JOB_QUEUED, "j00000000000000000004", 0, -1,
	    json_pack("{s:o}", "request", request_json("late", 1)));
	reopen(f);

	json_t *after = NULL, *ev_after = NULL, *late = NULL;
	assert_int_equal(store_job_get(f->st, id, &after), 0);
	assert_int_equal(store_events(f->st, id, -1, &ev_after), 0);
	assert_json_equal(after, before);
	assert_json_equal(ev_after, ev_before);
	assert_int_equal(store_job_get(f->st, "j00000000000000000004", &late), 0);
	assert_string_equal(json_string_value(json_object_get(json_object_get(late, "request"),
							      "question")), "late");
	json_decref(before);
	json_decref(after);
	json_decref(ev_before);
	json_decref(ev_after);
	json_decref(list_before);
	json_decref(late);
}

static void
test_recover(void **state)
{
	struct fx *f = *state;
	const char *done = "j00000000000000000010", *running = "j00000000000000000011",
		   *queued1 = "j00000000000000000012", *queued2 = "j00000000000000000013";
	run_job(f->b, done, "done one");

	/* Two queued jobs with distinct requests (all fields). */
	struct job_req a, b;
	char err[256];
	json_error_t jerr;
	json_t *ja = json_loads("{\"question\": \"first\", \"strategy\": \"single\", \"n\": 1,"
				" \"temperature\": 0.25, \"top_k\": 7, \"seed\": 5, \"max_tokens\": 64,"
				" \"system\": \"sys\", \"params\": {\"x\": [1, 2]}, \"gold\": \"9\"}",
				0, &jerr);
	json_t *jb = json_loads("{\"messages\": [{\"role\": \"user\", \"content\": \"second\"}],"
				" \"n\": 4, \"min_p\": 0.05}", 0, &jerr);
	job_req_init(&a);
	job_req_init(&b);
	assert_int_equal(job_req_from_json(ja, &a, 64, 4096, err, sizeof err), 0);
	assert_int_equal(job_req_from_json(jb, &b, 64, 4096, err, sizeof err), 0);
	json_decref(ja);
	json_decref(jb);
	pub(f->b, EV_JOB_QUEUED, queued1, 0, -1, json_pack("{s:o}", "request", job_req_to_json(&a)));
	pub(f->b, EV_JOB_QUEUED, queued2, 0, -1, json_pack("{s:o}", "request", job_req_to_json(&b)));

	/* A running job with one live thread, cut off mid-way. */
	pub(f->b, EV_JOB_QUEUED, running, 0, -1, json_pack("{s:o}", "request", request_json("r", 2)));
	pub(f->b, EV_JOB_STARTED, running, 1, -1, json_pack("{s:i}", "prompt_tokens", 3));
	pub(f->b, EV_THREAD_SPAWNED, running, 2, 0, json_pack("{s:i}", "parent", -1));
	pub(f->b, EV_THREAD_DELTA, running, 3, 0, json_pack("{s:s, s:i}", "text", "par", "tokens", 1));
	reopen(f);

	struct job_req *reqs = NULL;
	int n = -1;
	assert_int_equal(store_recover(f->st, &reqs, &n), 0);
	assert_int_equal(n, 2);
	assert_string_equal(reqs[0].id, queued1);
	assert_string_equal(reqs[1].id, queued2);
	struct job_req *orig[2] = { &a, &b };
	for (int i = 0; i < 2; i++) {
		json_t *x = job_req_to_json(&reqs[i]), *y = job_req_to_json(orig[i]);
		assert_json_equal(x, y);
		json_decref(x);
		json_decref(y);
	}
	assert_string_equal(reqs[0].question, "first");
	assert_string_equal(reqs[0].system, "sys");
	assert_true(reqs[0].sampling.temperature == 0.25f);
	assert_int_equal(reqs[0].sampling.top_k, 7);
	assert_null(reqs[1].question);
	assert_int_equal(reqs[1].n, 4);
	for (int i = 0; i < n; i++)
		job_req_free(&reqs[i]);
	free(reqs);
	job_req_free(&a);
	job_req_free(&b);

	/* The running job failed with the reason, a job.failed row after its
	 * last event, and its live thread failed. */
	json_t *job = NULL, *evs = NULL;
	assert_int_equal(store_job_get(f->st, running, &job), 0);
	assert_string_equal(json_string_value(json_object_get(job, "status")), "failed");
	assert_string_equal(json_string_value(json_object_get(job, "error")),
			    "interrupted: the daemon stopped while the job ran");
	assert_true(json_is_integer(json_object_get(job, "finished_ms")));
	json_t *t0 = json_array_get(json_object_get(job, "threads"), 0);
	assert_string_equal(json_string_value(json_object_get(t0, "status")), "failed");
	assert_int_equal(store_events(f->st, running, -1, &evs), 0);
	assert_int_equal(json_array_size(evs), 5);
	json_t *last = json_array_get(evs, 4);
	assert_string_equal(json_string_value(json_object_get(last, "type")), "job.failed");
	assert_int_equal(json_integer_value(json_object_get(last, "seq")), 4);
	assert_string_equal(json_string_value(json_object_get(last, "reason")),
			    "interrupted: the daemon stopped while the job ran");
	json_decref(job);
	json_decref(evs);

	/* The done job is untouched; queued ones stay queued (the scheduler
	 * resubmits them). */
	assert_int_equal(store_job_get(f->st, done, &job), 0);
	assert_string_equal(json_string_value(json_object_get(job, "status")), "done");
	json_decref(job);
	assert_int_equal(store_job_get(f->st, queued2, &job), 0);
	assert_string_equal(json_string_value(json_object_get(job, "status")), "queued");
	json_decref(job);

	/* Recovering again: nothing running any more, the same queued ones. */
	assert_int_equal(store_recover(f->st, &reqs, &n), 0);
	assert_int_equal(n, 2);
	for (int i = 0; i < n; i++)
		job_req_free(&reqs[i]);
	free(reqs);
}

/* A queued job whose stored request no longer parses fails instead. */
static void
test_recover_bad_request(void **state)
{
	struct fx *f = *state;
	const char *id = "j00000000000000000020";
	pub(f->b, EV_JOB_QUEUED, id, 0, -1, json_pack("{s:{s:s, s:i}}", "request", "question", "q",
						     "bogus", 1));
	assert_int_equal(store_sync(f->st), 0);
	struct job_req *reqs = NULL;
	int n = -1;
	assert_int_equal(store_recover(f->st, &reqs, &n), 0);
	assert_int_equal(n, 0);
	free(reqs);
	json_t *job = NULL;
	assert_int_equal(store_job_get(f->st, id, &job), 0);
	assert_string_equal(json_string_value(json_object_get(job, "status")), "failed");
	assert_non_null(strstr(json_string_value(json_object_get(job, "error")), "bogus"));
	json_decref(job);
}

static void
test_wal_and_schema(void **state)
{
	struct fx *f = *state;
	char p[600];
	struct stat sb;
	pub(f->b, EV_JOB_QUEUED, "j00000000000000000030", 0, -1, NULL);
	assert_int_equal(store_sync(f->st), 0);
	snprintf(p, sizeof p, "%s-wal", f->path);
	assert_int_equal(stat(p, &sb), 0);
	snprintf(p, sizeof p, "%s-shm", f->path);
	assert_int_equal(stat(p, &sb), 0);

	/* An independent connection sees WAL mode, the schema version and
	 * the row (so the commit really happened). */
	sqlite3 *db;
	sqlite3_stmt *s;
	assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(s), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(s, 0), "wal");
	sqlite3_finalize(s);
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(s), SQLITE_ROW);
	assert_int_equal(sqlite3_column_int(s, 0), 1);
	sqlite3_finalize(s);
	assert_int_equal(sqlite3_prepare_v2(db, "SELECT status FROM jobs WHERE id = 'j00000000000000000030'",
					    -1, &s, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(s), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(s, 0), "queued");
	sqlite3_finalize(s);
	sqlite3_close(db);
}

/* Files that are not a store: clean errors naming the path. */
static void
test_bad_files(void **state)
{
	(void)state;
	char *dir = tu_tmpdir();
	char path[512], err[ENG_ERRLEN];
	bus *b = bus_create();

	snprintf(path, sizeof path, "%s/garbage.db", dir);
	char junk[4096];
	for (size_t i = 0; i < sizeof junk; i++)
		junk[i] = (char)(i * 7 + 3);
	assert_int_equal(tu_write_file(path, junk, sizeof junk), 0);
	err[0] = '\0';
	assert_null(store_open(path, b, err, sizeof err));
	assert_true(strncmp(err, path, strlen(path)) == 0);
	assert_non_null(strstr(err, "not a database"));
	/* The garbage is left as it was. */
	size_t len = 0;
	char *back = tu_read_file(path, &len);
	assert_int_equal(len, sizeof junk);
	assert_memory_equal(back, junk, sizeof junk);
	free(back);

	/* A text file. */
	snprintf(path, sizeof path, "%s/text.db", dir);
	const char *txt = "hello, this is not SQLite at all, but it is long enough to have a header.\n";
	assert_int_equal(tu_write_file(path, txt, strlen(txt)), 0);
	assert_null(store_open(path, b, err, sizeof err));
	assert_true(strncmp(err, path, strlen(path)) == 0);

	/* A newer schema version. */
	snprintf(path, sizeof path, "%s/newer.db", dir);
	sqlite3 *db;
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "PRAGMA user_version=99", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	assert_null(store_open(path, b, err, sizeof err));
	assert_true(strncmp(err, path, strlen(path)) == 0);
	assert_non_null(strstr(err, "newer"));

	/* Our version number but someone else's tables. */
	snprintf(path, sizeof path, "%s/other.db", dir);
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "CREATE TABLE jobs(x); PRAGMA user_version=1", NULL, NULL,
				      NULL), SQLITE_OK);
	sqlite3_close(db);
	assert_null(store_open(path, b, err, sizeof err));
	assert_true(strncmp(err, path, strlen(path)) == 0);

	/* A directory that does not exist. */
	snprintf(path, sizeof path, "%s/no/such/dir/x.db", dir);
	assert_null(store_open(path, b, err, sizeof err));
	assert_true(strncmp(err, path, strlen(path)) == 0);

	/* Nothing left subscribed by the failures. */
	assert_int_equal(bus_subscribers(b), 0);
	bus_destroy(b);
	tu_rmtree(dir);
	free(dir);
}

/* Many deltas from another thread, while this one reads: everything lands,
 * in order, in batches. */
struct burst {
	bus *b;
	int n;
};

static void *
burst_main(void *p)
{
	struct burst *w = p;
	const char *id = "j00000000000000000040";
	pub(w->b, EV_JOB_QUEUED, id, 0, -1, NULL);
	pub(w->b, EV_THREAD_SPAWNED, id, 1, 0, json_pack("{s:i}", "parent", -1));
	for (int i = 0; i < w->n; i++) {
		char t[16];
		snprintf(t, sizeof t, "%d,", i);
		pub(w->b, EV_THREAD_DELTA, id, 2 + i, 0, json_pack("{s:s, s:i}", "text", t, "tokens", i + 1));
	}
	return NULL;
}

static void
test_burst(void **state)
{
	struct fx *f = *state;
	struct burst w = { f->b, 5000 };
	pthread_t t;
	bus_unsubscribe(f->b, f->tap);
	f->tap = NULL;
	assert_int_equal(pthread_create(&t, NULL, burst_main, &w), 0);
	for (int i = 0; i < 20; i++) {
		json_t *j = NULL;
		if (store_job_get(f->st, "j00000000000000000040", &j) == 0)
			json_decref(j);
		assert_int_equal(store_sync(f->st), 0);
	}
	pthread_join(t, NULL);
	assert_int_equal(store_sync(f->st), 0);

	json_t *job = NULL, *evs = NULL;
	assert_int_equal(store_job_get(f->st, "j00000000000000000040", &job), 0);
	json_t *t0 = json_array_get(json_object_get(job, "threads"), 0);
	const char *text = json_string_value(json_object_get(t0, "text"));
	/* Rebuild the text independently. */
	size_t cap = 64 * 1024, len = 0;
	char *want = malloc(cap);
	for (int i = 0; i < w.n; i++)
		len += (size_t)snprintf(want + len, cap - len, "%d,", i);
	assert_string_equal(text, want);
	free(want);
	assert_int_equal(json_integer_value(json_object_get(t0, "tokens")), w.n);
	assert_int_equal(store_events(f->st, "j00000000000000000040", -1, &evs), 0);
	assert_int_equal(json_array_size(evs), w.n + 2);
	for (size_t i = 0; i < json_array_size(evs); i++)
		assert_int_equal(json_integer_value(json_object_get(json_array_get(evs, i), "seq")), i);
	json_decref(evs);
	json_decref(job);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_whole_job, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_job, setup, teardown),
		cmocka_unit_test_setup_teardown(test_list, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reopen, setup, teardown),
		cmocka_unit_test_setup_teardown(test_recover, setup, teardown),
		cmocka_unit_test_setup_teardown(test_recover_bad_request, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wal_and_schema, setup, teardown),
		cmocka_unit_test(test_bad_files),
		cmocka_unit_test_setup_teardown(test_burst, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
