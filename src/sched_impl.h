/* sched_impl.h - what the scheduler's two files share (private to sched.c
 * and sched_job.c): the scheduler, job and thread records, and the calls
 * between the engine-thread loop and the job/strategy side.  Unless a field
 * says otherwise it belongs to the engine thread. */
#ifndef BRAID_SCHED_IMPL_H
#define BRAID_SCHED_IMPL_H

#include <pthread.h>
#include <stdint.h>

#include <jansson.h>

#include "sched.h"
#include "strategy.h"

#define SCHED_STEP_SEQS 256    /* sequences one step should carry at most */
#define SCHED_PIECE 1024       /* stream-decoded bytes of one token, typical */

enum { JOB_QUEUED = 0, JOB_RUNNING = 1 };

struct sthread {
	int seq;              /* engine sequence, -1 once ended          */
	int parent;           /* -1 = the prompt                         */
	int tokens;           /* generated, including the parent's part  */
	char *text;           /* generated text (owned, NUL-terminated)  */
	size_t len, cap;
	tok_stream *ts;
	char *answer;         /* extracted at the end, or NULL           */
	const char *finish;   /* static string once ended                */
	int done_pending;     /* thread_done owed to the strategy        */
};

struct sjob {
	struct sjob *qnext;          /* queue link (under the mutex)           */
	sched *s;
	struct job_req req;
	int state;                   /* JOB_QUEUED / JOB_RUNNING (mutex)       */
	int cancel;                  /* set by sched_cancel (mutex)            */
	int64_t next_seq;            /* next event seq; engine thread after
					job.queued                              */
	int64_t t_submit_ms;
	int max_tokens;
	const struct strategy *st;
	void *st_state;
	struct strat_api api;
	int32_t *prompt;             /* (n_prompt) token ids                   */
	int n_prompt;
	int prompt_seq;              /* live only during start, else -1        */
	struct sthread *t;           /* (n_threads)                            */
	int n_threads, cap_threads, n_live;
	int finished, error;
	int cancel_now;              /* engine: cancel seen this iteration     */
	char *answer;
	json_t *votes;
	char fail_reason[160];
};

/* Which job and thread an engine sequence belongs to (job NULL: none). */
struct seq_ref {
	struct sjob *job;
	int thread;
};

struct sched {
	bus *bus;
	struct sched_params p;
	struct eng_params ep;
	eng *e;
	pthread_t thread;
	int thread_started;

	pthread_mutex_t mu;
	pthread_cond_t cv;           /* engine thread waits here when idle     */
	pthread_cond_t ready_cv;     /* sched_create waits for the engine      */
	int ready;                   /* 1 ok, -1 failed                        */
	char err[ENG_ERRLEN];
	int stop;
	int cancel_pending;
	struct sjob *q_head, *q_tail;
	int n_queued;
	struct sjob **run;           /* (n_run) running jobs, admission order;
					written under mu by the engine thread   */
	int n_run, cap_run;
	struct sched_stats stats;    /* snapshot, under mu                     */
	int64_t last_step_ms;

	/* engine thread only */
	struct ev **pend;            /* (n_pend) events made since the last
					sched_flush, in order                   */
	int n_pend, cap_pend;
	int max_seqs;
	struct seq_ref *seq_map;     /* (max_seqs)                             */
	struct eng_token *out;       /* (max_seqs)                             */
	struct seq_ref *refs;        /* (max_seqs) a step's tokens' threads     */
	int reserved;                /* threads reserved by running jobs       */
	int step_budget;             /* min(SCHED_STEP_SEQS, max_seqs - 1)     */
	int kv_blocked;              /* admission waits for a job to end       */
	int max_position;
	unsigned long long steps, tokens_total, jobs_done, jobs_failed;
	double step_ms_avg, overhead_ms_avg;
	int64_t win_start_ms;
	unsigned long long win_tokens, prev_win_tokens;
	int64_t prev_win_ms;
	double tokens_per_s;
};

/* ---- sched.c: the running list and the counters (engine thread) ---- */

/* Drop j from the running list (under the mutex), release its reservation
 * and free it. */
void sched_retire(sched *s, struct sjob *j);
/* Count a job that ended (failed or done) and move the counters into the
 * snapshot at once, so that a client that saw the job's last event reads
 * counters that include it. */
void sched_count_end(sched *s, int failed);

/* ---- sched_job.c: jobs, threads and the strategy API ---- */

/* Publish an event of j with its next seq (engine thread); payload stolen.
 * The event waits in s->pend until sched_flush, which hands everything the
 * iteration made to the bus at once (one lock and one wake-up per
 * subscriber instead of one per event; the order is kept).  An event no
 * subscription would take (bus_wants) is not built; its seq is still used.
 * Out of memory loses the event, not the job. */
void sched_publish(sched *s, struct sjob *j, enum ev_type type, int thread, json_t *payload);
/* Publish the queued events (engine thread). */
void sched_flush(sched *s);
/* A new job record for req (not yet owning req's contents: the caller
 * moves them into j->req) with st's state initialised.  NULL with *rc and
 * err filled on failure. */
struct sjob *sched_job_new(sched *s, const struct strategy *st, const struct job_req *req,
			   int *rc, char *err, size_t errlen);
/* Free a job record that holds no engine sequence.  NULL is fine. */
void sched_job_free(struct sjob *j);
/* Start an admitted job (already in s->run): prompt, prefill, the
 * strategy's start.  Returns 1 when it must go back to the head of the
 * queue (the cache is full for now), else 0 (it may have been freed). */
int sched_job_start(sched *s, struct sjob *j);
/* Fail a running or dequeued job: free its sequences, publish job.failed,
 * free it. */
void sched_job_fail(sched *s, struct sjob *j, const char *reason);
/* Route one sampled token to thread i of j. */
void sched_job_token(sched *s, struct sjob *j, int i, const struct samp_result *r);
/* Settle j after anything happened to it (see sched_job.c).  Returns 1 if
 * j was freed. */
int sched_job_progress(sched *s, struct sjob *j);

#endif
