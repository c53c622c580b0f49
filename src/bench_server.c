/* bench_server.c - braid bench --server-path: the cost of the server path
 * per engine step.  The main thread runs the engine alone, then drives the
 * scheduler (its engine thread) and an in-process server (its lws thread);
 * the websocket clients run on one more thread with their own lws context.
 *
 * For every (N jobs, n threads per job) row, in one run:
 *   1. engine alone: N prompts prefilled and forked n ways, G eng_steps;
 *   2. scheduler: N concurrent sc jobs of n threads and max_tokens G through
 *      bus + sched, with one unbounded subscriber (this thread) reading every
 *      event; ms per step from our own clock, the engine step and the
 *      scheduler's overhead per step from sched_stats;
 *   3. server: the same with the store and the HTTP/WS server started
 *      in-process and C websocket clients subscribed to /v1/events,
 *      counting events received and checking each job's seq is contiguous
 *      (holes must be announced by gap events).
 * The engine-alone run mirrors the scheduler's prompt and per-thread seeds,
 * so both decode the same tokens when the batch does not change the
 * numbers (tokens are reported as a check). */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libwebsockets.h>

#include "bench_server.h"
#include "bus.h"
#include "job.h"
#include "sched.h"
#include "server.h"
#include "store.h"

#define BSRV_SEED0 1000
#define BSRV_MSG_PREFIX 512          /* bytes of each message kept for parsing */
#define BSRV_QUIET_MS 1000           /* clients idle this long have drained    */

static double
now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void
sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

/* The question of job j of a row (distinct prompts, similar lengths). */
static void
job_question(char *out, size_t cap, int j)
{
	snprintf(out, cap, "Benchmark job %d: what is %d + %d? Think step by step.", j, 17 * j + 3,
		 29 * j + 11);
}

/* One row's results. */
struct row {
	int N, n, steps;
	/* 1. engine alone */
	double eng_ms_step;
	long long eng_tokens;
	/* 2. scheduler */
	double sch_ms_step, sch_step_ms, sch_ovh_ms, sch_pub_s;
	long long sch_tokens, sch_steps;
	/* 3. server */
	double srv_ms_step, srv_step_ms, srv_ovh_ms, srv_pub_s, srv_deliv_s;
	long long srv_tokens, srv_steps, srv_published, srv_delivered;
	long long gaps, dropped, lost, reordered;
	int clients, clients_complete, clients_failed;
	int jobs_failed;
};

/* ---- 1. the engine alone (main thread = engine thread) ------------------------------- */

/* The prompt as the scheduler builds it for a question without a system
 * prompt (sched.c build_prompt).  *ids malloc'd. */
static int
build_prompt(eng *e, const char *q, int32_t **ids, size_t *n)
{
	const tok *tk = eng_tokenizer(e);
	enum chat_format fmt = eng_chat_format(e);
	char *text = NULL;
	int rc;
	if (!tk)
		return ENG_ERR_INVALID;
	if (fmt != CHAT_NONE) {
		struct chat_msg m = { "user", q };
		if ((rc = chat_render(fmt, &m, 1, 1, tok_bos_token(tk), &text)) < 0)
			return rc;
	} else {
		size_t len = strlen(q) + 2;
		if (!(text = malloc(len)))
			return ENG_ERR_NOMEM;
		snprintf(text, len, "%s\n", q);
	}
	rc = tok_encode(tk, text, strlen(text), fmt != CHAT_NONE, ids, n);
	free(text);
	return rc;
}

static int
run_engine(eng *e, struct row *r)
{
	int total = r->N * r->n, live = 0, rc = ENG_ERR_NOMEM;
	int *seqs = malloc((size_t)total * sizeof *seqs);
	struct eng_token *out = malloc((size_t)total * sizeof *out);
	if (!seqs || !out)
		goto done;
	for (int k = 0; k < total; k++)
		seqs[k] = -1;
	for (int j = 0; j < r->N; j++) {
		char q[160];
		int32_t *ids = NULL;
		size_t n_ids = 0;
		job_question(q, sizeof q, j);
		if ((rc = build_prompt(e, q, &ids, &n_ids)) < 0)
			goto done;
		struct job_req req;
		job_req_init(&req);         /* the sampling defaults of a job */
		struct samp_params sp = req.sampling;
		sp.seed = BSRV_SEED0 + (uint64_t)j;
		int parent = eng_seq_new(e, ids, (int)n_ids, &sp);
		free(ids);
		if ((rc = parent) < 0)
			goto done;
		if ((rc = eng_seq_prefill(e, parent, NULL)) >= 0)
			rc = eng_seq_fork(e, parent, r->n, seqs + j * r->n);
		eng_seq_free(e, parent);
		if (rc < 0)
			goto done;
		for (int t = 0; t < r->n; t++) {
			struct samp_params ts = sp;   /* as the scheduler seeds thread t */
			ts.seed = t == 0 ? sp.seed : samp_derive_seed(sp.seed, (uint64_t)t);
			eng_seq_set_sampling(e, seqs[j * r->n + t], &ts);
		}
		live += r->n;
	}
	/* Step 1 samples from the prompt logits (no forward); time steps 2..G. */
	double t0 = 0;
	r->eng_tokens = 0;
	for (int step = 0; step < r->steps && live > 0; step++) {
		if (step == 1)
			t0 = now_ms();
		int got = 0;
		if ((rc = eng_step(e, out, total, &got)) < 0)
			goto done;
		r->eng_tokens += got;
		for (int k = 0; k < got; k++) {
			if (!eng_is_eos(e, out[k].r.token))
				continue;
			for (int m = 0; m < total; m++)
				if (seqs[m] == out[k].seq) {
					eng_seq_free(e, seqs[m]);
					seqs[m] = -1;
					live--;
				}
		}
	}
	r->eng_ms_step = r->steps > 1 ? (now_ms() - t0) / (r->steps - 1) : 0;
	rc = 0;
done:
	if (rc < 0)
		fprintf(stderr, "braid bench: engine alone, N=%d n=%d: %s\n", r->N, r->n, eng_strerror(rc));
	for (int k = 0; seqs && k < total; k++)
		if (seqs[k] >= 0)
			eng_seq_free(e, seqs[k]);
	free(seqs);
	free(out);
	return rc;
}

/* ---- 2. jobs through the scheduler (main thread reads the bus) ------------------------- */

struct load {
	double ms_step, step_ms, ovh_ms, pub_s;
	long long tokens, steps, published;
	int failed;
	double t_submit, t_end;
};

/* Submit the row's N jobs (ids given), read every event from sub until all
 * have ended, and measure.  0, or -1 with a message. */
static int
run_jobs(sched *s, bus *b, bus_sub *sub, const struct row *r, char (*ids)[EV_JOB_ID_MAX],
	 struct load *L)
{
	struct sched_stats st0, st;
	char err[256];
	memset(L, 0, sizeof *L);
	sched_stats(s, &st0);
	unsigned long long pub0 = bus_published(b);
	L->t_submit = now_ms();
	for (int j = 0; j < r->N; j++) {
		struct job_req req;
		char q[160];
		job_req_init(&req);
		job_question(q, sizeof q, j);
		memcpy(req.id, ids[j], EV_JOB_ID_MAX);
		req.question = strdup(q);
		req.n = r->n;
		req.max_tokens = r->steps;
		req.sampling.seed = BSRV_SEED0 + (uint64_t)j;
		if (!req.question || sched_submit(s, &req, err, sizeof err) < 0) {
			fprintf(stderr, "braid bench: submit: %s\n", req.question ? err : "out of memory");
			job_req_free(&req);
			return -1;
		}
		job_req_free(&req);
	}
	/* Read until every job ended; sample the scheduler's averages as they
	 * move, weighting each by the steps since the previous sample. */
	int ended = 0;
	double t_first_delta = 0, last_sample = 0, w_step = 0, w_ovh = 0;
	unsigned long long seen_steps = st0.steps, w_steps = 0;
	double deadline = now_ms() + 600e3;
	while (ended < r->N) {
		struct ev *e = bus_pop_wait(sub, 1000);
		double t = now_ms();
		if (t > deadline) {
			ev_unref(e);
			fprintf(stderr, "braid bench: jobs did not end within 10 minutes\n");
			return -1;
		}
		if (!e)
			continue;
		if (e->type == EV_THREAD_DELTA && !t_first_delta)
			t_first_delta = t;
		if (e->type == EV_JOB_DONE || e->type == EV_JOB_FAILED) {
			ended++;
			L->failed += e->type == EV_JOB_FAILED;
			L->t_end = t;
		}
		ev_unref(e);
		if (t - last_sample >= 2.0) {
			last_sample = t;
			sched_stats(s, &st);
			if (st.steps > seen_steps) {
				double d = (double)(st.steps - seen_steps);
				w_step += d * st.step_ms_avg;
				w_ovh += d * st.overhead_ms_avg;
				w_steps += st.steps - seen_steps;
				seen_steps = st.steps;
			}
		}
	}
	L->published = (long long)(bus_published(b) - pub0);
	/* The last step's stats are written after its events: wait for them. */
	for (int i = 0; i < 5000; i++) {
		sched_stats(s, &st);
		if (st.running == 0 && st.live_threads == 0)
			break;
		sleep_ms(1);
	}
	if (st.steps > seen_steps) {
		double d = (double)(st.steps - seen_steps);
		w_step += d * st.step_ms_avg;
		w_ovh += d * st.overhead_ms_avg;
		w_steps += st.steps - seen_steps;
	}
	L->steps = (long long)(st.steps - st0.steps);
	L->tokens = (long long)(st.tokens_total - st0.tokens_total);
	L->step_ms = w_steps ? w_step / (double)w_steps : 0;
	L->ovh_ms = w_steps ? w_ovh / (double)w_steps : 0;
	/* the first step's events start the clock: steps 2..last */
	L->ms_step = L->steps > 1 && t_first_delta ? (L->t_end - t_first_delta) / (double)(L->steps - 1) : 0;
	L->pub_s = L->t_end > L->t_submit ? (double)L->published * 1e3 / (L->t_end - L->t_submit) : 0;
	return 0;
}

/* ---- 3. websocket clients (their own thread and lws context) ---------------------------- */

struct wsc {
	struct wclients *g;
	int idx;
	int established, closed, failed, complete;
	int in_msg;
	char buf[BSRV_MSG_PREFIX];
	size_t blen;
	long long events, gaps, dropped, reordered;
	long long *last_seq;          /* (n_jobs) highest seq seen, -1 none     */
	long long *got;               /* (n_jobs) events received               */
	int *ended;                   /* (n_jobs) terminal event seen           */
	int n_ended;
};

struct wclients {
	struct lws_context *ctx;
	pthread_t th;
	int started;
	atomic_int stop;
	atomic_int n_established, n_complete, n_failed;
	_Atomic double t_last_msg;    /* when any client last got a message     */
	int port, n;
	struct wsc *c;                /* (n) */
	char (*jobs)[EV_JOB_ID_MAX];  /* (n_jobs) the row's job ids             */
	int n_jobs;
};

/* Parse the envelope at the start of an event ({"type":"T","job":"J",
 * "seq":S,...}; ev_new writes those fields first, before any payload
 * text).  0, or -1 if the message does not start that way. */
static int
parse_envelope(const char *m, char *type, size_t tcap, char *job, size_t jcap, long long *seq)
{
	static const char k1[] = "{\"type\":\"", k2[] = "\",\"job\":\"", k3[] = "\",\"seq\":";
	const char *p = m, *q;
	if (strncmp(p, k1, sizeof k1 - 1))
		return -1;
	p += sizeof k1 - 1;
	if (!(q = strchr(p, '"')) || (size_t)(q - p) >= tcap)
		return -1;
	memcpy(type, p, (size_t)(q - p));
	type[q - p] = 0;
	if (strncmp(q, k2, sizeof k2 - 1))
		return -1;
	p = q + sizeof k2 - 1;
	if (!(q = strchr(p, '"')) || (size_t)(q - p) >= jcap)
		return -1;
	memcpy(job, p, (size_t)(q - p));
	job[q - p] = 0;
	if (strncmp(q, k3, sizeof k3 - 1))
		return -1;
	char *end;
	*seq = strtoll(q + sizeof k3 - 1, &end, 10);
	return end == q + sizeof k3 - 1 ? -1 : 0;
}

/* One whole message received by client c (client thread). */
static void
wsc_message(struct wsc *c)
{
	struct wclients *g = c->g;
	char type[32], job[EV_JOB_ID_MAX];
	long long seq;
	c->events++;
	atomic_store_explicit(&g->t_last_msg, now_ms(), memory_order_relaxed);
	if (parse_envelope(c->buf, type, sizeof type, job, sizeof job, &seq) < 0) {
		c->reordered++;         /* not an event as the contract says: count it as wrong */
		return;
	}
	if (!strcmp(type, "gap")) {
		const char *d = strstr(c->buf, "\"dropped\":");
		c->gaps++;
		c->dropped += d ? strtoll(d + 10, NULL, 10) : 0;
		return;
	}
	int j;
	for (j = 0; j < g->n_jobs && strcmp(g->jobs[j], job); j++)
		;
	if (j == g->n_jobs)
		return;                 /* another row's straggler */
	if (seq <= c->last_seq[j])
		c->reordered++;
	else
		c->last_seq[j] = seq;
	c->got[j]++;
	if ((!strcmp(type, "job.done") || !strcmp(type, "job.failed")) && !c->ended[j]) {
		c->ended[j] = 1;
		if (++c->n_ended == g->n_jobs && !c->complete) {
			c->complete = 1;
			atomic_fetch_add(&g->n_complete, 1);
		}
	}
}

static int
wsc_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	struct wsc *c = lws_get_opaque_user_data(wsi);
	(void)user;
	switch (reason) {
	case LWS_CALLBACK_CLIENT_ESTABLISHED:
		c->established = 1;
		atomic_fetch_add(&c->g->n_established, 1);
		break;
	case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
		if (c && !c->failed) {
			c->failed = 1;
			atomic_fetch_add(&c->g->n_failed, 1);
			fprintf(stderr, "braid bench: websocket client %d: %s\n", c->idx,
				in ? (const char *)in : "connection error");
		}
		break;
	case LWS_CALLBACK_CLIENT_RECEIVE: {
		if (!c->in_msg) {
			c->in_msg = 1;
			c->blen = 0;
		}
		size_t room = sizeof c->buf - 1 - c->blen, m = len < room ? len : room;
		memcpy(c->buf + c->blen, in, m);
		c->blen += m;
		if (lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi)) {
			c->buf[c->blen] = 0;
			c->in_msg = 0;
			wsc_message(c);
		}
		break;
	}
	case LWS_CALLBACK_CLIENT_CLOSED:
		if (c)
			c->closed = 1;
		break;
	default:
		break;
	}
	return 0;
}

static const struct lws_protocols wsc_protocols[] = {
	{ "braid-bench-client", wsc_callback, 0, 0, 0, NULL, 0 },
	{ NULL, NULL, 0, 0, 0, NULL, 0 },
};

static void *
wclients_main(void *arg)
{
	struct wclients *g = arg;
	for (int i = 0; i < g->n; i++) {
		struct lws_client_connect_info ci;
		memset(&ci, 0, sizeof ci);
		ci.context = g->ctx;
		ci.address = "127.0.0.1";
		ci.port = g->port;
		ci.path = "/v1/events";
		ci.host = "127.0.0.1";
		ci.opaque_user_data = &g->c[i];
		if (!lws_client_connect_via_info(&ci) && !g->c[i].failed) {
			g->c[i].failed = 1;
			atomic_fetch_add(&g->n_failed, 1);
		}
	}
	while (!atomic_load(&g->stop))
		if (lws_service(g->ctx, 0) < 0)
			break;
	return NULL;
}

static void
wclients_free(struct wclients *g)
{
	if (!g)
		return;
	if (g->started) {
		atomic_store(&g->stop, 1);
		lws_cancel_service(g->ctx);
		pthread_join(g->th, NULL);
	}
	if (g->ctx)
		lws_context_destroy(g->ctx);
	for (int i = 0; g->c && i < g->n; i++) {
		free(g->c[i].last_seq);
		free(g->c[i].got);
		free(g->c[i].ended);
	}
	free(g->c);
	free(g);
}

static struct wclients *
wclients_start(int port, int n, char (*jobs)[EV_JOB_ID_MAX], int n_jobs)
{
	struct wclients *g = calloc(1, sizeof *g);
	if (!g)
		return NULL;
	g->port = port;
	g->n = n;
	g->jobs = jobs;
	g->n_jobs = n_jobs;
	atomic_init(&g->stop, 0);
	atomic_init(&g->n_established, 0);
	atomic_init(&g->n_complete, 0);
	atomic_init(&g->n_failed, 0);
	atomic_init(&g->t_last_msg, 0.0);
	if (!(g->c = calloc((size_t)n, sizeof *g->c)))
		goto fail;
	for (int i = 0; i < n; i++) {
		struct wsc *c = &g->c[i];
		c->g = g;
		c->idx = i;
		c->last_seq = malloc((size_t)n_jobs * sizeof *c->last_seq);
		c->got = calloc((size_t)n_jobs, sizeof *c->got);
		c->ended = calloc((size_t)n_jobs, sizeof *c->ended);
		if (!c->last_seq || !c->got || !c->ended)
			goto fail;
		for (int j = 0; j < n_jobs; j++)
			c->last_seq[j] = -1;
	}
	struct lws_context_creation_info info;
	memset(&info, 0, sizeof info);
	info.port = CONTEXT_PORT_NO_LISTEN;
	info.protocols = wsc_protocols;
	info.fd_limit_per_thread = (unsigned)(n + 16);
	if (!(g->ctx = lws_create_context(&info)))
		goto fail;
	if (pthread_create(&g->th, NULL, wclients_main, g) != 0)
		goto fail;
	g->started = 1;
	return g;
fail:
	wclients_free(g);
	return NULL;
}

/* ---- the rows ----------------------------------------------------------------------------- */

static void
fresh_ids(char (*ids)[EV_JOB_ID_MAX], int n)
{
	for (int j = 0; j < n; j++)
		job_new_id(ids[j]);
}

static int
run_server_row(sched *s, bus *b, bus_sub *sub, srv *v, struct row *r)
{
	int rc = -1;
	char (*ids)[EV_JOB_ID_MAX] = calloc((size_t)r->N, sizeof *ids);
	struct wclients *g = NULL;
	if (!ids)
		goto done;
	fresh_ids(ids, r->N);
	size_t subs0 = bus_subscribers(b);
	if (!(g = wclients_start(srv_port(v), r->clients, ids, r->N))) {
		fprintf(stderr, "braid bench: cannot start the websocket clients\n");
		goto done;
	}
	/* every client connected and subscribed before the first job */
	double dl = now_ms() + 20e3;
	while ((atomic_load(&g->n_established) + atomic_load(&g->n_failed) < r->clients ||
		bus_subscribers(b) < subs0 + (size_t)atomic_load(&g->n_established)) &&
	       now_ms() < dl)
		sleep_ms(2);
	if (atomic_load(&g->n_established) < r->clients) {
		fprintf(stderr, "braid bench: only %d of %d websocket clients connected\n",
			atomic_load(&g->n_established), r->clients);
		goto done;
	}
	struct load L;
	if (run_jobs(s, b, sub, r, ids, &L) < 0)
		goto done;
	/* Let the clients drain: until every client saw every job end, or
	 * nothing arrived for BSRV_QUIET_MS (a client whose job.done fell
	 * into a gap never sees it), at most 60 s. */
	dl = now_ms() + 60e3;
	while (atomic_load(&g->n_complete) < r->clients && now_ms() < dl &&
	       now_ms() - atomic_load(&g->t_last_msg) < BSRV_QUIET_MS)
		sleep_ms(2);
	atomic_store(&g->stop, 1);
	lws_cancel_service(g->ctx);
	pthread_join(g->th, NULL);
	g->started = 0;

	r->srv_ms_step = L.ms_step;
	r->srv_step_ms = L.step_ms;
	r->srv_ovh_ms = L.ovh_ms;
	r->srv_pub_s = L.pub_s;
	r->srv_tokens = L.tokens;
	r->srv_steps = L.steps;
	r->srv_published = L.published;
	r->jobs_failed += L.failed;
	r->clients_complete = atomic_load(&g->n_complete);
	r->clients_failed = atomic_load(&g->n_failed);
	/* delivery ends with the last message any client received */
	double t_last = atomic_load(&g->t_last_msg);
	for (int i = 0; i < r->clients; i++) {
		struct wsc *c = &g->c[i];
		r->srv_delivered += c->events;
		r->gaps += c->gaps;
		r->dropped += c->dropped;
		r->reordered += c->reordered;
		/* holes: events of a job up to the highest seq seen, not received */
		long long holes = 0;
		for (int j = 0; j < r->N; j++)
			holes += c->last_seq[j] + 1 - c->got[j];
		if (holes > c->dropped)
			r->lost += holes - c->dropped;
	}
	r->srv_deliv_s = t_last > L.t_submit ? (double)r->srv_delivered * 1e3 / (t_last - L.t_submit) : 0;
	rc = 0;
done:
	wclients_free(g);
	free(ids);
	return rc;
}

/* The CPU's model name from /proc/cpuinfo, or "". */
static void
cpu_model(char *out, size_t cap)
{
	char line[512];
	FILE *f = fopen("/proc/cpuinfo", "r");
	out[0] = 0;
	while (f && fgets(line, sizeof line, f)) {
		if (strncmp(line, "model name", 10))
			continue;
		char *p = strchr(line, ':');
		if (p) {
			p++;
			p += strspn(p, " \t");
			p[strcspn(p, "\n")] = 0;
			snprintf(out, cap, "%s", p);
		}
		break;
	}
	if (f)
		fclose(f);
}

static json_t *
row_json(const struct row *r)
{
	json_t *o = json_object();
	json_object_set_new(o, "N", json_integer(r->N));
	json_object_set_new(o, "n", json_integer(r->n));
	json_object_set_new(o, "steps", json_integer(r->steps));
	json_object_set_new(o, "engine_ms_per_step", json_real(r->eng_ms_step));
	json_object_set_new(o, "sched_ms_per_step", json_real(r->sch_ms_step));
	json_object_set_new(o, "sched_engine_step_ms", json_real(r->sch_step_ms));
	json_object_set_new(o, "overhead_ms_per_step", json_real(r->sch_ovh_ms));
	json_object_set_new(o, "overhead_pct", json_real(r->sch_step_ms > 0 ? 100 * r->sch_ovh_ms / r->sch_step_ms : 0));
	json_object_set_new(o, "sched_events_published_per_s", json_real(r->sch_pub_s));
	json_object_set_new(o, "server_ms_per_step", json_real(r->srv_ms_step));
	json_object_set_new(o, "server_engine_step_ms", json_real(r->srv_step_ms));
	json_object_set_new(o, "server_overhead_ms_per_step", json_real(r->srv_ovh_ms));
	json_object_set_new(o, "server_overhead_pct",
			    json_real(r->srv_step_ms > 0 ? 100 * r->srv_ovh_ms / r->srv_step_ms : 0));
	json_object_set_new(o, "events_published", json_integer(r->srv_published));
	json_object_set_new(o, "events_published_per_s", json_real(r->srv_pub_s));
	json_object_set_new(o, "events_delivered", json_integer(r->srv_delivered));
	json_object_set_new(o, "events_delivered_per_s", json_real(r->srv_deliv_s));
	json_object_set_new(o, "clients", json_integer(r->clients));
	json_object_set_new(o, "clients_complete", json_integer(r->clients_complete));
	json_object_set_new(o, "gaps", json_integer(r->gaps));
	json_object_set_new(o, "dropped", json_integer(r->dropped));
	json_object_set_new(o, "lost", json_integer(r->lost));
	json_object_set_new(o, "out_of_order", json_integer(r->reordered));
	json_object_set_new(o, "jobs_failed", json_integer(r->jobs_failed));
	json_object_set_new(o, "tokens_engine", json_integer(r->eng_tokens));
	json_object_set_new(o, "tokens_sched", json_integer(r->sch_tokens));
	json_object_set_new(o, "tokens_server", json_integer(r->srv_tokens));
	return o;
}

int
bsrv_run(const struct bsrv_params *p)
{
	int rc = 1, n_rows = p->n_jobs * p->n_per_job;
	char err[ENG_ERRLEN], tmpdir[] = "/tmp/braid-bench-XXXXXX", db[64] = "";
	int have_tmp = 0;
	struct row *rows = calloc((size_t)n_rows, sizeof *rows);
	eng *e = NULL;
	bus *b = NULL;
	bus_sub *sub = NULL;
	sched *s = NULL;
	store *st = NULL;
	srv *v = NULL;
	json_t *doc = NULL;
	int max_N = 1, max_n = 1;
	if (!rows)
		goto out;
	signal(SIGPIPE, SIG_IGN);
	for (int i = 0; i < p->n_jobs; i++)
		for (int k = 0; k < p->n_per_job; k++) {
			struct row *r = &rows[i * p->n_per_job + k];
			r->N = p->jobs[i];
			r->n = p->per_job[k];
			r->steps = p->steps;
			r->clients = p->clients;
			max_N = r->N > max_N ? r->N : max_N;
			max_n = r->n > max_n ? r->n : max_n;
			if (r->N * r->n > 255) {
				fprintf(stderr, "braid bench: N*n = %d*%d is more than one step carries (255)\n",
					r->N, r->n);
				goto out;
			}
		}

	struct eng_params ep = eng_default_params();
	ep.model_dir = p->model_dir;
	ep.device = p->device;
	ep.kv_bytes = p->kv_bytes;
	ep.n_threads = p->n_threads;
	if (!(e = eng_create(&ep, err, sizeof err))) {
		fprintf(stderr, "braid bench: %s\n", err);
		goto out;
	}
	if (!eng_tokenizer(e)) {
		fprintf(stderr, "braid bench: %s: the server path needs tokenizer.json\n", p->model_dir);
		goto out;
	}
	char cpu[256];
	cpu_model(cpu, sizeof cpu);
	const struct model_config *c = eng_config(e);
	printf("model %s (%s, hidden %d, %d layers, vocab %d), device %s, %d threads, CPU %s\n",
	       p->model_dir, c->arch_name, c->hidden_size, c->n_layers, c->vocab_size, eng_device_name(e),
	       eng_threads(e), cpu[0] ? cpu : "?");
	doc = json_pack("{s:s,s:s,s:i,s:s,s:i,s:i}", "model", p->model_dir, "device", eng_device_name(e),
			"threads", eng_threads(e), "cpu", cpu, "steps", p->steps, "clients", p->clients);
	for (int i = 0; i < n_rows; i++) {
		fprintf(stderr, "engine alone: N=%d n=%d ...\n", rows[i].N, rows[i].n);
		if (run_engine(e, &rows[i]) < 0)
			goto out;
	}
	eng_destroy(e);
	e = NULL;

	/* 2. the scheduler: one bus, one engine thread, this thread reading */
	struct sched_params sp = sched_default_params();
	sp.max_running = max_N;
	sp.max_threads_per_job = max_n;
	sp.max_tokens = p->steps;
	if (!(b = bus_create()) || !(sub = bus_subscribe(b, NULL, 0, NULL, NULL))) {
		fprintf(stderr, "braid bench: out of memory\n");
		goto out;
	}
	if (!(s = sched_create(&ep, b, &sp, err, sizeof err))) {
		fprintf(stderr, "braid bench: %s\n", err);
		goto out;
	}
	for (int i = 0; i < n_rows; i++) {
		struct row *r = &rows[i];
		char (*ids)[EV_JOB_ID_MAX] = calloc((size_t)r->N, sizeof *ids);
		struct load L;
		fprintf(stderr, "scheduler: N=%d n=%d ...\n", r->N, r->n);
		if (!ids)
			goto out;
		fresh_ids(ids, r->N);
		int lr = run_jobs(s, b, sub, r, ids, &L);
		free(ids);
		if (lr < 0)
			goto out;
		r->sch_ms_step = L.ms_step;
		r->sch_step_ms = L.step_ms;
		r->sch_ovh_ms = L.ovh_ms;
		r->sch_pub_s = L.pub_s;
		r->sch_tokens = L.tokens;
		r->sch_steps = L.steps;
		r->jobs_failed = L.failed;
	}

	/* 3. the server: store + HTTP/WS on a loopback port, C clients */
	if (p->clients > 0) {
		if (!mkdtemp(tmpdir)) {
			fprintf(stderr, "braid bench: cannot make a scratch directory\n");
			goto out;
		}
		have_tmp = 1;
		snprintf(db, sizeof db, "%s/bench.db", tmpdir);
		if (!(st = store_open(db, b, err, sizeof err))) {
			fprintf(stderr, "braid bench: %s\n", err);
			goto out;
		}
		struct srv_params vp = srv_default_params();
		vp.port = 0;
		vp.model_name = "bench";
		if (!(v = srv_start(&vp, s, b, st, err, sizeof err))) {
			fprintf(stderr, "braid bench: %s\n", err);
			goto out;
		}
		for (int i = 0; i < n_rows; i++) {
			fprintf(stderr, "server + %d websocket clients: N=%d n=%d ...", p->clients, rows[i].N,
				rows[i].n);
			double t0 = now_ms();
			if (run_server_row(s, b, sub, v, &rows[i]) < 0)
				goto out;
			fprintf(stderr, " %.1f s\n", (now_ms() - t0) / 1e3);
		}
	}

	printf("\n| N | n | steps | engine alone ms/step | scheduler ms/step | engine step ms | overhead ms/step | overhead %% |"
	       " server ms/step | server overhead ms/step | events published/s | events delivered/s (%d clients) | gaps (dropped, lost) |\n",
	       p->clients);
	printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
	json_t *arr = json_array();
	for (int i = 0; i < n_rows; i++) {
		struct row *r = &rows[i];
		printf("| %d | %d | %d | %.3f | %.3f | %.3f | %.3f | %.1f%% | %.3f | %.3f | %.0f | %.0f | %lld (%lld, %lld) |\n",
		       r->N, r->n, r->steps, r->eng_ms_step, r->sch_ms_step, r->sch_step_ms, r->sch_ovh_ms,
		       r->sch_step_ms > 0 ? 100 * r->sch_ovh_ms / r->sch_step_ms : 0, r->srv_ms_step,
		       r->srv_ovh_ms, r->srv_pub_s, r->srv_deliv_s, r->gaps, r->dropped, r->lost);
		json_array_append_new(arr, row_json(r));
	}
	json_object_set_new(doc, "rows", arr);
	int bad = 0;
	for (int i = 0; i < n_rows; i++) {
		struct row *r = &rows[i];
		if (r->jobs_failed)
			fprintf(stderr, "braid bench: N=%d n=%d: %d jobs failed\n", r->N, r->n, r->jobs_failed);
		if (p->clients > 0 && r->clients_complete < r->clients)
			fprintf(stderr, "braid bench: N=%d n=%d: %d of %d clients saw every job end%s\n", r->N,
				r->n, r->clients_complete, r->clients,
				r->gaps ? " (the others lost a job's last event in a gap)" : "");
		if (r->lost || r->reordered)
			fprintf(stderr, "braid bench: N=%d n=%d: %lld events lost without a gap event, %lld out of order\n",
				r->N, r->n, r->lost, r->reordered);
		bad |= r->jobs_failed > 0;
	}
	if (p->json_path && json_dump_file(doc, p->json_path, JSON_INDENT(2)) != 0) {
		fprintf(stderr, "braid bench: cannot write %s\n", p->json_path);
		goto out;
	}
	rc = bad ? 1 : 0;
out:
	srv_stop(v);
	sched_destroy(s);
	store_close(st);
	bus_unsubscribe(b, sub);
	bus_destroy(b);
	eng_destroy(e);
	if (have_tmp) {
		char p2[96];
		static const char *const suffix[] = { "", "-wal", "-shm" };
		for (int i = 0; i < 3; i++) {
			snprintf(p2, sizeof p2, "%s%s", db, suffix[i]);
			unlink(p2);
		}
		rmdir(tmpdir);
	}
	json_decref(doc);
	free(rows);
	return rc;
}
