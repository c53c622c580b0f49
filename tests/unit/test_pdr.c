/* test_pdr.c - the "parathink" and "pdr" strategies and their distillation
 * (distil.c): facts checked against the tier-2 check set's known wrong
 * steps, then real jobs on the embedded model. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "distil.h"
#include "job.h"
#include "status.h"
#include "strat_harness.h"
#include "strategy.h"

/* Problem i of examples/problems/name (a parsed line; caller decrefs). */
static json_t *
problem(const char *name, int i)
{
	char path[4096], line[8192];
	snprintf(path, sizeof path, "%s/examples/problems/%s", getenv("BRAID_SRCDIR"), name);
	FILE *f = fopen(path, "r");
	assert_non_null(f);
	json_t *p = NULL;
	for (int k = 0; k <= i && fgets(line, sizeof line, f); k++)
		if (k == i)
			p = json_loads(line, 0, NULL);
	fclose(f);
	assert_non_null(p);
	return p;
}

/* "a OP b=c" evaluated independently: 1 if true. */
static int
fact_true(const char *fact)
{
	long long a, b, c;
	char op;
	assert_int_equal(sscanf(fact, "%lld%c%lld=%lld", &a, &op, &b, &c), 4);
	long long v = op == '+' ? a + b : op == '-' ? a - b : a * b;
	return v == c;
}

/* Every check problem holds one trace with exactly one wrong step (gold =
 * its number) or none (gold 0): the facts distilled from it must be its
 * steps, with exactly that many false ones. */
static void
test_facts_check_set(void **st)
{
	(void)st;
	for (int i = 0; i < 40; i++) {
		json_t *p = problem("tier2-check.jsonl", i);
		const char *q = json_string_value(json_object_get(p, "question"));
		int gold = atoi(json_string_value(json_object_get(p, "answer")));
		int steps = 0;
		for (const char *s = strstr(q, "\nStep "); s; s = strstr(s + 1, "\nStep "))
			steps++;
		dst *d = dst_new();
		assert_int_equal(dst_add_trace(d, q), 0);
		char *block;
		json_t *facts;
		assert_int_equal(dst_workspace(d, 100000, &block, &facts), 0);
		int n = (int)json_array_size(facts), wrong = 0;
		assert_true(n >= 1 && n <= steps);
		size_t k;
		json_t *f;
		json_array_foreach(facts, k, f) {
			const char *fact = json_string_value(json_object_get(f, "fact"));
			wrong += !fact_true(fact);
			char line[128];
			snprintf(line, sizeof line, "Known: %s\n", fact);
			assert_non_null(strstr(block, line));
			/* the step really is in the trace: "lhs = " */
			char lhs[64];
			snprintf(lhs, sizeof lhs, "%.*s = ", (int)(strchr(fact, '=') - fact), fact);
			assert_non_null(strstr(q, lhs));
		}
		assert_int_equal(wrong, gold != 0);
		json_decref(facts);
		free(block);
		dst_free(d);
		json_decref(p);
	}
}

/* Votes: a fact needs a strict majority of the traces and no tied rival;
 * each trace votes once; the cap holds; (known) steps and tags parse. */
static void
test_facts_vote_cap(void **st)
{
	(void)st;
	dst *d = dst_new();
	assert_int_equal(dst_add_trace(d, "12*34 = 12*30+12*4 = 360+48 = 408, now 408+5\n"
					  "408+5 = 413\nAnswer: 413"), 0);
	assert_int_equal(dst_add_trace(d, "12*34 = 408 (known), now 408+5\n408+5 = 413\n"
					  "408+5 = 413\nAnswer: 413"), 0);
	assert_int_equal(dst_add_trace(d, "<Path>1: 12*34 = 418, now 418+5</Path>\n418+5 = 423\n"
					  "Answer: 423"), 0);
	assert_int_equal(dst_add_trace(d, NULL), 0);
	assert_int_equal(dst_traces(d), 4);
	char *block;
	json_t *facts;
	/* 4 traces: 2 votes is no strict majority */
	assert_int_equal(dst_workspace(d, 1000, &block, &facts), 0);
	assert_string_equal(block, "");
	assert_int_equal(json_array_size(facts), 0);
	free(block);
	json_decref(facts);
	dst_free(d);

	d = dst_new();
	const char *t = "12*34 = 12*30+12*4 = 360+48 = 408, now 408+5\n408+5 = 413\nAnswer: 413";
	assert_int_equal(dst_add_trace(d, t), 0);
	assert_int_equal(dst_add_trace(d, t), 0);
	assert_int_equal(dst_add_trace(d, "<Path>1: 12*34 = 418, now 418+5</Path>"), 0);
	assert_int_equal(dst_workspace(d, 1000, &block, &facts), 0);
	/* the product first, then the sum; 418 and 360+48 are not facts */
	assert_string_equal(block, "Known: 12*34=408\nKnown: 408+5=413\n");
	assert_int_equal(json_integer_value(json_object_get(json_array_get(facts, 0), "votes")), 2);
	free(block);
	json_decref(facts);
	/* a cap of one line keeps the best one */
	assert_int_equal(dst_workspace(d, 20, &block, NULL), 0);
	assert_string_equal(block, "Known: 12*34=408\n");
	assert_true(strlen(block) <= 20);
	free(block);
	dst_free(d);
}

static void
test_known_prompt(void **st)
{
	(void)st;
	json_t *p = problem("tier3-known.jsonl", 0);
	const char *q = json_string_value(json_object_get(p, "question"));
	assert_true(dst_is_arith(q));
	/* one line q holds already, one new */
	char *out = dst_known_prompt(q, "Known: 54*9=486\nKnown: 1*2=2\n");
	const char *compute = strstr(q, "Compute ");
	char want[4096];
	snprintf(want, sizeof want, "%.*sKnown: 1*2=2\n%s", (int)(compute - q), q, compute);
	assert_string_equal(out, want);
	free(out);
	json_decref(p);

	out = dst_known_prompt("Parallel: Compute (1+2)*(3+4)", "Known: 1+2=3\n");
	assert_string_equal(out, "Known: 1+2=3\nCompute (1+2)*(3+4)");
	free(out);
	assert_true(dst_is_arith("Compute 1+2"));
	assert_false(dst_is_arith("Compute x+2"));
	assert_false(dst_is_arith("What is 2+2?"));
	assert_false(dst_is_arith("Compute 1+2\nthen more"));
	out = dst_known_prompt("What is 2+2?", "Known: 1+1=2\n");
	assert_string_equal(out, "Known: 1+1=2\nWhat is 2+2?");
	free(out);
	for (int i = 0; i < 100; i++) {
		json_t *pr = problem("tier3.jsonl", i);
		assert_true(dst_is_arith(json_string_value(json_object_get(pr, "question"))));
		json_decref(pr);
	}
}

/* init with n and a params text: its status, err holding want. */
static void
expect_init(const char *name, int n, const char *params, int want_rc, const char *want)
{
	const struct strategy *s = strat_find(name);
	assert_non_null(s);
	struct job_req r;
	job_req_init(&r);
	r.question = strdup("Compute 1+2");
	r.n = n;
	r.params = params ? json_loads(params, JSON_DECODE_ANY, NULL) : NULL;
	void *state = NULL;
	char err[256] = "";
	int rc = s->init(&r, &state, err, sizeof err);
	if (rc != want_rc)
		fprintf(stderr, "%s %s: %d %s\n", name, params ? params : "", rc, err);
	assert_int_equal(rc, want_rc);
	if (want)
		assert_non_null(strstr(err, want));
	if (rc == 0)
		s->destroy(state);
	job_req_free(&r);
}

static void
test_bad_params(void **st)
{
	(void)st;
	expect_init("pdr", 4, NULL, 0, NULL);
	expect_init("pdr", 4, "{\"rounds\":2,\"drafts\":2,\"workspace_tokens\":64,\"format\":\"text\"}", 0,
		    NULL);
	expect_init("pdr", 4, "{\"bogus\":1}", ENG_ERR_INVALID, "params.bogus");
	expect_init("pdr", 4, "{\"rounds\":0}", ENG_ERR_INVALID, "params.rounds");
	expect_init("pdr", 4, "{\"rounds\":\"2\"}", ENG_ERR_INVALID, "params.rounds");
	expect_init("pdr", 4, "{\"rounds\":2.5}", ENG_ERR_INVALID, "params.rounds");
	expect_init("pdr", 4, "{\"drafts\":3}", ENG_ERR_INVALID, "params.drafts");
	expect_init("pdr", 1, NULL, ENG_ERR_INVALID, "params.drafts");
	expect_init("pdr", 4, "{\"workspace_tokens\":5}", ENG_ERR_INVALID, "params.workspace_tokens");
	expect_init("pdr", 4, "{\"format\":\"xml\"}", ENG_ERR_INVALID, "params.format");
	expect_init("pdr", 4, "[1]", ENG_ERR_INVALID, "params");
	expect_init("parathink", 3, NULL, 0, NULL);
	expect_init("parathink", 3, "{\"paths\":2,\"format\":\"known\"}", 0, NULL);
	expect_init("parathink", 1, NULL, ENG_ERR_INVALID, "n:");
	expect_init("parathink", 3, "{\"paths\":3}", ENG_ERR_INVALID, "params.paths");
	expect_init("parathink", 3, "{\"paths\":0}", ENG_ERR_INVALID, "params.paths");
	expect_init("parathink", 3, "{\"k\":2}", ENG_ERR_INVALID, "params.k");
	expect_init("parathink", 3, "{\"format\":null}", ENG_ERR_INVALID, "params.format");
	expect_init("parathink", 3, "{\"workspace_tokens\":100000}", ENG_ERR_INVALID,
		    "params.workspace_tokens");
}

/* Every spawned thread ended exactly once, and every KV block is back
 * (the harness waits until the scheduler has retired the job). */
static void
check_ended(const struct sh_run *r)
{
	assert_int_equal(sh_unended(r->events), -1);
	assert_int_equal(r->kv_idle_used, 0);
}

static void
test_parathink_job(void **st)
{
	(void)st;
	for (int pi = 0; pi < 2; pi++) {
		json_t *p = problem("tier2.jsonl", pi);
		const char *q = json_string_value(json_object_get(p, "question"));
		char body[1024];
		snprintf(body, sizeof body, "{\"question\":\"%s\",\"strategy\":\"parathink\",\"n\":4,"
			 "\"max_tokens\":300,\"seed\":%d}", q, 7 + pi);
		struct sh_run run;
		assert_int_equal(sh_run_job(sh_model(), body, 120, &run), 0);
		const json_t *ev = run.events;
		assert_string_equal(json_string_value(json_object_get(run.final, "type")), "job.done");
		/* 3 paths from the prompt, then one summary */
		assert_int_equal(sh_count(ev, "thread.spawned", -1), 4);
		for (int t = 0; t < 4; t++) {
			const json_t *sp = sh_nth(ev, "thread.spawned", t);
			assert_int_equal(json_integer_value(json_object_get(sp, "thread")), t);
			assert_int_equal(json_integer_value(json_object_get(sp, "parent")), -1);
		}
		assert_int_equal(sh_count(ev, "merge", -1), 1);
		const json_t *m = sh_nth(ev, "merge", 0);
		assert_int_equal(json_integer_value(json_object_get(m, "summary_thread")), 3);
		assert_int_equal(json_array_size(json_object_get(m, "answers")), 3);
		/* the merge comes after every path ended */
		const char *prompt = json_string_value(json_object_get(m, "prompt"));
		json_t *known = json_object_get(m, "known");
		assert_true(json_array_size(known) >= 1);
		size_t k;
		json_t *f;
		json_array_foreach(known, k, f) {
			const char *fact = json_string_value(json_object_get(f, "fact"));
			char line[128], lhs[64];
			snprintf(line, sizeof line, "Known: %s\n", fact);
			assert_non_null(strstr(prompt, line));
			/* held by a majority of the paths' texts */
			snprintf(lhs, sizeof lhs, "%.*s = ", (int)(strchr(fact, '=') - fact), fact);
			int held = 0;
			for (int t = 0; t < 3; t++) {
				const char *text = json_string_value(json_object_get(sh_find(ev, "thread.done", t), "text"));
				held += text && strstr(text, lhs) && strstr(text, strchr(fact, '=') + 1);
			}
			assert_true(held >= 2);
		}
		const char *compute = strstr(q, "Compute ");
		assert_non_null(strstr(prompt, compute));
		assert_string_equal(strstr(prompt, "Compute "), compute);
		/* the summary used the block (known steps) and its answer is the job's */
		const json_t *sd = sh_find(ev, "thread.done", 3);
		assert_non_null(sd);
		const char *stext = json_string_value(json_object_get(sd, "text"));
		assert_non_null(strstr(stext, "(known)"));
		assert_string_equal(json_string_value(json_object_get(sd, "answer")),
				    json_string_value(json_object_get(run.final, "answer")));
		int path_tok = 0;
		for (int t = 0; t < 3; t++)
			path_tok += (int)json_integer_value(json_object_get(sh_find(ev, "thread.done", t), "tokens"));
		int sum_tok = (int)json_integer_value(json_object_get(sd, "tokens"));
		printf("# parathink %s: paths %.1f tokens avg, summary %d, %zu known facts, %.2f s\n",
		       q, path_tok / 3.0, sum_tok, json_array_size(known), run.wall_s);
		check_ended(&run);
		sh_run_free(&run);
		json_decref(p);
	}
}

/* Text format: the summary is given the paths' answers and last lines. */
static void
test_parathink_text(void **st)
{
	(void)st;
	struct sh_run run;
	assert_int_equal(sh_run_job(sh_model(), "{\"question\":\"Compute 14*9+0\",\"strategy\":"
				   "\"parathink\",\"n\":3,\"max_tokens\":120,\"params\":{\"format\":\"text\"}}",
				   60, &run), 0);
	const json_t *m = sh_nth(run.events, "merge", 0);
	assert_non_null(m);
	const char *prompt = json_string_value(json_object_get(m, "prompt"));
	assert_non_null(strstr(prompt, "Compute 14*9+0\n\nHere are 2 solutions"));
	assert_non_null(strstr(prompt, "Solution 2 (answer: "));
	assert_int_equal(sh_count(run.events, "thread.spawned", -1), 3);
	assert_string_equal(json_string_value(json_object_get(run.final, "type")), "job.done");
	check_ended(&run);
	sh_run_free(&run);
}

static void
test_pdr_job(void **st)
{
	(void)st;
	double tok1 = 0, tok2 = 0;
	int n1 = 0, n2 = 0, with_known = 0;
	for (int pi = 0; pi < 3; pi++) {
		json_t *p = problem("tier3.jsonl", pi);
		const char *q = json_string_value(json_object_get(p, "question"));
		char body[1024];
		snprintf(body, sizeof body, "{\"question\":\"%s\",\"strategy\":\"pdr\",\"n\":4,"
			 "\"max_tokens\":400,\"seed\":%d,\"params\":{\"rounds\":2}}", q, 11 + pi);
		struct sh_run run;
		assert_int_equal(sh_run_job(sh_model(), body, 180, &run), 0);
		const json_t *ev = run.events;
		assert_string_equal(json_string_value(json_object_get(run.final, "type")), "job.done");
		assert_int_equal(sh_count(ev, "thread.spawned", -1), 4);
		assert_int_equal(sh_count(ev, "merge", -1), 2);
		const json_t *m1 = sh_nth(ev, "merge", 0), *m2 = sh_nth(ev, "merge", 1);
		assert_int_equal(json_integer_value(json_object_get(m1, "round")), 1);
		assert_int_equal(json_integer_value(json_object_get(m2, "round")), 2);
		assert_true(json_is_false(json_object_get(m1, "final")));
		assert_true(json_is_true(json_object_get(m2, "final")));
		const char *ws = json_string_value(json_object_get(m1, "workspace"));
		assert_true(strlen(ws) <= 256);
		assert_true(json_integer_value(json_object_get(m1, "workspace_bytes")) == (json_int_t)strlen(ws));
		/* round 2's drafts (2, 3) were spawned after round 1's merge */
		size_t i, at_m1 = 0, at_sp2 = 0;
		json_t *e;
		json_array_foreach(ev, i, e) {
			const char *ty = json_string_value(json_object_get(e, "type"));
			if (e == m1)
				at_m1 = i;
			if (!strcmp(ty, "thread.spawned") && json_integer_value(json_object_get(e, "thread")) == 2)
				at_sp2 = i;
		}
		assert_true(at_sp2 > at_m1);
		/* the job's answer is round 2's majority: with 2 drafts, the first
		 * to report wins a tie, so it is one of them; and the merge says so */
		const char *ans = json_string_value(json_object_get(run.final, "answer"));
		assert_string_equal(ans, json_string_value(json_object_get(m2, "answer")));
		const char *a2 = json_string_value(json_object_get(sh_find(ev, "thread.done", 2), "answer"));
		const char *a3 = json_string_value(json_object_get(sh_find(ev, "thread.done", 3), "answer"));
		assert_true((a2 && !strcmp(a2, ans)) || (a3 && !strcmp(a3, ans)));
		for (int t = 0; t < 4; t++) {
			const json_t *d = sh_find(ev, "thread.done", t);
			int tk = (int)json_integer_value(json_object_get(d, "tokens"));
			if (t < 2) {
				tok1 += tk;
				n1++;
			} else {
				tok2 += tk;
				n2++;
				with_known += strstr(json_string_value(json_object_get(d, "text")), "(known)") != NULL;
			}
		}
		printf("# pdr %s: answer %s (gold %s), workspace %zu bytes, %.2f s\n", q, ans,
		       json_string_value(json_object_get(p, "answer")), strlen(ws), run.wall_s);
		check_ended(&run);
		sh_run_free(&run);
		json_decref(p);
	}
	printf("# pdr: round 1 drafts %.1f tokens avg, round 2 %.1f (%.1f%% fewer); %d of %d round-2 "
	       "drafts used known steps\n", tok1 / n1, tok2 / n2, 100.0 * (1 - (tok2 / n2) / (tok1 / n1)),
	       with_known, n2);
	assert_true(with_known >= 1);
	assert_true(tok2 / n2 < tok1 / n1);
}

/* A single round is plain majority voting over n drafts. */
static void
test_pdr_one_round(void **st)
{
	(void)st;
	struct sh_run run;
	assert_int_equal(sh_run_job(sh_model(), "{\"question\":\"Compute 8+(7+54)\",\"strategy\":\"pdr\","
				   "\"n\":2,\"max_tokens\":100,\"params\":{\"rounds\":1}}", 60, &run), 0);
	assert_string_equal(json_string_value(json_object_get(run.final, "type")), "job.done");
	assert_int_equal(sh_count(run.events, "merge", -1), 1);
	assert_int_equal(sh_count(run.events, "thread.spawned", -1), 2);
	check_ended(&run);
	sh_run_free(&run);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_facts_check_set),
		cmocka_unit_test(test_facts_vote_cap),
		cmocka_unit_test(test_known_prompt),
		cmocka_unit_test(test_bad_params),
		cmocka_unit_test(test_parathink_job),
		cmocka_unit_test(test_parathink_text),
		cmocka_unit_test(test_pdr_job),
		cmocka_unit_test(test_pdr_one_round),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
