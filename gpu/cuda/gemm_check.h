/* gemm_check.h - host wrappers (kc_gemm_) that run the projections of
 * gpu/cuda/gemm.cu (k_gemm) on host arrays, for tests/gpu/test_cuda_gemm.c.
 * Any one thread at a time; synchronous: each call makes its own k_gemm and
 * stream, uploads, runs, downloads and frees everything.
 *
 * As in check.h: W and x are passed in f32 and rounded to bf16 (nearest
 * even) on the way in, so a caller builds its reference from the same
 * rounded values; y is in/out (uploaded first, so beta = 1 accumulates into
 * it and, with beta = 0, an element not written keeps its value).
 * Every function returns an enum eng_status: 0, ENG_ERR_INVALID for bad
 * arguments, ENG_ERR_UNSUPPORTED for a GEMV configuration that cannot take
 * the shape, ENG_ERR_NOMEM, or ENG_ERR_DEVICE; err (errlen bytes, may be
 * NULL) then says why. */
#ifndef BRAID_GEMM_CHECK_H
#define BRAID_GEMM_CHECK_H

#ifdef __cplusplus
extern "C" {
#endif

/* y(n, rows) = x(n, cols) . W^T + beta * y through k_gemm_run, W (rows, cols)
 * row-major; tuned for this n first (k_gemm_tune) when tune != 0, else the
 * untuned choice.  what (whatlen bytes, may be NULL) gets the path taken
 * (k_gemm_describe). */
int kc_gemm_run(const float *w, int rows, int cols, const float *x, int n, float beta, float *y, int tune,
		char *err, int errlen);
int kc_gemm_run_what(const float *w, int rows, int cols, const float *x, int n, float beta, float *y, int tune,
		     char *what, int whatlen, char *err, int errlen);

/* The same through one GEMV configuration: ks warps of a CTA split K
 * (1, 2, 4 or 8), unroll 16-byte loads of W in flight per thread (4 or 8);
 * n <= 16, cols % 8 == 0. */
int kc_gemm_gemv(const float *w, int rows, int cols, const float *x, int n, float beta, float *y, int ks,
		 int unroll, char *err, int errlen);

/* The GEMV in configuration (ks, unroll) with its SwiGLU epilogue: W's rows
 * interleave gate and up (row 2j gate j, row 2j+1 up j); h(n, rows / 2) =
 * bf16(silu(gate) * up), returned as f32. */
int kc_gemm_gemv_swiglu(const float *w, int rows, int cols, const float *x, int n, int ks, int unroll, float *h,
			char *err, int errlen);

/* One row through the GEMV in configuration (ks, unroll) with its input
 * normalised in the kernel (k_gemm_run_norm's kernel): x (cols, f32) RMS-
 * normalised with nw and eps (cols <= 4096).  y gets the fused kernel's result: y(rows) =
 * . + beta * y, or with swiglu h(rows / 2) as f32 (rows interleave gate and
 * up); *identical 1 when k_rmsnorm followed by the plain GEMV gave the same
 * bits. */
int kc_gemm_gemv_norm(const float *w, int rows, int cols, const float *x, const float *nw, float eps, int ks,
		      int unroll, int swiglu, float beta, float *y, int *identical, char *err, int errlen);

/* runs (>= 2) calls of k_gemm_run on one k_gemm (tuned for n when tune),
 * each from the same y; y gets the first result, *identical 1 when every
 * run gave the same bits, else 0. */
int kc_gemm_repeat(const float *w, int rows, int cols, const float *x, int n, float beta, float *y, int tune,
		   int runs, int *identical, char *err, int errlen);

/* Paths kc_gemm_time can time. */
enum kc_gemm_path {
	KC_GEMM_GEMV = 0,      /* the GEMV in its untuned configuration (n <= 16) */
	KC_GEMM_TUNED = 1,     /* k_gemm_run after k_gemm_tune for this n         */
	KC_GEMM_CUBLAS = 2,    /* cublasGemmEx, as the backend's gemm()           */
};

/* Microseconds per call (*us) of one path on random bf16 data, beta 0:
 * reps calls (>= 1; 20 if 0) rotating over enough copies of W to miss the
 * L2 cache, replayed in a CUDA graph after one warm-up replay, timed with
 * CUDA events.  what (may be NULL) gets the path taken. */
int kc_gemm_time(int rows, int cols, int n, int path, int reps, double *us, char *what, int whatlen, char *err,
		 int errlen);

#ifdef __cplusplus
}
#endif

#endif
