/* bus.c - the event bus (bus_): publishers (any thread, mostly the engine
 * thread) fan each event out to per-subscription queues under one mutex;
 * each subscription is drained by its own reader thread.
 *
 * Overflow rule (bounded subscriptions): when a subscription already holds
 * cap events, a new event is dropped and counted, never an old one, so what
 * is queued stays a contiguous prefix of the stream.  The reader then gets
 * one "gap" event at the place of the hole: before the next event that fits
 * again, or as soon as the queue runs empty.  The gap event has seq -1, job =
 * the subscription's job (or, for an all-jobs subscription, the job of the
 * first dropped event), and the payload
 *   {"dropped": N, "first_dropped_seq": S, "after_seq": S - 1,
 *    "jobs": [distinct job ids of the dropped events, at most GAP_JOBS_MAX],
 *    "jobs_truncated": true (only when there were more)}
 * "after_seq" is the last seq of that job the reader got before the hole. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bus.h"

#define GAP_JOBS_MAX 16
#define WAKE_STACK 64

struct bus_sub {
	bus *b;
	struct bus_sub *prev, *next;   /* b->subs list                           */
	char job[EV_JOB_ID_MAX];       /* "" = every job                         */
	unsigned types;                /* event types taken (bit 1u << type)     */
	size_t cap;                    /* 0 = unbounded                          */
	void (*wake)(void *ctx);
	void *ctx;

	/* Ring of queued events (gap events included).  Bounded: n_real <= cap
	 * real events, and at most one gap per hole, so 2*cap+1 slots suffice. */
	struct ev **ring;
	size_t ring_len, head, count;
	size_t n_real;

	/* The hole being counted (dropped > 0). */
	unsigned long long dropped;
	int64_t first_dropped_seq;
	char gap_jobs[GAP_JOBS_MAX][EV_JOB_ID_MAX];
	int n_gap_jobs;
	bool gap_jobs_truncated;

	atomic_ullong queued;          /* real events queued, ever               */
	pthread_cond_t cv;             /* bus_pop_wait                           */
	bool interrupted;
	int waking;                    /* publishers about to call wake(ctx)     */
};

struct bus {
	pthread_mutex_t mu;
	pthread_cond_t idle_cv;        /* a sub's waking dropped to 0            */
	struct bus_sub *subs;
	atomic_size_t n_subs;
	atomic_ullong published, dropped;
	/* Subscriptions that take each type: all-jobs ones, one-job ones
	 * (changed under mu; bus_wants reads them without it). */
	atomic_int want_all[EV_N_TYPES], want_job[EV_N_TYPES];
};

#define ALL_TYPES ((1u << EV_N_TYPES) - 1)

/* Count s's types in or out of the bus's tallies (caller holds b->mu). */
static void
want_count(bus *b, const struct bus_sub *s, int delta)
{
	for (int t = 0; t < EV_N_TYPES; t++)
		if (s->types & (1u << t))
			atomic_fetch_add(s->job[0] ? &b->want_job[t] : &b->want_all[t], delta);
}

bus *
bus_create(void)
{
	bus *b = calloc(1, sizeof *b);
	if (!b)
		return NULL;
	if (pthread_mutex_init(&b->mu, NULL)) {
		free(b);
		return NULL;
	}
	if (pthread_cond_init(&b->idle_cv, NULL)) {
		pthread_mutex_destroy(&b->mu);
		free(b);
		return NULL;
	}
	atomic_init(&b->n_subs, 0);
	atomic_init(&b->published, 0);
	atomic_init(&b->dropped, 0);
	for (int t = 0; t < EV_N_TYPES; t++) {
		atomic_init(&b->want_all[t], 0);
		atomic_init(&b->want_job[t], 0);
	}
	return b;
}

void
bus_destroy(bus *b)
{
	if (!b)
		return;
	/* All subscriptions must be gone (programmer error otherwise); free
	 * any left rather than leak them. */
	while (b->subs)
		bus_unsubscribe(b, b->subs);
	pthread_cond_destroy(&b->idle_cv);
	pthread_mutex_destroy(&b->mu);
	free(b);
}

/* ---- the ring (caller holds b->mu) ------------------------------------------ */

static int
ring_push(struct bus_sub *s, struct ev *e)
{
	if (s->count == s->ring_len) {
		/* Only unbounded rings grow; bounded ones are sized for the worst
		 * case at subscribe time. */
		size_t n = s->ring_len ? s->ring_len * 2 : 64;
		struct ev **r = malloc(n * sizeof *r);
		if (!r)
			return -1;
		for (size_t i = 0; i < s->count; i++)
			r[i] = s->ring[(s->head + i) % s->ring_len];
		free(s->ring);
		s->ring = r;
		s->ring_len = n;
		s->head = 0;
	}
	s->ring[(s->head + s->count) % s->ring_len] = e;
	s->count++;
	return 0;
}

static struct ev *
ring_pop(struct bus_sub *s)
{
	struct ev *e;
	if (!s->count)
		return NULL;
	e = s->ring[s->head];
	s->head = (s->head + 1) % s->ring_len;
	s->count--;
	return e;
}

/* ---- gaps (caller holds b->mu) ---------------------------------------------- */

static void
gap_note(struct bus_sub *s, const struct ev *e)
{
	if (s->dropped == 0) {
		s->first_dropped_seq = e->seq;
		s->n_gap_jobs = 0;
		s->gap_jobs_truncated = false;
	}
	s->dropped++;
	for (int i = 0; i < s->n_gap_jobs; i++)
		if (strcmp(s->gap_jobs[i], e->job) == 0)
			return;
	if (s->n_gap_jobs < GAP_JOBS_MAX)
		memcpy(s->gap_jobs[s->n_gap_jobs++], e->job, EV_JOB_ID_MAX);
	else
		s->gap_jobs_truncated = true;
}

/* The gap event for the current hole; NULL if it cannot be allocated.  The
 * hole is kept until gap_reset (once the event is queued), so a failure
 * reports it later, whole. */
static struct ev *
gap_take(struct bus_sub *s)
{
	json_t *payload = json_object(), *jobs = json_array();
	const char *job = s->job[0] ? s->job : s->gap_jobs[0];

	if (!payload || !jobs)
		goto fail;
	for (int i = 0; i < s->n_gap_jobs; i++)
		if (json_array_append_new(jobs, json_string(s->gap_jobs[i])))
			goto fail;
	if (json_object_set_new(payload, "dropped", json_integer((json_int_t)s->dropped)) ||
	    json_object_set_new(payload, "first_dropped_seq", json_integer(s->first_dropped_seq)) ||
	    json_object_set_new(payload, "after_seq", json_integer(s->first_dropped_seq - 1)) ||
	    json_object_set_new(payload, "jobs", jobs))
		goto fail;
	jobs = NULL;
	if (s->gap_jobs_truncated && json_object_set_new(payload, "jobs_truncated", json_true()))
		goto fail;
	return ev_new(EV_GAP, job, -1, -1, payload);
fail:
	json_decref(jobs);
	json_decref(payload);
	return NULL;
}

static void
gap_reset(struct bus_sub *s)
{
	s->dropped = 0;
	s->n_gap_jobs = 0;
	s->gap_jobs_truncated = false;
}

/* Queue e (a reference the caller gave) on s, or drop it.  true if queued. */
static bool
sub_offer(bus *b, struct bus_sub *s, struct ev *e)
{
	if (s->cap && s->n_real >= s->cap)
		goto drop;
	if (s->dropped) {
		struct ev *g = gap_take(s);
		if (!g)
			goto drop;
		if (ring_push(s, g)) {
			ev_unref(g);
			goto drop;
		}
		gap_reset(s);
	}
	if (ring_push(s, e))
		goto drop;
	s->n_real++;
	atomic_fetch_add_explicit(&s->queued, 1, memory_order_relaxed);
	return true;
drop:
	gap_note(s, e);
	ev_unref(e);
	atomic_fetch_add(&b->dropped, 1);
	return false;
}

void
bus_publish(bus *b, struct ev *e)
{
	bus_publish_batch(b, &e, 1);
}

void
bus_publish_batch(bus *b, struct ev *const *evs, size_t n)
{
	struct bus_sub *stack[WAKE_STACK], **wakes = stack;
	size_t n_wakes = 0, n_subs, n_ev = 0;

	if (!b || !evs)
		return;
	for (size_t i = 0; i < n; i++)
		n_ev += evs[i] != NULL;
	if (!n_ev)
		return;
	atomic_fetch_add(&b->published, n_ev);
	pthread_mutex_lock(&b->mu);
	n_subs = atomic_load(&b->n_subs);
	if (n_subs > WAKE_STACK) {
		wakes = malloc(n_subs * sizeof *wakes);
		/* Out of memory: fall back to waking under the lock (wake
		 * must not call into the bus, so this only costs latency). */
	}
	for (struct bus_sub *s = b->subs; s; s = s->next) {
		size_t queued = 0;
		for (size_t i = 0; i < n; i++) {
			struct ev *e = evs[i];
			if (!e || !(s->types & (1u << e->type)) ||
			    (s->job[0] && strcmp(s->job, e->job) != 0))
				continue;
			ev_ref(e);
			queued += sub_offer(b, s, e);
		}
		if (!queued)
			continue;
		/* one signal and one wake for the batch: each subscription
		 * has one reader */
		pthread_cond_signal(&s->cv);
		if (!s->wake)
			continue;
		if (wakes) {
			s->waking++;
			wakes[n_wakes++] = s;
		} else {
			s->wake(s->ctx);
		}
	}
	pthread_mutex_unlock(&b->mu);
	if (!n_wakes)
		goto out;
	/* wake outside the lock: it may take the reader's own locks, and a
	 * reader holding those may be calling bus_pop.  s->waking keeps s
	 * (and, by bus_unsubscribe's contract, ctx) alive meanwhile. */
	for (size_t i = 0; i < n_wakes; i++)
		wakes[i]->wake(wakes[i]->ctx);
	pthread_mutex_lock(&b->mu);
	for (size_t i = 0; i < n_wakes; i++)
		if (--wakes[i]->waking == 0)
			pthread_cond_broadcast(&b->idle_cv);
	pthread_mutex_unlock(&b->mu);
out:
	if (wakes != stack)
		free(wakes);
}

/* pthread_cond_timedwait against CLOCK_MONOTONIC, immune to clock steps. */
static int
cond_init_monotonic(pthread_cond_t *cv)
{
	pthread_condattr_t a;
	int rc;
	if (pthread_condattr_init(&a))
		return -1;
	rc = pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	if (!rc)
		rc = pthread_cond_init(cv, &a);
	pthread_condattr_destroy(&a);
	return rc ? -1 : 0;
}

bus_sub *
bus_subscribe(bus *b, const char *job, size_t cap, void (*wake)(void *ctx), void *ctx)
{
	bus_sub *s;

	if (!b || (job && strlen(job) >= EV_JOB_ID_MAX))
		return NULL;
	if (cap > ((size_t)-1 / sizeof(struct ev *) - 2) / 2)
		return NULL;
	s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	if (cond_init_monotonic(&s->cv)) {
		free(s);
		return NULL;
	}
	s->b = b;
	if (job)
		strcpy(s->job, job);
	s->types = ALL_TYPES;
	atomic_init(&s->queued, 0);
	s->cap = cap;
	s->wake = wake;
	s->ctx = ctx;
	if (cap) {
		s->ring_len = 2 * cap + 1;
		s->ring = malloc(s->ring_len * sizeof *s->ring);
		if (!s->ring) {
			pthread_cond_destroy(&s->cv);
			free(s);
			return NULL;
		}
	}
	pthread_mutex_lock(&b->mu);
	s->next = b->subs;
	if (b->subs)
		b->subs->prev = s;
	b->subs = s;
	atomic_fetch_add(&b->n_subs, 1);
	want_count(b, s, 1);
	pthread_mutex_unlock(&b->mu);
	return s;
}

void
bus_sub_set_types(bus_sub *s, unsigned mask)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->b->mu);
	want_count(s->b, s, -1);
	s->types = mask & ALL_TYPES;
	want_count(s->b, s, 1);
	pthread_mutex_unlock(&s->b->mu);
}

int
bus_wants(bus *b, const char *job, enum ev_type type)
{
	if (!b || (unsigned)type >= EV_N_TYPES)
		return 0;
	if (atomic_load_explicit(&b->want_all[type], memory_order_relaxed) > 0)
		return 1;
	if (atomic_load_explicit(&b->want_job[type], memory_order_relaxed) == 0)
		return 0;
	int want = 0;
	pthread_mutex_lock(&b->mu);
	for (struct bus_sub *s = b->subs; s && !want; s = s->next)
		want = s->job[0] && (s->types & (1u << type)) && job && strcmp(s->job, job) == 0;
	pthread_mutex_unlock(&b->mu);
	return want;
}

void
bus_unsubscribe(bus *b, bus_sub *s)
{
	struct ev *e;

	if (!b || !s)
		return;
	pthread_mutex_lock(&b->mu);
	if (s->prev)
		s->prev->next = s->next;
	else
		b->subs = s->next;
	if (s->next)
		s->next->prev = s->prev;
	atomic_fetch_sub(&b->n_subs, 1);
	want_count(b, s, -1);
	/* After this returns, no publisher calls s->wake(s->ctx) any more. */
	while (s->waking)
		pthread_cond_wait(&b->idle_cv, &b->mu);
	pthread_mutex_unlock(&b->mu);
	while ((e = ring_pop(s)))
		ev_unref(e);
	free(s->ring);
	pthread_cond_destroy(&s->cv);
	free(s);
}

/* Caller holds the lock. */
static struct ev *
pop_locked(struct bus_sub *s)
{
	struct ev *e = ring_pop(s);
	if (e) {
		/* Gap events never count against cap; real ones do. */
		if (e->type != EV_GAP && s->n_real)
			s->n_real--;
		return e;
	}
	/* Queue drained while a hole is open: report it now. */
	if (s->dropped) {
		struct ev *g = gap_take(s);
		if (g)
			gap_reset(s);
		return g;
	}
	return NULL;
}

struct ev *
bus_pop(bus_sub *s)
{
	struct ev *e;
	if (!s)
		return NULL;
	pthread_mutex_lock(&s->b->mu);
	e = pop_locked(s);
	pthread_mutex_unlock(&s->b->mu);
	return e;
}

struct ev *
bus_pop_wait(bus_sub *s, int timeout_ms)
{
	struct ev *e;
	struct timespec dl;

	if (!s)
		return NULL;
	if (timeout_ms >= 0) {
		clock_gettime(CLOCK_MONOTONIC, &dl);
		dl.tv_sec += timeout_ms / 1000;
		dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
		if (dl.tv_nsec >= 1000000000) {
			dl.tv_sec++;
			dl.tv_nsec -= 1000000000;
		}
	}
	pthread_mutex_lock(&s->b->mu);
	for (;;) {
		e = pop_locked(s);
		if (e)
			break;
		if (s->interrupted) {
			s->interrupted = false;
			break;
		}
		if (timeout_ms < 0) {
			pthread_cond_wait(&s->cv, &s->b->mu);
		} else if (pthread_cond_timedwait(&s->cv, &s->b->mu, &dl)) {
			e = pop_locked(s);
			break;
		}
	}
	pthread_mutex_unlock(&s->b->mu);
	return e;
}

void
bus_interrupt(bus_sub *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->b->mu);
	s->interrupted = true;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->b->mu);
}

unsigned long long
bus_sub_queued(bus_sub *s)
{
	return s ? atomic_load(&s->queued) : 0;
}

size_t
bus_subscribers(const bus *b)
{
	return b ? atomic_load(&((bus *)b)->n_subs) : 0;
}

unsigned long long
bus_published(const bus *b)
{
	return b ? atomic_load(&((bus *)b)->published) : 0;
}

unsigned long long
bus_dropped(const bus *b)
{
	return b ? atomic_load(&((bus *)b)->dropped) : 0;
}
