/* engine.h - the local model engine (eng_): a loaded model, its tokenizer,
 * a paged KV cache and a compute backend, driven one batched step at a time.
 * Every function runs on the engine thread (the one that created it), except
 * the read-only getters, which any thread may call once eng_create returns.
 *
 * A sequence is: tokens already in the KV cache, pending tokens not yet run
 * through the model, and possibly "ready" logits (the distribution of its
 * next token).  eng_step() runs every live sequence's pending tokens through
 * one forward pass, then samples one token per sequence from its ready
 * logits; the sampled token becomes pending for the next step.  Sequences
 * join (eng_seq_new, eng_seq_fork) and leave (eng_seq_free) between any two
 * steps. */
#ifndef BRAID_ENGINE_H
#define BRAID_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "chat.h"
#include "config.h"
#include "sampler.h"
#include "status.h"
#include "tokenizer.h"

typedef struct eng eng;

enum eng_device {
	ENG_DEVICE_AUTO = 0,   /* CUDA where built in and a GPU is present */
	ENG_DEVICE_CPU = 1,
	ENG_DEVICE_CUDA = 2,
};

struct eng_params {
	const char *model_dir;   /* HF directory (config.json, safetensors)     */
	enum eng_device device;
	int n_threads;           /* CPU threads; 0 = every online core          */
	size_t kv_bytes;         /* KV pool size; 0 = auto (CPU: 1 GiB capped
				    at a quarter of physical memory)            */
	int block_tokens;        /* positions per KV block; 0 = 16              */
	int max_seqs;            /* live sequences; 0 = 1024                    */
	int max_batch_rows;      /* rows per forward pass (longer prefills are
				    chunked); 0 = 512                           */
};

struct eng_params eng_default_params(void);

/* Load the model (and DIR/tokenizer.json if present) and start the backend.
 * Returns NULL and fills err ("PATH: problem") on failure. */
eng *eng_create(const struct eng_params *p, char *err, size_t errlen);
void eng_destroy(eng *e);                         /* NULL is fine */

/* Read-only getters; pointers live as long as e. */
const struct model_config *eng_config(const eng *e);
const tok *eng_tokenizer(const eng *e);           /* NULL without tokenizer.json */
enum chat_format eng_chat_format(const eng *e);
const char *eng_device_name(const eng *e);        /* "cpu", "cuda"       */
size_t eng_weight_bytes(const eng *e);            /* weight bytes read per
						     decode step            */
/* What the backend last reported going wrong (a CUDA error, say), for
 * messages after ENG_ERR_DEVICE; "" when nothing did. */
const char *eng_last_error(const eng *e);
int eng_threads(const eng *e);
/* 1 if id ends a sequence: one of config.json's eos_token_id or the
 * tokenizer's eos token. */
int eng_is_eos(const eng *e, int32_t id);

/* A new sequence with ids[n] pending (n >= 1) and sampling params sp
 * (NULL = samp_default_params()).  Returns its id (>= 0) or an error.
 * Here, in eng_seq_append and in eng_step, a sequence that would grow past
 * the model's max_position_embeddings is ENG_ERR_RANGE (nothing changed). */
int eng_seq_new(eng *e, const int32_t *ids, int n, const struct samp_params *sp);

/* Queue more tokens (injected text) after the sequence's current end.  Any
 * ready logits are dropped: the next step samples after the new tokens. */
int eng_seq_append(eng *e, int seq, const int32_t *ids, int n);

/* Run seq's pending tokens through the model now, alone.  Its logits at the
 * last position become ready (the next step samples from them without a
 * forward pass).  If all_logits is non-NULL it receives the logits at every
 * pending position: (n_pending, vocab) floats.  With nothing pending this
 * returns ENG_DONE. */
int eng_seq_prefill(eng *e, int seq, float *all_logits);

/* k children that share seq's KV blocks (copy-on-write), its pending tokens
 * and its ready logits.  Child j inherits seq's sampling params with the
 * seed samp_derive_seed(parent seed, c) where c counts the children seq has
 * forked so far (1, 2, ...), so forks are distinct and reproducible.  Ids go
 * to children[k]; all or nothing. */
int eng_seq_fork(eng *e, int seq, int k, int *children);

/* Drop the sequence; its KV blocks are free at once (when unshared). */
int eng_seq_free(eng *e, int seq);

/* Replace the sampling params (the generator is re-seeded from sp->seed). */
int eng_seq_set_sampling(eng *e, int seq, const struct samp_params *sp);

/* The sequence's ready logits (vocab floats), or NULL when it has none.
 * Borrowed until the next call that changes seq. */
const float *eng_seq_logits(const eng *e, int seq);

/* Tokens in the cache plus pending tokens. */
int eng_seq_len(const eng *e, int seq);

/* One sampled token of one sequence. */
struct eng_token {
	int seq;
	struct samp_result r;
};

/* One step over every live sequence (see the top of this file).  Writes one
 * eng_token per sampled sequence to out (cap entries; ENG_ERR_RANGE if cap
 * is smaller than the live sequences) and their number to *n_out.
 * ENG_ERR_NO_KV if the cache cannot hold this step: nothing was changed, and
 * the caller frees or waits before stepping again. */
int eng_step(eng *e, struct eng_token *out, int cap, int *n_out);

/* KV usage, in blocks. */
int eng_kv_blocks_total(const eng *e);
int eng_kv_blocks_free(const eng *e);

/* The backend's timing (struct backend_timing, gpu/backend.h): on = 1
 * starts it, 0 stops it; out, when not NULL, gets the totals.
 * ENG_ERR_UNSUPPORTED where the backend has none (the CPU backend). */
struct backend_timing;
int eng_backend_timing(eng *e, int on, struct backend_timing *out);

#endif
