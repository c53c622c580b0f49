/* pool.h - a fixed pthread pool for data-parallel loops on the engine
 * thread (pool_).  pool_run() is called from one thread at a time. */
#ifndef BRAID_POOL_H
#define BRAID_POOL_H

typedef struct pool pool;

/* n_threads workers including the caller; 0 = number of online CPUs. */
pool *pool_create(int n_threads);
void pool_destroy(pool *p);          /* NULL is fine */
int pool_threads(const pool *p);

/* Split [0, n) into contiguous ranges, one per thread (the caller runs one
 * of them), call fn(ctx, begin, end) for each non-empty range, and wait for
 * all to finish. */
void pool_run(pool *p, void (*fn)(void *ctx, int begin, int end), void *ctx, int n);

#endif
