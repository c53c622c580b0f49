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

/* Subscribe to every job (job == NULL) or one job.  cap: queued events at
 * most (0 = unbounded).  wake(ctx) is called by the publishing thread after
 * it queues an event for this subscription (e.g. lws_cancel_service); it
 * must be cheap and must not call back into the bus.  NULL on failure. */
bus_sub *bus_subscribe(bus *b, const char *job, size_t cap,
		       void (*wake)(void *ctx), void *ctx);

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

/* Counters for /metrics. */
size_t bus_subscribers(const bus *b);
unsigned long long bus_published(const bus *b);
unsigned long long bus_dropped(const bus *b);

#endif
