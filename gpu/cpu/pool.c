/* pool.c - a fixed pthread pool for data-parallel loops (pool_).  pool_run
 * runs on the engine thread; the workers run only the ranges it hands out.
 *
 * A run is published by bumping a generation counter.  Workers spin on it
 * for a short while (a decode step calls pool_run back to back, so they are
 * usually still spinning) and then sleep on a condition variable.  Every
 * worker acknowledges every run, even with an empty range, so the job fields
 * are never rewritten while a worker may still read them. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "pool.h"

/* How long an idle worker or a waiting caller spins before sleeping; after
 * POOL_PAUSE_NS it yields the CPU while spinning, which keeps a pool with
 * more threads than free cores from starving the threads that have work. */
#define POOL_SPIN_NS 100000
#define POOL_PAUSE_NS 5000

#define POOL_MAX_THREADS 1024

struct pool_worker {
	struct pool *p;
	int index;          /* 1..n_threads-1; the caller is 0 */
	pthread_t th;
};

struct pool {
	int n_threads;
	int n_started;                   /* workers actually created          */
	struct pool_worker *workers;     /* (n_threads - 1)                   */

	pthread_mutex_t mu;
	pthread_cond_t wake;             /* a new generation or stop          */
	pthread_cond_t done;             /* pending reached 0                 */

	atomic_uint gen;                 /* bumped once per run               */
	atomic_int pending;              /* workers yet to finish this run    */
	atomic_int stop;

	/* The current run; written before gen is bumped, read after. */
	void (*fn)(void *ctx, int begin, int end);
	void *ctx;
	int n;
};

static inline void
pool_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

static int64_t
pool_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* One step of a bounded spin; *start is 0 before the first call.  Returns
 * 0 once the spin has lasted POOL_SPIN_NS (time to sleep instead). */
static int
pool_spin(int i, int64_t *start)
{
	if ((i & 63) != 63) {
		pool_relax();
		return 1;
	}
	int64_t now = pool_now_ns();
	if (!*start)
		*start = now;
	if (now - *start > POOL_SPIN_NS)
		return 0;
	if (now - *start > POOL_PAUSE_NS)
		sched_yield();
	return 1;
}

/* Thread t's share of [0, n): contiguous, sizes differ by at most one, the
 * larger ones first (so the caller, thread 0, always has work). */
static void
pool_range(int n, int n_threads, int t, int *begin, int *end)
{
	int q = n / n_threads, r = n % n_threads;
	*begin = t * q + (t < r ? t : r);
	*end = *begin + q + (t < r);
}

/* Spin until gen differs from seen (or stop), then sleep. */
static unsigned
pool_wait_gen(struct pool *p, unsigned seen)
{
	int64_t start = 0;
	for (int i = 0;; i++) {
		unsigned g = atomic_load_explicit(&p->gen, memory_order_acquire);
		if (g != seen || atomic_load_explicit(&p->stop, memory_order_acquire))
			return g;
		if (!pool_spin(i, &start))
			break;
	}
	pthread_mutex_lock(&p->mu);
	unsigned g;
	while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->stop))
		pthread_cond_wait(&p->wake, &p->mu);
	pthread_mutex_unlock(&p->mu);
	return g;
}

/* Worker thread: run this thread's range of each generation. */
static void *
pool_worker_main(void *arg)
{
	struct pool_worker *w = arg;
	struct pool *p = w->p;
	/* Not a load of gen: a run may be posted before this thread starts,
	 * and it must still count as new.  gen is 0 at creation. */
	unsigned seen = 0;
	for (;;) {
		seen = pool_wait_gen(p, seen);
		if (atomic_load_explicit(&p->stop, memory_order_acquire))
			break;
		int begin, end;
		pool_range(p->n, p->n_threads, w->index, &begin, &end);
		if (begin < end)
			p->fn(p->ctx, begin, end);
		if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
			pthread_mutex_lock(&p->mu);
			pthread_cond_signal(&p->done);
			pthread_mutex_unlock(&p->mu);
		}
	}
	return NULL;
}

static void
pool_stop_workers(struct pool *p)
{
	pthread_mutex_lock(&p->mu);
	atomic_store(&p->stop, 1);
	pthread_cond_broadcast(&p->wake);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < p->n_started; i++)
		pthread_join(p->workers[i].th, NULL);
	p->n_started = 0;
}

pool *
pool_create(int n_threads)
{
	if (n_threads < 0)
		return NULL;
	if (n_threads == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		n_threads = n < 1 ? 1 : n > POOL_MAX_THREADS ? POOL_MAX_THREADS : (int)n;
	}
	if (n_threads > POOL_MAX_THREADS)
		return NULL;
	struct pool *p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	p->n_threads = n_threads;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->wake, NULL);
	pthread_cond_init(&p->done, NULL);
	atomic_init(&p->gen, 0);
	atomic_init(&p->pending, 0);
	atomic_init(&p->stop, 0);
	if (n_threads > 1) {
		p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
		if (!p->workers)
			goto fail;
		for (int i = 0; i < n_threads - 1; i++) {
			struct pool_worker *w = &p->workers[i];
			w->p = p;
			w->index = i + 1;
			if (pthread_create(&w->th, NULL, pool_worker_main, w) != 0)
				goto fail;
			p->n_started++;
		}
	}
	return p;

fail:
	pool_destroy(p);
	return NULL;
}

void
pool_destroy(pool *p)
{
	if (!p)
		return;
	pool_stop_workers(p);
	pthread_cond_destroy(&p->done);
	pthread_cond_destroy(&p->wake);
	pthread_mutex_destroy(&p->mu);
	free(p->workers);
	free(p);
}

int
pool_threads(const pool *p)
{
	return p->n_threads;
}

void
pool_run(pool *p, void (*fn)(void *ctx, int begin, int end), void *ctx, int n)
{
	if (n <= 0)
		return;
	if (p->n_threads == 1 || n == 1) {
		fn(ctx, 0, n);
		return;
	}
	p->fn = fn;
	p->ctx = ctx;
	p->n = n;
	atomic_store_explicit(&p->pending, p->n_threads - 1, memory_order_relaxed);
	/* The lock orders the bump against a worker about to sleep; a
	 * broadcast with nobody waiting costs no system call. */
	pthread_mutex_lock(&p->mu);
	atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
	pthread_cond_broadcast(&p->wake);
	pthread_mutex_unlock(&p->mu);

	int begin, end;
	pool_range(n, p->n_threads, 0, &begin, &end);
	if (begin < end)
		fn(ctx, begin, end);

	int64_t start = 0;
	for (int i = 0; atomic_load_explicit(&p->pending, memory_order_acquire) != 0; i++) {
		if (!pool_spin(i, &start)) {
			pthread_mutex_lock(&p->mu);
			while (atomic_load(&p->pending) != 0)
				pthread_cond_wait(&p->done, &p->mu);
			pthread_mutex_unlock(&p->mu);
			break;
		}
	}
}
