// kernels.cuh - the forward pass's CUDA kernels and their launchers (k_),
// shared by the backend (backend.cu) and the kernel checks (check.cu).
// Launchers enqueue on a stream and return cudaGetLastError().  Engine thread.
//
// Conventions: bf16 weights and KV cache, f32 residual stream and
// accumulation.  Every launcher that takes a device counter (const int *n)
// processes at most that many items even when launched with a bigger grid:
// this lets one CUDA graph, captured for a bucket of rows, run any batch that
// fits the bucket.
#ifndef BRAID_KERNELS_CUH
#define BRAID_KERNELS_CUH

#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

typedef __nv_bfloat16 bf16;

// Query heads one attention CTA handles at most, and the per-thread
// accumulators that implies (K_ATT_QMAX_ELEMS / K_ATT_THREADS).
#define K_ATT_THREADS 256
#define K_ATT_TILE 32
#define K_ATT_QMAX 64
#define K_ATT_QMAX_ELEMS 8192
#define K_MAX_HEAD_DIM 256

// Geometry of the paged cache: element offset of K (kv = 0) or V (kv = 1) of
// layer l, kv head h, position off within block blk.  Block layout:
// (n_layers, 2, n_kv_heads, block_tokens, head_dim), so a block is one
// contiguous range (copy-on-write copies it with one memcpy).
struct k_kv_geom {
	int n_layers, n_kv_heads, head_dim, block_tokens;
};

__host__ __device__ static inline size_t
k_kv_offset(const k_kv_geom &g, int32_t blk, int l, int kv, int h, int off)
{
	return ((((size_t)blk * g.n_layers + l) * 2 + kv) * g.n_kv_heads + h) * (size_t)g.block_tokens * g.head_dim +
	       (size_t)off * g.head_dim;
}

// One unit of attention work, done for every kv head: query rows
// item_rows[row0 .. row0+n_rows) against positions [kv0, kv1) of the
// sequence whose block table starts at tables[tab]; row j's partial result
// goes to slot part0 + j.  Rows see only positions <= their own.  row and
// pos: the first row (item_rows[row0]) and its position, so that a one-row
// unit starts its block-table load and tile copy without those two
// dependent loads.
struct k_attn_item {
	int32_t row0, n_rows;
	int32_t tab;
	int32_t kv0, kv1;
	int32_t part0;
	int32_t row, pos;
};

// x(rows, d) f32 = emb[tokens[r]] (emb (vocab, d) bf16); rows < *n.
cudaError_t k_embed(const bf16 *emb, const int32_t *tokens, const int *n, int rows, int d, float *x,
		    cudaStream_t s);

// out(rows, d) bf16 = rmsnorm(x[idx ? idx[r] : r]) * w (w f32 (d)); rows < *n
// (n NULL: all rows).  One CTA of k_rmsnorm_threads(d) threads a row, thread
// v summing elements v, v + threads, ...: the GEMV's in-kernel norm
// (gemm.cu, gemv_norm) repeats that order to give the same bits.
__host__ __device__ static inline int
k_rmsnorm_threads(int d)
{
	return d >= 1024 ? 1024 : 256;
}

cudaError_t k_rmsnorm(const float *x, const int32_t *idx, const int *n, const float *w, int rows, int d,
		      float eps, bf16 *out, cudaStream_t s);

// The per-row work between the QKV GEMM and attention.  qkv(rows, (nh+2*nkv)*hd)
// f32 from the fused GEMM: add the bias (b, f32, may be NULL), RMSNorm each q
// and k head with qn/kn (f32 (hd), NULL = none), RoPE at pos[r] (inv_freq
// f32 (hd/2)), write q to q(rows, nh*hd) f32 and k, v to the cache at
// position pos[r] of the table tables + tab_off[r]; rows < *n.
cudaError_t k_qkv_post(const float *qkv, const float *b, const float *qn, const float *kn,
		       const float *inv_freq, const int32_t *pos, const int32_t *tab_off,
		       const int32_t *tables, const int *n, int rows, int n_heads, float eps,
		       k_kv_geom g, int layer, bf16 *kv, float *q, cudaStream_t s);

// Attention partials (head_dim a multiple of 8) for items[n_items[0] +
// n_items[1]]: the first n_items[0] on a persistent grid of ctas blocks of
// K_ATT_THREADS (0: none), the other n_items[1] (k_attn_warp_item() is true
// for them) one warp each on a persistent grid of `warps` warps (0:
// none; rounded up to whole blocks) launched on
// s_warp (s, or a stream the caller joins back: the two kernels write
// disjoint partials and may run side by side).  For each
// item, kv head and query row j, the running max m, sum l (base-2 exponent
// domain, scores pre-scaled by log2(e)/sqrt(hd)) and unnormalised output acc
// go to part_ml(slot, nh, 2) and part_acc(slot, nh, hd).
cudaError_t k_attention(const float *q, const bf16 *kv, const int32_t *tables, const int32_t *pos,
			const int32_t *item_rows, const k_attn_item *items, const int *n_items,
			int ctas, int warps, int n_heads, k_kv_geom g, int layer, float *part_ml,
			float *part_acc, cudaStream_t s, cudaStream_t s_warp);

// k_attention's one-warp kernel alone on `warps` warps, on s with
// programmatic dependent launch: for passes whose items are all one-warp
// items (k_attn_warp_item) and whose rows are each the only one of their
// sequence.  Before it waits for the kernel before, each warp reads its
// first unit's metadata and fetches that tile's K/V rows older than its
// rows' positions; so the pass may write no other position.
cudaError_t k_attention_decode(const float *q, const bf16 *kv, const int32_t *tables, const int32_t *pos,
			       const int32_t *item_rows, const k_attn_item *items, const int *n_items, int warps,
			       int n_heads, k_kv_geom g, int layer, float *part_ml, float *part_acc, cudaStream_t s);

// Attention of rows that each are their sequence's only row in the pass
// (decode), on clusters of `cluster` CTAs per (row, kv head), merged in
// distributed shared memory: out(rows, n_heads, hd) bf16 directly (no
// partials, no merge), zeros for rows >= *n; row r attends positions
// [0, pos[r]] of the table tables + tab_off[r].  Launched with programmatic
// dependent launch: before it waits it reads the metadata and fetches K/V
// rows older than pos[r]; the next kernel may be scheduled when it ends, or
// with early once its clusters have their partial results.  At most 8 q
// heads per kv head, head_dim 16, 32, 64, 128 or 256.
cudaError_t k_attention_rows(const float *q, const bf16 *kv, const int32_t *tables, const int32_t *tab_off,
			     const int32_t *pos, const int *n, int rows, int n_heads, k_kv_geom g, int layer,
			     int cluster, bool early, bf16 *out, cudaStream_t s);

// The largest cluster (16, 8, 4 or 2) k_attention_rows can run on this
// device for the geometry, or 0 (none: the geometry is not supported).
// After k_init.
int k_attention_cluster_size(k_kv_geom g, int n_heads);

// 1 if clusters of `size` (1..16) can run on this device for the geometry.
// After k_init.
int k_attention_cluster_fits(k_kv_geom g, int n_heads, int size);

// 1 if an item of n_rows rows goes to the one-warp kernel: a single row,
// at most 8 q heads per kv head, head_dim 16, 32, 64, 128 or 256; or up to
// k_attn_warp_rows rows.  After k_init.
int k_attn_warp_item(int n_rows, int n_heads, int n_kv_heads, int hd);
// Rows an item of several rows may carry on one warp (16 query heads:
// 16 / group) where the kernel runs such units - on the tensor cores
// (BRAID_ATT_MMA not 0), head_dim 64 or 128, 1, 2, 4 or 8 q heads per kv
// head; else 1.  After k_init.
int k_attn_warp_rows(int n_heads, int n_kv_heads, int hd);

// out(rows, nh*hd) bf16 = merge of row r's partials rp_idx[rp_off[r] ..
// rp_off[r+1]); rows < *n (the others get zeros).
cudaError_t k_attn_merge(const float *part_ml, const float *part_acc, const int32_t *rp_off,
			 const int32_t *rp_idx, const int *n, int rows, int n_heads, int hd, bf16 *out,
			 cudaStream_t s);

// h(rows, f) bf16 = silu(gate) * up, gu(rows, 2f) f32 holding (gate j, up j)
// at columns 2j, 2j+1 (the layout of interleaved gate/up weight rows).
cudaError_t k_swiglu(const float *gu, int rows, int f, bf16 *h, cudaStream_t s);

// Bytes of dynamic shared memory k_attention uses for head_dim hd.
size_t k_attention_smem(int hd);
// Query rows one attention item may carry for this geometry (0 when a kv
// head has more query heads than one CTA holds: such models are refused).
int k_attention_max_rows(int n_heads, int n_kv_heads, int hd);
// Set the kernel attributes (large shared memory) for head_dim hd, and the
// attention path: k_attention's units of more than 8 queries, its one-warp
// decode units and k_attention_rows' clusters run on bf16 tensor cores for
// head_dim 64 and 128, unless BRAID_ATT_MMA=0 (then on the CUDA cores, for
// comparisons).
cudaError_t k_init(int hd);

#endif
