// gemm.cu - the backend's projections (see gemm.cuh): a tensor-core GEMV for
// a few rows, autotuned cuBLASLt for more, cublasGemmEx as the fallback; and
// the kc_gemm_ check wrappers of gemm_check.h.  Engine thread (one k_gemm per
// thread); the wrappers run on the caller's thread, synchronously.
#include <algorithm>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <new>
#include <tuple>
#include <vector>

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

extern "C" {
#include "status.h"
#include "cuda/gemm_check.h"
}
#include "cuda/gemm.cuh"
#include "cuda/kernels.cuh"
#include "cuda/mma.cuh"
#include "cuda/pdl.cuh"
#include "cuda/warp.cuh"

// ---- the GEMV -----------------------------------------------------------------------------
//
// out(n, w_rows) = x(n, w_cols) . W^T for n <= 16 with mma.m16n8k16 (bf16 in,
// f32 accumulate): M = the rows of x (16, those >= n are zeros), N = 8 rows
// of W, K = 16 columns.  A sum over k does not care in which order k is
// taken, so each thread feeds the fragments straight from one 16-byte load
// of W (8 columns) and the matching 16 bytes of x: thread (g = lane/4,
// t = lane%4) of a warp loads W row base+g, columns c+8t .. c+8t+7 of the
// warp's 32-column step c, which fill the B fragments of two mmas (columns
// +0..3 and +4..7); the A fragments are x rows g and g+8 at the same columns.
// The accumulator then holds out[g][base+2t, +1] and out[g+8][base+2t, +1].
//
// A CTA is 8 warps: 8/ks row groups of 8 W rows, each split over ks warps
// along K (contiguous ranges of steps), reduced through shared memory in a
// fixed order.  Each thread keeps U 16-byte W loads in flight per iteration
// (L1 bypassed: W is streamed once); x goes through the read-only L1 path,
// where the CTAs of an SM share it.  Every output element is written by one
// thread; no atomics.

#define GV_THREADS 256
#define GV_WARPS (GV_THREADS / 32)

// 16 bytes of W, not kept in L1; the L2 fetches 256-byte runs.
__device__ __forceinline__ uint4
ld_stream16(const bf16 *p)
{
	uint4 v;
	asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
		     : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
		     : "l"(p));
	return v;
}

// The GEMV's input computed in the kernel (NORM): x's row 0 (f32, w_cols)
// RMS-normalised and scaled by nw, rounded to bf16 - k_rmsnorm's values.
struct gemv_norm_in {
	const float *x, *nw;
	float eps;
};

// Widest row the NORM form takes: GV_NORM_PER elements a thread.
#define GV_NORM_PER 16
#define GV_NORM_MAX_D (GV_NORM_PER * GV_THREADS)

// The thread's elements of nw for gemv_norm, loaded before the kernel's
// wait: the weights are not the previous kernel's output.
__device__ __forceinline__ void
gemv_norm_w(const gemv_norm_in &in, int d, float (&nwv)[GV_NORM_PER])
{
#pragma unroll
	for (int j = 0; j < GV_NORM_PER; j++) {
		const int i = threadIdx.x + GV_THREADS * j;
		nwv[j] = i < d ? in.nw[i] : 0.0f;
	}
}

// k_rmsnorm's row 0 into dst (shared, d <= GV_NORM_MAX_D bf16), bit for bit:
// the same sums in the same order.  rmsnorm_kernel runs V =
// k_rmsnorm_threads(d) threads a row, thread v summing elements v, v + V, ...; here
// thread t holds elements t + GV_THREADS j (all loaded at once: one L2
// latency, not one an element) and stands for the threads t + GV_THREADS k
// (k < V / GV_THREADS), whose warps are (t >> 5) + GV_WARPS k with the same
// lanes: element j belongs to k = j % (V / GV_THREADS), in order, so every
// warp sum and the final sum over V / 32 warp sums repeat its arithmetic.
// nwv: the thread's elements of nw (gemv_norm_w).  red: 32 floats.
__device__ __forceinline__ void
gemv_norm(const gemv_norm_in &in, int d, const float (&nwv)[GV_NORM_PER], bf16 *dst, float *red)
{
	const int V = k_rmsnorm_threads(d), per = V / GV_THREADS, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	float xv[GV_NORM_PER];
#pragma unroll
	for (int j = 0; j < GV_NORM_PER; j++) {
		const int i = threadIdx.x + GV_THREADS * j;
		xv[j] = i < d ? in.x[i] : 0.0f;
	}
	for (int k = 0; k < per; k++) {
		float ss = 0.0f;
#pragma unroll
		for (int j = 0; j < GV_NORM_PER; j++)
			if (j % per == k && threadIdx.x + GV_THREADS * j < d)
				ss = __fmaf_rn(xv[j], xv[j], ss);   // as rmsnorm_kernel: one rounding a step
		ss = warp_sum(ss);
		if (lane == 0)
			red[warp + GV_WARPS * k] = ss;
	}
	__syncthreads();
	const float ss = warp_sum(lane < V / 32 ? red[lane] : 0.0f);
	const float inv = rsqrtf(ss / (float)d + in.eps);
#pragma unroll
	for (int j = 0; j < GV_NORM_PER; j++) {
		const int i = threadIdx.x + GV_THREADS * j;
		if (i < d)
			dst[i] = __float2bfloat16(xv[j] * inv * nwv[j]);
	}
	__syncthreads();   // dst complete; red free again
}

// 16 bytes of x: through the read-only path from global memory, or from
// shared memory (NORM).
template <bool NORM>
__device__ __forceinline__ uint4
gv_ldx(const bf16 *p)
{
	if (NORM)
		return *(const uint4 *)p;
	return __ldg((const uint4 *)p);
}

// w (w_rows, w_cols) bf16, x (n, w_cols) bf16, out (n, w_rows) f32; n <= 8,
// or <= 16 when WIDE; w_cols % 8 == 0, w and x 16-byte aligned; ks in
// {1, 2, 4, 8}.  Grid: ceil(w_rows / (8 * GV_WARPS / ks)) CTAs.
//
// SWIGLU: W's rows interleave gate and up (row 2j gate j, row 2j+1 up j) and
// the output is h(n, w_rows / 2) bf16 = silu(gate) * up instead of out (the
// pair's sums are the same floats the plain kernel writes; beta unused).
template <int U, bool WIDE, bool SWIGLU, bool NORM>
__global__ void __launch_bounds__(GV_THREADS, 2)
gemv_kernel(const bf16 *__restrict__ w, int w_rows, int w_cols, const bf16 *__restrict__ x, int n,
	    float *__restrict__ out, float beta, int ks, bf16 *__restrict__ h, gemv_norm_in nin)
{
	__shared__ float red[GV_WARPS][128];   // per warp: lane*4 + accumulator
	extern __shared__ __align__(16) bf16 gv_xs[];   // NORM: the normalised row
	if (NORM)
		x = gv_xs;
	const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
	const int groups = GV_WARPS / ks;
	const int rg = warp / ks, kz = warp - rg * ks;
	const int g = lane >> 2, t = lane & 3;
	const long long cta_row = (long long)blockIdx.x * groups * 8;
	const long long base = cta_row + rg * 8;
	const int steps = (w_cols + 31) >> 5;
	const int s0 = (int)((long long)kz * steps / ks), s1 = (int)((long long)(kz + 1) * steps / ks);
	// Rows past the end load the last row again; their results are dropped.
	const long long row = base + g < w_rows ? base + g : (long long)w_rows - 1;
	const bool has0 = g < n, has1 = WIDE && g + 8 < n;
	const bf16 *wrow = w + (size_t)row * w_cols, *wp = wrow + 8 * t;
	const bf16 *x0row = x + (size_t)(has0 ? g : 0) * w_cols, *xp0 = x0row + 8 * t;
	const bf16 *x1row = x + (size_t)(has1 ? g + 8 : 0) * w_cols, *xp1 = x1row + 8 * t;
	const int lim = w_cols - 8 * t;   // the thread's column c+8t is in range when c < lim
	// Loads are unconditional so that they can all be in flight at once: a
	// step out of range reads an address already read (the warp's last
	// step, or the row's start) and the value is replaced by zeros.
	const int c_last = s1 > s0 ? (s1 - 1) * 32 : 0;
	const bf16 *wsafe = c_last < lim ? wp + c_last : wrow;
	const uint4 zero = make_uint4(0, 0, 0, 0);

	// The weights do not depend on the kernel before: start fetching the
	// first steps into L2 while it finishes, then wait for it (x, out).
	k_pdl_trigger();
#pragma unroll
	for (int u = 0; u < U; u++) {
		const int c = (s0 + u) * 32;
		if (s0 + u < s1 && c < lim)
			asm volatile("prefetch.global.L2 [%0];" ::"l"(wp + c));
	}
	float nwv[GV_NORM_PER];
	if (NORM)
		gemv_norm_w(nin, w_cols, nwv);
	k_pdl_wait();
	if (NORM)
		gemv_norm(nin, w_cols, nwv, gv_xs, red[0]);

	float acc[4][4];
#pragma unroll
	for (int i = 0; i < 4; i++)
		acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
	for (int s = s0; s < s1; s += U) {
		uint4 wv[U], xa[U];
#pragma unroll
		for (int u = 0; u < U; u++) {
			const int c = (s + u) * 32;
			wv[u] = ld_stream16(s + u < s1 && c < lim ? wp + c : wsafe);
		}
#pragma unroll
		for (int u = 0; u < U; u++) {
			const int c = (s + u) * 32;
			xa[u] = gv_ldx<NORM>(s + u < s1 && c < lim ? xp0 + c : x0row);
		}
#pragma unroll
		for (int u = 0; u < U; u++) {
			const int c = (s + u) * 32;
			const bool ok = s + u < s1 && c < lim;
			const uint4 wu = ok ? wv[u] : zero, a = ok && has0 ? xa[u] : zero;
			uint4 b = zero;
			if (WIDE) {
				b = gv_ldx<NORM>(ok ? xp1 + c : x1row);
				b = ok && has1 ? b : zero;
			}
			// Columns +0..3 of the thread, then +4..7 (see above).
			mma_bf16(acc[(2 * u) & 3], a.x, b.x, a.y, b.y, wu.x, wu.y);
			mma_bf16(acc[(2 * u + 1) & 3], a.z, b.z, a.w, b.w, wu.z, wu.w);
		}
	}
#pragma unroll
	for (int i = 0; i < 4; i++)
		red[warp][lane * 4 + i] = (acc[0][i] + acc[1][i]) + (acc[2][i] + acc[3][i]);
	__syncthreads();
	// Element f of a row group: lane f/4 (g, t), accumulator i = f%4: x row
	// g (+8 for i >= 2), W row 2t + i%2.
	if (SWIGLU) {
		// Pairs f, f + 1 (i even): one x row, W rows 2t (gate) and 2t + 1 (up).
		for (int e = threadIdx.x; e < groups * 64; e += GV_THREADS) {
			const int grp = e >> 6, f = 2 * (e & 63);
			const int ln = f >> 2, i = f & 3;
			const int b = (ln >> 2) + (i >= 2 ? 8 : 0);
			const long long r = cta_row + grp * 8 + 2 * (ln & 3);
			if (b >= n || r + 1 >= w_rows)
				continue;
			float gs = 0.0f, us = 0.0f;
			for (int z = 0; z < ks; z++) {
				gs += red[grp * ks + z][f];
				us += red[grp * ks + z][f + 1];
			}
			h[(size_t)b * (w_rows / 2) + r / 2] = __float2bfloat16(gs / (1.0f + expf(-gs)) * us);
		}
	} else {
		for (int e = threadIdx.x; e < groups * 128; e += GV_THREADS) {
			const int grp = e >> 7, f = e & 127;
			const int ln = f >> 2, i = f & 3;
			const int b = (ln >> 2) + (i >= 2 ? 8 : 0);
			const long long r = cta_row + grp * 8 + 2 * (ln & 3) + (i & 1);
			if (b >= n || r >= w_rows)
				continue;
			float sum = 0.0f;
			for (int z = 0; z < ks; z++)
				sum += red[grp * ks + z][f];
			float *o = out + (size_t)b * w_rows + r;
			*o = beta != 0.0f ? sum + beta * *o : sum;
		}
	}
}

static bool
aligned(const void *p, uintptr_t a)
{
	return ((uintptr_t)p & (a - 1)) == 0;
}

// The shapes the GEMV takes: 1 to 16 rows of x, W's columns a positive
// multiple of 8.
static bool
gemv_shape(int w_cols, int n)
{
	return n >= 1 && n <= 16 && w_cols > 0 && w_cols % 8 == 0;
}

static bool
gemv_fits(int w_cols, int n, const bf16 *w, const bf16 *in)
{
	return gemv_shape(w_cols, n) && aligned(w, 16) && aligned(in, 16);
}

static bool
gemv_config_ok(int ks, int unroll)
{
	return (ks == 1 || ks == 2 || ks == 4 || ks == 8) && (unroll == 4 || unroll == 8);
}

// The GEMV; h != NULL: the SWIGLU form (out unused); nin != NULL: the NORM
// form (n == 1, x unused).
static cudaError_t
gemv_launch(const bf16 *w, int w_rows, int w_cols, const bf16 *x, int n, float *out, float beta, int ks, int unroll,
	    cudaStream_t st, bf16 *h = nullptr, const gemv_norm_in *nin = nullptr)
{
	const long long rows_per_cta = 8LL * (GV_WARPS / ks);
	const dim3 ctas((unsigned)((w_rows + rows_per_cta - 1) / rows_per_cta)), threads(GV_THREADS);
	void (*kern)(const bf16 *, int, int, const bf16 *, int, float *, float, int, bf16 *, gemv_norm_in);
	if (nin && (n != 1 || w_cols > GV_NORM_MAX_D))
		return cudaErrorInvalidValue;
	const int which = (unroll == 8 ? 4 : 0) + (n > 8 ? 2 : 0) + (h ? 1 : 0) + (nin ? 8 : 0);
	switch (which) {
	case 0: kern = gemv_kernel<4, false, false, false>; break;
	case 1: kern = gemv_kernel<4, false, true, false>; break;
	case 2: kern = gemv_kernel<4, true, false, false>; break;
	case 3: kern = gemv_kernel<4, true, true, false>; break;
	case 4: kern = gemv_kernel<8, false, false, false>; break;
	case 5: kern = gemv_kernel<8, false, true, false>; break;
	case 6: kern = gemv_kernel<8, true, false, false>; break;
	case 7: kern = gemv_kernel<8, true, true, false>; break;
	case 8: kern = gemv_kernel<4, false, false, true>; break;
	case 9: kern = gemv_kernel<4, false, true, true>; break;
	case 12: kern = gemv_kernel<8, false, false, true>; break;
	default: kern = gemv_kernel<8, false, true, true>; break;
	}
	const gemv_norm_in none = {};
	return k_launch(kern, ctas, threads, nin ? (size_t)w_cols * sizeof(bf16) : 0, st, w, w_rows, w_cols, x, n, out,
			beta, ks, h, nin ? *nin : none);
}

// The untuned configuration: split K over more warps while that still adds
// CTAs toward one per SM and leaves each warp >= 4 steps of 32 columns; the
// deeper unroll when a warp has >= 8 steps.
static void
gemv_default(int sms, int w_rows, int w_cols, int *ks, int *unroll)
{
	const int steps = (w_cols + 31) / 32;
	int k = 1;
	while (k < 8 && ((long long)w_rows * k + 63) / 64 < sms && steps / (2 * k) >= 4)
		k *= 2;
	*ks = k;
	*unroll = steps / k >= 8 ? 8 : 4;
}

// ---- the handle ----------------------------------------------------------------------------

enum gemm_path { PATH_CUBLAS, PATH_GEMV, PATH_LT, PATH_AUTO };

// One way to compute a shape.
struct choice {
	int path;                     // enum gemm_path
	int ks, unroll;               // PATH_GEMV
	cublasLtMatmulAlgo_t algo;    // PATH_LT
};

// cuBLASLt layouts of one (w_rows, w_cols, n), column-major as cublasGemmEx
// sees it: A = W^T stored (w_cols x w_rows, ld w_cols), op T; B = in
// (w_cols x n, ld w_cols); C = D = out (w_rows x n, ld w_rows).
struct lt_layouts {
	cublasLtMatrixLayoutOpaque_t a, b, c;
};

// A tuned (w_rows, w_cols, n).
struct entry {
	choice ch;
	float us;                     // measured time per call
	lt_layouts lay;
};

typedef std::tuple<int, int, int> shape_key;   // (w_rows, w_cols, n)

struct k_gemm {
	cublasLtHandle_t lt;
	cublasHandle_t blas;
	cudaStream_t blas_st;         // the stream blas is set to, when blas_set
	bool blas_set;
	bool plain;                   // k_gemm_set_plain: cublasGemmEx only
	void *ws;                     // K_GEMM_WORKSPACE bytes
	cudaStream_t ts;              // tuning stream
	cudaEvent_t e0, e1;
	int sms;
	size_t l2_bytes;
	cublasLtMatmulDescOpaque_t desc;
	std::map<shape_key, entry> cache;   // node-based: layout addresses stay put
	char msg[256];
};

// Deterministic split-K reductions: all three of cuBLASLt's schemes order
// the partial sums (in place with counters, or a separate reduction pass).
// Set to 0 to accept only algorithms that do not split K.
#define K_GEMM_LT_REDUCTIONS                                                                             \
	(CUBLASLT_REDUCTION_SCHEME_INPLACE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE |                    \
	 CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE)
#define K_GEMM_LT_CANDIDATES 16

static void setmsg(k_gemm *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void
setmsg(k_gemm *g, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(g->msg, sizeof g->msg, fmt, ap);
	va_end(ap);
}

static cudaError_t
blas_to_cuda(cublasStatus_t s)
{
	switch (s) {
	case CUBLAS_STATUS_SUCCESS:
		return cudaSuccess;
	case CUBLAS_STATUS_ALLOC_FAILED:
		return cudaErrorMemoryAllocation;
	case CUBLAS_STATUS_INVALID_VALUE:
		return cudaErrorInvalidValue;
	case CUBLAS_STATUS_NOT_SUPPORTED:
		return cudaErrorNotSupported;
	default:
		return cudaErrorUnknown;
	}
}

static cudaError_t
blas_fail(k_gemm *g, cublasStatus_t s, const char *what)
{
	if (s == CUBLAS_STATUS_SUCCESS)
		return cudaSuccess;
	setmsg(g, "k_gemm: %s: %s", what, cublasGetStatusString(s));
	return blas_to_cuda(s);
}

static cudaError_t
cuda_fail(k_gemm *g, cudaError_t e, const char *what)
{
	if (e != cudaSuccess)
		setmsg(g, "k_gemm: %s: %s", what, cudaGetErrorString(e));
	return e;
}

k_gemm *
k_gemm_create(char *err, size_t errlen)
{
	k_gemm *g = new (std::nothrow) k_gemm();
	const char *what = "";
	cudaError_t e = cudaSuccess;
	cublasStatus_t s = CUBLAS_STATUS_SUCCESS;
	int dev = 0, l2 = 0;
	const int32_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
	if (!g) {
		if (err && errlen)
			snprintf(err, errlen, "k_gemm: out of host memory");
		return NULL;
	}
#define CREATE_CUDA(call)                       \
	do {                                    \
		if ((e = (call)) != cudaSuccess) { \
			what = #call;           \
			goto fail;              \
		}                               \
	} while (0)
#define CREATE_BLAS(call)                                 \
	do {                                              \
		if ((s = (call)) != CUBLAS_STATUS_SUCCESS) { \
			what = #call;                     \
			goto fail;                        \
		}                                         \
	} while (0)
	CREATE_CUDA(cudaGetDevice(&dev));
	CREATE_CUDA(cudaDeviceGetAttribute(&g->sms, cudaDevAttrMultiProcessorCount, dev));
	CREATE_CUDA(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
	g->l2_bytes = l2 > 0 ? (size_t)l2 : (size_t)64 << 20;
	CREATE_CUDA(cudaMalloc(&g->ws, K_GEMM_WORKSPACE));
	CREATE_CUDA(cudaStreamCreateWithFlags(&g->ts, cudaStreamNonBlocking));
	CREATE_CUDA(cudaEventCreate(&g->e0));
	CREATE_CUDA(cudaEventCreate(&g->e1));
	CREATE_BLAS(cublasLtCreate(&g->lt));
	CREATE_BLAS(cublasCreate(&g->blas));
	CREATE_BLAS(cublasSetMathMode(g->blas, CUBLAS_DEFAULT_MATH));
	CREATE_BLAS(cublasLtMatmulDescInit(&g->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
	CREATE_BLAS(cublasLtMatmulDescSetAttribute(&g->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof op_t));
	CREATE_BLAS(cublasLtMatmulDescSetAttribute(&g->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof op_n));
#undef CREATE_CUDA
#undef CREATE_BLAS
	return g;
fail:
	if (err && errlen) {
		if (e != cudaSuccess)
			snprintf(err, errlen, "k_gemm: %s: %s", what, cudaGetErrorString(e));
		else
			snprintf(err, errlen, "k_gemm: %s: %s", what, cublasGetStatusString(s));
	}
	k_gemm_destroy(g);
	return NULL;
}

void
k_gemm_destroy(k_gemm *g)
{
	if (!g)
		return;
	if (g->blas)
		cublasDestroy(g->blas);
	if (g->lt)
		cublasLtDestroy(g->lt);
	if (g->ts)
		cudaStreamSynchronize(g->ts);
	if (g->e0)
		cudaEventDestroy(g->e0);
	if (g->e1)
		cudaEventDestroy(g->e1);
	if (g->ts)
		cudaStreamDestroy(g->ts);
	cudaFree(g->ws);
	delete g;
}

void
k_gemm_set_plain(k_gemm *g, int plain)
{
	if (g)
		g->plain = plain != 0;
}

const char *
k_gemm_error(const k_gemm *g)
{
	return g ? g->msg : "k_gemm: no handle";
}

// ---- the three paths ---------------------------------------------------------------------

static cudaError_t
blas_launch(k_gemm *g, const bf16 *w, int w_rows, int w_cols, const bf16 *in, int n, float *out, float beta,
	    cudaStream_t st)
{
	cudaError_t e;
	// cublasSetStream resets the workspace, so the two go together.
	if (!g->blas_set || g->blas_st != st) {
		if ((e = blas_fail(g, cublasSetStream(g->blas, st), "cublasSetStream")) != cudaSuccess ||
		    (e = blas_fail(g, cublasSetWorkspace(g->blas, g->ws, K_GEMM_WORKSPACE), "cublasSetWorkspace")) !=
			    cudaSuccess) {
			g->blas_set = false;
			return e;
		}
		g->blas_st = st;
		g->blas_set = true;
	}
	const float alpha = 1.0f;
	return blas_fail(g,
			 cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, w_rows, n, w_cols, &alpha, w, CUDA_R_16BF,
				      w_cols, in, CUDA_R_16BF, w_cols, &beta, out, CUDA_R_32F, w_rows, CUBLAS_COMPUTE_32F,
				      CUBLAS_GEMM_DEFAULT),
			 "cublasGemmEx");
}

static cudaError_t
lt_launch(k_gemm *g, lt_layouts *lay, const cublasLtMatmulAlgo_t *algo, const bf16 *w, const bf16 *in, float *out,
	  float beta, cudaStream_t st)
{
	const float alpha = 1.0f;
	return blas_fail(g,
			 cublasLtMatmul(g->lt, &g->desc, &alpha, w, &lay->a, in, &lay->b, &beta, out, &lay->c, out,
					&lay->c, algo, g->ws, K_GEMM_WORKSPACE, st),
			 "cublasLtMatmul");
}

static cublasStatus_t
layouts_init(lt_layouts *lay, int w_rows, int w_cols, int n)
{
	cublasStatus_t s;
	if ((s = cublasLtMatrixLayoutInit(&lay->a, CUDA_R_16BF, (uint64_t)w_cols, (uint64_t)w_rows, w_cols)) !=
		    CUBLAS_STATUS_SUCCESS ||
	    (s = cublasLtMatrixLayoutInit(&lay->b, CUDA_R_16BF, (uint64_t)w_cols, (uint64_t)n, w_cols)) !=
		    CUBLAS_STATUS_SUCCESS)
		return s;
	return cublasLtMatrixLayoutInit(&lay->c, CUDA_R_32F, (uint64_t)w_rows, (uint64_t)n, w_rows);
}

static bool
lt_aligned(const bf16 *w, const bf16 *in, const float *out)
{
	return aligned(w, 256) && aligned(in, 256) && aligned(out, 256);
}

// The tuned entry of (w_rows, w_cols, n), or NULL.
static entry *
tuned(k_gemm *g, int w_rows, int w_cols, int n)
{
	auto it = g->cache.find(shape_key(w_rows, w_cols, n));
	return it != g->cache.end() ? &it->second : NULL;
}

// Whether k_gemm_run takes the GEMV for (w_rows, w_cols, n) whose tuned
// entry is en (NULL: untuned), pointers aside, and in which configuration.
static bool
gemv_choice(const k_gemm *g, const entry *en, int w_rows, int w_cols, int n, int *ks, int *unroll)
{
	if (g->plain || !gemv_shape(w_cols, n))
		return false;
	if (en) {
		if (en->ch.path != PATH_GEMV)
			return false;
		*ks = en->ch.ks;
		*unroll = en->ch.unroll;
		return true;
	}
	if (n > K_GEMM_GEMV_MAX_N)
		return false;
	gemv_default(g->sms, w_rows, w_cols, ks, unroll);
	return true;
}

cudaError_t
k_gemm_run(k_gemm *g, const bf16 *w, int w_rows, int w_cols, const bf16 *in, int n, float *out, float beta,
	   cudaStream_t st)
{
	if (!g || !w || !in || !out || w_rows <= 0 || w_cols <= 0 || n <= 0)
		return cudaErrorInvalidValue;
	g->msg[0] = '\0';   // k_gemm_error tells of this call only
	if (g->plain)
		return blas_launch(g, w, w_rows, w_cols, in, n, out, beta, st);
	entry *en = tuned(g, w_rows, w_cols, n);
	int ks, unroll;
	if (gemv_choice(g, en, w_rows, w_cols, n, &ks, &unroll) && gemv_fits(w_cols, n, w, in))
		return cuda_fail(g, gemv_launch(w, w_rows, w_cols, in, n, out, beta, ks, unroll, st), "gemv");
	if (en && en->ch.path == PATH_LT && lt_aligned(w, in, out))
		return lt_launch(g, &en->lay, &en->ch.algo, w, in, out, beta, st);
	return blas_launch(g, w, w_rows, w_cols, in, n, out, beta, st);
}

cudaError_t
k_gemm_run_swiglu(k_gemm *g, const bf16 *w, int w_rows, int w_cols, const bf16 *in, int n, bf16 *h, cudaStream_t st)
{
	if (!g || !w || !in || !h || w_rows <= 0 || w_rows % 2 || w_cols <= 0 || n <= 0)
		return cudaErrorInvalidValue;
	g->msg[0] = '\0';
	int ks, unroll;   // gemv_choice declines for a plain k_gemm
	if (!gemv_choice(g, tuned(g, w_rows, w_cols, n), w_rows, w_cols, n, &ks, &unroll) || !gemv_fits(w_cols, n, w, in))
		return cudaErrorNotSupported;
	return cuda_fail(g, gemv_launch(w, w_rows, w_cols, in, n, nullptr, 0.0f, ks, unroll, st, h), "gemv swiglu");
}

cudaError_t
k_gemm_run_norm(k_gemm *g, const bf16 *w, int w_rows, int w_cols, const float *x, const float *nw, float eps,
		float *out, float beta, bf16 *h, cudaStream_t st)
{
	if (!g || !w || !x || !nw || (!out && !h) || w_rows <= 0 || w_cols <= 0 || (h && w_rows % 2))
		return cudaErrorInvalidValue;
	g->msg[0] = '\0';
	int ks, unroll;   // gemv_choice declines for a plain k_gemm
	if (!gemv_choice(g, tuned(g, w_rows, w_cols, 1), w_rows, w_cols, 1, &ks, &unroll) || !gemv_shape(w_cols, 1) ||
	    !aligned(w, 16) || w_cols > GV_NORM_MAX_D)
		return cudaErrorNotSupported;
	const gemv_norm_in nin = { x, nw, eps };
	return cuda_fail(g, gemv_launch(w, w_rows, w_cols, nullptr, 1, h ? nullptr : out, beta, ks, unroll, st, h, &nin),
			 h ? "gemv norm swiglu" : "gemv norm");
}

// One candidate (or k_gemm_run itself for PATH_AUTO).
static cudaError_t
run_choice(k_gemm *g, const choice *c, lt_layouts *lay, const bf16 *w, int w_rows, int w_cols, const bf16 *in, int n,
	   float *out, float beta, cudaStream_t st)
{
	switch (c->path) {
	case PATH_GEMV:
		return cuda_fail(g, gemv_launch(w, w_rows, w_cols, in, n, out, beta, c->ks, c->unroll, st), "gemv");
	case PATH_LT:
		return lt_launch(g, lay, &c->algo, w, in, out, beta, st);
	case PATH_CUBLAS:
		return blas_launch(g, w, w_rows, w_cols, in, n, out, beta, st);
	default:
		return k_gemm_run(g, w, w_rows, w_cols, in, n, out, beta, st);
	}
}

static void
describe_choice(const choice *c, char *buf, size_t len)
{
	if (c->path == PATH_GEMV) {
		snprintf(buf, len, "gemv ks %d unroll %d", c->ks, c->unroll);
	} else if (c->path == PATH_LT) {
		int32_t id = -1, splitk = 1;
		uint32_t tile = 0, red = 0, stages = 0;
		size_t wr;
		cublasLtMatmulAlgoConfigGetAttribute(&c->algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id, &wr);
		cublasLtMatmulAlgoConfigGetAttribute(&c->algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &wr);
		cublasLtMatmulAlgoConfigGetAttribute(&c->algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages,
						     &wr);
		cublasLtMatmulAlgoConfigGetAttribute(&c->algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk,
						     &wr);
		cublasLtMatmulAlgoConfigGetAttribute(&c->algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &red, sizeof red,
						     &wr);
		snprintf(buf, len, "cublasLt algo %d tile %u stages %u splitk %d reduction %u", (int)id, tile, stages,
			 (int)splitk, red);
	} else {
		snprintf(buf, len, "cublasGemmEx");
	}
}

void
k_gemm_describe(const k_gemm *g, int w_rows, int w_cols, int n, char *buf, size_t len)
{
	if (!buf || !len)
		return;
	buf[0] = 0;
	if (!g)
		return;
	if (g->plain) {
		snprintf(buf, len, "cublasGemmEx (plain)");
		return;
	}
	char what[160];
	auto it = g->cache.find(shape_key(w_rows, w_cols, n));
	if (it != g->cache.end()) {
		describe_choice(&it->second.ch, what, sizeof what);
		snprintf(buf, len, "%s (tuned, %.2f us)", what, (double)it->second.us);
		return;
	}
	choice c = {};
	c.path = gemv_choice(g, NULL, w_rows, w_cols, n, &c.ks, &c.unroll) ? PATH_GEMV : PATH_CUBLAS;
	describe_choice(&c, what, sizeof what);
	snprintf(buf, len, "%s (untuned)", what);
}

// ---- timing and tuning -------------------------------------------------------------------

// Scratch for timing: copies of W (each 256-byte aligned) that together
// overflow the L2 several times, so each call streams W from memory as in
// a forward pass; x (n_max, w_cols) and y (n_max, w_rows).
struct bench {
	bf16 *w;
	size_t stride;                // elements between copies
	int copies;
	bf16 *x;
	float *y;
};

__global__ void
fill_bf16_kernel(bf16 *p, size_t count, uint32_t seed)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < count; i += (size_t)gridDim.x * blockDim.x) {
		uint32_t h = (uint32_t)i * 0x9e3779b1u ^ seed ^ (uint32_t)(i >> 32) * 0x85ebca6bu;
		h ^= h >> 16;
		h *= 0x85ebca6bu;
		h ^= h >> 13;
		h *= 0xc2b2ae35u;
		h ^= h >> 16;
		p[i] = __float2bfloat16((float)(h >> 8) * (2.0f / 16777216.0f) - 1.0f);   // [-1, 1)
	}
}

static void
bench_free(bench *b)
{
	cudaFree(b->w);
	cudaFree(b->x);
	cudaFree(b->y);
	memset(b, 0, sizeof *b);
}

static cudaError_t
bench_alloc(k_gemm *g, bench *b, int w_rows, int w_cols, int n_max)
{
	cudaError_t e;
	memset(b, 0, sizeof *b);
	const size_t wbytes = (size_t)w_rows * w_cols * sizeof(bf16);
	const size_t stride_bytes = (wbytes + 255) & ~(size_t)255;
	const size_t target = 3 * g->l2_bytes;
	b->copies = (int)std::min<size_t>(64, std::max<size_t>(1, (target + wbytes - 1) / wbytes));
	b->stride = stride_bytes / sizeof(bf16);
	// Fewer copies when memory is short: slower memory, but still a timing.
	while ((e = cudaMalloc((void **)&b->w, (size_t)b->copies * stride_bytes)) != cudaSuccess) {
		b->w = NULL;
		cudaGetLastError();
		if (b->copies == 1)
			goto fail;
		b->copies = (b->copies + 1) / 2;
	}
	if ((e = cudaMalloc((void **)&b->x, (size_t)n_max * w_cols * sizeof(bf16))) != cudaSuccess ||
	    (e = cudaMalloc((void **)&b->y, (size_t)n_max * w_rows * sizeof(float))) != cudaSuccess)
		goto fail;
	fill_bf16_kernel<<<1024, 256, 0, g->ts>>>(b->w, (size_t)b->copies * b->stride, 0x1234u);
	fill_bf16_kernel<<<256, 256, 0, g->ts>>>(b->x, (size_t)n_max * w_cols, 0x5678u);
	if ((e = cudaGetLastError()) != cudaSuccess ||
	    (e = cudaMemsetAsync(b->y, 0, (size_t)n_max * w_rows * sizeof(float), g->ts)) != cudaSuccess ||
	    (e = cudaStreamSynchronize(g->ts)) != cudaSuccess)
		goto fail;
	return cudaSuccess;
fail:
	cuda_fail(g, e, "timing scratch");
	bench_free(b);
	return e;
}

// Calls per timed replay: every copy once, and at least 256 MiB and 3 calls.
static int
bench_reps(const bench *b, int w_rows, int w_cols)
{
	const size_t wbytes = (size_t)w_rows * w_cols * sizeof(bf16);
	const size_t by_bytes = (((size_t)256 << 20) + wbytes - 1) / wbytes;
	return (int)std::min<size_t>(64, std::max<size_t>({ (size_t)b->copies, by_bytes, (size_t)3 }));
}

// Microseconds per call of choice c (beta 0): reps calls captured into a
// graph on the tuning stream, one warm-up replay, the best of two timed.
static cudaError_t
bench_time(k_gemm *g, bench *b, const choice *c, lt_layouts *lay, int w_rows, int w_cols, int n, int reps, float *us)
{
	cudaGraph_t graph = NULL;
	cudaGraphExec_t exec = NULL;
	cudaError_t e, run_e = cudaSuccess;
	float best = 0.0f;
	// One eager call first: a candidate that fails says so here, and its
	// kernels are loaded before the capture.
	if ((e = run_choice(g, c, lay, b->w, w_rows, w_cols, b->x, n, b->y, 0.0f, g->ts)) != cudaSuccess ||
	    (e = cuda_fail(g, cudaStreamSynchronize(g->ts), "cudaStreamSynchronize")) != cudaSuccess)
		return e;
	if ((e = cudaStreamBeginCapture(g->ts, cudaStreamCaptureModeThreadLocal)) != cudaSuccess)
		return cuda_fail(g, e, "cudaStreamBeginCapture");
	for (int r = 0; r < reps && run_e == cudaSuccess; r++)
		run_e = run_choice(g, c, lay, b->w + (size_t)(r % b->copies) * b->stride, w_rows, w_cols, b->x, n, b->y,
				   0.0f, g->ts);
	e = cudaStreamEndCapture(g->ts, &graph);
	if (run_e != cudaSuccess) {
		e = run_e;
		goto done;
	}
	if (e != cudaSuccess || (e = cudaGraphInstantiate(&exec, graph, 0)) != cudaSuccess ||
	    (e = cudaGraphLaunch(exec, g->ts)) != cudaSuccess)
		goto done;
	for (int i = 0; i < 2; i++) {
		float ms = 0.0f;
		if ((e = cudaEventRecord(g->e0, g->ts)) != cudaSuccess || (e = cudaGraphLaunch(exec, g->ts)) != cudaSuccess ||
		    (e = cudaEventRecord(g->e1, g->ts)) != cudaSuccess || (e = cudaEventSynchronize(g->e1)) != cudaSuccess ||
		    (e = cudaEventElapsedTime(&ms, g->e0, g->e1)) != cudaSuccess)
			goto done;
		if (i == 0 || ms < best)
			best = ms;
	}
	*us = best * 1000.0f / (float)reps;
done:
	if (e != cudaSuccess)
		cuda_fail(g, e, "timing");
	if (exec)
		cudaGraphExecDestroy(exec);
	if (graph)
		cudaGraphDestroy(graph);
	return e;
}

static bool
lt_deterministic(const cublasLtMatmulAlgo_t *algo)
{
	int32_t splitk = 1;
	uint32_t red = CUBLASLT_REDUCTION_SCHEME_NONE;
	size_t wr = 0;
	if (cublasLtMatmulAlgoConfigGetAttribute(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk, &wr) !=
		    CUBLAS_STATUS_SUCCESS ||
	    cublasLtMatmulAlgoConfigGetAttribute(algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &red, sizeof red, &wr) !=
		    CUBLAS_STATUS_SUCCESS)
		return false;
	if (splitk <= 1)
		return true;
	return red != CUBLASLT_REDUCTION_SCHEME_NONE && (red & ~(uint32_t)(K_GEMM_LT_REDUCTIONS)) == 0;
}

// The candidates for (w_rows, w_cols, n): GEMV configurations, cuBLASLt
// heuristics, cublasGemmEx.
static cudaError_t
candidates(k_gemm *g, lt_layouts *lay, int w_cols, int n, std::vector<choice> *out)
{
	choice c = {};
	if (n <= K_GEMM_GEMV_TUNE_MAX_N && gemv_shape(w_cols, n)) {
		const int steps = (w_cols + 31) / 32;
		static const int kss[] = { 1, 2, 4, 8 }, unrolls[] = { 4, 8 };
		for (int ks : kss)
			for (int u : unrolls)
				if (ks <= steps) {
					c.path = PATH_GEMV;
					c.ks = ks;
					c.unroll = u;
					out->push_back(c);
				}
	}
	cublasLtMatmulPreferenceOpaque_t pref;
	const uint64_t ws = K_GEMM_WORKSPACE;
	cublasLtMatmulHeuristicResult_t res[K_GEMM_LT_CANDIDATES];
	int got = 0;
	cublasStatus_t s;
	if ((s = cublasLtMatmulPreferenceInit(&pref)) != CUBLAS_STATUS_SUCCESS ||
	    (s = cublasLtMatmulPreferenceSetAttribute(&pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
						      sizeof ws)) != CUBLAS_STATUS_SUCCESS)
		return blas_fail(g, s, "cuBLASLt preference");
	s = cublasLtMatmulAlgoGetHeuristic(g->lt, &g->desc, &lay->a, &lay->b, &lay->c, &lay->c, &pref,
					   K_GEMM_LT_CANDIDATES, res, &got);
	if (s == CUBLAS_STATUS_SUCCESS) {
		for (int i = 0; i < got; i++)
			if (res[i].state == CUBLAS_STATUS_SUCCESS && res[i].workspaceSize <= K_GEMM_WORKSPACE &&
			    lt_deterministic(&res[i].algo)) {
				c = choice();
				c.path = PATH_LT;
				c.algo = res[i].algo;
				out->push_back(c);
			}
	} else if (s != CUBLAS_STATUS_NOT_SUPPORTED) {
		return blas_fail(g, s, "cublasLtMatmulAlgoGetHeuristic");
	}
	c = choice();
	c.path = PATH_CUBLAS;
	out->push_back(c);
	return cudaSuccess;
}

cudaError_t
k_gemm_tune(k_gemm *g, int w_rows, int w_cols, const int *buckets, int nb, cudaStream_t st)
{
	if (!g)
		return cudaErrorInvalidValue;
	g->msg[0] = '\0';
	if (w_rows <= 0 || w_cols <= 0 || !buckets || nb <= 0) {
		setmsg(g, "k_gemm_tune: bad arguments (w_rows %d, w_cols %d, nb %d)", w_rows, w_cols, nb);
		return cudaErrorInvalidValue;
	}
	int n_max = 0;
	for (int i = 0; i < nb; i++) {
		if (buckets[i] <= 0) {
			setmsg(g, "k_gemm_tune: bucket %d is %d", i, buckets[i]);
			return cudaErrorInvalidValue;
		}
		n_max = std::max(n_max, buckets[i]);
	}
	cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
	cudaError_t e = cudaStreamIsCapturing(st, &cs);
	if (e != cudaSuccess)
		return cuda_fail(g, e, "cudaStreamIsCapturing");
	if (cs != cudaStreamCaptureStatusNone) {
		setmsg(g, "k_gemm_tune: called during stream capture");
		return cudaErrorStreamCaptureUnsupported;
	}
	if ((e = cudaStreamSynchronize(st)) != cudaSuccess)
		return cuda_fail(g, e, "cudaStreamSynchronize");
	bench b;
	if ((e = bench_alloc(g, &b, w_rows, w_cols, n_max)) != cudaSuccess)
		return e;
	const int reps = bench_reps(&b, w_rows, w_cols);
	for (int i = 0; i < nb && e == cudaSuccess; i++) {
		const int n = buckets[i];
		entry en = {};
		std::vector<choice> cands;
		cublasStatus_t s = layouts_init(&en.lay, w_rows, w_cols, n);
		if (s != CUBLAS_STATUS_SUCCESS) {
			e = blas_fail(g, s, "cublasLtMatrixLayoutInit");
			break;
		}
		try {
			e = candidates(g, &en.lay, w_cols, n, &cands);
		} catch (const std::bad_alloc &) {
			setmsg(g, "k_gemm_tune: out of host memory");
			e = cudaErrorMemoryAllocation;
		}
		if (e != cudaSuccess)
			break;
		bool found = false;
		for (const choice &c : cands) {
			float us = 0.0f;
			if (bench_time(g, &b, &c, &en.lay, w_rows, w_cols, n, reps, &us) != cudaSuccess) {
				// A candidate that fails is skipped; a broken
				// context shows in the next synchronisation.
				cudaGetLastError();
				if ((e = cudaStreamSynchronize(g->ts)) != cudaSuccess)
					break;
				continue;
			}
			if (!found || us < en.us) {
				en.ch = c;
				en.us = us;
				found = true;
			}
		}
		if (e != cudaSuccess) {
			cuda_fail(g, e, "tuning");
			break;
		}
		if (!found) {
			// Not even cublasGemmEx ran: g->msg says why.
			e = cudaErrorUnknown;
			break;
		}
		try {
			g->cache[shape_key(w_rows, w_cols, n)] = en;
		} catch (const std::bad_alloc &) {
			setmsg(g, "k_gemm_tune: out of host memory");
			e = cudaErrorMemoryAllocation;
		}
	}
	bench_free(&b);
	if (e == cudaSuccess)
		g->msg[0] = '\0';   // candidates that failed and were skipped are no error of the call
	return e;
}

// ---- check wrappers (gemm_check.h) ---------------------------------------------------------

static int
kc_err(char *err, int errlen, int status, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int
kc_err(char *err, int errlen, int status, const char *fmt, ...)
{
	if (err && errlen > 0) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, (size_t)errlen, fmt, ap);
		va_end(ap);
	}
	return status;
}

// What one wrapper call owns.
struct kc_run {
	const char *fn;
	char *err;
	int errlen;
	cudaStream_t s;
	k_gemm *g;
	bf16 *w, *x;
	float *y, *y0;
};

static int
kc_cuda(kc_run *r, cudaError_t e, const char *what)
{
	return kc_err(r->err, r->errlen, ENG_ERR_DEVICE, "%s: %s: %s%s%s", r->fn, what, cudaGetErrorString(e),
		      r->g && r->g->msg[0] ? " - " : "", r->g ? r->g->msg : "");
}

static void
kc_end(kc_run *r)
{
	if (r->s)
		cudaStreamSynchronize(r->s);
	k_gemm_destroy(r->g);
	cudaFree(r->w);
	cudaFree(r->x);
	cudaFree(r->y);
	cudaFree(r->y0);
	if (r->s)
		cudaStreamDestroy(r->s);
}

// A device bf16 copy of host f32 src[count], rounded to nearest even.
static cudaError_t
kc_upload_bf16(bf16 **dst, const float *src, size_t count, cudaStream_t s)
{
	std::vector<bf16> h;
	try {
		h.resize(count);
	} catch (const std::bad_alloc &) {
		return cudaErrorMemoryAllocation;
	}
	for (size_t i = 0; i < count; i++)
		h[i] = __float2bfloat16(src[i]);
	cudaError_t e = cudaMalloc((void **)dst, count * sizeof(bf16));
	if (e != cudaSuccess) {
		*dst = NULL;
		return e;
	}
	if ((e = cudaMemcpyAsync(*dst, h.data(), count * sizeof(bf16), cudaMemcpyHostToDevice, s)) != cudaSuccess)
		return e;
	return cudaStreamSynchronize(s);   // h goes out of scope
}

// In the wrappers below (a kc_run R, cudaError_t e, int rc, label done):
// the call, or on failure its message in R's err and a jump to done.
#define KC(call)                                           \
	do {                                               \
		if ((e = (call)) != cudaSuccess) {         \
			rc = kc_cuda(&R, e, #call);        \
			goto done;                         \
		}                                          \
	} while (0)

// The common body: path PATH_AUTO (k_gemm_run, tuned for n when tune) or
// PATH_GEMV (configuration ks, unroll); runs calls, each from the same y.
static int
kc_gemm_case(const char *fn, const float *w, int rows, int cols, const float *x, int n, float beta, float *y,
	     int tune, int path, int ks, int unroll, int runs, int *identical, char *what, int whatlen, char *err,
	     int errlen)
{
	if (what && whatlen > 0)
		what[0] = 0;
	if (!w || !x || !y || rows <= 0 || cols <= 0 || n <= 0 || runs < 1)
		return kc_err(err, errlen, ENG_ERR_INVALID, "%s: bad arguments (rows %d, cols %d, n %d, runs %d)", fn,
			      rows, cols, n, runs);
	if (path == PATH_GEMV) {
		if (!gemv_config_ok(ks, unroll))
			return kc_err(err, errlen, ENG_ERR_INVALID, "%s: no GEMV configuration ks %d unroll %d", fn, ks,
				      unroll);
		if (!gemv_shape(cols, n))
			return kc_err(err, errlen, ENG_ERR_UNSUPPORTED, "%s: the GEMV takes n <= 16 and cols %% 8 == 0 "
				      "(n %d, cols %d)", fn, n, cols);
	}
	kc_run R = { fn, err, errlen };
	int rc = 0;
	cudaError_t e;
	const size_t ybytes = (size_t)n * rows * sizeof(float);
	std::vector<float> other;
	char gerr[ENG_ERRLEN] = "";
	if (identical)
		*identical = 1;
	KC(cudaStreamCreateWithFlags(&R.s, cudaStreamNonBlocking));
	if (path != PATH_GEMV && !(R.g = k_gemm_create(gerr, sizeof gerr))) {
		rc = kc_err(err, errlen, ENG_ERR_DEVICE, "%s: %s", fn, gerr);
		goto done;
	}
	KC(kc_upload_bf16(&R.w, w, (size_t)rows * cols, R.s));
	KC(kc_upload_bf16(&R.x, x, (size_t)n * cols, R.s));
	KC(cudaMalloc((void **)&R.y, ybytes));
	KC(cudaMalloc((void **)&R.y0, ybytes));
	KC(cudaMemcpyAsync(R.y0, y, ybytes, cudaMemcpyHostToDevice, R.s));
	if (path == PATH_AUTO && tune)
		KC(k_gemm_tune(R.g, rows, cols, &n, 1, R.s));
	if (runs > 1) {
		try {
			other.resize((size_t)n * rows);
		} catch (const std::bad_alloc &) {
			rc = kc_err(err, errlen, ENG_ERR_NOMEM, "%s: out of host memory", fn);
			goto done;
		}
	}
	for (int r = 0; r < runs; r++) {
		KC(cudaMemcpyAsync(R.y, R.y0, ybytes, cudaMemcpyDeviceToDevice, R.s));
		if (path == PATH_GEMV)
			KC(gemv_launch(R.w, rows, cols, R.x, n, R.y, beta, ks, unroll, R.s));
		else
			KC(k_gemm_run(R.g, R.w, rows, cols, R.x, n, R.y, beta, R.s));
		KC(cudaMemcpyAsync(r == 0 ? y : other.data(), R.y, ybytes, cudaMemcpyDeviceToHost, R.s));
		KC(cudaStreamSynchronize(R.s));
		if (r > 0 && identical && memcmp(y, other.data(), ybytes) != 0)
			*identical = 0;
	}
	if (what && whatlen > 0) {
		if (path == PATH_GEMV)
			snprintf(what, (size_t)whatlen, "gemv ks %d unroll %d (forced)", ks, unroll);
		else
			k_gemm_describe(R.g, rows, cols, n, what, (size_t)whatlen);
	}
done:
	kc_end(&R);
	return rc;
}

extern "C" int
kc_gemm_run(const float *w, int rows, int cols, const float *x, int n, float beta, float *y, int tune, char *err,
	    int errlen)
{
	return kc_gemm_run_what(w, rows, cols, x, n, beta, y, tune, NULL, 0, err, errlen);
}

extern "C" int
kc_gemm_run_what(const float *w, int rows, int cols, const float *x, int n, float beta, float *y, int tune,
		 char *what, int whatlen, char *err, int errlen)
{
	return kc_gemm_case("kc_gemm_run", w, rows, cols, x, n, beta, y, tune, PATH_AUTO, 0, 0, 1, NULL, what,
			    whatlen, err, errlen);
}

extern "C" int
kc_gemm_gemv(const float *w, int rows, int cols, const float *x, int n, float beta, float *y, int ks, int unroll,
	     char *err, int errlen)
{
	return kc_gemm_case("kc_gemm_gemv", w, rows, cols, x, n, beta, y, 0, PATH_GEMV, ks, unroll, 1, NULL, NULL, 0,
			    err, errlen);
}

extern "C" int
kc_gemm_gemv_swiglu(const float *w, int rows, int cols, const float *x, int n, int ks, int unroll, float *h,
		    char *err, int errlen)
{
	const char *fn = "kc_gemm_gemv_swiglu";
	if (!w || !x || !h || rows <= 0 || rows % 2 || cols <= 0 || n <= 0)
		return kc_err(err, errlen, ENG_ERR_INVALID, "%s: bad arguments (rows %d, cols %d, n %d)", fn, rows, cols,
			      n);
	if (!gemv_config_ok(ks, unroll))
		return kc_err(err, errlen, ENG_ERR_INVALID, "%s: no GEMV configuration ks %d unroll %d", fn, ks, unroll);
	if (!gemv_shape(cols, n))
		return kc_err(err, errlen, ENG_ERR_UNSUPPORTED, "%s: the GEMV takes n <= 16 and cols %% 8 == 0", fn);
	kc_run R = { fn, err, errlen };
	int rc = 0;
	cudaError_t e;
	const size_t nh = (size_t)n * (rows / 2);
	std::vector<bf16> hb(nh);
	KC(cudaStreamCreateWithFlags(&R.s, cudaStreamNonBlocking));
	KC(kc_upload_bf16(&R.w, w, (size_t)rows * cols, R.s));
	KC(kc_upload_bf16(&R.x, x, (size_t)n * cols, R.s));
	KC(cudaMalloc((void **)&R.y, nh * sizeof(bf16)));
	KC(cudaMemsetAsync(R.y, 0xff, nh * sizeof(bf16), R.s));   // NaNs: an element not written shows
	KC(gemv_launch(R.w, rows, cols, R.x, n, nullptr, 0.0f, ks, unroll, R.s, (bf16 *)R.y));
	KC(cudaMemcpyAsync(hb.data(), R.y, nh * sizeof(bf16), cudaMemcpyDeviceToHost, R.s));
	KC(cudaStreamSynchronize(R.s));
	for (size_t i = 0; i < nh; i++)
		h[i] = __bfloat162float(hb[i]);
done:
	kc_end(&R);
	return rc;
}

extern "C" int
kc_gemm_gemv_norm(const float *w, int rows, int cols, const float *x, const float *nw, float eps, int ks, int unroll,
		  int swiglu, float beta, float *y, int *identical, char *err, int errlen)
{
	const char *fn = "kc_gemm_gemv_norm";
	if (!w || !x || !nw || !y || !identical || rows <= 0 || (swiglu && rows % 2) || cols <= 0)
		return kc_err(err, errlen, ENG_ERR_INVALID, "%s: bad arguments (rows %d, cols %d)", fn, rows, cols);
	if (!gemv_config_ok(ks, unroll))
		return kc_err(err, errlen, ENG_ERR_INVALID, "%s: no GEMV configuration ks %d unroll %d", fn, ks, unroll);
	if (!gemv_shape(cols, 1) || cols > GV_NORM_MAX_D)
		return kc_err(err, errlen, ENG_ERR_UNSUPPORTED, "%s: the GEMV takes cols %% 8 == 0, <= %d", fn,
			      GV_NORM_MAX_D);
	kc_run R = { fn, err, errlen };
	int rc = 0;
	cudaError_t e;
	const size_t ny = swiglu ? (size_t)rows / 2 : (size_t)rows, ybytes = ny * (swiglu ? sizeof(bf16) : sizeof(float));
	gemv_norm_in nin = {};
	float *xf = NULL, *dnw = NULL;
	bf16 *xb = NULL;
	std::vector<unsigned char> a(ybytes), b(ybytes);
	KC(cudaStreamCreateWithFlags(&R.s, cudaStreamNonBlocking));
	KC(kc_upload_bf16(&R.w, w, (size_t)rows * cols, R.s));
	KC(cudaMalloc((void **)&xf, (size_t)cols * sizeof(float)));
	KC(cudaMalloc((void **)&dnw, (size_t)cols * sizeof(float)));
	KC(cudaMalloc((void **)&xb, (size_t)cols * sizeof(bf16)));
	KC(cudaMalloc((void **)&R.y, ybytes));
	KC(cudaMalloc((void **)&R.y0, ybytes));
	KC(cudaMemcpyAsync(xf, x, (size_t)cols * sizeof(float), cudaMemcpyHostToDevice, R.s));
	KC(cudaMemcpyAsync(dnw, nw, (size_t)cols * sizeof(float), cudaMemcpyHostToDevice, R.s));
	nin = gemv_norm_in{ xf, dnw, eps };
	// The separate kernels, then the fused GEMV, each from the same y.
	for (int pass = 0; pass < 2; pass++) {
		if (swiglu)
			KC(cudaMemsetAsync(R.y, 0xff, ybytes, R.s));   // NaNs: an element not written shows
		else
			KC(cudaMemcpyAsync(R.y, y, ybytes, cudaMemcpyHostToDevice, R.s));
		if (pass == 0) {
			KC(k_rmsnorm(xf, NULL, NULL, dnw, 1, cols, eps, xb, R.s));
			KC(gemv_launch(R.w, rows, cols, xb, 1, swiglu ? nullptr : (float *)R.y, beta, ks, unroll, R.s,
				       swiglu ? (bf16 *)R.y : nullptr));
		} else {
			KC(gemv_launch(R.w, rows, cols, nullptr, 1, swiglu ? nullptr : (float *)R.y, beta, ks, unroll, R.s,
				       swiglu ? (bf16 *)R.y : nullptr, &nin));
		}
		KC(cudaMemcpyAsync(pass ? b.data() : a.data(), R.y, ybytes, cudaMemcpyDeviceToHost, R.s));
		KC(cudaStreamSynchronize(R.s));
	}
	*identical = memcmp(a.data(), b.data(), ybytes) == 0;
	for (size_t i = 0; i < ny; i++)
		y[i] = swiglu ? __bfloat162float(((const bf16 *)b.data())[i]) : ((const float *)b.data())[i];
done:
	if (R.s)
		cudaStreamSynchronize(R.s);
	cudaFree(xf);
	cudaFree(dnw);
	cudaFree(xb);
	kc_end(&R);
	return rc;
}

extern "C" int
kc_gemm_repeat(const float *w, int rows, int cols, const float *x, int n, float beta, float *y, int tune, int runs,
	       int *identical, char *err, int errlen)
{
	if (!identical || runs < 2)
		return kc_err(err, errlen, ENG_ERR_INVALID, "kc_gemm_repeat: needs runs >= 2 and identical");
	return kc_gemm_case("kc_gemm_repeat", w, rows, cols, x, n, beta, y, tune, PATH_AUTO, 0, 0, runs, identical,
			    NULL, 0, err, errlen);
}

extern "C" int
kc_gemm_time(int rows, int cols, int n, int path, int reps, double *us, char *what, int whatlen, char *err,
	     int errlen)
{
	const char *fn = "kc_gemm_time";
	if (what && whatlen > 0)
		what[0] = 0;
	if (!us || rows <= 0 || cols <= 0 || n <= 0 || reps < 0 || path < KC_GEMM_GEMV || path > KC_GEMM_CUBLAS)
		return kc_err(err, errlen, ENG_ERR_INVALID, "%s: bad arguments (rows %d, cols %d, n %d, path %d)", fn,
			      rows, cols, n, path);
	if (path == KC_GEMM_GEMV && !gemv_shape(cols, n))
		return kc_err(err, errlen, ENG_ERR_UNSUPPORTED, "%s: the GEMV takes n <= 16 and cols %% 8 == 0", fn);
	kc_run R = { fn, err, errlen };
	bench b = {};
	choice c = {};
	float t = 0.0f;
	int rc = 0;
	cudaError_t e;
	char gerr[ENG_ERRLEN] = "";
	if (!(R.g = k_gemm_create(gerr, sizeof gerr)))
		return kc_err(err, errlen, ENG_ERR_DEVICE, "%s: %s", fn, gerr);
	// Tuning (its own scratch copies of W, freed when it returns) before
	// this timing's copies, so that the two are never held together.
	if (path == KC_GEMM_GEMV) {
		c.path = PATH_GEMV;
		gemv_default(R.g->sms, rows, cols, &c.ks, &c.unroll);
	} else if (path == KC_GEMM_CUBLAS) {
		c.path = PATH_CUBLAS;
	} else {
		c.path = PATH_AUTO;
		if ((e = k_gemm_tune(R.g, rows, cols, &n, 1, R.g->ts)) != cudaSuccess) {
			rc = kc_cuda(&R, e, "k_gemm_tune");
			goto done;
		}
	}
	if ((e = bench_alloc(R.g, &b, rows, cols, n)) != cudaSuccess) {
		rc = kc_cuda(&R, e, "bench_alloc");
		goto done;
	}
	// No cuBLASLt layouts: none of these paths reads them (PATH_AUTO runs
	// k_gemm_run with its tuned entry's own).
	if ((e = bench_time(R.g, &b, &c, NULL, rows, cols, n, reps ? reps : 20, &t)) != cudaSuccess) {
		rc = kc_cuda(&R, e, "bench_time");
		goto done;
	}
	*us = t;
	if (what && whatlen > 0) {
		if (c.path == PATH_AUTO)
			k_gemm_describe(R.g, rows, cols, n, what, (size_t)whatlen);
		else
			describe_choice(&c, what, (size_t)whatlen);
	}
done:
	bench_free(&b);
	kc_end(&R);
	return rc;
}
