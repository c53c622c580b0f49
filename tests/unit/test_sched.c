/* test_sched.c - the scheduler on a real engine (tests/data/models/qwen3-f32,
 * random weights: the text is noise, so these test mechanics) and a real
 * bus: event order and fields, sc forks sharing the prompt's cache, 20
 * concurrent jobs in the same steps, cancellation, limits, determinism, the
 * KV cache running out, shutdown. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "answer.h"
#include "bus.h"
#include "chat.h"
#include "job.h"
#include "sched.h"
#include "testutil.h"

#define WAIT_MS 120000
#define KV_BLOCK_BYTES (2 * 2 * 16 * 2 * 32 * 4)   /* qwen3-f32: 16 KiB */

static sched *
open_sched(bus *b, int max_running, int max_queue, size_t kv_bytes)
{
	char err[ENG_ERRLEN] = "";
	struct eng_params ep = eng_default_params();
	ep.model_dir = tu_data("models/qwen3-f32");
	ep.n_threads = 2;
	ep.kv_bytes = kv_bytes ? kv_bytes : (size_t)4 << 20;
	ep.block_tokens = 16;
	struct sched_params sp = sched_default_params();
	sp.max_running = max_running;
	sp.max_queue = max_queue;
	sp.max_tokens = 240;
	sched *s = sched_create(&ep, b, &sp, err, sizeof err);
	if (!s)
		fail_msg("sched_create: %s", err);
	return s;
}

static void
make_req(struct job_req *r, const char *strategy, int n, int max_tokens, uint64_t seed,
	 const char *question)
{
	job_req_init(r);
	job_new_id(r->id);
	snprintf(r->strategy, sizeof r->strategy, "%s", strategy);
	r->n = n;
	r->max_tokens = max_tokens;
	r->sampling.seed = seed;
	r->question = strdup(question);
}

static void
submit_ok(sched *s, struct job_req *r)
{
	char err[256] = "";
	int rc = sched_submit(s, r, err, sizeof err);
	if (rc != 0)
		fail_msg("sched_submit: %d %s", rc, err);
}

static const char *
ev_str(const json_t *e, const char *k)
{
	return json_string_value(json_object_get(e, k));
}

static long long
ev_int(const json_t *e, const char *k)
{
	const json_t *v = json_object_get(e, k);
	if (!json_is_integer(v))
		fail_msg("field %s missing or not an integer", k);
	return (long long)json_integer_value(v);
}

/* Every event of one job until job.done / job.failed, as an array of
 * bodies; on_event (optional) sees each as it comes. */
static json_t *
collect(bus_sub *sub, const char *job, void (*on_event)(const json_t *e, void *ctx), void *ctx)
{
	json_t *all = json_array();
	for (;;) {
		struct ev *e = bus_pop_wait(sub, WAIT_MS);
		if (!e)
			fail_msg("timed out waiting for events of %s", job);
		if (strcmp(e->job, job) == 0) {
			json_array_append(all, e->body);
			if (on_event)
				on_event(e->body, ctx);
		}
		int end = strcmp(e->job, job) == 0 && (e->type == EV_JOB_DONE || e->type == EV_JOB_FAILED);
		ev_unref(e);
		if (end)
			return all;
	}
}

/* Common fields and per-job seq 0, 1, 2, ... */
static void
check_envelope(const json_t *evs, const char *job)
{
	size_t i;
	json_t *e;
	json_array_foreach(evs, i, e) {
		assert_non_null(ev_str(e, "type"));
		assert_string_equal(ev_str(e, "job"), job);
		assert_int_equal(ev_int(e, "seq"), (long long)i);
		assert_true(ev_int(e, "ts") > 1600000000000LL);
		const char *t = ev_str(e, "type");
		if (!strncmp(t, "thread.", 7))
			assert_true(json_is_integer(json_object_get(e, "thread")));
	}
}

static int
count_type(const json_t *evs, const char *type)
{
	size_t i;
	json_t *e;
	int n = 0;
	json_array_foreach(evs, i, e) n += strcmp(ev_str(e, "type"), type) == 0;
	return n;
}

static const json_t *
last_of(const json_t *evs, const char *type)
{
	const json_t *r = NULL;
	size_t i;
	json_t *e;
	json_array_foreach(evs, i, e) if (!strcmp(ev_str(e, "type"), type)) r = e;
	return r;
}

/* The prompt's token count, computed here from the chat format. */
static int
prompt_tokens(sched *s, const char *question)
{
	const eng *e = sched_engine(s);
	struct chat_msg m = { "user", question };
	char *text = NULL;
	int32_t *ids = NULL;
	size_t n = 0;
	assert_int_equal(chat_render(eng_chat_format(e), &m, 1, 1, NULL, &text), 0);
	assert_int_equal(tok_encode(eng_tokenizer(e), text, strlen(text), 1, &ids, &n), 0);
	free(text);
	free(ids);
	return (int)n;
}

/* Poll until the cache is back to `want` blocks in use (stats follow the
 * engine loop); returns the last value seen. */
static int
kv_settles(sched *s, int want)
{
	struct sched_stats st;
	for (int i = 0; i < 2000; i++) {
		sched_stats(s, &st);
		if (st.kv_blocks_used == want && st.running == 0)
			return want;
		struct timespec ts = { 0, 1000000 };
		nanosleep(&ts, NULL);
	}
	return st.kv_blocks_used;
}

static void
test_single_events(void **state)
{
	(void)state;
	bus *b = bus_create();
	sched *s = open_sched(b, 0, 0, 0);
	const char *q = "What is 2 + 3?";
	long long total_tokens = 0;
	for (int max_tokens = 1; max_tokens <= 16; max_tokens += 15) {
		struct job_req r;
		make_req(&r, "single", 1, max_tokens, 7, q);
		char id[EV_JOB_ID_MAX];
		memcpy(id, r.id, sizeof id);
		bus_sub *sub = bus_subscribe(b, id, 0, NULL, NULL);
		submit_ok(s, &r);
		assert_string_equal(r.id, id);     /* the id survives the reset */
		assert_null(r.question);
		json_t *evs = collect(sub, id, NULL, NULL);
		check_envelope(evs, id);

		size_t n = json_array_size(evs), i;
		json_t *e;
		assert_string_equal(ev_str(json_array_get(evs, 0), "type"), "job.queued");
		assert_true(json_is_object(json_object_get(json_array_get(evs, 0), "request")));
		const json_t *st = json_array_get(evs, 1);
		assert_string_equal(ev_str(st, "type"), "job.started");
		assert_int_equal(ev_int(st, "prompt_tokens"), prompt_tokens(s, q));
		assert_string_equal(ev_str(st, "strategy"), "single");
		const json_t *sp = json_array_get(evs, 2);
		assert_string_equal(ev_str(sp, "type"), "thread.spawned");
		assert_int_equal(ev_int(sp, "thread"), 0);
		assert_int_equal(ev_int(sp, "parent"), -1);
		/* deltas, then thread.done, then job.done */
		int deltas = 0;
		char text[8192] = "";
		for (i = 3; i < n && !strcmp(ev_str(json_array_get(evs, i), "type"), "thread.delta"); i++) {
			e = json_array_get(evs, i);
			deltas++;
			assert_int_equal(ev_int(e, "tokens"), deltas);
			assert_true(json_number_value(json_object_get(e, "logprob")) <= 0);
			assert_true(json_number_value(json_object_get(e, "entropy")) >= 0);
			assert_non_null(ev_str(e, "text"));
			strncat(text, ev_str(e, "text"), sizeof text - strlen(text) - 1);
		}
		assert_true(deltas >= 1 && deltas <= max_tokens);
		assert_int_equal(i, n - 2);
		const json_t *td = json_array_get(evs, n - 2), *jd = json_array_get(evs, n - 1);
		assert_string_equal(ev_str(td, "type"), "thread.done");
		const char *fr = ev_str(td, "finish_reason");
		assert_true(!strcmp(fr, "length") || !strcmp(fr, "eos"));
		if (!strcmp(fr, "length"))
			assert_int_equal(deltas, max_tokens);
		assert_int_equal(ev_int(td, "tokens"), deltas);
		assert_string_equal(ev_str(td, "text"), text);
		char *want = ans_extract(text);
		const char *got = ev_str(td, "answer");
		if (want)
			assert_string_equal(got, want);
		else
			assert_true(json_is_null(json_object_get(td, "answer")));
		assert_string_equal(ev_str(jd, "type"), "job.done");
		assert_int_equal(ev_int(jd, "tokens"), deltas);
		total_tokens += deltas;
		assert_int_equal(ev_int(jd, "prompt_tokens"), ev_int(st, "prompt_tokens"));
		assert_true(ev_int(jd, "ms") >= 0);
		assert_true(json_is_object(json_object_get(jd, "votes")));
		assert_int_equal(json_object_size(json_object_get(jd, "votes")), want ? 1 : 0);
		const json_t *th = json_object_get(jd, "threads");
		assert_int_equal(json_array_size(th), 1);
		assert_int_equal(ev_int(json_array_get(th, 0), "tokens"), deltas);
		assert_string_equal(ev_str(json_array_get(th, 0), "finish_reason"), fr);
		if (want)
			assert_string_equal(ev_str(jd, "answer"), want);
		free(want);
		json_decref(evs);
		bus_unsubscribe(b, sub);
	}
	struct sched_stats stt;
	assert_int_equal(kv_settles(s, 0), 0);
	sched_stats(s, &stt);
	assert_int_equal(stt.jobs_done, 2);
	assert_int_equal(stt.tokens_total, total_tokens);
	assert_true(stt.steps >= 1 && stt.step_ms_avg > 0);
	assert_int_equal(stt.kv_blocks_used, 0);
	sched_destroy(s);
	bus_destroy(b);
}

struct kv_peak {
	sched *s;
	int peak;
};

static void
watch_kv(const json_t *e, void *ctx)
{
	(void)e;
	struct kv_peak *k = ctx;
	struct sched_stats st;
	sched_stats(k->s, &st);
	if (st.kv_blocks_used > k->peak)
		k->peak = st.kv_blocks_used;
}

static void
test_sc_forks(void **state)
{
	(void)state;
	bus *b = bus_create();
	sched *s = open_sched(b, 0, 0, 0);
	/* a long prompt (about 150 tokens, under the 256 context) */
	char q[2048] = "";
	int pt = 0;
	while ((pt = prompt_tokens(s, q)) < 140)
		strcat(q, "Add 12 and 7. ");
	if (!(pt > 100 && pt + 16 < 256))
		fail_msg("prompt of %d tokens", pt);
	int prompt_blocks = (pt + 15) / 16;

	struct job_req r;
	make_req(&r, "sc", 8, 12, 3, q);
	char id[EV_JOB_ID_MAX];
	memcpy(id, r.id, sizeof id);
	bus_sub *sub = bus_subscribe(b, id, 0, NULL, NULL);
	submit_ok(s, &r);
	struct kv_peak k = { s, 0 };
	json_t *evs = collect(sub, id, watch_kv, &k);
	check_envelope(evs, id);

	/* the cache was shared: far below 8 private copies of the prompt */
	assert_true(k.peak >= prompt_blocks);
	assert_true(k.peak < 8 * prompt_blocks);
	assert_true(k.peak <= prompt_blocks + 8 * 2);

	assert_int_equal(count_type(evs, "thread.spawned"), 8);
	assert_int_equal(count_type(evs, "thread.done"), 8);
	size_t i;
	json_t *e;
	int seen[8] = { 0 }, answered = 0;
	char *texts[8] = { 0 };
	json_array_foreach(evs, i, e) {
		const char *t = ev_str(e, "type");
		if (!strcmp(t, "thread.spawned")) {
			assert_int_equal(ev_int(e, "parent"), -1);
			seen[ev_int(e, "thread")]++;
		} else if (!strcmp(t, "thread.done")) {
			answered += !json_is_null(json_object_get(e, "answer"));
			texts[ev_int(e, "thread")] = strdup(ev_str(e, "text"));
		}
	}
	for (int t = 0; t < 8; t++)
		assert_int_equal(seen[t], 1);
	/* different seeds: the threads are not all the same text */
	int distinct = 0;
	for (int t = 1; t < 8; t++)
		distinct += strcmp(texts[t], texts[0]) != 0;
	assert_true(distinct > 0);
	for (int t = 0; t < 8; t++)
		free(texts[t]);

	const json_t *merge = last_of(evs, "merge"), *jd = last_of(evs, "job.done");
	assert_non_null(merge);
	assert_non_null(jd);
	assert_string_equal(ev_str(merge, "method"), "vote");
	const json_t *votes = json_object_get(jd, "votes");
	assert_true(json_equal(votes, json_object_get(merge, "votes")));
	long long sum = 0, best = 0;
	const char *key;
	json_t *v;
	json_object_foreach((json_t *)votes, key, v) {
		sum += json_integer_value(v);
		if (json_integer_value(v) > best)
			best = json_integer_value(v);
	}
	assert_int_equal(sum, answered);
	if (answered) {
		const char *ans = ev_str(jd, "answer");
		assert_non_null(ans);
		assert_int_equal(json_integer_value(json_object_get(votes, ans)), best);
	}
	assert_int_equal(json_array_size(json_object_get(jd, "threads")), 8);
	json_decref(evs);
	bus_unsubscribe(b, sub);
	assert_int_equal(kv_settles(s, 0), 0);
	printf("# sc n=8: prompt %d tokens = %d blocks, peak KV in use %d blocks\n", pt,
	       prompt_blocks, k.peak);
	sched_destroy(s);
	bus_destroy(b);
}

static void
test_sc_weighted(void **state)
{
	(void)state;
	bus *b = bus_create();
	sched *s = open_sched(b, 0, 0, 0);
	struct job_req r;
	make_req(&r, "sc", 4, 10, 11, "Count 1 2 3 4 5 6 7 8 9");
	r.params = json_pack("{s:b}", "weighted", 1);
	char id[EV_JOB_ID_MAX];
	memcpy(id, r.id, sizeof id);
	bus_sub *sub = bus_subscribe(b, id, 0, NULL, NULL);
	submit_ok(s, &r);
	json_t *evs = collect(sub, id, NULL, NULL);
	const json_t *merge = last_of(evs, "merge");
	assert_non_null(merge);
	assert_string_equal(ev_str(merge, "method"), "weighted_vote");
	/* each vote is exp(mean logprob) of its thread, from the deltas */
	double lp[4] = { 0 }, want_sum = 0, got_sum = 0;
	int nt[4] = { 0 };
	size_t i;
	json_t *e;
	json_array_foreach(evs, i, e) {
		if (!strcmp(ev_str(e, "type"), "thread.delta")) {
			lp[ev_int(e, "thread")] += json_number_value(json_object_get(e, "logprob"));
			nt[ev_int(e, "thread")]++;
		}
	}
	json_array_foreach(evs, i, e) {
		if (!strcmp(ev_str(e, "type"), "thread.done") &&
		    !json_is_null(json_object_get(e, "answer"))) {
			int t = (int)ev_int(e, "thread");
			want_sum += exp(lp[t] / nt[t]);
		}
	}
	const char *key;
	json_t *v;
	json_object_foreach(json_object_get(merge, "votes"), key, v) got_sum += json_number_value(v);
	assert_true(fabs(got_sum - want_sum) < 1e-4 * (1 + want_sum));
	json_decref(evs);
	bus_unsubscribe(b, sub);
	sched_destroy(s);
	bus_destroy(b);
}

static void
test_concurrent(void **state)
{
	(void)state;
	enum { N = 20 };
	bus *b = bus_create();
	sched *s = open_sched(b, 0, 0, 0);
	bus_sub *sub = bus_subscribe(b, NULL, 0, NULL, NULL);
	char ids[N][EV_JOB_ID_MAX];
	for (int i = 0; i < N; i++) {
		struct job_req r;
		char q[64];
		snprintf(q, sizeof q, "Question number %d?", i);
		make_req(&r, "single", 1, 48, (uint64_t)i, q);
		memcpy(ids[i], r.id, EV_JOB_ID_MAX);
		submit_ok(s, &r);
	}
	int done = 0, window = 0, best_window = 0;
	int64_t next_seq[N] = { 0 };
	char win[N][EV_JOB_ID_MAX];
	while (done < N) {
		struct ev *e = bus_pop_wait(sub, WAIT_MS);
		if (!e)
			fail_msg("timed out with %d jobs done", done);
		int j;
		for (j = 0; j < N && strcmp(ids[j], e->job); j++)
			;
		assert_true(j < N);
		assert_int_equal(e->seq, next_seq[j]);
		next_seq[j]++;
		if (e->type == EV_JOB_DONE)
			done++;
		assert_int_not_equal(e->type, EV_JOB_FAILED);
		/* a run of consecutive deltas from distinct jobs: one step */
		if (e->type == EV_THREAD_DELTA) {
			int dup = 0;
			for (int k = 0; k < window; k++)
				dup |= !strcmp(win[k], e->job);
			if (dup)
				window = 0;
			memcpy(win[window++], e->job, EV_JOB_ID_MAX);
			if (window > best_window)
				best_window = window;
		} else {
			window = 0;
		}
		ev_unref(e);
	}
	assert_int_equal(best_window, N);
	{
		struct sched_stats f;
		sched_stats(s, &f);
		printf("# %d jobs: %llu steps, %llu tokens, step %.3f ms, overhead %.3f ms, %.0f tokens/s\n",
		       N, f.steps, f.tokens_total, f.step_ms_avg, f.overhead_ms_avg, f.tokens_per_s);
	}
	struct sched_stats st;
	assert_int_equal(kv_settles(s, 0), 0);
	sched_stats(s, &st);
	assert_int_equal(st.jobs_done, N);
	assert_int_equal(st.kv_blocks_used, 0);
	assert_int_equal(st.running, 0);
	bus_unsubscribe(b, sub);
	sched_destroy(s);
	bus_destroy(b);
}

static void
wait_first_delta(bus_sub *sub)
{
	for (;;) {
		struct ev *e = bus_pop_wait(sub, WAIT_MS);
		if (!e)
			fail_msg("timed out waiting for a delta");
		int d = e->type == EV_THREAD_DELTA;
		ev_unref(e);
		if (d)
			return;
	}
}

static void
test_cancel(void **state)
{
	(void)state;
	bus *b = bus_create();
	sched *s = open_sched(b, 1, 0, 0);
	struct sched_stats st;
	sched_stats(s, &st);
	int idle = st.kv_blocks_used;

	struct job_req r, r2;
	make_req(&r, "sc", 4, 220, 5, "Go on forever");
	make_req(&r2, "single", 1, 10, 6, "Queued behind");
	char id[EV_JOB_ID_MAX], id2[EV_JOB_ID_MAX];
	memcpy(id, r.id, sizeof id);
	memcpy(id2, r2.id, sizeof id2);
	bus_sub *sub = bus_subscribe(b, id, 0, NULL, NULL);
	bus_sub *sub2 = bus_subscribe(b, id2, 0, NULL, NULL);
	submit_ok(s, &r);
	wait_first_delta(sub);
	submit_ok(s, &r2);  /* max_running 1: waits in the queue */
	assert_int_equal(sched_cancel(s, id2), 0);
	assert_int_equal(sched_cancel(s, id), 0);
	json_t *evs = collect(sub, id, NULL, NULL);
	const json_t *last = json_array_get(evs, json_array_size(evs) - 1);
	assert_string_equal(ev_str(last, "type"), "job.failed");
	assert_string_equal(ev_str(last, "reason"), "cancelled");
	/* every thread ended as cancelled, none reached its 220 tokens */
	size_t i;
	json_t *e;
	int cancelled = 0;
	json_array_foreach(evs, i, e) {
		if (!strcmp(ev_str(e, "type"), "thread.done")) {
			if (!strcmp(ev_str(e, "finish_reason"), "cancelled"))
				cancelled++;
			assert_true(ev_int(e, "tokens") < 220);
		}
	}
	assert_int_equal(cancelled, 4);
	assert_null(last_of(evs, "job.done"));
	json_decref(evs);
	/* the queued one never started */
	evs = collect(sub2, id2, NULL, NULL);
	assert_int_equal(json_array_size(evs), 2);
	assert_string_equal(ev_str(json_array_get(evs, 0), "type"), "job.queued");
	assert_string_equal(ev_str(json_array_get(evs, 1), "reason"), "cancelled");
	json_decref(evs);
	assert_int_equal(kv_settles(s, idle), idle);
	assert_int_equal(sched_cancel(s, id), ENG_ERR_NOT_FOUND);
	assert_int_equal(sched_cancel(s, "jdoesnotexist"), ENG_ERR_NOT_FOUND);
	sched_stats(s, &st);
	assert_int_equal(st.jobs_failed, 2);
	bus_unsubscribe(b, sub);
	bus_unsubscribe(b, sub2);
	sched_destroy(s);
	bus_destroy(b);
}

static void
test_limits_and_shutdown(void **state)
{
	(void)state;
	bus *b = bus_create();
	sched *s = open_sched(b, 1, 2, 0);
	bus_sub *sub = bus_subscribe(b, NULL, 0, NULL, NULL);
	char err[256];
	struct job_req r;

	/* bad requests: nothing is queued, the request stays the caller's */
	make_req(&r, "nosuch", 1, 10, 1, "q");
	err[0] = '\0';
	assert_int_equal(sched_submit(s, &r, err, sizeof err), ENG_ERR_INVALID);
	assert_non_null(strstr(err, "nosuch"));
	assert_non_null(r.question);
	snprintf(r.strategy, sizeof r.strategy, "sc");
	r.n = 0;
	assert_int_equal(sched_submit(s, &r, err, sizeof err), ENG_ERR_INVALID);
	r.n = 65;
	assert_int_equal(sched_submit(s, &r, err, sizeof err), ENG_ERR_INVALID);
	r.n = 2;
	r.max_tokens = 241;
	assert_int_equal(sched_submit(s, &r, err, sizeof err), ENG_ERR_INVALID);
	assert_non_null(strstr(err, "max_tokens"));
	r.max_tokens = 10;
	r.params = json_pack("{s:i}", "bogus", 1);
	assert_int_equal(sched_submit(s, &r, err, sizeof err), ENG_ERR_INVALID);
	assert_non_null(strstr(err, "bogus"));
	job_req_free(&r);
	assert_null(bus_pop(sub));   /* no event for any of them */

	/* queue full: one running, two waiting, the fourth is refused */
	char ids[3][EV_JOB_ID_MAX];
	for (int i = 0; i < 3; i++) {
		make_req(&r, "sc", 2, 220, (uint64_t)i, "Long one");
		memcpy(ids[i], r.id, EV_JOB_ID_MAX);
		submit_ok(s, &r);
		if (i == 0)
			wait_first_delta(sub);   /* job 0 left the queue */
	}
	make_req(&r, "single", 1, 10, 9, "one too many");
	assert_int_equal(sched_submit(s, &r, err, sizeof err), ENG_ERR_RANGE);
	assert_non_null(r.question);
	job_req_free(&r);
	struct sched_stats st;
	for (int i = 0; i < 2000; i++) {   /* the snapshot follows the loop */
		sched_stats(s, &st);
		if (st.live_threads == 2)
			break;
		struct timespec ts = { 0, 1000000 };
		nanosleep(&ts, NULL);
	}
	assert_int_equal(st.queued, 2);
	assert_int_equal(st.running, 1);
	assert_int_equal(st.live_threads, 2);
	assert_true(st.kv_blocks_used > 0);

	/* shutdown fails all three with "shutdown" */
	sched_destroy(s);
	int failed = 0;
	struct ev *e;
	while ((e = bus_pop(sub))) {
		if (e->type == EV_JOB_FAILED) {
			assert_string_equal(ev_str(e->body, "reason"), "shutdown");
			failed++;
		}
		assert_int_not_equal(e->type, EV_JOB_DONE);
		ev_unref(e);
	}
	assert_int_equal(failed, 3);
	bus_unsubscribe(b, sub);
	bus_destroy(b);
}

/* The texts of a job's threads, "t0|t1|..." (malloc'd). */
static char *
run_texts(sched *s, bus *b, const char *strategy, int n, uint64_t seed)
{
	struct job_req r;
	make_req(&r, strategy, n, 20, seed, "Pick a number");
	r.sampling.temperature = 1.0f;
	char id[EV_JOB_ID_MAX];
	memcpy(id, r.id, sizeof id);
	bus_sub *sub = bus_subscribe(b, id, 0, NULL, NULL);
	submit_ok(s, &r);
	json_t *evs = collect(sub, id, NULL, NULL);
	bus_unsubscribe(b, sub);
	char *texts[8] = { 0 };
	size_t i, len = 1;
	json_t *e;
	json_array_foreach(evs, i, e) {
		if (!strcmp(ev_str(e, "type"), "thread.done")) {
			texts[ev_int(e, "thread")] = strdup(ev_str(e, "text"));
			len += strlen(ev_str(e, "text")) + 1;
		}
	}
	json_decref(evs);
	char *out = calloc(1, len);
	for (int t = 0; t < n; t++) {
		assert_non_null(texts[t]);
		strcat(out, texts[t]);
		strcat(out, "|");
		free(texts[t]);
	}
	return out;
}

static void
test_same_seed(void **state)
{
	(void)state;
	bus *b = bus_create();
	sched *s = open_sched(b, 0, 0, 0);
	char *a = run_texts(s, b, "sc", 3, 42);
	/* again, now sharing the steps with another job */
	struct job_req other;
	make_req(&other, "sc", 4, 200, 1, "Noise next door");
	char oid[EV_JOB_ID_MAX];
	memcpy(oid, other.id, sizeof oid);
	submit_ok(s, &other);
	char *a2 = run_texts(s, b, "sc", 3, 42);
	char *c = run_texts(s, b, "sc", 3, 43);
	assert_int_equal(sched_cancel(s, oid), 0);
	assert_string_equal(a, a2);
	assert_string_not_equal(a, c);
	free(a);
	free(a2);
	free(c);
	sched_destroy(s);
	bus_destroy(b);
}

static void
test_out_of_kv(void **state)
{
	(void)state;
	bus *b = bus_create();
	/* 24 blocks of 16 positions: the sc job below needs ~8 x 14 */
	sched *s = open_sched(b, 0, 0, 24 * KV_BLOCK_BYTES);
	bus_sub *sub = bus_subscribe(b, NULL, 0, NULL, NULL);
	struct job_req small, big;
	make_req(&small, "single", 1, 40, 1, "small");
	make_req(&big, "sc", 8, 220, 2, "big");
	char sid[EV_JOB_ID_MAX], bid[EV_JOB_ID_MAX];
	memcpy(sid, small.id, sizeof sid);
	memcpy(bid, big.id, sizeof bid);
	submit_ok(s, &small);
	wait_first_delta(sub);
	submit_ok(s, &big);
	int small_done = 0, big_failed = 0;
	while (!(small_done && big_failed)) {
		struct ev *e = bus_pop_wait(sub, WAIT_MS);
		if (!e)
			fail_msg("timed out");
		if (e->type == EV_JOB_FAILED) {
			assert_string_equal(e->job, bid);
			assert_string_equal(ev_str(e->body, "reason"), "out of KV cache memory");
			big_failed = 1;
		}
		if (e->type == EV_JOB_DONE) {
			assert_string_equal(e->job, sid);
			small_done = 1;
		}
		ev_unref(e);
	}
	assert_int_equal(kv_settles(s, 0), 0);
	/* the scheduler still serves */
	char *t = run_texts(s, b, "single", 1, 5);
	assert_true(strlen(t) >= 1);
	free(t);
	bus_unsubscribe(b, sub);
	sched_destroy(s);
	bus_destroy(b);
}

/* A thread stops at the model's context (256 positions) even below its
 * max_tokens: tokens = 256 - prompt tokens. */
static void
test_context_limit(void **state)
{
	(void)state;
	bus *b = bus_create();
	sched *s = open_sched(b, 0, 0, 0);
	const char *q = "Write a long story about the number 7.";
	int pt = prompt_tokens(s, q);
	const json_t *td = NULL;
	json_t *evs = NULL;
	for (uint64_t seed = 1; seed < 20; seed++) {
		struct job_req r;
		make_req(&r, "single", 1, 240, seed, q);
		char id[EV_JOB_ID_MAX];
		memcpy(id, r.id, sizeof id);
		bus_sub *sub = bus_subscribe(b, id, 0, NULL, NULL);
		submit_ok(s, &r);
		json_decref(evs);
		evs = collect(sub, id, NULL, NULL);
		bus_unsubscribe(b, sub);
		td = last_of(evs, "thread.done");
		assert_non_null(td);
		if (strcmp(ev_str(td, "finish_reason"), "eos") != 0)
			break;   /* a seed whose thread did not stop at EOS first */
	}
	assert_string_equal(ev_str(td, "finish_reason"), "length");
	assert_int_equal(ev_int(td, "tokens"), 256 - pt);
	assert_true(256 - pt < 240);
	json_decref(evs);
	sched_destroy(s);
	bus_destroy(b);
}

static void
test_create_fails(void **state)
{
	(void)state;
	bus *b = bus_create();
	char err[ENG_ERRLEN] = "";
	struct eng_params ep = eng_default_params();
	ep.model_dir = "/nonexistent/model";
	assert_null(sched_create(&ep, b, NULL, err, sizeof err));
	assert_non_null(strstr(err, "/nonexistent/model"));
	sched_destroy(NULL);
	bus_destroy(b);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_single_events),
		cmocka_unit_test(test_sc_forks),
		cmocka_unit_test(test_sc_weighted),
		cmocka_unit_test(test_concurrent),
		cmocka_unit_test(test_cancel),
		cmocka_unit_test(test_limits_and_shutdown),
		cmocka_unit_test(test_same_seed),
		cmocka_unit_test(test_out_of_kv),
		cmocka_unit_test(test_context_limit),
		cmocka_unit_test(test_create_fails),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
