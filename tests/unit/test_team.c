/* test_team.c - the "team" strategy: team files and params validated
 * strictly (no model needed), then real jobs on the embedded model through
 * a real scheduler: the team structure in the events, checkers reading the
 * solver's steps, re-solving after a rejection, panel votes, tree nodes,
 * role budgets, and every KV block freed. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "job.h"
#include "status.h"
#include "strat_harness.h"
#include "strategy.h"
#include "testutil.h"
#include "tokenizer.h"

/* ---- init: params and team files (no model) ------------------------------------------- */

/* Run the strategy's init on a request with params (JSON text) and n
 * threads; returns its status, err filled. */
static int
try_init(const char *params, int n, char *err, size_t errlen)
{
	const struct strategy *st = strat_find("team");
	assert_non_null(st);
	struct job_req r;
	job_req_init(&r);
	r.question = strdup("Compute 2+3");
	r.n = n;
	json_error_t je;
	r.params = params ? json_loads(params, 0, &je) : NULL;
	if (params)
		assert_non_null(r.params);
	void *state = NULL;
	err[0] = '\0';
	int rc = st->init(&r, &state, err, errlen);
	if (rc == 0) {
		assert_non_null(state);
		st->destroy(state);
	}
	job_req_free(&r);
	return rc;
}

/* init fails with ENG_ERR_INVALID and a message holding each of want[]. */
static void
expect_invalid(const char *params, int n, const char *want1, const char *want2)
{
	char err[512];
	int rc = try_init(params, n, err, sizeof err);
	if (rc != ENG_ERR_INVALID || !strstr(err, want1) || (want2 && !strstr(err, want2)))
		fail_msg("params %s: rc %d, err \"%s\" (wanted \"%s\"%s%s)", params ? params : "(none)",
			 rc, err, want1, want2 ? " and " : "", want2 ? want2 : "");
}

static void
t_shipped_files_load(void **st)
{
	(void)st;
	char err[512];
	unsetenv("BRAID_TEAMS_DIR");
	const char *names[] = { "solver-checker", "panel", "tree" };
	for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
		char p[64];
		snprintf(p, sizeof p, "{\"team\": \"%s\"}", names[i]);
		int rc = try_init(p, 64, err, sizeof err);
		if (rc != 0)
			fail_msg("%s: %s", names[i], err);
	}
	/* no params: the default team */
	assert_int_equal(try_init(NULL, 8, err, sizeof err), 0);
}

static void
t_params_errors(void **st)
{
	(void)st;
	unsetenv("BRAID_TEAMS_DIR");
	expect_invalid("{\"tem\": \"panel\"}", 8, "params.tem", "unknown");
	expect_invalid("{\"team\": 3}", 8, "params.team", "name or a team object");
	expect_invalid("{\"team\": \"no-such-team\"}", 8, "no team \"no-such-team\"", NULL);
	expect_invalid("{\"team\": \"../etc/passwd\"}", 8, "params.team", "letters, digits");
	expect_invalid("{\"team\": \"\"}", 8, "params.team", NULL);
	expect_invalid("{\"teams\": 0}", 8, "params.teams", "[1, 32]");
	expect_invalid("{\"teams\": \"2\"}", 8, "params.teams", NULL);
	expect_invalid("{\"max_rounds\": 11}", 8, "params.max_rounds", NULL);
	expect_invalid("[1]", 8, "params", "object");
	/* panel: 3 teams x (solver + checker) */
	expect_invalid("{\"team\": \"panel\"}", 5, "n:", "at least 6");
	expect_invalid("{\"team\": \"solver-checker\", \"teams\": 4}", 7, "at least 8", NULL);
	/* inline teams are validated the same way, named by their path */
	expect_invalid("{\"team\": {\"roles\": []}}", 8, "params.team.roles", "1 to 8");
	expect_invalid("{\"team\": {\"roles\": [{\"name\": \"c\", \"task\": \"check\", "
		       "\"prompt\": \"{steps}\"}]}}", 8, "params.team.roles", "\"solve\"");
	expect_invalid("{\"team\": {\"roles\": [{\"name\": \"s\", \"task\": \"solve\", "
		       "\"prompt\": \"{steps}\"}]}}", 8, "params.team.roles[0].prompt",
		       "unknown placeholder {steps}");
	expect_invalid("{\"team\": {\"roles\": [{\"name\": \"s\", \"task\": \"solve\", "
		       "\"prompt\": \"{question\"}]}}", 8, "roles[0].prompt", "unclosed");
	expect_invalid("{\"team\": {\"roles\": [{\"name\": \"s\", \"task\": \"solve\", "
		       "\"prompt\": \"q\", \"count\": 0}]}}", 8, "roles[0].count", "[1, 16]");
	expect_invalid("{\"team\": {\"roles\": [{\"name\": \"s\", \"task\": \"sovle\", "
		       "\"prompt\": \"q\"}]}}", 8, "roles[0].task", NULL);
	expect_invalid("{\"team\": {\"roles\": [{\"name\": \"s\", \"task\": \"solve\"}]}}", 8,
		       "roles[0].prompt: missing", NULL);
	expect_invalid("{\"team\": {\"topology\": \"ring\", \"roles\": [{\"name\": \"s\", "
		       "\"task\": \"solve\", \"prompt\": \"q\"}]}}", 8, "params.team.topology", NULL);
	expect_invalid("{\"team\": {\"fanout\": 2, \"roles\": [{\"name\": \"s\", "
		       "\"task\": \"solve\", \"prompt\": \"q\"}]}}", 8, "fanout", "tree");
	expect_invalid("{\"team\": {\"roles\": [{\"name\": \"s\", \"task\": \"solve\", "
		       "\"prompt\": \"q\"}, {\"name\": \"s\", \"task\": \"solve\", \"prompt\": \"q\"}]}}",
		       8, "roles[1].name", "twice");
	expect_invalid("{\"team\": {\"roles\": [{\"name\": \"s\", \"task\": \"solve\", "
		       "\"prompt\": \"q\", \"accept_text\": \"ok\"}]}}", 8, "roles[0].accept_text",
		       "only check roles");
	/* a literal brace is fine when doubled */
	char err[256];
	assert_int_equal(try_init("{\"team\": {\"roles\": [{\"name\": \"s\", \"task\": \"solve\", "
				  "\"prompt\": \"{{x}} {question}\"}]}}", 8, err, sizeof err), 0);
}

static void
t_file_errors(void **st)
{
	(void)st;
	char *dir = tu_tmpdir();
	assert_non_null(dir);
	setenv("BRAID_TEAMS_DIR", dir, 1);
	struct {
		const char *name, *text, *want;
	} cases[] = {
		{ "syntax", "{\"teams\": 2,\n \"roles\": [}\n", "syntax.json:2:" },
		{ "field", "{\"roles\": [{\"name\": \"s\", \"task\": \"solve\", \"prompt\": \"q\"},\n"
			   "{\"name\": \"c\", \"task\": \"check\", \"prompt\": \"{steps}\", \"cout\": 1}]}",
		  "field.json: roles[1].cout: unknown field" },
		{ "rounds", "{\"max_rounds\": 0, \"roles\": [{\"name\": \"s\", \"task\": \"solve\", "
			    "\"prompt\": \"q\"}]}", "rounds.json: max_rounds: must be an integer" },
		{ "noroles", "{\"teams\": 2}", "noroles.json: roles: missing" },
		{ "array", "[]", "array.json: a team must be a JSON object" },
		{ "dup", "{\"teams\": 1, \"teams\": 2, \"roles\": []}", "dup.json:1:" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		char path[1024], params[128];
		snprintf(path, sizeof path, "%s/%s.json", dir, cases[i].name);
		assert_int_equal(tu_write_file(path, cases[i].text, strlen(cases[i].text)), 0);
		snprintf(params, sizeof params, "{\"team\": \"%s\"}", cases[i].name);
		expect_invalid(params, 8, cases[i].want, dir);
	}
	/* a good file in the same directory loads */
	const char *good = "{\"teams\": 2, \"roles\": [{\"name\": \"s\", \"task\": \"solve\", "
			   "\"prompt\": \"{question}\"}]}";
	char path[1024], err[256];
	snprintf(path, sizeof path, "%s/good.json", dir);
	assert_int_equal(tu_write_file(path, good, strlen(good)), 0);
	assert_int_equal(try_init("{\"team\": \"good\"}", 2, err, sizeof err), 0);
	unsetenv("BRAID_TEAMS_DIR");
	tu_rmtree(dir);
	free(dir);
}

/* ---- real jobs ------------------------------------------------------------------------- */

static int
run(const char *body, struct sh_run *r)
{
	memset(r, 0, sizeof *r);
	unsetenv("BRAID_TEAMS_DIR");
	return sh_run_job(sh_model(), body, 240, r);
}

/* The merge events with this method, as a new array of borrowed events. */
static json_t *
merges(const json_t *events, const char *method)
{
	json_t *out = json_array();
	for (int i = 0;; i++) {
		const json_t *e = sh_nth(events, "merge", i);
		if (!e)
			break;
		const char *m = json_string_value(json_object_get(e, "method"));
		if (m && !strcmp(m, method))
			json_array_append(out, (json_t *)e);
	}
	return out;
}

static const char *
str(const json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

static int
num(const json_t *o, const char *k)
{
	return (int)json_integer_value(json_object_get(o, k));
}

/* Index in events of the first event of this type and thread. */
static size_t
index_of(const json_t *events, const char *type, int thread)
{
	size_t i;
	json_t *e;
	json_array_foreach(events, i, e)
		if (!strcmp(str(e, "type"), type) && num(e, "thread") == thread)
			return i;
	return (size_t)-1;
}

static size_t
n_tokens(const char *text)
{
	char err[256];
	tok *t = tok_load_dir(sh_model(), err, sizeof err);
	int32_t *ids = NULL;
	size_t n = 0;
	assert_non_null(t);
	assert_int_equal(tok_encode(t, text, strlen(text), 0, &ids, &n), 0);
	free(ids);
	tok_free(t);
	return n;
}

/* Every role's threads, as the assign events give them, match the number
 * of thread.spawned events, and each is spawned exactly once. */
static void
check_assignments(const json_t *events, int n_expected)
{
	json_t *as = merges(events, "team.assign");
	int total = 0;
	size_t i;
	json_t *a;
	json_array_foreach(as, i, a) {
		json_t *th = json_object_get(a, "threads");
		size_t k;
		json_t *x;
		json_array_foreach(th, k, x) {
			int t = (int)json_integer_value(x);
			assert_int_equal(sh_count(events, "thread.spawned", t), 1);
			total++;
		}
	}
	assert_int_equal(total, sh_count(events, "thread.spawned", -1));
	assert_int_equal(total, n_expected);
	json_decref(as);
}

static void
t_solver_checker(void **st)
{
	(void)st;
	struct sh_run r;
	const char *q = "Compute 68*9+6";
	assert_int_equal(run("{\"question\": \"Compute 68*9+6\", \"strategy\": \"team\", \"n\": 6, "
			     "\"max_tokens\": 200, \"temperature\": 0, "
			     "\"params\": {\"team\": \"solver-checker\"}}", &r), 0);
	assert_string_equal(str(r.final, "type"), "job.done");
	assert_int_equal(r.kv_idle_used, 0);
	json_t *as = merges(r.events, "team.assign");
	assert_true(json_array_size(as) >= 2);
	const json_t *sol = json_array_get(as, 0), *chk = json_array_get(as, 1);
	assert_string_equal(str(sol, "role"), "solver");
	assert_string_equal(str(chk, "role"), "checker");
	assert_int_equal(json_array_size(json_object_get(sol, "threads")), 1);
	assert_int_equal(json_array_size(json_object_get(chk, "threads")), 1);
	int ts = (int)json_integer_value(json_array_get(json_object_get(sol, "threads"), 0));
	int tc = (int)json_integer_value(json_array_get(json_object_get(chk, "threads"), 0));
	/* the checker is spawned after the solver ended */
	assert_true(index_of(r.events, "thread.spawned", tc) >
		    index_of(r.events, "thread.done", ts));

	/* the checker's prompt holds every step line the solver wrote (its
	 * text as the scheduler reported it), numbered, and its answer */
	const char *stext = str(sh_find(r.events, "thread.done", ts), "text"), *ctext = str(chk, "prompt");
	assert_non_null(stext);
	assert_non_null(ctext);
	assert_true(!strncmp(ctext, "Check: Compute 68*9+6\nStep 1: ", 30));
	char *copy = strdup(stext), *save = NULL;
	int steps = 0;
	for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (!strncmp(line, "Answer:", 7))
			continue;
		char want[512];
		snprintf(want, sizeof want, "Step %d: %s", ++steps, line);
		if (!strstr(ctext, want))
			fail_msg("checker prompt lacks \"%s\":\n%s", want, ctext);
	}
	free(copy);
	assert_true(steps >= 2);
	/* token counts: the checker's prompt is longer than the solver's */
	size_t n_solver = n_tokens(q), n_checker = n_tokens(ctext);
	print_message("# solver prompt %zu tokens, checker prompt %zu tokens\n", n_solver, n_checker);
	assert_true(n_checker > n_solver + 10);
	assert_true(num(r.final, "prompt_tokens") > (int)n_solver);

	/* the checker re-checked each step: its text reaches Step <steps> */
	const char *cout = str(sh_find(r.events, "thread.done", tc), "text");
	char last[32];
	snprintf(last, sizeof last, "Step %d", steps);
	print_message("# checker said: %s\n", cout);
	assert_non_null(strstr(cout, last));

	/* tier-1: the solver is right and the checker accepts it */
	json_t *ck = merges(r.events, "team.check");
	assert_true(json_array_size(ck) >= 1);
	json_t *dn = merges(r.events, "team.done"), *vote = merges(r.events, "vote");
	assert_int_equal(json_array_size(dn), 1);
	assert_int_equal(json_array_size(vote), 1);
	assert_string_equal(str(json_array_get(dn, 0), "decision"), "accepted");
	assert_string_equal(str(json_array_get(ck, json_array_size(ck) - 1), "decision"), "accepted");
	assert_string_equal(str(r.final, "answer"), "618");
	check_assignments(r.events, (int)(2 * json_array_size(ck)));
	json_decref(as);
	json_decref(ck);
	json_decref(dn);
	json_decref(vote);
	sh_run_free(&r);
}

/* A checker that never accepts (its accept text never appears): every
 * round is rejected and re-solved by a new solver thread (another seed),
 * until max_rounds; with too few threads the thread budget ends it. */
static const char *REJECT_TEAM =
	"{\"max_rounds\": 3, \"roles\": ["
	"{\"name\": \"solver\", \"task\": \"solve\", \"prompt\": \"{question}\"},"
	"{\"name\": \"checker\", \"task\": \"check\", \"max_tokens\": 40, "
	"\"prompt\": \"Check: {question}\\n{steps}\\nAnswer: {answer}\", "
	"\"accept_text\": \"@never@\"}]}";

static void
t_reject_resolves(void **st)
{
	(void)st;
	char body[2048];
	struct sh_run r;
	snprintf(body, sizeof body, "{\"question\": \"Compute 4+7*9\", \"strategy\": \"team\", "
		 "\"n\": 6, \"max_tokens\": 120, \"params\": {\"team\": %s}}", REJECT_TEAM);
	assert_int_equal(run(body, &r), 0);
	assert_string_equal(str(r.final, "type"), "job.done");
	assert_int_equal(r.kv_idle_used, 0);
	json_t *ck = merges(r.events, "team.check"), *as = merges(r.events, "team.assign");
	assert_int_equal(json_array_size(ck), 3);
	assert_int_equal(json_array_size(as), 6);
	for (int round = 1; round <= 3; round++) {
		const json_t *c = json_array_get(ck, (size_t)round - 1);
		assert_int_equal(num(c, "round"), round);
		assert_string_equal(str(c, "decision"), "rejected");
		/* every round has a new solver thread, spawned after the previous
		 * round's rejection */
		const json_t *a = json_array_get(as, 2 * ((size_t)round - 1));
		assert_string_equal(str(a, "role"), "solver");
		assert_int_equal(num(a, "round"), round);
		int t = (int)json_integer_value(json_array_get(json_object_get(a, "threads"), 0));
		assert_int_equal(t, 2 * (round - 1));
		if (round > 1) {
			size_t i;
			json_t *e;
			size_t prev_check = (size_t)-1;
			json_array_foreach(r.events, i, e)
				if (e == json_array_get(ck, (size_t)round - 2))
					prev_check = i;
			assert_true(index_of(r.events, "thread.spawned", t) > prev_check);
		}
		/* the checker's role budget: at most 40 tokens */
		const json_t *ca = json_array_get(as, 2 * ((size_t)round - 1) + 1);
		int tc = (int)json_integer_value(json_array_get(json_object_get(ca, "threads"), 0));
		assert_true(num(sh_find(r.events, "thread.done", tc), "tokens") <= 40);
	}
	json_t *dn = merges(r.events, "team.done");
	assert_int_equal(json_array_size(dn), 1);
	assert_string_equal(str(json_array_get(dn, 0), "decision"), "rejected");
	assert_int_equal(num(json_array_get(dn, 0), "rounds"), 3);
	/* the rejected answer is still the team's (a right one here) */
	assert_string_equal(str(r.final, "answer"), "67");
	check_assignments(r.events, 6);
	json_decref(ck);
	json_decref(as);
	json_decref(dn);
	sh_run_free(&r);

	/* n = 4: room for two rounds only */
	snprintf(body, sizeof body, "{\"question\": \"Compute 4+7*9\", \"strategy\": \"team\", "
		 "\"n\": 4, \"max_tokens\": 120, \"params\": {\"team\": %s}}", REJECT_TEAM);
	assert_int_equal(run(body, &r), 0);
	assert_string_equal(str(r.final, "type"), "job.done");
	assert_int_equal(r.kv_idle_used, 0);
	dn = merges(r.events, "team.done");
	assert_int_equal(json_array_size(dn), 1);
	assert_string_equal(str(json_array_get(dn, 0), "decision"), "thread_budget");
	assert_int_equal(num(json_array_get(dn, 0), "rounds"), 2);
	assert_int_equal(sh_count(r.events, "thread.spawned", -1), 4);
	json_decref(dn);
	sh_run_free(&r);
}

static void
t_panel_votes(void **st)
{
	(void)st;
	struct sh_run r;
	assert_int_equal(run("{\"question\": \"Compute 8+(7+54)\", \"strategy\": \"team\", \"n\": 12, "
			     "\"max_tokens\": 200, \"params\": {\"team\": \"panel\"}}", &r), 0);
	assert_string_equal(str(r.final, "type"), "job.done");
	assert_int_equal(r.kv_idle_used, 0);
	json_t *as = merges(r.events, "team.assign"), *dn = merges(r.events, "team.done");
	json_t *vote = merges(r.events, "vote");
	/* three teams, each starting with its own solver, in parallel: all
	 * three solvers are spawned before any thread ends */
	int seen[3] = { 0 };
	for (size_t i = 0; i < 3; i++) {
		const json_t *a = json_array_get(as, i);
		assert_string_equal(str(a, "role"), "solver");
		assert_int_equal(num(a, "round"), 1);
		seen[num(a, "team")]++;
	}
	assert_true(seen[0] == 1 && seen[1] == 1 && seen[2] == 1);
	assert_true(index_of(r.events, "thread.spawned", 2) < index_of(r.events, "thread.done", 0));
	assert_int_equal(json_array_size(dn), 3);
	assert_int_equal(json_array_size(vote), 1);
	/* the vote counts one answer per team and its winner is the job's */
	const json_t *v = json_array_get(vote, 0);
	json_t *votes = json_object_get(v, "votes");
	const char *k;
	json_t *x;
	int sum = 0;
	json_object_foreach(votes, k, x)
		sum += (int)json_integer_value(x);
	assert_int_equal(sum, 3);
	assert_int_equal(json_array_size(json_object_get(v, "teams")), 3);
	assert_string_equal(str(v, "answer"), str(r.final, "answer"));
	assert_string_equal(str(r.final, "answer"), "69");
	/* threads per role: one solver and one checker per team and round */
	int threads = 0;
	size_t i;
	json_t *a;
	json_array_foreach(as, i, a) {
		assert_int_equal(json_array_size(json_object_get(a, "threads")), 1);
		threads++;
	}
	check_assignments(r.events, threads);
	json_decref(as);
	json_decref(dn);
	json_decref(vote);
	sh_run_free(&r);
}

static void
t_tree(void **st)
{
	(void)st;
	struct sh_run r;
	/* tree.json with 3 teams and a fanout of 2: level 1 holds nodes
	 * {0,1} and {2}, level 2 the root */
	assert_int_equal(run("{\"question\": \"Compute 5*6+2\", \"strategy\": \"team\", \"n\": 12, "
			     "\"max_tokens\": 200, \"params\": {\"team\": \"tree\", \"teams\": 3}}", &r), 0);
	assert_string_equal(str(r.final, "type"), "job.done");
	assert_int_equal(r.kv_idle_used, 0);
	json_t *tr = merges(r.events, "tree");
	assert_int_equal(json_array_size(tr), 3);
	const json_t *n0 = json_array_get(tr, 0), *n1 = json_array_get(tr, 1),
		     *root = json_array_get(tr, 2);
	assert_int_equal(num(n0, "level"), 1);
	assert_int_equal(json_array_size(json_object_get(n0, "children")), 2);
	assert_int_equal(num(n1, "level"), 1);
	assert_int_equal(json_array_size(json_object_get(n1, "children")), 1);
	assert_int_equal(num(root, "level"), 2);
	assert_int_equal(json_array_size(json_object_get(root, "children")), 2);
	assert_string_equal(str(root, "answer"), str(r.final, "answer"));
	assert_string_equal(str(r.final, "answer"), "32");
	/* node {0,1} counts at most one vote per team */
	const char *k;
	json_t *x;
	int sum = 0;
	json_object_foreach(json_object_get(n0, "votes"), k, x)
		sum += (int)json_integer_value(x);
	assert_true(sum >= 1 && sum <= 2);
	json_t *dn = merges(r.events, "team.done");
	assert_int_equal(json_array_size(dn), 3);
	json_decref(dn);
	json_decref(tr);
	sh_run_free(&r);
}

/* Solvers only, two per team, two teams: a role budget of 6 tokens stops
 * each thread at 6; each team takes its solvers' majority. */
static void
t_budget_and_solvers(void **st)
{
	(void)st;
	struct sh_run r;
	assert_int_equal(run("{\"question\": \"Compute 12+30\", \"strategy\": \"team\", \"n\": 4, "
			     "\"max_tokens\": 100, \"params\": {\"team\": {\"teams\": 2, \"roles\": ["
			     "{\"name\": \"s\", \"task\": \"solve\", \"count\": 2, "
			     "\"prompt\": \"{question}\", \"max_tokens\": 6}]}}}", &r), 0);
	assert_string_equal(str(r.final, "type"), "job.done");
	assert_int_equal(r.kv_idle_used, 0);
	for (int t = 0; t < 4; t++) {
		const json_t *d = sh_find(r.events, "thread.done", t);
		assert_non_null(d);
		assert_int_equal(num(d, "tokens"), 6);
	}
	json_t *sv = merges(r.events, "team.solve"), *dn = merges(r.events, "team.done");
	assert_int_equal(json_array_size(sv), 2);
	assert_int_equal(json_array_size(dn), 2);
	assert_string_equal(str(json_array_get(dn, 0), "decision"), "solved");
	check_assignments(r.events, 4);
	json_decref(sv);
	json_decref(dn);
	sh_run_free(&r);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(t_shipped_files_load),
		cmocka_unit_test(t_params_errors),
		cmocka_unit_test(t_file_errors),
		cmocka_unit_test(t_solver_checker),
		cmocka_unit_test(t_reject_resolves),
		cmocka_unit_test(t_panel_votes),
		cmocka_unit_test(t_tree),
		cmocka_unit_test(t_budget_and_solvers),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
