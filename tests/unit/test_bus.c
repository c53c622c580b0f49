/* test_bus.c - events and the event bus: JSON envelope, fan-out, job filter,
 * overflow -> one gap with the right count, unbounded never drops,
 * concurrent publishers with a checking reader, wake callbacks, interrupt;
 * event text against json_dumps, batches, type filters. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bus.h"
#include "event.h"

static struct ev *
mk(const char *job, int64_t seq)
{
	json_t *p = json_pack("{s:I}", "k", (json_int_t)seq);
	struct ev *e = ev_new(EV_THREAD_DELTA, job, seq, 0, p);
	assert_non_null(e);
	return e;
}

/* Publish and drop the caller's own reference. */
static void
pub(bus *b, const char *job, int64_t seq)
{
	struct ev *e = mk(job, seq);
	bus_publish(b, e);
	ev_unref(e);
}

static int64_t
json_int_of(const json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	assert_true(json_is_integer(v));
	return json_integer_value(v);
}

/* ---- events ------------------------------------------------------------------- */

static void
test_type_names(void **state)
{
	(void)state;
	for (int t = 0; t < EV_N_TYPES; t++) {
		const char *n = ev_type_name((enum ev_type)t);
		assert_non_null(n);
		assert_int_equal(ev_type_from_name(n), t);
		for (int u = 0; u < t; u++)
			assert_string_not_equal(ev_type_name((enum ev_type)u), n);
	}
	assert_string_equal(ev_type_name(EV_JOB_QUEUED), "job.queued");
	assert_string_equal(ev_type_name(EV_THREAD_DELTA), "thread.delta");
	assert_string_equal(ev_type_name(EV_GAP), "gap");
	assert_null(ev_type_name(EV_N_TYPES));
	assert_null(ev_type_name((enum ev_type)-1));
	assert_int_equal(ev_type_from_name("nope"), -1);
	assert_int_equal(ev_type_from_name(NULL), -1);
}

static void
test_event_json(void **state)
{
	(void)state;
	int64_t t0 = ev_now_ms();
	json_t *payload = json_pack("{s:s, s:i, s:s}", "text", "h\xc3\xa9llo \"q\"", "tokens", 3,
				    "type", "impostor");
	struct ev *e = ev_new(EV_THREAD_DELTA, "j0123456789abcdef0123", 7, 2, payload);
	assert_non_null(e);
	assert_int_equal(e->type, EV_THREAD_DELTA);
	assert_string_equal(e->job, "j0123456789abcdef0123");
	assert_int_equal(e->seq, 7);
	assert_int_equal(e->thread, 2);
	assert_true(e->ts_ms >= t0 && e->ts_ms <= ev_now_ms());
	assert_int_equal(e->len, strlen(e->json));
	assert_null(strchr(e->json, '\n'));
	assert_null(strstr(e->json, ", "));

	/* The text parses back to the envelope plus the payload. */
	json_error_t jerr;
	json_t *back = json_loads(e->json, 0, &jerr);
	assert_non_null(back);
	assert_true(json_equal(back, e->body));
	assert_string_equal(json_string_value(json_object_get(back, "type")), "thread.delta");
	assert_string_equal(json_string_value(json_object_get(back, "job")), e->job);
	assert_int_equal(json_int_of(back, "seq"), 7);
	assert_int_equal(json_int_of(back, "ts"), e->ts_ms);
	assert_int_equal(json_int_of(back, "thread"), 2);
	assert_int_equal(json_int_of(back, "tokens"), 3);
	assert_string_equal(json_string_value(json_object_get(back, "text")), "h\xc3\xa9llo \"q\"");
	assert_int_equal(json_object_size(back), 7);
	json_decref(back);

	/* Refcount: two more references, three unrefs free it (ASan checks). */
	ev_ref(e);
	ev_ref(e);
	assert_int_equal(atomic_load(&e->refs), 3);
	ev_unref(e);
	ev_unref(e);
	ev_unref(e);
	ev_unref(NULL);

	/* No thread, no payload: no "thread" key. */
	e = ev_new(EV_JOB_QUEUED, "jx", 0, -1, NULL);
	assert_non_null(e);
	assert_int_equal(e->thread, -1);
	assert_null(json_object_get(e->body, "thread"));
	assert_int_equal(json_object_size(e->body), 4);
	ev_unref(e);

	/* Bad type or a non-object payload: NULL, payload still released. */
	assert_null(ev_new(EV_N_TYPES, "jx", 0, -1, json_object()));
	assert_null(ev_new(EV_JOB_DONE, "jx", 0, -1, json_integer(3)));
}

/* ---- bus ---------------------------------------------------------------------- */

static void
test_fanout_and_filter(void **state)
{
	(void)state;
	bus *b = bus_create();
	assert_non_null(b);
	bus_sub *all1 = bus_subscribe(b, NULL, 0, NULL, NULL);
	bus_sub *all2 = bus_subscribe(b, NULL, 16, NULL, NULL);
	bus_sub *ja = bus_subscribe(b, "ja", 16, NULL, NULL);
	bus_sub *jb = bus_subscribe(b, "jb", 0, NULL, NULL);
	assert_int_equal(bus_subscribers(b), 4);

	const char *jobs[] = { "ja", "jb", "ja", "jc", "ja", "jb" };
	int64_t seqs[] = { 0, 0, 1, 0, 2, 1 };
	struct ev *sent[6];
	for (int i = 0; i < 6; i++) {
		sent[i] = mk(jobs[i], seqs[i]);
		bus_publish(b, sent[i]);
	}
	assert_int_equal(bus_published(b), 6);
	assert_int_equal(bus_dropped(b), 0);

	/* Every all-jobs subscriber sees the same objects in publish order. */
	bus_sub *alls[] = { all1, all2 };
	for (int k = 0; k < 2; k++) {
		for (int i = 0; i < 6; i++) {
			struct ev *e = bus_pop(alls[k]);
			assert_ptr_equal(e, sent[i]);
			ev_unref(e);
		}
		assert_null(bus_pop(alls[k]));
	}
	/* Filtered ones see only their job, in order. */
	int want_a[] = { 0, 2, 4 }, want_b[] = { 1, 5 };
	for (int i = 0; i < 3; i++) {
		struct ev *e = bus_pop(ja);
		assert_ptr_equal(e, sent[want_a[i]]);
		ev_unref(e);
	}
	assert_null(bus_pop(ja));
	for (int i = 0; i < 2; i++) {
		struct ev *e = bus_pop(jb);
		assert_ptr_equal(e, sent[want_b[i]]);
		ev_unref(e);
	}
	assert_null(bus_pop(jb));

	/* The caller's references are still good; each holder released its own. */
	for (int i = 0; i < 6; i++) {
		assert_int_equal(atomic_load(&sent[i]->refs), 1);
		ev_unref(sent[i]);
	}

	/* Unsubscribing with events still queued frees them (ASan leak check). */
	pub(b, "ja", 3);
	bus_unsubscribe(b, ja);
	bus_unsubscribe(b, jb);
	bus_unsubscribe(b, all1);
	bus_unsubscribe(b, all2);
	assert_int_equal(bus_subscribers(b), 0);
	bus_unsubscribe(b, NULL);
	bus_destroy(b);
	bus_destroy(NULL);
}

/* cap 4, 10 published: 0..3, then one gap for 6 events starting at 4, then
 * the stream resumes with what is published next. */
static void
test_overflow_gap(void **state)
{
	(void)state;
	bus *b = bus_create();
	bus_sub *s = bus_subscribe(b, "jq", 4, NULL, NULL);
	bus_sub *u = bus_subscribe(b, NULL, 0, NULL, NULL);
	for (int i = 0; i < 10; i++)
		pub(b, "jq", i);
	assert_int_equal(bus_dropped(b), 6);

	for (int i = 0; i < 4; i++) {
		struct ev *e = bus_pop(s);
		assert_non_null(e);
		assert_int_equal(e->type, EV_THREAD_DELTA);
		assert_int_equal(e->seq, i);
		ev_unref(e);
	}
	struct ev *g = bus_pop(s);
	assert_non_null(g);
	assert_int_equal(g->type, EV_GAP);
	assert_string_equal(g->job, "jq");
	assert_int_equal(g->seq, -1);
	assert_int_equal(json_int_of(g->body, "dropped"), 6);
	assert_int_equal(json_int_of(g->body, "first_dropped_seq"), 4);
	assert_int_equal(json_int_of(g->body, "after_seq"), 3);
	assert_string_equal(json_string_value(json_object_get(g->body, "type")), "gap");
	ev_unref(g);
	assert_null(bus_pop(s));

	/* Resumes. */
	pub(b, "jq", 10);
	pub(b, "jq", 11);
	for (int i = 10; i < 12; i++) {
		struct ev *e = bus_pop(s);
		assert_non_null(e);
		assert_int_equal(e->seq, i);
		ev_unref(e);
	}
	assert_null(bus_pop(s));

	/* A hole while events are queued: the gap sits in place, before the
	 * next event that fits. */
	for (int i = 12; i < 17; i++)     /* 12..15 queued, 16 dropped */
		pub(b, "jq", i);
	struct ev *e = bus_pop(s);        /* 12 out: room again */
	assert_int_equal(e->seq, 12);
	ev_unref(e);
	pub(b, "jq", 17);                 /* gap(16) then 17 */
	int64_t want[] = { 13, 14, 15, -1, 17 };
	for (int i = 0; i < 5; i++) {
		e = bus_pop(s);
		assert_non_null(e);
		assert_int_equal(e->seq, want[i]);
		if (want[i] == -1) {
			assert_int_equal(e->type, EV_GAP);
			assert_int_equal(json_int_of(e->body, "dropped"), 1);
			assert_int_equal(json_int_of(e->body, "first_dropped_seq"), 16);
		}
		ev_unref(e);
	}
	assert_null(bus_pop(s));
	assert_int_equal(bus_dropped(b), 7);

	/* The unbounded subscriber got every one of the 18, in order. */
	for (int i = 0; i < 18; i++) {
		e = bus_pop(u);
		assert_non_null(e);
		assert_int_equal(e->seq, i);
		ev_unref(e);
	}
	assert_null(bus_pop(u));
	bus_unsubscribe(b, s);
	bus_unsubscribe(b, u);
	bus_destroy(b);
}

/* An all-jobs subscription: the gap names the jobs it lost events of. */
static void
test_overflow_gap_jobs(void **state)
{
	(void)state;
	bus *b = bus_create();
	bus_sub *s = bus_subscribe(b, NULL, 1, NULL, NULL);
	pub(b, "ja", 0);
	pub(b, "jb", 0);
	pub(b, "jc", 0);
	pub(b, "jb", 1);
	struct ev *e = bus_pop(s);
	assert_string_equal(e->job, "ja");
	ev_unref(e);
	e = bus_pop(s);
	assert_int_equal(e->type, EV_GAP);
	assert_string_equal(e->job, "jb");
	assert_int_equal(json_int_of(e->body, "dropped"), 3);
	json_t *jobs = json_object_get(e->body, "jobs");
	assert_int_equal(json_array_size(jobs), 2);
	assert_string_equal(json_string_value(json_array_get(jobs, 0)), "jb");
	assert_string_equal(json_string_value(json_array_get(jobs, 1)), "jc");
	ev_unref(e);
	assert_null(bus_pop(s));
	bus_unsubscribe(b, s);
	bus_destroy(b);
}

static void
test_unbounded_many(void **state)
{
	(void)state;
	bus *b = bus_create();
	bus_sub *s = bus_subscribe(b, NULL, 0, NULL, NULL);
	enum { N = 100000 };
	for (int i = 0; i < N; i++)
		pub(b, "jbig", i);
	assert_int_equal(bus_dropped(b), 0);
	for (int i = 0; i < N; i++) {
		struct ev *e = bus_pop(s);
		assert_non_null(e);
		assert_int_equal(e->seq, i);
		ev_unref(e);
	}
	assert_null(bus_pop(s));
	bus_unsubscribe(b, s);
	bus_destroy(b);
}

/* ---- concurrency -------------------------------------------------------------- */

enum { N_PUB = 4, N_PER = 20000 };

struct pub_arg {
	bus *b;
	char job[EV_JOB_ID_MAX];
};

static void *
publisher(void *p)
{
	struct pub_arg *a = p;
	for (int i = 0; i < N_PER; i++) {
		struct ev *e = ev_new(EV_THREAD_DELTA, a->job, i, 0, NULL);
		if (!e)
			abort();
		bus_publish(a->b, e);
		ev_unref(e);
	}
	return NULL;
}

struct check_arg {
	bus_sub *s;
	int64_t next[N_PUB];
	long got, gaps, dropped, bad;
	atomic_int done;
};

/* Checks per-job order: each job's seqs arrive consecutively, with holes
 * only where a gap event accounts for them (one job per bounded sub). */
static void *
checker(void *p)
{
	struct check_arg *c = p;
	for (;;) {
		struct ev *e = bus_pop_wait(c->s, 50);
		if (!e) {
			if (atomic_load(&c->done))
				break;
			continue;
		}
		int j = e->job[1] - '0';
		if (j < 0 || j >= N_PUB) {
			c->bad++;
		} else if (e->type == EV_GAP) {
			/* The hole starts exactly where this job's stream stopped. */
			long n = (long)json_integer_value(json_object_get(e->body, "dropped"));
			c->gaps++;
			c->dropped += n;
			if (json_integer_value(json_object_get(e->body, "first_dropped_seq")) != c->next[j])
				c->bad++;
			c->next[j] += n;
			ev_unref(e);
			continue;
		} else if (e->seq != c->next[j]) {
			c->bad++;
		} else {
			c->next[j] = e->seq + 1;
		}
		c->got++;
		ev_unref(e);
	}
	return NULL;
}

static void
test_concurrent(void **state)
{
	(void)state;
	bus *b = bus_create();
	struct check_arg all = { 0 }, one = { 0 }, small = { 0 };
	all.s = bus_subscribe(b, NULL, 0, NULL, NULL);
	one.s = bus_subscribe(b, "j2", 0, NULL, NULL);
	small.s = bus_subscribe(b, "j1", 8, NULL, NULL);
	pthread_t ct[3], pt[N_PUB];
	struct check_arg *cs[3] = { &all, &one, &small };
	struct pub_arg pa[N_PUB];

	for (int k = 0; k < 3; k++)
		assert_int_equal(pthread_create(&ct[k], NULL, checker, cs[k]), 0);
	for (int i = 0; i < N_PUB; i++) {
		pa[i].b = b;
		snprintf(pa[i].job, sizeof pa[i].job, "j%d", i);
		assert_int_equal(pthread_create(&pt[i], NULL, publisher, &pa[i]), 0);
	}
	for (int i = 0; i < N_PUB; i++)
		pthread_join(pt[i], NULL);
	for (int k = 0; k < 3; k++) {
		atomic_store(&cs[k]->done, 1);
		pthread_join(ct[k], NULL);
	}

	assert_int_equal(bus_published(b), N_PUB * N_PER);
	/* Unbounded: everything, in per-job order, nothing dropped. */
	assert_int_equal(all.got, N_PUB * N_PER);
	assert_int_equal(all.gaps, 0);
	assert_int_equal(all.bad, 0);
	for (int i = 0; i < N_PUB; i++)
		assert_int_equal(all.next[i], N_PER);
	assert_int_equal(one.got, N_PER);
	assert_int_equal(one.bad, 0);
	/* Bounded: what it got plus what gaps report is everything. */
	assert_int_equal(small.got + small.dropped, N_PER);
	assert_int_equal(small.bad, 0);
	assert_int_equal(bus_dropped(b), (unsigned long long)small.dropped);

	bus_unsubscribe(b, all.s);
	bus_unsubscribe(b, one.s);
	bus_unsubscribe(b, small.s);
	bus_destroy(b);
}

/* ---- wake, wait, interrupt ---------------------------------------------------- */

struct wake_ctx {
	atomic_int calls;
	bus_sub *s;        /* the subscription the callback belongs to */
};

static void
on_wake(void *p)
{
	struct wake_ctx *w = p;
	atomic_fetch_add(&w->calls, 1);
}

static void
test_wake(void **state)
{
	(void)state;
	bus *b = bus_create();
	struct wake_ctx wa = { 0 }, wb = { 0 };
	bus_sub *a = bus_subscribe(b, "ja", 2, on_wake, &wa);
	bus_sub *bb = bus_subscribe(b, NULL, 0, on_wake, &wb);
	pub(b, "ja", 0);
	pub(b, "jz", 0);
	assert_int_equal(atomic_load(&wa.calls), 1);   /* filtered out: no wake */
	assert_int_equal(atomic_load(&wb.calls), 2);
	pub(b, "ja", 1);
	pub(b, "ja", 2);                               /* dropped: no wake */
	assert_int_equal(atomic_load(&wa.calls), 2);
	assert_int_equal(atomic_load(&wb.calls), 4);
	bus_unsubscribe(b, a);
	pub(b, "ja", 3);                               /* a is gone: not called */
	assert_int_equal(atomic_load(&wa.calls), 2);
	assert_int_equal(atomic_load(&wb.calls), 5);
	bus_unsubscribe(b, bb);
	bus_destroy(b);
}

/* The wake callback runs outside the bus lock: it may take a lock that
 * another thread holds while it calls bus_pop.  With the callback under the
 * bus lock this would deadlock (and the test would hang). */
static pthread_mutex_t reader_mu = PTHREAD_MUTEX_INITIALIZER;

static void
locking_wake(void *p)
{
	pthread_mutex_lock(&reader_mu);
	atomic_fetch_add(&((struct wake_ctx *)p)->calls, 1);
	pthread_mutex_unlock(&reader_mu);
}

static void *
locking_reader(void *p)
{
	struct wake_ctx *w = p;
	long got = 0;
	while (got < 2000) {
		pthread_mutex_lock(&reader_mu);
		struct ev *e = bus_pop(w->s);
		pthread_mutex_unlock(&reader_mu);
		if (e) {
			got++;
			ev_unref(e);
		}
	}
	return NULL;
}

static void
test_wake_outside_lock(void **state)
{
	(void)state;
	bus *b = bus_create();
	struct wake_ctx w = { 0 };
	w.s = bus_subscribe(b, NULL, 0, locking_wake, &w);
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, locking_reader, &w), 0);
	for (int i = 0; i < 2000; i++)
		pub(b, "jw", i);
	pthread_join(t, NULL);
	assert_int_equal(atomic_load(&w.calls), 2000);
	bus_unsubscribe(b, w.s);
	bus_destroy(b);
}

struct waiter {
	bus_sub *s;
	struct ev *got;
	int64_t waited_ms;
};

static int64_t
mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *
wait_forever(void *p)
{
	struct waiter *w = p;
	int64_t t0 = mono_ms();
	w->got = bus_pop_wait(w->s, -1);
	w->waited_ms = mono_ms() - t0;
	return NULL;
}

static void
test_pop_wait(void **state)
{
	(void)state;
	bus *b = bus_create();
	bus_sub *s = bus_subscribe(b, NULL, 0, NULL, NULL);

	/* Timeout with nothing queued. */
	int64_t t0 = mono_ms();
	assert_null(bus_pop_wait(s, 60));
	int64_t dt = mono_ms() - t0;
	assert_true(dt >= 55 && dt < 2000);

	/* An event published while a thread waits forever wakes it. */
	struct waiter w = { .s = s };
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, wait_forever, &w), 0);
	struct timespec nap = { 0, 50 * 1000000 };
	nanosleep(&nap, NULL);
	pub(b, "jw", 5);
	pthread_join(t, NULL);
	assert_non_null(w.got);
	assert_int_equal(w.got->seq, 5);
	ev_unref(w.got);

	/* Interrupt wakes a waiter with NULL. */
	w.got = NULL;
	assert_int_equal(pthread_create(&t, NULL, wait_forever, &w), 0);
	nanosleep(&nap, NULL);
	bus_interrupt(s);
	pthread_join(t, NULL);
	assert_null(w.got);
	assert_true(w.waited_ms >= 40);

	/* An interrupt before the wait is not lost; queued events come first. */
	bus_interrupt(s);
	pub(b, "jw", 6);
	struct ev *e = bus_pop_wait(s, -1);
	assert_non_null(e);
	assert_int_equal(e->seq, 6);
	ev_unref(e);
	assert_null(bus_pop_wait(s, -1));
	assert_null(bus_pop_wait(s, 0));

	bus_unsubscribe(b, s);
	bus_destroy(b);
}

/* ---- the JSON text, the delta fast path, batches, type filters ---------------- */

static unsigned long long rng_state = 0x2545F4914F6CDD1Dull;

static unsigned long long
rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

/* Random text from pieces that need escaping, multi-byte UTF-8 and NULs;
 * with bad, some invalid UTF-8 too. */
static size_t
rand_text(char *b, size_t cap, int bad)
{
	static const char *const ok[] = { "a", "Z", "\"", "\\", "\n", "\t", "\b", "\f", "\r", "\x01",
					  "\x1f", "\x7f", "/", "\xc3\xa9", "\xe2\x82\xac",
					  "\xf0\x9f\x98\x80", " ", "9", "" /* a NUL */ };
	static const char *const ko[] = { "\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\x80",
					  "\xe2\x82", "\xff" };
	size_t n = rng() % (cap - 8), i = 0;
	while (i < n) {
		const char *p = ok[rng() % (sizeof ok / sizeof *ok)];
		if (bad && rng() % 8 == 0)
			p = ko[rng() % (sizeof ko / sizeof *ko)];
		size_t l = *p ? strlen(p) : 1;
		if (i + l > n)
			break;
		memcpy(b + i, p, l);
		i += l;
	}
	return i;
}

/* A double of any kind the sampler or a strategy could report. */
static double
rand_real(void)
{
	unsigned long long u = rng();
	switch (u % 4) {
	case 0: {
		float f;
		uint32_t b = (uint32_t)(u >> 32);
		memcpy(&f, &b, sizeof f);
		return isfinite(f) ? f : 0.5;
	}
	case 1: {
		double d;
		memcpy(&d, &u, sizeof d);
		return isfinite(d) ? d : -2.0;
	}
	case 2:
		return (double)(float)(-(double)(u % 3000000) / 100000.0);
	default:
		return ldexp((double)(u >> 11), (int)(u % 120) - 100);
	}
}

/* Every event's text is what json_dumps(body, JSON_COMPACT) writes (the
 * writer is separate code), for flat and nested payloads of every value
 * kind; and ev_new_delta gives the event that ev_new with json_pack's
 * payload gives, invalid UTF-8 and non-finite numbers included. */
static void
test_event_text_matches_jansson(void **state)
{
	(void)state;
	char txt[200];
	for (int it = 0; it < 20000; it++) {
		json_t *p = json_object();
		int nk = (int)(rng() % 7);
		for (int k = 0; k < nk; k++) {
			char key[24];
			key[rand_text(key, 16, 0)] = '\0';
			json_t *v;
			switch (rng() % 7) {
			case 0: v = json_stringn(txt, rand_text(txt, sizeof txt, 0)); break;
			case 1: v = json_integer((json_int_t)rng()); break;
			case 2: v = json_real(rand_real()); break;
			case 3: v = json_true(); break;
			case 4: v = json_false(); break;
			case 5: v = json_null(); break;
			default: v = json_pack("{s:i, s:[f, s]}", "a", 1, "b", 0.25, "x"); break;
			}
			json_object_set_new(p, key, v);
		}
		int thread = (int)(rng() % 4) - 1;
		struct ev *e = ev_new((enum ev_type)(rng() % EV_GAP), "jt", (int64_t)(rng() % 1000), thread, p);
		assert_non_null(e);
		char *ref = json_dumps(e->body, JSON_COMPACT);
		assert_string_equal(e->json, ref);
		assert_int_equal(e->len, strlen(ref));
		free(ref);
		ev_unref(e);

		size_t n = rand_text(txt, sizeof txt, rng() % 4 == 0);
		double lp = rand_real(), en = rand_real();
		if (rng() % 40 == 0)
			lp = rng() % 2 ? NAN : -INFINITY;
		int tokens = (int)(rng() % 5000);
		struct ev *a = ev_new_delta("jt", it, thread, txt, n, tokens, lp, en);
		struct ev *b = ev_new(EV_THREAD_DELTA, "jt", it, thread,
				      json_pack("{s:s%, s:i, s:f, s:f}", "text", txt, n, "tokens", tokens,
						"logprob", lp, "entropy", en));
		assert_non_null(a);
		assert_non_null(b);
		ref = json_dumps(a->body, JSON_COMPACT);
		assert_string_equal(a->json, ref);
		free(ref);
		assert_int_equal(a->thread, b->thread);
		json_object_set_new(a->body, "ts", json_integer(0));
		json_object_set_new(b->body, "ts", json_integer(0));
		char *ta = json_dumps(a->body, JSON_COMPACT), *tb = json_dumps(b->body, JSON_COMPACT);
		assert_string_equal(ta, tb);   /* same fields, same order, same values */
		free(ta);
		free(tb);
		ev_unref(a);
		ev_unref(b);
	}
}

static void
test_batch_and_types(void **state)
{
	(void)state;
	bus *b = bus_create();
	struct wake_ctx wa = { 0 }, wall = { 0 };
	bus_sub *a = bus_subscribe(b, "ja", 0, on_wake, &wa);
	bus_sub *all = bus_subscribe(b, NULL, 0, on_wake, &wall);
	struct ev *evs[5] = { mk("ja", 0), mk("jb", 0), NULL, mk("ja", 1), mk("jb", 1) };

	bus_publish_batch(b, evs, 5);
	assert_int_equal(bus_published(b), 4);
	/* one wake per subscription per batch; order kept per subscription */
	assert_int_equal(atomic_load(&wa.calls), 1);
	assert_int_equal(atomic_load(&wall.calls), 1);
	assert_int_equal(bus_sub_queued(a), 2);
	assert_int_equal(bus_sub_queued(all), 4);
	int want_all[] = { 0, 1, 3, 4 };
	for (int i = 0; i < 4; i++) {
		struct ev *e = bus_pop(all);
		assert_ptr_equal(e, evs[want_all[i]]);
		ev_unref(e);
	}
	for (int i = 0; i < 2; i++) {
		struct ev *e = bus_pop(a);
		assert_ptr_equal(e, evs[i == 0 ? 0 : 3]);
		ev_unref(e);
	}
	assert_null(bus_pop(a));
	assert_null(bus_pop(all));

	/* types: the all-jobs subscription drops deltas, "ja" keeps them */
	assert_int_equal(bus_wants(b, "jb", EV_THREAD_DELTA), 1);
	bus_sub_set_types(all, ~(1u << EV_THREAD_DELTA));
	assert_int_equal(bus_wants(b, "jb", EV_THREAD_DELTA), 0);
	assert_int_equal(bus_wants(b, "ja", EV_THREAD_DELTA), 1);
	assert_int_equal(bus_wants(b, "jb", EV_JOB_DONE), 1);
	bus_publish_batch(b, evs, 5);                  /* all deltas (mk) */
	assert_null(bus_pop(all));                     /* filtered: not a drop, no gap */
	assert_int_equal(bus_dropped(b), 0);
	assert_int_equal(bus_sub_queued(all), 4);
	assert_int_equal(bus_sub_queued(a), 4);
	bus_unsubscribe(b, a);
	assert_int_equal(bus_wants(b, "ja", EV_THREAD_DELTA), 0);
	bus_sub_set_types(all, ~0u);
	assert_int_equal(bus_wants(b, "ja", EV_THREAD_DELTA), 1);
	bus_unsubscribe(b, all);
	assert_int_equal(bus_wants(b, "ja", EV_JOB_DONE), 0);
	for (int i = 0; i < 5; i++)
		ev_unref(evs[i]);
	bus_destroy(b);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_type_names),
		cmocka_unit_test(test_event_json),
		cmocka_unit_test(test_fanout_and_filter),
		cmocka_unit_test(test_overflow_gap),
		cmocka_unit_test(test_overflow_gap_jobs),
		cmocka_unit_test(test_unbounded_many),
		cmocka_unit_test(test_concurrent),
		cmocka_unit_test(test_wake),
		cmocka_unit_test(test_wake_outside_lock),
		cmocka_unit_test(test_pop_wait),
		cmocka_unit_test(test_event_text_matches_jansson),
		cmocka_unit_test(test_batch_and_types),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
