/* prune.c - the "prune" strategy: redundancy pruning in the spirit of
 * DeepPrune (2025).  Up to `width` threads from the prompt decode at once;
 * every `every` tokens of the youngest live thread the live partial traces
 * are compared and clustered greedily online, one representative per
 * cluster goes on, the others are stopped ("redundant with thread R") and
 * their slots go to fresh samples from the prompt (new seeds) until
 * `budget` threads have been spawned.  Hooks run on the engine thread;
 * prune_init on the submitting thread.
 *
 * The rule, exactly (tests replay it from the events):
 *  - check point: the token hook of the live thread with the highest index
 *    (the youngest) when its token count is a positive multiple of every.
 *  - words of a trace: maximal runs of ASCII letters/digits and bytes >=
 *    0x80, and every other non-space byte on its own; a run that reaches the
 *    end of the text is dropped (the next token may extend it: "4" of "49").
 *  - two traces a, b are compared on their first m = min(words a, words b)
 *    words (equal progress; a younger trace is compared with the older's
 *    prefix).  m < ngram: never redundant (too early to tell).
 *    n-gram similarity J = Jaccard of the two sets of word n-grams.
 *    answer-so-far = the word after the last "=" word of the prefix when it
 *    is a number (a "-" word then a number gives a negative), or none: the
 *    latest computed value of a braid-arith trace.
 *  - measure "both" (default): redundant iff J >= threshold and the
 *    answers-so-far are equal (or both none); "ngram": J >= threshold only;
 *    "answer": both have an answer-so-far and they are equal.
 *  - clusters: live threads in index order (oldest first) each join the
 *    first cluster whose representative they match, else found a new one.
 *    The representative is the cluster's oldest thread: it has the most
 *    tokens invested and finishes first, and on equal-progress prefixes the
 *    traces are the same by the rule, so which one survives does not change
 *    what the cluster says.
 *
 * Final answer: a vote over the finished traces' extracted answers (grouped
 * by ans_equal) where each trace carries the weight of its cluster: 1 plus
 * the weights of the threads pruned as redundant with it (transitively).
 * So a pruned duplicate still counts, as it would have under plain
 * self-consistency.  Ties go to the answer reported first.  The weight of a
 * cluster whose representative ends without an answer is lost.
 *
 * Scheduler limit: a job spawns at most n threads in all (make_room in
 * sched_job.c), so n is the total trace budget and width (default
 * ceil(n/2)) is the live width. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "answer.h"
#include "sparams.h"
#include "status.h"
#include "strat_rows.h"
#include "vote.h"

enum prune_measure { PRUNE_BOTH, PRUNE_NGRAM, PRUNE_ANSWER };

struct prune_thread {
	char *answer;       /* extracted at thread_done, or NULL            */
	int weight;         /* 1 + weights pruned into it                   */
	int into;           /* the representative it was pruned into, or -1 */
	int reported;       /* thread_done was called                       */
	int order;          /* 1 + number of threads reported before        */
};

struct prune {
	int width, budget, every, ngram;
	double threshold;
	enum prune_measure measure;
	int n_reported, n_checks, n_pruned;
	int refill_off;     /* a spawn failed for lack of room: no more      */
	int finished;
	struct prune_thread *t;   /* (budget) */
};

/* ---- parameters (submitting thread) ----------------------------------------------------- */

int
prune_init(const struct job_req *req, void **state, char *err, size_t errlen)
{
	static const char *const keys[] = { "every", "ngram", "threshold", "measure", "width",
					    "budget", NULL };
	static const char *const measure_names[] = { "both", "ngram", "answer", NULL };
	const json_t *p = req->params;
	int every = 32, ngram = 3, width, budget, measure = PRUNE_BOTH, rc;
	double threshold = 0.8;

	if (req->n < 1)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "n: must be at least 1");
	/* the scheduler lets a job spawn n threads in all */
	budget = req->n;
	if ((rc = sp_check(p, "prune", keys, err, errlen)) < 0 ||
	    (rc = sp_int(p, "every", 1, 1 << 20, &every, err, errlen)) < 0 ||
	    (rc = sp_int(p, "ngram", 1, 16, &ngram, err, errlen)) < 0 ||
	    (rc = sp_num(p, "threshold", 0, 1, 1, &threshold, err, errlen)) < 0 ||
	    (rc = sp_enum(p, "measure", measure_names, &measure, err, errlen)) < 0 ||
	    (rc = sp_int(p, "budget", 1, req->n, &budget, err, errlen)) < 0)
		return rc;
	width = (budget + 1) / 2;
	if ((rc = sp_int(p, "width", 1, budget, &width, err, errlen)) < 0)
		return rc;

	struct prune *s = calloc(1, sizeof *s);
	if (!s || !(s->t = calloc((size_t)budget, sizeof *s->t))) {
		free(s);
		return eng_seterr(err, errlen, ENG_ERR_NOMEM, "out of memory");
	}
	for (int i = 0; i < budget; i++) {
		s->t[i].weight = 1;
		s->t[i].into = -1;
	}
	s->width = width;
	s->budget = budget;
	s->every = every;
	s->ngram = ngram;
	s->threshold = threshold;
	s->measure = (enum prune_measure)measure;
	*state = s;
	return 0;
}

void
prune_destroy(void *state)
{
	struct prune *s = state;
	if (!s)
		return;
	for (int i = 0; i < s->budget; i++)
		free(s->t[i].answer);
	free(s->t);
	free(s);
}

/* ---- comparing traces (engine thread) ---------------------------------------------------- */

/* The words of one trace (see the rule above). */
struct words {
	const char *text;
	int n;
	int *off, *len;        /* (n) byte offset and length of each word      */
	uint64_t *gram;        /* (n - ngram + 1, or 0) hash of each n-gram    */
};

static int
word_byte(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       c >= 0x80;
}

static int
is_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static uint64_t
fnv1a(const char *p, int n)
{
	uint64_t h = 1469598103934665603ull;
	for (int i = 0; i < n; i++) {
		h ^= (unsigned char)p[i];
		h *= 1099511628211ull;
	}
	return h;
}

/* Split text into words and hash its n-grams.  0 or ENG_ERR_NOMEM. */
static int
words_split(struct words *w, const char *text, int ngram)
{
	size_t len = strlen(text), cap = len + 1;
	memset(w, 0, sizeof *w);
	w->text = text;
	if (len > (size_t)INT32_MAX / 2)
		return ENG_ERR_RANGE;
	w->off = malloc(cap * sizeof *w->off);
	w->len = malloc(cap * sizeof *w->len);
	w->gram = malloc(cap * sizeof *w->gram);
	if (!w->off || !w->len || !w->gram)
		return ENG_ERR_NOMEM;
	size_t i = 0;
	while (i < len) {
		unsigned char c = (unsigned char)text[i];
		if (is_space(c)) {
			i++;
			continue;
		}
		size_t j = i + 1;
		if (word_byte(c))
			while (j < len && word_byte((unsigned char)text[j]))
				j++;
		if (j == len && word_byte(c))
			break;   /* may still grow */
		w->off[w->n] = (int)i;
		w->len[w->n] = (int)(j - i);
		w->n++;
		i = j;
	}
	for (int p = 0; p + ngram <= w->n; p++) {
		uint64_t h = 0x9e3779b97f4a7c15ull;
		for (int k = 0; k < ngram; k++) {
			/* a word's hash, mixed with its position in the gram */
			h ^= fnv1a(text + w->off[p + k], w->len[p + k]) + 0x9e3779b97f4a7c15ull +
			     (h << 6) + (h >> 2);
		}
		w->gram[p] = h;
	}
	return 0;
}

static void
words_free(struct words *w)
{
	free(w->off);
	free(w->len);
	free(w->gram);
}

static int
word_is(const struct words *w, int k, const char *s)
{
	return w->len[k] == (int)strlen(s) && !memcmp(w->text + w->off[k], s, (size_t)w->len[k]);
}

static int
word_is_number(const struct words *w, int k)
{
	for (int i = 0; i < w->len[k]; i++)
		if (w->text[w->off[k] + i] < '0' || w->text[w->off[k] + i] > '9')
			return 0;
	return 1;
}

/* The answer-so-far of w's first m words as (word index, negative), or
 * index -1 when none. */
static int
answer_so_far(const struct words *w, int m, int *neg)
{
	for (int k = m - 2; k >= 0; k--) {
		if (!word_is(w, k, "="))
			continue;
		*neg = 0;
		if (word_is_number(w, k + 1))
			return k + 1;
		if (k + 2 < m && word_is(w, k + 1, "-") && word_is_number(w, k + 2)) {
			*neg = 1;
			return k + 2;
		}
		return -1;
	}
	return -1;
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Sort and deduplicate v[0..n); returns the new length. */
static int
set_of(uint64_t *v, int n)
{
	qsort(v, (size_t)n, sizeof *v, cmp_u64);
	int k = 0;
	for (int i = 0; i < n; i++)
		if (k == 0 || v[k - 1] != v[i])
			v[k++] = v[i];
	return k;
}

/* Jaccard similarity of the n-gram sets of the first m words of a and b;
 * scratch holds room for 2 * (m - ngram + 1) hashes. */
static double
jaccard(const struct words *a, const struct words *b, int m, int ngram, uint64_t *scratch)
{
	int g = m - ngram + 1;
	uint64_t *x = scratch, *y = scratch + g;
	memcpy(x, a->gram, (size_t)g * sizeof *x);
	memcpy(y, b->gram, (size_t)g * sizeof *y);
	int nx = set_of(x, g), ny = set_of(y, g), i = 0, k = 0, common = 0;
	while (i < nx && k < ny) {
		if (x[i] == y[k]) {
			common++;
			i++;
			k++;
		} else if (x[i] < y[k]) {
			i++;
		} else {
			k++;
		}
	}
	return (double)common / (double)(nx + ny - common);
}

/* 1 if trace b is redundant with representative a by s's rule. */
static int
redundant(const struct prune *s, const struct words *a, const struct words *b, uint64_t *scratch)
{
	int m = a->n < b->n ? a->n : b->n;
	if (m < s->ngram)
		return 0;
	if (s->measure != PRUNE_NGRAM) {
		int na = 0, nb = 0;
		int ka = answer_so_far(a, m, &na), kb = answer_so_far(b, m, &nb);
		int same = ka < 0 && kb < 0;
		if (ka >= 0 && kb >= 0 && na == nb && a->len[ka] == b->len[kb] &&
		    !memcmp(a->text + a->off[ka], b->text + b->off[kb], (size_t)a->len[ka]))
			same = 1;
		if (s->measure == PRUNE_ANSWER)
			return ka >= 0 && same;
		if (!same)
			return 0;
	}
	return jaccard(a, b, m, s->ngram, scratch) >= s->threshold;
}

/* The thread whose cluster a pruned thread's vote now belongs to. */
static int
root_of(const struct prune *s, int i)
{
	while (s->t[i].into >= 0)
		i = s->t[i].into;
	return i;
}

/* Spawn up to k fresh samples from the prompt while the budget lasts.  Lack
 * of room (thread cap, KV cache) ends refilling, not the job. */
static int
refill(struct prune *s, const struct strat_api *api, int k)
{
	int room = s->budget - api->n_threads(api->ctx);
	if (k > room)
		k = room;
	if (k <= 0 || s->refill_off)
		return 0;
	int rc = api->spawn(api->ctx, k, -1);
	if (rc == ENG_ERR_RANGE || rc == ENG_ERR_NO_KV) {
		s->refill_off = 1;
		return 0;
	}
	return rc < 0 ? rc : 0;
}

/* Compare the live traces, stop the redundant ones, refill their slots. */
static int
prune_check(struct prune *s, const struct strat_api *api)
{
	int n = api->n_threads(api->ctx), n_live = 0, n_reps = 0, n_stop = 0, rc = ENG_ERR_NOMEM;
	size_t cap = (size_t)n + 1;
	int *live = malloc(cap * sizeof *live);       /* (n_live) thread index           */
	int *rep = malloc(cap * sizeof *rep);         /* (n_reps) index into live        */
	int *into = malloc(cap * sizeof *into);       /* (n_live) its representative, -1 */
	struct words *w = calloc(cap, sizeof *w);     /* (n_live)                        */
	uint64_t *scratch = NULL;
	int max_words = 0;
	char reason[64];

	if (!live || !rep || !into || !w)
		goto fail;
	for (int i = 0; i < n && i < s->budget; i++)
		if (api->live(api->ctx, i))
			live[n_live++] = i;
	for (int k = 0; k < n_live; k++) {
		if ((rc = words_split(&w[k], api->text(api->ctx, live[k]), s->ngram)) < 0)
			goto fail;
		if (w[k].n > max_words)
			max_words = w[k].n;
	}
	rc = ENG_ERR_NOMEM;
	if (!(scratch = malloc(2 * ((size_t)max_words + 1) * sizeof *scratch)))
		goto fail;
	s->n_checks++;
	for (int k = 0; k < n_live; k++) {
		int r;
		for (r = 0; r < n_reps && !redundant(s, &w[rep[r]], &w[k], scratch); r++)
			;
		if (r == n_reps) {
			rep[n_reps++] = k;
			into[k] = -1;
		} else {
			into[k] = live[rep[r]];
			n_stop++;
		}
	}
	for (int k = 0; k < n_live; k++) {
		if (into[k] < 0)
			continue;
		int i = live[k], r = into[k];
		snprintf(reason, sizeof reason, "redundant with thread %d", r);
		if ((rc = api->stop(api->ctx, i, reason)) < 0)
			goto fail;
		s->t[i].into = r;
		s->t[r].weight += s->t[i].weight;
		s->n_pruned++;
	}
	rc = refill(s, api, n_stop);
fail:
	for (int k = 0; w && k < n_live; k++)
		words_free(&w[k]);
	free(scratch);
	free(w);
	free(into);
	free(rep);
	free(live);
	return rc;
}

/* ---- hooks (engine thread) ------------------------------------------------------------------ */

int
prune_start(void *state, const struct strat_api *api)
{
	struct prune *s = state;
	int rc = api->spawn(api->ctx, s->width, -1);
	return rc < 0 ? rc : 0;
}

int
prune_token(void *state, const struct strat_api *api, int thread, const struct samp_result *r)
{
	struct prune *s = state;
	(void)r;
	if (s->finished)
		return 0;
	int tokens = api->tokens(api->ctx, thread);
	if (tokens <= 0 || tokens % s->every != 0)
		return 0;
	/* only the youngest live thread's count paces the checks */
	for (int i = api->n_threads(api->ctx) - 1; i > thread; i--)
		if (api->live(api->ctx, i))
			return 0;
	return prune_check(s, api);
}

int
prune_thread_done(void *state, const struct strat_api *api, int thread, const char *answer,
		  const char *finish_reason)
{
	struct prune *s = state;
	(void)api;
	(void)finish_reason;
	if (thread < 0 || thread >= s->budget || s->t[thread].reported || s->finished)
		return 0;
	s->t[thread].reported = 1;
	s->t[thread].order = ++s->n_reported;
	if (answer && !(s->t[thread].answer = strdup(answer)))
		return ENG_ERR_NOMEM;
	return 0;
}

/* Every thread ended: the cluster-weighted vote, merge, finish. */
int
prune_idle(void *state, const struct strat_api *api)
{
	struct prune *s = state;
	if (s->finished)
		return api->finish(api->ctx, NULL, NULL);
	int n = api->n_threads(api->ctx), rc = ENG_ERR_NOMEM;
	if (n > s->budget)
		n = s->budget;
	vote_tally *tally = vote_new(n);
	json_t *votes = NULL, *clusters = json_array(), *payload = NULL;
	int best = -1;

	if (!tally || !clusters)
		goto fail;
	for (int order = 1; order <= s->n_reported; order++)
		for (int i = 0; i < n; i++)
			if (s->t[i].order == order) {
				vote_add(tally, s->t[i].answer, s->t[i].weight, i);
				break;
			}
	if (vote_result(tally, 0, &votes, &best, NULL) < 0)
		goto fail;
	/* clusters: each surviving thread with the threads pruned into it */
	for (int r = 0; r < n; r++) {
		if (s->t[r].into >= 0)
			continue;
		json_t *members = json_array(), *c;
		for (int i = 0; members && i < n; i++)
			if (root_of(s, i) == r && json_array_append_new(members, json_integer(i))) {
				json_decref(members);
				members = NULL;
			}
		c = members ? json_pack("{s:i, s:i, s:o, s:s?}", "thread", r, "weight",
					s->t[r].weight, "members", members, "answer", s->t[r].answer)
			    : NULL;
		if (!c || json_array_append_new(clusters, c))
			goto fail;
	}
	const char *answer = best >= 0 ? s->t[best].answer : NULL;
	payload = json_pack("{s:s, s:O, s:s?, s:O, s:i, s:i, s:i}", "method", "cluster_vote",
			    "votes", votes, "answer", answer, "clusters", clusters, "checks",
			    s->n_checks, "pruned", s->n_pruned, "spawned", n);
	if (!payload)
		goto fail;
	s->finished = 1;
	if ((rc = api->emit(api->ctx, EV_MERGE, -1, payload)) < 0)
		goto fail;
	rc = api->finish(api->ctx, answer, votes);
	votes = NULL;
fail:
	json_decref(clusters);
	json_decref(votes);
	vote_free(tally);
	return rc;
}
