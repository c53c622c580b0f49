/* api_events.c - a job's event trace (GET /v1/jobs/{id}/events: JSON array,
 * or SSE replay + live) and the websocket /v1/events[?job=ID] (replay of a
 * job's past events from the store, then live from the bus).  Runs on the
 * lws service thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libwebsockets.h>

#include "api.h"
#include "job.h"
#include "status.h"

/* What a follower has replayed from the store. */
struct follow {
	json_t *replay;        /* array of past events, or NULL   */
	size_t next;           /* next replay index to send        */
	long long last_seq;    /* highest seq replayed; -1 none    */
};

static void
follow_free(void *p)
{
	struct follow *f = p;
	if (!f)
		return;
	json_decref(f->replay);
	free(f);
}

/* Past events of job id after subscribing (so none falls between the two);
 * *status_out the job's status.  404/500 answered here for HTTP sessions. */
static int
replay_load(struct api_sess *s, const char *id, struct follow *f, char *status_out, size_t slen)
{
	json_t *job = NULL, *evs = NULL;
	store_sync(s->ctx->store);
	int rc = store_job_get(s->ctx->store, id, &job);
	if (rc < 0)
		return rc;
	snprintf(status_out, slen, "%s",
		 json_string_value(json_object_get(job, "status")) ? json_string_value(json_object_get(job, "status")) : "");
	json_decref(job);
	rc = store_events(s->ctx->store, id, -1, &evs);
	if (rc < 0)
		return rc;
	f->replay = evs;
	f->next = 0;
	f->last_seq = -1;
	size_t i;
	json_t *e;
	json_array_foreach(evs, i, e) {
		long long seq = (long long)json_integer_value(json_object_get(e, "seq"));
		if (seq > f->last_seq)
			f->last_seq = seq;
	}
	return 0;
}

static int
sse_event(struct api_sess *s, long long seq, const char *type, const char *json)
{
	return api_outf(s, "id: %lld\nevent: %s\ndata: %s\n\n", seq, type, json);
}

/* Live event of an SSE trace stream. */
static int
trace_on_event(struct api_sess *s, struct ev *e)
{
	struct follow *f = s->state;
	if (e->seq <= f->last_seq)
		return 0;      /* already replayed from the store */
	f->last_seq = e->seq;
	if (sse_event(s, e->seq, ev_type_name(e->type), e->json) < 0)
		return -1;
	if (e->type == EV_JOB_DONE || e->type == EV_JOB_FAILED)
		api_stream_end(s);
	return 0;
}

static int
wants_stream(struct api_sess *s)
{
	char buf[256];
	if (api_query(s, "stream", buf, sizeof buf))
		return strcmp(buf, "0") && strcmp(buf, "false");
	return api_header_in(s, WSI_TOKEN_HTTP_ACCEPT, buf, sizeof buf) &&
	       strstr(buf, "text/event-stream") != NULL;
}

int
api_jobs_events(struct api_sess *s, const char *id)
{
	if (!id || !job_id_valid(id))
		return api_error(s, 404, "no such job (not a job id)");
	char after_buf[32];
	long long after = -1;
	if (api_query(s, "after", after_buf, sizeof after_buf)) {
		char *end;
		after = strtoll(after_buf, &end, 10);
		if (*end || after < -1)
			return api_error(s, 400, "after must be an integer >= -1");
	}
	struct follow *f = calloc(1, sizeof *f);
	if (!f)
		return api_error(s, 500, "out of memory");
	s->state = f;
	s->free_state = follow_free;
	int stream = wants_stream(s);
	if (stream) {
		snprintf(s->job, sizeof s->job, "%s", id);
		if (api_subscribe(s, id, 0, trace_on_event) < 0)
			return api_error(s, 500, "out of memory");
	}
	char status[32];
	int rc = replay_load(s, id, f, status, sizeof status);
	if (rc == ENG_ERR_NOT_FOUND) {
		bus_unsubscribe(s->ctx->bus, s->sub);
		s->sub = NULL;
		return api_error(s, 404, "no such job: %s", id);
	}
	if (rc < 0)
		return api_error(s, 500, "store: %s", eng_strerror(rc));
	if (!stream) {
		json_t *out = json_array();
		size_t i;
		json_t *e;
		json_array_foreach(f->replay, i, e)
			if (json_integer_value(json_object_get(e, "seq")) > after)
				json_array_append(out, e);
		return api_respond_json(s, 200, out);
	}
	api_stream_start(s, 200, "text/event-stream");
	size_t i;
	json_t *e;
	json_array_foreach(f->replay, i, e) {
		long long seq = (long long)json_integer_value(json_object_get(e, "seq"));
		if (seq <= after)
			continue;
		char *text = json_dumps(e, JSON_COMPACT);
		if (!text || sse_event(s, seq, json_string_value(json_object_get(e, "type")), text) < 0) {
			free(text);
			return -1;
		}
		free(text);
	}
	if (!strcmp(status, "done") || !strcmp(status, "failed")) {
		s->job_over = 1;
		api_stream_end(s);
	}
	return 0;
}

/* Websocket events are popped in api_ws_writeable, not pumped. */
static int
ws_unused(struct api_sess *s, struct ev *e)
{
	(void)s;
	(void)e;
	return 0;
}

int
api_ws_open(struct api_sess *s)
{
	char job[EV_JOB_ID_MAX + 8];
	int one = api_query(s, "job", job, sizeof job);
	if (one && !job_id_valid(job))
		return -1;
	if (api_subscribe(s, one ? job : NULL, s->ctx->p.ws_queue, ws_unused) < 0)
		return -1;
	if (!one)
		return 0;
	struct follow *f = calloc(1, sizeof *f);
	if (!f)
		return -1;
	s->state = f;
	s->free_state = follow_free;
	char status[32];
	int rc = replay_load(s, job, f, status, sizeof status);
	if (rc < 0 && rc != ENG_ERR_NOT_FOUND)
		return -1;
	/* an unknown job may simply not exist yet: follow it live */
	if (f->replay && json_array_size(f->replay))
		lws_callback_on_writable(s->wsi);
	return 0;
}

static int
ws_send(struct api_sess *s, const char *text, size_t len)
{
	unsigned char *buf = malloc(LWS_PRE + len);
	if (!buf)
		return -1;
	memcpy(buf + LWS_PRE, text, len);
	int w = lws_write(s->wsi, buf + LWS_PRE, len, LWS_WRITE_TEXT);
	free(buf);
	return w < (int)len ? -1 : 0;
}

int
api_ws_writeable(struct api_sess *s)
{
	struct follow *f = s->state;
	if (f && f->replay && f->next < json_array_size(f->replay)) {
		char *text = json_dumps(json_array_get(f->replay, f->next), JSON_COMPACT);
		f->next++;
		int rc = text ? ws_send(s, text, strlen(text)) : -1;
		free(text);
		lws_callback_on_writable(s->wsi);
		return rc;
	}
	for (;;) {
		if (!s->pending && s->sub)
			s->pending = bus_pop(s->sub);
		if (!s->pending)
			return 0;
		if (f && s->pending->type != EV_GAP && s->pending->seq <= f->last_seq) {
			ev_unref(s->pending);     /* replayed already */
			s->pending = NULL;
			continue;
		}
		break;
	}
	int rc = ws_send(s, s->pending->json, s->pending->len);
	ev_unref(s->pending);
	s->pending = NULL;
	lws_callback_on_writable(s->wsi);   /* maybe more queued */
	return rc;
}
