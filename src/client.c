/* client.c - the job client of braid solve and braid ask: jobs run through
 * an in-process scheduler (events from a bus subscription) or a daemon's
 * REST API (libcurl: a blocking POST per job, then one SSE stream per job
 * driven by a curl multi handle).  Runs on the caller's thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "bus.h"
#include "client.h"
#include "sched.h"
#include "status.h"

#define CL_REMOTE_RUNNING 32      /* the daemon's default max_running      */
#define CL_SSE_LINE_MAX (16 << 20) /* an SSE line longer than this is bad   */

/* One job's SSE event stream (remote mode). */
struct stream {
	CURL *h;
	cl *c;
	char job[EV_JOB_ID_MAX];
	char *line;              /* the line being received                   */
	size_t len, cap;
	int ended;               /* its job.done / job.failed arrived          */
	int broken;              /* the stream sent something unreadable       */
	char errbuf[CURL_ERROR_SIZE];
	struct stream *next;
};

struct cl {
	struct cl_params p;
	int in_flight;
	/* in-process */
	bus *b;
	bus_sub *sub;
	sched *s;
	/* remote */
	char *base;              /* server URL without a trailing '/'          */
	CURLM *multi;
	struct curl_slist *hdrs; /* authorization, if any                      */
	struct stream *streams;
	int curl_inited;
	/* events waiting to be returned by cl_next (remote) */
	json_t **q;
	size_t q_head, q_len, q_cap;
};

struct cl_params
cl_default_params(void)
{
	struct cl_params p;
	memset(&p, 0, sizeof p);
	p.engine = eng_default_params();
	return p;
}

static long long
now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int
is_end_type(const char *type)
{
	return type && (!strcmp(type, "job.done") || !strcmp(type, "job.failed"));
}

/* ---- the event queue (remote) ------------------------------------------------ */

static int
q_push(cl *c, json_t *ev)
{
	if (c->q_head + c->q_len == c->q_cap) {
		if (c->q_head > 0) {
			memmove(c->q, c->q + c->q_head, c->q_len * sizeof *c->q);
			c->q_head = 0;
		} else {
			size_t cap = c->q_cap ? c->q_cap * 2 : 64;
			json_t **nq = realloc(c->q, cap * sizeof *nq);
			if (!nq) {
				json_decref(ev);
				return ENG_ERR_NOMEM;
			}
			c->q = nq;
			c->q_cap = cap;
		}
	}
	c->q[c->q_head + c->q_len++] = ev;
	return 0;
}

static json_t *
q_pop(cl *c)
{
	if (!c->q_len)
		return NULL;
	json_t *ev = c->q[c->q_head++];
	if (--c->q_len == 0)
		c->q_head = 0;
	return ev;
}

/* ---- blocking requests (remote) ------------------------------------------------ */

struct membuf {
	char *p;
	size_t len;
};

static size_t
membuf_write(char *data, size_t size, size_t nmemb, void *ud)
{
	struct membuf *m = ud;
	size_t n = size * nmemb;
	if (m->len + n > (8u << 20))
		return 0;                 /* a reply this big is not ours */
	char *np = realloc(m->p, m->len + n + 1);
	if (!np)
		return 0;
	memcpy(np + m->len, data, n);
	m->p = np;
	m->len += n;
	m->p[m->len] = 0;
	return n;
}

/* METHOD base+path with an optional JSON body; *code the HTTP status and
 * *reply the parsed JSON reply (NULL if it was not JSON).  Returns 0, or
 * ENG_ERR_IO with err set when no HTTP answer came. */
static int
http_call(cl *c, const char *method, const char *path, const char *body, long *code,
	  json_t **reply, char *err, size_t errlen)
{
	char url[2048], ebuf[CURL_ERROR_SIZE] = "";
	struct membuf m = { NULL, 0 };
	struct curl_slist *h = NULL;
	int rc = ENG_ERR_IO;
	*code = 0;
	if (reply)
		*reply = NULL;
	snprintf(url, sizeof url, "%s%s", c->base, path);
	CURL *e = curl_easy_init();
	if (!e)
		return eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: cannot start a request", url);
	for (struct curl_slist *a = c->hdrs; a; a = a->next)
		h = curl_slist_append(h, a->data);
	if (body)
		h = curl_slist_append(h, "Content-Type: application/json");
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
	if (body) {
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
	}
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, membuf_write);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, &m);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, ebuf);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, 10L);
	curl_easy_setopt(e, CURLOPT_TIMEOUT, 60L);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	CURLcode cc = curl_easy_perform(e);
	if (cc != CURLE_OK) {
		eng_seterr(err, errlen, ENG_ERR_IO, "%s: %s", url, ebuf[0] ? ebuf : curl_easy_strerror(cc));
		goto out;
	}
	curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, code);
	if (reply && m.p)
		*reply = json_loadb(m.p, m.len, 0, NULL);
	rc = 0;
out:
	curl_slist_free_all(h);
	curl_easy_cleanup(e);
	free(m.p);
	return rc;
}

/* The daemon's error message from a reply body, or a fallback. */
static const char *
reply_message(const json_t *reply, const char *fallback)
{
	const char *m = json_string_value(json_object_get(json_object_get(reply, "error"), "message"));
	return m ? m : fallback;
}

/* ---- SSE streams (remote) ------------------------------------------------------ */

/* One complete line of the stream: "data: {...}" lines are events (every
 * braid event is one data line); "event:", "id:", comments and blank lines
 * carry nothing more. */
static void
sse_line(struct stream *st, const char *line, size_t len)
{
	if (len < 5 || strncmp(line, "data:", 5) != 0)
		return;
	line += 5;
	len -= 5;
	if (len && *line == ' ') {
		line++;
		len--;
	}
	json_t *ev = json_loadb(line, len, 0, NULL);
	const char *type = json_string_value(json_object_get(ev, "type"));
	if (!ev || !json_is_object(ev) || !type) {
		json_decref(ev);
		st->broken = 1;
		return;
	}
	if (is_end_type(type))
		st->ended = 1;
	if (!st->c->p.deltas && !strcmp(type, "thread.delta")) {
		json_decref(ev);
		return;
	}
	q_push(st->c, ev);
}

static size_t
sse_write(char *data, size_t size, size_t nmemb, void *ud)
{
	struct stream *st = ud;
	size_t n = size * nmemb;
	for (size_t i = 0; i < n; i++) {
		char ch = data[i];
		if (ch == '\n') {
			size_t l = st->len;
			if (l && st->line[l - 1] == '\r')
				l--;
			sse_line(st, st->line ? st->line : "", l);
			st->len = 0;
			continue;
		}
		if (st->len + 1 >= st->cap) {
			size_t cap = st->cap ? st->cap * 2 : 4096;
			char *nl = cap <= CL_SSE_LINE_MAX ? realloc(st->line, cap) : NULL;
			if (!nl) {
				st->broken = 1;
				return 0;          /* aborts the transfer */
			}
			st->line = nl;
			st->cap = cap;
		}
		st->line[st->len++] = ch;
	}
	return n;
}

static void
stream_free(struct stream *st)
{
	if (!st)
		return;
	if (st->h) {
		curl_multi_remove_handle(st->c->multi, st->h);
		curl_easy_cleanup(st->h);
	}
	free(st->line);
	free(st);
}

static int
stream_open(cl *c, const char *job, char *err, size_t errlen)
{
	char url[2048];
	struct stream *st = calloc(1, sizeof *st);
	if (!st || !(st->h = curl_easy_init())) {
		free(st);
		return eng_seterr(err, errlen, ENG_ERR_NOMEM, "out of memory");
	}
	st->c = c;
	snprintf(st->job, sizeof st->job, "%s", job);
	snprintf(url, sizeof url, "%s/v1/jobs/%s/events?stream=1", c->base, job);
	curl_easy_setopt(st->h, CURLOPT_URL, url);
	curl_easy_setopt(st->h, CURLOPT_HTTPHEADER, c->hdrs);
	curl_easy_setopt(st->h, CURLOPT_WRITEFUNCTION, sse_write);
	curl_easy_setopt(st->h, CURLOPT_WRITEDATA, st);
	curl_easy_setopt(st->h, CURLOPT_PRIVATE, st);
	curl_easy_setopt(st->h, CURLOPT_ERRORBUFFER, st->errbuf);
	curl_easy_setopt(st->h, CURLOPT_CONNECTTIMEOUT, 10L);
	curl_easy_setopt(st->h, CURLOPT_NOSIGNAL, 1L);
	if (curl_multi_add_handle(c->multi, st->h) != CURLM_OK) {
		curl_easy_cleanup(st->h);
		free(st);
		return eng_seterr(err, errlen, ENG_ERR_NOMEM, "cannot add a stream");
	}
	st->next = c->streams;
	c->streams = st;
	return 0;
}

/* A finished transfer: if its job's end never came, make a job.failed. */
static void
stream_finished(cl *c, CURL *h, CURLcode result)
{
	struct stream *st = NULL, **pp;
	curl_easy_getinfo(h, CURLINFO_PRIVATE, (char **)&st);
	for (pp = &c->streams; *pp && *pp != st; pp = &(*pp)->next)
		;
	if (!st || !*pp)
		return;
	*pp = st->next;
	if (st->len)
		sse_write((char *)"\n", 1, 1, st);   /* a last line without '\n' */
	if (!st->ended) {
		long code = 0;
		char reason[CURL_ERROR_SIZE + 96];
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
		if (result != CURLE_OK)
			snprintf(reason, sizeof reason, "event stream broke: %s",
				 st->errbuf[0] ? st->errbuf : curl_easy_strerror(result));
		else
			snprintf(reason, sizeof reason, "event stream ended before the job did (HTTP %ld%s)",
				 code, st->broken ? ", unreadable events" : "");
		q_push(c, json_pack("{s:s, s:s, s:i, s:I, s:s}", "type", "job.failed", "job", st->job,
				    "seq", -1, "ts", (json_int_t)time(NULL) * 1000, "reason", reason));
	}
	stream_free(st);
}

/* Drive the transfers for at most wait_ms, queueing what arrives. */
static void
remote_pump(cl *c, int wait_ms)
{
	int running = 0;
	curl_multi_perform(c->multi, &running);
	if (!c->q_len && running && wait_ms > 0) {
		curl_multi_poll(c->multi, NULL, 0, wait_ms, NULL);
		curl_multi_perform(c->multi, &running);
	}
	CURLMsg *msg;
	int left;
	while ((msg = curl_multi_info_read(c->multi, &left)))
		if (msg->msg == CURLMSG_DONE)
			stream_finished(c, msg->easy_handle, msg->data.result);
}

/* ---- create / destroy ------------------------------------------------------------ */

static int
remote_open(cl *c, char *err, size_t errlen)
{
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return eng_seterr(err, errlen, ENG_ERR_IO, "cannot initialise libcurl");
	c->curl_inited = 1;
	const char *u = c->p.server;
	if (strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0)
		return eng_seterr(err, errlen, ENG_ERR_INVALID,
				  "%s: the server URL must start with http:// or https://", u);
	size_t n = strlen(u);
	while (n > 8 && u[n - 1] == '/')
		n--;
	if (n > 1500)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "the server URL is too long");
	c->base = strndup(u, n);
	c->multi = curl_multi_init();
	if (!c->base || !c->multi)
		return eng_seterr(err, errlen, ENG_ERR_NOMEM, "out of memory");
	if (c->p.api_key && *c->p.api_key) {
		char auth[1024];
		snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->p.api_key);
		if (!(c->hdrs = curl_slist_append(NULL, auth)))
			return eng_seterr(err, errlen, ENG_ERR_NOMEM, "out of memory");
	}
	long code;
	json_t *reply = NULL;
	int rc = http_call(c, "GET", "/healthz", NULL, &code, &reply, err, errlen);
	if (rc == 0 && (code != 200 || !json_is_object(reply)))
		rc = eng_seterr(err, errlen, ENG_ERR_IO, "%s/healthz: HTTP %ld, not a braid daemon",
				c->base, code);
	json_decref(reply);
	return rc;
}

cl *
cl_create(const struct cl_params *p, char *err, size_t errlen)
{
	cl *c = calloc(1, sizeof *c);
	if (!c) {
		eng_seterr(err, errlen, ENG_ERR_NOMEM, "out of memory");
		return NULL;
	}
	c->p = *p;
	if (p->server) {
		if (remote_open(c, err, errlen) < 0)
			goto fail;
		return c;
	}
	c->b = bus_create();
	c->sub = c->b ? bus_subscribe(c->b, NULL, 0, NULL, NULL) : NULL;
	/* A client that drops thread.delta does not take it from the bus, so
	 * the scheduler need not build it (bus_wants) when nobody else does. */
	if (c->sub && !p->deltas)
		bus_sub_set_types(c->sub, ~(1u << EV_THREAD_DELTA));
	if (!c->sub) {
		eng_seterr(err, errlen, ENG_ERR_NOMEM, "out of memory");
		goto fail;
	}
	struct sched_params sp = sched_default_params();
	c->s = sched_create(&p->engine, c->b, &sp, err, errlen);
	if (!c->s)
		goto fail;
	return c;
fail:
	cl_destroy(c);
	return NULL;
}

void
cl_destroy(cl *c)
{
	if (!c)
		return;
	sched_destroy(c->s);
	if (c->b) {
		bus_unsubscribe(c->b, c->sub);
		bus_destroy(c->b);
	}
	while (c->streams) {
		struct stream *st = c->streams;
		c->streams = st->next;
		stream_free(st);
	}
	if (c->multi)
		curl_multi_cleanup(c->multi);
	curl_slist_free_all(c->hdrs);
	if (c->curl_inited)
		curl_global_cleanup();
	json_t *ev;
	while ((ev = q_pop(c)))
		json_decref(ev);
	free(c->q);
	free(c->base);
	free(c);
}

int
cl_max_running(const cl *c)
{
	if (c->s) {
		const struct sched_params *sp = sched_params(c->s);
		if (sp && sp->max_running > 0)
			return sp->max_running;
	}
	return CL_REMOTE_RUNNING;
}

int
cl_in_flight(const cl *c)
{
	return c->in_flight;
}

/* ---- jobs ------------------------------------------------------------------------ */

static int
remote_submit(cl *c, struct job_req *req, char *err, size_t errlen)
{
	json_t *body = job_req_to_json(req);
	char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	json_decref(body);
	if (!text)
		return eng_seterr(err, errlen, ENG_ERR_NOMEM, "out of memory");
	long code;
	json_t *reply = NULL;
	int rc = http_call(c, "POST", "/v1/jobs", text, &code, &reply, err, errlen);
	free(text);
	if (rc < 0)
		goto out;
	const char *id = json_string_value(json_object_get(reply, "id"));
	if (code == 429) {
		rc = eng_seterr(err, errlen, ENG_ERR_RANGE, "%s", reply_message(reply, "the queue is full"));
	} else if (code >= 400 && code < 500) {
		rc = eng_seterr(err, errlen, ENG_ERR_INVALID, "%s", reply_message(reply, "request refused"));
	} else if (code != 202 || !id || !job_id_valid(id)) {
		rc = eng_seterr(err, errlen, ENG_ERR_IO, "%s/v1/jobs: HTTP %ld: %s", c->base, code,
				reply_message(reply, "no job id in the reply"));
	} else {
		char jid[EV_JOB_ID_MAX];
		snprintf(jid, sizeof jid, "%s", id);
		rc = stream_open(c, jid, err, errlen);
		if (rc == 0) {
			job_req_free(req);
			memcpy(req->id, jid, sizeof jid);
		}
	}
out:
	json_decref(reply);
	return rc;
}

int
cl_submit(cl *c, struct job_req *req, char *err, size_t errlen)
{
	int rc = c->s ? sched_submit(c->s, req, err, errlen) : remote_submit(c, req, err, errlen);
	if (rc == 0)
		c->in_flight++;
	return rc;
}

int
cl_cancel(cl *c, const char *job_id)
{
	if (c->s)
		return sched_cancel(c->s, job_id);
	if (!job_id_valid(job_id))
		return ENG_ERR_INVALID;
	char path[128], err[256];
	long code;
	snprintf(path, sizeof path, "/v1/jobs/%s", job_id);
	int rc = http_call(c, "DELETE", path, NULL, &code, NULL, err, sizeof err);
	if (rc < 0)
		return rc;
	if (code == 202)
		return 0;
	return code == 404 || code == 409 ? ENG_ERR_NOT_FOUND : ENG_ERR_IO;
}

json_t *
cl_next(cl *c, int timeout_ms)
{
	long long deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
	json_t *out = NULL;
	for (;;) {
		int left = (int)(deadline - now_ms());
		if (left < 0)
			left = 0;
		if (c->s) {
			struct ev *e = bus_pop_wait(c->sub, left);
			if (e)   /* deltas arrive only if asked for (bus_sub_set_types) */
				out = json_deep_copy(e->body);
			ev_unref(e);
			if (out || (!e && now_ms() >= deadline))
				break;
		} else {
			if (!c->q_len)
				remote_pump(c, left);
			out = q_pop(c);
			/* with no stream open, nothing more can come */
			if (out || !c->streams || now_ms() >= deadline)
				break;
		}
	}
	if (out && is_end_type(json_string_value(json_object_get(out, "type"))) && c->in_flight > 0)
		c->in_flight--;
	return out;
}
