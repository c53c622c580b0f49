/* gpucheck.h - what the GPU tests (tests/gpu/test_cuda_*.c) share: the skip
 * without a GPU, counted checks that print one line each, reproducible random
 * inputs.  Main thread only. */
#ifndef BRAID_GPUCHECK_H
#define BRAID_GPUCHECK_H

#include <stddef.h>
#include <stdint.h>

#define GC_SKIP 77   /* exit status of a test that found no GPU */

/* Checks counted so far, and how many of them failed. */
extern int gc_checks, gc_failed;

/* 1 if there is a CUDA device (after printing device 0's name, total and
 * free memory), or 0 after printing "no CUDA device: skipped": main then
 * returns GC_SKIP. */
int gc_start(void);

/* Prints "N checks, M failed"; main's exit status (0 pass, 1 fail). */
int gc_finish(void);

/* Count one check and print its line: "ok   " or "FAIL " and the message.
 * Returns ok. */
int gc_check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A call that must succeed (rc 0): 1 if it did; else counts a failed check,
 * prints "FAIL what: eng_strerror(rc) (err)" and returns 0. */
int gc_called(int rc, const char *what, const char *err);

/* splitmix64: the next value of the stream whose state is *s. */
uint64_t gc_mix64(uint64_t *s);

/* The tests' own stream (one per program, fixed seed): a 64-bit value, a
 * float in [lo, hi), an int in [0, n). */
uint64_t gc_rnd(void);
float gc_unif(float lo, float hi);
int gc_irand(int n);

/* x rounded to bf16 (round to nearest even) and back. */
float gc_bf(float x);

/* malloc(n) (at least 1 byte) that exits the test on failure. */
void *gc_xmalloc(size_t n);

/* n values in [lo, hi) from gc_unif, rounded to bf16 when round is set
 * (gc_xmalloc'd). */
float *gc_frand(size_t n, float lo, float hi, int round);

/* n NaNs (gc_xmalloc'd): outputs that must all be written. */
float *gc_fnan(size_t n);

#endif
