/* gpucheck.c - the helpers the GPU tests share (see gpucheck.h).  Main thread
 * only. */
#include "gpucheck.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "cuda/cuda.h"
#include "safetensors.h"
#include "status.h"

int gc_checks, gc_failed;

static uint64_t gc_rng = 0x9e3779b97f4a7c15ull;

int
gc_start(void)
{
	if (cuda_device_count() <= 0) {
		printf("no CUDA device: skipped\n");
		return 0;
	}
	char name[256] = "";
	size_t total = 0, avail = 0;
	if (cuda_device_info(0, name, sizeof name, &total, &avail) == 0)
		printf("device 0: %s, %.1f GiB total, %.1f GiB free\n", name, total / 1073741824.0,
		       avail / 1073741824.0);
	return 1;
}

int
gc_finish(void)
{
	printf("%d checks, %d failed\n", gc_checks, gc_failed);
	return gc_failed ? 1 : 0;
}

int
gc_check(int ok, const char *fmt, ...)
{
	va_list ap;
	gc_checks++;
	gc_failed += !ok;
	printf("%-4s ", ok ? "ok" : "FAIL");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
	return ok;
}

int
gc_called(int rc, const char *what, const char *err)
{
	if (rc == 0)
		return 1;
	gc_checks++;
	gc_failed++;
	printf("FAIL %s: %s (%s)\n", what, eng_strerror(rc), err);
	return 0;
}

uint64_t
gc_mix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

uint64_t
gc_rnd(void)
{
	return gc_mix64(&gc_rng);
}

float
gc_unif(float lo, float hi)
{
	return lo + (hi - lo) * (float)((double)(gc_rnd() >> 11) / 9007199254740992.0);
}

int
gc_irand(int n)
{
	return (int)(gc_rnd() % (uint64_t)n);
}

float
gc_bf(float x)
{
	return st_bf16_to_f32(st_f32_to_bf16(x));
}

void *
gc_xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p) {
		fprintf(stderr, "out of memory (%zu bytes)\n", n);
		exit(1);
	}
	return p;
}

float *
gc_frand(size_t n, float lo, float hi, int round)
{
	float *p = gc_xmalloc(n * sizeof *p);
	for (size_t i = 0; i < n; i++)
		p[i] = round ? gc_bf(gc_unif(lo, hi)) : gc_unif(lo, hi);
	return p;
}

float *
gc_fnan(size_t n)
{
	float *p = gc_xmalloc(n * sizeof *p);
	for (size_t i = 0; i < n; i++)
		p[i] = NAN;
	return p;
}
