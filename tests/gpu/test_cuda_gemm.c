/* test_cuda_gemm.c - the projections of gpu/cuda/gemm.cu (k_gemm: GEMV,
 * tuned cuBLASLt, cublasGemmEx), run through the kc_gemm_ wrappers of
 * gpu/cuda/gemm_check.h, against a float64 reference over the same
 * bf16-rounded inputs.  Main thread only.  Exits 0 pass, 1 fail, 77 without
 * a GPU.
 *
 * For every shape (the 0.6B and 8B projections, odd ones) and n: the
 * untuned and the tuned path with beta 0 (y starts as NaN: every element
 * must be written, none read) and beta 1 (accumulates into random y); every
 * GEMV configuration at a few n, and at n = 1 with its input normalised in
 * the kernel (bit for bit k_rmsnorm's); calls repeated on one k_gemm must give the
 * same bits.  An element passes when |got - want| <= GEMM_TOL * (sum |w x|
 * + |beta y|); each line prints the largest difference, absolute and
 * relative to that scale.  Then, for information only, times per call. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/cuda.h"
#include "cuda/gemm_check.h"
#include "gpucheck.h"
#include "status.h"

#define GEMM_TOL 2e-5   /* f32 accumulation of exact bf16 products, of sum |w x| */

static char err[ENG_ERRLEN];

/* ---- one shape ------------------------------------------------------------------ */

/* W (rows, cols) and x (n_max, cols), bf16-rounded; dot and mag (n_max,
 * rows): the float64 x . W^T and sum |w x|.  A case with n rows uses the
 * first n rows of x, so its reference is the first n rows of dot. */
struct shape {
	const char *name;
	int rows, cols, n_max;
	float *w, *x;
	double *dot, *mag;
};

static void
shape_init(struct shape *s, const char *name, int rows, int cols, int n_max)
{
	s->name = name;
	s->rows = rows, s->cols = cols, s->n_max = n_max;
	s->w = gc_frand((size_t)rows * cols, -1.0f, 1.0f, 1);
	s->x = gc_frand((size_t)n_max * cols, -2.0f, 2.0f, 1);
	s->dot = gc_xmalloc((size_t)n_max * rows * sizeof *s->dot);
	s->mag = gc_xmalloc((size_t)n_max * rows * sizeof *s->mag);
	for (int r = 0; r < rows; r++) {
		const float *wr = s->w + (size_t)r * cols;
		for (int b = 0; b < n_max; b++) {
			const float *xb = s->x + (size_t)b * cols;
			double d = 0.0, m = 0.0;
			for (int c = 0; c < cols; c++) {
				const double p = (double)wr[c] * xb[c];
				d += p;
				m += fabs(p);
			}
			s->dot[(size_t)b * rows + r] = d;
			s->mag[(size_t)b * rows + r] = m;
		}
	}
}

static void
shape_free(struct shape *s)
{
	free(s->w);
	free(s->x);
	free(s->dot);
	free(s->mag);
}

/* y(n, rows) from y0 and beta against the reference; one line. */
static void
compare(const struct shape *s, int n, float beta, const float *y0, const float *y, const char *path,
	const char *note)
{
	const size_t count = (size_t)n * s->rows;
	double max_abs = 0.0, max_rel = 0.0;
	size_t bad = SIZE_MAX;
	for (size_t i = 0; i < count; i++) {
		const double by = beta != 0.0f ? (double)beta * y0[i] : 0.0;
		const double want = s->dot[i] + by, scale = s->mag[i] + fabs(by);
		double d = fabs((double)y[i] - want);
		if (!(d <= GEMM_TOL * scale) && bad == SIZE_MAX)
			bad = i;
		if (isnan(d))
			d = INFINITY;
		if (d > max_abs)
			max_abs = d;
		if (scale > 0.0 && d / scale > max_rel)
			max_rel = d / scale;
	}
	char shape[64];
	snprintf(shape, sizeof shape, "%s %dx%d n %d beta %g", s->name, s->rows, s->cols, n, (double)beta);
	gc_check(bad == SIZE_MAX, "%-38s %-9s max abs %-9.3g max rel %-9.3g %s", shape, path, max_abs, max_rel, note);
	if (bad != SIZE_MAX)
		printf("     first bad element %zu (x row %zu, W row %zu): got %.9g, want %.9g\n", bad,
		       bad / (size_t)s->rows, bad % (size_t)s->rows, (double)y[bad],
		       s->dot[bad] + (beta != 0.0f ? (double)beta * y0[bad] : 0.0));
}

/* Initial y: NaN for beta 0 (nothing may be read or left unwritten), random
 * for beta 1. */
static float *
y_init(size_t count, float beta)
{
	return beta != 0.0f ? gc_frand(count, -50.0f, 50.0f, 0) : gc_fnan(count);
}

/* k_gemm_run untuned or tuned; through kc_gemm_repeat (runs > 1) also the
 * determinism of runs calls on one k_gemm. */
static void
check_auto(const struct shape *s, int n, float beta, int tune, int runs)
{
	const size_t count = (size_t)n * s->rows;
	float *y0 = y_init(count, beta), *y = gc_xmalloc(count * sizeof *y);
	memcpy(y, y0, count * sizeof *y);
	char what[200] = "", note[240];
	const char *path = tune ? "tuned" : "untuned";
	if (runs > 1) {
		int same = 0;
		if (gc_called(kc_gemm_repeat(s->w, s->rows, s->cols, s->x, n, beta, y, tune, runs, &same, err, sizeof err),
			      "kc_gemm_repeat", err)) {
			snprintf(note, sizeof note, "(%d runs %s)", runs, same ? "bit-identical" : "DIFFER");
			compare(s, n, beta, y0, y, path, note);
			gc_check(same, "%-38s %-9s %d runs on one k_gemm are bit-identical", s->name, path, runs);
		}
	} else if (gc_called(kc_gemm_run_what(s->w, s->rows, s->cols, s->x, n, beta, y, tune, what, sizeof what, err,
				          sizeof err),
			     "kc_gemm_run", err)) {
		snprintf(note, sizeof note, "[%s]", what);
		compare(s, n, beta, y0, y, path, note);
	}
	free(y0);
	free(y);
}

/* One GEMV configuration. */
static void
check_gemv(const struct shape *s, int n, float beta, int ks, int unroll)
{
	const size_t count = (size_t)n * s->rows;
	float *y0 = y_init(count, beta), *y = gc_xmalloc(count * sizeof *y);
	memcpy(y, y0, count * sizeof *y);
	char path[32];
	snprintf(path, sizeof path, "gemv %d/%d", ks, unroll);
	if (gc_called(kc_gemm_gemv(s->w, s->rows, s->cols, s->x, n, beta, y, ks, unroll, err, sizeof err),
		      "kc_gemm_gemv", err))
		compare(s, n, beta, y0, y, path, "(ks/unroll)");
	free(y0);
	free(y);
}

/* One GEMV configuration with the SwiGLU epilogue, the shape's W rows read
 * as interleaved (gate j, up j) pairs: h(n, rows / 2) against silu(gate) *
 * up of the reference dots, within the GEMV's tolerance carried through
 * silu (|d silu / dg| < 1.1) plus bf16 rounding of h. */
static void
check_gemv_swiglu(const struct shape *s, int n, int ks, int unroll)
{
	const int f = s->rows / 2;
	const size_t count = (size_t)n * f;
	float *h = gc_fnan(count);
	char path[32];
	snprintf(path, sizeof path, "swiglu %d/%d", ks, unroll);
	if (gc_called(kc_gemm_gemv_swiglu(s->w, s->rows, s->cols, s->x, n, ks, unroll, h, err, sizeof err),
		      "kc_gemm_gemv_swiglu", err)) {
		double max_abs = 0.0;
		size_t bad = SIZE_MAX;
		for (size_t i = 0; i < count; i++) {
			const size_t b = i / f, j = i % f, gi = b * s->rows + 2 * j;
			const double g = s->dot[gi], u = s->dot[gi + 1], sg = g / (1.0 + exp(-g)), want = sg * u;
			const double tol = 0.01 * fabs(want) +
					   GEMM_TOL * (1.1 * s->mag[gi] * fabs(u) + fabs(sg) * s->mag[gi + 1]) + 1e-30;
			double d = fabs((double)h[i] - want);
			if (!(d <= tol) && bad == SIZE_MAX)
				bad = i;
			if (isnan(d))
				d = INFINITY;
			if (d > max_abs)
				max_abs = d;
		}
		char shape[64];
		snprintf(shape, sizeof shape, "%s %dx%d n %d", s->name, s->rows, s->cols, n);
		gc_check(bad == SIZE_MAX, "%-38s %-9s max abs %-9.3g", shape, path, max_abs);
		if (bad != SIZE_MAX)
			printf("     first bad element %zu (x row %zu, pair %zu): got %.9g\n", bad, bad / f, bad % f,
			       (double)h[bad]);
	}
	free(h);
}

/* One row through the GEMV with its input normalised in the kernel: bit for
 * bit what k_rmsnorm and the plain GEMV give, and near the float64 product
 * of W and the CPU's normalised row (tolerance NORM_TOL: the device's rsqrtf
 * may round a rare element of the bf16 row the other way). */
#define NORM_TOL 1e-4
static void
check_gemv_norm(const struct shape *s, int ks, int unroll, int swiglu, float beta)
{
	const int cols = s->cols, rows = s->rows, ny = swiglu ? rows / 2 : rows;
	const float *x = s->x;   /* row 0, f32 (bf16-valued; the norm reads f32) */
	float *nw = gc_frand((size_t)cols, 0.5f, 1.5f, 0), *y0 = y_init((size_t)ny, swiglu ? 0.0f : beta);
	float *y = gc_xmalloc((size_t)ny * sizeof *y);
	double *xr = gc_xmalloc((size_t)cols * sizeof *xr);
	const float eps = 1e-6f;
	memcpy(y, y0, (size_t)ny * sizeof *y);
	double ss = 0.0;
	for (int i = 0; i < cols; i++)
		ss += (double)x[i] * x[i];
	const double inv = 1.0 / sqrt(ss / cols + eps);
	for (int i = 0; i < cols; i++)
		xr[i] = gc_bf((float)(x[i] * inv * nw[i]));
	char path[40];
	int same = 0;
	snprintf(path, sizeof path, "norm%s %d/%d", swiglu ? "+swiglu" : "", ks, unroll);
	if (gc_called(kc_gemm_gemv_norm(s->w, rows, cols, x, nw, eps, ks, unroll, swiglu, beta, y, &same, err,
					sizeof err),
		      "kc_gemm_gemv_norm", err)) {
		double max_rel = 0.0;
		int bad = -1;
		for (int j = 0; j < ny; j++) {
			double want, scale;
			if (swiglu) {
				double d2[2], m2[2];
				for (int k = 0; k < 2; k++) {
					const float *wr = s->w + (size_t)(2 * j + k) * cols;
					d2[k] = m2[k] = 0.0;
					for (int i = 0; i < cols; i++) {
						d2[k] += wr[i] * xr[i];
						m2[k] += fabs(wr[i] * xr[i]);
					}
				}
				const double sg = d2[0] / (1.0 + exp(-d2[0]));
				want = sg * d2[1];
				scale = 0.01 * fabs(want) / NORM_TOL + 1.1 * m2[0] * fabs(d2[1]) + fabs(sg) * m2[1] + 1e-30;
			} else {
				const float *wr = s->w + (size_t)j * cols;
				double d = 0.0, m = 0.0;
				for (int i = 0; i < cols; i++) {
					d += wr[i] * xr[i];
					m += fabs(wr[i] * xr[i]);
				}
				want = d + (beta != 0.0f ? (double)beta * y0[j] : 0.0);
				scale = m + (beta != 0.0f ? fabs((double)beta * y0[j]) : 0.0);
			}
			double rel = fabs((double)y[j] - want) / scale;
			if (isnan(rel))
				rel = INFINITY;
			if (!(rel <= NORM_TOL) && bad < 0)
				bad = j;
			if (rel > max_rel)
				max_rel = rel;
		}
		char shape[64];
		snprintf(shape, sizeof shape, "%s %dx%d n 1 beta %g", s->name, rows, cols, swiglu ? 0.0 : (double)beta);
		gc_check(bad < 0 && same, "%-38s %-14s max rel %-9.3g %s", shape, path, max_rel,
			 same ? "(= k_rmsnorm + GEMV, bit for bit)" : "(DIFFERS from k_rmsnorm + GEMV)");
		if (bad >= 0)
			printf("     first bad element %d: got %.9g\n", bad, (double)y[bad]);
	}
	free(nw);
	free(y0);
	free(y);
	free(xr);
}

/* ns[0..nn) rows; big: fewer paths per n (the host work and uploads of a
 * 100M-element W add up). */
static void
check_shape(const char *name, int rows, int cols, const int *ns, int nn, int big)
{
	struct shape s;
	int n_max = 0;
	for (int i = 0; i < nn; i++)
		n_max = ns[i] > n_max ? ns[i] : n_max;
	shape_init(&s, name, rows, cols, n_max);
	for (int i = 0; i < nn; i++) {
		const int n = ns[i];
		check_auto(&s, n, 0.0f, 0, 1);
		check_auto(&s, n, 1.0f, 1, 3);
		if (!big) {
			check_auto(&s, n, 0.0f, 1, 1);
			check_auto(&s, n, 1.0f, 0, 2);
		}
		const int variants = cols % 8 == 0 && (big ? n == 1 : (n == 1 || n == 3 || n == 8 || n == 9 || n == 16));
		if (variants)
			for (int ks = 1; ks <= 8; ks *= 2)
				for (int u = 4; u <= 8; u += 4) {
					check_gemv(&s, n, (ks == 1) != (u == 8) ? 1.0f : 0.0f, ks, u);
					if (!big && rows % 2 == 0 && (n == 1 || n == 9))
						check_gemv_swiglu(&s, n, ks, u);
					if (!big && n == 1 && cols <= 4096) {
						check_gemv_norm(&s, ks, u, 0, (ks == 1) != (u == 8) ? 1.0f : 0.0f);
						if (rows % 2 == 0)
							check_gemv_norm(&s, ks, u, 1, 0.0f);
					}
				}
	}
	shape_free(&s);
}

/* ---- bad arguments ------------------------------------------------------------- */

static void
check_errors(void)
{
	float w[20 * 4] = { 0 }, x[20 * 2] = { 0 }, y[4 * 2] = { 0 };
	int rc = kc_gemm_run(w, 4, 20, x, 0, 0.0f, y, 0, err, sizeof err);
	/* these two are refused by the check wrapper itself, before k_gemm_run */
	gc_check(rc == ENG_ERR_INVALID, "errors   wrapper refuses n 0: %s (%s)", eng_strerror(rc), err);
	rc = kc_gemm_run(NULL, 4, 20, x, 2, 0.0f, y, 0, err, sizeof err);
	gc_check(rc == ENG_ERR_INVALID, "errors   wrapper refuses no W: %s (%s)", eng_strerror(rc), err);
	rc = kc_gemm_gemv(w, 4, 20, x, 2, 0.0f, y, 1, 4, err, sizeof err);
	gc_check(rc == ENG_ERR_UNSUPPORTED, "errors   GEMV with cols %% 8 != 0: %s (%s)", eng_strerror(rc), err);
	rc = kc_gemm_gemv(w, 4, 16, x, 2, 0.0f, y, 3, 4, err, sizeof err);
	gc_check(rc == ENG_ERR_INVALID, "errors   GEMV ks 3: %s (%s)", eng_strerror(rc), err);
	int same = 0;
	rc = kc_gemm_gemv_norm(w, 4, 20, x, x, 1e-6f, 1, 4, 0, 0.0f, y, &same, err, sizeof err);
	gc_check(rc == ENG_ERR_UNSUPPORTED, "errors   GEMV norm with cols %% 8 != 0: %s (%s)", eng_strerror(rc), err);
	rc = kc_gemm_gemv(w, 1, 16, x, 17, 0.0f, y, 1, 4, err, sizeof err);
	gc_check(rc == ENG_ERR_UNSUPPORTED, "errors   GEMV n 17: %s (%s)", eng_strerror(rc), err);
}

/* ---- timings (information only) ------------------------------------------------- */

static void
time_one(const char *name, int rows, int cols, int n, int path, double copy_gbps)
{
	static const char *names[] = { "gemv", "tuned", "cublas" };
	double us = 0.0;
	char what[200] = "";
	int rc = kc_gemm_time(rows, cols, n, path, 20, &us, what, sizeof what, err, sizeof err);
	if (rc) {
		printf("time %-14s %6dx%-6d n %-3d %-6s failed: %s (%s)\n", name, rows, cols, n, names[path],
		       eng_strerror(rc), err);
		return;
	}
	const double gbps = (double)rows * cols * 2.0 / (us * 1e3);
	printf("time %-14s %6dx%-6d n %-3d %-6s %9.2f us %7.0f GB/s of W", name, rows, cols, n, names[path], us, gbps);
	if (copy_gbps > 0.0)
		printf(" (%3.0f%% of copy)", 100.0 * gbps / copy_gbps);
	printf("  [%s]\n", what);
}

static void
timings(void)
{
	static const struct {
		const char *name;
		int rows, cols;
	} shapes[] = {
		{ "0.6B qkv", 4096, 1024 },     { "0.6B o", 1024, 2048 },      { "0.6B gate|up", 6144, 1024 },
		{ "0.6B down", 1024, 3072 },    { "0.6B lm head", 151936, 1024 }, { "1.7B gate|up", 12288, 2048 },
		{ "1.7B down", 2048, 6144 },    { "8B qkv", 6144, 4096 },      { "8B o", 4096, 4096 },
		{ "8B gate|up", 24576, 4096 },  { "8B down", 4096, 12288 },    { "8B lm head", 151936, 4096 },
	};
	double copy = 0.0;
	if (cuda_copy_bandwidth(0, &copy, err, sizeof err) == 0)
		printf("copy bandwidth %.0f GB/s (read + write); times below: per call, replayed in a CUDA graph, W cold\n",
		       copy);
	for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
		static const int ns[] = { 1, 8, 16, 64 };
		for (int j = 0; j < 4; j++) {
			if (ns[j] <= 8)
				time_one(shapes[i].name, shapes[i].rows, shapes[i].cols, ns[j], KC_GEMM_GEMV, copy);
			time_one(shapes[i].name, shapes[i].rows, shapes[i].cols, ns[j], KC_GEMM_TUNED, copy);
			time_one(shapes[i].name, shapes[i].rows, shapes[i].cols, ns[j], KC_GEMM_CUBLAS, copy);
		}
	}
}

int
main(void)
{
	if (!gc_start())
		return GC_SKIP;

	static const int all[] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 33, 64, 100 };
	static const int few[] = { 1, 2, 3, 4, 5, 6, 7, 8 };
	static const int qkv8[] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 64 };
	const int n_all = (int)(sizeof all / sizeof all[0]), n_few = (int)(sizeof few / sizeof few[0]);

	check_shape("0.6B qkv", 4096, 1024, all, n_all, 0);
	check_shape("0.6B o", 1024, 2048, all, n_all, 0);
	check_shape("0.6B down", 1024, 3072, all, n_all, 0);
	check_shape("odd", 1000, 8, all, n_all, 0);
	check_shape("odd", 1000, 24, all, n_all, 0);
	check_shape("odd", 1002, 24, all, n_all, 0);          /* rows % 8 == 2: the SwiGLU epilogue's tail */
	check_shape("odd", 1000, 4864, all, n_all, 0);
	check_shape("odd cols", 1000, 20, all, n_all, 0);     /* no GEMV: cols % 8 != 0 */
	check_shape("tiny", 3, 40, all, n_all, 0);            /* rows < 8, cols % 32 != 0 */
	check_shape("8B qkv", 6144, 4096, qkv8, (int)(sizeof qkv8 / sizeof qkv8[0]), 1);
	check_shape("8B down", 4096, 12288, few, n_few, 1);
	check_shape("8B gate|up", 24576, 4096, few, n_few, 1);

	check_errors();

	timings();
	return gc_finish();
}
