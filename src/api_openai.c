/* api_openai.c - the OpenAI-compatible API: POST /v1/chat/completions
 * (waiting or SSE-streamed, one choice per reasoning thread) and GET
 * /v1/models.  Runs on the lws service thread; a request waits for its
 * job's events without blocking the thread. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "job.h"
#include "status.h"
#include "strategy.h"

/* One choice (= one thread of the job). */
struct choice {
	int seen;              /* spawned                              */
	int done;              /* finish_reason sent / known            */
	char finish[16];
	char *text;            /* thread.done's text (owned)            */
	long long tokens;
};

struct chat {
	char id[64];           /* "chatcmpl-" + job id                  */
	char model[128];
	char strategy[JOB_STRATEGY_MAX];
	long long created;
	int stream, include_usage;
	struct choice *ch;
	int n_ch;
	long long prompt_tokens;
};

static void
chat_free(void *p)
{
	struct chat *c = p;
	if (!c)
		return;
	for (int i = 0; i < c->n_ch; i++)
		free(c->ch[i].text);
	free(c->ch);
	free(c);
}

static struct choice *
choice_at(struct chat *c, int i)
{
	if (i < 0 || i > 100000)
		return NULL;
	if (i >= c->n_ch) {
		struct choice *p = realloc(c->ch, (size_t)(i + 1) * sizeof *p);
		if (!p)
			return NULL;
		memset(p + c->n_ch, 0, (size_t)(i + 1 - c->n_ch) * sizeof *p);
		c->ch = p;
		c->n_ch = i + 1;
	}
	return &c->ch[i];
}

static const char *
finish_reason(const char *r)
{
	return r && !strcmp(r, "length") ? "length" : "stop";
}

static json_t *
ev_field(struct ev *e, const char *k)
{
	return json_object_get(e->body, k);
}

/* usage from job.done: completion tokens are the threads' tokens. */
static json_t *
usage_json(struct chat *c, struct ev *done)
{
	long long completion = 0;
	json_t *thr = done ? ev_field(done, "threads") : NULL;
	if (json_is_array(thr) && json_array_size(thr)) {
		size_t i;
		json_t *t;
		json_array_foreach(thr, i, t)
			completion += json_integer_value(json_object_get(t, "tokens"));
	} else if (done && json_is_integer(ev_field(done, "tokens"))) {
		completion = json_integer_value(ev_field(done, "tokens"));
	} else {
		for (int i = 0; i < c->n_ch; i++)
			completion += c->ch[i].tokens;
	}
	if (done && json_is_integer(ev_field(done, "prompt_tokens")))
		c->prompt_tokens = json_integer_value(ev_field(done, "prompt_tokens"));
	return json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)c->prompt_tokens,
			 "completion_tokens", (json_int_t)completion, "total_tokens",
			 (json_int_t)(c->prompt_tokens + completion));
}

static json_t *
braid_extra(struct api_sess *s, struct chat *c, struct ev *done)
{
	json_t *ans = done ? ev_field(done, "answer") : NULL;
	json_t *votes = done ? ev_field(done, "votes") : NULL;
	return json_pack("{s:s, s:s, s:O, s:O}", "job", s->job, "strategy", c->strategy, "answer",
			 ans ? ans : json_null(), "votes", votes ? votes : json_null());
}

/* Events common to both modes: remember what each thread did. */
static void
note_event(struct chat *c, struct ev *e)
{
	struct choice *ch;
	switch (e->type) {
	case EV_JOB_STARTED:
		c->prompt_tokens = json_integer_value(ev_field(e, "prompt_tokens"));
		break;
	case EV_THREAD_SPAWNED:
		if ((ch = choice_at(c, e->thread)))
			ch->seen = 1;
		break;
	case EV_THREAD_DONE:
		if ((ch = choice_at(c, e->thread))) {
			ch->seen = 1;
			const char *t = json_string_value(ev_field(e, "text"));
			free(ch->text);
			ch->text = t ? strdup(t) : NULL;
			ch->tokens = json_integer_value(ev_field(e, "tokens"));
			snprintf(ch->finish, sizeof ch->finish, "%s",
				 finish_reason(json_string_value(ev_field(e, "finish_reason"))));
		}
		break;
	case EV_THREAD_PRUNED:
		if ((ch = choice_at(c, e->thread)) && !ch->finish[0])
			snprintf(ch->finish, sizeof ch->finish, "stop");
		break;
	default:
		break;
	}
}

static const char *
fail_reason(struct ev *e)
{
	const char *r = json_string_value(ev_field(e, "reason"));
	return r ? r : "unknown";
}

/* Non-streaming: answer when the job ends. */
static int
wait_on_event(struct api_sess *s, struct ev *e)
{
	struct chat *c = s->state;
	note_event(c, e);
	if (e->type == EV_JOB_FAILED) {
		api_error(s, 500, "the job failed: %s", fail_reason(e));
		return 0;
	}
	if (e->type != EV_JOB_DONE)
		return 0;
	json_t *choices = json_array();
	int idx = 0;
	for (int i = 0; i < c->n_ch; i++) {
		if (!c->ch[i].seen)
			continue;
		json_array_append_new(choices, json_pack("{s:i, s:{s:s, s:s}, s:s, s:n}", "index", idx++,
							 "message", "role", "assistant", "content",
							 c->ch[i].text ? c->ch[i].text : "",
							 "finish_reason",
							 c->ch[i].finish[0] ? c->ch[i].finish : "stop",
							 "logprobs"));
	}
	json_t *r = json_pack("{s:s, s:s, s:I, s:s, s:o, s:o, s:o}", "id", c->id, "object",
			      "chat.completion", "created", (json_int_t)c->created, "model", c->model,
			      "choices", choices, "usage", usage_json(c, e), "braid",
			      braid_extra(s, c, e));
	return api_respond_json(s, 200, r);
}

static int
sse_json(struct api_sess *s, json_t *j)
{
	char *text = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	if (!text)
		return -1;
	int rc = api_outf(s, "data: %s\n\n", text);
	free(text);
	return rc;
}

static json_t *
chunk(struct chat *c, json_t *choices)
{
	return json_pack("{s:s, s:s, s:I, s:s, s:o}", "id", c->id, "object", "chat.completion.chunk",
			 "created", (json_int_t)c->created, "model", c->model, "choices", choices);
}

static int
chunk_one(struct api_sess *s, struct chat *c, int index, json_t *delta, const char *finish)
{
	json_t *ch = json_pack("{s:i, s:o, s:s?}", "index", index, "delta", delta, "finish_reason",
			       finish);
	if (ch && !finish)
		json_object_set_new(ch, "finish_reason", json_null());
	return sse_json(s, chunk(c, json_pack("[o]", ch)));
}

/* Streaming: a chunk per thread.delta, choice index = thread. */
static int
stream_on_event(struct api_sess *s, struct ev *e)
{
	struct chat *c = s->state;
	struct choice *ch = e->thread >= 0 ? choice_at(c, e->thread) : NULL;
	int was_seen = ch ? ch->seen : 0;
	note_event(c, e);
	switch (e->type) {
	case EV_THREAD_SPAWNED:
		if (ch && !was_seen)
			return chunk_one(s, c, e->thread, json_pack("{s:s, s:s}", "role", "assistant",
								    "content", ""), NULL);
		return 0;
	case EV_THREAD_DELTA: {
		const char *t = json_string_value(ev_field(e, "text"));
		if (!ch || !t || !*t)
			return 0;
		if (!was_seen && chunk_one(s, c, e->thread, json_pack("{s:s}", "role", "assistant"),
					   NULL) < 0)
			return -1;
		ch->seen = 1;
		return chunk_one(s, c, e->thread, json_pack("{s:s}", "content", t), NULL);
	}
	case EV_THREAD_DONE:
	case EV_THREAD_PRUNED:
		if (!ch || ch->done)
			return 0;
		ch->done = 1;
		return chunk_one(s, c, e->thread, json_object(), ch->finish[0] ? ch->finish : "stop");
	case EV_JOB_DONE:
		for (int i = 0; i < c->n_ch; i++)   /* threads that ended unannounced */
			if (c->ch[i].seen && !c->ch[i].done) {
				c->ch[i].done = 1;
				if (chunk_one(s, c, i, json_object(), "stop") < 0)
					return -1;
			}
		if (c->include_usage) {
			json_t *j = chunk(c, json_array());
			json_object_set_new(j, "usage", usage_json(c, e));
			json_object_set_new(j, "braid", braid_extra(s, c, e));
			if (sse_json(s, j) < 0)
				return -1;
		}
		api_outf(s, "data: [DONE]\n\n");
		api_stream_end(s);
		return 0;
	case EV_JOB_FAILED: {
		char msg[300];
		snprintf(msg, sizeof msg, "the job failed: %s", fail_reason(e));
		sse_json(s, json_pack("{s:{s:s, s:s}}", "error", "message", msg, "type", "server_error"));
		api_outf(s, "data: [DONE]\n\n");
		api_stream_end(s);
		return 0;
	}
	default:
		return 0;
	}
}

/* "sc16:braid-arith" -> sc, 16; "single:x" -> single, 0; "x" -> single, 0.
 * Returns -1 if the prefix is malformed. */
static int
parse_slug(const char *model, char *strategy, size_t slen, int *n)
{
	const char *colon = strchr(model, ':');
	*n = 0;
	if (!colon) {
		snprintf(strategy, slen, "single");
		return 0;
	}
	size_t len = (size_t)(colon - model), digits = 0;
	while (digits < len && isdigit((unsigned char)model[len - 1 - digits]))
		digits++;
	size_t name_len = len - digits;
	if (name_len == 0 || name_len >= slen || digits > 6)
		return -1;
	memcpy(strategy, model, name_len);
	strategy[name_len] = 0;
	if (digits) {
		*n = atoi(model + name_len);
		if (*n < 1)
			return -1;
	}
	return 0;
}

/* OpenAI messages -> plain {role, content: string}; NULL and err on bad input. */
static json_t *
normalize_messages(const json_t *msgs, char *err, size_t errlen)
{
	if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
		snprintf(err, errlen, "messages must be a non-empty array");
		return NULL;
	}
	json_t *out = json_array();
	size_t i;
	json_t *m;
	json_array_foreach(msgs, i, m) {
		const char *role = json_string_value(json_object_get(m, "role"));
		json_t *content = json_object_get(m, "content");
		if (!json_is_object(m) || !role) {
			snprintf(err, errlen, "messages[%zu] needs a string role", i);
			goto fail;
		}
		char *text = NULL;
		if (json_is_string(content)) {
			text = strdup(json_string_value(content));
		} else if (json_is_array(content)) {
			size_t k, total = 0;
			json_t *part;
			json_array_foreach(content, k, part) {
				const char *t = json_string_value(json_object_get(part, "text"));
				if (!t) {
					snprintf(err, errlen, "messages[%zu].content[%zu] must be a text part", i, k);
					goto fail;
				}
				total += strlen(t);
			}
			text = calloc(1, total + 1);
			json_array_foreach(content, k, part)
				if (text)
					strcat(text, json_string_value(json_object_get(part, "text")));
		} else if (json_is_null(content) || !content) {
			text = strdup("");
		} else {
			snprintf(err, errlen, "messages[%zu].content must be a string or an array of text parts", i);
			goto fail;
		}
		if (!text)
			goto oom;
		json_array_append_new(out, json_pack("{s:s, s:s}", "role", role, "content", text));
		free(text);
	}
	return out;
oom:
	snprintf(err, errlen, "out of memory");
fail:
	json_decref(out);
	return NULL;
}

/* Copy key from src to dst if present, checking it is a number. */
static int
copy_number(json_t *dst, const json_t *src, const char *key, const char *as, int integer,
	    char *err, size_t errlen)
{
	json_t *v = json_object_get(src, key);
	if (!v || json_is_null(v))
		return 0;
	if (integer ? !json_is_integer(v) : !json_is_number(v)) {
		snprintf(err, errlen, "%s must be %s", key, integer ? "an integer" : "a number");
		return -1;
	}
	json_object_set(dst, as, v);
	return 0;
}

int
api_chat_completions(struct api_sess *s, const char *arg)
{
	(void)arg;
	char err[300] = "";
	json_t *body = api_body_json(s), *jb = NULL;
	struct job_req r;
	job_req_init(&r);
	if (!body)
		return 0;
	struct chat *c = calloc(1, sizeof *c);
	if (!c) {
		api_error(s, 500, "out of memory");
		goto done;
	}
	s->state = c;
	s->free_state = chat_free;
	c->created = (long long)time(NULL);

	json_t *model = json_object_get(body, "model");
	if (model && !json_is_string(model)) {
		api_error(s, 400, "model must be a string");
		goto done;
	}
	snprintf(c->model, sizeof c->model, "%s", model ? json_string_value(model) : s->ctx->model);
	int slug_n = 0;
	if (parse_slug(c->model, c->strategy, sizeof c->strategy, &slug_n) < 0) {
		api_error(s, 400, "model '%s': a slug is STRATEGY[N]:MODEL, e.g. sc16:%s", c->model,
			  s->ctx->model);
		goto done;
	}
	jb = json_object();
	json_t *msgs = normalize_messages(json_object_get(body, "messages"), err, sizeof err);
	if (!msgs) {
		api_error(s, 400, "%s", err);
		goto done;
	}
	json_object_set_new(jb, "messages", msgs);
	if (copy_number(jb, body, "temperature", "temperature", 0, err, sizeof err) < 0 ||
	    copy_number(jb, body, "top_p", "top_p", 0, err, sizeof err) < 0 ||
	    copy_number(jb, body, "seed", "seed", 1, err, sizeof err) < 0 ||
	    copy_number(jb, body, "max_completion_tokens", "max_tokens", 1, err, sizeof err) < 0 ||
	    copy_number(jb, body, "max_tokens", "max_tokens", 1, err, sizeof err) < 0) {
		api_error(s, 400, "%s", err);
		goto done;
	}
	json_t *jn = json_object_get(body, "n");
	if (jn && !json_is_null(jn) && !json_is_integer(jn)) {
		api_error(s, 400, "n must be an integer");
		goto done;
	}
	json_int_t n = jn && json_is_integer(jn) ? json_integer_value(jn) : 0;
	if (!n && slug_n)
		n = slug_n;
	json_t *braid = json_object_get(body, "braid");
	if (braid && !json_is_null(braid)) {
		if (!json_is_object(braid)) {
			api_error(s, 400, "braid must be an object {strategy, n, params}");
			goto done;
		}
		json_t *bs = json_object_get(braid, "strategy"), *bn = json_object_get(braid, "n");
		if (bs && !json_is_string(bs)) {
			api_error(s, 400, "braid.strategy must be a string");
			goto done;
		}
		if (bn && !json_is_integer(bn)) {
			api_error(s, 400, "braid.n must be an integer");
			goto done;
		}
		if (bs)
			snprintf(c->strategy, sizeof c->strategy, "%s", json_string_value(bs));
		if (bn)
			n = json_integer_value(bn);
		json_t *bp = json_object_get(braid, "params");
		if (bp && !json_is_null(bp))
			json_object_set(jb, "params", bp);
	}
	if (!strcmp(c->strategy, "single") && n > 1)
		snprintf(c->strategy, sizeof c->strategy, "sc");   /* n choices: n threads */
	if (n != 0)
		json_object_set_new(jb, "n", json_integer(n));
	else if (!strcmp(c->strategy, "single"))
		json_object_set_new(jb, "n", json_integer(1));
	json_object_set_new(jb, "strategy", json_string(c->strategy));
	json_t *st = json_object_get(body, "stream");
	if (st && !json_is_null(st) && !json_is_boolean(st)) {
		api_error(s, 400, "stream must be a boolean");
		goto done;
	}
	c->stream = json_is_true(st);
	c->include_usage = json_is_true(json_object_get(json_object_get(body, "stream_options"),
							"include_usage"));

	const struct sched_params *sp = sched_params(s->ctx->sched);
	int max_n = sp && sp->max_threads_per_job > 0 ? sp->max_threads_per_job : 64;
	int max_tok = sp && sp->max_tokens > 0 ? sp->max_tokens : 4096;
	if (job_req_from_json(jb, &r, max_n, max_tok, err, sizeof err) < 0) {
		api_error(s, 400, "%s", err[0] ? err : "invalid request");
		goto done;
	}
	char id[EV_JOB_ID_MAX];
	if (api_submit(s, &r, c->stream ? stream_on_event : wait_on_event, id) < 0)
		goto done;
	snprintf(c->id, sizeof c->id, "chatcmpl-%s", id);
	s->cancel_on_close = 1;   /* a client that leaves cancels its job */
	if (c->stream)
		api_stream_start(s, 200, "text/event-stream");
done:
	job_req_free(&r);
	json_decref(jb);
	json_decref(body);
	return 0;
}

int
api_models(struct api_sess *s, const char *arg)
{
	(void)arg;
	json_t *data = json_array();
	const char *m = s->ctx->model;
	long long created = (long long)(s->ctx->started_ms / 1000);
	char id[200];
	json_array_append_new(data, json_pack("{s:s, s:s, s:I, s:s}", "id", m, "object", "model",
					      "created", (json_int_t)created, "owned_by", "braid"));
	for (const struct strategy *st = strat_table; st->name; st++) {
		snprintf(id, sizeof id, "%s:%s", st->name, m);
		json_array_append_new(data, json_pack("{s:s, s:s, s:I, s:s}", "id", id, "object", "model",
						      "created", (json_int_t)created, "owned_by", "braid"));
	}
	snprintf(id, sizeof id, "sc16:%s", m);
	json_array_append_new(data, json_pack("{s:s, s:s, s:I, s:s}", "id", id, "object", "model",
					      "created", (json_int_t)created, "owned_by", "braid"));
	return api_respond_json(s, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
}
