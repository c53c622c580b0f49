/* sched.c - the scheduler: the engine thread admits jobs, drives their
 * strategies and runs one batched engine step for every live thread of
 * every running job; sched_submit/sched_cancel/sched_stats run on any
 * thread and only touch the mutex-guarded command state.
 *
 * Fair share.  eng_step advances every live sequence, so sharing is decided
 * at admission: jobs leave the queue in FIFO order while fewer than
 * max_running run and their threads fit the step budget (SCHED_STEP_SEQS
 * sequences, fewer if the engine allows fewer; each admitted job reserves
 * its n, and a job is always admitted when nothing runs); the head of the queue is
 * never overtaken by a smaller job behind it, so a wide job cannot starve.
 * Once admitted, every thread of every running job gets exactly one token
 * per step.
 *
 * Threads: thread t of a job samples with seed(t) = the job's seed for
 * t = 0, samp_derive_seed(seed, t) otherwise, so a job's text depends only
 * on its request, not on what else shares the batch. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "answer.h"
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
	int max_seqs;
	struct seq_ref *seq_map;     /* (max_seqs)                             */
	struct eng_token *out;       /* (max_seqs)                             */
	int reserved;                /* threads reserved by running jobs       */
	int step_budget;             /* min(SCHED_STEP_SEQS, max_seqs - 1)     */
	int kv_blocked;              /* admission waits for a job to end       */
	int32_t eos[MCFG_MAX_EOS + 1];
	int n_eos;
	int max_position;
	unsigned long long steps, tokens_total, jobs_done, jobs_failed;
	double step_ms_avg, overhead_ms_avg;
	int64_t win_start_ms;
	unsigned long long win_tokens, prev_win_tokens;
	int64_t prev_win_ms;
	double tokens_per_s;
};

static double
now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

struct sched_params
sched_default_params(void)
{
	struct sched_params p = { .max_running = 32, .max_queue = 256, .max_threads_per_job = 64,
				  .max_tokens = 4096 };
	return p;
}

/* ---- events (engine thread, except job.queued) ----------------------------------- */

static void
publish(sched *s, struct sjob *j, enum ev_type type, int thread, json_t *payload)
{
	struct ev *e = ev_new(type, j->req.id, j->next_seq++, thread, payload);
	if (!e)
		return;   /* out of memory: the event is lost, the job goes on */
	bus_publish(s->bus, e);
	ev_unref(e);
}

/* ---- thread text ------------------------------------------------------------------ */

static int
text_append(struct sthread *t, const char *p, size_t n)
{
	if (t->len + n + 1 > t->cap) {
		size_t cap = t->cap ? t->cap : 256;
		while (cap < t->len + n + 1)
			cap *= 2;
		char *np = realloc(t->text, cap);
		if (!np)
			return ENG_ERR_NOMEM;
		t->text = np;
		t->cap = cap;
	}
	memcpy(t->text + t->len, p, n);
	t->len += n;
	t->text[t->len] = '\0';
	return 0;
}

/* ---- job lifetime (engine thread) --------------------------------------------------- */

static void
job_free(struct sjob *j)
{
	if (!j)
		return;
	if (j->st && j->st_state)
		j->st->destroy(j->st_state);
	for (int i = 0; i < j->n_threads; i++) {
		free(j->t[i].text);
		free(j->t[i].answer);
		tok_stream_free(j->t[i].ts);
	}
	free(j->t);
	free(j->prompt);
	free(j->answer);
	json_decref(j->votes);
	job_req_free(&j->req);
	free(j);
}

/* Drop j from the running list (under the mutex) and free it. */
static void
job_retire(sched *s, struct sjob *j)
{
	pthread_mutex_lock(&s->mu);
	for (int i = 0; i < s->n_run; i++) {
		if (s->run[i] == j) {
			memmove(&s->run[i], &s->run[i + 1], (size_t)(s->n_run - i - 1) * sizeof *s->run);
			s->n_run--;
			break;
		}
	}
	pthread_mutex_unlock(&s->mu);
	s->reserved -= j->req.n;
	s->kv_blocked = 0;
	job_free(j);
}

/* End thread i: free its sequence, flush its decoder, extract its answer and
 * publish thread.pruned (prune_reason set) or thread.done. */
static void
thread_end(sched *s, struct sjob *j, int i, const char *finish, const char *prune_reason)
{
	struct sthread *t = &j->t[i];
	if (t->seq < 0)
		return;
	eng_seq_free(s->e, t->seq);
	if (t->seq < s->max_seqs)
		s->seq_map[t->seq].job = NULL;
	t->seq = -1;
	j->n_live--;
	char tail[64];
	size_t n = 0;
	if (t->ts && tok_stream_flush(t->ts, tail, sizeof tail, &n) == 0 && n)
		text_append(t, tail, n);
	t->finish = finish;
	if (prune_reason) {
		publish(s, j, EV_THREAD_PRUNED, i, json_pack("{s:s}", "reason", prune_reason));
		return;
	}
	t->answer = ans_extract(t->text ? t->text : "");
	publish(s, j, EV_THREAD_DONE, i,
		json_pack("{s:s, s:s?, s:i, s:s}", "finish_reason", finish, "answer", t->answer,
			  "tokens", t->tokens, "text", t->text ? t->text : ""));
	if (strcmp(finish, "cancelled") != 0)
		t->done_pending = 1;
}

/* The job counters in the snapshot move before a job's last event goes
 * out, so a client that saw job.done reads counters that include it. */
static void
stats_job_ended(sched *s)
{
	pthread_mutex_lock(&s->mu);
	s->stats.jobs_done = s->jobs_done;
	s->stats.jobs_failed = s->jobs_failed;
	pthread_mutex_unlock(&s->mu);
}

/* Stop every live thread of j with finish_reason. */
static void
job_stop_threads(sched *s, struct sjob *j, const char *finish)
{
	for (int i = 0; i < j->n_threads; i++)
		thread_end(s, j, i, finish, NULL);
	if (j->prompt_seq >= 0) {
		eng_seq_free(s->e, j->prompt_seq);
		j->prompt_seq = -1;
	}
}

/* Fail a running (or just dequeued) job: free its sequences, publish
 * job.failed, free it. */
static void
job_fail(sched *s, struct sjob *j, const char *reason)
{
	job_stop_threads(s, j, "cancelled");
	s->jobs_failed++;
	stats_job_ended(s);
	publish(s, j, EV_JOB_FAILED, -1, json_pack("{s:s}", "reason", reason));
	if (j->state == JOB_RUNNING)
		job_retire(s, j);
	else
		job_free(j);
}

/* The strategy finished the job: publish job.done and free it. */
static void
job_complete(sched *s, struct sjob *j)
{
	json_t *threads = json_array();
	long long tokens = 0;
	for (int i = 0; i < j->n_threads; i++) {
		struct sthread *t = &j->t[i];
		tokens += t->tokens;
		json_array_append_new(threads, json_pack("{s:i, s:s?, s:i, s:s?}", "thread", i,
							 "answer", t->answer, "tokens", t->tokens,
							 "finish_reason", t->finish));
	}
	s->jobs_done++;
	stats_job_ended(s);
	json_t *votes = j->votes ? json_incref(j->votes) : json_object();
	publish(s, j, EV_JOB_DONE, -1,
		json_pack("{s:s?, s:o, s:I, s:i, s:I, s:o}", "answer", j->answer, "votes", votes,
			  "tokens", (json_int_t)tokens, "prompt_tokens", j->n_prompt, "ms",
			  (json_int_t)(ev_now_ms() - j->t_submit_ms), "threads", threads));
	job_retire(s, j);
}

/* Settle j after anything happened to it: owe the strategy its thread_done
 * calls, ask it to go on when nothing is live, and complete or fail the
 * job.  Returns 1 if j was freed. */
static int
job_progress(sched *s, struct sjob *j)
{
	int idled = 0;
	for (;;) {
		if (j->error) {
			job_fail(s, j, j->fail_reason);
			return 1;
		}
		if (j->finished) {
			job_stop_threads(s, j, "stop");
			job_complete(s, j);
			return 1;
		}
		int i;
		for (i = 0; i < j->n_threads && !j->t[i].done_pending; i++)
			;
		if (i < j->n_threads) {
			j->t[i].done_pending = 0;
			int rc = j->st->thread_done(j->st_state, &j->api, i, j->t[i].answer,
						    j->t[i].finish);
			if (rc < 0 && !j->error) {
				j->error = 1;
				snprintf(j->fail_reason, sizeof j->fail_reason, "strategy %s: %s",
					 j->st->name, eng_strerror(rc));
			}
			continue;
		}
		if (j->n_live > 0)
			return 0;
		if (idled) {
			j->error = 1;
			snprintf(j->fail_reason, sizeof j->fail_reason,
				 "strategy %s made no progress", j->st->name);
			continue;
		}
		idled = 1;
		int rc = j->st->idle(j->st_state, &j->api);
		if (rc < 0 && !j->error) {
			j->error = 1;
			snprintf(j->fail_reason, sizeof j->fail_reason, "strategy %s: %s", j->st->name,
				 rc == ENG_ERR_NO_KV ? "out of KV cache memory" : eng_strerror(rc));
		}
	}
}

/* ---- the strategy API (engine thread, inside hooks) ------------------------------------ */

static uint64_t
thread_seed(const struct sjob *j, int t)
{
	return t == 0 ? j->req.sampling.seed : samp_derive_seed(j->req.sampling.seed, (uint64_t)t);
}

/* A fresh sequence holding the prompt, prefilled.  Returns its id or an
 * error. */
static int
prompt_seq_new(sched *s, struct sjob *j)
{
	int seq = eng_seq_new(s->e, j->prompt, j->n_prompt, &j->req.sampling);
	if (seq < 0)
		return seq;
	int rc = eng_seq_prefill(s->e, seq, NULL);
	if (rc < 0) {
		eng_seq_free(s->e, seq);
		return rc;
	}
	return seq;
}

static int
api_spawn(void *ctx, int n, int parent)
{
	struct sjob *j = ctx;
	sched *s = j->s;
	int *kids = NULL, src = -1, tmp = -1, rc, first = j->n_threads;

	if (n < 1 || parent < -1 || parent >= j->n_threads || j->finished)
		return ENG_ERR_INVALID;
	if (parent >= 0 && j->t[parent].seq < 0)
		return ENG_ERR_INVALID;
	if (j->n_threads + n > j->req.n)
		return ENG_ERR_RANGE;
	if (j->n_threads + n > j->cap_threads) {
		struct sthread *nt = realloc(j->t, (size_t)(j->n_threads + n) * sizeof *nt);
		if (!nt)
			return ENG_ERR_NOMEM;
		j->t = nt;
		j->cap_threads = j->n_threads + n;
	}
	if (!(kids = malloc((size_t)n * sizeof *kids)))
		return ENG_ERR_NOMEM;
	if (parent >= 0) {
		src = j->t[parent].seq;
	} else if (j->prompt_seq >= 0) {
		src = j->prompt_seq;
	} else {
		/* the prompt sequence is gone once start returns: prefill it again */
		if ((rc = tmp = prompt_seq_new(s, j)) < 0)
			goto out;
		src = tmp;
	}
	if ((rc = eng_seq_fork(s->e, src, n, kids)) < 0)
		goto out;
	for (int k = 0; k < n; k++) {
		int i = j->n_threads++;
		struct sthread *t = &j->t[i];
		memset(t, 0, sizeof *t);
		t->seq = kids[k];
		t->parent = parent;
		t->ts = tok_stream_new(eng_tokenizer(s->e));
		struct samp_params sp = j->req.sampling;
		sp.seed = thread_seed(j, i);
		eng_seq_set_sampling(s->e, kids[k], &sp);
		if (parent >= 0) {
			t->tokens = j->t[parent].tokens;
			if (j->t[parent].len)
				text_append(t, j->t[parent].text, j->t[parent].len);
		}
		if (kids[k] < s->max_seqs)
			s->seq_map[kids[k]] = (struct seq_ref){ j, i };
		j->n_live++;
		if (!t->ts) {
			/* out of memory: keep the invariants, end it at once */
			thread_end(s, j, i, "stop", NULL);
			continue;
		}
		publish(s, j, EV_THREAD_SPAWNED, i,
			json_pack("{s:i, s:i}", "parent", parent, "at_token",
				  parent >= 0 ? j->t[parent].tokens : 0));
	}
	rc = first;
out:
	if (tmp >= 0)
		eng_seq_free(s->e, tmp);
	free(kids);
	return rc;
}

static int
api_stop(void *ctx, int thread, const char *reason)
{
	struct sjob *j = ctx;
	if (thread < 0 || thread >= j->n_threads)
		return ENG_ERR_NOT_FOUND;
	if (j->t[thread].seq < 0)
		return ENG_ERR_INVALID;
	thread_end(j->s, j, thread, "stop", reason);
	return 0;
}

static int
api_inject(void *ctx, int thread, const char *text)
{
	struct sjob *j = ctx;
	sched *s = j->s;
	int32_t *ids = NULL;
	size_t n = 0;
	if (thread < 0 || thread >= j->n_threads)
		return ENG_ERR_NOT_FOUND;
	if (j->t[thread].seq < 0 || !text)
		return ENG_ERR_INVALID;
	int rc = tok_encode(eng_tokenizer(s->e), text, strlen(text), 0, &ids, &n);
	if (rc < 0)
		return rc;
	if (n > 0 && (rc = eng_seq_append(s->e, j->t[thread].seq, ids, (int)n)) == 0)
		rc = text_append(&j->t[thread], text, strlen(text));
	free(ids);
	return rc;
}

static int
api_finish(void *ctx, const char *answer, json_t *votes)
{
	struct sjob *j = ctx;
	if (j->finished) {
		json_decref(votes);
		return ENG_ERR_INVALID;
	}
	j->finished = 1;
	j->votes = votes;
	if (answer && !(j->answer = strdup(answer)))
		return ENG_ERR_NOMEM;
	return 0;
}

static int
api_emit(void *ctx, enum ev_type type, int thread, json_t *payload)
{
	struct sjob *j = ctx;
	if ((unsigned)type >= EV_N_TYPES || thread < -1 || thread >= j->n_threads) {
		json_decref(payload);
		return ENG_ERR_INVALID;
	}
	publish(j->s, j, type, thread, payload);
	return 0;
}

static const char *
api_text(void *ctx, int thread)
{
	struct sjob *j = ctx;
	if (thread < 0 || thread >= j->n_threads)
		return NULL;
	return j->t[thread].text ? j->t[thread].text : "";
}

static int
api_tokens(void *ctx, int thread)
{
	struct sjob *j = ctx;
	return thread >= 0 && thread < j->n_threads ? j->t[thread].tokens : ENG_ERR_NOT_FOUND;
}

static int
api_live(void *ctx, int thread)
{
	struct sjob *j = ctx;
	return thread >= 0 && thread < j->n_threads && j->t[thread].seq >= 0;
}

static int
api_n_threads(void *ctx)
{
	return ((struct sjob *)ctx)->n_threads;
}

static const struct strat_api api_base = {
	.spawn = api_spawn, .stop = api_stop,	      .inject = api_inject, .finish = api_finish,
	.emit = api_emit,   .text = api_text,	      .tokens = api_tokens, .live = api_live,
	.n_threads = api_n_threads,
};

/* ---- admission (engine thread) --------------------------------------------------------- */

/* Tokenize j's prompt into j->prompt.  0, or an error with reason set. */
static int
build_prompt(sched *s, struct sjob *j)
{
	const tok *tk = eng_tokenizer(s->e);
	enum chat_format fmt = eng_chat_format(s->e);
	struct chat_msg *msgs = NULL;
	size_t n = 0;
	char *text = NULL;
	int32_t *ids = NULL;
	size_t n_ids = 0;
	int rc = ENG_ERR_INVALID;

	if (!tk) {
		snprintf(j->fail_reason, sizeof j->fail_reason, "the model has no tokenizer");
		goto out;
	}
	if (j->req.messages) {
		size_t m = json_array_size(j->req.messages);
		if (!m || !(msgs = calloc(m, sizeof *msgs))) {
			snprintf(j->fail_reason, sizeof j->fail_reason, "messages: empty");
			goto out;
		}
		for (n = 0; n < m; n++) {
			json_t *msg = json_array_get(j->req.messages, n);
			msgs[n].role = json_string_value(json_object_get(msg, "role"));
			msgs[n].content = json_string_value(json_object_get(msg, "content"));
			if (!msgs[n].role || !msgs[n].content) {
				snprintf(j->fail_reason, sizeof j->fail_reason,
					 "messages[%zu]: role and content must be strings", n);
				goto out;
			}
		}
		rc = chat_render(fmt, msgs, n, 1, tok_bos_token(tk), &text);
	} else if (fmt != CHAT_NONE) {
		struct chat_msg two[2];
		if (j->req.system)
			two[n++] = (struct chat_msg){ "system", j->req.system };
		two[n++] = (struct chat_msg){ "user", j->req.question ? j->req.question : "" };
		rc = chat_render(fmt, two, n, 1, tok_bos_token(tk), &text);
	} else {
		/* plain text: system, a blank line, the question, a newline */
		const char *sys = j->req.system ? j->req.system : "";
		const char *q = j->req.question ? j->req.question : "";
		size_t len = strlen(sys) + strlen(q) + 4;
		rc = ENG_ERR_NOMEM;
		if (!(text = malloc(len)))
			goto out;
		snprintf(text, len, "%s%s%s\n", sys, *sys ? "\n\n" : "", q);
		rc = 0;
	}
	if (rc < 0) {
		snprintf(j->fail_reason, sizeof j->fail_reason, "cannot render the prompt: %s",
			 eng_strerror(rc));
		goto out;
	}
	/* the template's special tokens are parsed; plain text stays text */
	if ((rc = tok_encode(tk, text, strlen(text), fmt != CHAT_NONE, &ids, &n_ids)) < 0) {
		snprintf(j->fail_reason, sizeof j->fail_reason, "cannot tokenize the prompt: %s",
			 eng_strerror(rc));
		goto out;
	}
	rc = ENG_ERR_INVALID;
	if (n_ids == 0) {
		snprintf(j->fail_reason, sizeof j->fail_reason, "empty prompt");
		goto out;
	}
	if (s->max_position > 0 && n_ids >= (size_t)s->max_position) {
		snprintf(j->fail_reason, sizeof j->fail_reason,
			 "prompt too long: %zu tokens, the model's context is %d", n_ids,
			 s->max_position);
		goto out;
	}
	j->prompt = ids;
	j->n_prompt = (int)n_ids;
	ids = NULL;
	rc = 0;
out:
	free(ids);
	free(text);
	free(msgs);
	return rc;
}

/* Start an admitted job (already in s->run).  Returns 1 when it must go
 * back to the head of the queue (the cache is full for now). */
static int
job_start(sched *s, struct sjob *j)
{
	int rc;
	if (!j->prompt && build_prompt(s, j) < 0) {
		job_fail(s, j, j->fail_reason);
		return 0;
	}
	if ((rc = j->prompt_seq = prompt_seq_new(s, j)) < 0) {
		j->prompt_seq = -1;
		if (rc == ENG_ERR_NO_KV && s->n_run > 1)
			return 1;
		job_fail(s, j, rc == ENG_ERR_NO_KV ? "out of KV cache memory" : eng_strerror(rc));
		return 0;
	}
	publish(s, j, EV_JOB_STARTED, -1,
		json_pack("{s:i, s:s, s:i}", "prompt_tokens", j->n_prompt, "strategy", j->st->name,
			  "n", j->req.n));
	rc = j->st->start(j->st_state, &j->api);
	eng_seq_free(s->e, j->prompt_seq);
	j->prompt_seq = -1;
	if (rc < 0 && !j->error) {
		j->error = 1;
		snprintf(j->fail_reason, sizeof j->fail_reason, "strategy %s: %s", j->st->name,
			 rc == ENG_ERR_NO_KV ? "out of KV cache memory" : eng_strerror(rc));
	}
	job_progress(s, j);
	return 0;
}

/* ---- the engine thread -------------------------------------------------------------------- */

static int
is_eos(const sched *s, int32_t id)
{
	for (int i = 0; i < s->n_eos; i++)
		if (s->eos[i] == id)
			return 1;
	return 0;
}

/* Route one sampled token to its thread. */
static void
on_token(sched *s, struct sjob *j, int i, const struct samp_result *r)
{
	struct sthread *t = &j->t[i];
	char piece[SCHED_PIECE], *big = NULL, *p = piece;
	size_t n = 0, m = 0;
	const char *finish = NULL;

	t->tokens++;
	int eos = is_eos(s, r->token);
	if (!eos && tok_stream_push(t->ts, r->token, piece, sizeof piece, &n) == ENG_ERR_RANGE) {
		/* a very long token piece: one retry with room for anything */
		if ((big = malloc(1 << 16)) && tok_stream_push(t->ts, r->token, big, 1 << 16, &n) == 0)
			p = big;
		else
			n = 0;
	}
	if (eos)
		finish = "eos";
	else if (t->tokens >= j->max_tokens)
		finish = "length";
	else if (s->max_position > 0 && eng_seq_len(s->e, t->seq) >= s->max_position)
		finish = "length";
	if (n)
		text_append(t, p, n);
	if (finish && tok_stream_flush(t->ts, piece + n, sizeof piece - n, &m) == 0 && m && p == piece) {
		text_append(t, piece + n, m);
		n += m;
	}
	json_t *payload = json_pack("{s:s%, s:i, s:f, s:f}", "text", p, n, "tokens", t->tokens,
				    "logprob", (double)r->logprob, "entropy", (double)r->entropy);
	publish(s, j, EV_THREAD_DELTA, i, payload);
	free(big);
	if (j->st->token) {
		int rc = j->st->token(j->st_state, &j->api, i, r);
		if (rc < 0 && !j->error) {
			j->error = 1;
			snprintf(j->fail_reason, sizeof j->fail_reason, "strategy %s: %s", j->st->name,
				 eng_strerror(rc));
		}
	}
	if (finish && j->t[i].seq >= 0 && !j->finished)
		thread_end(s, j, i, finish, NULL);
}

/* The newest running job that has live threads, or NULL. */
static struct sjob *
newest_live_job(sched *s)
{
	for (int i = s->n_run - 1; i >= 0; i--)
		if (s->run[i]->n_live > 0)
			return s->run[i];
	return NULL;
}

/* One engine step over every live thread, then route the tokens.  Returns
 * the step's duration in ms. */
static double
step_once(sched *s)
{
	int n_out = 0, rc;
	double t0 = now_ms();
	while ((rc = eng_step(s->e, s->out, s->max_seqs, &n_out)) == ENG_ERR_NO_KV) {
		struct sjob *victim = newest_live_job(s);
		if (!victim)
			break;
		job_fail(s, victim, "out of KV cache memory");
	}
	double dt = now_ms() - t0;
	if (rc < 0) {
		char reason[128];
		snprintf(reason, sizeof reason, "engine step failed: %s", eng_strerror(rc));
		while (s->n_run > 0)
			job_fail(s, s->run[s->n_run - 1], reason);
		return dt;
	}
	if (n_out == 0)
		return dt;
	s->steps++;
	s->tokens_total += (unsigned long long)n_out;
	s->win_tokens += (unsigned long long)n_out;
	s->step_ms_avg = s->steps == 1 ? dt : 0.9 * s->step_ms_avg + 0.1 * dt;

	/* Map every token to its thread first: hooks may free and reuse
	 * sequence ids while the tokens are routed. */
	struct seq_ref *refs = malloc((size_t)n_out * sizeof *refs);
	if (!refs) {
		while (s->n_run > 0)
			job_fail(s, s->run[s->n_run - 1], "out of memory");
		return dt;
	}
	for (int k = 0; k < n_out; k++) {
		int seq = s->out[k].seq;
		refs[k] = seq >= 0 && seq < s->max_seqs ? s->seq_map[seq] : (struct seq_ref){ 0 };
	}
	for (int k = 0; k < n_out; k++) {
		struct sjob *j = refs[k].job;
		if (!j || j->finished || j->error || j->t[refs[k].thread].seq != s->out[k].seq)
			continue;
		on_token(s, j, refs[k].thread, &s->out[k].r);
	}
	free(refs);
	for (int i = 0; i < s->n_run;)
		if (!job_progress(s, s->run[i]))
			i++;
	return dt;
}

/* Take an admitted job back out of the running list (under the mutex). */
static void
unadmit_locked(sched *s, struct sjob *j)
{
	for (int i = 0; i < s->n_run; i++)
		if (s->run[i] == j) {
			memmove(&s->run[i], &s->run[i + 1], (size_t)(s->n_run - i - 1) * sizeof *s->run);
			s->n_run--;
			break;
		}
	s->reserved -= j->req.n;
	j->state = JOB_QUEUED;
	s->n_queued++;
}

/* Take the commands under the mutex - cancelled queued jobs are unlinked,
 * cancelled running ones marked, queued ones admitted - then act on them
 * outside it.  *prefill_ms: time spent starting jobs. */
static void
apply_commands(sched *s, double *prefill_ms)
{
	struct sjob *cancelled = NULL, *admit = NULL, **admit_tail = &admit;
	int any_cancel = 0;

	pthread_mutex_lock(&s->mu);
	if (s->cancel_pending) {
		s->cancel_pending = 0;
		any_cancel = 1;
		for (struct sjob **pp = &s->q_head; *pp;) {
			struct sjob *j = *pp;
			if (j->cancel) {
				*pp = j->qnext;
				s->n_queued--;
				j->qnext = cancelled;
				cancelled = j;
			} else {
				pp = &j->qnext;
			}
		}
		s->q_tail = NULL;
		for (struct sjob *j = s->q_head; j; j = j->qnext)
			s->q_tail = j;
		for (int i = 0; i < s->n_run; i++)
			s->run[i]->cancel_now = s->run[i]->cancel;
	}
	while (s->q_head && !s->kv_blocked && s->n_run < s->p.max_running &&
	       (s->n_run == 0 || s->reserved + s->q_head->req.n <= s->step_budget)) {
		if (s->n_run == s->cap_run) {
			int cap = s->cap_run ? 2 * s->cap_run : 16;
			struct sjob **nr = realloc(s->run, (size_t)cap * sizeof *nr);
			if (!nr)
				break;
			s->run = nr;
			s->cap_run = cap;
		}
		struct sjob *j = s->q_head;
		s->q_head = j->qnext;
		if (!s->q_head)
			s->q_tail = NULL;
		s->n_queued--;
		j->qnext = NULL;
		j->state = JOB_RUNNING;
		s->run[s->n_run++] = j;
		s->reserved += j->req.n;
		*admit_tail = j;
		admit_tail = &j->qnext;
	}
	pthread_mutex_unlock(&s->mu);

	for (struct sjob *j = cancelled, *next; j; j = next) {
		next = j->qnext;
		job_fail(s, j, "cancelled");
	}
	if (any_cancel)
		for (int i = 0; i < s->n_run;) {
			if (s->run[i]->cancel_now)
				job_fail(s, s->run[i], "cancelled");
			else
				i++;
		}
	double t0 = now_ms();
	for (struct sjob *j = admit, *next; j; j = next) {
		next = j->qnext;
		j->qnext = NULL;
		if (!job_start(s, j))
			continue;
		/* The cache is full for now: j and the rest of this batch go
		 * back to the head of the queue, in order, until a job ends. */
		pthread_mutex_lock(&s->mu);
		j->qnext = next;
		struct sjob *last = j;
		for (struct sjob *k = j; k; k = k->qnext) {
			unadmit_locked(s, k);
			last = k;
		}
		last->qnext = s->q_head;
		if (!s->q_head)
			s->q_tail = last;
		s->q_head = j;
		s->kv_blocked = 1;
		pthread_mutex_unlock(&s->mu);
		break;
	}
	*prefill_ms = now_ms() - t0;
}

/* Publish the stats snapshot (engine thread). */
static void
update_stats(sched *s, double overhead_ms, int stepped)
{
	int64_t now = ev_now_ms();
	if (stepped) {
		s->overhead_ms_avg = s->steps <= 1 ? overhead_ms : 0.9 * s->overhead_ms_avg + 0.1 * overhead_ms;
	}
	/* tokens/s over the current window and the one before it (2 s each) */
	if (!s->win_start_ms)
		s->win_start_ms = now;
	if (now - s->win_start_ms >= 2000) {
		s->prev_win_tokens = s->win_tokens;
		s->prev_win_ms = now - s->win_start_ms;
		s->win_tokens = 0;
		s->win_start_ms = now;
	}
	int64_t span = s->prev_win_ms + (now - s->win_start_ms);
	s->tokens_per_s = span > 0 ? (double)(s->prev_win_tokens + s->win_tokens) * 1000.0 / (double)span : 0;
	int live = 0;
	for (int i = 0; i < s->n_run; i++)
		live += s->run[i]->n_live;
	int total = eng_kv_blocks_total(s->e), used = total - eng_kv_blocks_free(s->e);
	pthread_mutex_lock(&s->mu);
	s->stats.queued = s->n_queued;
	s->stats.running = s->n_run;
	s->stats.live_threads = live;
	s->stats.kv_blocks_used = used;
	s->stats.kv_blocks_total = total;
	s->stats.steps = s->steps;
	s->stats.tokens_total = s->tokens_total;
	s->stats.jobs_done = s->jobs_done;
	s->stats.jobs_failed = s->jobs_failed;
	s->stats.tokens_per_s = s->tokens_per_s;
	s->stats.step_ms_avg = s->step_ms_avg;
	s->stats.overhead_ms_avg = s->overhead_ms_avg;
	if (stepped)
		s->last_step_ms = now;
	pthread_mutex_unlock(&s->mu);
}

static void *
engine_main(void *arg)
{
	sched *s = arg;
	char err[ENG_ERRLEN] = "";
	struct eng_params ep = s->ep;

	s->e = eng_create(&ep, err, sizeof err);
	if (s->e) {
		s->max_seqs = ep.max_seqs > 0 ? ep.max_seqs : 1024;
		/* one sequence stays free for a prompt being forked */
		s->step_budget = s->max_seqs - 1 < SCHED_STEP_SEQS ? s->max_seqs - 1 : SCHED_STEP_SEQS;
		s->seq_map = calloc((size_t)s->max_seqs, sizeof *s->seq_map);
		s->out = calloc((size_t)s->max_seqs, sizeof *s->out);
		if (!s->seq_map || !s->out) {
			snprintf(err, sizeof err, "%s: out of memory", ep.model_dir ? ep.model_dir : "model");
			eng_destroy(s->e);
			s->e = NULL;
		}
	}
	if (s->e) {
		const struct model_config *cfg = eng_config(s->e);
		const tok *tk = eng_tokenizer(s->e);
		for (int i = 0; i < cfg->n_eos && s->n_eos < MCFG_MAX_EOS; i++)
			s->eos[s->n_eos++] = cfg->eos_ids[i];
		if (tk && tok_eos_id(tk) >= 0 && !is_eos(s, tok_eos_id(tk)))
			s->eos[s->n_eos++] = tok_eos_id(tk);
		s->max_position = cfg->max_position;
		update_stats(s, 0, 0);
	}
	pthread_mutex_lock(&s->mu);
	s->ready = s->e ? 1 : -1;
	if (!s->e)
		snprintf(s->err, sizeof s->err, "%s", err);
	pthread_cond_broadcast(&s->ready_cv);
	pthread_mutex_unlock(&s->mu);
	if (!s->e)
		return NULL;

	for (;;) {
		pthread_mutex_lock(&s->mu);
		while (!s->stop && !s->cancel_pending && s->n_run == 0 && !s->q_head)
			pthread_cond_wait(&s->cv, &s->mu);
		int stop = s->stop;
		pthread_mutex_unlock(&s->mu);
		if (stop)
			break;

		double t0 = now_ms(), prefill_ms = 0, step_ms = 0;
		apply_commands(s, &prefill_ms);
		int stepped = 0;
		for (int i = 0; i < s->n_run && !stepped; i++)
			stepped = s->run[i]->n_live > 0;
		if (stepped)
			step_ms = step_once(s);
		double overhead = now_ms() - t0 - step_ms - prefill_ms;
		update_stats(s, overhead < 0 ? 0 : overhead, stepped);
	}

	/* shutdown: every job fails, nothing stays in the cache */
	while (s->n_run > 0)
		job_fail(s, s->run[s->n_run - 1], "shutdown");
	pthread_mutex_lock(&s->mu);
	struct sjob *q = s->q_head;
	s->q_head = s->q_tail = NULL;
	s->n_queued = 0;
	pthread_mutex_unlock(&s->mu);
	for (struct sjob *next; q; q = next) {
		next = q->qnext;
		job_fail(s, q, "shutdown");
	}
	update_stats(s, 0, 0);
	return NULL;
}

/* ---- the public calls (any thread) ------------------------------------------------------- */

sched *
sched_create(const struct eng_params *ep, bus *b, const struct sched_params *p, char *err,
	     size_t errlen)
{
	sched *s = NULL;
	if (!ep || !b) {
		eng_seterr(err, errlen, ENG_ERR_INVALID, "sched_create: no engine parameters or bus");
		return NULL;
	}
	if (!(s = calloc(1, sizeof *s))) {
		eng_seterr(err, errlen, ENG_ERR_NOMEM, "sched_create: out of memory");
		return NULL;
	}
	struct sched_params d = sched_default_params();
	s->p = p ? *p : d;
	if (s->p.max_running <= 0)
		s->p.max_running = d.max_running;
	if (s->p.max_queue <= 0)
		s->p.max_queue = d.max_queue;
	if (s->p.max_threads_per_job <= 0)
		s->p.max_threads_per_job = d.max_threads_per_job;
	if (s->p.max_threads_per_job > SCHED_STEP_SEQS)
		s->p.max_threads_per_job = SCHED_STEP_SEQS;
	if (s->p.max_tokens <= 0)
		s->p.max_tokens = d.max_tokens;
	s->bus = b;
	s->ep = *ep;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	pthread_cond_init(&s->ready_cv, NULL);
	if (pthread_create(&s->thread, NULL, engine_main, s) != 0) {
		eng_seterr(err, errlen, ENG_ERR_NOMEM, "sched_create: cannot start the engine thread");
		goto fail;
	}
	s->thread_started = 1;
	pthread_mutex_lock(&s->mu);
	while (!s->ready)
		pthread_cond_wait(&s->ready_cv, &s->mu);
	pthread_mutex_unlock(&s->mu);
	if (s->ready < 0) {
		eng_seterr(err, errlen, ENG_ERR_IO, "%s", s->err);
		goto fail;
	}
	return s;
fail:
	if (s->thread_started)
		pthread_join(s->thread, NULL);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	pthread_cond_destroy(&s->ready_cv);
	free(s->seq_map);
	free(s->out);
	free(s);
	return NULL;
}

void
sched_destroy(sched *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->mu);
	s->stop = 1;
	pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->mu);
	pthread_join(s->thread, NULL);
	eng_destroy(s->e);
	free(s->run);
	free(s->seq_map);
	free(s->out);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	pthread_cond_destroy(&s->ready_cv);
	free(s);
}

const eng *
sched_engine(const sched *s)
{
	return s ? s->e : NULL;
}

const struct sched_params *
sched_params(const sched *s)
{
	return s ? &s->p : NULL;
}

/* A live job with this id (queued or running), under the mutex. */
static struct sjob *
find_locked(sched *s, const char *id)
{
	for (struct sjob *j = s->q_head; j; j = j->qnext)
		if (strcmp(j->req.id, id) == 0)
			return j;
	for (int i = 0; i < s->n_run; i++)
		if (strcmp(s->run[i]->req.id, id) == 0)
			return s->run[i];
	return NULL;
}

int
sched_submit(sched *s, struct job_req *req, char *err, size_t errlen)
{
	struct sjob *j = NULL;
	int rc;

	if (!s || !req)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "no scheduler or request");
	const struct strategy *st = strat_find(req->strategy);
	if (!st)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "strategy: unknown strategy \"%.32s\"",
				  req->strategy);
	if (req->n < 1 || req->n > s->p.max_threads_per_job)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "n: must be in [1, %d], got %d",
				  s->p.max_threads_per_job, req->n);
	if (req->max_tokens < 1 || req->max_tokens > s->p.max_tokens)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "max_tokens: must be in [1, %d], got %d",
				  s->p.max_tokens, req->max_tokens);
	if (!req->messages && !req->question)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "question: missing");
	if (!req->id[0])
		job_new_id(req->id);
	else if (!job_id_valid(req->id))
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "id: not a valid job id");
	if (!(j = calloc(1, sizeof *j)))
		return eng_seterr(err, errlen, ENG_ERR_NOMEM, "out of memory");
	j->s = s;
	j->st = st;
	j->prompt_seq = -1;
	j->max_tokens = req->max_tokens;
	j->api = api_base;
	j->api.ctx = j;
	if ((rc = st->init(req, &j->st_state, err, errlen)) < 0) {
		free(j);
		return rc;
	}

	pthread_mutex_lock(&s->mu);
	if (s->stop) {
		rc = eng_seterr(err, errlen, ENG_ERR_RANGE, "the scheduler is shutting down");
		goto unlock_fail;
	}
	if (s->n_queued >= s->p.max_queue) {
		rc = eng_seterr(err, errlen, ENG_ERR_RANGE, "queue full (%d jobs waiting)", s->n_queued);
		goto unlock_fail;
	}
	if (find_locked(s, req->id)) {
		rc = eng_seterr(err, errlen, ENG_ERR_INVALID, "id: job %s already exists", req->id);
		goto unlock_fail;
	}
	j->req = *req;
	job_req_init(req);
	memcpy(req->id, j->req.id, sizeof req->id);
	j->t_submit_ms = ev_now_ms();
	/* job.queued goes out before the engine thread can see the job, so
	 * the job's seq 0 is always this event */
	publish(s, j, EV_JOB_QUEUED, -1, json_pack("{s:o}", "request", job_req_to_json(&j->req)));
	if (s->q_tail)
		s->q_tail->qnext = j;
	else
		s->q_head = j;
	s->q_tail = j;
	s->n_queued++;
	s->stats.queued = s->n_queued;
	pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->mu);
	return 0;

unlock_fail:
	pthread_mutex_unlock(&s->mu);
	st->destroy(j->st_state);
	free(j);
	return rc;
}

int
sched_cancel(sched *s, const char *job_id)
{
	if (!s || !job_id)
		return ENG_ERR_INVALID;
	pthread_mutex_lock(&s->mu);
	struct sjob *j = find_locked(s, job_id);
	if (j) {
		j->cancel = 1;
		s->cancel_pending = 1;
		pthread_cond_signal(&s->cv);
	}
	pthread_mutex_unlock(&s->mu);
	return j ? 0 : ENG_ERR_NOT_FOUND;
}

void
sched_stats(sched *s, struct sched_stats *out)
{
	if (!s || !out)
		return;
	pthread_mutex_lock(&s->mu);
	*out = s->stats;
	out->queued = s->n_queued;
	out->running = s->n_run;
	if (ev_now_ms() - s->last_step_ms > 3000)
		out->tokens_per_s = 0;   /* idle: the last window is stale */
	pthread_mutex_unlock(&s->mu);
}
