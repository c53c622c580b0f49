/* kv.h - paged KV cache bookkeeping with reference-counted blocks and
 * copy-on-write forks (kv_).  Engine thread only.
 *
 * The cache is a pool of blocks of block_tokens positions each.  A sequence
 * owns a table of block ids; fork() gives children the same table with every
 * block's refcount raised.  Before a sequence writes positions
 * [len, len+n), kv_seq_reserve() makes the blocks it will write private:
 * a shared partial last block is copied (copy-on-write), new blocks are taken
 * from the free list.  Freeing drops refcounts and returns blocks whose count
 * reaches zero at once.  Running out of blocks is ENG_ERR_NO_KV, never a crash,
 * and leaves the sequence unchanged.
 *
 * Storage is the backend's: the pool calls copy_block to copy a block's
 * contents (every layer, K and V). */
#ifndef BRAID_KV_H
#define BRAID_KV_H

#include <stddef.h>
#include <stdint.h>

struct kv_params {
	int n_blocks;        /* blocks in the pool (> 0)                       */
	int block_tokens;    /* positions per block; 0 = 16                    */
	int max_seqs;        /* live sequences at once; 0 = 1024               */
	/* Copy block src's contents over block dst (COW).  Required. */
	int (*copy_block)(void *ctx, int32_t src, int32_t dst);
	void *copy_ctx;
};

typedef struct kv_pool kv_pool;

kv_pool *kv_create(const struct kv_params *p, char *err, size_t errlen);
void kv_destroy(kv_pool *kv);                    /* NULL is fine */

/* A new empty sequence; returns its id (>= 0) or ENG_ERR_RANGE when
 * max_seqs are live. */
int kv_seq_new(kv_pool *kv);

/* k children sharing all of seq's written blocks (those holding positions
 * [0, len); blocks seq reserved past len stay its own); ids written to
 * children[k].  All or nothing: on error no child exists. */
int kv_seq_fork(kv_pool *kv, int seq, int k, int *children);

/* Drop the sequence; blocks whose refcount reaches 0 are free at once. */
int kv_seq_free(kv_pool *kv, int seq);

/* Make positions [len, len+n) writable for seq (COW + new blocks).  Does not
 * change len.  ENG_ERR_NO_KV if the pool cannot supply them (seq unchanged). */
int kv_seq_reserve(kv_pool *kv, int seq, int n);

/* Mark n more positions as written (after the forward pass).  They must
 * have been reserved: ENG_ERR_RANGE past the table, ENG_ERR_INVALID if a
 * block they land in is shared. */
int kv_seq_commit(kv_pool *kv, int seq, int n);

/* Positions written so far. */
int kv_seq_len(const kv_pool *kv, int seq);

/* The block table (n_blocks entries written to *n); borrowed until the next
 * call that changes seq. */
const int32_t *kv_seq_blocks(const kv_pool *kv, int seq, int *n);

int kv_block_tokens(const kv_pool *kv);
int kv_blocks_total(const kv_pool *kv);
int kv_blocks_free(const kv_pool *kv);
int kv_block_refcount(const kv_pool *kv, int32_t block);
int kv_seq_live(const kv_pool *kv, int seq);     /* 1 if seq exists */

#endif
