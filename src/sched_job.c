/* sched_job.c - the scheduler's jobs and threads: their records, text and
 * events, job start/progress/completion, and the strat_api callbacks the
 * strategies act through.  Engine thread only.
 *
 * Threads: thread t of a job samples with seed(t) = the job's seed for
 * t = 0, samp_derive_seed(seed, t) otherwise, so a job's text depends only
 * on its request, not on what else shares the batch. */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "answer.h"
#include "sched_impl.h"

/* ---- events (engine thread) ------------------------------------------------------- */

void
sched_flush(sched *s)
{
	if (!s->n_pend)
		return;
	bus_publish_batch(s->bus, s->pend, (size_t)s->n_pend);
	for (int i = 0; i < s->n_pend; i++)
		ev_unref(s->pend[i]);
	s->n_pend = 0;
}

/* Queue a built event (its reference is taken) for sched_flush. */
static void
sched_queue(sched *s, struct ev *e)
{
	if (!e)
		return;   /* out of memory: the event is lost, the job goes on */
	if (s->n_pend == s->cap_pend) {
		int cap = s->cap_pend ? 2 * s->cap_pend : 256;
		struct ev **np = realloc(s->pend, (size_t)cap * sizeof *np);
		if (!np) {
			/* no room to wait: publish it now, after those before it */
			sched_flush(s);
			bus_publish(s->bus, e);
			ev_unref(e);
			return;
		}
		s->pend = np;
		s->cap_pend = cap;
	}
	s->pend[s->n_pend++] = e;
}

/* The job's next event seq in *seq; 1 if a subscription would take an
 * event of this type (else it need not be built; the seq stays used). */
static int
next_wanted(sched *s, struct sjob *j, enum ev_type type, int64_t *seq)
{
	*seq = j->next_seq++;
	return bus_wants(s->bus, j->req.id, type);
}

void
sched_publish(sched *s, struct sjob *j, enum ev_type type, int thread, json_t *payload)
{
	int64_t seq;
	if (!next_wanted(s, j, type, &seq)) {
		json_decref(payload);      /* nobody would get it */
		return;
	}
	sched_queue(s, ev_new(type, j->req.id, seq, thread, payload));
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

void
sched_job_free(struct sjob *j)
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
		sched_publish(s, j, EV_THREAD_PRUNED, i, json_pack("{s:s}", "reason", prune_reason));
		return;
	}
	t->answer = ans_extract(t->text ? t->text : "");
	sched_publish(s, j, EV_THREAD_DONE, i,
		json_pack("{s:s, s:s?, s:i, s:s}", "finish_reason", finish, "answer", t->answer,
			  "tokens", t->tokens, "text", t->text ? t->text : ""));
	if (strcmp(finish, "cancelled") != 0)
		t->done_pending = 1;
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
void
sched_job_fail(sched *s, struct sjob *j, const char *reason)
{
	job_stop_threads(s, j, "cancelled");
	sched_publish(s, j, EV_JOB_FAILED, -1, json_pack("{s:s}", "reason", reason));
	/* the final event is on the bus before the job leaves the counts and
	 * the run list (a reader that no longer finds it sees its end) */
	sched_flush(s);
	sched_count_end(s, 1);
	if (j->state == JOB_RUNNING)
		sched_retire(s, j);
	else
		sched_job_free(j);
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
	json_t *votes = j->votes ? json_incref(j->votes) : json_object();
	sched_publish(s, j, EV_JOB_DONE, -1,
		json_pack("{s:s?, s:o, s:I, s:i, s:I, s:o}", "answer", j->answer, "votes", votes,
			  "tokens", (json_int_t)tokens, "prompt_tokens", j->n_prompt, "ms",
			  (json_int_t)(ev_now_ms() - j->t_submit_ms), "threads", threads));
	sched_flush(s);     /* as in sched_job_fail */
	sched_count_end(s, 0);
	sched_retire(s, j);
}

/* Settle j after anything happened to it: owe the strategy its thread_done
 * calls, ask it to go on when nothing is live, and complete or fail the
 * job.  Returns 1 if j was freed. */
int
sched_job_progress(sched *s, struct sjob *j)
{
	int idled = 0;
	for (;;) {
		if (j->error) {
			sched_job_fail(s, j, j->fail_reason);
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

static int render_prompt(sched *s, struct sjob *j, const char *question, int32_t **out, int *n_out);

/* Room for n more threads of j: ENG_ERR_RANGE past the job's n. */
static int
make_room(struct sjob *j, int n)
{
	if (n > j->req.n - j->n_threads)     /* (n_threads + n could overflow) */
		return ENG_ERR_RANGE;
	if (j->n_threads + n > j->cap_threads) {
		struct sthread *nt = realloc(j->t, (size_t)(j->n_threads + n) * sizeof *nt);
		if (!nt)
			return ENG_ERR_NOMEM;
		j->t = nt;
		j->cap_threads = j->n_threads + n;
	}
	return 0;
}

/* n new threads forked from sequence src (the prompt, a thread, or a fresh
 * prompt), recorded with parent.  Returns the first new index or an error. */
static int
spawn_from(struct sjob *j, int src, int n, int parent)
{
	sched *s = j->s;
	int *kids = malloc((size_t)n * sizeof *kids), rc, first = j->n_threads;
	if (!kids)
		return ENG_ERR_NOMEM;
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
		if (j->st->top_logprobs > sp.n_top)
			sp.n_top = j->st->top_logprobs;
		eng_seq_set_sampling(s->e, kids[k], &sp);
		if (parent >= 0) {
			t->tokens = j->t[parent].tokens;
			if (j->t[parent].len)
				text_append(t, j->t[parent].text, j->t[parent].len);
		}
		if (kids[k] < s->max_seqs)
			s->seq_map[kids[k]] = (struct seq_ref){ j, i };
		j->n_live++;
		sched_publish(s, j, EV_THREAD_SPAWNED, i,
			json_pack("{s:i, s:i}", "parent", parent, "at_token",
				  parent >= 0 ? j->t[parent].tokens : 0));
		/* out of memory: keep the invariants (and the event order,
		 * spawned before done), end it at once */
		if (!t->ts)
			thread_end(s, j, i, "stop", NULL);
	}
	rc = first;
out:
	free(kids);
	return rc;
}

static int
api_spawn(void *ctx, int n, int parent)
{
	struct sjob *j = ctx;
	sched *s = j->s;
	int src = -1, tmp = -1, rc;

	if (n < 1 || parent < -1 || parent >= j->n_threads || j->finished)
		return ENG_ERR_INVALID;
	if (parent >= 0 && j->t[parent].seq < 0)
		return ENG_ERR_INVALID;
	if ((rc = make_room(j, n)) < 0)
		return rc;
	if (parent >= 0) {
		src = j->t[parent].seq;
	} else if (j->prompt_seq >= 0) {
		src = j->prompt_seq;
	} else {
		/* the prompt sequence is gone once start returns: prefill it again */
		if ((tmp = prompt_seq_new(s, j)) < 0)
			return tmp;
		src = tmp;
	}
	rc = spawn_from(j, src, n, parent);
	if (tmp >= 0)
		eng_seq_free(s->e, tmp);
	return rc;
}

static int
api_spawn_prompt(void *ctx, int n, const char *question)
{
	struct sjob *j = ctx;
	sched *s = j->s;
	int32_t *ids = NULL;
	int n_ids = 0, rc, seq;

	if (n < 1 || !question || j->finished)
		return ENG_ERR_INVALID;
	if ((rc = make_room(j, n)) < 0)
		return rc;
	if ((rc = render_prompt(s, j, question, &ids, &n_ids)) < 0)
		return rc;     /* (fail_reason says why; the job goes on) */
	if ((rc = seq = eng_seq_new(s->e, ids, n_ids, &j->req.sampling)) >= 0 &&
	    (rc = eng_seq_prefill(s->e, seq, NULL)) >= 0)
		rc = spawn_from(j, seq, n, -1);
	if (seq >= 0)
		eng_seq_free(s->e, seq);
	free(ids);
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
	/* Leave room for the token the next step samples after the injected
	 * ones: a sequence at the model's context would make eng_step refuse
	 * the whole batch, failing every running job. */
	int len = eng_seq_len(s->e, j->t[thread].seq);
	if (len < 0)
		rc = len;
	else if (n > (size_t)INT_MAX - (size_t)len - 1 ||
		 (s->max_position > 0 && (int64_t)len + (int64_t)n + 1 > s->max_position))
		rc = ENG_ERR_RANGE;
	else if (n > 0 && (rc = eng_seq_append(s->e, j->t[thread].seq, ids, (int)n)) == 0)
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
	sched_publish(j->s, j, type, thread, payload);
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

static size_t
api_text_len(void *ctx, int thread)
{
	struct sjob *j = ctx;
	return thread >= 0 && thread < j->n_threads && j->t[thread].text ? j->t[thread].len : 0;
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
	.spawn = api_spawn,
	.spawn_prompt = api_spawn_prompt,
	.stop = api_stop,
	.inject = api_inject,
	.finish = api_finish,
	.emit = api_emit,
	.text = api_text,
	.text_len = api_text_len,
	.tokens = api_tokens,
	.live = api_live,
	.n_threads = api_n_threads,
};

struct sjob *
sched_job_new(sched *s, const struct strategy *st, const struct job_req *req, int *rc, char *err,
	      size_t errlen)
{
	struct sjob *j = calloc(1, sizeof *j);
	if (!j) {
		*rc = eng_seterr(err, errlen, ENG_ERR_NOMEM, "out of memory");
		return NULL;
	}
	j->s = s;
	j->st = st;
	j->prompt_seq = -1;
	j->max_tokens = req->max_tokens;
	j->api = api_base;
	j->api.ctx = j;
	if ((*rc = st->init(req, &j->st_state, err, errlen)) < 0) {
		free(j);
		return NULL;
	}
	return j;
}

/* ---- starting a job (engine thread, at admission) --------------------------------------- */

/* Render and tokenize j's prompt, with question in place of the request's
 * question when non-NULL (then the request's messages are not used).  *out
 * is malloc'd.  0, or an error with j->fail_reason set. */
static int
render_prompt(sched *s, struct sjob *j, const char *question, int32_t **out, int *n_out)
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
	if (j->req.messages && !question) {
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
		if (!question)
			question = j->req.question ? j->req.question : "";
		two[n++] = (struct chat_msg){ "user", question };
		rc = chat_render(fmt, two, n, 1, tok_bos_token(tk), &text);
	} else {
		/* plain text: system, a blank line, the question, a newline */
		const char *sys = j->req.system ? j->req.system : "";
		const char *q = question ? question : j->req.question ? j->req.question : "";
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
	*out = ids;
	*n_out = (int)n_ids;
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
int
sched_job_start(sched *s, struct sjob *j)
{
	int rc;
	if (!j->prompt && render_prompt(s, j, NULL, &j->prompt, &j->n_prompt) < 0) {
		sched_job_fail(s, j, j->fail_reason);
		return 0;
	}
	if ((rc = j->prompt_seq = prompt_seq_new(s, j)) < 0) {
		j->prompt_seq = -1;
		if (rc == ENG_ERR_NO_KV && s->n_run > 1)
			return 1;
		sched_job_fail(s, j, rc == ENG_ERR_NO_KV ? "out of KV cache memory" : eng_strerror(rc));
		return 0;
	}
	sched_publish(s, j, EV_JOB_STARTED, -1,
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
	sched_job_progress(s, j);
	return 0;
}

/* ---- tokens (engine thread, after each step) -------------------------------------------- */

/* Route one sampled token to its thread. */
void
sched_job_token(sched *s, struct sjob *j, int i, const struct samp_result *r)
{
	struct sthread *t = &j->t[i];
	char piece[SCHED_PIECE], *big = NULL, *p = piece;
	size_t n = 0, m = 0;
	const char *finish = NULL;

	t->tokens++;
	int eos = eng_is_eos(s->e, r->token);
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
	/* the decoder's held bytes go after the piece, in whichever buffer
	 * holds it (n < cap: push leaves room for the NUL) */
	size_t cap = p == big ? (size_t)1 << 16 : sizeof piece;
	if (finish && n < cap && tok_stream_flush(t->ts, p + n, cap - n, &m) == 0 && m) {
		text_append(t, p + n, m);
		n += m;
	}
	int64_t seq;
	if (next_wanted(s, j, EV_THREAD_DELTA, &seq))
		sched_queue(s, ev_new_delta(j->req.id, seq, i, p, n, t->tokens, (double)r->logprob,
					    (double)r->entropy));
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

