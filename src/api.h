/* api.h - what the route handlers (api_jobs.c, api_openai.c, api_events.c)
 * share with the server core (server.c): the session object of one HTTP
 * request or websocket, and the calls that answer it.  Everything here runs
 * on the lws service thread, except api_sess.wake, which any thread may set. */
#ifndef BRAID_API_H
#define BRAID_API_H

#include <stdatomic.h>
#include <stddef.h>

#include <jansson.h>

#include "bus.h"
#include "event.h"
#include "sched.h"
#include "server.h"
#include "store.h"

struct lws;
struct lws_context;

/* Server-wide state the handlers read (owned by srv; lws thread only unless
 * noted). */
struct api_ctx {
	sched *sched;
	bus *bus;
	store *store;
	struct lws_context *lws;       /* for lws_cancel_service (any thread)   */
	struct srv_params p;           /* strings below are owned copies        */
	char host_port[300];           /* "host:port" the Origin must match      */
	char model[128];               /* model name for /v1/models and slugs    */
	unsigned long long http_by_code[600]; /* responses sent, by status      */
	int64_t started_ms;
};

enum api_method { API_GET = 0, API_POST, API_DELETE, API_OTHER };

struct api_sess;

/* An event for a session that subscribed (api_subscribe): append output,
 * start or finish the response.  Returns 0, or -1 to close the connection. */
typedef int (*api_event_fn)(struct api_sess *s, struct ev *e);

/* One HTTP request (or one websocket).  Created when the request arrives,
 * freed when the transaction ends or the socket closes. */
struct api_sess {
	struct api_ctx *ctx;
	struct lws *wsi;
	int is_ws;
	enum api_method method;
	char path[512];                /* decoded, without the query            */
	char *body;                    /* request body, NUL-terminated (owned)   */
	size_t body_len;

	/* the response */
	int responding;                /* status and type are set               */
	int status;
	char ctype[64];
	int streaming;                 /* no content length: close at the end   */
	int headers_sent;
	char hdr_name[2][32], hdr_val[2][96];  /* extra headers ("name:")       */
	int n_hdr;
	char *out;                     /* bytes still to send from out_off       */
	size_t out_len, out_off, out_cap;
	int finished;                  /* nothing will be appended any more      */
	int close_after;               /* close the connection after the response */

	/* event delivery */
	bus_sub *sub;
	atomic_int wake;               /* set by the bus's publishing thread     */
	api_event_fn on_event;
	struct ev *pending;            /* websocket: popped, not yet written     */
	char job[EV_JOB_ID_MAX];       /* the job this request follows, or ""   */
	int job_over;                  /* job.done/job.failed seen               */
	int cancel_on_close;           /* sched_cancel the job if the client leaves */

	void *state;                   /* handler's own, freed with free_state   */
	void (*free_state)(void *state);

	struct api_sess *prev, *next;  /* the server's list of live sessions     */
};

/* ---- answering (server_sess.c) ---- */
/* A whole response; body copied.  Returns 0 (or -1 on allocation failure). */
int api_respond(struct api_sess *s, int status, const char *ctype, const char *body, size_t len);
/* A JSON response; steals j. */
int api_respond_json(struct api_sess *s, int status, json_t *j);
/* {"error": {"message": ..., "type": ..., "code": status}}. */
int api_error(struct api_sess *s, int status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* An extra header for the response ("retry-after:", "5"). */
void api_header(struct api_sess *s, const char *name, const char *value);
/* Start a streamed response (no content length; closed at the end). */
int api_stream_start(struct api_sess *s, int status, const char *ctype);
int api_out(struct api_sess *s, const void *data, size_t len);
int api_outf(struct api_sess *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Nothing more will be appended. */
void api_stream_end(struct api_sess *s);
/* Follow events (one job, or every job with job == NULL); cap as bus_subscribe. */
int api_subscribe(struct api_sess *s, const char *job, size_t cap, api_event_fn fn);

/* Value of query argument name (decoded) into buf; 1 if present. */
int api_query(struct api_sess *s, const char *name, char *buf, size_t len);
/* A request header into buf (lws token index); 1 if present. */
int api_header_in(struct api_sess *s, int token, char *buf, size_t len);

/* Parse the body as a JSON object; on failure answers 400 and returns NULL. */
json_t *api_body_json(struct api_sess *s);

/* ---- handlers: arg is the {id} path segment or NULL ---- */
int api_jobs_create(struct api_sess *s, const char *arg);
int api_jobs_list(struct api_sess *s, const char *arg);
int api_jobs_get(struct api_sess *s, const char *arg);
int api_jobs_cancel(struct api_sess *s, const char *arg);
int api_jobs_events(struct api_sess *s, const char *arg);
int api_chat_completions(struct api_sess *s, const char *arg);
int api_models(struct api_sess *s, const char *arg);
int api_healthz(struct api_sess *s, const char *arg);
int api_metrics(struct api_sess *s, const char *arg);
/* Websocket /v1/events: subscribe a new websocket session (?job=ID). */
int api_ws_open(struct api_sess *s);
/* Websocket WRITEABLE: send the next event (replay first, then live). */
int api_ws_writeable(struct api_sess *s);

/* A freshly submitted job: fill in defaults the scheduler needs, check the
 * strategy, submit.  Answers the error itself (400/429/500) and returns -1;
 * 0 on success with the id in id_out.  Subscribes s first when fn != NULL so
 * that no event of the job is missed. */
int api_submit(struct api_sess *s, struct job_req *r, api_event_fn fn, char id_out[EV_JOB_ID_MAX]);

#endif
