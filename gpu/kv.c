/* kv.c - paged KV cache bookkeeping: free list, block refcounts, per-sequence
 * block tables, copy-on-write on reserve (kv_).  Engine thread only. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "kv.h"
#include "status.h"

struct kv_seq {
	int live;
	int len;          /* positions written                            */
	int n_blocks;     /* entries used in blocks                       */
	int cap;          /* entries allocated in blocks                  */
	int32_t *blocks;  /* (cap) block ids; [0, n_blocks) in use        */
};

struct kv_pool {
	int n_blocks;
	int block_tokens;
	int max_seqs;
	int n_live;
	int (*copy_block)(void *ctx, int32_t src, int32_t dst);
	void *copy_ctx;
	int32_t *refcount;    /* (n_blocks) references from sequence tables  */
	int32_t *free_list;   /* (n_blocks) stack; [0, n_free) are free       */
	int n_free;
	struct kv_seq *seqs;  /* (max_seqs)                                   */
};

kv_pool *
kv_create(const struct kv_params *p, char *err, size_t errlen)
{
	kv_pool *kv = NULL;
	if (!p) {
		eng_seterr(err, errlen, ENG_ERR_INVALID, "kv: no parameters");
		goto fail;
	}
	if (p->n_blocks <= 0 || p->block_tokens < 0 || p->max_seqs < 0) {
		eng_seterr(err, errlen, ENG_ERR_INVALID,
			   "kv: bad sizes (n_blocks %d, block_tokens %d, max_seqs %d)",
			   p->n_blocks, p->block_tokens, p->max_seqs);
		goto fail;
	}
	if (!p->copy_block) {
		eng_seterr(err, errlen, ENG_ERR_INVALID, "kv: copy_block is required");
		goto fail;
	}
	kv = calloc(1, sizeof *kv);
	if (!kv)
		goto nomem;
	kv->n_blocks = p->n_blocks;
	kv->block_tokens = p->block_tokens ? p->block_tokens : 16;
	kv->max_seqs = p->max_seqs ? p->max_seqs : 1024;
	kv->copy_block = p->copy_block;
	kv->copy_ctx = p->copy_ctx;
	kv->refcount = calloc((size_t)kv->n_blocks, sizeof *kv->refcount);
	kv->free_list = malloc((size_t)kv->n_blocks * sizeof *kv->free_list);
	kv->seqs = calloc((size_t)kv->max_seqs, sizeof *kv->seqs);
	if (!kv->refcount || !kv->free_list || !kv->seqs)
		goto nomem;
	/* A stack popped from the end: block 0 is handed out first. */
	for (int i = 0; i < kv->n_blocks; i++)
		kv->free_list[i] = kv->n_blocks - 1 - i;
	kv->n_free = kv->n_blocks;
	return kv;

nomem:
	eng_seterr(err, errlen, ENG_ERR_NOMEM, "kv: out of memory for %d blocks, %d sequences",
		   p->n_blocks, p->max_seqs);
fail:
	kv_destroy(kv);
	return NULL;
}

void
kv_destroy(kv_pool *kv)
{
	if (!kv)
		return;
	if (kv->seqs)
		for (int i = 0; i < kv->max_seqs; i++)
			free(kv->seqs[i].blocks);
	free(kv->seqs);
	free(kv->free_list);
	free(kv->refcount);
	free(kv);
}

static struct kv_seq *
kv_get(const kv_pool *kv, int seq)
{
	if (!kv || seq < 0 || seq >= kv->max_seqs || !kv->seqs[seq].live)
		return NULL;
	return &kv->seqs[seq];
}

/* Make room for n table entries (contents kept). */
static int
kv_table_grow(struct kv_seq *s, int n)
{
	if (n <= s->cap)
		return ENG_OK;
	int cap = s->cap ? s->cap : 8;
	while (cap < n)
		cap = cap > INT_MAX / 2 ? n : cap * 2;
	int32_t *b = realloc(s->blocks, (size_t)cap * sizeof *b);
	if (!b)
		return ENG_ERR_NOMEM;
	s->blocks = b;
	s->cap = cap;
	return ENG_OK;
}

/* Lowest free slot at or after from, or -1. */
static int
kv_free_slot(const kv_pool *kv, int from)
{
	for (int i = from; i < kv->max_seqs; i++)
		if (!kv->seqs[i].live)
			return i;
	return -1;
}

int
kv_seq_new(kv_pool *kv)
{
	if (!kv)
		return ENG_ERR_INVALID;
	int id = kv_free_slot(kv, 0);
	if (id < 0)
		return ENG_ERR_RANGE;
	struct kv_seq *s = &kv->seqs[id];
	s->live = 1;
	s->len = 0;
	s->n_blocks = 0;
	kv->n_live++;
	return id;
}

/* Children get the blocks that hold seq's written positions; blocks seq
 * reserved past its length stay seq's own, so its reservation still holds. */
int
kv_seq_fork(kv_pool *kv, int seq, int k, int *children)
{
	struct kv_seq *s = kv_get(kv, seq);
	if (!s)
		return ENG_ERR_NOT_FOUND;
	if (k < 0 || (k > 0 && !children))
		return ENG_ERR_INVALID;
	if (k > kv->max_seqs - kv->n_live)
		return ENG_ERR_RANGE;
	int bt = kv->block_tokens;
	int nb = (int)(((int64_t)s->len + bt - 1) / bt);

	/* Claim slots and tables first; nothing is visible until all fit. */
	int from = 0;
	for (int c = 0; c < k; c++) {
		int id = kv_free_slot(kv, from);
		/* n_live + k <= max_seqs guarantees a slot */
		struct kv_seq *cs = &kv->seqs[id];
		if (kv_table_grow(cs, nb) != ENG_OK)
			return ENG_ERR_NOMEM; /* grown tables of free slots are kept for reuse */
		children[c] = id;
		from = id + 1;
	}
	for (int c = 0; c < k; c++) {
		struct kv_seq *cs = &kv->seqs[children[c]];
		if (nb)
			memcpy(cs->blocks, s->blocks, (size_t)nb * sizeof *cs->blocks);
		cs->n_blocks = nb;
		cs->len = s->len;
		cs->live = 1;
	}
	for (int b = 0; b < nb; b++)
		kv->refcount[s->blocks[b]] += k;
	kv->n_live += k;
	return ENG_OK;
}

int
kv_seq_free(kv_pool *kv, int seq)
{
	struct kv_seq *s = kv_get(kv, seq);
	if (!s)
		return ENG_ERR_NOT_FOUND;
	for (int b = 0; b < s->n_blocks; b++) {
		int32_t id = s->blocks[b];
		if (--kv->refcount[id] == 0)
			kv->free_list[kv->n_free++] = id;
	}
	s->live = 0;
	s->len = 0;
	s->n_blocks = 0;
	kv->n_live--;
	return ENG_OK;
}

int
kv_seq_reserve(kv_pool *kv, int seq, int n)
{
	struct kv_seq *s = kv_get(kv, seq);
	if (!s)
		return ENG_ERR_NOT_FOUND;
	if (n < 0)
		return ENG_ERR_INVALID;
	if (n == 0)
		return ENG_OK;
	if (n > INT_MAX - s->len)
		return ENG_ERR_RANGE;
	int bt = kv->block_tokens;
	int first = s->len / bt;                              /* block of position len */
	int need = (int)(((int64_t)s->len + n + bt - 1) / bt); /* table entries needed  */

	/* Blocks past the length are always private (fork does not share
	 * them), so the only block to copy is a shared, partly written one
	 * holding position len.  Shared full blocks are never written again. */
	int cow = s->len % bt != 0 && kv->refcount[s->blocks[first]] > 1;
	int fresh = need > s->n_blocks ? need - s->n_blocks : 0;
	if (fresh + cow > kv->n_free)
		return ENG_ERR_NO_KV;
	if (kv_table_grow(s, need) != ENG_OK)
		return ENG_ERR_NOMEM;

	if (cow) {
		int32_t src = s->blocks[first];
		int32_t dst = kv->free_list[kv->n_free - 1];
		int rc = kv->copy_block(kv->copy_ctx, src, dst);
		if (rc != ENG_OK)
			return rc < 0 ? rc : ENG_ERR_DEVICE;
		kv->n_free--;
		kv->refcount[dst] = 1;
		kv->refcount[src]--;
		s->blocks[first] = dst;
	}
	for (int b = 0; b < fresh; b++) {
		int32_t id = kv->free_list[--kv->n_free];
		kv->refcount[id] = 1;
		s->blocks[s->n_blocks++] = id;
	}
	return ENG_OK;
}

int
kv_seq_commit(kv_pool *kv, int seq, int n)
{
	struct kv_seq *s = kv_get(kv, seq);
	if (!s)
		return ENG_ERR_NOT_FOUND;
	if (n < 0)
		return ENG_ERR_INVALID;
	if (n == 0)
		return ENG_OK;
	int bt = kv->block_tokens;
	if (n > INT_MAX - s->len || (int64_t)s->len + n > (int64_t)s->n_blocks * bt)
		return ENG_ERR_RANGE;
	/* The written positions must have been made private by reserve. */
	for (int b = s->len / bt; b <= (s->len + n - 1) / bt; b++)
		if (kv->refcount[s->blocks[b]] != 1)
			return ENG_ERR_INVALID;
	s->len += n;
	return ENG_OK;
}

int
kv_seq_len(const kv_pool *kv, int seq)
{
	const struct kv_seq *s = kv_get(kv, seq);
	return s ? s->len : ENG_ERR_NOT_FOUND;
}

const int32_t *
kv_seq_blocks(const kv_pool *kv, int seq, int *n)
{
	const struct kv_seq *s = kv_get(kv, seq);
	if (n)
		*n = s ? s->n_blocks : 0;
	return s ? s->blocks : NULL;
}

int
kv_block_tokens(const kv_pool *kv)
{
	return kv->block_tokens;
}

int
kv_blocks_total(const kv_pool *kv)
{
	return kv->n_blocks;
}

int
kv_blocks_free(const kv_pool *kv)
{
	return kv->n_free;
}

int
kv_block_refcount(const kv_pool *kv, int32_t block)
{
	if (!kv || block < 0 || block >= kv->n_blocks)
		return ENG_ERR_INVALID;
	return kv->refcount[block];
}

int
kv_seq_live(const kv_pool *kv, int seq)
{
	return kv_get(kv, seq) != NULL;
}
