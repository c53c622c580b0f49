/* single.c - the "single" strategy: one thread from the prompt, sampled
 * with the job's parameters; its extracted answer is the job's answer.
 * Hooks run on the engine thread; single_init on the submitting thread. */
#include <stdlib.h>

#include "status.h"
#include "strat_rows.h"
#include "vote.h"

struct single {
	int done;
};

int
single_init(const struct job_req *req, void **state, char *err, size_t errlen)
{
	if (req->params && (!json_is_object(req->params) || json_object_size(req->params) > 0))
		return eng_seterr(err, errlen, ENG_ERR_INVALID,
				  "params: strategy \"single\" takes no parameters");
	struct single *s = calloc(1, sizeof *s);
	if (!s)
		return eng_seterr(err, errlen, ENG_ERR_NOMEM, "out of memory");
	*state = s;
	return 0;
}

void
single_destroy(void *state)
{
	free(state);
}

int
single_start(void *state, const struct strat_api *api)
{
	(void)state;
	int rc = api->spawn(api->ctx, 1, -1);
	return rc < 0 ? rc : 0;
}

int
single_thread_done(void *state, const struct strat_api *api, int thread, const char *answer,
		   const char *finish_reason)
{
	struct single *s = state;
	(void)thread;
	(void)finish_reason;
	if (s->done)
		return 0;
	s->done = 1;
	json_t *votes = vote_single(answer);
	if (!votes)
		return ENG_ERR_NOMEM;
	return api->finish(api->ctx, answer, votes);
}

/* The thread was pruned or never reported: finish without an answer. */
int
single_idle(void *state, const struct strat_api *api)
{
	struct single *s = state;
	s->done = 1;
	return api->finish(api->ctx, NULL, json_object());
}
