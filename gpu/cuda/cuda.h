/* cuda.h - the C entry points of the CUDA backend (the .cu files in gpu/cuda),
 * callable from C on the engine thread.  Every int function returns an enum
 * eng_status; on ENG_ERR_DEVICE the CUDA error is in err. */
#ifndef BRAID_CUDA_H
#define BRAID_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "sampler.h"

#ifdef __cplusplus
extern "C" {
#endif

struct model;
struct backend;

/* Number of usable CUDA devices (0 when there is no driver or no GPU). */
int cuda_device_count(void);

/* Name and memory of device dev; name gets at most cap bytes. */
int cuda_device_info(int dev, char *name, int cap, size_t *total_bytes, size_t *free_bytes);

/* Round-trip check of the device: upload x[n], compute y = a*x + b on the
 * GPU, download into y.  ENG_ERR_DEVICE (with the CUDA error in err) on any
 * failing call. */
int cuda_selftest_axpb(const float *x, float *y, int n, float a, float b, char *err, int errlen);

/* Device-to-device copy bandwidth of device 0 in GB/s (1e9 bytes/s), counting
 * the bytes read plus the bytes written: the best of several timed copies of
 * a buffer of `bytes` bytes (0 = 1 GiB).  This is the decode roofline. */
int cuda_copy_bandwidth(size_t bytes, double *gbps, char *err, int errlen);

/* ---- the backend (gpu/cuda/backend.cu) ------------------------------------ */

struct cuda_backend_params {
	size_t kv_bytes;        /* KV pool bytes; 0 = auto: 90% of the memory
				   left free after weights and buffers        */
	int block_tokens;       /* positions per KV block (> 0)                */
	int max_rows;           /* rows per forward pass (> 0)                 */
	int max_seqs;           /* logits slots: sequence ids 0..max_seqs-1    */
	int graphs;             /* 1 = CUDA graphs for passes of <= 256 rows   */
};

/* Upload m's weights (bf16 on the device; f16/f32 converted), allocate the
 * KV pool, activations and logits slots on device 0.  The number of KV
 * blocks allocated goes to *n_blocks.  ENG_ERR_DEVICE without a usable GPU,
 * ENG_ERR_NOMEM when the model does not fit (err says how much was asked
 * and how much was free). */
int cuda_backend_create(const struct model *m, const struct cuda_backend_params *p,
			struct backend *out, int *n_blocks, char *err, size_t errlen);

/* ---- sampling on the device (gpu/cuda/sample.cu) ---------------------------- */

/* struct cuda_samp_row (one row to sample) is in backend.h. */

/* Device scratch bytes cuda_sample_launch needs for up to max_rows rows. */
size_t cuda_sample_scratch_bytes(int max_rows, int vocab);

/* Sample rows[n] (device array) from logits (device, (n_slots, vocab)) on
 * stream (a cudaStream_t; NULL = the default stream), with the semantics of
 * samp_sample(): token, logprob, entropy and top logprobs of the model's own
 * distribution; the filters temperature, top-k, min-p, top-p in that order;
 * then the draw: the token where the running sum of the kept weights, in
 * token-id order, first exceeds u * (their total).  out[n] and status[n]
 * are device arrays; status[i] is 0 or ENG_ERR_INVALID (NaN/+inf logits,
 * all -inf, bad parameters).  Asynchronous: returns after enqueueing (0, or
 * ENG_ERR_DEVICE for a launch error). */
int cuda_sample_launch(const float *logits, int vocab, const struct cuda_samp_row *rows, int n,
		       struct samp_result *out, int32_t *status, void *scratch, size_t scratch_bytes,
		       void *stream);

/* tokens[i] = out[src[i]].token for i < n (device arrays), a token outside
 * [0, vocab) (a row that failed) as 0: the sampled tokens, on the device,
 * as the rows of the pass that feeds them back.  Asynchronous; 0 or
 * ENG_ERR_DEVICE. */
int cuda_sample_tokens_to(const struct samp_result *out, const int32_t *src, int n, int vocab, int32_t *tokens,
			  void *stream);

/* For tests: the same on host arrays (logits (n, vocab) on the host, rows'
 * slots index it); synchronous. */
int cuda_sample_host(const float *logits, int n, int vocab, const struct cuda_samp_row *rows,
		     struct samp_result *out, int32_t *status, char *err, int errlen);

#ifdef __cplusplus
}
#endif

#endif
