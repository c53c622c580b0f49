/* check.h - host wrappers (kc_) that run one kernel of gpu/cuda/kernels.cu,
 * or the backend's bf16 cuBLAS GEMM, on host arrays, for the kernel checks in
 * tests/gpu/test_cuda_kernels.c.  Any one thread at a time; synchronous: each
 * call allocates device memory, uploads, launches through the kernel's k_
 * launcher on its own stream, synchronises, downloads and frees everything.
 *
 * bf16 inputs: what a kernel reads in bf16 (the embedding table, the KV cache,
 * GEMM weights and activations) is passed here in f32 and rounded to bf16
 * (nearest even, like st_f32_to_bf16) by the wrapper, so a caller builds its
 * reference from the same rounded values.  bf16 outputs come back as f32
 * (exactly).  Output arrays are in/out: their contents are uploaded first, so
 * an element the kernel does not write keeps its value (bf16 outputs and the
 * KV cache keep it rounded to bf16).  Nothing passed in is kept.
 *
 * Every function returns an enum eng_status: 0, ENG_ERR_INVALID for bad
 * arguments (every index is checked on the host before anything reaches the
 * device), ENG_ERR_NOMEM, or ENG_ERR_DEVICE; err (errlen bytes, may be NULL)
 * then says why. */
#ifndef BRAID_CUDA_CHECK_H
#define BRAID_CUDA_CHECK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The paged cache geometry, as struct k_kv_geom (kernels.cuh).  The cache is
 * n_blocks blocks of (n_layers, 2, n_kv_heads, block_tokens, head_dim)
 * elements: K (kv = 0) or V (kv = 1) of layer l, kv head h, position off of
 * block b is element kc_kv_offset(g, b, l, kv, h, off). */
struct kc_geom {
	int n_layers, n_kv_heads, head_dim, block_tokens;
};

/* Elements of one block: n_layers * 2 * n_kv_heads * block_tokens * head_dim. */
size_t kc_block_elems(const struct kc_geom *g);
size_t kc_kv_offset(const struct kc_geom *g, int32_t blk, int l, int kv, int h, int off);

/* As struct k_attn_item: query rows item_rows[row0 .. row0+n_rows) against
 * positions [kv0, kv1) of the sequence whose table starts at tables[tab];
 * row j's partial goes to slot part0 + j.  Rows see only positions <= their
 * own pos. */
struct kc_attn_item {
	int32_t row0, n_rows;
	int32_t tab;
	int32_t kv0, kv1;
	int32_t part0;
};

/* Query rows one attention item may carry (k_attention_max_rows). */
int kc_attention_max_rows(int n_heads, int n_kv_heads, int head_dim);

/* x(rows, d) = emb[tokens[r]] for r < n_active (<= rows); emb (vocab, d) is
 * rounded to bf16. */
int kc_embed(const float *emb, int vocab, int d, const int32_t *tokens, int rows, int n_active, float *x,
	     char *err, int errlen);

/* out(rows, d) = bf16(rmsnorm(x[idx ? idx[r] : r]) * w) for r < n_active;
 * x (n_x, d), w (d), idx (rows) or NULL; n_active < 0 passes no row counter
 * (all rows). */
int kc_rmsnorm(const float *x, int n_x, const int32_t *idx, int rows, int n_active, const float *w, int d,
	       float eps, float *out, char *err, int errlen);

/* k_qkv_post: bias, per-head q/k RMSNorm, RoPE, q out, K and V to the cache. */
struct kc_qkv_args {
	int rows, n_active;          /* rows launched; the kernel's *n (<= rows)  */
	int n_heads;                 /* query heads; g.n_kv_heads kv heads        */
	struct kc_geom g;
	int layer;                   /* < g.n_layers                              */
	int n_blocks;                /* blocks in the cache                       */
	float eps;                   /* RMSNorm epsilon of the q/k norms          */
	const float *qkv;            /* (rows, (n_heads + 2*nkv) * head_dim)      */
	const float *bias;           /* ((n_heads + 2*nkv) * head_dim) or NULL    */
	const float *q_norm, *k_norm;/* (head_dim) each, or NULL (no norm)        */
	const float *inv_freq;       /* (head_dim/2), e.g. from ops_rope_inv_freq */
	const int32_t *pos;          /* (rows)                                    */
	const int32_t *tab_off;      /* (rows): row r's table is tables+tab_off[r] */
	const int32_t *tables;       /* (n_tables) block ids                      */
	int n_tables;
};

/* q (rows, n_heads*head_dim) f32 and kv (n_blocks * kc_block_elems) are
 * in/out; kv is rounded to bf16 on the way in and comes back whole. */
int kc_qkv_post(const struct kc_qkv_args *a, float *q, float *kv, char *err, int errlen);

/* k_attention then k_attn_merge. */
struct kc_attn_args {
	int n_heads;                 /* query heads; g.n_kv_heads kv heads        */
	struct kc_geom g;
	int layer;
	int n_blocks;
	const float *kv;             /* (n_blocks * kc_block_elems), to bf16      */
	const int32_t *tables;       /* (n_tables) block ids                      */
	int n_tables;
	int rows;                    /* query rows                                */
	int n_active;                /* merge's *n: rows >= n_active get zeros    */
	const float *q;              /* (rows, n_heads*head_dim) f32              */
	const int32_t *pos;          /* (rows) each row's position                */
	const int32_t *item_rows;    /* (n_item_rows) row ids, indexed by row0    */
	int n_item_rows;
	const struct kc_attn_item *items;   /* (n_items)                          */
	int n_items;
	int ctas;                    /* persistent grid of k_attention (>= 1)     */
	int decode_path;             /* 1: k_attention_decode on ctas warps (the
				      * one-row passes' launch); every item must be
				      * a one-warp item (kc_attn_warp_item).
				      * 2: k_attention_rows on clusters of
				      * `cluster` CTAs (0: the largest the device
				      * runs): each row attends [0, pos] of its
				      * items' table, the items' ranges unused     */
	int cluster;
};

/* 1 if an item of n_rows rows goes to the one-warp kernel (for n_rows > 1,
 * as BRAID_ATT_MMA says now). */
int kc_attn_warp_item(int n_rows, int n_heads, int n_kv_heads, int head_dim);
/* Rows an item of several rows may carry on one warp (k_attn_warp_rows;
 * 1: none), as BRAID_ATT_MMA says now. */
int kc_attn_warp_rows(int n_heads, int n_kv_heads, int head_dim);

/* out (rows, n_heads*head_dim), in/out, gets the merged attention (rounded
 * to bf16).  The wrapper builds the merge's CSR lists from the items: row
 * item_rows[row0 + j] of an item owns slot part0 + j.  Partial slots must
 * not repeat; n_rows must be within 1..kc_attention_max_rows(); every
 * position an item reads must have its block in the table. */
int kc_attention(const struct kc_attn_args *a, float *out, char *err, int errlen);

/* h(rows, f) = bf16(silu(gate) * up); gu (rows, 2f) holds (gate j, up j)
 * at columns 2j, 2j+1 (k_swiglu). */
int kc_swiglu(const float *gu, int rows, int f, float *h, char *err, int errlen);

/* y(n, rows) = x(n, cols) . W^T + beta * y with cublasGemmEx, as the
 * backend runs it with BRAID_GEMM=cublas (its default path, k_gemm, is
 * checked by test_cuda_gemm): W (rows, cols) row-major and x rounded to
 * bf16, f32 output and compute.  y is in/out. */
int kc_gemm_bf16(const float *w, int rows, int cols, const float *x, int n, float beta, float *y, char *err,
		 int errlen);

#ifdef __cplusplus
}
#endif

#endif
