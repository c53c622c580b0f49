// gemm.cuh - the backend's projections: out(n, w_rows) f32 (+)= in(n, w_cols)
// bf16 . W^T, W bf16 (w_rows, w_cols) row-major.  A thin tensor-core GEMV
// for a few rows, cuBLASLt with autotuned algorithms for more, cublasGemmEx
// as the fallback (gemm.cu).  Engine thread: one k_gemm is used by one thread.
#ifndef BRAID_GEMM_CUH
#define BRAID_GEMM_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>

typedef __nv_bfloat16 bf16;

// Rows n up to which k_gemm_run uses the GEMV for an untuned n, and up to
// which k_gemm_tune times it as a candidate (the kernel takes n <= 16).
#define K_GEMM_GEMV_MAX_N 8
#define K_GEMM_GEMV_TUNE_MAX_N 16

// Workspace that k_gemm owns for cuBLASLt and cuBLAS (shared: every call of
// one k_gemm must be ordered on one stream, as the backend's are).
#define K_GEMM_WORKSPACE ((size_t)32 << 20)

// One per backend: cuBLASLt and cuBLAS handles, the workspace, the cache of
// tuned algorithms per (w_rows, w_cols, n).
struct k_gemm;

// NULL and a message in err (errlen bytes) on failure.  Needs a current device.
k_gemm *k_gemm_create(char *err, size_t errlen);

// Frees everything; NULL is ok.  The caller makes sure no call is in flight.
void k_gemm_destroy(k_gemm *g);

// Choose and cache the fastest algorithm for every n in buckets[0..nb) for
// this shape (used for beta 0 and 1 alike; timed with beta 0), by timing the
// candidates - the GEMV configurations for n <= K_GEMM_GEMV_TUNE_MAX_N, up
// to 16 deterministic cuBLASLt heuristics, cublasGemmEx - replayed in CUDA
// graphs on scratch copies of W (enough to defeat the L2 cache) that it
// allocates and frees itself; the caller's data is never touched.
// Synchronous: waits for st first, runs on a private stream.  Must be called
// outside stream capture.  Re-tuning a shape replaces its entries.
// cudaSuccess or an error (k_gemm_error says more).
cudaError_t k_gemm_tune(k_gemm *g, int w_rows, int w_cols, const int *buckets, int nb, cudaStream_t st);

// out(n, w_rows) f32 = in(n, w_cols) bf16 . W^T + beta * out (beta 0: out is
// only written, never read), W bf16 (w_rows, w_cols) row-major; n >= 1.
// Enqueues on st and returns: no sync, no allocation, no timing, so it can
// be captured into a CUDA graph.  A tuned (w_rows, w_cols, n) runs its tuned
// algorithm; otherwise the GEMV for n <= K_GEMM_GEMV_MAX_N, cublasGemmEx
// above.  The GEMV needs w_cols % 8 == 0 and 16-byte aligned w and in, the
// cuBLASLt algorithms 256-byte aligned w, in and out (cudaMalloc bases);
// without them the call takes cublasGemmEx.  Deterministic: the same inputs
// give bit-identical outputs on every call (no atomics, no unordered
// split-K).  cudaSuccess, cudaErrorInvalidValue for bad arguments, or the
// launch / cuBLAS error.
cudaError_t k_gemm_run(k_gemm *g, const bf16 *w, int w_rows, int w_cols, const bf16 *in, int n, float *out,
		       float beta, cudaStream_t st);

// Where k_gemm_run would take the GEMV for (w_rows, w_cols, n): the same
// GEMV with W's rows interleaving gate and up projections (row 2j gate j,
// row 2j+1 up j), writing h(n, w_rows / 2) bf16 = silu(gate) * up - the
// values k_gemm_run and k_swiglu give - with no f32 output.
// cudaErrorNotSupported where k_gemm_run would not take the GEMV (then run
// k_gemm_run and k_swiglu); enqueues on st like k_gemm_run.
cudaError_t k_gemm_run_swiglu(k_gemm *g, const bf16 *w, int w_rows, int w_cols, const bf16 *in, int n, bf16 *h,
			      cudaStream_t st);

// For one row (n = 1) where k_gemm_run would take the GEMV: its input
// computed in the kernel from x (f32, w_cols: row 0) as k_rmsnorm(x, nw,
// eps) writes it - the same bf16 values, bit for bit - so that the norm
// needs no kernel of its own; out (+)= as k_gemm_run, or, with h != NULL,
// h = silu(gate) * up as k_gemm_run_swiglu (out unused).  w_cols <= 4096.
// cudaErrorNotSupported where k_gemm_run would not take
// the GEMV (then run k_rmsnorm and the plain call); enqueues on st like
// k_gemm_run.
cudaError_t k_gemm_run_norm(k_gemm *g, const bf16 *w, int w_rows, int w_cols, const float *x, const float *nw,
			    float eps, float *out, float beta, bf16 *h, cudaStream_t st);

// With plain != 0 every k_gemm_run takes cublasGemmEx, tuned or not (for
// comparisons with the GEMV and cuBLASLt paths).
void k_gemm_set_plain(k_gemm *g, int plain);

// What k_gemm_run does for this shape and n ("gemv ks 4 unroll 8", "lt algo
// 21 tile 18 splitk 1", "cublasGemmEx", "cublasGemmEx (plain)"), into buf (len bytes); for logs.
void k_gemm_describe(const k_gemm *g, int w_rows, int w_cols, int n, char *buf, size_t len);

// The message of the last failure of g (empty when none); lives as long as g.
const char *k_gemm_error(const k_gemm *g);

#endif
