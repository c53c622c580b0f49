/* pdr.c - the "pdr" strategy (Parallel-Distill-Refine): rounds of M
 * parallel drafts; after each round the drafts are distilled into a bounded
 * workspace (the intermediate results most drafts agree on, as a "Known:"
 * block for braid-arith; the drafts' answers and their counts for other
 * models), and the next round's drafts start from a fresh prompt that
 * restates the question with that workspace.  The job's answer is the last
 * round's majority.  One merge event per round.
 *
 * The scheduler caps a job's threads over its whole life at n, so the
 * rounds share it: M = params.drafts, default n / rounds.
 *
 * Hooks run on the engine thread; pdr_init on the submitting thread. */
#include <stdlib.h>
#include <string.h>

#include "distil.h"
#include "sparams.h"
#include "status.h"
#include "strat_rows.h"

enum pdr_format { PDR_AUTO, PDR_KNOWN, PDR_TEXT };

struct pdr {
	char *question;       /* the job's question, restated each round   */
	int rounds, drafts;
	size_t ws_cap;        /* workspace bytes (>= its tokens)           */
	int known;            /* 1: Known block; 0: answers text           */
	int round;            /* 0-based, the round decoding now           */
	int first;            /* its first thread                          */
	int reported;         /* its drafts that reported                  */
	int finished;
	char **answer;        /* (drafts) this round's extracted answers    */
	int *order;           /* (drafts) report order, 1 first; 0 = not    */
	dst *tally;           /* this round's facts                         */
	char *best;           /* the last completed round's answer, or NULL */
};

int
pdr_init(const struct job_req *req, void **state, char *err, size_t errlen)
{
	static const char *const keys[] = { "rounds", "drafts", "workspace_tokens", "format", NULL };
	static const char *const formats[] = { "auto", "known", "text", NULL };   /* PDR_ */
	int rounds = 2, drafts = 0, ws = 256, fmt = PDR_AUTO, rc;
	const char *q = dst_request_question(req->question, req->messages);
	if ((rc = sp_check(req->params, "pdr", keys, err, errlen)) < 0 ||
	    (rc = sp_int(req->params, "rounds", 1, 16, &rounds, err, errlen)) < 0 ||
	    (rc = sp_int(req->params, "drafts", 1, 1024, &drafts, err, errlen)) < 0 ||
	    (rc = sp_int(req->params, "workspace_tokens", 16, 8192, &ws, err, errlen)) < 0 ||
	    (rc = sp_enum(req->params, "format", formats, &fmt, err, errlen)) < 0)
		return rc;
	if (!drafts)
		drafts = req->n / rounds;
	if (drafts < 1 || (long)drafts * rounds > req->n)
		return eng_seterr(err, errlen, ENG_ERR_INVALID,
				  "params.drafts: %d rounds of %d drafts need n >= %ld, got n = %d", rounds,
				  drafts < 1 ? 1 : drafts, (long)(drafts < 1 ? 1 : drafts) * rounds, req->n);
	if (!q)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "question: strategy \"pdr\" needs one");
	struct pdr *s = calloc(1, sizeof *s);
	if (!s || !(s->question = strdup(q)) || !(s->answer = calloc((size_t)drafts, sizeof *s->answer)) ||
	    !(s->order = calloc((size_t)drafts, sizeof *s->order)) || !(s->tally = dst_new())) {
		pdr_destroy(s);
		return eng_seterr(err, errlen, ENG_ERR_NOMEM, "out of memory");
	}
	s->rounds = rounds;
	s->drafts = drafts;
	s->ws_cap = (size_t)ws;
	s->known = fmt == PDR_KNOWN || (fmt == PDR_AUTO && dst_is_arith(q));
	*state = s;
	return 0;
}

/* Forget the round's drafts (keeps best). */
static void
round_reset(struct pdr *s)
{
	for (int i = 0; i < s->drafts; i++) {
		free(s->answer[i]);
		s->answer[i] = NULL;
		s->order[i] = 0;
	}
	s->reported = 0;
}

void
pdr_destroy(void *state)
{
	struct pdr *s = state;
	if (!s)
		return;
	if (s->answer)
		round_reset(s);
	free(s->answer);
	free(s->order);
	dst_free(s->tally);
	free(s->best);
	free(s->question);
	free(s);
}

int
pdr_start(void *state, const struct strat_api *api)
{
	struct pdr *s = state;
	int rc = api->spawn(api->ctx, s->drafts, -1);
	if (rc < 0)
		return rc;
	s->first = rc;
	return 0;
}

/* The answers workspace for models without a Known format: each answer
 * with its count, most-voted first (votes lists groups by first report;
 * a stable pass per count keeps ties in that order), within cap bytes. */
static char *
answers_workspace(json_t *votes, int drafts, size_t cap)
{
	char *out = malloc(cap + 1);
	if (!out)
		return NULL;
	size_t len = 0;
	out[0] = '\0';
	const char *head = "Answers of earlier attempts:\n";
	if (json_object_size(votes) == 0 || strlen(head) > cap)
		return out;
	memcpy(out, head, strlen(head) + 1);
	len = strlen(head);
	for (int c = drafts; c >= 1; c--) {
		const char *key;
		json_t *v;
		json_object_foreach(votes, key, v) {
			if (json_integer_value(v) != c)
				continue;
			char line[256];
			int m = snprintf(line, sizeof line, "- %.200s (%d of %d)\n", key, c, drafts);
			if (m < 0 || (size_t)m >= sizeof line || len + (size_t)m + 1 > cap)
				continue;
			memcpy(out + len, line, (size_t)m + 1);
			len += (size_t)m;
		}
	}
	if (len + 1 <= cap) {
		out[len++] = '\n';
		out[len] = '\0';
	}
	return out;
}

/* The round ended: vote, distil, publish merge; refine or finish. */
static int
round_end(struct pdr *s, const struct strat_api *api)
{
	json_t *votes = NULL, *facts = NULL, *drafts = NULL, *payload = NULL;
	char *block = NULL, *prompt = NULL;
	int best, rc;
	if ((rc = dst_vote(s->answer, s->order, s->drafts, &votes, &best)) < 0)
		goto fail;
	rc = ENG_ERR_NOMEM;
	if (best >= 0) {
		char *b = strdup(s->answer[best]);
		if (!b)
			goto fail;
		free(s->best);
		s->best = b;
	}
	if (s->known) {
		if ((rc = dst_workspace(s->tally, s->ws_cap, &block, &facts)) < 0)
			goto fail;
		rc = ENG_ERR_NOMEM;
	} else if (!(block = answers_workspace(votes, s->drafts, s->ws_cap)) || !(facts = json_array()))
		goto fail;
	if (!(drafts = json_array()))
		goto fail;
	for (int i = 0; i < s->drafts; i++)
		json_array_append_new(drafts, json_integer(s->first + i));
	int last = s->round + 1 == s->rounds;
	payload = json_pack("{s:s, s:i, s:O, s:s?, s:s?, s:s, s:o, s:i, s:o, s:b}", "method", "distil",
			    "round", s->round + 1, "votes", votes, "answer", s->best,
			    "round_answer", best >= 0 ? s->answer[best] : NULL, "workspace", block,
			    "facts", facts, "workspace_bytes", (int)strlen(block), "drafts", drafts,
			    "final", last);
	facts = drafts = NULL;
	if (!payload)
		goto fail;
	rc = api->emit(api->ctx, EV_MERGE, -1, payload);
	payload = NULL;
	if (rc < 0)
		goto fail;
	if (last) {
		s->finished = 1;
		rc = api->finish(api->ctx, s->best, votes);
		votes = NULL;
		goto fail;
	}
	rc = ENG_ERR_NOMEM;
	if (!(prompt = s->known ? dst_known_prompt(s->question, block) : malloc(strlen(block) +
									       strlen(s->question) + 1)))
		goto fail;
	if (!s->known) {
		strcpy(prompt, block);
		strcat(prompt, s->question);
	}
	round_reset(s);
	dst_free(s->tally);
	if (!(s->tally = dst_new()))
		goto fail;
	if ((rc = api->spawn_prompt(api->ctx, s->drafts, prompt)) < 0)
		goto fail;
	s->first = rc;
	s->round++;
	rc = 0;
fail:
	json_decref(votes);
	json_decref(facts);
	json_decref(drafts);
	json_decref(payload);
	free(block);
	free(prompt);
	return rc;
}

int
pdr_thread_done(void *state, const struct strat_api *api, int thread, const char *answer,
		const char *finish_reason)
{
	struct pdr *s = state;
	(void)finish_reason;
	int i = thread - s->first;
	if (s->finished || i < 0 || i >= s->drafts || s->order[i])
		return 0;
	s->order[i] = ++s->reported;
	if (answer && !(s->answer[i] = strdup(answer)))
		return ENG_ERR_NOMEM;
	int rc = dst_add_trace(s->tally, api->text(api->ctx, thread));
	if (rc < 0)
		return rc;
	return s->reported == s->drafts ? round_end(s, api) : 0;
}

/* Some drafts never reported (stopped): close the round with the rest. */
int
pdr_idle(void *state, const struct strat_api *api)
{
	struct pdr *s = state;
	if (s->finished)
		return api->finish(api->ctx, s->best, NULL);
	return round_end(s, api);
}
