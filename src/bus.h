/* bus.h - the event bus (bus_): the scheduler publishes, subscribers (each
 * websocket, each SSE stream, the store) read from their own queue.  Any
 * thread may publish or subscribe; each subscription is read by one thread.
 *
 * A bounded subscription that overflows drops events instead of blocking the
 * publisher: its next pop returns a "gap" event ({"dropped": N, "after_seq":
 * S, ...}) so the client knows to re-read the job's state (GET /v1/jobs/ID).
 * An unbounded subscription (cap 0) never drops: the store uses one. */
#ifndef BRAID_BUS_H
#define BRAID_BUS_H

#include <stddef.h>

#include "event.h"

typedef struct bus bus;
typedef struct bus_sub bus_sub;

bus *bus_create(void);
/* All subscriptions must be gone.  NULL is fine. */
void bus_destroy(bus *b);

/* Publish e to every matching subscription (takes one reference of e's;
 * the caller keeps its own).  Never blocks on a subscriber. */
void bus_publish(bus *b, struct ev *e);

/* Publish evs[0..n) in this order, as n bus_publish calls would (NULL
 * entries are skipped; the caller keeps its references), under one lock:
 * a subscription gets its events together, and one signal and one wake
 * call for the batch. */
void bus_publish_batch(bus *b, struct ev *const *evs, size_t n);

/* Subscribe to every job (job == NULL) or one job.  cap: queued events at
 * most (0 = unbounded).  wake(ctx) is called by the publishing thread after
 * it queues events for this subscription: once per bus_publish or
 * bus_publish_batch call that queued any (e.g. lws_cancel_service); it must
 * be cheap and must not call back into the bus.  NULL on failure. */
bus_sub *bus_subscribe(bus *b, const char *job, size_t cap,
		       void (*wake)(void *ctx), void *ctx);

/* Take only the event types in mask (bit 1u << type) on s from now on;
 * gap events always come.  A new subscription takes every type.  Events of
 * types it does not take are not counted as dropped. */
void bus_sub_set_types(bus_sub *s, unsigned mask);

/* 1 if some subscription now takes events of this type and job, else 0
 * (any thread; lock-free unless one-job subscriptions take the type).  A
 * publisher may skip building an event nobody would get. */
int bus_wants(bus *b, const char *job, enum ev_type type);

/* Remove the subscription and drop what it still holds.  NULL is fine. */
void bus_unsubscribe(bus *b, bus_sub *s);

/* The next event (the caller owns one reference: ev_unref it), or NULL
 * when the queue is empty.  Never blocks. */
struct ev *bus_pop(bus_sub *s);

/* Block until an event is queued or timeout_ms passes (-1: forever), then
 * pop as bus_pop.  For subscriber threads that own no event loop. */
struct ev *bus_pop_wait(bus_sub *s, int timeout_ms);

/* Wake any bus_pop_wait on s (returns NULL there), e.g. at shutdown. */
void bus_interrupt(bus_sub *s);

/* Real events (not gaps) queued on s so far, ever (any thread): what a
 * reader that counts what it popped must reach to have seen everything
 * published before this call. */
unsigned long long bus_sub_queued(bus_sub *s);

/* Counters for /metrics. */
size_t bus_subscribers(const bus *b);
unsigned long long bus_published(const bus *b);
unsigned long long bus_dropped(const bus *b);

#endif
