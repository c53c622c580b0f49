/* multiverse.c - the "multiverse" strategy (Yang et al. 2025): map / process
 * / reduce in the embedded model's native <Parallel> format.  Hooks run on
 * the engine thread; multiverse_init on the submitting thread.
 *
 * map: thread 0 decodes from the prompt.  When a main-line thread writes
 * </Goal>, the <Outline> items since its last <Goal> give k; if 2 <= k <=
 * max_paths, its depth < max_depth and the budget n has k more threads, it
 * forks k children at that token (spawn(k, owner): they share its cache,
 * nothing is prefilled again) and the owner stops (thread.done "stop").
 *
 * process: every child samples <Path> itself (the tag is one token the
 * model writes), then gets "i:" injected, so child i writes path i; the
 * children run in the same batch; path i > 1 stops at its </Path>.
 *
 * reduce: child 1 (the "carrier") is also the reduce thread.  The engine
 * cannot merge caches, and a thread cannot wait idle (every live sequence
 * is stepped), so the carrier, after its own </Path>, samples the next
 * <Path> itself and gets path i's text injected behind it: the whole text
 * when path i has ended (the model then writes </Path>), or the text so far
 * when it is still running - then that thread stops and the carrier goes on
 * writing path i itself (it "adopts" it: same context, no work lost).  Once
 * every path is in its context the carrier writes <Conclusion> ... and the
 * sequential tail to "Answer: N"; merge {method "reduce"} is emitted then.
 * Why not a fresh thread from the prompt with goal and paths injected: it
 * would prefill the goal and every path again, where forking shares them
 * (strat_api.inject matches the tags, non-special added tokens, as the
 * model's own tokens, so injecting them would be possible).  Here every tag
 * in every context is a token the model sampled itself; only tag-free path
 * bodies are injected.
 *
 * A child that does not start with <Path>, or a carrier that does not close
 * an injected path, breaks the block: the other children stop (pruned
 * "off-format") and the carrier goes on freely as the line it forked from.
 * Without a <Parallel> block the map thread simply finishes: its answer is
 * the job's.  Nested blocks fork only on the main line (the map thread or a
 * carrier), since a nested block in path i > 1 could not be re-injected
 * (tags); elsewhere the model writes them sequentially in its thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sparams.h"
#include "status.h"
#include "strat_rows.h"
#include "vote.h"

enum mv_kind {
	MV_NONE = 0,   /* not ours any more: stopped by us, or never tracked   */
	MV_MAIN,       /* the main line: its end is the job's end               */
	MV_PATH,       /* path p > 0 of a block                                 */
	MV_CARRIER,    /* path 0 of a block, then its reduce                    */
};

enum mv_phase {
	MV_WRITING = 0,   /* inside path cur                                    */
	MV_WANT_OPEN,     /* expects <Path> next                                */
	MV_WANT_CLOSE,    /* a finished path was injected: expects </Path>      */
};

/* What a thread is doing for the strategy. */
struct mv_role {
	int kind;       /* enum mv_kind                                          */
	int block;      /* MV_PATH, MV_CARRIER: the block                        */
	int path;       /* MV_PATH: its path; MV_CARRIER: the path it is on      */
	int phase;      /* enum mv_phase (MV_PATH, MV_CARRIER)                   */
	int pdepth;     /* <Path> opened and not closed inside the current path  */
	int depth;      /* forked blocks around this thread (0 = map line)       */
};

struct mv_block {
	int k;
	int owner;              /* the thread that wrote the goal               */
	size_t prefix_len;      /* owner's text length at the fork              */
	struct mv_role inherit; /* the owner's role: the carrier's after reduce */
	int first;              /* the k children are first .. first+k-1        */
	char **body;            /* (k) path i's text after "<Path>i:" (no
				   </Path>), once its thread has ended; NULL
				   while it runs                                 */
	int *adopted;           /* (k) the carrier took over path i mid-way     */
	int *rewritten;         /* (k) the carrier wrote path i again itself    */
	int live;               /* 1 until reduced or broken                    */
};

struct mv {
	int n;                  /* thread budget                                */
	int max_paths, max_depth;
	int finished;
	struct mv_role *role;   /* (n) per thread                               */
	struct mv_block *blk;   /* (n) blocks; each takes >= 2 threads          */
	int n_blk;
};

int
multiverse_init(const struct job_req *req, void **state, char *err, size_t errlen)
{
	static const char *const keys[] = { "max_paths", "max_depth", NULL };
	int max_paths = 4, max_depth = 1, rc;
	if ((rc = sp_check(req->params, "multiverse", keys, err, errlen)) < 0 ||
	    (rc = sp_int(req->params, "max_paths", 2, 64, &max_paths, err, errlen)) < 0 ||
	    (rc = sp_int(req->params, "max_depth", 0, 8, &max_depth, err, errlen)) < 0)
		return rc;
	if (req->n < 1)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "n: must be at least 1");
	struct mv *s = calloc(1, sizeof *s);
	if (!s || !(s->role = calloc((size_t)req->n, sizeof *s->role)) ||
	    !(s->blk = calloc((size_t)req->n, sizeof *s->blk))) {
		if (s) {
			free(s->role);
			free(s->blk);
		}
		free(s);
		return eng_seterr(err, errlen, ENG_ERR_NOMEM, "out of memory");
	}
	s->n = req->n;
	s->max_paths = max_paths;
	s->max_depth = max_depth;
	*state = s;
	return 0;
}

void
multiverse_destroy(void *state)
{
	struct mv *s = state;
	if (!s)
		return;
	for (int b = 0; b < s->n_blk; b++) {
		for (int i = 0; i < s->blk[b].k; i++)
			free(s->blk[b].body[i]);
		free(s->blk[b].body);
		free(s->blk[b].adopted);
		free(s->blk[b].rewritten);
	}
	free(s->blk);
	free(s->role);
	free(s);
}

int
multiverse_start(void *state, const struct strat_api *api)
{
	struct mv *s = state;
	int rc = api->spawn(api->ctx, 1, -1);
	if (rc < 0)
		return rc;
	s->role[rc] = (struct mv_role){ .kind = MV_MAIN };
	return 0;
}

/* ---- text helpers ---------------------------------------------------------------- */

static int
ends_with(const char *text, size_t len, const char *tag)
{
	size_t n = strlen(tag);
	return len >= n && memcmp(text + len - n, tag, n) == 0;
}

/* The <Outline> items after the last <Goal> of text, or 0 without one. */
static int
count_outlines(const char *text)
{
	const char *goal = NULL;
	for (const char *p = text; (p = strstr(p, "<Goal>")); p++)
		goal = p;
	if (!goal)
		return 0;
	int k = 0;
	for (const char *p = goal; (p = strstr(p, "<Outline>")); p++)
		k++;
	return k;
}

/* Path i's body in a child's text: after the block's prefix and the
 * "<Path>i:" header, without a final </Path>.  malloc'd, or NULL. */
static char *
path_body(const struct mv_block *b, const char *text)
{
	size_t len = strlen(text);
	const char *p = text + (len >= b->prefix_len ? b->prefix_len : len);
	if (strncmp(p, "<Path>", 6) == 0) {
		p += 6;
		while (*p >= '0' && *p <= '9')
			p++;
		if (*p == ':')
			p++;
	}
	size_t n = strlen(p);
	if (n >= 7 && strcmp(p + n - 7, "</Path>") == 0)
		n -= 7;
	char *out = malloc(n + 1);
	if (out) {
		memcpy(out, p, n);
		out[n] = '\0';
	}
	return out;
}

/* Whether body (a path's text, perhaps partial) starts as an earlier path
 * of b does: a forked path that repeats another's first line computed the
 * wrong outline (see the note at the top). */
static int
repeats_earlier(const struct mv_block *b, int p, const char *body)
{
	size_t n = strcspn(body, "\n");
	if (n < 2)
		return 0;
	for (int q = 0; q < p; q++) {
		const char *e = b->body[q];
		if (e && strncmp(e, body, n) == 0 && (e[n] == '\n' || e[n] == '\0' || !body[n]))
			return 1;
	}
	return 0;
}

/* ---- the block's life --------------------------------------------------------------- */

/* Fork a block from thread t, which has just written </Goal>.  0 when it
 * forked or decided to go on sequentially, or an error. */
static int
mv_fork(struct mv *s, const struct strat_api *api, int t)
{
	const char *text = api->text(api->ctx, t);
	int k = count_outlines(text);
	if (k < 2 || k > s->max_paths || s->role[t].depth >= s->max_depth ||
	    api->n_threads(api->ctx) + k > s->n || s->n_blk >= s->n)
		return 0;   /* the model writes the paths itself */
	struct mv_block *b = &s->blk[s->n_blk];
	memset(b, 0, sizeof *b);
	if (!(b->body = calloc((size_t)k, sizeof *b->body)) ||
	    !(b->adopted = calloc((size_t)k, sizeof *b->adopted)) ||
	    !(b->rewritten = calloc((size_t)k, sizeof *b->rewritten))) {
		free(b->body);
		free(b->adopted);
		memset(b, 0, sizeof *b);
		return ENG_ERR_NOMEM;
	}
	b->k = k;
	size_t prefix_len = strlen(text);   /* (text moves when t's text grows) */
	int first = api->spawn(api->ctx, k, t);
	if (first < 0) {
		free(b->body);
		free(b->adopted);
		free(b->rewritten);
		memset(b, 0, sizeof *b);
		/* no room (budget, cache): go on sequentially */
		return first == ENG_ERR_RANGE || first == ENG_ERR_NO_KV ? 0 : first;
	}
	int bi = s->n_blk++;
	b->owner = t;
	b->prefix_len = prefix_len;
	b->inherit = s->role[t];
	b->first = first;
	b->live = 1;
	for (int i = 0; i < k; i++)
		s->role[first + i] = (struct mv_role){
			.kind = i == 0 ? MV_CARRIER : MV_PATH, .block = bi, .path = i,
			.phase = MV_WANT_OPEN, .depth = s->role[t].depth + 1,
		};
	s->role[t].kind = MV_NONE;
	return api->stop(api->ctx, t, NULL);
}

/* The block cannot go on in the format: its other threads stop, the
 * carrier goes on freely as the line the block forked from. */
static int
mv_break(struct mv *s, const struct strat_api *api, int bi)
{
	struct mv_block *b = &s->blk[bi];
	int carrier = b->first, rc = 0;
	b->live = 0;
	for (int i = 1; i < b->k; i++) {
		int t = b->first + i;
		if (s->role[t].kind == MV_PATH && s->role[t].block == bi) {
			s->role[t].kind = MV_NONE;
			if (api->live(api->ctx, t) && (rc = api->stop(api->ctx, t, "off-format")) < 0)
				return rc;
		}
	}
	struct mv_role *c = &s->role[carrier];
	if (c->kind == MV_CARRIER && c->block == bi) {
		int inside = c->phase != MV_WANT_OPEN;
		*c = b->inherit;
		c->pdepth += inside;
	}
	return 0;
}

/* The carrier closed path cur: go on to the next one, or reduce. */
static int
mv_next_path(struct mv *s, const struct strat_api *api, int carrier)
{
	struct mv_role *c = &s->role[carrier];
	struct mv_block *b = &s->blk[c->block];
	if (!b->body[c->path] &&
	    !(b->body[c->path] = path_body(b, api->text(api->ctx, carrier))))
		return ENG_ERR_NOMEM;
	if (++c->path < b->k) {
		c->phase = MV_WANT_OPEN;
		return 0;
	}
	/* every path is in the carrier's context: the reduce starts */
	json_t *paths = json_array(), *adopted = json_array(), *rewritten = json_array();
	for (int i = 0; paths && adopted && rewritten && i < b->k; i++) {
		json_array_append_new(paths, json_integer(b->first + i));
		if (b->adopted[i])
			json_array_append_new(adopted, json_integer(b->first + i));
		if (b->rewritten[i])
			json_array_append_new(rewritten, json_integer(b->first + i));
	}
	json_t *payload = json_pack("{s:s, s:o*, s:o*, s:o*, s:i, s:i, s:{}, s:n}", "method",
				    "reduce", "paths", paths, "adopted", adopted, "rewritten",
				    rewritten, "depth", c->depth, "reduce_thread", carrier, "votes",
				    "answer");
	b->live = 0;
	*c = b->inherit;
	if (!payload)
		return ENG_ERR_NOMEM;
	return api->emit(api->ctx, EV_MERGE, carrier, payload);
}

/* The carrier has just sampled <Path> for path cur: give it the path. */
static int
mv_carrier_open(struct mv *s, const struct strat_api *api, int carrier)
{
	struct mv_role *c = &s->role[carrier];
	struct mv_block *b = &s->blk[c->block];
	int p = c->path, t = b->first + p, rc;
	char head[32];
	snprintf(head, sizeof head, "%d:", p + 1);
	if (!b->body[p] && s->role[t].kind == MV_PATH && api->live(api->ctx, t)) {
		/* still running: adopt it (its text so far, when tag-free) */
		char *so_far = path_body(b, api->text(api->ctx, t));
		if (!so_far)
			return ENG_ERR_NOMEM;
		int untrusted = strchr(so_far, '<') || repeats_earlier(b, p, so_far);
		s->role[t].kind = MV_NONE;
		b->adopted[p] = !untrusted;
		b->rewritten[p] = untrusted;
		if ((rc = api->stop(api->ctx, t, untrusted ? "repeats an earlier path" : NULL)) < 0 ||
		    (rc = api->inject(api->ctx, carrier, head)) < 0 ||
		    (!untrusted && *so_far && (rc = api->inject(api->ctx, carrier, so_far)) < 0)) {
			free(so_far);
			return rc;
		}
		free(so_far);
		c->phase = MV_WRITING;
		c->pdepth = 0;
		return 0;
	}
	if (!b->body[p] || strchr(b->body[p], '<') || repeats_earlier(b, p, b->body[p])) {
		b->rewritten[p] = 1;
		/* lost, or not injectable: the carrier writes it itself */
		c->phase = MV_WRITING;
		c->pdepth = 0;
		return api->inject(api->ctx, carrier, head);
	}
	if ((rc = api->inject(api->ctx, carrier, head)) < 0 ||
	    (*b->body[p] && (rc = api->inject(api->ctx, carrier, b->body[p])) < 0))
		return rc;
	c->phase = MV_WANT_CLOSE;
	return 0;
}

/* Path p > 0 of block bi ended (its </Path>, or eos/length): keep its body. */
static int
mv_path_ended(struct mv *s, const struct strat_api *api, int t)
{
	struct mv_block *b = &s->blk[s->role[t].block];
	char *body = path_body(b, api->text(api->ctx, t));
	if (!body)
		return ENG_ERR_NOMEM;
	free(b->body[s->role[t].path]);
	b->body[s->role[t].path] = body;
	s->role[t].kind = MV_NONE;
	return api->live(api->ctx, t) ? api->stop(api->ctx, t, NULL) : 0;
}

/* Path t > 0 has just ended a line: when it is its first and path 1 (the
 * carrier) began with the same line, t is computing the wrong outline; it
 * stops now and the carrier will write that path itself.  1 if stopped. */
static int
mv_check_repeat(struct mv *s, const struct strat_api *api, int t)
{
	struct mv_block *b = &s->blk[s->role[t].block];
	char *mine = path_body(b, api->text(api->ctx, t));
	char *first = b->body[0] ? NULL : path_body(b, api->text(api->ctx, b->first));
	int rc = 0;
	if (!mine || (!b->body[0] && !first)) {
		rc = ENG_ERR_NOMEM;
		goto out;
	}
	const char *c = b->body[0] ? b->body[0] : first;
	size_t n = strcspn(mine, "\n"), m = strcspn(c, "\n");
	if (mine[n] != '\n' || strchr(mine + n + 1, '\n') || n < 2 || m < 2 ||
	    strncmp(mine, c, n < m ? n : m) != 0)
		goto out;
	b->rewritten[s->role[t].path] = 1;
	s->role[t].kind = MV_NONE;
	rc = api->stop(api->ctx, t, "repeats an earlier path");
	if (rc == 0)
		rc = 1;
out:
	free(mine);
	free(first);
	return rc;
}

/* ---- hooks ------------------------------------------------------------------------ */

int
multiverse_token(void *state, const struct strat_api *api, int t, const struct samp_result *r)
{
	struct mv *s = state;
	(void)r;
	if (t < 0 || t >= s->n || s->finished || !api->live(api->ctx, t))
		return 0;
	struct mv_role *me = &s->role[t];
	if (me->kind == MV_NONE)
		return 0;
	const char *text = api->text(api->ctx, t);
	const size_t len = api->text_len(api->ctx, t);
	int open = ends_with(text, len, "<Path>"), close = ends_with(text, len, "</Path>");

	if (me->kind != MV_MAIN && me->phase == MV_WANT_OPEN) {
		if (!open)
			return mv_break(s, api, me->block);
		if (me->kind == MV_PATH || me->path == 0) {
			/* a fresh child: the path it writes */
			char head[32];
			snprintf(head, sizeof head, "%d:", me->path + 1);
			me->phase = MV_WRITING;
			me->pdepth = 0;
			return api->inject(api->ctx, t, head);
		}
		return mv_carrier_open(s, api, t);
	}
	if (me->kind == MV_CARRIER && me->phase == MV_WANT_CLOSE) {
		if (!close)
			return mv_break(s, api, me->block);
		return mv_next_path(s, api, t);
	}
	if (me->kind == MV_PATH && me->phase == MV_WRITING && ends_with(text, len, "\n")) {
		int rc = mv_check_repeat(s, api, t);
		if (rc != 0)
			return rc < 0 ? rc : 0;
	}
	if (me->kind != MV_MAIN && open) {
		me->pdepth++;
		return 0;
	}
	if (me->kind != MV_MAIN && close) {
		if (me->pdepth > 0) {
			me->pdepth--;
			return 0;
		}
		if (me->kind == MV_PATH)
			return mv_path_ended(s, api, t);
		return mv_next_path(s, api, t);
	}
	/* the main line (the map thread or a carrier) may fork at </Goal> */
	if (ends_with(text, len, "</Goal>") && me->kind != MV_PATH)
		return mv_fork(s, api, t);
	return 0;
}

int
multiverse_thread_done(void *state, const struct strat_api *api, int t, const char *answer,
		       const char *finish_reason)
{
	struct mv *s = state;
	(void)finish_reason;
	if (t < 0 || t >= s->n || s->finished || s->role[t].kind == MV_NONE)
		return 0;
	if (s->role[t].kind == MV_PATH) {
		/* eos or length inside a path: keep what it wrote */
		return mv_path_ended(s, api, t);
	}
	/* the main line ended: that is the job's answer */
	s->role[t].kind = MV_NONE;
	s->finished = 1;
	json_t *votes = vote_single(answer);
	if (!votes)
		return ENG_ERR_NOMEM;
	return api->finish(api->ctx, answer, votes);
}

/* Nothing is live and the main line never reported: finish without an
 * answer. */
int
multiverse_idle(void *state, const struct strat_api *api)
{
	struct mv *s = state;
	s->finished = 1;
	return api->finish(api->ctx, NULL, json_object());
}
