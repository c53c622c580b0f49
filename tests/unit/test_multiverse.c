/* test_multiverse.c - the "multiverse" strategy on real jobs of the embedded
 * model: parameters, the map/process/reduce tree, answers against the gold,
 * a sequential problem passing through, KV freed; prints the wall time of
 * multiverse vs a single sequential thread on the same expressions. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "answer.h"
#include "job.h"
#include "status.h"
#include "strat_harness.h"
#include "strategy.h"
#include "testutil.h"

#define TIMEOUT_S 300

/* ---- problems ------------------------------------------------------------------- */

/* Line i (0-based) of examples/problems/NAME, parsed (caller decrefs). */
static json_t *
problem(const char *name, int i)
{
	char path[4096];
	const char *root = getenv("BRAID_SRCDIR");
	snprintf(path, sizeof path, "%s/examples/problems/%s", root ? root : ".", name);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	char line[4096];
	json_t *p = NULL;
	for (int k = 0; fgets(line, sizeof line, f); k++)
		if (k == i) {
			p = json_loads(line, 0, NULL);
			break;
		}
	fclose(f);
	assert_non_null(p);
	return p;
}

/* Run strategy on problem i of set; greedy sampling. */
static void
run(const char *set, int i, const char *strategy, int n, const char *params, struct sh_run *out,
    char **gold)
{
	json_t *p = problem(set, i);
	json_t *body = json_pack("{s:O, s:s, s:i, s:f, s:i, s:i}", "question",
				 json_object_get(p, "question"), "strategy", strategy, "n", n,
				 "temperature", 0.0, "max_tokens", 600, "seed", 7);
	assert_non_null(body);
	if (params)
		json_object_set_new(body, "params", json_loads(params, 0, NULL));
	char *text = json_dumps(body, JSON_COMPACT);
	assert_int_equal(sh_run_job(sh_model(), text, TIMEOUT_S, out), 0);
	if (gold)
		*gold = strdup(json_string_value(json_object_get(p, "answer")));
	free(text);
	json_decref(body);
	json_decref(p);
}

static const char *
final_type(const struct sh_run *r)
{
	return json_string_value(json_object_get(r->final, "type"));
}

static const char *
final_answer(const struct sh_run *r)
{
	return json_string_value(json_object_get(json_object_get(r->final, "payload") ?
						 json_object_get(r->final, "payload") : r->final,
						 "answer"));
}

static json_int_t
field_int(const json_t *ev, const char *key)
{
	const json_t *p = json_object_get(ev, "payload");
	const json_t *v = json_object_get(p ? p : ev, key);
	if (!v)
		v = json_object_get(ev, key);
	return json_integer_value(v);
}

static const json_t *
field(const json_t *ev, const char *key)
{
	const json_t *p = json_object_get(ev, "payload");
	const json_t *v = p ? json_object_get(p, key) : NULL;
	return v ? v : json_object_get(ev, key);
}

/* No thread left behind: every spawned thread ended (done or pruned), and
 * every KV block is back (the harness waits until the job is retired). */
static void
assert_all_ended(const struct sh_run *r)
{
	assert_int_equal(sh_unended(r->events), -1);
	assert_int_equal(r->kv_idle_used, 0);
}

/* ---- parameters ------------------------------------------------------------------- */

static int
try_init(const char *params, char *err, size_t errlen)
{
	const struct strategy *st = strat_find("multiverse");
	assert_non_null(st);
	struct job_req req;
	job_req_init(&req);
	req.n = 4;
	if (params)
		req.params = json_loads(params, JSON_DECODE_ANY, NULL);
	void *state = NULL;
	err[0] = '\0';
	int rc = st->init(&req, &state, err, errlen);
	if (rc == 0)
		st->destroy(state);
	job_req_free(&req);
	return rc;
}

static void
test_params(void **unused)
{
	(void)unused;
	char err[256];
	assert_int_equal(try_init(NULL, err, sizeof err), 0);
	assert_int_equal(try_init("{\"max_paths\": 2, \"max_depth\": 0}", err, sizeof err), 0);
	struct {
		const char *params, *names;
	} bad[] = {
		{ "{\"max_path\": 2}", "max_path" },
		{ "{\"max_paths\": 1}", "max_paths" },
		{ "{\"max_paths\": 65}", "max_paths" },
		{ "{\"max_paths\": \"4\"}", "max_paths" },
		{ "{\"max_paths\": 2.5}", "max_paths" },
		{ "{\"max_depth\": -1}", "max_depth" },
		{ "{\"max_depth\": 9}", "max_depth" },
		{ "{\"max_depth\": true}", "max_depth" },
		{ "[1]", "params" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		assert_int_equal(try_init(bad[i].params, err, sizeof err), ENG_ERR_INVALID);
		assert_non_null(strstr(err, bad[i].names));
	}
}

/* ---- the tree ------------------------------------------------------------------------ */

/* Check the map/process/reduce tree of a finished multiverse job; returns
 * the number of paths. */
static int
check_tree(const struct sh_run *r)
{
	const json_t *ev = r->events;
	assert_string_equal(final_type(r), "job.done");
	const json_t *s0 = sh_nth(ev, "thread.spawned", 0);
	assert_int_equal(json_integer_value(json_object_get(s0, "thread")), 0);
	assert_int_equal(field_int(s0, "parent"), -1);
	int n_spawned = sh_count(ev, "thread.spawned", -1);
	int k = n_spawned - 1;
	assert_true(k >= 2);
	/* the map thread stopped at its </Goal>; the paths forked there */
	const json_t *d0 = sh_find(ev, "thread.done", 0);
	assert_non_null(d0);
	assert_string_equal(json_string_value(field(d0, "finish_reason")), "stop");
	const char *map_text = json_string_value(field(d0, "text"));
	size_t map_len = strlen(map_text);
	assert_true(map_len > 7 && strcmp(map_text + map_len - 7, "</Goal>") == 0);
	assert_non_null(strstr(map_text, "<Parallel><Goal><Outline>1:"));
	int outlines = 0;
	for (const char *p = map_text; (p = strstr(p, "<Outline>")); p++)
		outlines++;
	assert_int_equal(outlines, k);
	for (int i = 1; i <= k; i++) {
		const json_t *si = sh_nth(ev, "thread.spawned", i);
		assert_int_equal(json_integer_value(json_object_get(si, "thread")), i);
		assert_int_equal(field_int(si, "parent"), 0);
		assert_int_equal(field_int(si, "at_token"), field_int(d0, "tokens"));
	}
	/* one reduce: a merge over the k paths, into path 1's thread */
	assert_int_equal(sh_count(ev, "merge", -1), 1);
	const json_t *m = sh_nth(ev, "merge", 0);
	assert_string_equal(json_string_value(field(m, "method")), "reduce");
	const json_t *paths = field(m, "paths");
	assert_int_equal(json_array_size(paths), k);
	for (int i = 0; i < k; i++)
		assert_int_equal(json_integer_value(json_array_get(paths, i)), i + 1);
	int red = (int)field_int(m, "reduce_thread");
	assert_int_equal(red, 1);
	/* the reduce thread saw every path, in order, each path's own text,
	 * then concluded and answered */
	const json_t *dr = sh_find(ev, "thread.done", red);
	assert_non_null(dr);
	assert_string_equal(json_string_value(field(dr, "finish_reason")), "eos");
	const char *rt = json_string_value(field(dr, "text"));
	assert_memory_equal(rt, map_text, map_len);
	const char *at = rt + map_len;
	for (int i = 1; i <= k; i++) {
		char head[32];
		snprintf(head, sizeof head, "<Path>%d:", i);
		const char *h = strstr(at, head);
		assert_non_null(h);
		const char *end = strstr(h, "</Path>");
		assert_non_null(end);
		int rewritten = 0;
		const json_t *rw = field(m, "rewritten");
		for (size_t x = 0; x < json_array_size(rw); x++)
			rewritten |= json_integer_value(json_array_get(rw, x)) == i;
		if (rewritten) {
			/* the reduce wrote it itself: its thread repeated path 1 */
			assert_int_equal(sh_count(ev, "thread.done", i) + sh_count(ev, "thread.pruned", i),
					 1);
			const json_t *d1 = sh_find(ev, "thread.done", i);
			if (d1) {
				char head1[] = "<Path>1:";
				const char *b1 = rt + map_len + strlen(head1);
				const char *bi = json_string_value(field(d1, "text")) + map_len +
						 strlen(head);
				size_t l = strcspn(bi, "\n");
				assert_true(l >= 2);
				assert_memory_equal(bi, b1, l);
			}
		} else if (i > 1) {
			/* path i's own thread wrote (a prefix of) this body */
			const json_t *di = sh_find(ev, "thread.done", i);
			assert_non_null(di);
			const char *pt = json_string_value(field(di, "text"));
			assert_memory_equal(pt, map_text, map_len);
			const char *body = pt + map_len + strlen(head);
			size_t blen = strlen(body);
			if (blen >= 7 && strcmp(body + blen - 7, "</Path>") == 0)
				blen -= 7;
			assert_true(blen <= (size_t)(end - (h + strlen(head))));
			assert_memory_equal(body, h + strlen(head), blen);
		}
		at = end + 7;
	}
	assert_true(strncmp(at, "<Conclusion>", 12) == 0);
	assert_non_null(strstr(at, "</Parallel>"));
	assert_non_null(strstr(at, "Answer:"));
	assert_all_ended(r);
	return k;
}

/* Parallel problems the model solves: the tree, the gold answer; wall
 * time against single on the same expressions, sequential format. */
static void
test_parallel_problems(void **unused)
{
	(void)unused;
	double mv_s = 0, single_s = 0;
	long mv_tok = 0, single_tok = 0;
	int n_prob = 4;
	for (int i = 0; i < n_prob; i++) {
		struct sh_run r, q;
		char *gold = NULL;
		run("tier3-split-parallel.jsonl", i, "multiverse", 8, NULL, &r, &gold);
		int k = check_tree(&r);
		const char *a = final_answer(&r);
		if (getenv("MV_DEBUG"))
			for (int t = 0; t <= k; t++)
				print_message("# thread %d: %s\n", t,
					      json_string_value(field(sh_find(r.events, "thread.done", t), "text")));
		char *merge = json_dumps(sh_nth(r.events, "merge", 0), JSON_COMPACT);
		print_message("# problem %d: merge %s\n", i, merge);
		free(merge);
		print_message("# problem %d: k=%d, multiverse answer %s, gold %s, %.2f s, %lld tokens\n",
			      i, k, a ? a : "(none)", gold,
			      r.wall_s, (long long)field_int(r.final, "tokens"));
		assert_non_null(a);
		assert_true(ans_equal(a, gold));
		mv_s += r.wall_s;
		mv_tok += (long)field_int(r.final, "tokens");

		run("tier3-split-sequential.jsonl", i, "single", 1, NULL, &q, NULL);
		const char *b = final_answer(&q);
		print_message("# problem %d: single answer %s, %.2f s, %lld tokens\n", i,
			      b ? b : "(none)", q.wall_s, (long long)field_int(q.final, "tokens"));
		single_s += q.wall_s;
		single_tok += (long)field_int(q.final, "tokens");
		sh_run_free(&r);
		sh_run_free(&q);
		free(gold);
	}
	print_message("# wall time over %d problems: multiverse %.2f s (%ld tokens), "
		      "single sequential %.2f s (%ld tokens)\n",
		      n_prob, mv_s, mv_tok, single_s, single_tok);
}

/* A sequential question: the map thread answers, nothing is forked. */
static void
test_sequential_passes_through(void **unused)
{
	(void)unused;
	struct sh_run r;
	char *gold = NULL;
	run("tier3-split-sequential.jsonl", 0, "multiverse", 8, NULL, &r, &gold);
	assert_string_equal(final_type(&r), "job.done");
	assert_int_equal(sh_count(r.events, "thread.spawned", -1), 1);
	assert_int_equal(sh_count(r.events, "merge", -1), 0);
	const char *a = final_answer(&r);
	assert_non_null(a);
	assert_true(ans_equal(a, gold));
	assert_all_ended(&r);
	sh_run_free(&r);
	free(gold);
}

/* max_depth 0, or a budget of one thread: the block is written
 * sequentially by the map thread, and the answer still comes. */
static void
test_no_fork_when_bounded(void **unused)
{
	(void)unused;
	const char *cases[][2] = { { "8", "{\"max_depth\": 0}" }, { "1", NULL } };
	for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
		struct sh_run r;
		char *gold = NULL;
		run("tier3-split-parallel.jsonl", 1, "multiverse", atoi(cases[c][0]), cases[c][1], &r,
		    &gold);
		assert_string_equal(final_type(&r), "job.done");
		assert_int_equal(sh_count(r.events, "thread.spawned", -1), 1);
		assert_int_equal(sh_count(r.events, "merge", -1), 0);
		const json_t *d0 = sh_find(r.events, "thread.done", 0);
		assert_non_null(strstr(json_string_value(field(d0, "text")), "<Path>2:"));
		const char *a = final_answer(&r);
		assert_non_null(a);
		assert_true(ans_equal(a, gold));
		assert_all_ended(&r);
		sh_run_free(&r);
		free(gold);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_params),
		cmocka_unit_test(test_sequential_passes_through),
		cmocka_unit_test(test_parallel_problems),
		cmocka_unit_test(test_no_fork_when_bounded),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
