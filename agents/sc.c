/* sc.c - the "sc" strategy (self-consistency, Wang et al. 2022): n threads
 * forked from the prompt's cache decode independently; when all have ended,
 * their extracted answers are grouped by equivalence (ans_equal) and the
 * largest group wins.  Ties go to the answer reached first (the group whose
 * first thread finished earliest).
 *
 * params.weighted = true weights each vote by the thread's confidence
 * exp(mean token logprob), the geometric mean probability the model gave
 * its own tokens (in (0, 1]; a trace the model was sure of counts ~1, a
 * guessed one less), so votes become sums of confidences.
 *
 * Hooks run on the engine thread; sc_init on the submitting thread. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "answer.h"
#include "sparams.h"
#include "status.h"
#include "strat_rows.h"
#include "vote.h"

struct sc_thread {
	char *answer;        /* extracted, or NULL                     */
	double logprob_sum;  /* over the thread's tokens               */
	int tokens;
	int reported;        /* thread_done was called                 */
	int order;           /* 1 + number of threads reported before  */
};

struct sc {
	int n;
	int weighted;
	int n_reported;
	int finished;
	struct sc_thread *t;  /* (n) */
};

int
sc_init(const struct job_req *req, void **state, char *err, size_t errlen)
{
	static const char *const keys[] = { "weighted", NULL };
	int weighted = 0, rc;
	if ((rc = sp_check(req->params, "sc", keys, err, errlen)) < 0 ||
	    (rc = sp_bool(req->params, "weighted", &weighted, err, errlen)) < 0)
		return rc;
	if (req->n < 1)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "n: must be at least 1");
	struct sc *s = calloc(1, sizeof *s);
	if (!s || !(s->t = calloc((size_t)req->n, sizeof *s->t))) {
		free(s);
		return eng_seterr(err, errlen, ENG_ERR_NOMEM, "out of memory");
	}
	s->n = req->n;
	s->weighted = weighted;
	*state = s;
	return 0;
}

void
sc_destroy(void *state)
{
	struct sc *s = state;
	if (!s)
		return;
	for (int i = 0; i < s->n; i++)
		free(s->t[i].answer);
	free(s->t);
	free(s);
}

int
sc_start(void *state, const struct strat_api *api)
{
	struct sc *s = state;
	int rc = api->spawn(api->ctx, s->n, -1);
	return rc < 0 ? rc : 0;
}

int
sc_token(void *state, const struct strat_api *api, int thread, const struct samp_result *r)
{
	struct sc *s = state;
	(void)api;
	if (thread < 0 || thread >= s->n)
		return 0;
	s->t[thread].logprob_sum += r->logprob;
	s->t[thread].tokens++;
	return 0;
}

/* A thread's vote: 1, or its confidence when weighted. */
static double
vote_weight(const struct sc *s, const struct sc_thread *t)
{
	if (!s->weighted)
		return 1.0;
	if (t->tokens == 0)
		return 1.0;
	return exp(t->logprob_sum / t->tokens);
}

/* Tally the reported answers, publish merge, finish the job. */
static int
sc_merge(struct sc *s, const struct strat_api *api)
{
	/* answers in the order they were reported */
	vote_tally *tally = vote_new(s->n);
	json_t *votes = NULL, *payload = NULL;
	int best = -1, rc = ENG_ERR_NOMEM;
	if (!tally)
		goto fail;
	for (int order = 1; order <= s->n_reported; order++)
		for (int i = 0; i < s->n; i++)
			if (s->t[i].order == order) {
				vote_add(tally, s->t[i].answer, vote_weight(s, &s->t[i]), i);
				break;
			}
	if ((rc = vote_result(tally, s->weighted, &votes, &best, NULL)) < 0)
		goto fail;
	rc = ENG_ERR_NOMEM;
	const char *answer = best >= 0 ? s->t[best].answer : NULL;
	payload = json_pack("{s:s, s:O, s:s?}", "method", s->weighted ? "weighted_vote" : "vote",
			    "votes", votes, "answer", answer);
	if (!payload)
		goto fail;
	s->finished = 1;
	if ((rc = api->emit(api->ctx, EV_MERGE, -1, payload)) < 0) {
		payload = NULL;
		goto fail;
	}
	rc = api->finish(api->ctx, answer, votes);
	votes = NULL;
fail:
	json_decref(votes);
	vote_free(tally);
	return rc;
}

int
sc_thread_done(void *state, const struct strat_api *api, int thread, const char *answer,
	       const char *finish_reason)
{
	struct sc *s = state;
	(void)finish_reason;
	if (thread < 0 || thread >= s->n || s->t[thread].reported || s->finished)
		return 0;
	s->t[thread].reported = 1;
	s->t[thread].order = ++s->n_reported;
	if (answer && !(s->t[thread].answer = strdup(answer)))
		return ENG_ERR_NOMEM;
	if (s->n_reported < api->n_threads(api->ctx))
		return 0;
	return sc_merge(s, api);
}

/* Some threads were pruned (they never report): vote over those that did. */
int
sc_idle(void *state, const struct strat_api *api)
{
	struct sc *s = state;
	if (s->finished)
		return api->finish(api->ctx, NULL, NULL);
	return sc_merge(s, api);
}
