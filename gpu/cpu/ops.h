/* ops.h - the CPU kernels of the reference forward pass (ops_): matmul over
 * weights kept in their file dtype, RMSNorm, RoPE, SwiGLU.  Engine thread;
 * ops_matmul fans out over the pool.
 *
 * Batch invariance: every output element of ops_matmul is one dot product
 * computed by one fixed sequence of float operations that depends only on
 * the row length, never on how many rows are in the batch or how the rows
 * are split among threads. */
#ifndef BRAID_OPS_H
#define BRAID_OPS_H

#include <stdint.h>

#include "config.h"
#include "model.h"
#include "pool.h"

/* Largest head_dim the attention and RoPE kernels accept. */
#define OPS_MAX_HEAD_DIM 512

/* Matmul context: the pool plus per-thread scratch for weight tiles. */
typedef struct ops_mm ops_mm;

/* p is borrowed (must outlive the context); max_cols bounds w->cols of every
 * later ops_matmul.  NULL on allocation failure. */
ops_mm *ops_mm_create(pool *p, int64_t max_cols);
void ops_mm_destroy(ops_mm *mm);          /* NULL is fine */

/* out(n, w->rows) = x(n, w->cols) . W(w->rows, w->cols)^T, W in its file
 * dtype.  Parallel over weight rows; each weight row is read from memory
 * once for all n batch rows. */
void ops_matmul(ops_mm *mm, float *out, const float *x, int n, const struct weight *w);

/* The dot product every kernel uses: sum_i x[i] * w[i], w of dtype dt.
 * Bit-identical for the same inputs whatever dt stores them as (when the
 * values are representable), and whatever the caller. */
float ops_dot(const float *x, const void *w, enum st_dtype dt, int64_t n);

/* out[n] = x * rsqrt(mean(x^2) + eps) * w; out may equal x. */
void ops_rmsnorm(float *out, const float *x, const struct weight *w, int64_t n, float eps);

/* y[n] += b (a bias vector in its file dtype). */
void ops_add_weight(float *y, const struct weight *b, int64_t n);

/* y[n] += x[n]. */
void ops_add(float *y, const float *x, int64_t n);

/* y[n] += a * v[n] (one fused multiply-add per element with SIMD). */
void ops_axpy(float *y, float a, const float *v, int64_t n);

/* y[n] *= a. */
void ops_scale(float *y, float a, int64_t n);

/* g[n] = silu(g) * u. */
void ops_swiglu(float *g, const float *u, int64_t n);

/* RoPE inverse frequencies, HF style (float32 theta^(-2i/d), then llama3
 * band scaling when cfg says so): inv_freq[head_dim/2]. */
void ops_rope_inv_freq(const struct model_config *cfg, float *inv_freq);

/* cos/sin of pos * inv_freq[i] for i < half. */
void ops_rope_cos_sin(const float *inv_freq, int half, int32_t pos, float *cos_out, float *sin_out);

/* Rotate one head vector v[2*half] in place, HF rotate_half layout:
 * dimension i pairs with i + half. */
void ops_rope(float *v, int half, const float *cos_v, const float *sin_v);

/* 1 if the AVX2/FMA/F16C kernels are in use.  ops_set_simd(0) forces the
 * portable ones (for tests; call only while no kernel runs). */
int ops_simd(void);
void ops_set_simd(int on);

#endif
