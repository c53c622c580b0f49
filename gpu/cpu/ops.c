/* ops.c - CPU kernels of the reference forward pass: dot/matmul over f32,
 * f16 and bf16 weights (AVX2+FMA+F16C chosen at run time, portable C
 * otherwise), RMSNorm, RoPE, SwiGLU.  Engine thread and its pool workers. */
#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define OPS_X86 1
#endif

#include "ops.h"

/* Weight rows converted to f32 together when a batch has several rows. */
#define MM_TILE_ROWS 4

typedef float (*dot_fn)(const float *x, const void *w, int64_t n);
typedef void (*conv_fn)(float *dst, const void *src, int64_t n);

/* ---- portable kernels ------------------------------------------------------
 * Eight independent partial sums over consecutive groups of 8, combined in a
 * fixed tree, then the tail in order.  Plain x86-64 has no FMA, so nothing is
 * contracted here. */

#define DOT_SCALAR(NAME, LOAD)                                                \
	static float NAME(const float *x, const void *wv, int64_t n)          \
	{                                                                     \
		float a[8] = { 0 };                                           \
		int64_t i = 0;                                                \
		for (; i + 8 <= n; i += 8)                                    \
			for (int j = 0; j < 8; j++)                           \
				a[j] += x[i + j] * LOAD(wv, i + j);           \
		float s = ((a[0] + a[1]) + (a[2] + a[3])) +                   \
			  ((a[4] + a[5]) + (a[6] + a[7]));                    \
		for (; i < n; i++)                                            \
			s += x[i] * LOAD(wv, i);                              \
		return s;                                                     \
	}

#define LOAD_F32(w, i) (((const float *)(w))[i])
#define LOAD_F16(w, i) st_f16_to_f32(((const uint16_t *)(w))[i])
#define LOAD_BF16(w, i) st_bf16_to_f32(((const uint16_t *)(w))[i])

DOT_SCALAR(dot_f32_c, LOAD_F32)
DOT_SCALAR(dot_f16_c, LOAD_F16)
DOT_SCALAR(dot_bf16_c, LOAD_BF16)

static void
conv_f16_c(float *dst, const void *src, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		dst[i] = LOAD_F16(src, i);
}

static void
conv_bf16_c(float *dst, const void *src, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		dst[i] = LOAD_BF16(src, i);
}

/* ---- AVX2 + FMA + F16C kernels ---------------------------------------------
 * Four 8-lane accumulators over blocks of 32, the remaining groups of 8 into
 * the first, a fixed horizontal sum, then the tail with scalar FMA.  Every
 * dtype runs the same float operations on the same values, so a weight row
 * converted to f32 first gives the same bits as converting on the fly. */
#ifdef OPS_X86
#define AVX_TARGET __attribute__((target("avx2,fma,f16c")))

AVX_TARGET static inline __m256
ld8_f32(const void *w, int64_t i)
{
	return _mm256_loadu_ps((const float *)w + i);
}

AVX_TARGET static inline __m256
ld8_f16(const void *w, int64_t i)
{
	return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
}

AVX_TARGET static inline __m256
ld8_bf16(const void *w, int64_t i)
{
	__m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
	return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AVX_TARGET static inline float
hsum8(__m256 v)
{
	__m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
	lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
	return _mm_cvtss_f32(lo);
}

#define DOT_AVX(NAME, LD8, LOAD)                                               \
	AVX_TARGET static float NAME(const float *x, const void *w, int64_t n) \
	{                                                                      \
		__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;    \
		int64_t i = 0;                                                 \
		for (; i + 32 <= n; i += 32) {                                 \
			a0 = _mm256_fmadd_ps(LD8(w, i), _mm256_loadu_ps(x + i), a0);            \
			a1 = _mm256_fmadd_ps(LD8(w, i + 8), _mm256_loadu_ps(x + i + 8), a1);    \
			a2 = _mm256_fmadd_ps(LD8(w, i + 16), _mm256_loadu_ps(x + i + 16), a2);  \
			a3 = _mm256_fmadd_ps(LD8(w, i + 24), _mm256_loadu_ps(x + i + 24), a3);  \
		}                                                              \
		for (; i + 8 <= n; i += 8)                                     \
			a0 = _mm256_fmadd_ps(LD8(w, i), _mm256_loadu_ps(x + i), a0);            \
		__m128 s = _mm_set_ss(hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), \
							  _mm256_add_ps(a2, a3)))); \
		for (; i < n; i++)                                             \
			s = _mm_fmadd_ss(_mm_set_ss(LOAD(w, i)), _mm_set_ss(x[i]), s); \
		return _mm_cvtss_f32(s);                                       \
	}

DOT_AVX(dot_f32_avx, ld8_f32, LOAD_F32)
DOT_AVX(dot_f16_avx, ld8_f16, LOAD_F16)
DOT_AVX(dot_bf16_avx, ld8_bf16, LOAD_BF16)

/* out[b * out_stride + t] = dot_f32_avx(x + b * cols, w[t], cols) for b < nb,
 * t < nr, bit for bit, but with the columns walked in chunks that keep
 * the x and w pieces in L1: each (b, t) pair's four accumulators are
 * parked in acc between chunks, so every pair still sees the blocks of 32
 * in order, then the same groups of 8, the same sums and the same tail. */
#define MMB_ROWS 8          /* batch rows per block                     */
#define MMB_CHUNK 256       /* columns per chunk (a multiple of 32)      */

AVX_TARGET static void
mm_block_avx(const float *x, int nb, const float *const *w, int nr, int64_t cols,
	     float *out, int64_t out_stride)
{
	__m256 acc[MMB_ROWS][MM_TILE_ROWS][4];
	const int64_t n32 = cols / 32 * 32;
	for (int b0 = 0; b0 < nb; b0 += MMB_ROWS) {
		const int bn = nb - b0 < MMB_ROWS ? nb - b0 : MMB_ROWS;
		for (int b = 0; b < bn; b++)
			for (int t = 0; t < nr; t++)
				for (int a = 0; a < 4; a++)
					acc[b][t][a] = _mm256_setzero_ps();
		for (int64_t c0 = 0; c0 < n32; c0 += MMB_CHUNK) {
			const int64_t c1 = c0 + MMB_CHUNK < n32 ? c0 + MMB_CHUNK : n32;
			for (int b = 0; b < bn; b++) {
				const float *xb = x + (size_t)(b0 + b) * (size_t)cols;
				for (int t = 0; t < nr; t++) {
					const float *wt = w[t];
					__m256 a0 = acc[b][t][0], a1 = acc[b][t][1];
					__m256 a2 = acc[b][t][2], a3 = acc[b][t][3];
					for (int64_t i = c0; i < c1; i += 32) {
						a0 = _mm256_fmadd_ps(_mm256_loadu_ps(wt + i), _mm256_loadu_ps(xb + i), a0);
						a1 = _mm256_fmadd_ps(_mm256_loadu_ps(wt + i + 8), _mm256_loadu_ps(xb + i + 8), a1);
						a2 = _mm256_fmadd_ps(_mm256_loadu_ps(wt + i + 16), _mm256_loadu_ps(xb + i + 16), a2);
						a3 = _mm256_fmadd_ps(_mm256_loadu_ps(wt + i + 24), _mm256_loadu_ps(xb + i + 24), a3);
					}
					acc[b][t][0] = a0, acc[b][t][1] = a1, acc[b][t][2] = a2, acc[b][t][3] = a3;
				}
			}
		}
		for (int b = 0; b < bn; b++) {
			const float *xb = x + (size_t)(b0 + b) * (size_t)cols;
			for (int t = 0; t < nr; t++) {
				const float *wt = w[t];
				__m256 a0 = acc[b][t][0];
				int64_t i = n32;
				for (; i + 8 <= cols; i += 8)
					a0 = _mm256_fmadd_ps(_mm256_loadu_ps(wt + i), _mm256_loadu_ps(xb + i), a0);
				__m128 s = _mm_set_ss(hsum8(_mm256_add_ps(_mm256_add_ps(a0, acc[b][t][1]),
									  _mm256_add_ps(acc[b][t][2], acc[b][t][3]))));
				for (; i < cols; i++)
					s = _mm_fmadd_ss(_mm_set_ss(wt[i]), _mm_set_ss(xb[i]), s);
				out[(size_t)(b0 + b) * (size_t)out_stride + t] = _mm_cvtss_f32(s);
			}
		}
	}
}

AVX_TARGET static void
conv_f16_avx(float *dst, const void *src, int64_t n)
{
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(dst + i, ld8_f16(src, i));
	for (; i < n; i++)
		dst[i] = LOAD_F16(src, i);
}

AVX_TARGET static void
conv_bf16_avx(float *dst, const void *src, int64_t n)
{
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(dst + i, ld8_bf16(src, i));
	for (; i < n; i++)
		dst[i] = LOAD_BF16(src, i);
}

static int
cpu_has_avx(void)
{
	__builtin_cpu_init();
	return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
	       __builtin_cpu_supports("f16c");
}
#else
static int
cpu_has_avx(void)
{
	return 0;
}
#endif

/* -1 = not decided yet; set once on the engine thread before workers run. */
static int simd_on = -1;

int
ops_simd(void)
{
	if (simd_on < 0)
		simd_on = cpu_has_avx();
	return simd_on;
}

void
ops_set_simd(int on)
{
	simd_on = on && cpu_has_avx();
}

static dot_fn
pick_dot(enum st_dtype dt)
{
#ifdef OPS_X86
	if (ops_simd()) {
		switch (dt) {
		case ST_F32: return dot_f32_avx;
		case ST_F16: return dot_f16_avx;
		case ST_BF16: return dot_bf16_avx;
		}
	}
#endif
	switch (dt) {
	case ST_F32: return dot_f32_c;
	case ST_F16: return dot_f16_c;
	case ST_BF16: return dot_bf16_c;
	}
	return dot_f32_c;
}

static conv_fn
pick_conv(enum st_dtype dt)
{
#ifdef OPS_X86
	if (ops_simd())
		return dt == ST_F16 ? conv_f16_avx : conv_bf16_avx;
#endif
	return dt == ST_F16 ? conv_f16_c : conv_bf16_c;
}

float
ops_dot(const float *x, const void *w, enum st_dtype dt, int64_t n)
{
	return pick_dot(dt)(x, w, n);
}

/* ---- matmul ----------------------------------------------------------------- */

struct ops_mm {
	pool *p;
	int n_slots;          /* one per pool thread                        */
	int64_t max_cols;
	float *tile;          /* (n_slots, MM_TILE_ROWS, max_cols)          */
};

ops_mm *
ops_mm_create(pool *p, int64_t max_cols)
{
	ops_mm *mm = calloc(1, sizeof *mm);
	if (!mm)
		return NULL;
	mm->p = p;
	mm->n_slots = pool_threads(p);
	mm->max_cols = max_cols;
	mm->tile = malloc((size_t)mm->n_slots * MM_TILE_ROWS * (size_t)max_cols * sizeof(float));
	if (!mm->tile) {
		free(mm);
		return NULL;
	}
	(void)ops_simd();
	return mm;
}

void
ops_mm_destroy(ops_mm *mm)
{
	if (!mm)
		return;
	free(mm->tile);
	free(mm);
}

struct mm_job {
	ops_mm *mm;
	float *out;             /* (n, rows) */
	const float *x;         /* (n, cols) */
	int n;
	const struct weight *w;
	dot_fn dot;             /* on the file dtype */
	dot_fn dot32;           /* on f32            */
	conv_fn conv;
};

/* Slot s computes output columns [rows*s/S, rows*(s+1)/S), tile by tile:
 * the tile's weight rows stay in cache while every batch row uses them. */
static void
mm_slots(void *ctx, int s0, int s1)
{
	const struct mm_job *j = ctx;
	const int64_t rows = j->w->rows, cols = j->w->cols;
	const size_t esz = st_dtype_size(j->w->dtype);
	const char *wbase = j->w->data;
	const int S = j->mm->n_slots;

	for (int s = s0; s < s1; s++) {
		int64_t r0 = rows * s / S, r1 = rows * (s + 1) / S;
		float *tile = j->mm->tile + (size_t)s * MM_TILE_ROWS * (size_t)j->mm->max_cols;
		for (int64_t r = r0; r < r1; r += MM_TILE_ROWS) {
			int nr = (int)(r1 - r < MM_TILE_ROWS ? r1 - r : MM_TILE_ROWS);
			const void *wr[MM_TILE_ROWS];
			dot_fn dot = j->dot;
			for (int t = 0; t < nr; t++)
				wr[t] = wbase + (size_t)(r + t) * (size_t)cols * esz;
			if (j->n > 1 && j->w->dtype != ST_F32) {
				for (int t = 0; t < nr; t++) {
					j->conv(tile + (size_t)t * cols, wr[t], cols);
					wr[t] = tile + (size_t)t * cols;
				}
				dot = j->dot32;
			}
#ifdef OPS_X86
			if (j->n > 1 && dot == dot_f32_avx) {
				mm_block_avx(j->x, j->n, (const float *const *)wr, nr, cols, j->out + r, rows);
				continue;
			}
#endif
			for (int b = 0; b < j->n; b++) {
				const float *xb = j->x + (size_t)b * cols;
				float *ob = j->out + (size_t)b * rows + r;
				for (int t = 0; t < nr; t++)
					ob[t] = dot(xb, wr[t], cols);
			}
		}
	}
}

void
ops_matmul(ops_mm *mm, float *out, const float *x, int n, const struct weight *w)
{
	assert(w->cols <= mm->max_cols);
	struct mm_job j = {
		.mm = mm, .out = out, .x = x, .n = n, .w = w,
		.dot = pick_dot(w->dtype), .dot32 = pick_dot(ST_F32),
		.conv = w->dtype == ST_F32 ? NULL : pick_conv(w->dtype),
	};
	if (n <= 0 || w->rows <= 0)
		return;
	pool_run(mm->p, mm_slots, &j, mm->n_slots);
}

/* ---- element-wise ----------------------------------------------------------- */

void
ops_rmsnorm(float *out, const float *x, const struct weight *w, int64_t n, float eps)
{
	double ss = 0.0;
	for (int64_t i = 0; i < n; i++)
		ss += (double)x[i] * x[i];
	float r = 1.0f / sqrtf((float)(ss / (double)n) + eps);
	for (int64_t i = 0; i < n; i++)
		out[i] = st_load(w->data, w->dtype, (size_t)i) * (x[i] * r);
}

void
ops_add_weight(float *y, const struct weight *b, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		y[i] += st_load(b->data, b->dtype, (size_t)i);
}

void
ops_add(float *y, const float *x, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		y[i] += x[i];
}

void
ops_swiglu(float *g, const float *u, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* ---- RoPE ------------------------------------------------------------------- */

void
ops_rope_inv_freq(const struct model_config *cfg, float *inv_freq)
{
	const int d = cfg->head_dim, half = d / 2;
	for (int i = 0; i < half; i++) {
		float e = (float)(2 * i) / (float)d;
		inv_freq[i] = 1.0f / (float)pow(cfg->rope_theta, (double)e);
	}
	if (cfg->rope_kind != ROPE_LLAMA3)
		return;
	/* Llama 3.1: long wavelengths are divided by factor, short ones kept,
	 * the band between interpolated smoothly. */
	const double factor = cfg->rope_factor, lo = cfg->rope_low_freq, hi = cfg->rope_high_freq;
	const double old_ctx = cfg->rope_orig_max_pos;
	const double lo_wavelen = old_ctx / lo, hi_wavelen = old_ctx / hi;
	for (int i = 0; i < half; i++) {
		double f = inv_freq[i];
		double wavelen = 2.0 * M_PI / f;
		double nf;
		if (wavelen < hi_wavelen) {
			nf = f;
		} else if (wavelen > lo_wavelen) {
			nf = f / factor;
		} else {
			double smooth = (old_ctx / wavelen - lo) / (hi - lo);
			nf = (1.0 - smooth) * f / factor + smooth * f;
		}
		inv_freq[i] = (float)nf;
	}
}

void
ops_rope_cos_sin(const float *inv_freq, int half, int32_t pos, float *cos_out, float *sin_out)
{
	for (int i = 0; i < half; i++) {
		float a = (float)pos * inv_freq[i];
		cos_out[i] = (float)cos((double)a);
		sin_out[i] = (float)sin((double)a);
	}
}

void
ops_rope(float *v, int half, const float *cos_v, const float *sin_v)
{
	for (int i = 0; i < half; i++) {
		float a = v[i], b = v[i + half];
		v[i] = a * cos_v[i] - b * sin_v[i];
		v[i + half] = b * cos_v[i] + a * sin_v[i];
	}
}
