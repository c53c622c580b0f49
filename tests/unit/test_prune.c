/* test_prune.c - the "prune" strategy on real jobs of the embedded model:
 * every thread.pruned is replayed from the job's own events (thread texts
 * rebuilt from thread.delta, the clustering rule recomputed here with
 * strings, independently of prune.c's hashing), freed slots are reused, the
 * budget holds, the cluster-weighted vote is recounted, all KV is freed,
 * bad parameters are refused. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "answer.h"
#include "bus.h"
#include "job.h"
#include "sched.h"
#include "status.h"
#include "strat_harness.h"
#include "strategy.h"
#include "testutil.h"

#define TIMEOUT_S 240
#define MAXT 64

/* ---- the rule, written again with strings ------------------------------------------------ */

struct wl {
	int n;
	char **w;   /* (n) malloc'd words */
};

static int
wordc(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       c >= 0x80;
}

static struct wl
split(const char *t)
{
	struct wl r = { 0, calloc(strlen(t) + 1, sizeof(char *)) };
	size_t len = strlen(t), i = 0;
	while (i < len) {
		if (strchr(" \t\n\r\f\v", t[i])) {
			i++;
			continue;
		}
		size_t j = i + 1;
		if (wordc((unsigned char)t[i])) {
			while (j < len && wordc((unsigned char)t[j]))
				j++;
			if (j == len)
				break;
		}
		r.w[r.n++] = strndup(t + i, j - i);
		i = j;
	}
	return r;
}

static void
wl_free(struct wl *r)
{
	for (int i = 0; i < r->n; i++)
		free(r->w[i]);
	free(r->w);
}

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The distinct n-grams of the first m words, sorted; returns the count. */
static int
grams(const struct wl *a, int m, int ng, char ***out)
{
	int g = m - ng + 1, k = 0;
	char **v = calloc((size_t)g, sizeof *v);
	for (int p = 0; p < g; p++) {
		size_t len = 1;
		for (int q = 0; q < ng; q++)
			len += strlen(a->w[p + q]) + 1;
		v[p] = calloc(len, 1);
		for (int q = 0; q < ng; q++) {
			strcat(v[p], a->w[p + q]);
			strcat(v[p], "\x01");
		}
	}
	qsort(v, (size_t)g, sizeof *v, cmp_str);
	for (int p = 0; p < g; p++) {
		if (k > 0 && !strcmp(v[k - 1], v[p])) {
			free(v[p]);
			continue;
		}
		v[k++] = v[p];
	}
	*out = v;
	return k;
}

static double
jacc(const struct wl *a, const struct wl *b, int m, int ng)
{
	char **x, **y;
	int nx = grams(a, m, ng, &x), ny = grams(b, m, ng, &y), common = 0;
	for (int i = 0; i < nx; i++)
		common += bsearch(&x[i], y, (size_t)ny, sizeof *y, cmp_str) != NULL;
	for (int i = 0; i < nx; i++)
		free(x[i]);
	for (int i = 0; i < ny; i++)
		free(y[i]);
	free(x);
	free(y);
	return (double)common / (nx + ny - common);
}

static int
numeric(const char *s)
{
	return *s && strspn(s, "0123456789") == strlen(s);
}

/* Answer-so-far of the first m words, as a string in buf, or NULL. */
static const char *
sofar(const struct wl *a, int m, char *buf, size_t cap)
{
	for (int k = m - 2; k >= 0; k--) {
		if (strcmp(a->w[k], "="))
			continue;
		if (numeric(a->w[k + 1])) {
			snprintf(buf, cap, "%s", a->w[k + 1]);
			return buf;
		}
		if (k + 2 < m && !strcmp(a->w[k + 1], "-") && numeric(a->w[k + 2])) {
			snprintf(buf, cap, "-%s", a->w[k + 2]);
			return buf;
		}
		return NULL;
	}
	return NULL;
}

struct rule {
	int every, ngram;
	double threshold;
	const char *measure;
};

static int
is_redundant(const struct rule *ru, const struct wl *a, const struct wl *b)
{
	int m = a->n < b->n ? a->n : b->n;
	if (m < ru->ngram)
		return 0;
	if (strcmp(ru->measure, "ngram")) {
		char x[64], y[64];
		const char *p = sofar(a, m, x, sizeof x), *q = sofar(b, m, y, sizeof y);
		int same = (!p && !q) || (p && q && !strcmp(p, q));
		if (!strcmp(ru->measure, "answer"))
			return p && same;
		if (!same)
			return 0;
	}
	return jacc(a, b, m, ru->ngram) >= ru->threshold;
}

/* ---- replaying a job ----------------------------------------------------------------------- */

struct replay {
	int n_threads;          /* spawned                              */
	int n_checks;           /* check points seen                    */
	int n_pruned;           /* thread.pruned events                 */
	int n_ended;            /* threads with thread.done or .pruned  */
	int into[MAXT];         /* the representative pruned into, or -1 */
	char *text[MAXT];
	char *answer[MAXT];     /* thread.done's answer                 */
	int max_live;
};

static int
ev_thread(const json_t *e)
{
	return (int)json_integer_value(json_object_get(e, "thread"));
}

static const char *
ev_type(const json_t *e)
{
	return json_string_value(json_object_get(e, "type"));
}

/* Walk the events: at every check point compute the expected clusters and
 * compare them with the thread.pruned events that follow before the next
 * delta; a pruning anywhere else fails. */
static void
replay(const json_t *evs, const struct rule *ru, struct replay *rp)
{
	int live[MAXT] = { 0 }, expect[MAXT], in_check = 0;
	memset(rp, 0, sizeof *rp);
	for (int i = 0; i < MAXT; i++)
		rp->into[i] = expect[i] = -1;
	size_t idx;
	json_t *e;
	json_array_foreach(evs, idx, e) {
		const char *type = ev_type(e);
		int t = ev_thread(e);
		if (!strcmp(type, "thread.delta") || !strcmp(type, "merge") ||
		    !strcmp(type, "job.done")) {
			/* a check point's prunings are over */
			if (in_check)
				for (int i = 0; i < MAXT; i++)
					if (expect[i] >= 0)
						fail_msg("check %d: thread %d was redundant with %d "
							 "but not pruned", rp->n_checks, i, expect[i]);
			in_check = 0;
		}
		if (!strcmp(type, "thread.spawned")) {
			assert_true(t >= 0 && t < MAXT);
			assert_int_equal(t, rp->n_threads);
			assert_int_equal(json_integer_value(json_object_get(e, "parent")), -1);
			rp->n_threads++;
			live[t] = 1;
			rp->text[t] = strdup("");
			int nl = 0;
			for (int i = 0; i < MAXT; i++)
				nl += live[i];
			if (nl > rp->max_live)
				rp->max_live = nl;
		} else if (!strcmp(type, "thread.delta")) {
			assert_true(t >= 0 && t < rp->n_threads && live[t]);
			const char *piece = json_string_value(json_object_get(e, "text"));
			size_t a = strlen(rp->text[t]), b = strlen(piece);
			rp->text[t] = realloc(rp->text[t], a + b + 1);
			memcpy(rp->text[t] + a, piece, b + 1);
			int tokens = (int)json_integer_value(json_object_get(e, "tokens"));
			int youngest = 1;
			for (int i = t + 1; i < rp->n_threads; i++)
				youngest &= !live[i];
			if (!youngest || tokens % ru->every)
				continue;
			/* a check point: cluster the live threads, oldest first */
			rp->n_checks++;
			in_check = 1;
			struct wl w[MAXT];
			int reps[MAXT], n_reps = 0;
			for (int i = 0; i < rp->n_threads; i++) {
				if (!live[i])
					continue;
				w[i] = split(rp->text[i]);
				int r;
				for (r = 0; r < n_reps && !is_redundant(ru, &w[reps[r]], &w[i]); r++)
					;
				if (r == n_reps)
					reps[n_reps++] = i;
				else
					expect[i] = reps[r];
			}
			for (int i = 0; i < rp->n_threads; i++)
				if (live[i])
					wl_free(&w[i]);
		} else if (!strcmp(type, "thread.pruned")) {
			assert_true(t >= 0 && t < rp->n_threads && live[t]);
			if (!in_check || expect[t] < 0)
				fail_msg("thread %d pruned (%s) but not redundant at a check point", t,
					 json_string_value(json_object_get(e, "reason")));
			char want[64];
			snprintf(want, sizeof want, "redundant with thread %d", expect[t]);
			assert_string_equal(json_string_value(json_object_get(e, "reason")), want);
			rp->into[t] = expect[t];
			expect[t] = -1;
			live[t] = 0;
			rp->n_pruned++;
			rp->n_ended++;
		} else if (!strcmp(type, "thread.done")) {
			assert_true(t >= 0 && t < rp->n_threads && live[t]);
			live[t] = 0;
			rp->n_ended++;
			const char *ans = json_string_value(json_object_get(e, "answer"));
			rp->answer[t] = ans ? strdup(ans) : NULL;
		}
	}
	for (int i = 0; i < rp->n_threads; i++)
		assert_false(live[i]);
}

static void
replay_free(struct replay *rp)
{
	for (int i = 0; i < MAXT; i++) {
		free(rp->text[i]);
		free(rp->answer[i]);
	}
}

/* Recount the cluster-weighted vote from the replay and compare it with
 * the merge event and job.done. */
static void
check_vote(const json_t *evs, const struct replay *rp)
{
	int weight[MAXT] = { 0 };
	for (int i = 0; i < rp->n_threads; i++) {
		int r = i;
		while (rp->into[r] >= 0)
			r = rp->into[r];
		weight[r]++;
	}
	const json_t *merge = sh_nth(evs, "merge", 0);
	assert_non_null(merge);
	assert_null(sh_nth(evs, "merge", 1));
	assert_string_equal(json_string_value(json_object_get(merge, "method")), "cluster_vote");
	const json_t *votes = json_object_get(merge, "votes");
	/* expected: the answers of threads that finished, in weights */
	int counted = 0, total = 0, best = -1;
	const char *best_ans = NULL;
	for (int i = 0; i < rp->n_threads; i++) {
		if (!rp->answer[i] || rp->into[i] >= 0)
			continue;
		int w = 0, first = 1;
		for (int k = 0; k < rp->n_threads; k++) {
			if (rp->answer[k] && rp->into[k] < 0 && ans_equal(rp->answer[k], rp->answer[i])) {
				if (k < i)
					first = 0;
				w += weight[k];
			}
		}
		if (!first)
			continue;
		total += w;
		counted++;
		/* the key merge used is equal to one of the group's answers */
		const char *key;
		json_t *v;
		int found = 0;
		json_object_foreach((json_t *)votes, key, v) {
			if (ans_equal(key, rp->answer[i])) {
				assert_int_equal(json_integer_value(v), w);
				found = 1;
			}
		}
		assert_true(found);
		if (w > best) {
			best = w;
			best_ans = rp->answer[i];
		}
	}
	assert_int_equal((int)json_object_size(votes), counted);
	int sum = 0;
	const char *key;
	json_t *v;
	json_object_foreach((json_t *)votes, key, v)
		sum += (int)json_integer_value(v);
	assert_int_equal(sum, total);
	const char *ans = json_string_value(json_object_get(merge, "answer"));
	if (best_ans) {
		assert_non_null(ans);
		/* weight of the chosen answer is the top weight (ties: any top) */
		json_object_foreach((json_t *)votes, key, v)
			if (ans_equal(key, ans))
				assert_int_equal(json_integer_value(v), best);
	} else {
		assert_null(ans);
	}
	assert_int_equal(json_integer_value(json_object_get(merge, "pruned")), rp->n_pruned);
	assert_int_equal(json_integer_value(json_object_get(merge, "spawned")), rp->n_threads);
	const json_t *jd = sh_nth(evs, "job.done", 0);
	assert_non_null(jd);
	const char *jans = json_string_value(json_object_get(jd, "answer"));
	if (ans)
		assert_string_equal(jans, ans);
	else
		assert_null(jans);
}

/* Run one job, replay it, check the invariants; returns the replay. */
static void
run_and_replay(const char *body, const struct rule *ru, int width, int budget, struct replay *rp,
	       struct sh_run *run)
{
	assert_int_equal(sh_run_job(sh_model(), body, TIMEOUT_S, run), 0);
	assert_string_equal(ev_type(run->final), "job.done");
	replay(run->events, ru, rp);
	assert_true(rp->n_threads <= budget);
	assert_true(rp->max_live <= width);
	assert_int_equal(rp->n_ended, rp->n_threads);
	assert_int_equal(sh_count(run->events, "thread.spawned", -1), rp->n_threads);
	/* slots freed by pruning were reused while the budget lasted */
	int reused = rp->n_threads - width;
	assert_int_equal(reused, rp->n_pruned < budget - width ? rp->n_pruned : budget - width);
	/* every KV block is back (the harness waits until the job is retired) */
	assert_int_equal(run->kv_idle_used, 0);
	check_vote(run->events, rp);
}

/* ---- tests ----------------------------------------------------------------------------------- */

/* Greedy decoding: every trace is the same, so each check prunes all but
 * the oldest and every freed slot is refilled until the budget is spent;
 * the survivor carries the whole budget's weight. */
static void
test_greedy_duplicates(void **st)
{
	(void)st;
	struct rule ru = { 8, 3, 0.8, "both" };
	struct replay rp;
	struct sh_run run;
	run_and_replay("{\"question\":\"Compute 68*9+6\",\"strategy\":\"prune\",\"n\":6,"
		       "\"temperature\":0,\"max_tokens\":80,\"params\":{\"width\":3,\"every\":8}}",
		       &ru, 3, 6, &rp, &run);
	assert_int_equal(rp.n_threads, 6);     /* spawned > width: slots reused */
	assert_int_equal(rp.n_pruned, 5);
	assert_true(rp.n_checks >= 3);
	const json_t *merge = sh_nth(run.events, "merge", 0);
	assert_string_equal(json_string_value(json_object_get(merge, "answer")), "618");
	assert_int_equal(json_integer_value(json_object_get(json_object_get(merge, "votes"), "618")), 6);
	const json_t *cl = json_object_get(merge, "clusters");
	assert_int_equal(json_array_size(cl), 1);
	assert_int_equal(json_integer_value(json_object_get(json_array_get(cl, 0), "weight")), 6);
	printf("# greedy: %d threads, %d pruned, %d checks, %.2f s\n", rp.n_threads, rp.n_pruned,
	       rp.n_checks, run.wall_s);
	replay_free(&rp);
	sh_run_free(&run);
}

/* Sampling at several temperatures and all three measures: whatever the
 * traces do, the prunings are exactly the rule's. */
static void
test_sampled_replay(void **st)
{
	(void)st;
	static const struct {
		const char *q;
		double temp;
		struct rule ru;
		int n, width;
	} cases[] = {
		{ "Compute 511+((8-6)*70*3+88)", 0.5, { 16, 3, 0.8, "both" }, 8, 4 },
		{ "Compute 4+(85*(35+8)+239)", 1.2, { 12, 2, 0.6, "ngram" }, 8, 4 },
		{ "Compute 947*11-(2+83)*26", 1.0, { 10, 3, 0.8, "answer" }, 6, 3 },
		{ "Compute 8+(7+54)", 1.5, { 5, 4, 0.9, "both" }, 5, 5 },
	};
	int total_pruned = 0;
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		char body[512];
		snprintf(body, sizeof body,
			 "{\"question\":\"%s\",\"strategy\":\"prune\",\"n\":%d,\"temperature\":%g,"
			 "\"seed\":%zu,\"max_tokens\":160,\"params\":{\"width\":%d,\"every\":%d,"
			 "\"ngram\":%d,\"threshold\":%g,\"measure\":\"%s\"}}",
			 cases[c].q, cases[c].n, cases[c].temp, 7 + c, cases[c].width,
			 cases[c].ru.every, cases[c].ru.ngram, cases[c].ru.threshold,
			 cases[c].ru.measure);
		struct replay rp;
		struct sh_run run;
		run_and_replay(body, &cases[c].ru, cases[c].width, cases[c].n, &rp, &run);
		printf("# %s T=%g measure=%s: %d threads, %d pruned, %d checks, %.2f s\n",
		       cases[c].q, cases[c].temp, cases[c].ru.measure, rp.n_threads, rp.n_pruned,
		       rp.n_checks, run.wall_s);
		total_pruned += rp.n_pruned;
		assert_true(rp.n_checks > 0);
		replay_free(&rp);
		sh_run_free(&run);
	}
	assert_true(total_pruned > 0);
}

/* budget == width: nothing to refill with; n = 1 runs one thread. */
static void
test_budget_bounds(void **st)
{
	(void)st;
	struct rule ru = { 8, 3, 0.8, "both" };
	struct replay rp;
	struct sh_run run;
	run_and_replay("{\"question\":\"Compute 8*5+(0+9)\",\"strategy\":\"prune\",\"n\":8,"
		       "\"temperature\":0,\"max_tokens\":80,\"params\":{\"width\":3,\"budget\":3,"
		       "\"every\":8}}",
		       &ru, 3, 3, &rp, &run);
	assert_int_equal(rp.n_threads, 3);
	assert_int_equal(rp.n_pruned, 2);
	assert_string_equal(json_string_value(json_object_get(run.final, "answer")), "49");
	replay_free(&rp);
	sh_run_free(&run);

	run_and_replay("{\"question\":\"Compute 8*5+(0+9)\",\"strategy\":\"prune\",\"n\":1,"
		       "\"temperature\":0,\"max_tokens\":80,\"params\":{\"every\":4}}",
		       &ru, 1, 1, &rp, &run);
	assert_int_equal(rp.n_threads, 1);
	assert_int_equal(rp.n_pruned, 0);
	assert_string_equal(json_string_value(json_object_get(run.final, "answer")), "49");
	replay_free(&rp);
	sh_run_free(&run);
}

/* Threads cut at max_tokens a few tokens in: the job still ends, votes on
 * what the traces hold, and frees everything. */
static void
test_short_traces(void **st)
{
	(void)st;
	struct rule ru = { 4, 3, 0.8, "both" };
	struct replay rp;
	struct sh_run run;
	run_and_replay("{\"question\":\"Compute 511+((8-6)*70*3+88)\",\"strategy\":\"prune\","
		       "\"n\":4,\"temperature\":0,\"max_tokens\":6,\"params\":{\"every\":4}}",
		       &ru, 2, 4, &rp, &run);
	assert_string_equal(ev_type(run.final), "job.done");
	replay_free(&rp);
	sh_run_free(&run);
}

/* A pruning-heavy job on a scheduler of its own: once the job is retired
 * (stats show nothing running), no KV block is in use. */
static void
test_kv_freed(void **st)
{
	(void)st;
	char err[512] = "";
	bus *b = bus_create();
	assert_non_null(b);
	struct eng_params ep = eng_default_params();
	ep.model_dir = sh_model();
	struct sched_params sp = sched_default_params();
	sched *s = sched_create(&ep, b, &sp, err, sizeof err);
	if (!s)
		fail_msg("sched_create: %s", err);
	bus_sub *sub = bus_subscribe(b, NULL, 0, NULL, NULL);
	assert_non_null(sub);
	struct job_req req;
	job_req_init(&req);
	json_t *body = json_loads("{\"question\":\"Compute 4+7*79-17\",\"strategy\":\"prune\","
				  "\"n\":8,\"temperature\":0.3,\"max_tokens\":100,"
				  "\"params\":{\"width\":4,\"every\":8}}", 0, NULL);
	assert_int_equal(job_req_from_json(body, &req, sp.max_threads_per_job, sp.max_tokens, err,
					   sizeof err), 0);
	assert_int_equal(sched_submit(s, &req, err, sizeof err), 0);
	int done = 0, pruned = 0, spawned = 0;
	for (int waited = 0; !done && waited < TIMEOUT_S * 10; waited++) {
		struct ev *e = bus_pop_wait(sub, 100);
		if (!e)
			continue;
		pruned += e->type == EV_THREAD_PRUNED;
		spawned += e->type == EV_THREAD_SPAWNED;
		done = e->type == EV_JOB_DONE ? 1 : e->type == EV_JOB_FAILED ? -1 : 0;
		ev_unref(e);
	}
	assert_int_equal(done, 1);
	struct sched_stats ss;
	/* sched_stats reads `running` live but the thread and block counts
	 * from a snapshot the engine thread refreshes just after retiring the
	 * job: wait (at most 2 s) for all three to settle */
	for (int i = 0; i < 200; i++) {
		sched_stats(s, &ss);
		if (ss.running == 0 && ss.live_threads == 0 && ss.kv_blocks_used == 0)
			break;
		usleep(10000);
	}
	assert_int_equal(ss.running, 0);
	assert_int_equal(ss.live_threads, 0);
	assert_int_equal(ss.kv_blocks_used, 0);
	assert_true(pruned > 0);
	assert_true(spawned > 4);
	bus_unsubscribe(b, sub);
	sched_destroy(s);
	bus_destroy(b);
	job_req_free(&req);
	json_decref(body);
}

static int
try_init(int n, const char *params, char *err, size_t errlen)
{
	struct job_req req;
	job_req_init(&req);
	req.n = n;
	json_error_t je;
	req.params = params ? json_loads(params, JSON_DECODE_ANY, &je) : NULL;
	const struct strategy *s = strat_find("prune");
	assert_non_null(s);
	void *state = NULL;
	err[0] = '\0';
	int rc = s->init(&req, &state, err, errlen);
	if (rc == 0)
		s->destroy(state);
	else
		assert_null(state);
	job_req_free(&req);
	return rc;
}

static void
test_bad_params(void **st)
{
	(void)st;
	static const struct {
		int n;
		const char *params, *key;
	} bad[] = {
		{ 4, "{\"bogus\":1}", "params.bogus" },
		{ 4, "[1]", "params" },
		{ 4, "{\"every\":0}", "params.every" },
		{ 4, "{\"every\":2.5}", "params.every" },
		{ 4, "{\"every\":\"8\"}", "params.every" },
		{ 4, "{\"ngram\":0}", "params.ngram" },
		{ 4, "{\"ngram\":17}", "params.ngram" },
		{ 4, "{\"threshold\":0}", "params.threshold" },
		{ 4, "{\"threshold\":1.01}", "params.threshold" },
		{ 4, "{\"threshold\":\"high\"}", "params.threshold" },
		{ 4, "{\"measure\":\"cosine\"}", "params.measure" },
		{ 4, "{\"measure\":3}", "params.measure" },
		{ 4, "{\"width\":5}", "params.width" },
		{ 4, "{\"width\":0}", "params.width" },
		{ 4, "{\"budget\":5}", "params.budget" },
		{ 4, "{\"budget\":2,\"width\":3}", "params.width" },
		{ 4, "{\"budget\":true}", "params.budget" },
		{ 0, NULL, "n" },
	};
	char err[256];
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		assert_int_equal(try_init(bad[i].n, bad[i].params, err, sizeof err), ENG_ERR_INVALID);
		if (strncmp(err, bad[i].key, strlen(bad[i].key)) != 0)
			fail_msg("%s: error \"%s\" does not name %s", bad[i].params, err, bad[i].key);
	}
	assert_int_equal(try_init(4, NULL, err, sizeof err), 0);
	assert_int_equal(try_init(4, "{}", err, sizeof err), 0);
	assert_int_equal(try_init(8, "{\"every\":1,\"ngram\":16,\"threshold\":1,\"measure\":\"answer\","
				  "\"width\":8,\"budget\":8}", err, sizeof err), 0);
	/* through the scheduler: refused at submit, no job runs */
	struct sh_run run;
	assert_int_equal(sh_run_job(sh_model(), "{\"question\":\"Compute 1+1\",\"strategy\":\"prune\","
				     "\"n\":2,\"params\":{\"threshold\":2}}", 30, &run), -1);
	sh_run_free(&run);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bad_params),
		cmocka_unit_test(test_greedy_duplicates),
		cmocka_unit_test(test_budget_bounds),
		cmocka_unit_test(test_short_traces),
		cmocka_unit_test(test_kv_freed),
		cmocka_unit_test(test_sampled_replay),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
