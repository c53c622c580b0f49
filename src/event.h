/* event.h - one event of the stream every client, the store and the
 * dashboard read (ev_).  An event is immutable once published: its JSON text
 * is built once, and every subscriber sends the same bytes.  Refcounted;
 * any thread may hold a reference. */
#ifndef BRAID_EVENT_H
#define BRAID_EVENT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* The event types of DESIGN.md, in the order of the table below. */
enum ev_type {
	EV_JOB_QUEUED = 0,
	EV_JOB_STARTED,
	EV_THREAD_SPAWNED,
	EV_THREAD_DELTA,
	EV_THREAD_PRUNED,
	EV_THREAD_DONE,
	EV_MERGE,
	EV_MEMORY_HIT,
	EV_MEMORY_STORED,
	EV_JOB_DONE,
	EV_JOB_FAILED,
	EV_GAP,
	EV_N_TYPES
};

/* "job.queued", ...; NULL for an out-of-range value. */
const char *ev_type_name(enum ev_type t);
/* Inverse of ev_type_name; -1 if unknown. */
int ev_type_from_name(const char *name);

#define EV_JOB_ID_MAX 40   /* job ids are at most 39 bytes + NUL */

struct ev {
	atomic_int refs;
	enum ev_type type;
	char job[EV_JOB_ID_MAX];
	int64_t seq;          /* increasing per job, from 0                 */
	int64_t ts_ms;        /* milliseconds since the epoch               */
	int thread;           /* thread index within the job, -1 if none    */
	json_t *body;         /* the whole event object (type, job, seq, ts,
				 thread, payload fields); read-only          */
	char *json;           /* body serialised, compact, NUL-terminated   */
	size_t len;
};

/* Build an event: payload's fields are merged into an object that also gets
 * "type", "job", "seq", "ts" and (thread >= 0) "thread".  Steals payload
 * (may be NULL).  Returns NULL on allocation failure.  refs = 1. */
struct ev *ev_new(enum ev_type t, const char *job, int64_t seq, int thread, json_t *payload);

/* The same event as ev_new(EV_THREAD_DELTA, job, seq, thread, payload) with
 * payload {"text": text[0..n), "tokens": tokens, "logprob": logprob,
 * "entropy": entropy}, built without the payload object: the scheduler's
 * once-per-token call.  Like json_pack, text that is not valid UTF-8 or a
 * non-finite number leaves the payload out.  NULL on allocation failure. */
struct ev *ev_new_delta(const char *job, int64_t seq, int thread, const char *text, size_t n,
			int tokens, double logprob, double entropy);

void ev_ref(struct ev *e);
void ev_unref(struct ev *e);              /* NULL is fine */

/* Milliseconds since the epoch. */
int64_t ev_now_ms(void);

#endif
