/* test_deepconf.c - the "deepconf" strategy on real jobs of the embedded
 * model (tier-1/2 problems): offline filtering and weighted vote, the online
 * threshold and pruning, consensus stopping, KV freed, bad parameters.
 * Every check recomputes from the job's events in float64 (answers from
 * thread.done, token counts from thread.delta, windows from the per-token
 * confidences that params.detail reports). */
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

#include "answer.h"
#include "job.h"
#include "sampler.h"
#include "status.h"
#include "strat_harness.h"
#include "strategy.h"

#define TIMEOUT_S 240
#define MAXT 64

/* ---- helpers ---------------------------------------------------------------------------- */

/* (this cmocka has no assert_double_equal) */
#define assert_close(a, b, eps) check_close((a), (b), (eps), #a, __LINE__)

static void
check_close(double a, double b, double eps, const char *what, int line)
{
	if (!(fabs(a - b) <= eps))
		fail_msg("line %d: %s = %.17g, expected %.17g", line, what, a, b);
}

static void
run(const char *body, struct sh_run *r)
{
	if (sh_run_job(sh_model(), body, TIMEOUT_S, r) != 0)
		fail_msg("job did not run: %s", body);
	const char *type = json_string_value(json_object_get(r->final, "type"));
	if (!type || strcmp(type, "job.done") != 0)
		fail_msg("job failed: %s", json_string_value(json_object_get(r->final, "reason")));
	/* every thread ended (its blocks freed before its event) exactly once */
	assert_int_equal(sh_unended(r->events), -1);
	/* every KV block is back (the harness waits until the job is retired) */
	assert_int_equal(r->kv_idle_used, 0);
}

/* The last merge event with this method. */
static const json_t *
merge_of(const json_t *events, const char *method)
{
	const json_t *m = NULL, *e;
	for (int i = 0; (e = sh_nth(events, "merge", i)); i++)
		if (strcmp(json_string_value(json_object_get(e, "method")), method) == 0)
			m = e;
	assert_non_null(m);
	return m;
}

/* The trace record of thread t in a final merge. */
static const json_t *
trace_of(const json_t *merge, int t)
{
	size_t i;
	json_t *tr;
	json_array_foreach(json_object_get(merge, "traces"), i, tr)
		if (json_integer_value(json_object_get(tr, "thread")) == t)
			return tr;
	fail_msg("no trace of thread %d", t);
	return NULL;
}

static double
conf_at(const json_t *tr, int k)
{
	return json_real_value(json_array_get(json_object_get(tr, "token_conf"), (size_t)k));
}

/* Mean of token confidences [end-w, end), oldest first. */
static double
window_mean(const json_t *tr, int end, int w)
{
	double sum = 0;
	for (int k = end - w; k < end; k++)
		sum += conf_at(tr, k);
	return sum / w;
}

/* A trace's confidence from its token confidences, the slow way. */
static double
ref_trace_conf(const json_t *tr, int w)
{
	int n = (int)json_array_size(json_object_get(tr, "token_conf"));
	if (n == 0)
		return 0;
	if (n < w)
		return window_mean(tr, n, n);
	double lo = INFINITY;
	for (int end = w; end <= n; end++)
		lo = fmin(lo, window_mean(tr, end, w));
	return lo;
}

/* Checks every trace of a final merge against the events: token counts,
 * C_i >= ln k (k top probabilities sum to at most 1, so by Jensen their
 * mean -log is at least ln k), the reported confidence. */
static void
check_traces(const json_t *events, const json_t *merge, int w)
{
	size_t i;
	json_t *tr;
	json_array_foreach(json_object_get(merge, "traces"), i, tr) {
		int t = (int)json_integer_value(json_object_get(tr, "thread"));
		int n = (int)json_integer_value(json_object_get(tr, "tokens"));
		assert_int_equal(n, sh_count(events, "thread.delta", t));
		assert_int_equal(n, (int)json_array_size(json_object_get(tr, "token_conf")));
		for (int k = 0; k < n; k++)
			assert_true(conf_at(tr, k) >= log((double)SAMP_MAX_TOP) - 1e-4);
		double c = json_real_value(json_object_get(tr, "confidence"));
		assert_close(c, ref_trace_conf(tr, w), 1e-9);
	}
}

/* Weighted vote over threads[m] (answers from thread.done, weights from
 * the traces): checks the merge's votes and answer and job.done's. */
static void
check_vote(const json_t *events, const json_t *merge, const int *threads, int m)
{
	const char *rep[MAXT];
	double w[MAXT];
	int g_n = 0, best = -1;
	for (int k = 0; k < m; k++) {
		const char *a = json_string_value(json_object_get(sh_find(events, "thread.done", threads[k]), "answer"));
		assert_non_null(a);
		int g;
		for (g = 0; g < g_n && !ans_equal(rep[g], a); g++)
			;
		if (g == g_n) {
			rep[g_n] = a;
			w[g_n++] = 0;
		}
		w[g] += json_real_value(json_object_get(trace_of(merge, threads[k]), "confidence"));
	}
	const json_t *votes = json_object_get(merge, "votes");
	assert_int_equal(json_object_size(votes), g_n);
	for (int g = 0; g < g_n; g++) {
		const char *key;
		json_t *v;
		int found = 0;
		json_object_foreach((json_t *)votes, key, v)
			if (ans_equal(key, rep[g])) {
				assert_close(json_real_value(v), w[g], 1e-9);
				found = 1;
			}
		assert_true(found);
		if (best < 0 || w[g] > w[best] + 1e-12)
			best = g;
	}
	const char *answer = json_string_value(json_object_get(merge, "answer"));
	const char *final = json_string_value(json_object_get(sh_nth(events, "job.done", 0), "answer"));
	if (best < 0) {
		assert_null(answer);
		return;
	}
	assert_non_null(answer);
	assert_true(ans_equal(answer, rep[best]));
	assert_non_null(final);
	assert_true(ans_equal(final, rep[best]));
}

/* Order of first report: index of thread t's thread.done event. */
static int
done_index(const json_t *events, int t)
{
	const json_t *e;
	for (int i = 0; (e = sh_nth(events, "thread.done", i)); i++)
		if (json_integer_value(json_object_get(e, "thread")) == t)
			return i;
	return -1;
}

/* ---- offline ---------------------------------------------------------------------------- */

static void
test_offline(void **state)
{
	(void)state;
	struct sh_run r;
	const int n = 6, w = 16;
	run("{\"question\": \"Compute 511+((8-6)*70*3+88)\", \"strategy\": \"deepconf\", \"n\": 6,"
	    " \"temperature\": 1.0, \"seed\": 11, \"max_tokens\": 160,"
	    " \"params\": {\"mode\": \"offline\", \"eta\": 50, \"window\": 16, \"detail\": true}}",
	    &r);
	assert_int_equal(sh_count(r.events, "thread.spawned", -1), n);
	assert_int_equal(sh_count(r.events, "thread.done", -1), n);
	assert_int_equal(sh_count(r.events, "thread.pruned", -1), 0);
	const json_t *merge = merge_of(r.events, "deepconf_offline");
	check_traces(r.events, merge, w);

	/* kept = the ceil(50% of m) most confident answered traces */
	int ans[MAXT], m = 0;
	for (int t = 0; t < n; t++)
		if (json_is_string(json_object_get(sh_find(r.events, "thread.done", t), "answer")))
			ans[m++] = t;
	assert_true(m >= 2);
	int keep = (m + 1) / 2;
	int kept[MAXT], is_kept[MAXT] = { 0 };
	for (int k = 0; k < keep; k++) {
		int best = -1;
		for (int a = 0; a < m; a++) {
			if (is_kept[ans[a]])
				continue;
			double ca = json_real_value(json_object_get(trace_of(merge, ans[a]), "confidence"));
			double cb = best < 0 ? -INFINITY
					     : json_real_value(json_object_get(trace_of(merge, best),
									       "confidence"));
			if (best < 0 || ca > cb ||
			    (ca == cb && done_index(r.events, ans[a]) < done_index(r.events, best)))
				best = ans[a];
		}
		is_kept[best] = 1;
		kept[k] = best;
	}
	const json_t *jk = json_object_get(merge, "kept"), *jf = json_object_get(merge, "filtered");
	assert_int_equal((int)json_array_size(jk), keep);
	assert_int_equal((int)json_array_size(jf), m - keep);
	for (size_t i = 0; i < json_array_size(jk); i++)
		assert_true(is_kept[json_integer_value(json_array_get(jk, i))]);
	for (size_t i = 0; i < json_array_size(jf); i++)
		assert_false(is_kept[json_integer_value(json_array_get(jf, i))]);
	/* (vote in report order, so ties go to the answer reached first) */
	for (int a = 1; a < keep; a++)
		for (int b = a; b > 0 && done_index(r.events, kept[b]) < done_index(r.events, kept[b - 1]);
		     b--) {
			int v = kept[b];
			kept[b] = kept[b - 1];
			kept[b - 1] = v;
		}
	check_vote(r.events, merge, kept, keep);
	sh_run_free(&r);
}

/* ---- online ---------------------------------------------------------------------------- */

/* numpy's default percentile (linear interpolation). */
static double
ref_percentile(double *v, int m, double p)
{
	for (int a = 1; a < m; a++)
		for (int b = a; b > 0 && v[b] < v[b - 1]; b--) {
			double x = v[b];
			v[b] = v[b - 1];
			v[b - 1] = x;
		}
	double pos = p / 100.0 * (m - 1);
	int lo = (int)floor(pos), hi = lo + 1 < m ? lo + 1 : lo;
	return v[lo] + (pos - lo) * (v[hi] - v[lo]);
}

/* Warm-up threads are 0..warm-1: threshold = the (100-eta)th percentile of
 * their confidences, recomputed; every later thread is pruned exactly at
 * the first window below it, and never otherwise.  Returns the number of
 * traces pruned. */
static int
check_online(const json_t *events, const json_t *merge, int warm, double eta, int w)
{
	const json_t *th = merge_of(events, "deepconf_threshold");
	double v[MAXT];
	for (int t = 0; t < warm; t++) {
		v[t] = ref_trace_conf(trace_of(merge, t), w);
		assert_int_equal(sh_count(events, "thread.pruned", t), 0);
		assert_non_null(sh_find(events, "thread.done", t));
	}
	double s = ref_percentile(v, warm, 100.0 - eta);
	assert_close(json_real_value(json_object_get(th, "threshold")), s, 1e-9);
	assert_close(json_real_value(json_object_get(merge, "threshold")), s, 1e-9);
	/* the threshold event comes before every later thread */
	size_t th_seq = (size_t)json_integer_value(json_object_get(th, "seq"));
	const json_t *e;
	for (int i = 0; (e = sh_nth(events, "thread.spawned", i)); i++)
		if (json_integer_value(json_object_get(e, "thread")) >= warm)
			assert_true((size_t)json_integer_value(json_object_get(e, "seq")) > th_seq);

	int n_threads = sh_count(events, "thread.spawned", -1), pruned = 0;
	for (int t = warm; t < n_threads; t++) {
		const json_t *tr = trace_of(merge, t);
		int n = (int)json_array_size(json_object_get(tr, "token_conf"));
		int first_below = 0;
		for (int end = w; end <= n && !first_below; end++)
			if (window_mean(tr, end, w) < s)
				first_below = end;
		if (sh_count(events, "thread.pruned", t)) {
			pruned++;
			assert_int_equal(first_below, n);    /* the last token seen is the dip */
			assert_int_equal(json_integer_value(json_object_get(tr, "pruned_at")), n);
			assert_null(sh_find(events, "thread.done", t));
			const json_t *p = NULL;
			for (int i = 0; (e = sh_nth(events, "thread.pruned", i)); i++)
				if (json_integer_value(json_object_get(e, "thread")) == t)
					p = e;
			const char *why = json_string_value(json_object_get(p, "reason"));
			assert_non_null(why);
			assert_true(strncmp(why, "low confidence", 14) == 0);
		} else {
			assert_int_equal(first_below, 0);
			assert_non_null(sh_find(events, "thread.done", t));
		}
	}
	return pruned;
}

static void
test_online_prune(void **state)
{
	(void)state;
	struct sh_run r;
	const int warm = 3, w = 8;
	/* a hot temperature and eta 1 (threshold at the warm-up's 99th
	 * percentile, near its most confident trace): unless the 3 warm-up
	 * traces happen to be the 3 least confident of 7 (1 in 35 for
	 * exchangeable traces), a later trace dips below it; the seed is
	 * fixed, so the run is the same every time */
	run("{\"question\": \"Compute 947*11-(2+83)*26\", \"strategy\": \"deepconf\", \"n\": 7,"
	    " \"temperature\": 1.4, \"seed\": 5, \"max_tokens\": 160,"
	    " \"params\": {\"warmup\": 3, \"eta\": 1, \"window\": 8, \"consensus\": 1.0,"
	    " \"detail\": true}}",
	    &r);
	const json_t *merge = merge_of(r.events, "deepconf_online");
	check_traces(r.events, merge, w);
	assert_int_equal(sh_count(r.events, "merge", -1), 2);
	int pruned = check_online(r.events, merge, warm, 1, w);
	assert_true(pruned >= 1);
	print_message("# online: %d threads, %d pruned below threshold %.4f, %lld tokens\n",
		      sh_count(r.events, "thread.spawned", -1), pruned,
		      json_real_value(json_object_get(merge, "threshold")),
		      json_integer_value(json_object_get(r.final, "tokens")));
	assert_int_equal((int)json_array_size(json_object_get(merge, "pruned")), pruned);
	/* the vote: every finished trace, weighted by its confidence */
	int voters[MAXT], m = 0;
	const json_t *e;
	for (int i = 0; (e = sh_nth(r.events, "thread.done", i)); i++)
		if (json_is_string(json_object_get(e, "answer")))
			voters[m++] = (int)json_integer_value(json_object_get(e, "thread"));
	check_vote(r.events, merge, voters, m);
	sh_run_free(&r);
}

static void
test_online_consensus(void **state)
{
	(void)state;
	struct sh_run r;
	const int n = 8;
	/* an easy problem at a low temperature: the warm-up agrees */
	run("{\"question\": \"Compute 8+(7+54)\", \"strategy\": \"deepconf\", \"n\": 8,"
	    " \"temperature\": 0.3, \"seed\": 3, \"max_tokens\": 160,"
	    " \"params\": {\"warmup\": 3, \"detail\": true}}",
	    &r);
	const json_t *merge = merge_of(r.events, "deepconf_online");
	check_traces(r.events, merge, 32);
	assert_string_equal(json_string_value(json_object_get(merge, "stop")), "consensus");
	int spawned = sh_count(r.events, "thread.spawned", -1);
	assert_true(spawned < n);
	/* the share recomputed over the finished traces reaches 0.95 */
	int voters[MAXT], m = 0, min_tokens = 1 << 30;
	double total = 0;
	const json_t *e;
	for (int i = 0; (e = sh_nth(r.events, "thread.done", i)); i++) {
		int t = (int)json_integer_value(json_object_get(e, "thread"));
		int tk = (int)json_integer_value(json_object_get(e, "tokens"));
		if (strcmp(json_string_value(json_object_get(e, "finish_reason")), "stop") == 0)
			continue;
		if (tk < min_tokens)
			min_tokens = tk;
		if (json_is_string(json_object_get(e, "answer"))) {
			voters[m++] = t;
			total += json_real_value(json_object_get(trace_of(merge, t), "confidence"));
		}
	}
	check_vote(r.events, merge, voters, m);
	const char *answer = json_string_value(json_object_get(merge, "answer"));
	json_t *win = json_object_get(json_object_get(merge, "votes"), answer);
	assert_true(json_real_value(win) / total >= 0.95 - 1e-12);
	assert_true(ans_equal(answer, "69"));
	/* fewer tokens than n full traces */
	long long tokens = json_integer_value(json_object_get(r.final, "tokens"));
	assert_true(tokens < (long long)n * min_tokens);
	print_message("# consensus after %d of %d threads: %lld tokens (n full traces >= %lld)\n",
		      spawned, n, tokens, (long long)n * min_tokens);
	sh_run_free(&r);
}

/* Online with the defaults on n = 1: the single warm-up trace decides. */
static void
test_online_single(void **state)
{
	(void)state;
	struct sh_run r;
	run("{\"question\": \"Compute 68*9+6\", \"strategy\": \"deepconf\", \"n\": 1,"
	    " \"temperature\": 0.5, \"seed\": 1, \"max_tokens\": 160}",
	    &r);
	assert_int_equal(sh_count(r.events, "thread.spawned", -1), 1);
	const json_t *merge = merge_of(r.events, "deepconf_online");
	assert_null(json_object_get(json_array_get(json_object_get(merge, "traces"), 0), "token_conf"));
	int t0 = 0;
	if (json_is_string(json_object_get(sh_find(r.events, "thread.done", 0), "answer")))
		check_vote(r.events, merge, &t0, 1);
	sh_run_free(&r);
}

/* ---- parameters ------------------------------------------------------------------------ */

static int
init_with(const char *body, char *err, size_t errlen)
{
	const struct strategy *st = strat_find("deepconf");
	assert_non_null(st);
	json_t *j = json_loads(body, 0, NULL);
	assert_non_null(j);
	struct job_req req;
	job_req_init(&req);
	int rc = job_req_from_json(j, &req, 64, 4096, err, errlen);
	if (rc != 0)
		fail_msg("request %s: %s", body, err);
	void *state = NULL;
	rc = st->init(&req, &state, err, errlen);
	if (rc == 0)
		st->destroy(state);
	job_req_free(&req);
	json_decref(j);
	return rc;
}

static void
test_params(void **state)
{
	(void)state;
	static const struct {
		const char *params, *key;
	} bad[] = {
		{ "{\"bogus\": 1}", "params.bogus" },
		{ "{\"mode\": \"sometimes\"}", "params.mode" },
		{ "{\"mode\": 1}", "params.mode" },
		{ "{\"eta\": 0}", "params.eta" },
		{ "{\"eta\": 100.5}", "params.eta" },
		{ "{\"eta\": \"10\"}", "params.eta" },
		{ "{\"consensus\": 0}", "params.consensus" },
		{ "{\"consensus\": 1.01}", "params.consensus" },
		{ "{\"window\": 0}", "params.window" },
		{ "{\"window\": 5000}", "params.window" },
		{ "{\"window\": 2.5}", "params.window" },
		{ "{\"warmup\": 0}", "params.warmup" },
		{ "{\"warmup\": 5}", "params.warmup" },   /* > n */
		{ "{\"detail\": 1}", "params.detail" },
	};
	char body[256], err[ENG_ERRLEN];
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		snprintf(body, sizeof body,
			 "{\"question\": \"Compute 1+1\", \"strategy\": \"deepconf\", \"n\": 4,"
			 " \"params\": %s}", bad[i].params);
		err[0] = '\0';
		assert_int_equal(init_with(body, err, sizeof err), ENG_ERR_INVALID);
		if (!strstr(err, bad[i].key))
			fail_msg("%s: error \"%s\" does not name %s", bad[i].params, err, bad[i].key);
	}
	assert_int_equal(init_with("{\"question\": \"q\", \"strategy\": \"deepconf\", \"n\": 4,"
				   " \"params\": {\"mode\": \"offline\", \"eta\": 10, \"window\": 1,"
				   " \"warmup\": 4, \"consensus\": 1, \"detail\": false}}",
				   err, sizeof err), 0);
	assert_int_equal(init_with("{\"question\": \"q\", \"strategy\": \"deepconf\", \"n\": 1}", err,
				   sizeof err), 0);
	/* (job_req_from_json refuses a params that is not an object; a direct
	 * caller gets the same answer from init) */
	const struct strategy *st = strat_find("deepconf");
	struct job_req req;
	void *dc = NULL;
	job_req_init(&req);
	req.n = 2;
	req.params = json_array();
	assert_int_equal(st->init(&req, &dc, err, sizeof err), ENG_ERR_INVALID);
	assert_non_null(strstr(err, "params"));
	req.n = 0;
	json_decref(req.params);
	req.params = NULL;
	assert_int_equal(st->init(&req, &dc, err, sizeof err), ENG_ERR_INVALID);
	assert_non_null(strstr(err, "n:"));
	job_req_free(&req);
	assert_int_equal(st->top_logprobs, SAMP_MAX_TOP);
	assert_non_null(st->token);
	/* a bad request never reaches the scheduler's job: sh_run_job refuses it */
	struct sh_run r;
	assert_int_equal(sh_run_job(sh_model(),
				    "{\"question\": \"Compute 1+1\", \"strategy\": \"deepconf\", \"n\": 2,"
				    " \"params\": {\"eta\": -1}}", 30, &r), -1);
	sh_run_free(&r);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_params),
		cmocka_unit_test(test_offline),
		cmocka_unit_test(test_online_prune),
		cmocka_unit_test(test_online_consensus),
		cmocka_unit_test(test_online_single),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
