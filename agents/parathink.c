/* parathink.c - the "parathink" strategy (ParaThinker-style): K independent
 * paths from the prompt in one batch, then one summary thread whose fresh
 * prompt restates the question with what the paths found - for braid-arith
 * a "Known:" block of the steps most paths agree on, then "Compute E"; for
 * other models the paths' answers and last lines, then a request for the
 * final answer.  The summary's answer is the job's (the paths' majority
 * when it gives none).  One merge event, when the summary is spawned.
 *
 * The scheduler caps a job's threads at n, summary included, so
 * K = params.paths, default n - 1.
 *
 * Hooks run on the engine thread; parathink_init on the submitting thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "distil.h"
#include "sparams.h"
#include "status.h"
#include "strat_rows.h"

enum pt_format { PT_AUTO, PT_KNOWN, PT_TEXT };

struct parathink {
	char *question;       /* the job's question, restated to the summary */
	int k;                /* paths                                        */
	size_t ws_cap;        /* bytes of what the summary is given           */
	int known;            /* 1: Known block; 0: answers and last lines    */
	int reported;         /* paths that reported                          */
	int summary;          /* the summary thread, or -1 before it exists   */
	int finished;
	char **answer;        /* (k) paths' extracted answers                 */
	int *order;           /* (k) report order, 1 first; 0 = not reported  */
	char **tail;          /* (k) paths' last bytes (text format)          */
	dst *tally;
	char *majority;       /* the paths' majority answer, or NULL          */
	json_t *votes;        /* the paths' votes, once the summary runs      */
};

int
parathink_init(const struct job_req *req, void **state, char *err, size_t errlen)
{
	static const char *const keys[] = { "paths", "workspace_tokens", "format", NULL };
	static const char *const formats[] = { "auto", "known", "text", NULL };   /* PT_ */
	int k = req->n - 1, ws = 512, fmt = PT_AUTO, rc;
	const char *q = dst_request_question(req->question, req->messages);
	if ((rc = sp_check(req->params, "parathink", keys, err, errlen)) < 0 ||
	    (rc = sp_int(req->params, "paths", 1, req->n - 1, &k, err, errlen)) < 0 ||
	    (rc = sp_int(req->params, "workspace_tokens", 16, 8192, &ws, err, errlen)) < 0 ||
	    (rc = sp_enum(req->params, "format", formats, &fmt, err, errlen)) < 0)
		return rc;
	if (req->n < 2)
		return eng_seterr(err, errlen, ENG_ERR_INVALID,
				  "n: strategy \"parathink\" needs at least 2 threads (paths + 1 summary)");
	if (!q)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "question: strategy \"parathink\" needs one");
	struct parathink *s = calloc(1, sizeof *s);
	if (!s || !(s->question = strdup(q)) || !(s->answer = calloc((size_t)k, sizeof *s->answer)) ||
	    !(s->order = calloc((size_t)k, sizeof *s->order)) ||
	    !(s->tail = calloc((size_t)k, sizeof *s->tail)) || !(s->tally = dst_new())) {
		if (s)
			s->k = k;
		parathink_destroy(s);
		return eng_seterr(err, errlen, ENG_ERR_NOMEM, "out of memory");
	}
	s->k = k;
	s->ws_cap = (size_t)ws;
	s->summary = -1;
	s->known = fmt == PT_KNOWN || (fmt == PT_AUTO && dst_is_arith(q));
	*state = s;
	return 0;
}

void
parathink_destroy(void *state)
{
	struct parathink *s = state;
	if (!s)
		return;
	for (int i = 0; i < s->k; i++) {
		if (s->answer)
			free(s->answer[i]);
		if (s->tail)
			free(s->tail[i]);
	}
	free(s->answer);
	free(s->order);
	free(s->tail);
	dst_free(s->tally);
	free(s->majority);
	json_decref(s->votes);
	free(s->question);
	free(s);
}

int
parathink_start(void *state, const struct strat_api *api)
{
	struct parathink *s = state;
	int rc = api->spawn(api->ctx, s->k, -1);
	return rc < 0 ? rc : 0;     /* the paths are threads 0 .. k-1 */
}

/* The summary's user turn in the text format: the question, each path's
 * answer and last lines (an equal share of cap bytes each), the request. */
static char *
text_prompt(const struct parathink *s)
{
	size_t cap = strlen(s->question) + 256;
	for (int i = 0; i < s->k; i++)
		cap += (s->tail[i] ? strlen(s->tail[i]) : 0) + (s->answer[i] ? strlen(s->answer[i]) : 0) + 64;
	char *out = malloc(cap);
	if (!out)
		return NULL;
	size_t len = (size_t)snprintf(out, cap, "%s\n\nHere are %d solutions to this problem, each "
				      "shown by its last lines:\n", s->question, s->k);
	for (int i = 0; i < s->k && len < cap; i++)
		len += (size_t)snprintf(out + len, cap - len, "\nSolution %d (answer: %s):\n...%s\n", i + 1,
					s->answer[i] ? s->answer[i] : "none",
					s->tail[i] ? s->tail[i] : "");
	if (len < cap)
		snprintf(out + len, cap - len, "\nCompare them and give the final answer.");
	return out;
}

/* Every path ended: vote, distil, spawn the summary, publish merge. */
static int
summarize(struct parathink *s, const struct strat_api *api)
{
	json_t *facts = NULL, *answers = NULL, *payload = NULL;
	char *block = NULL, *prompt = NULL;
	int best, rc;
	if ((rc = dst_vote(s->answer, s->order, s->k, &s->votes, &best)) < 0)
		goto fail;
	rc = ENG_ERR_NOMEM;
	if (best >= 0 && !(s->majority = strdup(s->answer[best])))
		goto fail;
	if (s->known) {
		if ((rc = dst_workspace(s->tally, s->ws_cap, &block, &facts)) < 0)
			goto fail;
		rc = ENG_ERR_NOMEM;
		prompt = dst_known_prompt(s->question, block);
	} else {
		facts = json_array();
		prompt = text_prompt(s);
	}
	if (!prompt || !facts || !(answers = json_array()))
		goto fail;
	for (int i = 0; i < s->k; i++)
		json_array_append_new(answers, s->answer[i] ? json_string(s->answer[i]) : json_null());
	if ((rc = api->spawn_prompt(api->ctx, 1, prompt)) < 0)
		goto fail;
	s->summary = rc;
	payload = json_pack("{s:s, s:O, s:s?, s:o, s:o, s:s, s:i}", "method", "summary", "votes",
			    s->votes, "answer", s->majority, "answers", answers, "known", facts,
			    "prompt", prompt, "summary_thread", s->summary);
	answers = facts = NULL;
	rc = ENG_ERR_NOMEM;
	if (!payload)
		goto fail;
	rc = api->emit(api->ctx, EV_MERGE, -1, payload);
	payload = NULL;
fail:
	json_decref(facts);
	json_decref(answers);
	json_decref(payload);
	free(block);
	free(prompt);
	return rc < 0 ? rc : 0;
}

static int
finish(struct parathink *s, const struct strat_api *api, const char *answer)
{
	s->finished = 1;
	json_t *votes = s->votes ? json_incref(s->votes) : json_object();
	return api->finish(api->ctx, answer ? answer : s->majority, votes);
}

int
parathink_thread_done(void *state, const struct strat_api *api, int thread, const char *answer,
		      const char *finish_reason)
{
	struct parathink *s = state;
	(void)finish_reason;
	if (s->finished)
		return 0;
	if (s->summary >= 0)
		return thread == s->summary ? finish(s, api, answer) : 0;
	if (thread < 0 || thread >= s->k || s->order[thread])
		return 0;
	s->order[thread] = ++s->reported;
	if (answer && !(s->answer[thread] = strdup(answer)))
		return ENG_ERR_NOMEM;
	const char *text = api->text(api->ctx, thread);
	int rc = dst_add_trace(s->tally, text);
	if (rc < 0)
		return rc;
	if (!s->known && !(s->tail[thread] = dst_tail(text ? text : "", s->ws_cap / (size_t)s->k)))
		return ENG_ERR_NOMEM;
	return s->reported == s->k ? summarize(s, api) : 0;
}

/* Paths were stopped (summarize with the rest), or the summary was: finish
 * with the paths' majority. */
int
parathink_idle(void *state, const struct strat_api *api)
{
	struct parathink *s = state;
	if (s->summary < 0 && !s->finished)
		return summarize(s, api);
	return finish(s, api, NULL);
}
