/* test_kv.c - paged KV bookkeeping: refcounts, copy-on-write, exhaustion,
 * and a randomized run against an independent model with simulated storage. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "kv.h"
#include "status.h"

/* ---- a recording copy_block over simulated host storage ------------------------ */

#define MAX_COPIES 4096

struct store {
	int bt;
	int32_t *cells;        /* (n_blocks, bt) one value per position, or NULL */
	int n_copies;
	int32_t src[MAX_COPIES], dst[MAX_COPIES];
	int fail;              /* next copy fails with this status when != 0 */
};

static int
store_copy(void *ctx, int32_t src, int32_t dst)
{
	struct store *s = ctx;
	if (s->fail)
		return s->fail;
	if (s->n_copies < MAX_COPIES) {
		s->src[s->n_copies] = src;
		s->dst[s->n_copies] = dst;
	}
	s->n_copies++;
	if (s->cells)
		memcpy(s->cells + (size_t)dst * s->bt, s->cells + (size_t)src * s->bt,
		       (size_t)s->bt * sizeof *s->cells);
	return 0;
}

static kv_pool *
make_pool(int n_blocks, int bt, int max_seqs, struct store *st)
{
	memset(st, 0, sizeof *st);
	st->bt = bt;
	struct kv_params p = {
		.n_blocks = n_blocks,
		.block_tokens = bt,
		.max_seqs = max_seqs,
		.copy_block = store_copy,
		.copy_ctx = st,
	};
	char err[ENG_ERRLEN];
	kv_pool *kv = kv_create(&p, err, sizeof err);
	assert_non_null(kv);
	return kv;
}

/* reserve + commit */
static int
grow(kv_pool *kv, int seq, int n)
{
	int rc = kv_seq_reserve(kv, seq, n);
	if (rc != ENG_OK)
		return rc;
	return kv_seq_commit(kv, seq, n);
}

/* ---- snapshots of everything observable ------------------------------------------- */

struct snap {
	int n_free;
	int n_seqs;
	int *refcount;
	int *live, *len, *nb;
	int32_t **tables;
};

static void
snap_take(const kv_pool *kv, int max_seqs, struct snap *s)
{
	int nb = kv_blocks_total(kv);
	s->n_free = kv_blocks_free(kv);
	s->n_seqs = max_seqs;
	s->refcount = calloc((size_t)nb, sizeof *s->refcount);
	s->live = calloc((size_t)max_seqs, sizeof *s->live);
	s->len = calloc((size_t)max_seqs, sizeof *s->len);
	s->nb = calloc((size_t)max_seqs, sizeof *s->nb);
	s->tables = calloc((size_t)max_seqs, sizeof *s->tables);
	assert_true(s->refcount && s->live && s->len && s->nb && s->tables);
	for (int b = 0; b < nb; b++)
		s->refcount[b] = kv_block_refcount(kv, b);
	for (int q = 0; q < max_seqs; q++) {
		s->live[q] = kv_seq_live(kv, q);
		if (!s->live[q])
			continue;
		s->len[q] = kv_seq_len(kv, q);
		const int32_t *t = kv_seq_blocks(kv, q, &s->nb[q]);
		s->tables[q] = malloc((size_t)s->nb[q] * sizeof(int32_t) + 1);
		assert_non_null(s->tables[q]);
		if (s->nb[q])
			memcpy(s->tables[q], t, (size_t)s->nb[q] * sizeof(int32_t));
	}
}

static void
snap_free(struct snap *s)
{
	for (int q = 0; q < s->n_seqs; q++)
		free(s->tables[q]);
	free(s->tables);
	free(s->nb);
	free(s->len);
	free(s->live);
	free(s->refcount);
}

static void
snap_check_same(const kv_pool *kv, const struct snap *a)
{
	struct snap b;
	snap_take(kv, a->n_seqs, &b);
	assert_int_equal(a->n_free, b.n_free);
	assert_memory_equal(a->refcount, b.refcount, (size_t)kv_blocks_total(kv) * sizeof(int));
	assert_memory_equal(a->live, b.live, (size_t)a->n_seqs * sizeof(int));
	for (int q = 0; q < a->n_seqs; q++) {
		if (!a->live[q])
			continue;
		assert_int_equal(a->len[q], b.len[q]);
		assert_int_equal(a->nb[q], b.nb[q]);
		if (a->nb[q])
			assert_memory_equal(a->tables[q], b.tables[q], (size_t)a->nb[q] * sizeof(int32_t));
	}
	snap_free(&b);
}

/* ---- targeted tests ------------------------------------------------------------------ */

static void
test_create(void **state)
{
	(void)state;
	char err[ENG_ERRLEN];
	struct store st = { 0 };
	struct kv_params p = { .n_blocks = 0, .copy_block = store_copy, .copy_ctx = &st };
	err[0] = 0;
	assert_null(kv_create(&p, err, sizeof err));
	assert_true(err[0] != 0);
	p.n_blocks = 4;
	p.block_tokens = -1;
	assert_null(kv_create(&p, err, sizeof err));
	p.block_tokens = 0;
	p.max_seqs = -2;
	assert_null(kv_create(&p, err, sizeof err));
	p.max_seqs = 0;
	p.copy_block = NULL;
	err[0] = 0;
	assert_null(kv_create(&p, err, sizeof err));
	assert_true(err[0] != 0);
	assert_null(kv_create(NULL, err, sizeof err));
	kv_destroy(NULL);

	/* defaults: 16 positions a block, 1024 sequences */
	p.copy_block = store_copy;
	kv_pool *kv = kv_create(&p, err, sizeof err);
	assert_non_null(kv);
	assert_int_equal(kv_block_tokens(kv), 16);
	assert_int_equal(kv_blocks_total(kv), 4);
	assert_int_equal(kv_blocks_free(kv), 4);
	for (int i = 0; i < 1024; i++)
		assert_int_equal(kv_seq_new(kv), i);
	assert_int_equal(kv_seq_new(kv), ENG_ERR_RANGE);
	assert_int_equal(kv_seq_free(kv, 500), ENG_OK);
	assert_int_equal(kv_seq_new(kv), 500); /* slots are reused */
	kv_destroy(kv);
}

static void
test_basic(void **state)
{
	(void)state;
	struct store st;
	kv_pool *kv = make_pool(10, 4, 8, &st);
	int s = kv_seq_new(kv);
	assert_true(s >= 0);
	assert_int_equal(kv_seq_len(kv, s), 0);
	int n;
	kv_seq_blocks(kv, s, &n);
	assert_int_equal(n, 0);

	assert_int_equal(kv_seq_reserve(kv, s, 6), ENG_OK); /* 2 blocks */
	assert_int_equal(kv_seq_len(kv, s), 0);             /* reserve does not commit */
	kv_seq_blocks(kv, s, &n);
	assert_int_equal(n, 2);
	assert_int_equal(kv_blocks_free(kv), 8);
	assert_int_equal(kv_seq_commit(kv, s, 6), ENG_OK);
	assert_int_equal(kv_seq_len(kv, s), 6);
	/* committing past the reservation is refused */
	assert_int_equal(kv_seq_commit(kv, s, 3), ENG_ERR_RANGE);
	assert_int_equal(kv_seq_commit(kv, s, 2), ENG_OK);
	assert_int_equal(kv_seq_len(kv, s), 8);
	assert_int_equal(grow(kv, s, 1), ENG_OK);
	const int32_t *t = kv_seq_blocks(kv, s, &n);
	assert_int_equal(n, 3);
	for (int i = 0; i < 3; i++)
		assert_int_equal(kv_block_refcount(kv, t[i]), 1);
	/* reserving 0 changes nothing; an already covered reserve takes nothing */
	assert_int_equal(kv_seq_reserve(kv, s, 0), ENG_OK);
	assert_int_equal(kv_seq_reserve(kv, s, 3), ENG_OK);
	assert_int_equal(kv_blocks_free(kv), 7);
	assert_int_equal(kv_seq_free(kv, s), ENG_OK);
	assert_int_equal(kv_blocks_free(kv), 10);
	assert_int_equal(st.n_copies, 0);
	kv_destroy(kv);
}

static void
test_fork_refcounts(void **state)
{
	(void)state;
	struct store st;
	kv_pool *kv = make_pool(20, 16, 8, &st);
	int p = kv_seq_new(kv);
	assert_int_equal(grow(kv, p, 40), ENG_OK); /* 3 blocks, the last partial */
	int ch[3];
	assert_int_equal(kv_seq_fork(kv, p, 3, ch), ENG_OK);
	int n;
	const int32_t *pt = kv_seq_blocks(kv, p, &n);
	assert_int_equal(n, 3);
	for (int c = 0; c < 3; c++) {
		assert_true(ch[c] != p);
		assert_int_equal(kv_seq_len(kv, ch[c]), 40);
		int cn;
		const int32_t *ct = kv_seq_blocks(kv, ch[c], &cn);
		assert_int_equal(cn, 3);
		assert_memory_equal(ct, pt, 3 * sizeof(int32_t));
	}
	assert_true(ch[0] != ch[1] && ch[1] != ch[2] && ch[0] != ch[2]);
	for (int i = 0; i < 3; i++)
		assert_int_equal(kv_block_refcount(kv, pt[i]), 4);
	assert_int_equal(kv_blocks_free(kv), 17);
	int32_t blocks[3];
	memcpy(blocks, pt, sizeof blocks);

	assert_int_equal(kv_seq_free(kv, p), ENG_OK);
	for (int i = 0; i < 3; i++)
		assert_int_equal(kv_block_refcount(kv, blocks[i]), 3);
	assert_int_equal(kv_blocks_free(kv), 17);
	assert_int_equal(kv_seq_free(kv, ch[0]), ENG_OK);
	assert_int_equal(kv_seq_free(kv, ch[1]), ENG_OK);
	for (int i = 0; i < 3; i++)
		assert_int_equal(kv_block_refcount(kv, blocks[i]), 1);
	assert_int_equal(kv_seq_free(kv, ch[2]), ENG_OK);
	for (int i = 0; i < 3; i++)
		assert_int_equal(kv_block_refcount(kv, blocks[i]), 0);
	assert_int_equal(kv_blocks_free(kv), 20); /* free at once */
	assert_int_equal(st.n_copies, 0);

	/* fork of an empty sequence and k = 0 */
	int e = kv_seq_new(kv);
	assert_int_equal(kv_seq_fork(kv, e, 1, ch), ENG_OK);
	assert_int_equal(kv_seq_len(kv, ch[0]), 0);
	assert_int_equal(kv_seq_fork(kv, e, 0, NULL), ENG_OK);
	kv_destroy(kv);
}

static void
test_cow_boundary(void **state)
{
	(void)state;
	/* fork at a block boundary: nothing to copy, shared blocks stay shared */
	struct store st;
	kv_pool *kv = make_pool(20, 8, 8, &st);
	int p = kv_seq_new(kv);
	assert_int_equal(grow(kv, p, 16), ENG_OK);
	int c;
	assert_int_equal(kv_seq_fork(kv, p, 1, &c), ENG_OK);
	int32_t shared[2];
	memcpy(shared, kv_seq_blocks(kv, p, NULL), sizeof shared);
	assert_int_equal(grow(kv, c, 5), ENG_OK);
	assert_int_equal(grow(kv, p, 9), ENG_OK);
	assert_int_equal(st.n_copies, 0);
	for (int i = 0; i < 2; i++)
		assert_int_equal(kv_block_refcount(kv, shared[i]), 2);
	int n;
	const int32_t *ct = kv_seq_blocks(kv, c, &n);
	assert_int_equal(n, 3);
	assert_memory_equal(ct, shared, sizeof shared);
	assert_int_equal(kv_block_refcount(kv, ct[2]), 1);
	const int32_t *pt = kv_seq_blocks(kv, p, &n);
	assert_int_equal(n, 4);
	assert_true(pt[2] != ct[2]);
	assert_int_equal(kv_blocks_free(kv), 20 - 2 - 1 - 2);
	kv_destroy(kv);
}

static void
test_cow_midblock(void **state)
{
	(void)state;
	struct store st;
	kv_pool *kv = make_pool(20, 8, 8, &st);
	int p = kv_seq_new(kv);
	assert_int_equal(grow(kv, p, 13), ENG_OK); /* block 1 holds positions 8..12 */
	int ch[2];
	assert_int_equal(kv_seq_fork(kv, p, 2, ch), ENG_OK);
	int32_t b0 = kv_seq_blocks(kv, p, NULL)[0], b1 = kv_seq_blocks(kv, p, NULL)[1];
	assert_int_equal(kv_block_refcount(kv, b1), 3);

	/* child 0 writes one position: its partial block is copied */
	int free0 = kv_blocks_free(kv);
	assert_int_equal(kv_seq_reserve(kv, ch[0], 1), ENG_OK);
	assert_int_equal(st.n_copies, 1);
	assert_int_equal(st.src[0], b1);
	const int32_t *t0 = kv_seq_blocks(kv, ch[0], NULL);
	assert_int_equal(st.dst[0], t0[1]);
	assert_int_equal(t0[0], b0);                       /* the full block stays shared */
	assert_int_equal(kv_block_refcount(kv, b0), 3);
	assert_int_equal(kv_block_refcount(kv, b1), 2);
	assert_int_equal(kv_block_refcount(kv, t0[1]), 1);
	assert_int_equal(kv_blocks_free(kv), free0 - 1);
	/* a second reserve on the now private block copies nothing */
	assert_int_equal(kv_seq_commit(kv, ch[0], 1), ENG_OK);
	assert_int_equal(grow(kv, ch[0], 2), ENG_OK);
	assert_int_equal(st.n_copies, 1);
	/* reserving across the block end: copy the partial block, then a new one */
	assert_int_equal(kv_seq_reserve(kv, ch[1], 10), ENG_OK);
	assert_int_equal(st.n_copies, 2);
	assert_int_equal(st.src[1], b1);
	int n;
	const int32_t *t1 = kv_seq_blocks(kv, ch[1], &n);
	assert_int_equal(n, 3);
	assert_int_equal(st.dst[1], t1[1]);
	assert_int_equal(kv_block_refcount(kv, b1), 1); /* only the parent left */
	/* the parent is now the sole owner: no copy */
	assert_int_equal(grow(kv, p, 3), ENG_OK);
	assert_int_equal(st.n_copies, 2);
	assert_int_equal(kv_seq_blocks(kv, p, NULL)[1], b1);
	kv_destroy(kv);
}

static void
test_fork_reserved(void **state)
{
	(void)state;
	/* blocks reserved past the length stay the parent's own */
	struct store st;
	kv_pool *kv = make_pool(20, 8, 8, &st);
	int p = kv_seq_new(kv);
	assert_int_equal(grow(kv, p, 8), ENG_OK);
	assert_int_equal(kv_seq_reserve(kv, p, 10), ENG_OK); /* blocks 1, 2 reserved */
	int c;
	assert_int_equal(kv_seq_fork(kv, p, 1, &c), ENG_OK);
	int n;
	const int32_t *ct = kv_seq_blocks(kv, c, &n);
	assert_int_equal(n, 1);
	const int32_t *pt = kv_seq_blocks(kv, p, &n);
	assert_int_equal(n, 3);
	assert_int_equal(ct[0], pt[0]);
	assert_int_equal(kv_block_refcount(kv, pt[0]), 2);
	assert_int_equal(kv_block_refcount(kv, pt[1]), 1);
	assert_int_equal(kv_block_refcount(kv, pt[2]), 1);
	/* the parent's reservation still holds: commit without reserving again */
	assert_int_equal(kv_seq_commit(kv, p, 10), ENG_OK);
	assert_int_equal(st.n_copies, 0);
	kv_destroy(kv);
}

static void
test_exhaustion(void **state)
{
	(void)state;
	struct store st;
	enum { MS = 8 };
	kv_pool *kv = make_pool(6, 4, MS, &st);
	int a = kv_seq_new(kv);
	assert_int_equal(grow(kv, a, 10), ENG_OK); /* 3 blocks */
	int b;
	assert_int_equal(kv_seq_fork(kv, a, 1, &b), ENG_OK);
	assert_int_equal(grow(kv, b, 6), ENG_OK);  /* COW + 1 new: 5 used */
	assert_int_equal(kv_blocks_free(kv), 1);
	int d;                                     /* shares a's partial block again */
	assert_int_equal(kv_seq_fork(kv, a, 1, &d), ENG_OK);
	assert_int_equal(st.n_copies, 1);

	struct snap s;
	snap_take(kv, MS, &s);
	/* needs COW (1) + 2 new blocks: more than the 1 free */
	assert_int_equal(kv_seq_reserve(kv, a, 7), ENG_ERR_NO_KV);
	snap_check_same(kv, &s);
	assert_int_equal(kv_seq_reserve(kv, b, 100), ENG_ERR_NO_KV);
	snap_check_same(kv, &s);
	int c = kv_seq_new(kv);
	snap_free(&s);
	snap_take(kv, MS, &s);
	assert_int_equal(kv_seq_reserve(kv, c, 5), ENG_ERR_NO_KV);
	snap_check_same(kv, &s);
	int copies = st.n_copies;

	/* a failing copy_block: its error, nothing changed */
	st.fail = ENG_ERR_DEVICE;
	assert_int_equal(kv_seq_reserve(kv, a, 1), ENG_ERR_DEVICE);
	snap_check_same(kv, &s);
	st.fail = 0;
	assert_int_equal(st.n_copies, copies);

	/* exactly enough: COW takes the last free block */
	assert_int_equal(kv_seq_reserve(kv, a, 2), ENG_OK);
	assert_int_equal(kv_blocks_free(kv), 0);
	assert_int_equal(st.n_copies, copies + 1);
	/* freeing returns blocks, and the refused reserve now fits */
	assert_int_equal(kv_seq_free(kv, b), ENG_OK);
	assert_int_equal(kv_blocks_free(kv), 2);
	assert_int_equal(kv_seq_reserve(kv, c, 5), ENG_OK);
	snap_free(&s);
	kv_destroy(kv);
}

static void
test_invalid_ids(void **state)
{
	(void)state;
	struct store st;
	enum { MS = 4 };
	kv_pool *kv = make_pool(8, 4, MS, &st);
	int s = kv_seq_new(kv);
	assert_int_equal(grow(kv, s, 5), ENG_OK);
	int bad[] = { -1, MS, MS + 100, 3 };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		int q = bad[i], n = 99, ch;
		assert_int_equal(kv_seq_reserve(kv, q, 1), ENG_ERR_NOT_FOUND);
		assert_int_equal(kv_seq_commit(kv, q, 1), ENG_ERR_NOT_FOUND);
		assert_int_equal(kv_seq_fork(kv, q, 1, &ch), ENG_ERR_NOT_FOUND);
		assert_int_equal(kv_seq_free(kv, q), ENG_ERR_NOT_FOUND);
		assert_true(kv_seq_len(kv, q) < 0);
		assert_null(kv_seq_blocks(kv, q, &n));
		assert_int_equal(n, 0);
		assert_int_equal(kv_seq_live(kv, q), 0);
	}
	assert_int_equal(kv_seq_reserve(kv, s, -1), ENG_ERR_INVALID);
	assert_int_equal(kv_seq_commit(kv, s, -1), ENG_ERR_INVALID);
	assert_int_equal(kv_seq_reserve(kv, s, 0x7fffffff), ENG_ERR_RANGE);
	assert_int_equal(kv_block_refcount(kv, -1), ENG_ERR_INVALID);
	assert_int_equal(kv_block_refcount(kv, 8), ENG_ERR_INVALID);

	struct snap sn;
	snap_take(kv, MS, &sn);
	int ch[4];
	assert_int_equal(kv_seq_fork(kv, s, -1, ch), ENG_ERR_INVALID);
	assert_int_equal(kv_seq_fork(kv, s, 1, NULL), ENG_ERR_INVALID);
	assert_int_equal(kv_seq_fork(kv, s, 4, ch), ENG_ERR_RANGE); /* 1 + 4 > 4 */
	snap_check_same(kv, &sn);
	snap_free(&sn);
	assert_int_equal(kv_seq_fork(kv, s, 3, ch), ENG_OK);
	assert_int_equal(kv_seq_new(kv), ENG_ERR_RANGE);

	/* committing into a shared block without reserving is refused */
	assert_int_equal(kv_seq_commit(kv, ch[0], 1), ENG_ERR_INVALID);
	/* double free */
	assert_int_equal(kv_seq_free(kv, ch[1]), ENG_OK);
	assert_int_equal(kv_seq_free(kv, ch[1]), ENG_ERR_NOT_FOUND);
	kv_destroy(kv);
}

/* ---- randomized run against a model --------------------------------------------------- */

enum { R_BLOCKS = 48, R_BT = 4, R_SEQS = 12, R_MAXLEN = 4096 };

struct mseq {
	int live;
	int root;       /* lineage: the kv_seq_new this sequence descends from */
	int len;
	int32_t vals[R_MAXLEN];
};

static uint64_t rng_state;

static int
rnd(int n)
{
	rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
	return (int)((rng_state >> 33) % (uint64_t)n);
}

static void
check_model(const kv_pool *kv, const struct store *st, const struct mseq *m)
{
	int refs[R_BLOCKS] = { 0 };
	int owner_root[R_BLOCKS], owner_idx[R_BLOCKS];
	for (int b = 0; b < R_BLOCKS; b++)
		owner_root[b] = owner_idx[b] = -1;
	int table_refs = 0;
	for (int q = 0; q < R_SEQS; q++) {
		assert_int_equal(kv_seq_live(kv, q), m[q].live);
		if (!m[q].live)
			continue;
		assert_int_equal(kv_seq_len(kv, q), m[q].len);
		int n;
		const int32_t *t = kv_seq_blocks(kv, q, &n);
		assert_true(n * R_BT >= m[q].len);
		table_refs += n;
		for (int i = 0; i < n; i++) {
			int32_t b = t[i];
			assert_true(b >= 0 && b < R_BLOCKS);
			for (int j = 0; j < i; j++)
				assert_true(t[j] != b); /* never twice in one table */
			refs[b]++;
			/* sharing only within one lineage, at the same index */
			if (owner_root[b] >= 0) {
				assert_int_equal(owner_root[b], m[q].root);
				assert_int_equal(owner_idx[b], i);
			}
			owner_root[b] = m[q].root;
			owner_idx[b] = i;
			/* blocks past the written length are private */
			if (i * R_BT >= m[q].len)
				assert_int_equal(kv_block_refcount(kv, b), 1);
		}
		/* every position reads back what this sequence (or an ancestor
		 * before the fork) wrote */
		for (int pos = 0; pos < m[q].len; pos++)
			assert_int_equal(st->cells[t[pos / R_BT] * R_BT + pos % R_BT], m[q].vals[pos]);
	}
	int sum = 0, used = 0;
	for (int b = 0; b < R_BLOCKS; b++) {
		assert_int_equal(kv_block_refcount(kv, b), refs[b]);
		sum += refs[b];
		used += refs[b] > 0;
	}
	assert_int_equal(sum, table_refs);
	assert_int_equal(kv_blocks_free(kv) + used, R_BLOCKS);
}

static void
test_randomized(void **state)
{
	(void)state;
	struct store st;
	kv_pool *kv = make_pool(R_BLOCKS, R_BT, R_SEQS, &st);
	st.cells = calloc(R_BLOCKS * R_BT, sizeof *st.cells);
	struct mseq *m = calloc(R_SEQS, sizeof *m);
	assert_non_null(st.cells);
	assert_non_null(m);
	rng_state = 12345;
	int32_t next_val = 1;
	int n_roots = 0, no_kv = 0, forks = 0, cow_fail = 0;
	for (int op = 0; op < 20000; op++) {
		int q = rnd(R_SEQS);
		int kind = rnd(10);
		if (kind == 0) {                       /* new */
			int id = kv_seq_new(kv);
			int live = 0;
			for (int i = 0; i < R_SEQS; i++)
				live += m[i].live;
			if (live == R_SEQS) {
				assert_int_equal(id, ENG_ERR_RANGE);
			} else {
				assert_true(id >= 0 && id < R_SEQS && !m[id].live);
				m[id].live = 1;
				m[id].len = 0;
				m[id].root = n_roots++;
			}
		} else if (kind <= 2 && m[q].live) {   /* fork */
			int k = 1 + rnd(3), ch[3];
			int rc = kv_seq_fork(kv, q, k, ch);
			int live = 0;
			for (int i = 0; i < R_SEQS; i++)
				live += m[i].live;
			if (live + k > R_SEQS) {
				assert_int_equal(rc, ENG_ERR_RANGE);
			} else {
				assert_int_equal(rc, ENG_OK);
				forks++;
				for (int c = 0; c < k; c++) {
					assert_false(m[ch[c]].live);
					m[ch[c]] = m[q];
				}
			}
		} else if (kind <= 7 && m[q].live) {   /* reserve, write, commit */
			int n = 1 + rnd(2 * R_BT + 3);
			if (m[q].len + n > R_MAXLEN)
				continue;
			struct snap s;
			snap_take(kv, R_SEQS, &s);
			int inject = rnd(20) == 0;
			st.fail = inject ? ENG_ERR_DEVICE : 0;
			int rc = kv_seq_reserve(kv, q, n);
			st.fail = 0;
			if (rc == ENG_ERR_NO_KV || rc == ENG_ERR_DEVICE) {
				no_kv += rc == ENG_ERR_NO_KV;
				cow_fail += rc == ENG_ERR_DEVICE;
				snap_check_same(kv, &s);
			} else {
				assert_int_equal(rc, ENG_OK);
				const int32_t *t = kv_seq_blocks(kv, q, NULL);
				for (int pos = m[q].len; pos < m[q].len + n; pos++) {
					assert_int_equal(kv_block_refcount(kv, t[pos / R_BT]), 1);
					st.cells[t[pos / R_BT] * R_BT + pos % R_BT] = next_val;
					m[q].vals[pos] = next_val++;
				}
				/* sometimes only part of the reservation is written */
				int done = rnd(4) == 0 ? rnd(n + 1) : n;
				assert_int_equal(kv_seq_commit(kv, q, done), ENG_OK);
				m[q].len += done;
			}
			snap_free(&s);
		} else if (m[q].live) {                /* free */
			assert_int_equal(kv_seq_free(kv, q), ENG_OK);
			m[q].live = 0;
		}
		check_model(kv, &st, m);
	}
	/* the run hit every interesting case */
	assert_true(no_kv > 10);
	assert_true(forks > 100);
	assert_true(cow_fail > 0);
	assert_true(st.n_copies > 100);
	for (int q = 0; q < R_SEQS; q++)
		if (m[q].live)
			assert_int_equal(kv_seq_free(kv, q), ENG_OK);
	assert_int_equal(kv_blocks_free(kv), R_BLOCKS);
	free(m);
	free(st.cells);
	kv_destroy(kv);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_create),
		cmocka_unit_test(test_basic),
		cmocka_unit_test(test_fork_refcounts),
		cmocka_unit_test(test_cow_boundary),
		cmocka_unit_test(test_cow_midblock),
		cmocka_unit_test(test_fork_reserved),
		cmocka_unit_test(test_exhaustion),
		cmocka_unit_test(test_invalid_ids),
		cmocka_unit_test(test_randomized),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
