/* test_pool.c - the thread pool: every index once, contiguous ranges, the
 * caller runs one, back-to-back runs, create/destroy cycles. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu/pool.h"

#define MAX_RANGES 64

struct visit {
	atomic_int *count;              /* (n) visits per index            */
	atomic_int n_ranges;
	int begin[MAX_RANGES], end[MAX_RANGES];
	pthread_t who[MAX_RANGES];
};

static void
visit_fn(void *ctx, int begin, int end)
{
	struct visit *v = ctx;
	int r = atomic_fetch_add(&v->n_ranges, 1);
	if (r < MAX_RANGES) {
		v->begin[r] = begin;
		v->end[r] = end;
		v->who[r] = pthread_self();
	}
	for (int i = begin; i < end; i++)
		atomic_fetch_add(&v->count[i], 1);
}

static int
cmp_int(const void *a, const void *b)
{
	int x = *(const int *)a, y = *(const int *)b;
	return (x > y) - (x < y);
}

static void
check_run(pool *p, int n)
{
	int nt = pool_threads(p);
	struct visit v;
	memset(&v, 0, sizeof v);
	v.count = calloc((size_t)(n > 0 ? n : 1), sizeof *v.count);
	assert_non_null(v.count);
	atomic_init(&v.n_ranges, 0);
	pool_run(p, visit_fn, &v, n);
	for (int i = 0; i < n; i++)
		assert_int_equal(atomic_load(&v.count[i]), 1);
	int nr = atomic_load(&v.n_ranges);
	int want = n < nt ? n : nt;
	assert_int_equal(nr, n > 0 ? want : 0);
	assert_true(nr <= MAX_RANGES);
	/* non-empty, contiguous, covering [0, n) in order, sizes within one */
	int order[MAX_RANGES];
	for (int r = 0; r < nr; r++) {
		assert_true(v.begin[r] < v.end[r]);
		order[r] = v.begin[r];
	}
	qsort(order, (size_t)nr, sizeof order[0], cmp_int);
	int at = 0, lo = n, hi = 0, caller = 0;
	for (int k = 0; k < nr; k++) {
		int r;
		for (r = 0; r < nr && v.begin[r] != order[k]; r++)
			;
		assert_int_equal(v.begin[r], at);
		int size = v.end[r] - v.begin[r];
		lo = size < lo ? size : lo;
		hi = size > hi ? size : hi;
		at = v.end[r];
		caller += pthread_equal(v.who[r], pthread_self()) != 0;
	}
	assert_int_equal(at, n);
	if (nr > 0) {
		assert_true(hi - lo <= 1);
		assert_int_equal(caller, 1); /* the caller ran exactly one range */
	}
	free(v.count);
}

static void
test_create(void **state)
{
	(void)state;
	assert_null(pool_create(-1));
	pool_destroy(NULL);
	pool *p = pool_create(0);
	assert_non_null(p);
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	assert_int_equal(pool_threads(p), cpus > 0 ? cpus : 1);
	pool_destroy(p);
	/* repeated create/destroy, with and without runs (ASan: no leaks) */
	for (int i = 0; i < 200; i++) {
		p = pool_create(1 + i % 6);
		assert_non_null(p);
		assert_int_equal(pool_threads(p), 1 + i % 6);
		if (i % 2)
			check_run(p, 37);
		pool_destroy(p);
	}
}

static void
test_every_index_once(void **state)
{
	(void)state;
	static const int threads[] = { 1, 2, 3, 4, 7, 16 };
	for (size_t t = 0; t < sizeof threads / sizeof threads[0]; t++) {
		pool *p = pool_create(threads[t]);
		assert_non_null(p);
		int nt = threads[t];
		int sizes[] = { 0, 1, 2, 3, nt - 1, nt, nt + 1, 2 * nt - 1, 100, 1000, 100003 };
		for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
			check_run(p, sizes[s]);
		pool_run(p, visit_fn, NULL, -5); /* negative n: nothing runs */
		pool_destroy(p);
	}
}

struct stamp {
	int *last;    /* (n) the run that last wrote each index */
	int run;
	atomic_long sum;
};

static void
stamp_fn(void *ctx, int begin, int end)
{
	struct stamp *s = ctx;
	long local = 0;
	for (int i = begin; i < end; i++) {
		s->last[i] = s->run;
		local += i;
	}
	atomic_fetch_add(&s->sum, local);
}

static void
test_back_to_back(void **state)
{
	(void)state;
	enum { N = 257, RUNS = 10000 };
	pool *p = pool_create(4);
	assert_non_null(p);
	struct stamp s;
	s.last = calloc(N, sizeof *s.last);
	assert_non_null(s.last);
	atomic_init(&s.sum, 0);
	for (int r = 1; r <= RUNS; r++) {
		s.run = r;
		int n = r % 3 == 0 ? 3 : N; /* also runs where some workers idle */
		pool_run(p, stamp_fn, &s, n);
		/* pool_run returned only after every range was done */
		for (int i = 0; i < n; i++)
			if (s.last[i] != r)
				fail_msg("run %d: index %d not done (%d)", r, i, s.last[i]);
	}
	long want = 0;
	for (int r = 1; r <= RUNS; r++)
		want += r % 3 == 0 ? 3 : (long)N * (N - 1) / 2;
	assert_true(atomic_load(&s.sum) == want);
	free(s.last);
	pool_destroy(p);
}

static void
sleepy_fn(void *ctx, int begin, int end)
{
	atomic_int *c = ctx;
	usleep(2000); /* longer than the spin: workers and caller sleep */
	atomic_fetch_add(c, end - begin);
}

static void
test_after_idle(void **state)
{
	(void)state;
	/* runs after the workers have gone to sleep, and slow ranges */
	pool *p = pool_create(3);
	assert_non_null(p);
	for (int r = 0; r < 5; r++) {
		usleep(5000);
		atomic_int c;
		atomic_init(&c, 0);
		pool_run(p, sleepy_fn, &c, 10);
		assert_int_equal(atomic_load(&c), 10);
		check_run(p, 50);
	}
	pool_destroy(p);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_create),
		cmocka_unit_test(test_every_index_once),
		cmocka_unit_test(test_back_to_back),
		cmocka_unit_test(test_after_idle),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
