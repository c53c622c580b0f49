/* sched.h - the scheduler (sched_): it owns the engine and its thread.  On
 * that thread it admits queued jobs, drives each job's strategy, runs one
 * engine step for every live thread of every running job (continuous
 * batching, fair share between jobs), and publishes every decision on the
 * bus.  Other threads talk to it only through these calls, which take a
 * mutex, queue a command and wake the engine thread; none of them waits for
 * an engine step.
 *
 * Events of a job, in order (payload fields besides type/job/seq/ts/thread):
 *   job.queued     {request}                          (at sched_submit)
 *   job.started    {prompt_tokens, strategy, n}
 *   thread.spawned {thread, parent (-1 = the prompt), at_token}
 *   thread.delta   {thread, text, tokens, logprob, entropy}   one per thread
 *                  per step, text possibly "" while a UTF-8 character is
 *                  incomplete; logprob/entropy of the step's token
 *   thread.pruned  {thread, reason}
 *   thread.done    {thread, finish_reason ("eos"|"length"|"stop"|"cancelled"),
 *                   answer (string or null), tokens, text}
 *   merge          {method, votes: {answer: count}, answer}
 *   job.done       {answer (or null), votes, tokens, prompt_tokens, ms,
 *                   threads: [{thread, answer, tokens, finish_reason}]}
 *   job.failed     {reason}
 */
#ifndef BRAID_SCHED_H
#define BRAID_SCHED_H

#include <stddef.h>

#include "bus.h"
#include "engine.h"
#include "job.h"

typedef struct sched sched;

struct sched_params {
	int max_running;          /* jobs decoding at once; 0 = 32                */
	int max_queue;            /* jobs waiting; 0 = 256; beyond: ENG_ERR_RANGE */
	int max_threads_per_job;  /* cap on a job's n; 0 = 64                     */
	int max_tokens;           /* cap on a thread's tokens; 0 = 4096           */
};

struct sched_params sched_default_params(void);

/* Start the engine thread, which creates the engine from ep (the model is
 * loaded there); returns when it is ready.  b is borrowed and must outlive
 * the scheduler.  NULL and err filled on failure. */
sched *sched_create(const struct eng_params *ep, bus *b, const struct sched_params *p,
		    char *err, size_t errlen);

/* Stop the engine thread: running and queued jobs get job.failed
 * {"reason": "shutdown"}.  NULL is fine. */
void sched_destroy(sched *s);

/* The engine, for read-only getters (config, tokenizer, device) from any
 * thread. */
const eng *sched_engine(const sched *s);
const struct sched_params *sched_params(const sched *s);

/* Queue a job (any thread).  On success the scheduler owns req's contents
 * (req is reset, except req->id, which holds the job's id: the caller's,
 * or a fresh job_new_id() when it was empty) and job.queued is published
 * before this returns.  On failure req is untouched (the caller frees it).
 * ENG_ERR_RANGE: the queue is full (answer 429); ENG_ERR_INVALID: unknown
 * strategy or n/max_tokens beyond the caps (err says which). */
int sched_submit(sched *s, struct job_req *req, char *err, size_t errlen);

/* Cancel a queued or running job (any thread): its threads stop and their
 * KV blocks are freed before the next step; job.failed {"reason":
 * "cancelled"} follows.  ENG_ERR_NOT_FOUND if it is not queued or running. */
int sched_cancel(sched *s, const char *job_id);

struct sched_stats {
	int queued, running, live_threads;
	int kv_blocks_used, kv_blocks_total;
	unsigned long long steps, tokens_total, jobs_done, jobs_failed;
	double tokens_per_s;          /* over the last few seconds             */
	double step_ms_avg;           /* engine step, exponential average       */
	double overhead_ms_avg;       /* scheduler work around each step        */
};

/* A consistent snapshot (any thread). */
void sched_stats(sched *s, struct sched_stats *out);

#endif
