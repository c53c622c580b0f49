// sample.cu - token sampling on the GPU with the semantics of samp_sample()
// (gpu/sampler.c): a row on one CTA of 1024 threads, or, for few rows, on a
// thread-block cluster of C = 2, 4, 8 or 16 such CTAs that split it (below).
// Launched from the engine thread.
//
// A row (up to 600 KB) does not fit in shared memory, so each step is a pass
// over the row's logits in global memory (L2 after the first):
//   1. max, lowest argmax, NaN/+inf check, S = sum e^(l-max) and
//      sum e^(l-max)(l-max) (logprob, entropy: each thread's about its running
//      max, rescaled as that grows, then about the row's); first digit of the
//      selections below
//   2.. the remaining digits of three radix selections, run side by side, one
//       digit per pass, histograms in shared memory:
//       - top n_top and top-k: the m largest composite keys (logit, then lower id),
//         found exactly; 3 passes when logits are distinct, up to 6 with ties
//       - top-p: the largest logit b such that the kept tokens with logit >= b
//         weigh at least top_p * (kept total); masses as 2^-39 fixed point, so
//         the sums are exact and the result does not depend on thread order
//   last: the top n_top gather and the draw: per-warp sums of the kept weights
//       over contiguous id ranges, then inside the chosen warp's range one
//       contiguous sub-range per thread, then one thread walks its sub-range.
// A plain row (drawn, no top-k, top-p, min-p or n_top) reads its logits once:
// pass 1 then reads the draw's warp ranges and sums their weights too (about
// each lane's running max, rescaled to the row's), and only the chosen range
// is read again.
//
// Top-p ties: every kept token whose logit equals the boundary token's logit
// is kept (the CPU sampler keeps only enough of them, lowest ids first).
//
// On a cluster, rank q takes the contiguous ids [q * chunk, (q + 1) * chunk)
// (chunk a multiple of 128) in every pass; after a pass the ranks' partial
// results meet through distributed shared memory - the argmax, the moments
// (summed in rank order), the histograms (rank q sums bin slice q of every
// rank, then every rank copies all slices) - so that every rank holds the
// same merged values and takes the same decisions.  The draw's ranges are
// the ranks' 32 warp ranges in rank order (id order as before): every rank
// finds the range from all C x 32 sums, and the rank that owns it walks it.
// A single pass over a row on one SM was the cost at small batches (one row
// of 151,936 logits: about 80 us on an H100).
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include "cuda/try.cuh"

namespace cg = cooperative_groups;

extern "C" {
#include "status.h"
#include "sampler.h"
#include "backend.h"
#include "cuda/cuda.h"
}

#define SAMP_NT 1024                 // threads per row
#define SAMP_WARPS (SAMP_NT / 32)
#define SAMP_FULL 0xffffffffu
#define SAMP_HBINS 2048              // the widest digit has 11 bits
#define SAMP_MASS_SCALE 0x1p39f      // weight (<= 1) -> integer; vocab * 2^39 < 2^63
#define SAMP_MAX_VOCAB (1 << 24)     // ids fit the composite key's 24 bits
#define SAMP_LOG2E 1.4426950408889634
#define SAMP_MIN_CLUSTER 2           // the merge's slice buffers hold SAMP_HBINS / 2 bins
#define SAMP_SLICE (SAMP_HBINS / SAMP_MIN_CLUSTER)

typedef unsigned long long u64;

// Digits of the 56-bit composite key (32-bit logit key, 24-bit reversed id),
// most significant first, and of the 32-bit logit key for top-p.
#define SAMP_CLEVELS 6
#define SAMP_PLEVELS 3
static __constant__ int samp_c_shift[SAMP_CLEVELS] = { 45, 34, 24, 16, 8, 0 };
static __constant__ int samp_c_width[SAMP_CLEVELS] = { 11, 11, 10, 8, 8, 8 };
static __constant__ int samp_p_shift[SAMP_PLEVELS] = { 21, 10, 0 };
static __constant__ int samp_p_width[SAMP_PLEVELS] = { 11, 11, 10 };

// A count selection: the m largest composite keys, as a threshold.
struct samp_csel {
	int on;         // 1 while digits remain to be chosen
	int level;      // the digit the next pass histograms
	u64 prefix;     // the digits chosen so far
	u64 rem;        // keys still to take among those with this prefix
	u64 thr;        // the result: exactly m keys are >= thr
};

// A mass selection over the kept tokens' logit keys (top-p).
struct samp_psel {
	int on;
	int level;
	u64 prefix;
	u64 above;      // kept mass with a larger prefix
	double need;    // top_p * kept mass, set at level 0
	uint32_t thr;   // the result: keep logit keys >= thr
};

struct samp_smem {
	unsigned cnt[2][SAMP_HBINS];   // count histograms: top n_top, top-k
	u64 mass[SAMP_HBINS];          // mass histogram: top-p
	u64 scan_u[SAMP_WARPS];
	double scan_d[SAMP_WARPS];
	double red_d[SAMP_WARPS];
	float red_f[SAMP_WARPS];
	int red_i[SAMP_WARPS];
	float mx;
	int arg;
	double sum;
	int res_digit;
	u64 res_above;
	u64 res_cnt;
	int pick, pick2, last, token;
	double resid;
	int top_cnt;
	u64 top_ck[SAMP_MAX_TOP];
	float top_x[SAMP_MAX_TOP];
	// clusters: a rank's partial results, read by the others
	int bad;
	double part_s, part_sx;
	unsigned slice_cnt[2][SAMP_SLICE];
	u64 slice_mass[SAMP_SLICE];
	// and the merged ones
	float g_mx;
	int g_arg, g_bad;
	double g_s, g_sx;
};

// ---- keys and weights ----------------------------------------------------------

// Order-preserving key of a float: a > b <=> key(a) > key(b) (no NaN here).
static __device__ __forceinline__ uint32_t samp_key(float x)
{
	uint32_t u = __float_as_uint(x);
	return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Larger logit first, then lower id: a strict total order on the row.
static __device__ __forceinline__ u64 samp_ck(float x, int i)
{
	return ((u64)samp_key(x) << 24) | (u64)(0xFFFFFFu - (uint32_t)i);
}

static __device__ __forceinline__ float samp_ex2(float x)
{
	float y;
	asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
	return y;
}

// exp((x - mx) / T) with c = log2(e) / T: 1 for the max, 0 for -inf.
static __device__ __forceinline__ float samp_weight(float x, float mx, float c)
{
	return x == mx ? 1.0f : samp_ex2((x - mx) * c);
}

// ---- block primitives (blockDim.x == SAMP_NT) -----------------------------------

// The warp's largest m and its index a (the smaller index on ties), in
// every lane.
static __device__ __forceinline__ void samp_warp_argmax(float &m, int &a)
{
	for (int o = 16; o > 0; o >>= 1) {
		const float m2 = __shfl_xor_sync(SAMP_FULL, m, o);
		const int a2 = __shfl_xor_sync(SAMP_FULL, a, o);
		if (m2 > m || (m2 == m && a2 < a)) {
			m = m2;
			a = a2;
		}
	}
}

// Exclusive scan over threads in thread order; *incl the inclusive value,
// *total the block total.  Exact for integers.
template <typename T>
static __device__ T samp_scan(T v, T *incl, T *total, T *sh)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	T x = v;
	for (int o = 1; o < 32; o <<= 1) {
		T y = __shfl_up_sync(SAMP_FULL, x, o);
		if (lane >= o)
			x += y;
	}
	if (lane == 31)
		sh[warp] = x;
	__syncthreads();
	if (warp == 0) {
		T s = sh[lane];
		for (int o = 1; o < 32; o <<= 1) {
			T y = __shfl_up_sync(SAMP_FULL, s, o);
			if (lane >= o)
				s += y;
		}
		sh[lane] = s;
	}
	__syncthreads();
	T base = warp ? sh[warp - 1] : (T)0;
	*total = sh[SAMP_WARPS - 1];
	__syncthreads();
	*incl = base + x;
	return base + (x - v);
}

// Sum over the block in a fixed order (the same result on every run).
static __device__ double samp_block_sum(double v, samp_smem &S)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_down_sync(SAMP_FULL, v, o);
	if (lane == 0)
		S.red_d[warp] = v;
	__syncthreads();
	if (warp == 0) {
		double s = S.red_d[lane];
		for (int o = 16; o > 0; o >>= 1)
			s += __shfl_down_sync(SAMP_FULL, s, o);
		if (lane == 0)
			S.sum = s;
	}
	__syncthreads();
	double r = S.sum;
	__syncthreads();
	return r;
}

// f(i, logits[i]) for every i in [lo, hi) (lo a multiple of 4), each thread
// in increasing i.  Two 16-byte loads a thread in flight: with one, a pass
// over a row's 151,936 logits on one or two CTAs waited on memory.
template <class F>
static __device__ __forceinline__ void samp_each(const float *__restrict__ row, int lo, int hi, F &&f)
{
	int i0 = lo;
	if (((uintptr_t)(row + lo) & 15) == 0) {
		const float4 *r4 = (const float4 *)(row + lo);
		const int n4 = (hi - lo) >> 2;
		auto four = [&](int j, const float4 &v) {
			const int i = lo + (j << 2);
			f(i, v.x);
			f(i + 1, v.y);
			f(i + 2, v.z);
			f(i + 3, v.w);
		};
		int j = threadIdx.x;
		for (; j + SAMP_NT < n4; j += 2 * SAMP_NT) {
			const float4 v0 = __ldg(r4 + j), v1 = __ldg(r4 + j + SAMP_NT);
			four(j, v0);
			four(j + SAMP_NT, v1);
		}
		if (j < n4)
			four(j, __ldg(r4 + j));
		i0 = lo + (n4 << 2);
	}
	for (int i = i0 + threadIdx.x; i < hi; i += SAMP_NT)
		f(i, __ldg(row + i));
}

// f(i, logits[i]) for a lane's ids base + lane + 32 k below end, in increasing
// k, four loads in flight (one at a time, the draw's pass was most of the
// kernel's time at 64 rows): a warp reads the contiguous range [base, end).
template <typename F>
static __device__ __forceinline__ void samp_range(const float *__restrict__ row, int base, int end, F &&f)
{
	int i = base + (threadIdx.x & 31);
	for (; i + 96 < end; i += 128) {
		const float x0 = __ldg(row + i), x1 = __ldg(row + i + 32), x2 = __ldg(row + i + 64),
			    x3 = __ldg(row + i + 96);
		f(i, x0);
		f(i + 32, x1);
		f(i + 64, x2);
		f(i + 96, x3);
	}
	for (; i < end; i += 32)
		f(i, __ldg(row + i));
}

// ---- cluster merges (C > 1; every rank calls them at the same point) -------------

// The histograms that are on (m0: cnt[0], m1: cnt[1], mm: mass) summed over
// the ranks into every rank's own: rank q sums slice q of every rank, then
// every rank copies all slices.  Not inlined: inside the pass loop it
// raised the spills under the 64-register cap (1,024 threads) from 24 to
// 200 bytes of loads; as a call they are 88, around the call.
template <int C>
static __device__ __noinline__ void samp_cl_hist(samp_smem &S, bool m0, bool m1, bool mm)
{
	static_assert(C >= SAMP_MIN_CLUSTER && SAMP_HBINS % C == 0, "slices of SAMP_HBINS / C bins");
	constexpr int slice = SAMP_HBINS / C;
	cg::cluster_group cl = cg::this_cluster();
	const int b0 = (int)cl.block_rank() * slice;
	cl.sync();   // every rank's histograms are complete
	for (int t = threadIdx.x; t < slice; t += SAMP_NT) {
		unsigned c0 = 0, c1 = 0;
		u64 ms = 0;
#pragma unroll 1
		for (int k = 0; k < C; k++) {
			const samp_smem *R = cl.map_shared_rank(&S, k);
			if (m0)
				c0 += R->cnt[0][b0 + t];
			if (m1)
				c1 += R->cnt[1][b0 + t];
			if (mm)
				ms += R->mass[b0 + t];
		}
		S.slice_cnt[0][t] = c0;
		S.slice_cnt[1][t] = c1;
		S.slice_mass[t] = ms;
	}
	cl.sync();   // every slice is summed; no rank reads the histograms any more
	for (int b = threadIdx.x; b < SAMP_HBINS; b += SAMP_NT) {
		const samp_smem *R = cl.map_shared_rank(&S, b / slice);
		if (m0)
			S.cnt[0][b] = R->slice_cnt[0][b % slice];
		if (m1)
			S.cnt[1][b] = R->slice_cnt[1][b % slice];
		if (mm)
			S.mass[b] = R->slice_mass[b % slice];
	}
	// The slices are read until every rank reaches the next merge's first
	// cl.sync(), before which none writes them again.
	__syncthreads();
}

// The ranks' (part_s, part_sx) summed in rank order into every rank's
// (g_s, g_sx).
template <int C>
static __device__ void samp_cl_moments(samp_smem &S)
{
	cg::cluster_group cl = cg::this_cluster();
	cl.sync();
	if (threadIdx.x == 0) {
		double a = 0.0, b = 0.0;
#pragma unroll 1
		for (int k = 0; k < C; k++) {
			const samp_smem *R = cl.map_shared_rank(&S, k);
			a += R->part_s;
			b += R->part_sx;
		}
		S.g_s = a;
		S.g_sx = b;
	}
	cl.sync();   // read by all; the parts may change again
}

// ---- selections -------------------------------------------------------------------

static __device__ void samp_csel_init(samp_csel &s, int m)
{
	s.on = m > 0;
	s.level = 0;
	s.prefix = 0;
	s.rem = (u64)(m > 0 ? m : 0);
	s.thr = 0;
}

// After a pass filled h with the counts of the current digit among keys with
// s.prefix: choose the digit holding the rem-th largest key.  Clears h.
static __device__ void samp_csel_resolve(samp_csel &s, unsigned *h, samp_smem &S)
{
	int w = samp_c_width[s.level], sh = samp_c_shift[s.level];
	int nb = 1 << w, bpt = (nb + SAMP_NT - 1) / SAMP_NT;
	int t = threadIdx.x;
	// thread t owns bins nb-1-t*bpt down to nb-bpt-t*bpt (largest digits first)
	u64 mine = 0;
	for (int j = 0; j < bpt; j++) {
		int q = t * bpt + j;
		if (q < nb)
			mine += h[nb - 1 - q];
	}
	if (t == 0)
		S.res_digit = -1;
	u64 incl, total;
	u64 above = samp_scan<u64>(mine, &incl, &total, S.scan_u);
	for (int j = 0; j < bpt; j++) {
		int q = t * bpt + j;
		if (q >= nb)
			break;
		int b = nb - 1 - q;
		u64 c = h[b];
		if (c && above < s.rem && s.rem <= above + c) {
			S.res_digit = b;
			S.res_above = above;
			S.res_cnt = c;
		}
		above += c;
		h[b] = 0;
	}
	__syncthreads();
	int d = S.res_digit;
	if (d < 0) {  // cannot happen: the bucket holds >= rem keys
		s.on = 0;
		s.thr = s.prefix << (sh + w);
	} else {
		s.rem -= S.res_above;
		s.prefix = (s.prefix << w) | (u64)d;
		if (S.res_cnt == s.rem || s.level == SAMP_CLEVELS - 1) {
			s.on = 0;   // every key with this prefix is taken
			s.thr = s.prefix << sh;
		} else {
			s.level++;
		}
	}
	__syncthreads();
}

// After a pass filled S.mass with the kept masses of the current digit among
// logit keys with s.prefix: choose the digit where the mass from the top
// reaches need.  Clears S.mass.
static __device__ void samp_psel_resolve(samp_psel &s, float top_p, samp_smem &S)
{
	int w = samp_p_width[s.level];
	int nb = 1 << w, bpt = (nb + SAMP_NT - 1) / SAMP_NT;
	int t = threadIdx.x;
	u64 mine = 0;
	for (int j = 0; j < bpt; j++) {
		int q = t * bpt + j;
		if (q < nb)
			mine += S.mass[nb - 1 - q];
	}
	if (t == 0)
		S.res_digit = -1;
	u64 incl, total;
	u64 above = samp_scan<u64>(mine, &incl, &total, S.scan_u);
	if (s.level == 0)
		s.need = (double)top_p * (double)total;
	for (int j = 0; j < bpt; j++) {
		int q = t * bpt + j;
		if (q >= nb)
			break;
		int b = nb - 1 - q;
		u64 c = S.mass[b];
		if (c) {
			double lo = (double)(s.above + above), hi = (double)(s.above + above + c);
			if (lo < s.need && s.need <= hi) {
				S.res_digit = b;
				S.res_above = above;
			}
		}
		above += c;
		S.mass[b] = 0;
	}
	__syncthreads();
	int d = S.res_digit;
	if (d < 0) {  // cannot happen: the kept total reaches need
		s.on = 0;
		s.thr = 0;
	} else {
		s.above += S.res_above;
		s.prefix = (s.prefix << w) | (u64)d;
		if (s.level == SAMP_PLEVELS - 1) {
			s.on = 0;
			s.thr = (uint32_t)s.prefix;
		} else {
			s.level++;
		}
	}
	__syncthreads();
}

// ---- the kernel -------------------------------------------------------------------

static __device__ bool samp_row_ok(const cuda_samp_row &p, int slot_limit)
{
	if (p.slot < 0 || p.slot >= slot_limit)
		return false;
	if (!(p.temperature >= 0.0f) || isinf(p.temperature))
		return false;
	if (p.top_k < 0 || !(p.top_p > 0.0f && p.top_p <= 1.0f))
		return false;
	if (!(p.min_p >= 0.0f && p.min_p <= 1.0f))
		return false;
	if (p.n_top < 0 || p.n_top > SAMP_MAX_TOP)
		return false;
	if (p.temperature > 0.0f && !(p.u >= 0.0 && p.u < 1.0))
		return false;
	return true;
}

static __device__ void samp_invalid(samp_result *o, int32_t *status)
{
	if (threadIdx.x == 0) {
		o->token = 0;
		o->logprob = 0.0f;
		o->entropy = 0.0f;
		o->n_top = 0;
		*status = ENG_ERR_INVALID;
	}
}

// logits: (n_slots, V); rows[n]; out[n], status[n].  Grid (C, n), clusters
// (C, 1, 1): the cluster y samples rows[y], rank q its ids [lo, hi).
template <int C>
static __global__ void __launch_bounds__(SAMP_NT, 1)
samp_kernel(const float *__restrict__ logits, int V, const cuda_samp_row *__restrict__ rows,
	    int slot_limit, samp_result *__restrict__ out, int32_t *__restrict__ status)
{
	extern __shared__ __align__(16) unsigned char samp_sm[];   // sizeof(samp_smem): over 48 KB
	samp_smem &S = *reinterpret_cast<samp_smem *>(samp_sm);
	const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
	const int r = blockIdx.y, q = C > 1 ? (int)blockIdx.x : 0;
	const cuda_samp_row p = rows[r];
	samp_result *o = out + r;
	const int chunk = C > 1 ? ((V + C - 1) / C + 127) & ~127 : V;
	const int lo = min(V, q * chunk), hi = min(V, lo + chunk);

	if (!samp_row_ok(p, slot_limit)) {   // the same in every rank: all leave
		if (q == 0)
			samp_invalid(o, status + r);
		return;
	}
	const float *__restrict__ row = logits + (size_t)p.slot * (size_t)V;  // (V)
	const bool greedy = p.temperature == 0.0f;
	const int n_top = p.n_top < V ? p.n_top : V;
	const int k = (!greedy && p.top_k > 0 && p.top_k < V) ? p.top_k : 0;
	const bool use_p = !greedy && p.top_p < 1.0f;
	const float min_p = p.min_p;

	samp_csel sn, sk;
	samp_csel_init(sn, n_top);
	samp_csel_init(sk, k);
	samp_psel sp = { use_p ? 1 : 0, 0, 0, 0, 0.0, 0 };
	for (int i = tid; i < SAMP_HBINS; i += SAMP_NT) {
		S.cnt[0][i] = 0;
		S.cnt[1][i] = 0;
		S.mass[i] = 0;
	}
	__syncthreads();

	// ---- pass 1: max, lowest argmax, bad logits, the moments; first digit
	// of top-n, top-k.  The moments are a thread's about its running max
	// (rescaled when the max grows), then about the row's max once that is
	// known: os = sum e, osx = sum e (x - max), e = 2^((x - max) log2 e).
	//
	// A plain row - drawn, with no selection and no min-p (every token kept,
	// weight 2^((x - max) c)) - takes this pass only: its lanes read the
	// draw's contiguous warp ranges (below) and sum their draw weights too,
	// about the running max (od), so that the last pass's full read is not
	// needed: the warp sums, rescaled to the row's max, choose the range,
	// which alone is read again.
	const float c1 = (float)SAMP_LOG2E;
	const float c = greedy ? 0.0f : (float)(SAMP_LOG2E / (double)p.temperature);
	const bool one_pass = !greedy && n_top == 0 && k == 0 && !use_p && !(min_p > 0.0f);
	const int rw = ((hi - lo + 31) / 32 + 31) & ~31;
	float mxl = -INFINITY, os = 0.0f, osx = 0.0f, od = 0.0f;
	int argl = INT_MAX, bad = 0;
	{
		const bool cn = sn.on, ckk = sk.on;
		auto visit = [&](int i, float x) {
			bad |= (x != x) | (x == INFINITY);
			if (x > mxl) {
				if (os > 0.0f) {
					const float d = mxl - x, rs = samp_ex2(d * c1);
					osx = (osx + d * os) * rs;
					os *= rs;
					if (one_pass)
						od *= c == c1 ? rs : samp_ex2(d * c);
				}
				mxl = x;
				argl = i;
				os += 1.0f;
				od += 1.0f;
			} else if (x > -INFINITY) {
				const float d = x - mxl, e = samp_weight(x, mxl, c1);
				os += e;
				osx += e * d;
				if (one_pass)
					od += c == c1 ? e : samp_weight(x, mxl, c);
			}
			if (cn | ckk) {
				unsigned d = (unsigned)(samp_ck(x, i) >> 45);
				if (cn)
					atomicAdd(&S.cnt[0][d], 1u);
				if (ckk)
					atomicAdd(&S.cnt[1][d], 1u);
			}
		};
		if (one_pass)   // the last pass's order
			samp_range(row, lo + warp * rw, min(hi, lo + warp * rw + rw), visit);
		else
			samp_each(row, lo, hi, visit);
	}
	bad = __syncthreads_or(bad);
	const float own_mx = mxl;
	samp_warp_argmax(mxl, argl);
	if (lane == 0) {
		S.red_f[warp] = mxl;
		S.red_i[warp] = argl;
	}
	__syncthreads();
	if (warp == 0) {
		float m = S.red_f[lane];
		int a = S.red_i[lane];
		samp_warp_argmax(m, a);
		if (lane == 0) {
			S.mx = m;
			S.arg = a;
		}
	}
	if constexpr (C > 1) {
		if (tid == 0)
			S.bad = bad;
		cg::cluster_group cl = cg::this_cluster();
		cl.sync();
		if (warp == 0) {
			float m = -INFINITY;
			int a = INT_MAX, b = 0;
			if (lane < C) {
				const samp_smem *R = cl.map_shared_rank(&S, lane);
				m = R->mx;
				a = R->arg;
				b = R->bad;
			}
			samp_warp_argmax(m, a);
			b = __any_sync(SAMP_FULL, b);
			if (lane == 0) {
				S.g_mx = m;
				S.g_arg = a;
				S.g_bad = b;
			}
		}
		cl.sync();   // read by all
		if (sn.on || sk.on)
			samp_cl_hist<C>(S, sn.on, sk.on, false);
	} else {
		__syncthreads();
		if (tid == 0) {
			S.g_mx = S.mx;
			S.g_arg = S.arg;
			S.g_bad = bad;
		}
		__syncthreads();
	}
	const float mx = S.g_mx;
	const int arg = S.g_arg;
	if (S.g_bad || mx == -INFINITY) {  // no distribution: NaN, +inf or all -inf (every rank alike)
		if (q == 0)
			samp_invalid(o, status + r);
		if constexpr (C > 1)
			cg::this_cluster().sync();   // the merges' reads of other ranks are done
		return;
	}
	if (sn.on)
		samp_csel_resolve(sn, S.cnt[0], S);
	if (sk.on)
		samp_csel_resolve(sk, S.cnt[1], S);
	// The moments about the row's max, summed in double over the block (and
	// the cluster's ranks, in rank order).
	double s = 0.0, sx = 0.0;
	{
		float ts = 0.0f, tsx = 0.0f;
		if (os > 0.0f) {
			const float d = own_mx - mx, rs = own_mx == mx ? 1.0f : samp_ex2(d * c1);
			ts = os * rs;
			tsx = (osx + d * os) * rs;
		}
		s = samp_block_sum((double)ts, S);
		sx = samp_block_sum((double)tsx, S);
		if constexpr (C > 1) {
			if (tid == 0) {
				S.part_s = s;
				S.part_sx = sx;
			}
			samp_cl_moments<C>(S);
			s = S.g_s;
			sx = S.g_sx;
		}
	}
	// A plain row's warp sums of the draw weights, about the row's max (read
	// by the draw below, after the barrier that follows).
	if (one_pass) {
		double wd = od > 0.0f ? (double)(own_mx == mx ? od : od * samp_ex2((own_mx - mx) * c)) : 0.0;
		for (int o2 = 16; o2 > 0; o2 >>= 1)
			wd += __shfl_down_sync(SAMP_FULL, wd, o2);
		if (lane == 0)
			S.red_d[warp] = wd;
	}

	// ---- passes 2..: one digit of each running selection a pass
	for (;;) {
		const bool run_n = sn.on, run_k = sk.on;
		const bool run_p = sp.on && !sk.on;   // top-p acts on the top-k survivors
		if (!run_n && !run_k && !run_p)
			break;
		const int n_sh = samp_c_shift[sn.level], n_hi = n_sh + samp_c_width[sn.level];
		const u64 n_mask = (1ull << samp_c_width[sn.level]) - 1, n_pre = sn.prefix;
		const int k_sh = samp_c_shift[sk.level], k_hi = k_sh + samp_c_width[sk.level];
		const u64 k_mask = (1ull << samp_c_width[sk.level]) - 1, k_pre = sk.prefix;
		const u64 k_thr = sk.thr;
		const int p_sh = samp_p_shift[sp.level], p_hi = p_sh + samp_p_width[sp.level];
		const u64 p_mask = (1ull << samp_p_width[sp.level]) - 1, p_pre = sp.prefix;
		samp_each(row, lo, hi, [&](int i, float x) {
			if (run_n | run_k) {
				u64 ck = samp_ck(x, i);
				if (run_n && (ck >> n_hi) == n_pre)
					atomicAdd(&S.cnt[0][(ck >> n_sh) & n_mask], 1u);
				if (run_k && (ck >> k_hi) == k_pre)
					atomicAdd(&S.cnt[1][(ck >> k_sh) & k_mask], 1u);
			}
			if (run_p) {
				u64 key = samp_key(x);
				if ((key >> p_hi) == p_pre && (k == 0 || samp_ck(x, i) >= k_thr)) {
					float w = samp_weight(x, mx, c);
					if (w >= min_p) {
						u64 q = __float2ull_rn(w * SAMP_MASS_SCALE);
						if (q)
							atomicAdd(&S.mass[(key >> p_sh) & p_mask], q);
					}
				}
			}
		});
		__syncthreads();
		if constexpr (C > 1)
			if (run_n || run_k || run_p)
				samp_cl_hist<C>(S, run_n, run_k, run_p);
		if (run_n)
			samp_csel_resolve(sn, S.cnt[0], S);
		if (run_k)
			samp_csel_resolve(sk, S.cnt[1], S);
		if (run_p)
			samp_psel_resolve(sp, p.top_p, S);
	}
	const double log_s = log(s);
	const double log_z = (double)mx + log_s;
	const double h = log_s - sx / s;

	// ---- last pass: the top n_top, and the kept weights summed per warp over
	// contiguous id ranges (warp w of rank q: ids [lo + w*rw, lo + w*rw + rw))
	const u64 k_thr = sk.thr, n_thr = sn.thr;
	const uint32_t p_thr = sp.thr;
	auto kept = [&](int i, float x) -> float {
		if (k > 0 && samp_ck(x, i) < k_thr)
			return 0.0f;
		if (use_p && samp_key(x) < p_thr)
			return 0.0f;
		float w = samp_weight(x, mx, c);
		return w >= min_p ? w : 0.0f;
	};
	if (tid == 0)
		S.top_cnt = 0;
	__syncthreads();
	if ((n_top > 0 || !greedy) && !one_pass) {
		const int base = lo + warp * rw, end = min(hi, base + rw);
		float acc = 0.0f;
		auto one = [&](int i, float x) {
			if (n_top > 0) {
				u64 ck = samp_ck(x, i);
				if (ck >= n_thr) {
					int at = atomicAdd(&S.top_cnt, 1);
					if (at < SAMP_MAX_TOP) {
						S.top_ck[at] = ck;
						S.top_x[at] = x;
					}
				}
			}
			if (!greedy)
				acc += kept(i, x);
		};
		samp_range(row, base, end, one);
		if (!greedy) {
			double ws = acc;
			for (int o2 = 16; o2 > 0; o2 >>= 1)
				ws += __shfl_down_sync(SAMP_FULL, ws, o2);
			if (lane == 0)
				S.red_d[warp] = ws;
		}
	}
	if constexpr (C > 1)
		cg::this_cluster().sync();   // every rank's warp sums and top candidates are written
	else
		__syncthreads();
	// The token's writer: the rank whose range the draw falls in, else rank 0.
	int token = arg, owner = 0;
	if (!greedy) {
		// the warp range (of C x 32, in id order) where the running sum
		// passes u * total
		if (warp == 0) {
			// the total, then the running sums again up to the range
			auto part = [&](int kq) -> double {
				if constexpr (C > 1)
					return cg::this_cluster().map_shared_rank(&S, kq)->red_d[lane];
				else
					return S.red_d[lane];
			};
			auto scan = [&](double x) {
				for (int o2 = 1; o2 < 32; o2 <<= 1) {
					double y = __shfl_up_sync(SAMP_FULL, x, o2);
					if (lane >= o2)
						x += y;
				}
				return x;
			};
			double carry = 0.0;
#pragma unroll 1
			for (int kq = 0; kq < C; kq++)
				carry += __shfl_sync(SAMP_FULL, scan(part(kq)), 31);
			const double target = p.u * carry;
			int pick = -1, last = -1;
			double ex_pick = 0.0, ex_last = 0.0;
			carry = 0.0;
#pragma unroll 1
			for (int kq = 0; kq < C; kq++) {
				const double v = part(kq), x = scan(v);
				double exw = __shfl_up_sync(SAMP_FULL, x, 1);
				if (lane == 0)
					exw = 0.0;
				const double inc = carry + x, exc = carry + exw;
				const unsigned hit = __ballot_sync(SAMP_FULL, v > 0.0 && inc > target);
				const unsigned pos = __ballot_sync(SAMP_FULL, v > 0.0);
				if (pick < 0 && hit) {
					const int l = __ffs(hit) - 1;
					pick = kq * 32 + l;
					ex_pick = __shfl_sync(SAMP_FULL, exc, l);
				}
				if (pos) {
					const int l = 31 - __clz(pos);
					last = kq * 32 + l;
					ex_last = __shfl_sync(SAMP_FULL, exc, l);
				}
				carry += __shfl_sync(SAMP_FULL, x, 31);
			}
			if (pick < 0) {   // rounding: the last range with weight
				pick = last;
				ex_pick = ex_last;
			}
			if (lane == 0) {
				S.pick = pick;
				S.resid = target > ex_pick ? target - ex_pick : 0.0;
			}
		}
		__syncthreads();
		const int pick = S.pick;
		const double resid = S.resid;
		if (pick >= 0)
			owner = pick / 32;
		if (pick >= 0 && owner == q) {
			// inside it: one contiguous sub-range per thread
			const int pw = pick % 32;
			const int b0 = lo + pw * rw, e0 = min(hi, b0 + rw);
			const int rs = (e0 - b0 + SAMP_NT - 1) / SAMP_NT;
			const int lo2 = b0 + tid * rs, hi2 = min(e0, lo2 + rs);
			double a = 0.0;
			for (int i = lo2; i < hi2; i++)
				a += kept(i, __ldg(row + i));
			if (tid == 0) {
				S.pick2 = INT_MAX;
				S.last = -1;
				S.token = -1;
			}
			double incl, total;
			double ex = samp_scan<double>(a, &incl, &total, S.scan_d);
			if (a > 0.0) {
				if (incl > resid)
					atomicMin(&S.pick2, tid);
				atomicMax(&S.last, tid);
			}
			__syncthreads();
			const int tp = S.pick2 != INT_MAX ? S.pick2 : S.last;
			if (tid == tp) {
				// and that thread walks its sub-range
				double r2 = resid - ex, run = 0.0;
				int tok = -1;
				for (int i = lo2; i < hi2; i++) {
					float w = kept(i, __ldg(row + i));
					if (w > 0.0f) {
						tok = i;
						run += w;
						if (run > r2)
							break;
					}
				}
				S.token = tok;
			}
			__syncthreads();
			if (S.token >= 0)
				token = S.token;
		}
	}

	// ---- results: the token from its owner, the rest from rank 0
	if (tid == 0 && q == owner) {
		o->token = token;
		o->logprob = (float)((double)__ldg(row + token) - log_z);
	}
	if (q == 0) {
		if (tid == 0) {
			o->entropy = (float)(h > 0.0 ? h : 0.0);
			o->n_top = n_top;
			status[r] = ENG_OK;
		}
		if constexpr (C > 1) {
			// every rank's candidates (exactly n_top keys are >= n_thr)
			if (tid == 0 && n_top > 0) {
				int got = 0;
#pragma unroll 1
				for (int kq = 0; kq < C; kq++) {
					const samp_smem *R = cg::this_cluster().map_shared_rank(&S, kq);
					const int cnt = min(R->top_cnt, SAMP_MAX_TOP);
					for (int j2 = 0; j2 < cnt && got < SAMP_MAX_TOP; j2++, got++) {
						S.top_ck[got] = R->top_ck[j2];   // kq == 0: in place, j2 >= got
						S.top_x[got] = R->top_x[j2];
					}
				}
				S.top_cnt = got;
			}
			__syncthreads();
		}
		const int got = S.top_cnt < SAMP_MAX_TOP ? S.top_cnt : SAMP_MAX_TOP;
		if (tid < got && tid < n_top) {
			u64 my = S.top_ck[tid];
			int rank = 0;
			for (int j = 0; j < got; j++)
				rank += S.top_ck[j] > my;
			if (rank < SAMP_MAX_TOP) {
				o->top_ids[rank] = (int32_t)(0xFFFFFFu - (uint32_t)(my & 0xFFFFFFu));
				o->top_logprobs[rank] = (float)((double)S.top_x[tid] - log_z);
			}
		}
	}
	if constexpr (C > 1)
		cg::this_cluster().sync();   // no rank leaves while rank 0 or warp 0s read its shared memory
}

// ---- launchers ------------------------------------------------------------------

// The launch of n rows on clusters of c CTAs (at holds the attribute).
static cudaLaunchConfig_t samp_cluster_cfg(cudaLaunchAttribute (&at)[1], int c, int n, cudaStream_t st)
{
	cudaLaunchConfig_t cfg = {};
	at[0].id = cudaLaunchAttributeClusterDimension;
	at[0].val.clusterDim.x = (unsigned)c;
	at[0].val.clusterDim.y = 1;
	at[0].val.clusterDim.z = 1;
	cfg.gridDim = dim3((unsigned)c, (unsigned)n);
	cfg.blockDim = dim3(SAMP_NT);
	cfg.dynamicSmemBytes = sizeof(samp_smem);
	cfg.stream = st;
	cfg.attrs = at;
	cfg.numAttrs = 1;
	return cfg;
}

typedef void (*samp_fn)(const float *, int, const cuda_samp_row *, int, samp_result *, int32_t *);

// The kernel for clusters of c CTAs (1, 2, 4, 8, 16).
static samp_fn samp_kernel_for(int c)
{
	return c == 1 ? samp_kernel<1> : c == 2 ? samp_kernel<2> : c == 4 ? samp_kernel<4> : c == 8 ? samp_kernel<8>
												  : samp_kernel<16>;
}

// Once: the kernels' shared memory (over 48 KB) and clusters of 16, then
// the largest cluster size of 16, 8, 4, 2 the device runs (BRAID_SAMP_CLUSTER=0:
// 1, one CTA a row; =N: at most N), or 1; *e the attribute call's error,
// *sms the device's SM count.
static int samp_init(cudaError_t *e, int *sms)
{
	static cudaError_t err = cudaSuccess;
	static const int n_sm = [] {
		int dev = 0, v = 132;
		if (cudaGetDevice(&dev) != cudaSuccess ||
		    cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
			cudaGetLastError();
		return v;
	}();
	static const int cmax = [] {
		for (int c = 1; c <= 16; c *= 2) {
			const void *k = (const void *)samp_kernel_for(c);
			if ((err = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
							(int)sizeof(samp_smem))) != cudaSuccess)
				return 1;
			if (c == 16 && cudaFuncSetAttribute(k, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess)
				cudaGetLastError();   // clusters of 16 then do not fit below
		}
		const char *v = getenv("BRAID_SAMP_CLUSTER");
		if (v && !strcmp(v, "0"))
			return 1;
		const int want = v && *v ? atoi(v) : 16;
		for (int c = 16; c >= SAMP_MIN_CLUSTER; c /= 2) {
			if (c > want)
				continue;
			cudaLaunchAttribute at[1];
			const cudaLaunchConfig_t cfg = samp_cluster_cfg(at, c, 1, 0);
			int clusters = 0;
			if (cudaOccupancyMaxActiveClusters(&clusters, (const void *)samp_kernel_for(c), &cfg) == cudaSuccess &&
			    clusters > 0)
				return c;
			cudaGetLastError();
		}
		return 1;
	}();
	*e = err;
	*sms = n_sm;
	return cmax;
}

// n rows on clusters of the largest size that keeps n x C CTAs within the
// SMs (one CTA of 1,024 threads an SM), or one CTA a row.
static cudaError_t samp_launch(const float *logits, int vocab, const cuda_samp_row *rows, int n,
			       int slot_limit, samp_result *out, int32_t *status, cudaStream_t st)
{
	cudaError_t e;
	int sms, c = samp_init(&e, &sms);
	if (e != cudaSuccess)
		return e;
	while (c >= SAMP_MIN_CLUSTER && ((long long)n * c > sms || vocab < c * 128))
		c /= 2;
	if (c < SAMP_MIN_CLUSTER)
		c = 1;
	cudaLaunchAttribute at[1];
	const cudaLaunchConfig_t cfg = samp_cluster_cfg(at, c, n, st);
	return cudaLaunchKernelEx(&cfg, samp_kernel_for(c), logits, vocab, rows, slot_limit, out, status);
}

// ---- C entry points ---------------------------------------------------------------

// All per-row state lives in shared memory: no device scratch is needed.
extern "C" size_t cuda_sample_scratch_bytes(int max_rows, int vocab)
{
	(void)max_rows;
	(void)vocab;
	return 0;
}

extern "C" int cuda_sample_launch(const float *logits, int vocab, const struct cuda_samp_row *rows,
				  int n, struct samp_result *out, int32_t *status, void *scratch,
				  size_t scratch_bytes, void *stream)
{
	(void)scratch;
	(void)scratch_bytes;
	if (n < 0 || vocab < 1 || vocab > SAMP_MAX_VOCAB)
		return ENG_ERR_INVALID;
	if (n == 0)
		return ENG_OK;
	if (!logits || !rows || !out || !status)
		return ENG_ERR_INVALID;
	cudaError_t e = samp_launch(logits, vocab, rows, n, INT_MAX, out, status, (cudaStream_t)stream);
	return e == cudaSuccess ? ENG_OK : ENG_ERR_DEVICE;
}


static __global__ void samp_tokens_kernel(const samp_result *__restrict__ out, const int32_t *__restrict__ src, int n,
					  int vocab, int32_t *__restrict__ tokens)
{
	const int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i < n) {
		const int32_t t = out[src[i]].token;
		tokens[i] = t >= 0 && t < vocab ? t : 0;
	}
}

extern "C" int cuda_sample_tokens_to(const struct samp_result *out, const int32_t *src, int n, int vocab,
				     int32_t *tokens, void *stream)
{
	if (n <= 0)
		return ENG_OK;
	samp_tokens_kernel<<<(n + 127) / 128, 128, 0, (cudaStream_t)stream>>>(out, src, n, vocab, tokens);
	return cudaGetLastError() == cudaSuccess ? ENG_OK : ENG_ERR_DEVICE;
}

extern "C" int cuda_sample_host(const float *logits, int n, int vocab, const struct cuda_samp_row *rows,
				struct samp_result *out, int32_t *status, char *err, int errlen)
{
	int rc = ENG_OK;
	float *d_logits = NULL;
	cuda_samp_row *d_rows = NULL;
	samp_result *d_out = NULL;
	int32_t *d_status = NULL;
	size_t lbytes = (size_t)n * (size_t)vocab * sizeof(float);

	if (n < 0 || vocab < 1 || vocab > SAMP_MAX_VOCAB || (n > 0 && (!logits || !rows || !out || !status)))
		return eng_seterr(err, (size_t)(errlen > 0 ? errlen : 0), ENG_ERR_INVALID,
				  "cuda_sample_host: bad arguments (n %d, vocab %d)", n, vocab);
	if (n == 0)
		return ENG_OK;
	CUDA_TRY(cudaMalloc(&d_logits, lbytes));
	CUDA_TRY(cudaMalloc(&d_rows, (size_t)n * sizeof *d_rows));
	CUDA_TRY(cudaMalloc(&d_out, (size_t)n * sizeof *d_out));
	CUDA_TRY(cudaMalloc(&d_status, (size_t)n * sizeof *d_status));
	CUDA_TRY(cudaMemcpy(d_logits, logits, lbytes, cudaMemcpyHostToDevice));
	CUDA_TRY(cudaMemcpy(d_rows, rows, (size_t)n * sizeof *d_rows, cudaMemcpyHostToDevice));
	CUDA_TRY(samp_launch(d_logits, vocab, d_rows, n, n, d_out, d_status, 0));
	CUDA_TRY(cudaStreamSynchronize(0));
	CUDA_TRY(cudaMemcpy(out, d_out, (size_t)n * sizeof *d_out, cudaMemcpyDeviceToHost));
	CUDA_TRY(cudaMemcpy(status, d_status, (size_t)n * sizeof *d_status, cudaMemcpyDeviceToHost));
done:
	cudaFree(d_logits);
	cudaFree(d_rows);
	cudaFree(d_out);
	cudaFree(d_status);
	return rc;
}
