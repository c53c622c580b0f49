/* strategy.h - the reasoning strategies' interface (strat_).  A strategy is
 * a state machine the scheduler drives on the engine thread, between two
 * engine steps; it answers with actions through strat_api.  Strategies are
 * rows of one table (strat_table), each with its name, help and parameters.
 * Hooks must be cheap CPU code: they run inside the decode loop. */
#ifndef BRAID_STRATEGY_H
#define BRAID_STRATEGY_H

#include <stddef.h>

#include <jansson.h>

#include "event.h"
#include "job.h"
#include "sampler.h"

/* What a strategy can do; valid only inside a hook call. */
struct strat_api {
	void *ctx;
	/* n new threads continuing from the prompt (parent -1) or from thread
	 * parent's current token (a fork: shares its cache).  Each gets its own
	 * seed.  Returns the first new thread index (they are consecutive), or
	 * a negative error (e.g. ENG_ERR_RANGE past the job's thread cap). */
	int (*spawn)(void *ctx, int n, int parent);
	/* n new threads from a fresh prompt: the job's system prompt and this
	 * user turn, rendered in the model's chat format and prefilled once
	 * (the n share it).  For rounds that restate the problem, e.g. with a
	 * distilled "Known:" block.  Returns the first index, or an error. */
	int (*spawn_prompt)(void *ctx, int n, const char *user_text);
	/* Stop a thread now (its blocks are freed): thread.pruned with reason,
	 * or thread.done with finish_reason "stop" when reason is NULL. */
	int (*stop)(void *ctx, int thread, const char *reason);
	/* Append text to a thread's context before its next token. */
	int (*inject)(void *ctx, int thread, const char *text);
	/* Finish the job with an answer (may be NULL) and votes (stolen, may be
	 * NULL); live threads are stopped. */
	int (*finish)(void *ctx, const char *answer, json_t *votes);
	/* Publish a strategy event (merge, thread.pruned, ...); payload stolen. */
	int (*emit)(void *ctx, enum ev_type type, int thread, json_t *payload);
	/* Read-only views of a thread. */
	const char *(*text)(void *ctx, int thread);    /* generated text so far */
	size_t (*text_len)(void *ctx, int thread);     /* strlen of that text   */
	int (*tokens)(void *ctx, int thread);           /* generated tokens      */
	int (*live)(void *ctx, int thread);             /* 1 while decoding      */
	int (*n_threads)(void *ctx);                    /* spawned so far        */
};

struct strategy {
	const char *name;
	const char *help;
	const char *params_help;       /* one line per parameter               */
	int top_logprobs;              /* top logprobs each token reports to the
					  token hook (samp_result.top_*); 0 = as
					  the request asks                       */
	/* Parse req (n, params) into a state.  ENG_ERR_INVALID with err for a
	 * 400 on bad parameters. */
	int (*init)(const struct job_req *req, void **state, char *err, size_t errlen);
	void (*destroy)(void *state);
	/* The prompt is prefilled; spawn the first threads. */
	int (*start)(void *state, const struct strat_api *api);
	/* One token of one thread (optional, NULL to skip). */
	int (*token)(void *state, const struct strat_api *api, int thread,
		     const struct samp_result *r);
	/* A thread ended (eos, length, stop); answer as extracted, or NULL. */
	int (*thread_done)(void *state, const struct strat_api *api, int thread,
			   const char *answer, const char *finish_reason);
	/* No thread is live and the job is not finished: the strategy must
	 * spawn more or call finish. */
	int (*idle)(void *state, const struct strat_api *api);
};

/* The table, NULL-terminated by a row with name == NULL. */
extern const struct strategy strat_table[];

/* The row with this name, or NULL. */
const struct strategy *strat_find(const char *name);

#endif
