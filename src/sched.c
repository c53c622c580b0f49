/* sched.c - the scheduler: the engine thread admits jobs, drives their
 * strategies and runs one batched engine step for every live thread of
 * every running job; sched_submit/sched_cancel/sched_stats run on any
 * thread and only touch the mutex-guarded command state.  Jobs, threads
 * and the strategy API are in sched_job.c.
 *
 * Fair share.  eng_step advances every live sequence, so sharing is decided
 * at admission: jobs leave the queue in FIFO order while fewer than
 * max_running run and their threads fit the step budget (SCHED_STEP_SEQS
 * sequences, fewer if the engine allows fewer; each admitted job reserves
 * its n, and a job is always admitted when nothing runs); the head of the queue is
 * never overtaken by a smaller job behind it, so a wide job cannot starve.
 * Once admitted, every thread of every running job gets exactly one token
 * per step. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sched_impl.h"

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

/* ---- the running list (engine thread) --------------------------------------------------- */

/* Take j out of the running list and release its reservation (under the
 * mutex). */
static void
run_remove_locked(sched *s, struct sjob *j)
{
	for (int i = 0; i < s->n_run; i++) {
		if (s->run[i] == j) {
			memmove(&s->run[i], &s->run[i + 1], (size_t)(s->n_run - i - 1) * sizeof *s->run);
			s->n_run--;
			break;
		}
	}
	s->reserved -= j->req.n;
}

static void update_stats(sched *s, double overhead_ms, int stepped);

void
sched_retire(sched *s, struct sjob *j)
{
	pthread_mutex_lock(&s->mu);
	run_remove_locked(s, j);
	pthread_mutex_unlock(&s->mu);
	s->kv_blocked = 0;
	sched_job_free(j);
	/* the job's threads and blocks are gone: publish that at once, so a
	 * reader sees running, live threads and blocks change together */
	update_stats(s, 0, 0);
}

void
sched_count_end(sched *s, int failed)
{
	if (failed)
		s->jobs_failed++;
	else
		s->jobs_done++;
	pthread_mutex_lock(&s->mu);
	s->stats.jobs_done = s->jobs_done;
	s->stats.jobs_failed = s->jobs_failed;
	pthread_mutex_unlock(&s->mu);
}

/* ---- the step loop (engine thread) -------------------------------------------------------- */

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
		sched_job_fail(s, victim, "out of KV cache memory");
	}
	double dt = now_ms() - t0;
	if (rc < 0) {
		char reason[ENG_ERRLEN + 64];
		const char *why = eng_last_error(s->e);
		snprintf(reason, sizeof reason, "engine step failed: %s%s%s", eng_strerror(rc), *why ? ": " : "", why);
		while (s->n_run > 0)
			sched_job_fail(s, s->run[s->n_run - 1], reason);
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
	struct seq_ref *refs = s->refs;     /* (n_out <= max_seqs) */
	for (int k = 0; k < n_out; k++) {
		int seq = s->out[k].seq;
		refs[k] = seq >= 0 && seq < s->max_seqs ? s->seq_map[seq] : (struct seq_ref){ 0 };
	}
	for (int k = 0; k < n_out; k++) {
		struct sjob *j = refs[k].job;
		if (!j || j->finished || j->error || j->t[refs[k].thread].seq != s->out[k].seq)
			continue;
		sched_job_token(s, j, refs[k].thread, &s->out[k].r);
	}
	for (int i = 0; i < s->n_run;)
		if (!sched_job_progress(s, s->run[i]))
			i++;
	return dt;
}

/* ---- commands and admission (engine thread) ------------------------------------------------ */

/* Take an admitted job back out of the running list (under the mutex). */
static void
unadmit_locked(sched *s, struct sjob *j)
{
	run_remove_locked(s, j);
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
		sched_job_fail(s, j, "cancelled");
	}
	if (any_cancel)
		for (int i = 0; i < s->n_run;) {
			if (s->run[i]->cancel_now)
				sched_job_fail(s, s->run[i], "cancelled");
			else
				i++;
		}
	double t0 = now_ms();
	for (struct sjob *j = admit, *next; j; j = next) {
		next = j->qnext;
		j->qnext = NULL;
		if (!sched_job_start(s, j))
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
	sched_flush(s);
}

/* ---- stats and the engine thread --------------------------------------------------------- */

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
		s->refs = calloc((size_t)s->max_seqs, sizeof *s->refs);
		if (!s->seq_map || !s->out || !s->refs) {
			snprintf(err, sizeof err, "%s: out of memory", ep.model_dir ? ep.model_dir : "model");
			eng_destroy(s->e);
			s->e = NULL;
		}
	}
	if (s->e) {
		const struct model_config *cfg = eng_config(s->e);
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
		sched_flush(s);   /* the commands' and the step's events, one batch */
		double overhead = now_ms() - t0 - step_ms - prefill_ms;
		update_stats(s, overhead < 0 ? 0 : overhead, stepped);
	}

	/* shutdown: every job fails, nothing stays in the cache */
	while (s->n_run > 0)
		sched_job_fail(s, s->run[s->n_run - 1], "shutdown");
	pthread_mutex_lock(&s->mu);
	struct sjob *q = s->q_head;
	s->q_head = s->q_tail = NULL;
	s->n_queued = 0;
	pthread_mutex_unlock(&s->mu);
	for (struct sjob *next; q; q = next) {
		next = q->qnext;
		sched_job_fail(s, q, "shutdown");   /* each flushes its events */
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
	free(s->refs);
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
	free(s->pend);
	free(s->seq_map);
	free(s->out);
	free(s->refs);
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
	char id[sizeof req->id];
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
	/* a fresh id goes to req only on success (req is untouched on failure) */
	if (!req->id[0])
		job_new_id(id);
	else if (job_id_valid(req->id))
		memcpy(id, req->id, sizeof id);
	else
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "id: not a valid job id");
	if (!(j = sched_job_new(s, st, req, &rc, err, errlen)))
		return rc;

	pthread_mutex_lock(&s->mu);
	if (s->stop) {
		rc = eng_seterr(err, errlen, ENG_ERR_RANGE, "the scheduler is shutting down");
		goto unlock_fail;
	}
	if (s->n_queued >= s->p.max_queue) {
		rc = eng_seterr(err, errlen, ENG_ERR_RANGE, "queue full (%d jobs waiting)", s->n_queued);
		goto unlock_fail;
	}
	if (find_locked(s, id)) {
		rc = eng_seterr(err, errlen, ENG_ERR_INVALID, "id: job %s already exists", id);
		goto unlock_fail;
	}
	j->req = *req;
	memcpy(j->req.id, id, sizeof id);
	job_req_init(req);
	memcpy(req->id, id, sizeof id);
	j->t_submit_ms = ev_now_ms();
	/* job.queued goes out before the engine thread can see the job, so
	 * the job's seq 0 is always this event */
	struct ev *e = ev_new(EV_JOB_QUEUED, j->req.id, j->next_seq++, -1,
			      json_pack("{s:o}", "request", job_req_to_json(&j->req)));
	if (e) {   /* (out of memory loses the event, not the job) */
		bus_publish(s->bus, e);
		ev_unref(e);
	}
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
	sched_job_free(j);       /* holds no part of req yet */
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
	*out = s->stats;      /* running, live threads and blocks: one snapshot */
	out->queued = s->n_queued;
	if (ev_now_ms() - s->last_step_ms > 3000)
		out->tokens_per_s = 0;   /* idle: the last window is stale */
	pthread_mutex_unlock(&s->mu);
}
