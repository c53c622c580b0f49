// kernels.cu - the forward pass's CUDA kernels: embedding, RMSNorm, the QKV
// epilogue (bias, q/k norm, RoPE, paged cache write), paged attention with
// split-K partials (many-query units on tensor cores) and their merge, and
// SwiGLU.  Engine thread (launchers); see kernels.cuh for the contracts.
#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include <cooperative_groups.h>

#include "cuda/kernels.cuh"
#include "cuda/mma.cuh"
#include "cuda/pdl.cuh"
#include "cuda/warp.cuh"

namespace cg = cooperative_groups;

#define LOG2E 1.4426950408889634f

// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread
// gets the result.  red holds 32 floats.
static __device__ float
block_sum(float v, float *red)
{
	const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
	v = warp_sum(v);
	__syncthreads();                 // red may still be read from a previous call
	if (lane == 0)
		red[w] = v;
	__syncthreads();
	v = lane < nw ? red[lane] : 0.0f;
	return warp_sum(v);
}

// ---- embedding, RMSNorm, SwiGLU ----------------------------------------------

static __global__ void
embed_kernel(const bf16 *emb, const int32_t *tokens, const int *n, int d, float *x)
{
	k_pdl_start();   // launched plainly (after the metadata upload): only lets the next kernel be scheduled
	const int r = blockIdx.x;
	if (r >= *n)
		return;
	const bf16 *src = emb + (size_t)tokens[r] * d;
	float *dst = x + (size_t)r * d;
	for (int i = threadIdx.x; i < d; i += blockDim.x)
		dst[i] = __bfloat162float(src[i]);
}

cudaError_t
k_embed(const bf16 *emb, const int32_t *tokens, const int *n, int rows, int d, float *x, cudaStream_t s)
{
	embed_kernel<<<rows, 256, 0, s>>>(emb, tokens, n, d, x);
	return cudaGetLastError();
}

static __global__ void
rmsnorm_kernel(const float *x, const int32_t *idx, const int *n, const float *w, int d, float eps,
	       bf16 *out)
{
	k_pdl_trigger();
	__shared__ float red[32];
	const int r = blockIdx.x;
	// The row count and the gathered row (metadata, uploaded before the
	// pass) before the wait.
	const bool live = !n || r < *n;
	const int row = live && idx ? idx[r] : r;
	k_pdl_wait();
	if (!live)
		return;
	const float *src = x + (size_t)row * d;
	float ss = 0.0f;
	for (int i = threadIdx.x; i < d; i += blockDim.x)
		ss = __fmaf_rn(src[i], src[i], ss);   // explicit: gemv_norm repeats it bit for bit
	ss = block_sum(ss, red);
	const float inv = rsqrtf(ss / (float)d + eps);
	bf16 *dst = out + (size_t)r * d;
	for (int i = threadIdx.x; i < d; i += blockDim.x)
		dst[i] = __float2bfloat16(src[i] * inv * w[i]);
}

cudaError_t
k_rmsnorm(const float *x, const int32_t *idx, const int *n, const float *w, int rows, int d, float eps,
	  bf16 *out, cudaStream_t s)
{
	return k_launch(rmsnorm_kernel, dim3(rows), dim3(k_rmsnorm_threads(d)), 0, s, x, idx, n, w, d, eps, out);
}

// gu's rows hold (gate j, up j) pairs.
static __global__ void
swiglu_kernel(const float *gu, int f, bf16 *h)
{
	k_pdl_start();
	const int r = blockIdx.y;
	const float2 *p = (const float2 *)(gu + (size_t)r * 2 * f);
	for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < f; i += gridDim.x * blockDim.x) {
		const float2 v = p[i];
		h[(size_t)r * f + i] = __float2bfloat16(v.x / (1.0f + expf(-v.x)) * v.y);
	}
}

cudaError_t
k_swiglu(const float *gu, int rows, int f, bf16 *h, cudaStream_t s)
{
	dim3 grid((f + 1023) / 1024, rows);
	return k_launch(swiglu_kernel, grid, dim3(256), 0, s, gu, f, h);
}

// ---- QKV epilogue --------------------------------------------------------------------

// grid (rows, ceil(heads / 4)), 128 threads: warp w of block y takes head
// 4y + w of the q, k and v heads (in that order).  A head is staged in
// shared memory (hd <= K_MAX_HEAD_DIM).
static __global__ void
qkv_post_kernel(const float *qkv, const float *b, const float *qn, const float *kn, const float *inv_freq,
		const int32_t *pos, const int32_t *tab_off, const int32_t *tables, const int *n,
		int n_heads, float eps, k_kv_geom g, int layer, bf16 *kv, float *q)
{
	k_pdl_trigger();
	__shared__ float buf[4][K_MAX_HEAD_DIM];
	const int r = blockIdx.x;
	const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
	const int hd = g.head_dim, half = hd / 2, nkv = g.n_kv_heads;
	const int head = blockIdx.y * 4 + w;
	// The row's position and KV block (metadata, uploaded before the pass)
	// before the wait.
	const bool live = r < *n && head < n_heads + 2 * nkv;
	const int32_t p = live ? pos[r] : 0;
	const int32_t blk = live && head >= n_heads ? tables[tab_off[r] + p / g.block_tokens] : 0;
	k_pdl_wait();
	if (!live)
		return;
	const int width = (n_heads + 2 * nkv) * hd;
	float *v = buf[w];
	const float *src = qkv + (size_t)r * width + (size_t)head * hd;
	const float *bias = b ? b + (size_t)head * hd : nullptr;
	for (int i = lane; i < hd; i += 32)
		v[i] = src[i] + (bias ? bias[i] : 0.0f);
	__syncwarp();
	const bool is_q = head < n_heads, is_k = !is_q && head < n_heads + nkv;
	if (is_q || is_k) {
		const float *nw_ = is_q ? qn : kn;
		if (nw_) {
			float ss = 0.0f;
			for (int i = lane; i < hd; i += 32)
				ss += v[i] * v[i];
			ss = warp_sum(ss);
			const float inv = rsqrtf(ss / (float)hd + eps);
			for (int i = lane; i < hd; i += 32)
				v[i] = v[i] * inv * nw_[i];
			__syncwarp();
		}
		for (int i = lane; i < half; i += 32) {
			float sn, c;
			sincosf(__fmul_rn((float)p, inv_freq[i]), &sn, &c);
			const float x1 = v[i], x2 = v[i + half];
			v[i] = x1 * c - x2 * sn;
			v[i + half] = x2 * c + x1 * sn;
		}
		__syncwarp();
	}
	if (is_q) {
		float *dst = q + (size_t)r * n_heads * hd + (size_t)head * hd;
		for (int i = lane; i < hd; i += 32)
			dst[i] = v[i];
	} else {
		const int kvsel = is_k ? 0 : 1;
		const int h = head - n_heads - (is_k ? 0 : nkv);
		bf16 *dst = kv + k_kv_offset(g, blk, layer, kvsel, h, p % g.block_tokens);
		for (int i = lane; i < hd; i += 32)
			dst[i] = __float2bfloat16(v[i]);
	}
}

cudaError_t
k_qkv_post(const float *qkv, const float *b, const float *qn, const float *kn, const float *inv_freq,
	   const int32_t *pos, const int32_t *tab_off, const int32_t *tables, const int *n, int rows,
	   int n_heads, float eps, k_kv_geom g, int layer, bf16 *kv, float *q, cudaStream_t s)
{
	dim3 grid(rows, (n_heads + 2 * g.n_kv_heads + 3) / 4);
	return k_launch(qkv_post_kernel, grid, dim3(128), 0, s, qkv, b, qn, kn, inv_freq, pos, tab_off, tables, n,
			n_heads, eps, g, layer, kv, q);
}

// ---- attention -------------------------------------------------------------------------

// Shared memory of one unit (floats, strides padded by 4 so that float4
// reads of different rows fall in different banks):
//   Qs (qcap, hd+4)   queries, pre-scaled
//   Ks, Vs (TILE, hd+4)
//   PT (TILE, qcap+4) probabilities, transposed
//   M, L, C (qcap)    running max, sum, this tile's correction
//   rows, pos (qcap)  the item's batch rows and their positions (ints)
//   blk (ATT_BLKS)    the unit's block ids (ints)
#define ATT_BLKS 256

// Tile of the bf16 unit (positions) and its shared-memory row stride in
// bf16 (16 bytes of padding: the 8 rows an ldmatrix reads fall in different
// banks).
#define ATTB_TILE 32
#define ATTB_STRIDE(hd) ((hd) + 8)

// Shared memory of the bf16 unit, in bytes: the queries (QCAP rows, a high
// and a low bf16 part), two stages of K and V tiles (bf16), rows and
// positions, block ids.  At the end of a unit the stages hold the second
// half's partial results (4 x hd / 8 x 32 float4 and 4 x 32 more: exactly
// the stages' size for ATTB_TILE 32).
static __host__ __device__ size_t
attb_smem(int hd)
{
	return sizeof(bf16) * ((size_t)2 * K_ATT_QMAX * ATTB_STRIDE(hd) + 4 * ATTB_TILE * ATTB_STRIDE(hd)) +
	       sizeof(int32_t) * (2 * K_ATT_QMAX + ATT_BLKS);
}

static __host__ __device__ int
att_qcap(int hd)
{
	int q = K_ATT_QMAX_ELEMS / hd;
	return q < K_ATT_QMAX ? q : K_ATT_QMAX;
}

size_t
k_attention_smem(int hd)
{
	const size_t qcap = (size_t)att_qcap(hd), hs = (size_t)hd + 4;
	const size_t f = sizeof(float) * (qcap * hs + 2 * K_ATT_TILE * hs + K_ATT_TILE * (qcap + 4) + 3 * qcap) +
			 sizeof(int32_t) * (2 * qcap + ATT_BLKS);
	const size_t b = hd == 64 || hd == 128 ? attb_smem(hd) : 0;
	return f > b ? f : b;
}

int
k_attention_max_rows(int n_heads, int n_kv_heads, int hd)
{
	const int group = n_heads / n_kv_heads;
	const int r = att_qcap(hd) / group;
	return r > 0 ? r : 0;
}

// Largest number of 16-byte K/V loads one thread makes per tile:
// TILE * (hd / 8) * 2 / THREADS for hd <= K_MAX_HEAD_DIM.
#define ATT_PRE (K_ATT_TILE * (K_MAX_HEAD_DIM / 8) * 2 / K_ATT_THREADS)

// Issue the loads of the tile at t0 into registers (zeros past kv1).  PRE:
// loads per thread, >= TILE * (hd / 8) * 2 / THREADS.
template <int PRE>
static __device__ __forceinline__ void
att_fetch(uint4 *pre, const bf16 *kv, const int32_t *blk_s, const int32_t *table, int blk0, int nblk_s,
	  int t0, int kv1, int kvh, k_kv_geom g, int layer)
{
	const int per = g.head_dim / 8, n = K_ATT_TILE * per * 2;
#pragma unroll
	for (int k = 0; k < PRE; k++) {
		const int i = threadIdx.x + k * K_ATT_THREADS;
		pre[k] = make_uint4(0, 0, 0, 0);
		if (i < n) {
			const int kvsel = i / (K_ATT_TILE * per), rem = i % (K_ATT_TILE * per);
			const int t = rem / per, c = rem % per;
			const int32_t p = t0 + t;
			if (p < kv1) {
				const int bi = p / g.block_tokens;
				const int32_t b = bi - blk0 < nblk_s ? blk_s[bi - blk0] : table[bi];
				pre[k] = *(const uint4 *)(kv + k_kv_offset(g, b, layer, kvsel, kvh, p % g.block_tokens) + c * 8);
			}
		}
	}
}

// Convert the fetched tile to f32 in Ks / Vs.
template <int PRE>
static __device__ __forceinline__ void
att_store(const uint4 *pre, float *Ks, float *Vs, int hd)
{
	const int per = hd / 8, n = K_ATT_TILE * per * 2, hs = hd + 4;
#pragma unroll
	for (int k = 0; k < PRE; k++) {
		const int i = threadIdx.x + k * K_ATT_THREADS;
		if (i < n) {
			const int kvsel = i / (K_ATT_TILE * per), rem = i % (K_ATT_TILE * per);
			const int t = rem / per, c = rem % per;
			const bf16 *e = (const bf16 *)&pre[k];
			float4 lo = make_float4(__bfloat162float(e[0]), __bfloat162float(e[1]), __bfloat162float(e[2]),
						__bfloat162float(e[3]));
			float4 hi = make_float4(__bfloat162float(e[4]), __bfloat162float(e[5]), __bfloat162float(e[6]),
						__bfloat162float(e[7]));
			float4 *dst = (float4 *)((kvsel ? Vs : Ks) + (size_t)t * hs + c * 8);
			dst[0] = lo;
			dst[1] = hi;
		}
	}
}

// A unit's metadata into shared memory: its rows, their positions and the
// block ids of its range (the first ATT_BLKS); out: the range's first block
// and how many ids blk_s holds.  Ends with a barrier.
static __device__ __forceinline__ void
att_meta(const int32_t *table, const int32_t *pos, const int32_t *item_rows, const k_attn_item &it,
	 const k_kv_geom &g, int32_t *rows_s, int32_t *pos_s, int32_t *blk_s, int *blk0_out, int *nblk_s_out)
{
	const int tid = threadIdx.x;
	const int blk0 = it.kv0 / g.block_tokens;
	const int nblk = (it.kv1 - 1) / g.block_tokens - blk0 + 1;
	const int nblk_s = nblk < ATT_BLKS ? nblk : ATT_BLKS;
	for (int i = tid; i < it.n_rows; i += K_ATT_THREADS) {
		const int r = item_rows[it.row0 + i];
		rows_s[i] = r;
		pos_s[i] = pos[r];
	}
	for (int i = tid; i < nblk_s; i += K_ATT_THREADS)
		blk_s[i] = table[blk0 + i];
	__syncthreads();
	*blk0_out = blk0;
	*nblk_s_out = nblk_s;
}

// A unit's prologue: its rows, their positions and the block ids of its
// range into shared memory, the first tile's loads issued into pre, and the
// queries, pre-scaled, in Qs (n_q, hd + 4).
template <int PRE>
static __device__ __forceinline__ void
att_begin(uint4 *pre, const float *q, const bf16 *kv, const int32_t *table, const int32_t *pos,
	  const int32_t *item_rows, const k_attn_item &it, int kvh, int n_heads, k_kv_geom g, int layer, float *Qs,
	  int32_t *rows_s, int32_t *pos_s, int32_t *blk_s, int *blk0_out, int *nblk_s_out)
{
	const int tid = threadIdx.x, hd = g.head_dim, hs = hd + 4, group = n_heads / g.n_kv_heads;
	const int n_q = it.n_rows * group;
	const float scale = LOG2E / sqrtf((float)hd);
	int blk0, nblk_s;
	att_meta(table, pos, item_rows, it, g, rows_s, pos_s, blk_s, &blk0, &nblk_s);
	att_fetch<PRE>(pre, kv, blk_s, table, blk0, nblk_s, it.kv0, it.kv1, kvh, g, layer);
	for (int i = tid; i < n_q * (hd / 4); i += K_ATT_THREADS) {
		const int qi = i / (hd / 4), d4 = i % (hd / 4), j = qi / group, gq = qi % group;
		float4 v = *(const float4 *)(q + ((size_t)rows_s[j] * n_heads + kvh * group + gq) * hd + d4 * 4);
		v.x *= scale, v.y *= scale, v.z *= scale, v.w *= scale;
		*(float4 *)(Qs + (size_t)qi * hs + d4 * 4) = v;
	}
	*blk0_out = blk0;
	*nblk_s_out = nblk_s;
}

static __device__ __forceinline__ float
dot4(float4 a, float4 b, float acc)
{
	acc = fmaf(a.x, b.x, acc);
	acc = fmaf(a.y, b.y, acc);
	acc = fmaf(a.z, b.z, acc);
	return fmaf(a.w, b.w, acc);
}

// One work unit: an item against one kv head.  Queries qi = j * group + gq
// (row j of the item, q head kvh * group + gq).  Small units (n_q <= 8, the
// decode case) give each thread whole dot products and single outputs; big
// ones (prefill tiles, shared prefixes) block 2 queries x 4 positions per
// thread for the scores and 4 queries x 8 dims for the output.  The next
// tile's K/V loads are in flight while the current tile is computed.
template <bool SMALL, int PRE>
static __device__ void
attention_unit(const float *q, const bf16 *kv, const int32_t *tables, const int32_t *pos,
	       const int32_t *item_rows, const k_attn_item &it, int kvh, int n_heads, k_kv_geom g, int layer,
	       float *part_ml, float *part_acc, float *sm)
{
	const int hd = g.head_dim, hs = hd + 4, group = n_heads / g.n_kv_heads;
	const int qcap = att_qcap(hd), qs = qcap + 4, n_q = it.n_rows * group;
	float *Qs = sm;
	float *Ks = Qs + (size_t)qcap * hs;
	float *Vs = Ks + (size_t)K_ATT_TILE * hs;
	float *PT = Vs + (size_t)K_ATT_TILE * hs;
	float *M = PT + (size_t)K_ATT_TILE * qs;
	float *L = M + qcap, *C = L + qcap;
	int32_t *rows_s = (int32_t *)(C + qcap), *pos_s = rows_s + qcap, *blk_s = pos_s + qcap;
	const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
	const int32_t *table = tables + it.tab;
	const bool small = SMALL;

	for (int i = tid; i < n_q; i += K_ATT_THREADS) {
		M[i] = -INFINITY;
		L[i] = 0.0f;
	}
	uint4 pre[PRE];
	int blk0, nblk_s;
	att_begin<PRE>(pre, q, kv, table, pos, item_rows, it, kvh, n_heads, g, layer, Qs, rows_s, pos_s, blk_s,
		       &blk0, &nblk_s);

	// Accumulators: small - element tid + k * THREADS of the (n_q, hd)
	// output; big - queries 4 qg .. 4 qg + 3, dims 8 dg .. 8 dg + 7.
	float acc[32];
#pragma unroll
	for (int k = 0; k < 32; k++)
		acc[k] = 0.0f;
	const int dgn = hd / 8, qg = tid / dgn, dg = tid % dgn;

	for (int t0 = it.kv0; t0 < it.kv1; t0 += K_ATT_TILE) {
		att_store<PRE>(pre, Ks, Vs, hd);
		__syncthreads();
		if (t0 + K_ATT_TILE < it.kv1)
			att_fetch<PRE>(pre, kv, blk_s, table, blk0, nblk_s, t0 + K_ATT_TILE, it.kv1, kvh, g, layer);

		// Scores into PT[t][qi], masked with -inf.
		if (small) {
			const int t = lane;
			for (int qi = w; qi < n_q; qi += K_ATT_THREADS / 32) {
				const int32_t p = t0 + t;
				float s = -INFINITY;
				if (p < it.kv1 && p <= pos_s[qi / group]) {
					const float4 *qq = (const float4 *)(Qs + (size_t)qi * hs);
					const float4 *kk = (const float4 *)(Ks + (size_t)t * hs);
					float a0 = 0.0f, a1 = 0.0f;
					int d = 0;
					for (; d + 2 <= hd / 4; d += 2) {
						a0 = dot4(qq[d], kk[d], a0);
						a1 = dot4(qq[d + 1], kk[d + 1], a1);
					}
					if (d < hd / 4)
						a0 = dot4(qq[d], kk[d], a0);
					s = a0 + a1;
				}
				PT[(size_t)t * qs + qi] = s;
			}
		} else {
			const int tg = tid & 7, qt = tid >> 3;
			float sc[2][4];
#pragma unroll
			for (int a = 0; a < 2; a++)
#pragma unroll
				for (int b = 0; b < 4; b++)
					sc[a][b] = 0.0f;
			const bool q0 = qt < n_q, q1 = qt + 32 < n_q;
			if (q0) {
				const float4 *qa = (const float4 *)(Qs + (size_t)qt * hs);
				const float4 *qb = (const float4 *)(Qs + (size_t)(q1 ? qt + 32 : qt) * hs);
				for (int d = 0; d < hd / 4; d++) {
					const float4 x0 = qa[d], x1 = qb[d];
#pragma unroll
					for (int b = 0; b < 4; b++) {
						const float4 k4 = ((const float4 *)(Ks + (size_t)(tg + 8 * b) * hs))[d];
						sc[0][b] = dot4(x0, k4, sc[0][b]);
						sc[1][b] = dot4(x1, k4, sc[1][b]);
					}
				}
			}
#pragma unroll
			for (int a = 0; a < 2; a++) {
				const int qi = qt + 32 * a;
				if (qi >= n_q)
					continue;
				const int32_t lim = pos_s[qi / group];
#pragma unroll
				for (int b = 0; b < 4; b++) {
					const int t = tg + 8 * b;
					const int32_t p = t0 + t;
					PT[(size_t)t * qs + qi] = p < it.kv1 && p <= lim ? sc[a][b] : -INFINITY;
				}
			}
		}
		__syncthreads();
		// Online softmax: warp per query, lane per position.
		for (int qi = w; qi < n_q; qi += K_ATT_THREADS / 32) {
			const float s = PT[(size_t)lane * qs + qi];
			const float m_old = M[qi];
			const float m_new = fmaxf(m_old, warp_max(s));
			const float pr = m_new == -INFINITY ? 0.0f : exp2f(s - m_new);
			const float corr = m_new == -INFINITY ? 1.0f : exp2f(m_old - m_new);
			const float ps = warp_sum(pr);
			PT[(size_t)lane * qs + qi] = pr;
			__syncwarp();            // every lane has read M[qi] before lane 0 writes it
			if (lane == 0) {
				M[qi] = m_new;
				L[qi] = L[qi] * corr + ps;
				C[qi] = corr;
			}
		}
		__syncthreads();
		if (small) {
#pragma unroll
			for (int k = 0; k < 8; k++) {
				const int i = tid + k * K_ATT_THREADS;
				if (i < n_q * hd) {
					const int qi = i / hd, d = i % hd;
					float a = acc[k] * C[qi];
#pragma unroll 4
					for (int t = 0; t < K_ATT_TILE; t++)
						a = fmaf(PT[(size_t)t * qs + qi], Vs[(size_t)t * hs + d], a);
					acc[k] = a;
				}
			}
		} else if (qg * 4 < n_q) {
#pragma unroll
			for (int a = 0; a < 4; a++) {
				const float c = qg * 4 + a < n_q ? C[qg * 4 + a] : 0.0f;
#pragma unroll
				for (int b = 0; b < 8; b++)
					acc[a * 8 + b] *= c;
			}
#pragma unroll 1
			for (int t = 0; t < K_ATT_TILE; t++) {
				const float4 p4 = *(const float4 *)(PT + (size_t)t * qs + qg * 4);
				const float4 v0 = *(const float4 *)(Vs + (size_t)t * hs + dg * 8);
				const float4 v1 = *(const float4 *)(Vs + (size_t)t * hs + dg * 8 + 4);
				const float pa[4] = { p4.x, p4.y, p4.z, p4.w };
				const float vb[8] = { v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w };
#pragma unroll
				for (int a = 0; a < 4; a++)
#pragma unroll
					for (int b = 0; b < 8; b++)
						acc[a * 8 + b] = fmaf(pa[a], vb[b], acc[a * 8 + b]);
			}
		}
		__syncthreads();
	}

	if (small) {
#pragma unroll
		for (int k = 0; k < 8; k++) {
			const int i = tid + k * K_ATT_THREADS;
			if (i < n_q * hd) {
				const int qi = i / hd, d = i % hd, j = qi / group, gq = qi % group;
				part_acc[((size_t)(it.part0 + j) * n_heads + kvh * group + gq) * hd + d] = acc[k];
			}
		}
	} else if (qg * 4 < n_q) {
#pragma unroll
		for (int a = 0; a < 4; a++) {
			const int qi = qg * 4 + a;
			if (qi >= n_q)
				continue;
			const int j = qi / group, gq = qi % group;
			float *dst = part_acc + ((size_t)(it.part0 + j) * n_heads + kvh * group + gq) * hd + dg * 8;
			*(float4 *)dst = make_float4(acc[a * 8], acc[a * 8 + 1], acc[a * 8 + 2], acc[a * 8 + 3]);
			*(float4 *)(dst + 4) = make_float4(acc[a * 8 + 4], acc[a * 8 + 5], acc[a * 8 + 6], acc[a * 8 + 7]);
		}
	}
	for (int qi = tid; qi < n_q; qi += K_ATT_THREADS) {
		const int j = qi / group, gq = qi % group;
		float *ml = part_ml + ((size_t)(it.part0 + j) * n_heads + kvh * group + gq) * 2;
		ml[0] = M[qi];
		ml[1] = L[qi];
	}
	__syncthreads();                 // shared memory is reused by the next unit
}

// ---- cp.async, ldmatrix, mma: the tensor-core and one-warp units' primitives ---------

// 16 bytes from global to shared memory without a register (cp.async.cg:
// L2 only), and the wait for all of a thread's copies.
static __device__ __forceinline__ void
cp_async16(void *smem, const void *gmem)
{
	const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(a), "l"(gmem) : "memory");
}

static __device__ __forceinline__ void
cp_async_wait_all(void)
{
	asm volatile("cp.async.wait_all;" ::: "memory");
}

// cp.async of 16 bytes that reads `bytes` of them (16 or 0: a zero fill),
// and the group operations of the double-buffered tiles.
static __device__ __forceinline__ void
cp_async16_zfill(void *smem, const void *gmem, int bytes)
{
	const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(a), "l"(gmem), "r"(bytes) : "memory");
}

static __device__ __forceinline__ void
cp_async_commit(void)
{
	asm volatile("cp.async.commit_group;" ::: "memory");
}

template <int N>
static __device__ __forceinline__ void
cp_async_wait(void)
{
	asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// Four 8x8 bf16 matrices from shared memory (lanes 8i .. 8i + 7 give the
// rows of matrix i), as mma fragments; TRANS: transposed.
template <bool TRANS = false>
static __device__ __forceinline__ void
ldsm4(uint32_t (&r)[4], const bf16 *p)
{
	const unsigned a = (unsigned)__cvta_generic_to_shared(p);
	if (TRANS)
		asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
			     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
			     : "r"(a));
	else
		asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
			     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
			     : "r"(a));
}

static __device__ __forceinline__ uint32_t
pack_bf16(float lo, float hi)
{
	const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
	return *(const uint32_t *)&v;
}

// x and y as a high bf16 pair (rounded) and a low one (the remainder,
// rounded): hi + lo holds 16 bits of mantissa.
static __device__ __forceinline__ void
split_bf16(float x, float y, uint32_t &hi, uint32_t &lo)
{
	const __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
	const float2 hf = __bfloat1622float2(h);
	hi = *(const uint32_t *)&h;
	lo = pack_bf16(x - hf.x, y - hf.y);
}

// ---- the bf16 tensor-core unit --------------------------------------------------------

// Copy the tile at t0 of kv head kvh into stage K/V rows (zeros past kv1),
// all of a thread's copies in one group.
template <int HD>
static __device__ __forceinline__ void
attb_fetch(bf16 *ks, bf16 *vs, const bf16 *kv, const int32_t *blk_s, const int32_t *table, int blk0, int nblk_s,
	   int t0, int kv1, int kvh, const k_kv_geom &g, int layer)
{
	constexpr int CPR = HD / 8, RSTEP = K_ATT_THREADS / CPR, ROWS = ATTB_TILE / RSTEP;
	static_assert(K_ATT_THREADS % CPR == 0 && ATTB_TILE % RSTEP == 0, "copy split");
	const int c = threadIdx.x % CPR, r0 = threadIdx.x / CPR;
#pragma unroll
	for (int k = 0; k < ROWS; k++) {
		const int r = r0 + k * RSTEP;
		const int32_t p = t0 + r;
		const bf16 *src_k = kv, *src_v = kv;
		int bytes = 0;
		if (p < kv1) {
			const int bi = p / g.block_tokens;
			const int32_t b = bi - blk0 < nblk_s ? blk_s[bi - blk0] : table[bi];
			src_k = kv + k_kv_offset(g, b, layer, 0, kvh, p % g.block_tokens) + c * 8;
			src_v = kv + k_kv_offset(g, b, layer, 1, kvh, p % g.block_tokens) + c * 8;
			bytes = 16;
		}
		cp_async16_zfill(ks + r * ATTB_STRIDE(HD) + c * 8, src_k, bytes);
		cp_async16_zfill(vs + r * ATTB_STRIDE(HD) + c * 8, src_v, bytes);
	}
	cp_async_commit();
}

// The blocks the tensor-core units of many queries share (the CTA unit,
// attention_unit_bf16, and the one-warp unit of several rows,
// attention_warp_unit_rows).  A warp holds 16 query rows: a lane quad gr
// holds rows a = gr and c = gr + 8 of the accumulators.
//
// The scores sc of the 16 rows (the queries' high and low bf16 parts at Qh
// and Ql + q_ld, ldmatrix lane addresses) against NT x 8 K rows at Ks +
// k_ld (n8 tile n: rows 8n .. 8n + 7), each product high part then low.
template <int HD, int NT>
static __device__ __forceinline__ void
attb_scores(const bf16 *Qh, const bf16 *Ql, int q_ld, const bf16 *Ks, int k_ld, float (&sc)[NT][4])
{
	constexpr int S = ATTB_STRIDE(HD);
#pragma unroll
	for (int n = 0; n < NT; n++)
		sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
#pragma unroll
	for (int kk = 0; kk < HD / 16; kk++) {
		uint32_t ah[4], al[4];
		ldsm4(ah, Qh + q_ld + kk * 16);
		ldsm4(al, Ql + q_ld + kk * 16);
#pragma unroll
		for (int np = 0; np < NT / 2; np++) {
			uint32_t b[4];
			ldsm4(b, Ks + k_ld + np * 16 * S + kk * 16);
			mma_bf16(sc[2 * np], ah, b[0], b[1]);
			mma_bf16(sc[2 * np + 1], ah, b[2], b[3]);
			mma_bf16(sc[2 * np], al, b[0], b[1]);
			mma_bf16(sc[2 * np + 1], al, b[2], b[3]);
		}
	}
}

// One online-softmax step of rows a and c over the masked scores sc, whose
// largest in this lane are mx_a and mx_c: the running max m, this lane's
// share of the sum l and the output o rescaled, the probabilities as k16 A
// fragments in a high (ph) and a low (pl) bf16 part.  A row that has seen
// only masked positions keeps m -inf and gets zero probabilities.
template <int NT, int ND>
static __device__ __forceinline__ void
attb_online(const float (&sc)[NT][4], float mx_a, float mx_c, float &m_a, float &m_c, float &l_a, float &l_c,
	    float (&o)[ND][4], uint32_t (&ph)[NT / 2][4], uint32_t (&pl)[NT / 2][4])
{
#pragma unroll
	for (int off = 1; off <= 2; off <<= 1) {
		mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, off));
		mx_c = fmaxf(mx_c, __shfl_xor_sync(0xffffffffu, mx_c, off));
	}
	const float mn_a = fmaxf(m_a, mx_a), mn_c = fmaxf(m_c, mx_c);
	const float cor_a = mn_a == -INFINITY ? 1.0f : exp2f(m_a - mn_a);
	const float cor_c = mn_c == -INFINITY ? 1.0f : exp2f(m_c - mn_c);
	m_a = mn_a;
	m_c = mn_c;
	float s_a = 0.0f, s_c = 0.0f;
#pragma unroll
	for (int n = 0; n < NT; n++) {
		float pr[4];
#pragma unroll
		for (int e = 0; e < 2; e++) {
			pr[e] = mn_a == -INFINITY ? 0.0f : exp2f(sc[n][e] - mn_a);
			pr[2 + e] = mn_c == -INFINITY ? 0.0f : exp2f(sc[n][2 + e] - mn_c);
			s_a += pr[e];
			s_c += pr[2 + e];
		}
		split_bf16(pr[0], pr[1], ph[n >> 1][(n & 1) * 2], pl[n >> 1][(n & 1) * 2]);
		split_bf16(pr[2], pr[3], ph[n >> 1][(n & 1) * 2 + 1], pl[n >> 1][(n & 1) * 2 + 1]);
	}
	l_a = l_a * cor_a + s_a;
	l_c = l_c * cor_c + s_c;
#pragma unroll
	for (int n = 0; n < ND; n++) {
		o[n][0] *= cor_a;
		o[n][1] *= cor_a;
		o[n][2] *= cor_c;
		o[n][3] *= cor_c;
	}
}

// o += P . V for the probabilities' high and low parts (NT x 8 positions)
// and the V rows at Vs + v_ld (ldmatrix, transposed).
template <int HD, int NT>
static __device__ __forceinline__ void
attb_pv(const bf16 *Vs, int v_ld, const uint32_t (&ph)[NT / 2][4], const uint32_t (&pl)[NT / 2][4],
	float (&o)[HD / 8][4])
{
	constexpr int S = ATTB_STRIDE(HD);
#pragma unroll
	for (int kk = 0; kk < NT / 2; kk++)
#pragma unroll
		for (int dp = 0; dp < HD / 16; dp++) {
			uint32_t b[4];
			ldsm4<true>(b, Vs + v_ld + kk * 16 * S + dp * 16);
			mma_bf16(o[2 * dp], ph[kk], b[0], b[1]);
			mma_bf16(o[2 * dp + 1], ph[kk], b[2], b[3]);
			mma_bf16(o[2 * dp], pl[kk], b[0], b[1]);
			mma_bf16(o[2 * dp + 1], pl[kk], b[2], b[3]);
		}
}

// Accumulator row hv (0: a, 1: c) as query slot qi's partial (row qi /
// group of the item, q head qi % group of kv head kvh): the output (this
// lane's dims 8 d + 2 t, +1), and m and l from the quad's first lane.
template <int HD>
static __device__ __forceinline__ void
attb_store(float *part_ml, float *part_acc, int part0, int qi, int group, int kvh, int n_heads,
	   const float (&o)[HD / 8][4], int hv, float m, float l)
{
	const int t = threadIdx.x & 3;
	const size_t slot = (size_t)(part0 + qi / group) * n_heads + kvh * group + qi % group;
	float *dst = part_acc + slot * HD + 2 * t;
#pragma unroll
	for (int d = 0; d < HD / 8; d++)
		*(float2 *)(dst + d * 8) = make_float2(o[d][2 * hv], o[d][2 * hv + 1]);
	if (t == 0) {
		part_ml[slot * 2] = m;
		part_ml[slot * 2 + 1] = l;
	}
}

// Accumulator rows a (query slot qa) and c (qa + 8) as their partials
// (attb_store), those below n_q.
template <int HD>
static __device__ __forceinline__ void
attb_store_ac(float *part_ml, float *part_acc, int part0, int qa, int n_q, int group, int kvh, int n_heads,
	      const float (&o)[HD / 8][4], float m_a, float m_c, float l_a, float l_c)
{
	if (qa < n_q)
		attb_store<HD>(part_ml, part_acc, part0, qa, group, kvh, n_heads, o, 0, m_a, l_a);
	if (qa + 8 < n_q)
		attb_store<HD>(part_ml, part_acc, part0, qa + 8, group, kvh, n_heads, o, 1, m_c, l_c);
}

// The unit of many queries on bf16 tensor cores (mma.m16n8k16, f32
// accumulation).  The queries (pre-scaled) and the probabilities are
// split into a high and a low bf16 part (split_bf16), each multiplied by
// the bf16 K or V (16 bits of mantissa): bf16 queries alone failed the
// kernel checks' tolerance (0.0055 at prefill); bf16 probabilities passed
// them, and are split too for accuracy at the cost of a second P.V product
// per k step, which the tensor cores have the throughput for.
// K and V tiles of ATTB_TILE positions stay bf16 in shared memory, copied
// by cp.async one tile ahead of the one being computed and read as
// fragments by ldmatrix.  Warp w owns queries 16 qb .. 16 qb + 15 (qb =
// w % 4) and half h = w / 4 of every tile: each warp's scores are its own
// (no product is repeated), and the two halves' running max, sum and
// output meet once, at the end of the unit, through shared memory.  The
// probabilities go from the score accumulators straight into P.V's A
// operand (an n8 accumulator pair is a k16 A fragment).
template <int HD>
static __device__ void
attention_unit_bf16(const float *q, const bf16 *kv, const int32_t *tables, const int32_t *pos,
		    const int32_t *item_rows, const k_attn_item &it, int kvh, int n_heads, k_kv_geom g, int layer,
		    float *part_ml, float *part_acc, float *sm)
{
	constexpr int QCAP = K_ATT_QMAX, S = ATTB_STRIDE(HD), ND = HD / 8, T = ATTB_TILE, HALF = T / 2;
	constexpr int NT = HALF / 8;     // n8 score tiles of a warp's half
	static_assert(QCAP == 64 && K_ATT_THREADS == 256 && K_ATT_QMAX_ELEMS / HD >= QCAP, "warp split");
	static_assert(HALF % 16 == 0, "a half is whole k16 steps of P.V");
	const int group = n_heads / g.n_kv_heads, n_q = it.n_rows * group, tid = threadIdx.x;
	bf16 *Qh = (bf16 *)sm, *Ql = Qh + QCAP * S;
	bf16 *stage = Ql + QCAP * S;             // stage s: K at stage + 2 s T S, V T S after
	int32_t *rows_s = (int32_t *)(stage + 4 * T * S), *pos_s = rows_s + QCAP, *blk_s = pos_s + QCAP;
	const int lane = tid & 31, w = tid >> 5, gr = lane >> 2, t = lane & 3;
	const int qb = w & 3, h = w >> 2;
	const int32_t *table = tables + it.tab;

	int blk0, nblk_s;
	att_meta(table, pos, item_rows, it, g, rows_s, pos_s, blk_s, &blk0, &nblk_s);
	if (it.kv0 < it.kv1)
		attb_fetch<HD>(stage, stage + T * S, kv, blk_s, table, blk0, nblk_s, it.kv0, it.kv1, kvh, g, layer);
	// The queries, scaled to the log2 domain, as hi + lo bf16 (zeros past
	// n_q).
	const float scale = LOG2E / sqrtf((float)HD);
	for (int i = tid; i < QCAP * (HD / 4); i += K_ATT_THREADS) {
		const int qi = i / (HD / 4), d4 = i % (HD / 4);
		float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
		if (qi < n_q) {
			const int j = qi / group, gq = qi % group;
			v = *(const float4 *)(q + ((size_t)rows_s[j] * n_heads + kvh * group + gq) * HD + d4 * 4);
		}
		uint2 hi, lo;
		split_bf16(v.x * scale, v.y * scale, hi.x, lo.x);
		split_bf16(v.z * scale, v.w * scale, hi.y, lo.y);
		*(uint2 *)(Qh + qi * S + d4 * 4) = hi;
		*(uint2 *)(Ql + qi * S + d4 * 4) = lo;
	}

	const int qa = qb * 16 + gr, qc = qa + 8;
	const int32_t lim_a = qa < n_q ? pos_s[qa / group] : -1;
	const int32_t lim_c = qc < n_q ? pos_s[qc / group] : -1;
	const bool active = qb * 16 < n_q;
	// ldmatrix lane addresses (matrix mi = lane / 8, its row r8): A (the
	// queries) rows 8 (mi & 1) + r8, columns 8 (mi >> 1); K (B, not
	// transposed) rows 8 (mi >> 1) + r8, columns 8 (mi & 1); V (B,
	// transposed) rows 8 (mi & 1) + r8, columns 8 (mi >> 1).
	const int mi = lane >> 3, r8 = lane & 7;
	const int q_ld = (qb * 16 + (mi & 1) * 8 + r8) * S + (mi >> 1) * 8;
	const int k_ld = (h * HALF + (mi >> 1) * 8 + r8) * S + (mi & 1) * 8;
	const int v_ld = (h * HALF + (mi & 1) * 8 + r8) * S + (mi >> 1) * 8;

	float o[ND][4];
#pragma unroll
	for (int n = 0; n < ND; n++)
		o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
	float m_a = -INFINITY, m_c = -INFINITY, l_a = 0.0f, l_c = 0.0f;   // l: this thread's share

	int st = 0;
	for (int t0 = it.kv0; t0 < it.kv1; t0 += T, st ^= 1) {
		if (t0 + T < it.kv1) {
			bf16 *nx = stage + (st ^ 1) * 2 * T * S;
			attb_fetch<HD>(nx, nx + T * S, kv, blk_s, table, blk0, nblk_s, t0 + T, it.kv1, kvh, g, layer);
			cp_async_wait<1>();
		} else {
			cp_async_wait<0>();
		}
		__syncthreads();
		const int32_t p0 = t0 + h * HALF;   // this warp's first position
		if (active && p0 < it.kv1) {
			const bf16 *Ks = stage + st * 2 * T * S, *Vs = Ks + T * S;
			float sc[NT][4];
			attb_scores<HD, NT>(Qh, Ql, q_ld, Ks, k_ld, sc);
			// Mask, then the online softmax of rows a and c.
			float mx_a = -INFINITY, mx_c = -INFINITY;
#pragma unroll
			for (int n = 0; n < NT; n++)
#pragma unroll
				for (int e = 0; e < 2; e++) {
					const int32_t p = p0 + n * 8 + 2 * t + e;
					const bool in = p < it.kv1;
					sc[n][e] = in && p <= lim_a ? sc[n][e] : -INFINITY;
					sc[n][2 + e] = in && p <= lim_c ? sc[n][2 + e] : -INFINITY;
					mx_a = fmaxf(mx_a, sc[n][e]);
					mx_c = fmaxf(mx_c, sc[n][2 + e]);
				}
			uint32_t ph[NT / 2][4], pl[NT / 2][4];   // P (hi + lo) as k16 A fragments
			attb_online<NT, ND>(sc, mx_a, mx_c, m_a, m_c, l_a, l_c, o, ph, pl);
			attb_pv<HD, NT>(Vs, v_ld, ph, pl, o);
		}
		__syncthreads();                 // stage st is refilled two tiles on
	}

	// The halves meet: half 1's max, sum and output in the stages (free
	// now), in fragment order, then half 0 combines and writes.
#pragma unroll
	for (int off = 1; off <= 2; off <<= 1) {
		l_a += __shfl_xor_sync(0xffffffffu, l_a, off);
		l_c += __shfl_xor_sync(0xffffffffu, l_c, off);
	}
	static_assert((4 * ND * 32 + 4 * 32) * sizeof(float4) <= 4 * T * S * sizeof(bf16), "the halves' exchange");
	float4 *xo = (float4 *)stage + qb * ND * 32 + lane;
	float4 *xm = (float4 *)stage + 4 * ND * 32 + qb * 32 + lane;
	if (active && h == 1) {
#pragma unroll
		for (int n = 0; n < ND; n++)
			xo[n * 32] = make_float4(o[n][0], o[n][1], o[n][2], o[n][3]);
		*xm = make_float4(m_a, m_c, l_a, l_c);
	}
	__syncthreads();
	if (active && h == 0) {
		const float4 pm = *xm;
		const float nm_a = fmaxf(m_a, pm.x), nm_c = fmaxf(m_c, pm.y);
		// Weights of this half (0) and the other (1); a half that saw
		// nothing has m -inf, zero output and sum.
		const float w0a = nm_a == -INFINITY ? 0.0f : exp2f(m_a - nm_a);
		const float w1a = nm_a == -INFINITY ? 0.0f : exp2f(pm.x - nm_a);
		const float w0c = nm_c == -INFINITY ? 0.0f : exp2f(m_c - nm_c);
		const float w1c = nm_c == -INFINITY ? 0.0f : exp2f(pm.y - nm_c);
#pragma unroll
		for (int n = 0; n < ND; n++) {
			const float4 x = xo[n * 32];
			o[n][0] = o[n][0] * w0a + x.x * w1a;
			o[n][1] = o[n][1] * w0a + x.y * w1a;
			o[n][2] = o[n][2] * w0c + x.z * w1c;
			o[n][3] = o[n][3] * w0c + x.w * w1c;
		}
		const float sl_a = l_a * w0a + pm.z * w1a, sl_c = l_c * w0c + pm.w * w1c;
		attb_store_ac<HD>(part_ml, part_acc, it.part0, qa, n_q, group, kvh, n_heads, o, nm_a, nm_c, sl_a, sl_c);
	}
	__syncthreads();                 // shared memory is reused by the next unit
}

// 1: units of many queries, one-warp decode units and the cluster
// kernel's runs (head_dim 64, 128) go to the bf16 tensor-core code; 0: all
// to the CUDA-core code (attention_unit, attention_warp_unit, attw_run).
// Set by k_init from BRAID_ATT_MMA.
static int att_mma = 1;

// Persistent: CTA b does work units b, b + gridDim.x, ... where unit u is
// item u / n_kv_heads, kv head u % n_kv_heads; use_mma: att_mma.
// HDC: the head_dim class the kernel is built for (64: <= 64, 128: 65..128,
// 0: larger), so that each instantiation holds only its units' code and
// registers.
template <int HDC>
static __global__ void __launch_bounds__(K_ATT_THREADS, 2)
attention_kernel(const float *q, const bf16 *kv, const int32_t *tables, const int32_t *pos,
		 const int32_t *item_rows, const k_attn_item *items, const int *n_items, int n_heads,
		 k_kv_geom g, int layer, float *part_ml, float *part_acc, int use_mma)
{
	k_pdl_start();
	extern __shared__ __align__(16) float sm[];
	const int units = *n_items * g.n_kv_heads, group = n_heads / g.n_kv_heads;
	for (int u = blockIdx.x; u < units; u += gridDim.x) {
		const k_attn_item it = items[u / g.n_kv_heads];
		const int kvh = u % g.n_kv_heads;
		// One instantiation per unit: its hot loop stays compact (the
		// instruction cache is what a short unit waits on).
		const bool small = it.n_rows * group <= 8;
#define ATT_UNIT(S, P) attention_unit<S, P>(q, kv, tables, pos, item_rows, it, kvh, n_heads, g, layer, \
					    part_ml, part_acc, sm)
#define ATT_BF16(D) attention_unit_bf16<D>(q, kv, tables, pos, item_rows, it, kvh, n_heads, g, layer, part_ml, \
					  part_acc, sm)
		const bool mma = !small && use_mma;
		if (HDC == 64) {
			if (mma && g.head_dim == 64)
				ATT_BF16(64);
			else
				small ? ATT_UNIT(true, 2) : ATT_UNIT(false, 2);
		} else if (HDC == 128) {
			if (mma && g.head_dim == 128)
				ATT_BF16(128);
			else
				small ? ATT_UNIT(true, 4) : ATT_UNIT(false, 4);
		} else {
			small ? ATT_UNIT(true, ATT_PRE) : ATT_UNIT(false, ATT_PRE);
		}
#undef ATT_BF16
#undef ATT_UNIT
	}
}

// ---- decode units, one warp each ------------------------------------------------------

int
k_attn_warp_rows(int n_heads, int n_kv_heads, int hd)
{
	const int group = n_heads / n_kv_heads;
	return att_mma && (hd == 64 || hd == 128) && group <= 8 && 16 % group == 0 ? 16 / group : 1;
}

int
k_attn_warp_item(int n_rows, int n_heads, int n_kv_heads, int hd)
{
	const int group = n_heads / n_kv_heads;
	if (n_rows > 1)
		return n_rows <= k_attn_warp_rows(n_heads, n_kv_heads, hd);
	return n_rows == 1 && group <= 8 && (hd == 16 || hd == 32 || hd == 64 || hd == 128 || hd == 256);
}

// Warps a block of the one-warp kernel: 2 (36 KB of shared memory for
// head_dim 128, 2 q heads per kv head, on CUDA cores; 52 KB on the tensor
// cores, whose warps may run units of several rows) fits beside a CTA of
// attention_kernel (79 KB) on an SM; 1, 2 and 4 measured within 3% of each
// other at N = 8..128, with the shared prefixes in CTA units.
#define ATTW_WARPS 2

// Shared memory of one warp of the one-warp kernel, in bytes: its queries
// (group x hd f32), then a tile's K rows (32 x (hd + 8) bf16: the padding
// keeps a lane's 16-byte reads of its own row free of bank conflicts) and
// V rows (32 x hd bf16).  The tensor-core kernel (mma) also runs units of
// several rows: a tile's K and V rows, then 16 query rows in a high and a
// low part, all hd + 8 bf16 apart.
static __host__ __device__ size_t
attw_warp_smem(int hd, int group, bool mma)
{
	const size_t f = (size_t)group * hd * sizeof(float) + (size_t)32 * (hd + 8) * sizeof(bf16) +
			 (size_t)32 * hd * sizeof(bf16);
	const size_t b = (size_t)(mma ? 2 * 32 + 2 * 16 : 2 * 32) * ATTB_STRIDE(hd) * sizeof(bf16);
	return f > b ? f : b;
}

// The K rows of the warp's shared memory whose queries start at qs (V's
// follow at ks + 32 * (hd + 8)), as attw_warp_smem lays them out.
static __device__ __forceinline__ bf16 *
attw_ks(float *qs, int hd, int group)
{
	return (bf16 *)(qs + group * hd);
}

// Rows [j0, j1) of the tile at position t0 (lane j's block blk) of kv head
// kvh into the warp's shared K rows (hd + 8 apart) and V rows (vrow apart:
// hd for the CUDA-core tile loop, hd + 8 for the tensor-core one), all in
// flight at once, each copy instruction 32 consecutive 16-byte chunks
// (whole rows: coalesced).  Lane j computes row j's K offset once (V's row
// is a fixed distance on) and a copy takes it by shuffle: with the offset
// computed per chunk (a division by block_tokens and the offset's products
// every 16 bytes) this loop held a third of the one-warp kernel's stall
// samples at 1.7b N=64.  Every lane takes part in the shuffle.  HD: the
// head_dim where the caller knows it at compile time (0: g.head_dim).
template <int HD = 0>
static __device__ __forceinline__ void
attw_copy_rows(bf16 *ks, bf16 *vs, int vrow, const bf16 *kv, const k_kv_geom &g, int layer, int kvh, int32_t t0,
	       int32_t blk, int j0, int j1)
{
	const int lane = threadIdx.x & 31, hd = HD ? HD : g.head_dim, ks_row = hd + 8, cpr = hd / 8;
	if (j0 >= j1)
		return;
	const unsigned long long krow = k_kv_offset(g, blk, layer, 0, kvh, (t0 + lane) % g.block_tokens);
	const size_t vgap = k_kv_offset(g, 0, 0, 1, 0, 0);   // V's row past K's, in any block
	for (int i0 = j0 * cpr; i0 < j1 * cpr; i0 += 32) {
		const int i = i0 + lane, j = min(i / cpr, 31), c = i % cpr;
		const bf16 *src = kv + (size_t)__shfl_sync(0xffffffffu, krow, j) + c * 8;
		if (i < j1 * cpr) {
			cp_async16(ks + j * ks_row + c * 8, src);
			cp_async16(vs + j * vrow + c * 8, src + vgap);
		}
	}
}

// DPL consecutive bf16 at p (aligned to their size: DPL x 2 bytes) as f32,
// in one load; zeros where !ok.
template <int DPL>
static __device__ __forceinline__ void
bf16_lanes(const bf16 *p, bool ok, float (&f)[DPL])
{
	if constexpr (DPL == 8 || DPL == 4 || DPL == 2) {
		// The raw bits in a vector variable, read as bf16 (as the K rows are).
		typedef typename std::conditional<DPL == 8, uint4, typename std::conditional<DPL == 4, uint2, uint32_t>::type>::type
			raw_t;
		raw_t raw;
		memset(&raw, 0, sizeof raw);
		if (ok)
			raw = *(const raw_t *)p;
		const bf16 *e = (const bf16 *)&raw;
#pragma unroll
		for (int k = 0; k < DPL; k++)
			f[k] = __bfloat162float(e[k]);
	} else {
#pragma unroll
		for (int k = 0; k < DPL; k++)
			f[k] = ok ? __bfloat162float(p[k]) : 0.0f;
	}
}

// DPL consecutive f32 to p (aligned to 16 bytes, 8 for DPL 2) in 16- or
// 8-byte stores.
template <int DPL>
static __device__ __forceinline__ void
f32_lanes(float *p, const float (&v)[DPL])
{
	if constexpr (DPL % 4 == 0) {
#pragma unroll
		for (int k = 0; k < DPL; k += 4)
			*(float4 *)(p + k) = make_float4(v[k], v[k + 1], v[k + 2], v[k + 3]);
	} else if constexpr (DPL == 2) {
		*(float2 *)p = make_float2(v[0], v[1]);
	} else {
#pragma unroll
		for (int k = 0; k < DPL; k++)
			p[k] = v[k];
	}
}

// The one-warp tile loop: a query row's group q heads (pre-scaled, in qs)
// against positions [kv0, end) of kv head kvh (table: the row's block
// table), online softmax from an empty state into m, l and acc (lane-owned
// dims; an empty range leaves l 0); the first tile's rows below pre are
// already in flight into ks and vs.
template <int DPL>
static __device__ __forceinline__ void
attw_run(const bf16 *kv, const int32_t *table, const k_kv_geom &g, int layer, int kvh, int group, int32_t kv0,
	 int32_t end, int pre, const float *qs, bf16 *ks, bf16 *vs, float (&m)[8], float (&l)[8],
	 float (&acc)[8][DPL])
{
	const int lane = threadIdx.x & 31, hd = g.head_dim, ks_row = hd + 8;
#pragma unroll
	for (int gq = 0; gq < 8; gq++) {
		m[gq] = -INFINITY;
		l[gq] = 0.0f;
#pragma unroll
		for (int k = 0; k < DPL; k++)
			acc[gq][k] = 0.0f;
	}
	const bool dims = lane * DPL < hd;
	for (int32_t t0 = kv0; t0 < end; t0 += 32) {
		const int32_t p = t0 + lane;
		const bool ok = p < end;
		const int32_t blk = ok ? table[p / g.block_tokens] : 0;
		const int n = min(32, end - t0);
		attw_copy_rows(ks, vs, hd, kv, g, layer, kvh, t0, blk, t0 == kv0 ? pre : 0, n);
		cp_async_wait_all();
		__syncwarp();
		float sc[8];
#pragma unroll
		for (int gq = 0; gq < 8; gq++)
			sc[gq] = 0.0f;
		if (ok) {
			const uint4 *kr = (const uint4 *)(ks + lane * ks_row);
			// Eight 16-byte reads at a time, then their math.
			for (int c0 = 0; c0 < hd / 8; c0 += 8) {
				uint4 raw[8];
#pragma unroll
				for (int u = 0; u < 8; u++)
					raw[u] = c0 + u < hd / 8 ? kr[c0 + u] : make_uint4(0, 0, 0, 0);
#pragma unroll
				for (int u = 0; u < 8; u++) {
					const int c = c0 + u;
					if (c >= hd / 8)
						break;
					const bf16 *e = (const bf16 *)&raw[u];
					float kf[8];
#pragma unroll
					for (int k = 0; k < 8; k++)
						kf[k] = __bfloat162float(e[k]);
#pragma unroll
					for (int gq = 0; gq < 8; gq++) {
						if (gq >= group)
							break;
						const float4 q0 = *(const float4 *)(qs + gq * hd + c * 8);
						const float4 q1 = *(const float4 *)(qs + gq * hd + c * 8 + 4);
						float a = sc[gq];
						a = fmaf(q0.x, kf[0], a);
						a = fmaf(q0.y, kf[1], a);
						a = fmaf(q0.z, kf[2], a);
						a = fmaf(q0.w, kf[3], a);
						a = fmaf(q1.x, kf[4], a);
						a = fmaf(q1.y, kf[5], a);
						a = fmaf(q1.z, kf[6], a);
						a = fmaf(q1.w, kf[7], a);
						sc[gq] = a;
					}
				}
			}
		}
		float pr[8];
#pragma unroll
		for (int gq = 0; gq < 8; gq++) {
			if (gq >= group)
				break;
			const float sv = ok ? sc[gq] : -INFINITY;
			const float m_new = fmaxf(m[gq], warp_max(sv));   // finite: lane 0's p < end
			const float corr = exp2f(m[gq] - m_new);
			pr[gq] = ok ? exp2f(sv - m_new) : 0.0f;
			l[gq] = l[gq] * corr + warp_sum(pr[gq]);
			m[gq] = m_new;
#pragma unroll
			for (int k = 0; k < DPL; k++)
				acc[gq][k] *= corr;
		}
		// V rows eight at a time.
		for (int j0 = 0; j0 < n; j0 += 8) {
			float vf[8][DPL];
#pragma unroll
			for (int u = 0; u < 8; u++)
				bf16_lanes<DPL>(vs + (j0 + u) * hd + lane * DPL, dims && j0 + u < n, vf[u]);
#pragma unroll
			for (int u = 0; u < 8; u++) {
#pragma unroll
				for (int gq = 0; gq < 8; gq++) {
					if (gq >= group)
						break;
					const float pj = __shfl_sync(0xffffffffu, pr[gq], (j0 + u) & 31);
#pragma unroll
					for (int k = 0; k < DPL; k++)
						acc[gq][k] = fmaf(pj, vf[u][k], acc[gq][k]);
				}
			}
		}
		__syncwarp();            // every lane is done with the tile's rows
	}
}

// A decode unit: one query row (its group of q heads) against positions
// [kv0, min(kv1, pos + 1)) for one kv head, on one warp with no block
// barrier, so that many run side by side on an SM.  Scores: lane = position
// (a tile of 32), the whole head_dim dot per lane; output: lane = DPL
// consecutive dims.
template <int DPL>
static __device__ void
attention_warp_unit(const float *q, const bf16 *kv, const int32_t *tables, const k_attn_item &it, int kvh,
		    int n_heads, k_kv_geom g, int layer, float *part_ml, float *part_acc, float *qs, int pre)
{
	const int lane = threadIdx.x & 31, hd = g.head_dim, group = n_heads / g.n_kv_heads;
	const int ks_row = hd + 8;      // bf16 per ks row
	bf16 *ks = attw_ks(qs, hd, group), *vs = ks + 32 * ks_row;
	const float scale = LOG2E / sqrtf((float)hd);
	const int r = it.row;
	const int32_t end = min(it.kv1, it.pos + 1);
	const int32_t *table = tables + it.tab;
	for (int i = lane; i < group * hd; i += 32)
		qs[i] = q[((size_t)r * n_heads + kvh * group) * hd + i] * scale;
	__syncwarp();
	float m[8], l[8], acc[8][DPL];
	attw_run<DPL>(kv, table, g, layer, kvh, group, it.kv0, end, pre, qs, ks, vs, m, l, acc);
	const bool dims = lane * DPL < hd;
#pragma unroll
	for (int gq = 0; gq < 8; gq++) {
		if (gq >= group)
			break;
		const size_t slot = (size_t)it.part0 * n_heads + kvh * group + gq;
		if (dims)
			f32_lanes<DPL>(part_acc + slot * hd + lane * DPL, acc[gq]);
		if (lane == 0) {
			part_ml[slot * 2] = m[gq];
			part_ml[slot * 2 + 1] = l[gq];
		}
	}
	__syncwarp();                    // qs is reused by the warp's next unit
}

// A decode unit (one query row, its group <= 8 q heads, against positions
// [kv0, min(kv1, pos + 1)) of kv head kvh) on one warp's bf16 tensor cores.
// The q heads are rows 0 .. 7 of a 16-row A operand and rows 8 .. 15 hold
// a second part of the same heads, so that one mma does two parts' work:
// the queries (pre-scaled) in three bf16 parts - high in rows 0 .. 7 and
// middle in 8 .. 15 of one mma, low in rows 0 .. 7 of a second - and the
// probabilities in two, high and low, in one mma; a lane holds row g's
// accumulators and row g + 8's, and adds them.  Three parts hold 24 bits of
// mantissa, as f32: a decode row's scores then match the CUDA-core path's
// (the cluster kernel's, which N = 1 passes use) closely enough that a
// sequence's tokens do not depend on the batch it runs in - with two parts
// the engine checks' greedy logprobs of a sequence alone and batched
// differed by 0.007 of the largest logit, 7x their tolerance.  The query
// fragments stay in registers for the whole unit; tiles of 32 positions go
// through shared memory (cp.async in, ldmatrix out).  Lane quad gr holds q
// head gr's scores, running max and sum.  The first tile's rows below pre
// are already in flight.  The tile loop (attwm_run) is the cluster
// kernel's too: a row's decode then sums alike in N = 1 passes and in
// batches where the split points agree.
//
// attwm_run: row r's queries (q heads kvh * group ..) against positions
// [kv0, end) of kv head kvh (table: the row's block table) from an empty
// state; out: lane quad gr's head's m and l (an empty range leaves l 0)
// and its output, dims 8 d + 2 t (+1) in o[d][0..1].
template <int HD>
static __device__ __forceinline__ void
attwm_run(const float *q, const bf16 *kv, const int32_t *table, const k_kv_geom &g, int layer, int r, int kvh,
	  int n_heads, int32_t kv0, int32_t end, int pre, bf16 *ks, float &m_out, float &l_out,
	  float (&o)[HD / 8][4])
{
	constexpr int S = ATTB_STRIDE(HD), ND = HD / 8, KK = HD / 16;
	const int lane = threadIdx.x & 31, gr = lane >> 2, t = lane & 3, group = n_heads / g.n_kv_heads;
	bf16 *vs = ks + 32 * S;
	const bool head = gr < group;
	// Per k16 step: the high + middle A fragment and the low one (rows 8 ..
	// 15 zero); rows past the group zero.
	uint32_t qa[KK][4], qb[KK][2];
	{
		const float scale = LOG2E / sqrtf((float)HD);
		const float *qr = q + ((size_t)r * n_heads + kvh * group + (head ? gr : 0)) * HD + 2 * t;
#pragma unroll
		for (int kk = 0; kk < KK; kk++)
#pragma unroll
			for (int j = 0; j < 2; j++) {
				const float2 v = head ? *(const float2 *)(qr + kk * 16 + j * 8) : make_float2(0.0f, 0.0f);
				const float x = v.x * scale, y = v.y * scale;
				const __nv_bfloat162 hi = __floats2bfloat162_rn(x, y);
				const float2 hf = __bfloat1622float2(hi);
				qa[kk][2 * j] = *(const uint32_t *)&hi;
				split_bf16(x - hf.x, y - hf.y, qa[kk][2 * j + 1], qb[kk][j]);
			}
	}
	const int mi = lane >> 3, r8 = lane & 7;
	const int k_ld = ((mi >> 1) * 8 + r8) * S + (mi & 1) * 8;
	const int v_ld = ((mi & 1) * 8 + r8) * S + (mi >> 1) * 8;

#pragma unroll
	for (int n = 0; n < ND; n++)
		o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
	float m = -INFINITY, l = 0.0f;   // l: this lane's share
	for (int32_t t0 = kv0; t0 < end; t0 += 32) {
		const int32_t p = t0 + lane;
		const int32_t blk = p < end ? table[p / g.block_tokens] : 0;
		const int n = min(32, end - t0);
		attw_copy_rows<HD>(ks, vs, S, kv, g, layer, kvh, t0, blk, t0 == kv0 ? pre : 0, n);
		// V rows past the range: zeros (a zero probability times
		// whatever the shared memory held could be NaN).
		for (int i = n * (HD / 8) + lane; i < 32 * (HD / 8); i += 32)
			*(uint4 *)(vs + (i / (HD / 8)) * S + (i % (HD / 8)) * 8) = make_uint4(0, 0, 0, 0);
		cp_async_wait_all();
		__syncwarp();
		float sc[4][4];
#pragma unroll
		for (int k = 0; k < 4; k++)
			sc[k][0] = sc[k][1] = sc[k][2] = sc[k][3] = 0.0f;
#pragma unroll
		for (int kk = 0; kk < KK; kk++) {
			uint32_t b0[4], b1[4];
			ldsm4(b0, ks + k_ld + kk * 16);
			ldsm4(b1, ks + k_ld + 16 * S + kk * 16);
			const uint32_t al[4] = { qb[kk][0], 0u, qb[kk][1], 0u };
			mma_bf16(sc[0], qa[kk], b0[0], b0[1]);
			mma_bf16(sc[1], qa[kk], b0[2], b0[3]);
			mma_bf16(sc[2], qa[kk], b1[0], b1[1]);
			mma_bf16(sc[3], qa[kk], b1[2], b1[3]);
			mma_bf16(sc[0], al, b0[0], b0[1]);
			mma_bf16(sc[1], al, b0[2], b0[3]);
			mma_bf16(sc[2], al, b1[0], b1[1]);
			mma_bf16(sc[3], al, b1[2], b1[3]);
		}
		// Head gr's scores: rows gr and gr + 8 added, at positions t0 + 8 k
		// + 2 t (+1); position t0 < end, so every row's new max is finite.
		float mx = -INFINITY;
#pragma unroll
		for (int k = 0; k < 4; k++)
#pragma unroll
			for (int e = 0; e < 2; e++) {
				sc[k][e] = t0 + k * 8 + 2 * t + e < end ? sc[k][e] + sc[k][2 + e] : -INFINITY;
				mx = fmaxf(mx, sc[k][e]);
			}
		mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
		mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
		const float mn = fmaxf(m, mx), cor = exp2f(m - mn);
		m = mn;
		float s = 0.0f;
		uint32_t pa[2][4];       // P as k16 A fragments: high part rows 0 .. 7, low rows 8 .. 15
#pragma unroll
		for (int k = 0; k < 4; k++) {
			const float p0 = exp2f(sc[k][0] - mn), p1 = exp2f(sc[k][1] - mn);
			s += p0 + p1;
			split_bf16(p0, p1, pa[k >> 1][(k & 1) * 2], pa[k >> 1][(k & 1) * 2 + 1]);
		}
		l = l * cor + s;
#pragma unroll
		for (int d = 0; d < ND; d++)
#pragma unroll
			for (int e = 0; e < 4; e++)
				o[d][e] *= cor;
#pragma unroll
		for (int kk = 0; kk < 2; kk++)
#pragma unroll
			for (int dp = 0; dp < KK; dp++) {
				uint32_t b[4];
				ldsm4<true>(b, vs + v_ld + kk * 16 * S + dp * 16);
				mma_bf16(o[2 * dp], pa[kk], b[0], b[1]);
				mma_bf16(o[2 * dp + 1], pa[kk], b[2], b[3]);
			}
		__syncwarp();            // every lane is done with the tile's rows
	}
	l += __shfl_xor_sync(0xffffffffu, l, 1);
	l += __shfl_xor_sync(0xffffffffu, l, 2);
#pragma unroll
	for (int d = 0; d < ND; d++) {
		o[d][0] += o[d][2];
		o[d][1] += o[d][3];
	}
	m_out = m;
	l_out = l;
	__syncwarp();                    // the tile rows are reused by the warp's next run
}

template <int HD>
static __device__ void
attention_warp_unit_mma(const float *q, const bf16 *kv, const int32_t *tables, const k_attn_item &it, int kvh,
			int n_heads, k_kv_geom g, int layer, float *part_ml, float *part_acc, bf16 *ks, int pre)
{
	const int gr = (threadIdx.x & 31) >> 2, group = n_heads / g.n_kv_heads;
	const int r = it.row;
	float m, l, o[HD / 8][4];
	attwm_run<HD>(q, kv, tables + it.tab, g, layer, r, kvh, n_heads, it.kv0, min(it.kv1, it.pos + 1), pre, ks, m,
		      l, o);
	if (gr < group)
		attb_store<HD>(part_ml, part_acc, it.part0, gr, group, kvh, n_heads, o, 0, m, l);
}

// Of an item's rows (item_rows[row0 .. row0 + n_rows)): lane j's row (the
// last for j >= n_rows) and its position, the greatest position of them
// all and (MIN) the least.
template <bool MIN>
static __device__ __forceinline__ void
attw_item_rows(const k_attn_item &it, const int32_t *item_rows, const int32_t *pos, int &row, int32_t &p,
	       int32_t &pmin, int32_t &pmax)
{
	row = item_rows[it.row0 + min((int)(threadIdx.x & 31), it.n_rows - 1)];
	p = pmin = pmax = pos[row];
#pragma unroll
	for (int off = 16; off > 0; off >>= 1) {
		if (MIN)
			pmin = min(pmin, __shfl_xor_sync(0xffffffffu, pmin, off));
		pmax = max(pmax, __shfl_xor_sync(0xffffffffu, pmax, off));
	}
}

// A unit of several rows on one warp's bf16 tensor cores: the item's n_rows
// rows x group q heads (at most 16 queries, k_attn_warp_rows) against
// positions [kv0, kv1) of kv head kvh, each row up to its own position -
// the shared-prefix items of decode passes, which in the CTA kernel ran
// one long unit per CTA (16-21 us at 1.7b N=64, a third of it instruction
// fetch) beside this kernel's units, on a second stream.  Query slot i
// (row i / group, head i % group) is row i of the A operand; the queries
// (pre-scaled) and the probabilities in a high and a low bf16 part, as the
// CTA unit (attention_unit_bf16) has them.  The queries go to shared memory
// (read by ldmatrix each tile: in registers they would cost the kernel its
// occupancy), after the tile's K and V rows; tiles of 32 positions as in
// attwm_run.  The first tile's rows below pre are already in flight.
template <int HD>
static __device__ void
attention_warp_unit_rows(const float *q, const bf16 *kv, const int32_t *tables, const int32_t *pos,
			 const int32_t *item_rows, const k_attn_item &it, int kvh, int n_heads, k_kv_geom g,
			 int layer, float *part_ml, float *part_acc, bf16 *ks, int pre)
{
	constexpr int S = ATTB_STRIDE(HD), ND = HD / 8, QL = HD / 8;
	const int lane = threadIdx.x & 31, gr = lane >> 2, t = lane & 3, group = n_heads / g.n_kv_heads;
	const int n_q = it.n_rows * group;
	bf16 *vs = ks + 32 * S, *Qh = vs + 32 * S, *Ql = Qh + 16 * S;
	const int32_t *table = tables + it.tab;
	// Lane j < n_rows: row j and its position; the range ends past the
	// last row's.
	int row_l;
	int32_t pos_l, pmin, pmax;
	attw_item_rows<false>(it, item_rows, pos, row_l, pos_l, pmin, pmax);
	const int32_t end = min(it.kv1, pmax + 1);
	{
		// 16 query slots x HD / 4 float4, QL a lane: every load in flight
		// before the first is split and stored.
		const float scale = LOG2E / sqrtf((float)HD);
		float4 v[QL];
#pragma unroll
		for (int k = 0; k < QL; k++) {
			const int i = lane + 32 * k, qi = i / (HD / 4), d4 = i % (HD / 4);
			const int r = __shfl_sync(0xffffffffu, row_l, qi / group);
			v[k] = qi < n_q ? *(const float4 *)(q + ((size_t)r * n_heads + kvh * group + qi % group) * HD + d4 * 4)
					: make_float4(0.0f, 0.0f, 0.0f, 0.0f);
		}
#pragma unroll
		for (int k = 0; k < QL; k++) {
			const int i = lane + 32 * k, qi = i / (HD / 4), d4 = i % (HD / 4);
			uint2 hi, lo;
			split_bf16(v[k].x * scale, v[k].y * scale, hi.x, lo.x);
			split_bf16(v[k].z * scale, v[k].w * scale, hi.y, lo.y);
			*(uint2 *)(Qh + qi * S + d4 * 4) = hi;
			*(uint2 *)(Ql + qi * S + d4 * 4) = lo;
		}
	}
	// Rows a (query slot gr) and c (gr + 8) of the accumulators: their
	// last visible positions (-1: no query).
	const int qa = gr, qc = gr + 8;
	const int32_t lim_a = __shfl_sync(0xffffffffu, pos_l, qa / group);
	const int32_t lim_c = __shfl_sync(0xffffffffu, pos_l, min(qc / group, 31));
	const int32_t la = qa < n_q ? lim_a : -1, lc = qc < n_q ? lim_c : -1;
	const int mi = lane >> 3, r8 = lane & 7;
	const int q_ld = ((mi & 1) * 8 + r8) * S + (mi >> 1) * 8;
	const int k_ld = ((mi >> 1) * 8 + r8) * S + (mi & 1) * 8;
	const int v_ld = ((mi & 1) * 8 + r8) * S + (mi >> 1) * 8;
	float o[ND][4];
#pragma unroll
	for (int n = 0; n < ND; n++)
		o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
	float m_a = -INFINITY, m_c = -INFINITY, l_a = 0.0f, l_c = 0.0f;   // l: this lane's share
	__syncwarp();
	for (int32_t t0 = it.kv0; t0 < end; t0 += 32) {
		const int32_t p = t0 + lane;
		const int32_t blk = p < end ? table[p / g.block_tokens] : 0;
		const int n = min(32, end - t0);
		attw_copy_rows<HD>(ks, vs, S, kv, g, layer, kvh, t0, blk, t0 == it.kv0 ? pre : 0, n);
		for (int i = n * (HD / 8) + lane; i < 32 * (HD / 8); i += 32)
			*(uint4 *)(vs + (i / (HD / 8)) * S + (i % (HD / 8)) * 8) = make_uint4(0, 0, 0, 0);
		cp_async_wait_all();
		__syncwarp();
		float sc[4][4];
		attb_scores<HD, 4>(Qh, Ql, q_ld, ks, k_ld, sc);
		// Mask, then the online softmax of rows a and c.
		float mx_a = -INFINITY, mx_c = -INFINITY;
#pragma unroll
		for (int k = 0; k < 4; k++)
#pragma unroll
			for (int e = 0; e < 2; e++) {
				const int32_t pp = t0 + k * 8 + 2 * t + e;
				const bool in = pp < end;
				sc[k][e] = in && pp <= la ? sc[k][e] : -INFINITY;
				sc[k][2 + e] = in && pp <= lc ? sc[k][2 + e] : -INFINITY;
				mx_a = fmaxf(mx_a, sc[k][e]);
				mx_c = fmaxf(mx_c, sc[k][2 + e]);
			}
		uint32_t ph[2][4], pl[2][4];     // P (hi + lo) as k16 A fragments
		attb_online<4, ND>(sc, mx_a, mx_c, m_a, m_c, l_a, l_c, o, ph, pl);
		attb_pv<HD, 4>(vs, v_ld, ph, pl, o);
		__syncwarp();            // every lane is done with the tile's rows
	}
#pragma unroll
	for (int off = 1; off <= 2; off <<= 1) {
		l_a += __shfl_xor_sync(0xffffffffu, l_a, off);
		l_c += __shfl_xor_sync(0xffffffffu, l_c, off);
	}
	attb_store_ac<HD>(part_ml, part_acc, it.part0, qa, n_q, group, kvh, n_heads, o, m_a, m_c, l_a, l_c);
	__syncwarp();                    // the queries and tile rows are reused by the warp's next unit
}

// ATTW_WARPS warps a block; warp unit u = item n_items[0] + u / n_kv_heads,
// kv head u % n_kv_heads, for u < n_items[1] * n_kv_heads.
template <int DPL, bool MMA>
static __global__ void __launch_bounds__(ATTW_WARPS * 32)
attention_warp_kernel(const float *q, const bf16 *kv, const int32_t *tables, const int32_t *pos,
		      const int32_t *item_rows, const k_attn_item *items, const int *n_items, int n_heads,
		      k_kv_geom g, int layer, float *part_ml, float *part_acc)
{
	k_pdl_trigger();
	extern __shared__ __align__(16) float attw_sm[];
	constexpr int HDM = DPL * 32;    // head_dim, for the tensor-core unit (64, 128)
	const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, group = n_heads / g.n_kv_heads;
	const int first = n_items[0], units = n_items[1] * g.n_kv_heads, u0 = blockIdx.x * ATTW_WARPS + w;
	float *qs = (float *)((char *)attw_sm + w * attw_warp_smem(g.head_dim, group, MMA));
	// Before the wait (launched with k_launch, the kernels before may still
	// run): the metadata, uploaded before the pass, and the first tile's K
	// and V rows older than the row's own position - written by earlier
	// passes; a pass launched so writes only its rows' own positions, each
	// row the only one of its sequence (k_attention_decode).  A unit of
	// several rows (the tensor-core kernel) fetches the positions below
	// every row's; its range ends past the last row's.  Launched plainly,
	// everything before has finished.
	int pre = 0;
	if (u0 < units) {
		const k_attn_item it = items[first + u0 / g.n_kv_heads];
		// The block is read under p < kv1 (every such position has one), not
		// p < end: its load then goes out beside the row's and position's.
		const int32_t p = it.kv0 + lane;
		const int32_t blk = p < it.kv1 ? tables[it.tab + p / g.block_tokens] : 0;
		int32_t pr = it.pos, pe = pr;
		if (MMA && it.n_rows > 1) {
			int row;
			int32_t p_l;
			attw_item_rows<true>(it, item_rows, pos, row, p_l, pr, pe);
		}
		const int32_t end = min(it.kv1, pe + 1);
		if (it.kv0 < end) {
			pre = max(0, min(min(32, end - it.kv0), pr - it.kv0));
			if constexpr (MMA) {
				bf16 *ks = (bf16 *)qs;
				attw_copy_rows<HDM>(ks, ks + 32 * ATTB_STRIDE(HDM), ATTB_STRIDE(HDM), kv, g, layer,
						    u0 % g.n_kv_heads, it.kv0, blk, 0, pre);
			} else {
				bf16 *ks = attw_ks(qs, g.head_dim, group);
				attw_copy_rows(ks, ks + 32 * (g.head_dim + 8), g.head_dim, kv, g, layer, u0 % g.n_kv_heads,
					       it.kv0, blk, 0, pre);
			}
		}
	}
	k_pdl_wait();
	for (int u = u0; u < units; u += gridDim.x * ATTW_WARPS) {
		const k_attn_item &it = items[first + u / g.n_kv_heads];
		if constexpr (MMA) {
			if (it.n_rows > 1)
				attention_warp_unit_rows<HDM>(q, kv, tables, pos, item_rows, it, u % g.n_kv_heads, n_heads, g,
							      layer, part_ml, part_acc, (bf16 *)qs, u == u0 ? pre : 0);
			else
				attention_warp_unit_mma<HDM>(q, kv, tables, it, u % g.n_kv_heads, n_heads, g, layer, part_ml,
							     part_acc, (bf16 *)qs, u == u0 ? pre : 0);
		} else
			attention_warp_unit<DPL>(q, kv, tables, it, u % g.n_kv_heads, n_heads, g, layer, part_ml, part_acc,
						 qs, u == u0 ? pre : 0);
	}
}

// The one-warp kernel for head_dim g.head_dim on `warps` warps, launched
// plainly or (pdl) with k_launch.
static cudaError_t
launch_warp(const float *q, const bf16 *kv, const int32_t *tables, const int32_t *pos, const int32_t *item_rows,
	    const k_attn_item *items, const int *n_items, int warps, int n_heads, k_kv_geom g, int layer,
	    float *part_ml, float *part_acc, cudaStream_t s, int pdl)
{
	void (*kern)(const float *, const bf16 *, const int32_t *, const int32_t *, const int32_t *,
		     const k_attn_item *, const int *, int, k_kv_geom, int, float *, float *);
	bool mma = false;                // the kernel's MMA: its warps' shared memory depends on it
	switch (g.head_dim) {
	case 16:
	case 32: kern = attention_warp_kernel<1, false>; break;
	case 64: mma = att_mma; kern = mma ? attention_warp_kernel<2, true> : attention_warp_kernel<2, false>; break;
	case 128: mma = att_mma; kern = mma ? attention_warp_kernel<4, true> : attention_warp_kernel<4, false>; break;
	case 256: kern = attention_warp_kernel<8, false>; break;
	default: return cudaSuccess;     // no item is a warp item (k_attn_warp_item)
	}
	const dim3 blocks((warps + ATTW_WARPS - 1) / ATTW_WARPS), threads(ATTW_WARPS * 32);
	const size_t smem = ATTW_WARPS * attw_warp_smem(g.head_dim, n_heads / g.n_kv_heads, mma);
	if (pdl)
		return k_launch(kern, blocks, threads, smem, s, q, kv, tables, pos, item_rows, items, n_items, n_heads, g,
				layer, part_ml, part_acc);
	kern<<<blocks, threads, smem, s>>>(q, kv, tables, pos, item_rows, items, n_items, n_heads, g, layer, part_ml,
					   part_acc);
	return cudaGetLastError();
}

cudaError_t
k_attention(const float *q, const bf16 *kv, const int32_t *tables, const int32_t *pos, const int32_t *item_rows,
	    const k_attn_item *items, const int *n_items, int ctas, int warps, int n_heads, k_kv_geom g,
	    int layer, float *part_ml, float *part_acc, cudaStream_t s, cudaStream_t s_warp)
{
	const auto kern =
		g.head_dim <= 64 ? attention_kernel<64> : g.head_dim <= 128 ? attention_kernel<128> : attention_kernel<0>;
	cudaError_t e = ctas <= 0 ? cudaSuccess
				  : k_launch(kern, dim3(ctas), dim3(K_ATT_THREADS), k_attention_smem(g.head_dim),
					     s, q, kv, tables, pos, item_rows, items, n_items, n_heads, g, layer, part_ml,
					     part_acc, att_mma);
	if (e != cudaSuccess || warps <= 0)
		return e;
	return launch_warp(q, kv, tables, pos, item_rows, items, n_items, warps, n_heads, g, layer, part_ml, part_acc,
			   s_warp, 0);
}

cudaError_t
k_attention_decode(const float *q, const bf16 *kv, const int32_t *tables, const int32_t *pos,
		   const int32_t *item_rows, const k_attn_item *items, const int *n_items, int warps, int n_heads,
		   k_kv_geom g, int layer, float *part_ml, float *part_acc, cudaStream_t s)
{
	return launch_warp(q, kv, tables, pos, item_rows, items, n_items, warps, n_heads, g, layer, part_ml, part_acc,
			   s, 1);
}

// ---- decode rows on a cluster, merged in distributed shared memory ------------------------

// A row's attention for one kv head on a cluster of CTAs of ATTC_WARPS
// warps: the row's positions [0, pos] split into contiguous runs of tiles,
// one a warp (the one-warp tile loop); the warps' states merged in the CTA,
// the CTAs' states merged through distributed shared memory (each rank
// writes a share of the outputs), the output written as bf16 - no partials
// in global memory, no merge kernel.
#define ATTC_WARPS 4

// Shared memory of a CTA, in bytes: the row's queries (group x hd f32),
// each warp's K and V tile (32 rows of hd + 8 bf16 each: the one-warp
// units' layouts fit), then ATTC_WARPS + 1
// states of group x (hd + 2) f32 (acc, then m and l): the warps', the CTA's;
// then the cluster merge's m, l and weight per (rank, q head) (16 x 8 f32
// each) and l per q head (8).
static __host__ __device__ size_t
attc_smem(int hd, int group)
{
	return (size_t)group * hd * sizeof(float) +
	       (size_t)ATTC_WARPS * 2 * 32 * (hd + 8) * sizeof(bf16) +
	       (size_t)(ATTC_WARPS + 1) * group * (hd + 2) * sizeof(float) + (size_t)(3 * 16 * 8 + 8) * sizeof(float);
}

// The merge of the n states states[0..n) (head gq's entry at gq * (hd + 2):
// hd accumulators, m, l): element d of head gq's unnormalised output, and
// the merged m and l.  A state with l = 0 saw no position and weighs nothing.
static __device__ __forceinline__ void
attc_merge(const float *const *states, int n, int gq, int d, int hd, float *a_out, float *m_out, float *l_out)
{
	float m = -INFINITY;
	for (int k = 0; k < n; k++) {
		const float *e = states[k] + gq * (hd + 2);
		if (e[hd + 1] > 0.0f)
			m = fmaxf(m, e[hd]);
	}
	float a = 0.0f, l = 0.0f;
	for (int k = 0; k < n; k++) {
		const float *e = states[k] + gq * (hd + 2);
		if (e[hd + 1] > 0.0f) {
			const float c = exp2f(e[hd] - m);
			a = fmaf(e[d], c, a);
			l = fmaf(e[hd + 1], c, l);
		}
	}
	*a_out = a;
	*m_out = m;
	*l_out = l;
}

// grid (cluster, n_kv_heads, rows), clusters (cluster, 1, 1); out(rows,
// n_heads, hd) bf16, zeros for rows >= *n.  MMA: the warps' runs on the
// one-warp tensor-core tile loop (attwm_run, head_dim DPL x 32: 64, 128) -
// the loop batched decode rows use.
template <int DPL, bool MMA>
static __global__ void __launch_bounds__(ATTC_WARPS * 32)
attention_cluster_kernel(const float *q, const bf16 *kv, const int32_t *tables, const int32_t *tab_off,
			 const int32_t *pos, const int *n, int n_heads, k_kv_geom g, int layer, bf16 *out, int early)
{
	extern __shared__ __align__(16) float attc_sm[];
	cg::cluster_group cl = cg::this_cluster();
	const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, hd = g.head_dim;
	const int group = n_heads / g.n_kv_heads, kvh = blockIdx.y, r = blockIdx.z;
	const int rank = (int)cl.block_rank(), n_ranks = (int)cl.num_blocks();
	const int tile_elems = 2 * 32 * (hd + 8), sst = group * (hd + 2);
	float *qs = attc_sm;
	bf16 *ks = (bf16 *)(qs + group * hd) + (size_t)w * tile_elems, *vs = ks + 32 * (hd + 8);
	float *states = (float *)((bf16 *)(qs + group * hd) + (size_t)ATTC_WARPS * tile_elems);
	// Before the wait (metadata, uploaded before the pass; K/V rows older
	// than the row's position, written by earlier passes - the pass writes
	// only that position of the row's sequence): the warp's run of tiles
	// and its first tile's older rows.
	const bool live = r < *n;
	const int32_t pr = live ? pos[r] : 0;
	const int32_t *table = tables + (live ? tab_off[r] : 0);
	const int tiles = live ? (pr + 32) / 32 : 0;
	const int per_c = (tiles + n_ranks - 1) / n_ranks, c0 = min(tiles, rank * per_c), c1 = min(tiles, c0 + per_c);
	const int per_w = (c1 - c0 + ATTC_WARPS - 1) / ATTC_WARPS;
	const int w0 = min(c1, c0 + w * per_w), w1 = min(c1, w0 + per_w);
	const int32_t kv0 = w0 * 32, end = min(w1 * 32, pr + 1);
	int pre = 0;
	if (kv0 < end) {
		const int32_t p = kv0 + lane;
		const int32_t blk = p < end ? table[p / g.block_tokens] : 0;
		pre = max(0, min(min(32, end - kv0), pr - kv0));
		if constexpr (MMA)
			attw_copy_rows<DPL * 32>(ks, vs, hd + 8, kv, g, layer, kvh, kv0, blk, 0, pre);
		else
			attw_copy_rows(ks, vs, hd, kv, g, layer, kvh, kv0, blk, 0, pre);
	}
	k_pdl_wait();
	float *mine = states + w * sst;
	if constexpr (MMA) {
		const int gr = lane >> 2, t = lane & 3;
		float mm = -INFINITY, ll = 0.0f, o[DPL * 4][4];
#pragma unroll
		for (int d = 0; d < DPL * 4; d++)
			o[d][0] = o[d][1] = 0.0f;
		if (live)
			attwm_run<DPL * 32>(q, kv, table, g, layer, r, kvh, n_heads, kv0, end, pre, ks, mm, ll, o);
		if (early)
			k_pdl_trigger();
		if (gr < group) {
#pragma unroll
			for (int d = 0; d < DPL * 4; d++) {
				mine[gr * (hd + 2) + d * 8 + 2 * t] = o[d][0];
				mine[gr * (hd + 2) + d * 8 + 2 * t + 1] = o[d][1];
			}
			if (t == 0) {
				mine[gr * (hd + 2) + hd] = mm;
				mine[gr * (hd + 2) + hd + 1] = ll;
			}
		}
	} else {
		const float scale = LOG2E / sqrtf((float)hd);
		if (live)
			for (int i = threadIdx.x; i < group * hd; i += blockDim.x)
				qs[i] = q[((size_t)r * n_heads + kvh * group) * hd + i] * scale;
		__syncthreads();
		float m[8], l[8], acc[8][DPL];
		attw_run<DPL>(kv, table, g, layer, kvh, group, kv0, end, pre, qs, ks, vs, m, l, acc);
		// With early, the next kernel may be scheduled from here on (its own
		// early start then overlaps the merges); else only when this kernel
		// ends.  The backend chooses by the o projection's size, from
		// measurements (backend.cu, docs/gpu-bench.md).
		if (early)
			k_pdl_trigger();
		const bool dims = lane * DPL < hd;
#pragma unroll
		for (int gq = 0; gq < 8; gq++) {
			if (gq >= group)
				break;
			if (dims) {
#pragma unroll
				for (int k = 0; k < DPL; k++)
					mine[gq * (hd + 2) + lane * DPL + k] = acc[gq][k];
			}
			if (lane == 0) {
				mine[gq * (hd + 2) + hd] = m[gq];
				mine[gq * (hd + 2) + hd + 1] = l[gq];
			}
		}
	}
	__syncthreads();
	float *cta = states + ATTC_WARPS * sst;
	{
		const float *ws[ATTC_WARPS];
		for (int k = 0; k < ATTC_WARPS; k++)
			ws[k] = states + k * sst;
		for (int e = threadIdx.x; e < group * hd; e += blockDim.x) {
			const int gq = e / hd, d = e - gq * hd;
			float a, mm, ll;
			attc_merge(ws, ATTC_WARPS, gq, d, hd, &a, &mm, &ll);
			cta[gq * (hd + 2) + d] = a;
			if (d == 0) {
				cta[gq * (hd + 2) + hd] = mm;
				cta[gq * (hd + 2) + hd + 1] = ll;
			}
		}
	}
	cl.sync();   // every CTA's state is written and visible to the cluster
	// The cluster's merge, spread over the ranks: every rank reads each
	// rank's (m, l) once (one remote load each, all in flight), weighs them
	// per q head, then writes its share of the outputs, each a fixed-order
	// sum over the ranks of independent remote loads.
	float *rm = cta + sst, *rl = rm + 16 * 8, *rw = rl + 16 * 8, *rsum = rw + 16 * 8;   // (rank, gq); (gq)
	for (int t = threadIdx.x; t < n_ranks * group; t += blockDim.x) {
		const int k = t / group, gq = t - k * group;
		const float *e = cl.map_shared_rank(cta, k) + gq * (hd + 2);
		const float l_k = e[hd + 1];
		rm[k * 8 + gq] = l_k > 0.0f ? e[hd] : -INFINITY;   // an empty state weighs nothing
		rl[k * 8 + gq] = l_k;
	}
	__syncthreads();
	if (threadIdx.x < group) {
		const int gq = threadIdx.x;
		float m_all = -INFINITY, l_all = 0.0f;
		for (int k = 0; k < n_ranks; k++)
			m_all = fmaxf(m_all, rm[k * 8 + gq]);
		for (int k = 0; k < n_ranks; k++) {
			const float c = rm[k * 8 + gq] == -INFINITY ? 0.0f : exp2f(rm[k * 8 + gq] - m_all);
			rw[k * 8 + gq] = c;
			l_all = fmaf(rl[k * 8 + gq], c, l_all);
		}
		rsum[gq] = l_all;
	}
	__syncthreads();
	const float *cs[16];
#pragma unroll
	for (int k = 0; k < 16; k++)
		cs[k] = cl.map_shared_rank(cta, k < n_ranks ? k : 0);
	const int per = (group * hd + n_ranks - 1) / n_ranks, e1 = min(group * hd, (rank + 1) * per);
	for (int e = rank * per + threadIdx.x; e < e1; e += blockDim.x) {
		const int gq = e / hd, d = e - gq * hd;
		float a = 0.0f;
#pragma unroll
		for (int k = 0; k < 16; k++)
			if (k < n_ranks)
				a = fmaf(cs[k][gq * (hd + 2) + d], rw[k * 8 + gq], a);
		out[((size_t)r * n_heads + kvh * group + gq) * hd + d] =
			__float2bfloat16(rsum[gq] > 0.0f ? a / rsum[gq] : 0.0f);
	}
	cl.sync();   // every rank has read the others' shared memory
}

typedef void (*attc_fn)(const float *, const bf16 *, const int32_t *, const int32_t *, const int32_t *, const int *,
			int, k_kv_geom, int, bf16 *, int);

// The cluster kernel for head_dim hd, or NULL.
static attc_fn
attc_kernel(int hd)
{
	switch (hd) {
	case 16:
	case 32: return attention_cluster_kernel<1, false>;
	case 64: return att_mma ? attention_cluster_kernel<2, true> : attention_cluster_kernel<2, false>;
	case 128: return att_mma ? attention_cluster_kernel<4, true> : attention_cluster_kernel<4, false>;
	case 256: return attention_cluster_kernel<8, false>;
	default: return nullptr;
	}
}

// The launch of rows x n_kv_heads clusters of `cluster` CTAs, with
// programmatic dependent launch when pdl (at[2] holds the attributes).
static cudaLaunchConfig_t
attc_config(cudaLaunchAttribute (&at)[2], int cluster, int rows, k_kv_geom g, int n_heads, bool pdl, cudaStream_t s)
{
	cudaLaunchConfig_t cfg = {};
	at[0].id = cudaLaunchAttributeClusterDimension;
	at[0].val.clusterDim.x = cluster;
	at[0].val.clusterDim.y = 1;
	at[0].val.clusterDim.z = 1;
	at[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
	at[1].val.programmaticStreamSerializationAllowed = 1;
	cfg.gridDim = dim3(cluster, g.n_kv_heads, rows);
	cfg.blockDim = dim3(ATTC_WARPS * 32);
	cfg.dynamicSmemBytes = attc_smem(g.head_dim, n_heads / g.n_kv_heads);
	cfg.stream = s;
	cfg.attrs = at;
	cfg.numAttrs = pdl ? 2 : 1;
	return cfg;
}

int
k_attention_cluster_fits(k_kv_geom g, int n_heads, int size)
{
	const void *kern = (const void *)attc_kernel(g.head_dim);
	if (!kern || n_heads / g.n_kv_heads > 8 || size < 1 || size > 16)
		return 0;
	cudaLaunchAttribute at[2];
	const cudaLaunchConfig_t cfg = attc_config(at, size, 1, g, n_heads, false, 0);
	int clusters = 0;
	if (cudaOccupancyMaxActiveClusters(&clusters, kern, &cfg) == cudaSuccess && clusters > 0)
		return 1;
	cudaGetLastError();   // not an error for later calls
	return 0;
}

int
k_attention_cluster_size(k_kv_geom g, int n_heads)
{
	for (int size = 16; size >= 2; size /= 2)
		if (k_attention_cluster_fits(g, n_heads, size))
			return size;
	return 0;
}

cudaError_t
k_attention_rows(const float *q, const bf16 *kv, const int32_t *tables, const int32_t *tab_off,
		 const int32_t *pos, const int *n, int rows, int n_heads, k_kv_geom g, int layer, int cluster,
		 bool early, bf16 *out, cudaStream_t s)
{
	const attc_fn kern = attc_kernel(g.head_dim);
	if (!kern || cluster < 1 || cluster > 16 || n_heads / g.n_kv_heads > 8)
		return cudaErrorInvalidValue;
	cudaLaunchAttribute at[2];
	const cudaLaunchConfig_t cfg = attc_config(at, cluster, rows, g, n_heads, k_pdl_on(), s);
	return cudaLaunchKernelEx(&cfg, kern, q, kv, tables, tab_off, pos, n, n_heads, g, layer, out, (int)early);
}

// grid (rows, ceil(n_heads / 4)), 128 threads: warp w merges head 4y + w
// of row r; KD = head_dim / 32 rounded up to 1, 2, 4 or 8 (a lane's dims).
// A row of at most MERGE_FAST partials (the common case: a few prefix
// chunks and a few of its own) takes one round of loads: lane i reads
// partial i's slot, then every partial's (m, l) and output at once - the
// outputs do not wait for the weights.  The loads then cost three trips to
// memory (the row's list bounds, its slots, the parts) where the loop below
// took seven (bounds, slots, (m, l), then the outputs four partials at a
// time).  Both paths add the partials in list order, one fma each (zero
// weight and zero value past the last, up to a multiple of four), so they
// give the same bits.  Longer lists: lanes read 32 partials' (m, l) at
// once, then the outputs four partials a round.
#define MERGE_FAST 16
template <int KD>
static __global__ void
merge_kernel(const float *part_ml, const float *part_acc, const int32_t *rp_off, const int32_t *rp_idx,
	     const int *n, int n_heads, int hd, bf16 *out)
{
	k_pdl_start();   // launched plainly (after a join): only lets the next kernel be scheduled
	const int r = blockIdx.x, lane = threadIdx.x & 31, h = blockIdx.y * 4 + (threadIdx.x >> 5);
	if (h >= n_heads)
		return;
	bf16 *dst = out + ((size_t)r * n_heads + h) * hd;
	const int a = rp_off[r], b = rp_off[r + 1];   // rows of the padded grid have bounds too
	if (r >= *n) {
		for (int d = lane; d < hd; d += 32)
			dst[d] = __float2bfloat16(0.0f);
		return;
	}
	float o[KD];
#pragma unroll
	for (int k = 0; k < KD; k++)
		o[k] = 0.0f;
	float l = 0.0f;
	if (b - a <= MERGE_FAST) {
		const int cnt = b - a, cnt4 = (cnt + 3) & ~3;
		const int slot = lane < cnt ? rp_idx[a + lane] : 0;
		float2 ml = make_float2(-INFINITY, 0.0f);
		if (lane < cnt)
			ml = *(const float2 *)(part_ml + ((size_t)slot * n_heads + h) * 2);
		float v[MERGE_FAST][KD];
#pragma unroll
		for (int u = 0; u < MERGE_FAST; u++) {
			const int sj = __shfl_sync(0xffffffffu, slot, u);
			const float *acc = part_acc + ((size_t)sj * n_heads + h) * hd;
#pragma unroll
			for (int k = 0; k < KD; k++)
				v[u][k] = u < cnt && lane + 32 * k < hd ? acc[lane + 32 * k] : 0.0f;
		}
		const float m = warp_max(ml.y > 0.0f ? ml.x : -INFINITY);
		float c = 0.0f;
		if (ml.y > 0.0f) {               // else no visible position in that part
			c = exp2f(ml.x - m);
			l += ml.y * c;
		}
#pragma unroll
		for (int u = 0; u < MERGE_FAST; u++) {
			if (u >= cnt4)
				break;
			const float cj = __shfl_sync(0xffffffffu, c, u);
#pragma unroll
			for (int k = 0; k < KD; k++)
				o[k] = fmaf(v[u][k], cj, o[k]);
		}
	} else {
		float m = -INFINITY;
		for (int i = a + lane; i < b; i += 32) {
			const float *ml = part_ml + ((size_t)rp_idx[i] * n_heads + h) * 2;
			if (ml[1] > 0.0f)
				m = fmaxf(m, ml[0]);
		}
		m = warp_max(m);
		for (int base = a; base < b; base += 32) {
			int slot = -1;
			float c = 0.0f;
			if (base + lane < b) {
				slot = rp_idx[base + lane];
				const float *ml = part_ml + ((size_t)slot * n_heads + h) * 2;
				if (ml[1] > 0.0f) {          // else no visible position in that part
					c = exp2f(ml[0] - m);
					l += ml[1] * c;
				}
			}
			const int cnt = min(32, b - base);
			// Four partials per round: their loads are independent and issued
			// together (a zero weight multiplies a part that saw nothing).
			for (int j = 0; j < cnt; j += 4) {
				float cj[4], v[4][KD];
#pragma unroll
				for (int u = 0; u < 4; u++) {
					cj[u] = __shfl_sync(0xffffffffu, c, (j + u) & 31);
					const int sj = __shfl_sync(0xffffffffu, slot, (j + u) & 31);
					if (j + u >= cnt)
						cj[u] = 0.0f;
					const float *acc = part_acc + ((size_t)(j + u < cnt ? sj : 0) * n_heads + h) * hd;
#pragma unroll
					for (int k = 0; k < KD; k++)
						v[u][k] = j + u < cnt && lane + 32 * k < hd ? acc[lane + 32 * k] : 0.0f;
				}
#pragma unroll
				for (int u = 0; u < 4; u++)
#pragma unroll
					for (int k = 0; k < KD; k++)
						o[k] = fmaf(v[u][k], cj[u], o[k]);
			}
		}
	}
	l = warp_sum(l);
#pragma unroll
	for (int k = 0; k < KD; k++)
		if (lane + 32 * k < hd)
			dst[lane + 32 * k] = __float2bfloat16(l > 0.0f ? o[k] / l : 0.0f);
}

cudaError_t
k_attn_merge(const float *part_ml, const float *part_acc, const int32_t *rp_off, const int32_t *rp_idx,
	     const int *n, int rows, int n_heads, int hd, bf16 *out, cudaStream_t s)
{
	dim3 grid(rows, (n_heads + 3) / 4);
	const auto kern = hd <= 32 ? merge_kernel<1> : hd <= 64 ? merge_kernel<2> : hd <= 128 ? merge_kernel<4>
											: merge_kernel<8>;
	kern<<<grid, 128, 0, s>>>(part_ml, part_acc, rp_off, rp_idx, n, n_heads, hd, out);
	return cudaGetLastError();
}

cudaError_t
k_init(int hd)
{
	// The attribute is per process: allow the largest head_dim's need, so
	// that backends of different models can share the process.
	const size_t need = k_attention_smem(hd), most = k_attention_smem(K_MAX_HEAD_DIM);
	const int amost = (int)(need > most ? need : most);
	cudaError_t e = cudaSuccess;
	const void *attk[] = { (const void *)attention_kernel<64>, (const void *)attention_kernel<128>,
			       (const void *)attention_kernel<0> };
	for (const void *f : attk)
		if (e == cudaSuccess)
			e = cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, amost);
	// The one-warp kernels: a warp's queries (up to 8 heads) and tile.
	const size_t wf = attw_warp_smem(K_MAX_HEAD_DIM, 8, false), wm = attw_warp_smem(128, 8, true);
	const int wmost = (int)(ATTW_WARPS * (wf > wm ? wf : wm));
	const void *attw[] = { (const void *)attention_warp_kernel<1, false>, (const void *)attention_warp_kernel<2, false>,
			       (const void *)attention_warp_kernel<4, false>, (const void *)attention_warp_kernel<8, false>,
			       (const void *)attention_warp_kernel<2, true>, (const void *)attention_warp_kernel<4, true> };
	for (const void *f : attw)
		if (e == cudaSuccess)
			e = cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, wmost);
	// The cluster kernels: up to 8 q heads of the widest head_dim; clusters
	// of 16 where the device schedules them.
	const int cmost = (int)attc_smem(K_MAX_HEAD_DIM, 8);
	const void *attc[] = { (const void *)attention_cluster_kernel<1, false>,
			       (const void *)attention_cluster_kernel<2, false>,
			       (const void *)attention_cluster_kernel<4, false>,
			       (const void *)attention_cluster_kernel<8, false>,
			       (const void *)attention_cluster_kernel<2, true>,
			       (const void *)attention_cluster_kernel<4, true> };
	for (const void *f : attc) {
		if (e == cudaSuccess)
			e = cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, cmost);
		if (e == cudaSuccess)
			e = cudaFuncSetAttribute(f, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
	}
	const char *v = getenv("BRAID_ATT_MMA");
	att_mma = !(v && !strcmp(v, "0"));
	return e;
}
