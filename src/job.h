/* job.h - a job request as the API, the CLI and the store see it (job_).
 * Plain data; built on the thread that received the request, then handed
 * to the scheduler. */
#ifndef BRAID_JOB_H
#define BRAID_JOB_H

#include <stddef.h>

#include <jansson.h>

#include "event.h"
#include "sampler.h"

#define JOB_STRATEGY_MAX 32

struct job_req {
	char id[EV_JOB_ID_MAX];         /* job_new_id(), or restored from the store */
	char *question;                 /* owned; the user's question            */
	char *system;                   /* owned; optional system prompt, or NULL */
	json_t *messages;               /* owned; OpenAI chat messages, or NULL:
					   when set, the prompt is rendered from them */
	char strategy[JOB_STRATEGY_MAX];/* "single", "sc", ...                    */
	int n;                          /* threads the strategy may run (>= 1)   */
	struct samp_params sampling;    /* per-thread sampling; seed of thread 0  */
	int max_tokens;                 /* per thread, >= 1                       */
	json_t *params;                 /* owned; strategy-specific, or NULL      */
	char *gold;                     /* owned; gold answer for scoring, or NULL */
};

/* Defaults: strategy "sc", n 8, temperature 0.8, top_p 0.95, max_tokens 512. */
void job_req_init(struct job_req *r);

/* Fill r from a request body: {"question" | "messages", "strategy", "n",
 * "temperature", "top_p", "top_k", "min_p", "seed", "max_tokens", "system",
 * "params", "gold"}.  Unknown keys, wrong types, out-of-range values and
 * invalid UTF-8 are ENG_ERR_INVALID with err saying which field and why
 * (for a 400).  Limits: n in [1, max_n], max_tokens in [1, max_tokens_cap].
 * r must be job_req_init'ed; on error it holds nothing to free beyond what
 * job_req_free releases. */
int job_req_from_json(const json_t *body, struct job_req *r, int max_n, int max_tokens_cap,
		      char *err, size_t errlen);

/* The request as JSON (for the store and job.queued); new reference. */
json_t *job_req_to_json(const struct job_req *r);

/* Free what r owns and reset it. */
void job_req_free(struct job_req *r);

/* A fresh job id, "j" + 20 lowercase hex digits from a CSPRNG. */
void job_new_id(char out[EV_JOB_ID_MAX]);

/* 1 if s is a syntactically valid job id (so it can go in a path or SQL). */
int job_id_valid(const char *s);

#endif
