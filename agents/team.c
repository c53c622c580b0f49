/* team.c - the "team" strategy: agent teams defined in agents/teams/NAME.json
 * (schema in agents/teams/README.md).  Several teams run in parallel as
 * threads of the one job; in each round a team's solvers answer, its
 * checkers read the representative solver's numbered steps and accept or
 * reject; a rejected answer is re-solved by new threads (new seeds) while
 * rounds and budgets last.  The teams' final answers are then voted (topology
 * "vote") or aggregated by majority at each node of a tree of teams ("tree").
 *
 * Events (all EV_MERGE, told apart by "method"):
 *   team.assign {team, round, role, task, threads, prompt}   threads spawned
 *   team.solve  {team, round, votes, answer}                 solvers' majority
 *   team.check  {team, round, decision, answer, checkers}    checkers' verdict
 *   team.done   {team, decision, answer, rounds, tokens}     a team's end
 *   vote        {votes, answer, teams}                       topology vote
 *   tree        {level, node, children, votes, answer}       one tree node
 *
 * Hooks run on the engine thread; team_init on the submitting thread. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "answer.h"
#include "sparams.h"
#include "status.h"
#include "strat_rows.h"

#ifndef BRAID_TEAMS_DIR
#define BRAID_TEAMS_DIR "agents/teams"
#endif

#define TEAM_DEFAULT "solver-checker"
#define TEAM_MAX_TEAMS 32
#define TEAM_MAX_ROLES 8
#define TEAM_MAX_COUNT 16
#define TEAM_MAX_ROUNDS 10
#define TEAM_MAX_PROMPT 4096

/* ---- the definition (a parsed team file) -------------------------------------------- */

enum team_task { TASK_SOLVE, TASK_CHECK };
enum team_topo { TOPO_VOTE, TOPO_TREE };
enum team_accept { ACC_ALL, ACC_ANY, ACC_MAJORITY };

struct team_role {
	char *name;
	enum team_task task;
	int count;            /* threads of this role per team and round       */
	char *prompt;         /* template: {question} {steps} {answer} {{ }}    */
	int max_tokens;       /* per thread; 0 = the job's max_tokens          */
	char *accept_text;    /* check roles: the text of an accepting verdict */
};

struct team_def {
	int n_teams;
	enum team_topo topo;
	int fanout;                 /* tree: children per node                  */
	int max_rounds;
	enum team_accept accept;
	long long team_tokens;      /* no new round past this; 0 = unlimited    */
	int n_roles;
	struct team_role roles[TEAM_MAX_ROLES];
	int per_round;              /* threads of one team in one round         */
	int has_check;
};

/* ---- the running state -------------------------------------------------------------- */

enum team_phase { PH_SOLVE, PH_CHECK, PH_DONE };

struct tthread {
	int team, role, round;  /* team -1: not ours (never happens)          */
	int reported;
	char *answer;
};

struct tteam {
	int round;              /* 1-based                                   */
	enum team_phase phase;
	int pending;            /* threads of the phase not yet reported     */
	int rep;                /* the solver whose steps are checked, or -1 */
	char *candidate;        /* the round's answer                         */
	const char *decision;   /* accepted, rejected, solved, no_answer ... */
	long long tokens;
};

struct team {
	struct team_def d;
	char *question;         /* the user's question, for {question}       */
	int cap;                /* the job's thread cap (req->n)             */
	struct tthread *t;      /* (cap) by thread index                     */
	struct tteam *teams;    /* (d.n_teams)                               */
	int n_done;
	int finished;
};

static void
def_free(struct team_def *d)
{
	for (int i = 0; i < d->n_roles; i++) {
		free(d->roles[i].name);
		free(d->roles[i].prompt);
		free(d->roles[i].accept_text);
	}
	d->n_roles = 0;
}

/* ---- validation ------------------------------------------------------------------- */

/* Check a prompt template: each '{' opens "{{" or a placeholder this task
 * may use.  0, or ENG_ERR_INVALID with err. */
static int
check_template(const char *p, enum team_task task, const char *where, char *err, size_t errlen)
{
	for (const char *c = p; *c; c++) {
		if (*c != '{')
			continue;
		if (c[1] == '{') {
			c++;
			continue;
		}
		const char *end = strchr(c, '}');
		if (!end)
			return eng_seterr(err, errlen, ENG_ERR_INVALID,
					  "%s: unclosed '{' (write {{ for a brace)", where);
		size_t n = (size_t)(end - c - 1);
		int ok = (n == 8 && !strncmp(c + 1, "question", 8)) ||
			 (task == TASK_CHECK && ((n == 5 && !strncmp(c + 1, "steps", 5)) ||
						 (n == 6 && !strncmp(c + 1, "answer", 6))));
		if (!ok)
			return eng_seterr(err, errlen, ENG_ERR_INVALID,
					  "%s: unknown placeholder {%.*s} (%s)", where, (int)(n > 32 ? 32 : n),
					  c + 1, task == TASK_SOLVE ? "a solve role knows {question}"
					  : "a check role knows {question}, {steps}, {answer}");
		c = end;
	}
	return 0;
}

/* An integer field in [lo, hi]. */
static int
get_int(json_t *v, const char *where, long long lo, long long hi, long long *out, char *err,
	size_t errlen)
{
	if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "%s: must be an integer in [%lld, %lld]",
				  where, lo, hi);
	*out = json_integer_value(v);
	return 0;
}

static int
parse_role(json_t *o, int idx, const char *pre, struct team_role *r, char *err, size_t errlen)
{
	char w[160];
	const char *key;
	json_t *v;
	long long x;
	int rc;

	snprintf(w, sizeof w, "%sroles[%d]", pre, idx);
	if (!json_is_object(o))
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "%s: must be an object", w);
	json_t *task = json_object_get(o, "task");
	if (!json_is_string(task) || (strcmp(json_string_value(task), "solve") != 0 &&
				      strcmp(json_string_value(task), "check") != 0))
		return eng_seterr(err, errlen, ENG_ERR_INVALID,
				  "%s.task: must be \"solve\" or \"check\"", w);
	r->task = strcmp(json_string_value(task), "solve") == 0 ? TASK_SOLVE : TASK_CHECK;
	r->count = 1;
	json_object_foreach(o, key, v) {
		char f[224];
		snprintf(f, sizeof f, "%s.%.48s", w, key);
		if (!strcmp(key, "task")) {
			continue;
		} else if (!strcmp(key, "name") || !strcmp(key, "prompt") ||
			   (!strcmp(key, "accept_text") && r->task == TASK_CHECK)) {
			if (!json_is_string(v) || json_string_length(v) == 0 ||
			    json_string_length(v) > TEAM_MAX_PROMPT)
				return eng_seterr(err, errlen, ENG_ERR_INVALID,
						  "%s: must be a non-empty string of at most %d bytes", f,
						  TEAM_MAX_PROMPT);
			char **dst = !strcmp(key, "name") ? &r->name
				   : !strcmp(key, "prompt") ? &r->prompt : &r->accept_text;
			if (!(*dst = strdup(json_string_value(v))))
				return eng_seterr(err, errlen, ENG_ERR_NOMEM, "out of memory");
		} else if (!strcmp(key, "count")) {
			if ((rc = get_int(v, f, 1, TEAM_MAX_COUNT, &x, err, errlen)) < 0)
				return rc;
			r->count = (int)x;
		} else if (!strcmp(key, "max_tokens")) {
			if ((rc = get_int(v, f, 0, 1000000, &x, err, errlen)) < 0)
				return rc;
			r->max_tokens = (int)x;
		} else {
			return eng_seterr(err, errlen, ENG_ERR_INVALID, "%s: unknown field%s", f,
					  !strcmp(key, "accept_text") ? " (only check roles have it)" : "");
		}
	}
	if (!r->name)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "%s.name: missing", w);
	if (!r->prompt)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "%s.prompt: missing", w);
	snprintf(w + strlen(w), sizeof w - strlen(w), ".prompt");
	if ((rc = check_template(r->prompt, r->task, w, err, errlen)) < 0)
		return rc;
	if (r->task == TASK_CHECK && !r->accept_text &&
	    !(r->accept_text = strdup("All steps are correct")))
		return eng_seterr(err, errlen, ENG_ERR_NOMEM, "out of memory");
	return 0;
}

/* Parse a team object; pre prefixes field names in errors ("FILE: " or
 * "params.team."). */
static int
parse_def(json_t *o, const char *pre, struct team_def *d, char *err, size_t errlen)
{
	const char *key;
	json_t *v;
	long long x;
	int rc, has_fanout = 0;

	memset(d, 0, sizeof *d);
	d->n_teams = 1;
	d->max_rounds = 1;
	d->fanout = 2;
	if (!json_is_object(o))
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "%sa team must be a JSON object", pre);
	json_object_foreach(o, key, v) {
		char f[160];
		snprintf(f, sizeof f, "%s%.48s", pre, key);
		if (!strcmp(key, "name") || !strcmp(key, "description")) {
			if (!json_is_string(v))
				return eng_seterr(err, errlen, ENG_ERR_INVALID, "%s: must be a string", f);
		} else if (!strcmp(key, "teams")) {
			if ((rc = get_int(v, f, 1, TEAM_MAX_TEAMS, &x, err, errlen)) < 0)
				return rc;
			d->n_teams = (int)x;
		} else if (!strcmp(key, "max_rounds")) {
			if ((rc = get_int(v, f, 1, TEAM_MAX_ROUNDS, &x, err, errlen)) < 0)
				return rc;
			d->max_rounds = (int)x;
		} else if (!strcmp(key, "fanout")) {
			if ((rc = get_int(v, f, 2, TEAM_MAX_TEAMS, &x, err, errlen)) < 0)
				return rc;
			d->fanout = (int)x;
			has_fanout = 1;
		} else if (!strcmp(key, "team_tokens")) {
			if ((rc = get_int(v, f, 0, 1000000000, &x, err, errlen)) < 0)
				return rc;
			d->team_tokens = x;
		} else if (!strcmp(key, "topology")) {
			const char *s = json_string_value(v);
			if (!s || (strcmp(s, "vote") != 0 && strcmp(s, "tree") != 0))
				return eng_seterr(err, errlen, ENG_ERR_INVALID,
						  "%s: must be \"vote\" or \"tree\"", f);
			d->topo = !strcmp(s, "vote") ? TOPO_VOTE : TOPO_TREE;
		} else if (!strcmp(key, "accept")) {
			const char *s = json_string_value(v);
			if (!s || (strcmp(s, "all") && strcmp(s, "any") && strcmp(s, "majority")))
				return eng_seterr(err, errlen, ENG_ERR_INVALID,
						  "%s: must be \"all\", \"any\" or \"majority\"", f);
			d->accept = !strcmp(s, "all") ? ACC_ALL : !strcmp(s, "any") ? ACC_ANY
										: ACC_MAJORITY;
		} else if (!strcmp(key, "roles")) {
			if (!json_is_array(v) || json_array_size(v) < 1 ||
			    json_array_size(v) > TEAM_MAX_ROLES)
				return eng_seterr(err, errlen, ENG_ERR_INVALID,
						  "%s: must be an array of 1 to %d roles", f, TEAM_MAX_ROLES);
			for (size_t i = 0; i < json_array_size(v); i++) {
				d->n_roles = (int)i + 1;
				if ((rc = parse_role(json_array_get(v, i), (int)i, pre, &d->roles[i], err,
						     errlen)) < 0)
					return rc;
			}
		} else {
			return eng_seterr(err, errlen, ENG_ERR_INVALID, "%s: unknown field", f);
		}
	}
	if (d->n_roles == 0)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "%sroles: missing", pre);
	if (has_fanout && d->topo != TOPO_TREE)
		return eng_seterr(err, errlen, ENG_ERR_INVALID,
				  "%sfanout: only a \"tree\" topology has a fanout", pre);
	int n_solve = 0;
	for (int i = 0; i < d->n_roles; i++) {
		d->per_round += d->roles[i].count;
		n_solve += d->roles[i].task == TASK_SOLVE;
		d->has_check |= d->roles[i].task == TASK_CHECK;
		for (int k = 0; k < i; k++)
			if (!strcmp(d->roles[k].name, d->roles[i].name))
				return eng_seterr(err, errlen, ENG_ERR_INVALID,
						  "%sroles[%d].name: \"%.32s\" is used twice", pre, i,
						  d->roles[i].name);
	}
	if (n_solve == 0)
		return eng_seterr(err, errlen, ENG_ERR_INVALID,
				  "%sroles: needs at least one role with task \"solve\"", pre);
	return 0;
}

/* Load agents/teams/NAME.json (or $BRAID_TEAMS_DIR/NAME.json). */
static int
load_named(const char *name, struct team_def *d, char *err, size_t errlen)
{
	size_t n = strlen(name);
	if (n == 0 || n > 64)
		return eng_seterr(err, errlen, ENG_ERR_INVALID,
				  "params.team: a team name has 1 to 64 characters");
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)name[i]) && name[i] != '-' && name[i] != '_')
			return eng_seterr(err, errlen, ENG_ERR_INVALID,
					  "params.team: \"%.64s\": a team name holds only letters, digits, "
					  "'-' and '_'", name);
	const char *dir = getenv("BRAID_TEAMS_DIR");
	if (!dir || !*dir)
		dir = BRAID_TEAMS_DIR;
	char path[4096], pre[4200];
	snprintf(path, sizeof path, "%s/%s.json", dir, name);
	json_error_t je;
	json_t *o = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
	if (!o) {
		if (je.line < 1)
			return eng_seterr(err, errlen, ENG_ERR_INVALID,
					  "params.team: no team \"%s\" (%s: %s)", name, path, je.text);
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "%s:%d:%d: %s", path, je.line,
				  je.column, je.text);
	}
	snprintf(pre, sizeof pre, "%s: ", path);
	int rc = parse_def(o, pre, d, err, errlen);
	json_decref(o);
	return rc;
}

/* The user's question: the request's, or its last user message. */
static const char *
req_question(const struct job_req *req)
{
	if (req->question)
		return req->question;
	const char *q = NULL;
	for (size_t i = 0; i < json_array_size(req->messages); i++) {
		json_t *m = json_array_get(req->messages, i);
		const char *role = json_string_value(json_object_get(m, "role"));
		if (role && !strcmp(role, "user"))
			q = json_string_value(json_object_get(m, "content"));
	}
	return q ? q : "";
}

int
team_init(const struct job_req *req, void **state, char *err, size_t errlen)
{
	struct team *s = NULL;
	struct team_def d;
	json_t *team = NULL, *teams = NULL, *rounds = NULL;
	long long x;
	int rc;

	memset(&d, 0, sizeof d);
	static const char *const keys[] = { "team", "teams", "max_rounds", NULL };
	if ((rc = sp_check(req->params, "team", keys, err, errlen)) < 0)
		return rc;
	if (req->params) {
		team = json_object_get(req->params, "team");
		teams = json_object_get(req->params, "teams");
		rounds = json_object_get(req->params, "max_rounds");
	}
	if (!team || json_is_string(team))
		rc = load_named(team ? json_string_value(team) : TEAM_DEFAULT, &d, err, errlen);
	else if (json_is_object(team))
		rc = parse_def(team, "params.team.", &d, err, errlen);
	else
		rc = eng_seterr(err, errlen, ENG_ERR_INVALID,
				"params.team: must be a team name or a team object");
	if (rc < 0)
		goto fail;
	if (teams) {
		if ((rc = get_int(teams, "params.teams", 1, TEAM_MAX_TEAMS, &x, err, errlen)) < 0)
			goto fail;
		d.n_teams = (int)x;
	}
	if (rounds) {
		if ((rc = get_int(rounds, "params.max_rounds", 1, TEAM_MAX_ROUNDS, &x, err, errlen)) < 0)
			goto fail;
		d.max_rounds = (int)x;
	}
	if (req->n < d.n_teams * d.per_round) {
		rc = eng_seterr(err, errlen, ENG_ERR_INVALID,
				"n: the team needs at least %d threads (%d teams x %d per round); up to "
				"%d lets every round run", d.n_teams * d.per_round, d.n_teams, d.per_round,
				d.n_teams * d.per_round * d.max_rounds);
		goto fail;
	}
	rc = eng_seterr(err, errlen, ENG_ERR_NOMEM, "out of memory");
	if (!(s = calloc(1, sizeof *s)) || !(s->t = calloc((size_t)req->n, sizeof *s->t)) ||
	    !(s->teams = calloc((size_t)d.n_teams, sizeof *s->teams)) ||
	    !(s->question = strdup(req_question(req))))
		goto fail;
	s->d = d;
	s->cap = req->n;
	for (int i = 0; i < req->n; i++)
		s->t[i].team = -1;
	for (int i = 0; i < d.n_teams; i++)
		s->teams[i].rep = -1;
	*state = s;
	return 0;
fail:
	def_free(&d);
	if (s) {
		free(s->t);
		free(s->teams);
		free(s);
	}
	return rc;
}

void
team_destroy(void *state)
{
	struct team *s = state;
	if (!s)
		return;
	for (int i = 0; i < s->cap; i++)
		free(s->t[i].answer);
	for (int i = 0; i < s->d.n_teams; i++)
		free(s->teams[i].candidate);
	def_free(&s->d);
	free(s->t);
	free(s->teams);
	free(s->question);
	free(s);
}

/* ---- prompts ---------------------------------------------------------------------------- */

/* The solver's worked steps, numbered for the checker: every non-empty line
 * but its "Answer:" lines, trimmed, as "Step k: line".  malloc'd (NULL: out of
 * memory). */
static char *
numbered_steps(const char *text)
{
	char *out = NULL;
	size_t len = 0;
	int k = 0;
	FILE *f = open_memstream(&out, &len);
	if (!f)
		return NULL;
	for (const char *p = text; *p;) {
		const char *e = strchr(p, '\n');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		const char *b = p;
		while (n && isspace((unsigned char)*b))
			b++, n--;
		while (n && isspace((unsigned char)b[n - 1]))
			n--;
		if (n && strncmp(b, "Answer:", 7) != 0) {
			fprintf(f, "%sStep %d: ", k ? "\n" : "", k + 1);
			fwrite(b, 1, n, f);
			k++;
		}
		p = e ? e + 1 : p + strlen(p);
	}
	if (fclose(f) != 0) {
		free(out);
		return NULL;
	}
	return out;
}

/* Fill a validated template ({{ and }} give one brace).  malloc'd, or NULL
 * when out of memory. */
static char *
render(const char *tpl, const char *question, const char *steps, const char *answer)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		return NULL;
	for (const char *c = tpl; *c; c++) {
		if (*c == '}' && c[1] == '}') {
			fputc('}', f);
			c++;
		} else if (*c != '{') {
			fputc(*c, f);
		} else if (c[1] == '{') {
			fputc('{', f);
			c++;
		} else {
			const char *end = strchr(c, '}');   /* validated: present */
			size_t n = (size_t)(end - c - 1);
			const char *v = n == 8 ? question : n == 5 ? steps : answer;
			fputs(v ? v : "", f);
			c = end;
		}
	}
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	return buf;
}

/* ---- rounds ---------------------------------------------------------------------------- */

/* Spawn the threads of every role of one task for team ti; announce them. */
static int
spawn_task(struct team *s, const struct strat_api *api, int ti, enum team_task task,
	   const char *steps, const char *answer)
{
	struct tteam *tm = &s->teams[ti];
	for (int r = 0; r < s->d.n_roles; r++) {
		const struct team_role *ro = &s->d.roles[r];
		if (ro->task != task)
			continue;
		char *text = render(ro->prompt, s->question, steps, answer);
		if (!text)
			return ENG_ERR_NOMEM;
		/* the plain question forks the job's own prompt (system prompt,
		 * chat messages and all) */
		int first = !strcmp(ro->prompt, "{question}") ? api->spawn(api->ctx, ro->count, -1)
							      : api->spawn_prompt(api->ctx, ro->count, text);
		if (first < 0) {
			free(text);
			return first;
		}
		json_t *threads = json_array();
		for (int k = 0; k < ro->count; k++) {
			int i = first + k;
			if (i >= s->cap)     /* the scheduler caps threads at n: cannot happen */
				continue;
			s->t[i] = (struct tthread){ .team = ti, .role = r, .round = tm->round };
			tm->pending++;
			json_array_append_new(threads, json_integer(i));
		}
		int rc = api->emit(api->ctx, EV_MERGE, -1,
			json_pack("{s:s, s:i, s:i, s:s, s:s, s:o, s:s}", "method", "team.assign", "team",
				  ti, "round", tm->round, "role", ro->name, "task",
				  task == TASK_SOLVE ? "solve" : "check", "threads", threads, "prompt", text));
		free(text);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int
round_start(struct team *s, const struct strat_api *api, int ti)
{
	struct tteam *tm = &s->teams[ti];
	tm->round++;
	tm->phase = PH_SOLVE;
	tm->rep = -1;
	free(tm->candidate);
	tm->candidate = NULL;
	return spawn_task(s, api, ti, TASK_SOLVE, NULL, NULL);
}

/* Majority over the answers of this team's threads of one task in its
 * current round: the winning answer (borrowed) and its first thread. */
static const char *
team_majority(struct team *s, int ti, enum team_task task, json_t *votes, int *first)
{
	int n = s->cap, best = -1, best_n = 0;
	*first = -1;
	for (int i = 0; i < n; i++) {
		struct tthread *t = &s->t[i];
		if (t->team != ti || t->round != s->teams[ti].round ||
		    s->d.roles[t->role].task != task || !t->answer)
			continue;
		int c = 0, seen = 0;
		for (int k = 0; k < n; k++) {
			struct tthread *u = &s->t[k];
			if (u->team == ti && u->round == t->round && s->d.roles[u->role].task == task &&
			    u->answer && ans_equal(u->answer, t->answer)) {
				c++;
				seen |= k < i;
			}
		}
		if (seen)
			continue;
		json_object_set_new(votes, t->answer, json_integer(c));
		if (c > best_n) {
			best = i;
			best_n = c;
		}
	}
	*first = best;
	return best >= 0 ? s->t[best].answer : NULL;
}

static int aggregate(struct team *s, const struct strat_api *api);

/* Team ti ends with its decision. */
static int
team_end(struct team *s, const struct strat_api *api, int ti, const char *decision)
{
	struct tteam *tm = &s->teams[ti];
	tm->phase = PH_DONE;
	tm->decision = decision;
	s->n_done++;
	int rc = api->emit(api->ctx, EV_MERGE, -1,
		json_pack("{s:s, s:i, s:s, s:s?, s:i, s:I}", "method", "team.done", "team", ti,
			  "decision", decision, "answer", tm->candidate, "rounds", tm->round, "tokens",
			  (json_int_t)tm->tokens));
	if (rc < 0)
		return rc;
	return s->n_done == s->d.n_teams ? aggregate(s, api) : 0;
}

/* After a rejection: another round if rounds, threads and tokens allow. */
static int
team_retry(struct team *s, const struct strat_api *api, int ti, const char *decision)
{
	struct tteam *tm = &s->teams[ti];
	if (tm->round >= s->d.max_rounds)
		return team_end(s, api, ti, decision);
	if (api->n_threads(api->ctx) + s->d.per_round > s->cap)
		return team_end(s, api, ti, "thread_budget");
	if (s->d.team_tokens > 0 && tm->tokens >= s->d.team_tokens)
		return team_end(s, api, ti, "token_budget");
	return round_start(s, api, ti);
}

/* Every solver of the round reported: majority, then check (or end). */
static int
solved(struct team *s, const struct strat_api *api, int ti)
{
	struct tteam *tm = &s->teams[ti];
	json_t *votes = json_object();
	int rep, rc;
	if (!votes)
		return ENG_ERR_NOMEM;
	const char *ans = team_majority(s, ti, TASK_SOLVE, votes, &rep);
	if (ans && !(tm->candidate = strdup(ans))) {
		json_decref(votes);
		return ENG_ERR_NOMEM;
	}
	tm->rep = rep;
	if ((rc = api->emit(api->ctx, EV_MERGE, -1,
		json_pack("{s:s, s:i, s:i, s:o, s:s?}", "method", "team.solve", "team", ti, "round",
			  tm->round, "votes", votes, "answer", ans))) < 0)
		return rc;
	if (!ans)
		return team_retry(s, api, ti, "no_answer");
	if (!s->d.has_check)
		return team_end(s, api, ti, "solved");
	char *steps = numbered_steps(api->text(api->ctx, rep));
	if (!steps)
		return ENG_ERR_NOMEM;
	tm->phase = PH_CHECK;
	rc = spawn_task(s, api, ti, TASK_CHECK, steps, tm->candidate);
	free(steps);
	return rc;
}

/* Every checker of the round reported: accept or reject. */
static int
checked(struct team *s, const struct strat_api *api, int ti)
{
	struct tteam *tm = &s->teams[ti];
	json_t *checkers = json_array();
	int n = 0, acc = 0, rc;
	if (!checkers)
		return ENG_ERR_NOMEM;
	for (int i = 0; i < s->cap; i++) {
		struct tthread *t = &s->t[i];
		if (t->team != ti || t->round != tm->round || s->d.roles[t->role].task != TASK_CHECK)
			continue;
		const char *text = api->text(api->ctx, i);
		int ok = text && strstr(text, s->d.roles[t->role].accept_text) != NULL;
		n++;
		acc += ok;
		json_array_append_new(checkers, json_pack("{s:i, s:s, s:s?}", "thread", i, "verdict",
							  ok ? "accept" : "reject", "answer", t->answer));
	}
	int accepted = s->d.accept == ACC_ALL ? acc == n
		     : s->d.accept == ACC_ANY ? acc > 0 : 2 * acc > n;
	const char *decision = accepted ? "accepted" : "rejected";
	if ((rc = api->emit(api->ctx, EV_MERGE, -1,
		json_pack("{s:s, s:i, s:i, s:s, s:s?, s:o, s:{s:i, s:i}}", "method", "team.check",
			  "team", ti, "round", tm->round, "decision", decision, "answer",
			  tm->candidate, "checkers", checkers, "votes", "accept", acc, "reject",
			  n - acc))) < 0)
		return rc;
	return accepted ? team_end(s, api, ti, "accepted") : team_retry(s, api, ti, "rejected");
}

/* ---- aggregation ------------------------------------------------------------------------ */

/* One voter: an answer (borrowed, may be NULL) and how many accepted teams
 * back it (the tie-break). */
struct voter {
	const char *answer;
	int accepted;
};

/* Majority over voters[0..n): answer count wins, then accepted teams, then
 * the earliest voter.  Fills votes; returns the winning voter or -1. */
static int
majority(const struct voter *v, int n, json_t *votes)
{
	int best = -1, best_c = 0, best_a = 0;
	for (int i = 0; i < n; i++) {
		if (!v[i].answer)
			continue;
		int c = 0, a = 0, seen = 0;
		for (int k = 0; k < n; k++)
			if (v[k].answer && ans_equal(v[k].answer, v[i].answer)) {
				c++;
				a += v[k].accepted;
				seen |= k < i;
			}
		if (seen)
			continue;
		json_object_set_new(votes, v[i].answer, json_integer(c));
		if (c > best_c || (c == best_c && a > best_a)) {
			best = i;
			best_c = c;
			best_a = a;
		}
	}
	return best;
}

/* Every team ended: vote, or aggregate up the tree; finish the job. */
static int
aggregate(struct team *s, const struct strat_api *api)
{
	int n = s->d.n_teams, rc = ENG_ERR_NOMEM;
	struct voter *v = calloc((size_t)n, sizeof *v), *up = calloc((size_t)n, sizeof *up);
	json_t *votes = NULL;
	if (!v || !up)
		goto out;
	for (int i = 0; i < n; i++) {
		v[i].answer = s->teams[i].candidate;
		v[i].accepted = s->teams[i].decision && !strcmp(s->teams[i].decision, "accepted");
	}
	s->finished = 1;
	if (s->d.topo == TOPO_VOTE) {
		json_t *teams = json_array();
		if (!(votes = json_object()) || !teams) {
			json_decref(teams);
			goto out;
		}
		for (int i = 0; i < n; i++)
			json_array_append_new(teams, json_pack("{s:i, s:s?, s:s}", "team", i, "answer",
				v[i].answer, "decision", s->teams[i].decision));
		int w = majority(v, n, votes);
		const char *ans = w >= 0 ? v[w].answer : NULL;
		if ((rc = api->emit(api->ctx, EV_MERGE, -1,
			json_pack("{s:s, s:O, s:s?, s:o}", "method", "vote", "votes", votes, "answer",
				  ans, "teams", teams))) < 0)
			goto out;
		rc = api->finish(api->ctx, ans, votes);
		votes = NULL;
		goto out;
	}
	/* tree: consecutive groups of fanout nodes merge into one, level by
	 * level, until one node (the root) is left; a lone team still gets a
	 * root node */
	for (int level = 1; ; level++) {
		int m = 0;
		for (int g = 0; g < n; g += s->d.fanout, m++) {
			int k = n - g < s->d.fanout ? n - g : s->d.fanout;
			json_t *children = json_array();
			json_decref(votes);
			if (!(votes = json_object()) || !children) {
				json_decref(children);
				goto out;
			}
			for (int c = 0; c < k; c++)
				json_array_append_new(children, json_integer(g + c));
			int w = majority(v + g, k, votes);
			up[m].answer = w >= 0 ? v[g + w].answer : NULL;
			up[m].accepted = 0;
			for (int c = 0; c < k; c++)
				if (up[m].answer && v[g + c].answer && ans_equal(v[g + c].answer, up[m].answer))
					up[m].accepted += v[g + c].accepted;
			if ((rc = api->emit(api->ctx, EV_MERGE, -1,
				json_pack("{s:s, s:i, s:i, s:o, s:O, s:s?}", "method", "tree", "level", level,
					  "node", m, "children", children, "votes", votes, "answer",
					  up[m].answer))) < 0)
				goto out;
		}
		memcpy(v, up, (size_t)m * sizeof *v);
		n = m;
		if (n == 1)
			break;
	}
	rc = api->finish(api->ctx, v[0].answer, votes);
	votes = NULL;
out:
	json_decref(votes);
	free(v);
	free(up);
	return rc;
}

/* ---- hooks ------------------------------------------------------------------------------ */

int
team_start(void *state, const struct strat_api *api)
{
	struct team *s = state;
	for (int i = 0; i < s->d.n_teams; i++) {
		int rc = round_start(s, api, i);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Count the team's tokens; stop a thread at its role's budget. */
int
team_token(void *state, const struct strat_api *api, int thread, const struct samp_result *r)
{
	struct team *s = state;
	(void)r;
	if (thread < 0 || thread >= s->cap || s->t[thread].team < 0)
		return 0;
	struct tthread *t = &s->t[thread];
	s->teams[t->team].tokens++;
	int max = s->d.roles[t->role].max_tokens;
	if (max > 0 && api->tokens(api->ctx, thread) >= max && api->live(api->ctx, thread))
		return api->stop(api->ctx, thread, NULL);
	return 0;
}

int
team_thread_done(void *state, const struct strat_api *api, int thread, const char *answer,
		 const char *finish_reason)
{
	struct team *s = state;
	(void)finish_reason;
	if (s->finished || thread < 0 || thread >= s->cap || s->t[thread].team < 0 ||
	    s->t[thread].reported)
		return 0;
	struct tthread *t = &s->t[thread];
	struct tteam *tm = &s->teams[t->team];
	t->reported = 1;
	if (answer && !(t->answer = strdup(answer)))
		return ENG_ERR_NOMEM;
	if (tm->phase == PH_DONE || t->round != tm->round || --tm->pending > 0)
		return 0;
	return tm->phase == PH_SOLVE ? solved(s, api, t->team) : checked(s, api, t->team);
}

/* Nothing is live but some team still waits (a thread was stopped by
 * someone else and never reported): end those teams and aggregate. */
int
team_idle(void *state, const struct strat_api *api)
{
	struct team *s = state;
	if (s->finished)
		return api->finish(api->ctx, NULL, NULL);
	for (int i = 0; i < s->d.n_teams; i++)
		if (s->teams[i].phase != PH_DONE) {
			int rc = team_end(s, api, i, "incomplete");
			if (rc < 0)
				return rc;
		}
	return 0;
}
