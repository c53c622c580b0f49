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

/* The canonical dot product, shared by every kernel: two 8-lane
 * accumulators, the groups of 8 elements going alternately to the first and
 * the second (group g to accumulator g % 2, in order); then the two added
 * lane by lane, the 8 lanes added in a fixed tree,
 * ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), and the tail elements one by one.
 * The AVX2 kernels fuse each multiply and add (FMA); the portable ones round
 * both (plain x86-64 has no FMA), so the two agree to rounding, not bit for
 * bit.  Within one of them every caller (ops_dot, any tile of ops_matmul,
 * any batch size) gets the same bits, because each output element is always
 * this one sequence.  Two accumulators, not one, so that a single weight row
 * read alone (batch of one) still keeps two FMA chains in flight. */

/* Matmul work: a panel is MM_R weight rows; a work item is MM_ITEM_PANELS
 * panels (each thread takes a contiguous range of items); inside an item the batch is
 * walked in chunks of MM_BCHUNK rows so that the chunk of x stays in L2
 * while every panel of the item uses it, and each tile is MM_R weight rows
 * by MM_B batch rows with 2 * MM_R * MM_B register accumulators.  Batches
 * of MM_SEQ_MAX rows or fewer read one weight row at a time instead: the
 * weight stream is then the bottleneck, and one sequential stream per
 * thread is what the hardware prefetcher follows best. */
#define MM_R 2
#define MM_B 3
#define MM_ITEM_PANELS 8
#define MM_BCHUNK 24
#define MM_SEQ_MAX 2

/* ---- portable kernels ------------------------------------------------------ */

#define LOAD_F32(w, i) (((const float *)(w))[i])
#define LOAD_F16(w, i) st_f16_to_f32(((const uint16_t *)(w))[i])
#define LOAD_BF16(w, i) st_bf16_to_f32(((const uint16_t *)(w))[i])

#define DOT_SCALAR(NAME, LOAD)                                                \
	static float NAME(const float *x, const void *wv, int64_t n)          \
	{                                                                     \
		float a[16] = { 0 };                                          \
		int64_t i = 0;                                                \
		for (; i + 16 <= n; i += 16)                                  \
			for (int j = 0; j < 16; j++)                          \
				a[j] += x[i + j] * LOAD(wv, i + j);           \
		if (i + 8 <= n) {                                             \
			for (int j = 0; j < 8; j++)                           \
				a[j] += x[i + j] * LOAD(wv, i + j);           \
			i += 8;                                               \
		}                                                             \
		for (int j = 0; j < 8; j++)                                   \
			a[j] += a[j + 8];                                     \
		float s = ((a[0] + a[4]) + (a[2] + a[6])) +                   \
			  ((a[1] + a[5]) + (a[3] + a[7]));                    \
		for (; i < n; i++)                                            \
			s += x[i] * LOAD(wv, i);                              \
		return s;                                                     \
	}

DOT_SCALAR(dot_f32_c, LOAD_F32)
DOT_SCALAR(dot_f16_c, LOAD_F16)
DOT_SCALAR(dot_bf16_c, LOAD_BF16)

typedef float (*dot_fn)(const float *x, const void *w, int64_t n);

static dot_fn
pick_dot_c(enum st_dtype dt)
{
	switch (dt) {
	case ST_F32: return dot_f32_c;
	case ST_F16: return dot_f16_c;
	case ST_BF16: return dot_bf16_c;
	}
	return dot_f32_c;
}

/* ---- AVX2 + FMA + F16C kernels --------------------------------------------- */
#ifdef OPS_X86
#define AVX_TARGET __attribute__((target("avx2,fma,f16c")))
#define AVX_INLINE AVX_TARGET static inline __attribute__((always_inline))

/* Eight weights at w[i..i+8) as floats; dt is a constant after inlining. */
AVX_INLINE __m256
ld8(const void *w, int64_t i, enum st_dtype dt)
{
	if (dt == ST_F32)
		return _mm256_loadu_ps((const float *)w + i);
	__m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
	if (dt == ST_F16)
		return _mm256_cvtph_ps(h);
	return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AVX_INLINE float
ld1(const void *w, int64_t i, enum st_dtype dt)
{
	if (dt == ST_F32)
		return LOAD_F32(w, i);
	if (dt == ST_F16)
		return LOAD_F16(w, i);
	return LOAD_BF16(w, i);
}

AVX_INLINE float
hsum8(__m256 v)
{
	__m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
	lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
	return _mm_cvtss_f32(lo);
}

/* The R x B tile out[b * ostride + t] = dot(x + b * cols, w row t), each
 * element the canonical sequence.  Weight row t starts at w + t * wrow
 * bytes.  R, B and dt are constants after inlining, so acc lives in
 * registers: each weight vector is converted once for B batch rows and
 * each x vector is loaded once for R weight rows.  pf (may be NULL) is
 * the next panel: its rows are prefetched as this one is read, because R
 * interleaved short row streams defeat the hardware prefetcher. */
AVX_INLINE void
tile_avx(const float *x, int64_t cols, const char *w, size_t wrow, enum st_dtype dt,
	 const int R, const int B, const char *pf, float *out, int64_t ostride)
{
	const size_t esz = dt == ST_F32 ? 4 : 2;
	__m256 acc[MM_R][MM_B][2];
#pragma GCC unroll 4
	for (int t = 0; t < R; t++)
#pragma GCC unroll 4
		for (int b = 0; b < B; b++)
			acc[t][b][0] = acc[t][b][1] = _mm256_setzero_ps();
	int64_t i = 0;
	/* Blocks of 32 (one prefetch per row and 64 bytes), then of 16, then
	 * a last group of 8: the groups still alternate between the two
	 * accumulators in order. */
	for (; i + 32 <= cols; i += 32) {
		if (pf) {
#pragma GCC unroll 4
			for (int t = 0; t < R; t++) {
				const char *a = pf + (size_t)t * wrow + (size_t)i * esz;
				_mm_prefetch(a, _MM_HINT_T0);
				if (esz == 4)
					_mm_prefetch(a + 64, _MM_HINT_T0);
			}
		}
#pragma GCC unroll 4
		for (int k = 0; k < 4; k++) {
#pragma GCC unroll 4
			for (int t = 0; t < R; t++) {
				__m256 wv = ld8(w + (size_t)t * wrow, i + 8 * k, dt);
#pragma GCC unroll 4
				for (int b = 0; b < B; b++)
					acc[t][b][k & 1] = _mm256_fmadd_ps(
						wv, _mm256_loadu_ps(x + (size_t)b * (size_t)cols + i + 8 * k),
						acc[t][b][k & 1]);
			}
		}
	}
	for (int k = 0; i + 8 <= cols; i += 8, k ^= 1) {
#pragma GCC unroll 4
		for (int t = 0; t < R; t++) {
			__m256 wv = ld8(w + (size_t)t * wrow, i, dt);
#pragma GCC unroll 4
			for (int b = 0; b < B; b++)
				acc[t][b][k] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (size_t)b * (size_t)cols + i),
							       acc[t][b][k]);
		}
	}
#pragma GCC unroll 4
	for (int t = 0; t < R; t++) {
#pragma GCC unroll 4
		for (int b = 0; b < B; b++) {
			const float *xb = x + (size_t)b * (size_t)cols;
			__m128 s = _mm_set_ss(hsum8(_mm256_add_ps(acc[t][b][0], acc[t][b][1])));
			for (int64_t k = i; k < cols; k++)
				s = _mm_fmadd_ss(_mm_set_ss(ld1(w + (size_t)t * wrow, k, dt)), _mm_set_ss(xb[k]), s);
			out[(size_t)b * (size_t)ostride + t] = _mm_cvtss_f32(s);
		}
	}
}

/* One function per (dtype, R) with B dispatched inside: every tile shape a
 * matmul needs.  R is MM_R, or 1 for the rows past the last full panel and
 * for batches of at most MM_SEQ_MAX rows. */
#define TILE_FN(NAME, DT, R)                                                  \
	AVX_TARGET static void NAME(const float *x, int B, int64_t cols, const char *w, \
				    size_t wrow, const char *pf, float *out, int64_t ostride) \
	{                                                                     \
		switch (B) {                                                  \
		case 1: tile_avx(x, cols, w, wrow, DT, R, 1, pf, out, ostride); break; \
		case 2: tile_avx(x, cols, w, wrow, DT, R, 2, pf, out, ostride); break; \
		default: tile_avx(x, cols, w, wrow, DT, R, 3, pf, out, ostride); break; \
		}                                                             \
	}

TILE_FN(tile_f32_rn, ST_F32, MM_R)
TILE_FN(tile_f16_rn, ST_F16, MM_R)
TILE_FN(tile_bf16_rn, ST_BF16, MM_R)
TILE_FN(tile_f32_r1, ST_F32, 1)
TILE_FN(tile_f16_r1, ST_F16, 1)
TILE_FN(tile_bf16_r1, ST_BF16, 1)

AVX_TARGET static float
dot_avx(const float *x, const void *w, enum st_dtype dt, int64_t n)
{
	float r;
	switch (dt) {
	case ST_F16: tile_avx(x, n, w, 0, ST_F16, 1, 1, NULL, &r, 1); break;
	case ST_BF16: tile_avx(x, n, w, 0, ST_BF16, 1, 1, NULL, &r, 1); break;
	default: tile_avx(x, n, w, 0, ST_F32, 1, 1, NULL, &r, 1); break;
	}
	return r;
}

/* y[n] += a * v, fused; the tail with scalar FMA too. */
AVX_TARGET static void
axpy_avx(float *y, float a, const float *v, int64_t n)
{
	const __m256 av = _mm256_set1_ps(a);
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(v + i), _mm256_loadu_ps(y + i)));
	for (; i < n; i++)
		y[i] = _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(v[i]), _mm_set_ss(y[i])));
}

AVX_TARGET static void
scale_avx(float *y, float a, int64_t n)
{
	const __m256 av = _mm256_set1_ps(a);
	int64_t i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i, _mm256_mul_ps(av, _mm256_loadu_ps(y + i)));
	for (; i < n; i++)
		y[i] *= a;
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

float
ops_dot(const float *x, const void *w, enum st_dtype dt, int64_t n)
{
#ifdef OPS_X86
	if (ops_simd())
		return dot_avx(x, w, dt, n);
#endif
	return pick_dot_c(dt)(x, w, n);
}

void
ops_axpy(float *y, float a, const float *v, int64_t n)
{
#ifdef OPS_X86
	if (ops_simd()) {
		axpy_avx(y, a, v, n);
		return;
	}
#endif
	for (int64_t i = 0; i < n; i++)
		y[i] += a * v[i];
}

void
ops_scale(float *y, float a, int64_t n)
{
#ifdef OPS_X86
	if (ops_simd()) {
		scale_avx(y, a, n);
		return;
	}
#endif
	for (int64_t i = 0; i < n; i++)
		y[i] *= a;
}

/* ---- matmul ----------------------------------------------------------------- */

struct ops_mm {
	pool *p;
	int64_t max_cols;
};

ops_mm *
ops_mm_create(pool *p, int64_t max_cols)
{
	ops_mm *mm = calloc(1, sizeof *mm);
	if (!mm)
		return NULL;
	mm->p = p;
	mm->max_cols = max_cols;
	(void)ops_simd();
	return mm;
}

void
ops_mm_destroy(ops_mm *mm)
{
	free(mm);
}

/* A tile kernel: out[b * ostride + t] for t < R (fixed per kernel), b < B. */
typedef void (*tile_fn)(const float *x, int B, int64_t cols, const char *w, size_t wrow,
			const char *pf, float *out, int64_t ostride);

struct mm_job {
	float *out;             /* (n, rows) */
	const float *x;         /* (n, cols) */
	int n;
	const struct weight *w;
	int64_t n_items;
	tile_fn tile_rn, tile_r1;   /* NULL: portable                     */
	dot_fn dot;                 /* portable, on the file dtype        */
};

/* Weight rows [r0, r1) against batch rows [b0, b1). */
static void
mm_block(const struct mm_job *j, int64_t r0, int64_t r1, int b0, int b1)
{
	const int64_t rows = j->w->rows, cols = j->w->cols;
	const size_t wrow = (size_t)cols * st_dtype_size(j->w->dtype);
	const char *wbase = j->w->data;
	if (!j->tile_rn) {
		for (int64_t r = r0; r < r1; r++)
			for (int b = b0; b < b1; b++)
				j->out[(size_t)b * (size_t)rows + (size_t)r] =
					j->dot(j->x + (size_t)b * (size_t)cols, wbase + (size_t)r * wrow, cols);
		return;
	}
	for (int64_t r = r0; r < r1;) {
		const int R = r1 - r >= MM_R && j->n > MM_SEQ_MAX ? MM_R : 1;
		const tile_fn fn = R == MM_R ? j->tile_rn : j->tile_r1;
		/* prefetch the next rows (within the matrix) on the first tile */
		const char *pf = r + 2 * R <= rows && R > 1 ? wbase + (size_t)(r + R) * wrow : NULL;
		for (int b = b0; b < b1; b += MM_B) {
			fn(j->x + (size_t)b * (size_t)cols, b1 - b < MM_B ? b1 - b : MM_B, cols,
			   wbase + (size_t)r * wrow, wrow, pf, j->out + (size_t)b * (size_t)rows + (size_t)r, rows);
			pf = NULL;
		}
		r += R;
	}
}

static void
mm_item(const struct mm_job *j, int64_t it)
{
	const int64_t rows = j->w->rows, item_rows = (int64_t)MM_R * MM_ITEM_PANELS;
	int64_t r0 = it * item_rows, r1 = r0 + item_rows < rows ? r0 + item_rows : rows;
	for (int b0 = 0; b0 < j->n; b0 += MM_BCHUNK)
		mm_block(j, r0, r1, b0, j->n - b0 < MM_BCHUNK ? j->n : b0 + MM_BCHUNK);
}

/* Each thread takes a contiguous range of items.  (Claiming items
 * dynamically measured slower: the two threads' weight streams then
 * interleave and the prefetchers lose them.)  Which thread computes an
 * element never changes its value. */
static void
mm_static(void *ctx, int i0, int i1)
{
	const struct mm_job *j = ctx;
	for (int i = i0; i < i1; i++)
		mm_item(j, i);
}

void
ops_matmul(ops_mm *mm, float *out, const float *x, int n, const struct weight *w)
{
	assert(w->cols <= mm->max_cols);
	const int64_t item_rows = (int64_t)MM_R * MM_ITEM_PANELS;
	struct mm_job j = {
		.out = out, .x = x, .n = n, .w = w,
		.n_items = (w->rows + item_rows - 1) / item_rows,
		.dot = pick_dot_c(w->dtype),
	};
#ifdef OPS_X86
	if (ops_simd()) {
		switch (w->dtype) {
		case ST_F32: j.tile_rn = tile_f32_rn, j.tile_r1 = tile_f32_r1; break;
		case ST_F16: j.tile_rn = tile_f16_rn, j.tile_r1 = tile_f16_r1; break;
		case ST_BF16: j.tile_rn = tile_bf16_rn, j.tile_r1 = tile_bf16_r1; break;
		}
	}
#endif
	if (n <= 0 || w->rows <= 0)
		return;
	pool_run(mm->p, mm_static, &j, (int)j.n_items);
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
