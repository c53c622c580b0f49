/* backend.h - what the engine asks of a compute backend (CPU, CUDA): one
 * forward pass over a batch of tokens from many sequences, writing into the
 * paged KV cache.  Engine thread only. */
#ifndef BRAID_BACKEND_H
#define BRAID_BACKEND_H

#include <stddef.h>
#include <stdint.h>

struct model;
struct pool;
struct samp_result;

/* One row to sample.  The row's logits are row `slot` of a (n_slots, vocab)
 * f32 device array.  u is the uniform draw in [0, 1) the CPU sampler would
 * take from the sequence's generator (samp_rng_uniform); it is ignored when
 * temperature is 0 (greedy). */
struct cuda_samp_row {
	int32_t slot;
	int32_t top_k;
	int32_t n_top;
	float temperature;
	float top_p;
	float min_p;
	double u;
};

/* One forward pass.  Row r is token tokens[r] at position pos[r] of sequence
 * row_seq[r].  Rows of one sequence are consecutive and in position order;
 * a row attends to positions 0..pos[r] of its own sequence: earlier ones are
 * already in the cache, the batch's own are written to the cache by this
 * pass (block_tables[s] covers every position the pass writes).
 *
 * Batch invariance (CPU backend): the arithmetic done for a row must not
 * depend on which other rows share the batch (same summation order), so that
 * a sequence gives bit-identical logits alone, batched, or forked.  The CUDA
 * backend does not promise it: cuBLAS picks its kernels by batch size and
 * attention splits its work by the batch's lengths, so results agree to
 * rounding, not bit for bit. */
struct fwd_batch {
	int n_rows;
	const int32_t *tokens;               /* [n_rows]                     */
	const int32_t *pos;                  /* [n_rows]                     */
	const int32_t *row_seq;              /* [n_rows] in [0, n_seqs)      */
	int n_seqs;
	const int32_t *const *block_tables;  /* [n_seqs] block ids           */
	int n_logits;
	const int32_t *logit_rows;           /* [n_logits] ascending rows    */
};

/* Totals over the timed calls; GPU times from device events, host times
 * from the host's clock. */
struct backend_timing {
	long passes, samples;        /* forward_slots and sample calls        */
	double pass_gpu_ms;          /* device time of the passes: plan upload
					to the last kernel                     */
	double sample_gpu_ms;        /* device time of sampling and its copies */
	double pass_host_ms;         /* host time in forward_slots past its
					wait for the previous pass: plan,
					upload, launch                         */
	long passes_ahead;           /* passes planned and uploaded while the
					GPU sampled (only tokens left)         */
	long passes_run_ahead;       /* of those, passes also launched then,
					with the tokens sampled on the device */
};

struct backend_ops {
	const char *name;                    /* "cpu", "cuda"                */
	/* logits: (n_logits, vocab) floats on the host. */
	int (*forward)(void *self, const struct fwd_batch *b, float *logits);
	/* Copy a KV block (all layers, K and V): used for copy-on-write. */
	int (*copy_block)(void *self, int32_t src, int32_t dst);
	void (*destroy)(void *self);

	/* Optional (NULL on the CPU backend): logits that stay on the device,
	 * in slots 0..max_seqs-1 (the engine uses its sequence ids), and
	 * sampling there.  forward_slots runs the pass and stores logit row i
	 * in slot slots[i] (-1: not kept); host, when not NULL, also receives
	 * all n_logits rows, (n_logits, vocab) floats. */
	int (*forward_slots)(void *self, const struct fwd_batch *b, const int32_t *slots, float *host);
	int (*copy_slot)(void *self, int32_t src, int32_t dst);
	int (*read_slot)(void *self, int32_t slot, float *host);      /* vocab floats */
	/* Sample rows[n] (see cuda_sample_launch in gpu/cuda/cuda.h) into
	 * out[n]; status[n] per row.  After a pass whose rows were each their
	 * sequence's only one, each with its logits, the CUDA backend may run
	 * the likely next pass (the same rows one position on, the sampled
	 * tokens) behind the sampling, before returning: it then writes each
	 * row's K and V at that next position, in the block that holds the
	 * row's last one, and replaces the logits just sampled.  So the engine
	 * must not read a sampled slot again before a pass recomputes it, and
	 * the next position's block must be the row's alone; a later pass
	 * rewrites that position before reading it.  (A row whose sampling
	 * fails keeps its logits: the backend then runs the pass again.) */
	int (*sample)(void *self, const struct cuda_samp_row *rows, int n, struct samp_result *out,
		      int32_t *status);
	/* The last device error, for messages ("" when none). */
	const char *(*last_error)(void *self);
	/* Optional: where the time of passes and sampling goes (braid bench).
	 * on = 1 zeroes the totals and starts timing, 0 stops it; out, when not
	 * NULL, receives the totals so far (after the device has finished
	 * what was timed). */
	int (*timing)(void *self, int on, struct backend_timing *out);
};

struct backend {
	const struct backend_ops *ops;
	void *self;
	size_t weight_bytes;   /* weight bytes one decode step reads (an untied
				  embedding table is not read: a few rows)   */
};

/* 0 if b is well formed for a backend with this vocabulary and KV pool
 * (every token, position, sequence index, block id and logit row in range;
 * a sequence's rows consecutive and in position order; at most max_rows
 * rows, 0 = any), else ENG_ERR_INVALID.  gpu/backend.c. */
int backend_check_batch(const struct fwd_batch *b, int vocab, int block_tokens, int n_blocks, int max_rows);

/* KV bytes one block needs on this model (f32 K and V, every layer). */
size_t backend_kv_block_bytes(const struct model *m, int block_tokens);

/* The CPU reference backend (gpu/cpu/forward.c).  It borrows m (which must
 * outlive it), allocates n_blocks KV blocks of block_tokens positions in
 * host memory, and runs its parallel loops on pool (borrowed: it must
 * outlive the backend, and only the backend's caller's thread may run it;
 * n_threads is then ignored) or, when pool is NULL, on a pool of its own
 * with n_threads workers (0 = all cores). */
int cpu_backend_create(const struct model *m, int n_blocks, int block_tokens,
		       int n_threads, struct pool *pool, struct backend *out,
		       char *err, size_t errlen);

#endif
