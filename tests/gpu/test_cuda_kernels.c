/* test_cuda_kernels.c - every CUDA kernel of gpu/cuda/kernels.cu, run through
 * the kc_ wrappers of gpu/cuda/check.h, against the CPU: the ops_ functions
 * of gpu/cpu/ops.c on the same bf16-rounded inputs, or float64 loops
 * (attention, the GEMM).  Main thread only.  Exits 0 pass, 1 fail, 77 without
 * a GPU.  One line per check: kernel, shape, largest absolute and relative
 * difference, tolerance.
 *
 * Outputs start as NaN wherever the kernel must not write (rows past the
 * row counter, cache entries no row owns), and the reference says NaN
 * there: an element written that should not be, or not written that should,
 * fails the check.  Relative differences are to the largest |reference| of
 * the element's row (for attention: of the query row, all heads). */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/ops.h"
#include "cuda/check.h"
#include "cuda/cuda.h"
#include "gpucheck.h"
#include "safetensors.h"
#include "status.h"

#define BF16_REL (1.01 / 256.0)   /* rounding to bf16: half an ulp is <= 2^-8 of the value */
#define ATT_TOL 2e-3              /* attention: f32 math on bf16 inputs, of max|row|       */
#define F32_TOL 1e-5              /* f32 element-wise math (norms, RoPE, exp)             */
#define GEMM_TOL 1e-4             /* f32 accumulation of bf16 products, of max|row|        */

static char err[ENG_ERRLEN];

/* ---- helpers ---------------------------------------------------------------- */

static double *
dnan(size_t n)
{
	double *p = gc_xmalloc(n * sizeof *p);
	for (size_t i = 0; i < n; i++)
		p[i] = NAN;
	return p;
}

static struct weight
f32_weight(const float *data, int64_t n)
{
	struct weight w = { .data = data, .dtype = ST_F32, .rows = 1, .cols = n };
	return w;
}

/* got[n] against ref[n], in rows of width elements: each element within
 * elem_rel * |ref| + tol * (largest |ref| of its row); NaN in ref means the
 * element must not be written (got NaN too). */
static void
compare(const char *kernel, const char *shape, const float *got, const double *ref, size_t n, size_t width,
	double elem_rel, double tol)
{
	double max_abs = 0.0, max_rel = 0.0;
	size_t bad_i = SIZE_MAX;
	for (size_t r0 = 0; r0 < n; r0 += width) {
		const size_t r1 = r0 + width < n ? r0 + width : n;
		double s = 0.0;
		for (size_t i = r0; i < r1; i++)
			if (!isnan(ref[i]) && fabs(ref[i]) > s)
				s = fabs(ref[i]);
		if (s == 0.0)
			s = DBL_MIN;      /* an all-zero row must come back exactly zero */
		for (size_t i = r0; i < r1; i++) {
			if (isnan(ref[i])) {
				if (!isnan(got[i]) && bad_i == SIZE_MAX)
					bad_i = i;
				continue;
			}
			double d = fabs((double)got[i] - ref[i]);
			if (!(d <= elem_rel * fabs(ref[i]) + tol * s) && bad_i == SIZE_MAX)
				bad_i = i;
			if (isnan(d))
				d = INFINITY;
			if (d > max_abs)
				max_abs = d;
			if (d / s > max_rel && s > DBL_MIN)
				max_rel = d / s;
		}
	}
	const int ok = gc_check(bad_i == SIZE_MAX,
				"%-12s %-58s max abs %-9.3g max rel %-9.3g tol %.3g|ref| + %.3g max|ref|", kernel,
				shape, max_abs, max_rel, elem_rel, tol);
	if (!ok)
		printf("     first bad element %zu (row %zu, col %zu): got %.9g, want %.9g\n", bad_i, bad_i / width,
		       bad_i % width, (double)got[bad_i], ref[bad_i]);
}

/* ---- embedding -------------------------------------------------------------- */

static void
check_embed(int vocab, int d, int rows, int n_active)
{
	float *emb = gc_frand((size_t)vocab * d, -2.0f, 2.0f, 0);
	int32_t *tok = gc_xmalloc((size_t)rows * sizeof *tok);
	float *x = gc_fnan((size_t)rows * d);
	double *ref = dnan((size_t)rows * d);
	for (int r = 0; r < rows; r++) {
		tok[r] = r == 0 ? vocab - 1 : gc_irand(vocab);
		if (r < n_active)
			for (int i = 0; i < d; i++)
				ref[(size_t)r * d + i] = gc_bf(emb[(size_t)tok[r] * d + i]);
	}
	char shape[96];
	snprintf(shape, sizeof shape, "vocab %d d %d rows %d (*n %d)", vocab, d, rows, n_active);
	if (gc_called(kc_embed(emb, vocab, d, tok, rows, n_active, x, err, sizeof err), "kc_embed", err))
		compare("embed", shape, x, ref, (size_t)rows * d, (size_t)d, 0.0, 0.0);
	free(emb);
	free(tok);
	free(x);
	free(ref);
}

/* ---- RMSNorm ------------------------------------------------------------------ */

/* rows output rows from n_x input rows, gathered through idx when gather is
 * set; n_active < 0: no row counter. */
static void
check_rmsnorm(int n_x, int d, int rows, int gather, int n_active)
{
	float *x = gc_xmalloc((size_t)n_x * d * sizeof *x);
	for (int r = 0; r < n_x; r++) {
		const float sc = r % 3 == 0 ? 40.0f : r % 3 == 1 ? 1.0f : 0.02f;   /* scales of the residual stream */
		for (int i = 0; i < d; i++)
			x[(size_t)r * d + i] = gc_unif(-sc, sc);
	}
	float *w = gc_frand((size_t)d, -1.5f, 1.5f, 0);
	int32_t *idx = gather ? gc_xmalloc((size_t)rows * sizeof *idx) : NULL;
	float *out = gc_fnan((size_t)rows * d), *tmp = gc_xmalloc((size_t)d * sizeof *tmp);
	double *ref = dnan((size_t)rows * d);
	const struct weight ww = f32_weight(w, d);
	const int act = n_active < 0 ? rows : n_active;
	for (int r = 0; r < rows; r++) {
		if (idx)
			idx[r] = (int32_t)((r * 7 + 3) % n_x);
		if (r >= act)
			continue;
		ops_rmsnorm(tmp, x + (size_t)(idx ? idx[r] : r) * d, &ww, d, 1e-6f);
		for (int i = 0; i < d; i++)
			ref[(size_t)r * d + i] = tmp[i];
	}
	char shape[96];
	snprintf(shape, sizeof shape, "d %d rows %d of %d%s (*n %d)", d, rows, n_x, gather ? " gathered" : "",
		 n_active);
	if (gc_called(kc_rmsnorm(x, n_x, idx, rows, n_active, w, d, 1e-6f, out, err, sizeof err), "kc_rmsnorm", err))
		compare("rmsnorm", shape, out, ref, (size_t)rows * d, (size_t)d, BF16_REL, F32_TOL);
	free(x);
	free(w);
	free(idx);
	free(out);
	free(tmp);
	free(ref);
}

/* ---- QKV epilogue --------------------------------------------------------------- */

static void
check_qkv_post(int nh, int nkv, int hd, int bias, int qk_norm, double theta, int llama3)
{
	const struct kc_geom g = { .n_layers = 3, .n_kv_heads = nkv, .head_dim = hd, .block_tokens = 16 };
	const int layer = 2, half = hd / 2;
	const int width = (nh + 2 * nkv) * hd, qd = nh * hd, kd = nkv * hd;
	/* Three sequences; the rows: positions of a short prefill, decode rows,
	 * a far position; the last row is past the counter. */
	static const int32_t row_seq[] = { 0, 0, 0, 1, 2, 2, 1, 0, 2, 1 };
	static const int32_t row_pos[] = { 0, 1, 17, 5000, 31, 32, 4095, 255, 33, 4096 };
	const int rows = (int)(sizeof row_pos / sizeof row_pos[0]), n_active = rows - 1;
	const int seq_blocks[3] = { 256 / 16, 5001 / 16 + 1, 34 / 16 + 1 };
	int tab_start[3], n_tables = 0;
	for (int s = 0; s < 3; s++)
		tab_start[s] = n_tables, n_tables += seq_blocks[s];
	/* Table entries no row uses point at a junk block (id 0 before the
	 * scramble) that must stay untouched; each used entry gets its own
	 * block; then the ids are scrambled. */
	int32_t *tables = gc_xmalloc((size_t)n_tables * sizeof *tables);
	for (int i = 0; i < n_tables; i++)
		tables[i] = 0;
	int n_blocks = 1;
	for (int r = 0; r < rows; r++) {
		int32_t *e = &tables[tab_start[row_seq[r]] + row_pos[r] / g.block_tokens];
		if (*e == 0)
			*e = n_blocks++;
	}
	n_blocks += 2;                /* spare blocks nothing points at */
	int32_t *perm = gc_xmalloc((size_t)n_blocks * sizeof *perm);
	for (int i = 0; i < n_blocks; i++)
		perm[i] = i;
	for (int i = n_blocks - 1; i > 0; i--) {
		int j = gc_irand(i + 1);
		int32_t t = perm[i];
		perm[i] = perm[j], perm[j] = t;
	}
	for (int i = 0; i < n_tables; i++)
		tables[i] = perm[tables[i]];
	int32_t pos[16], tab_off[16];
	for (int r = 0; r < rows; r++)
		pos[r] = row_pos[r], tab_off[r] = tab_start[row_seq[r]];

	float *qkv = gc_frand((size_t)rows * width, -3.0f, 3.0f, 0);
	float *b = bias ? gc_frand((size_t)width, -1.0f, 1.0f, 0) : NULL;
	float *qn = qk_norm ? gc_frand((size_t)hd, 0.5f, 1.5f, 0) : NULL;
	float *kn = qk_norm ? gc_frand((size_t)hd, 0.5f, 1.5f, 0) : NULL;
	struct model_config cfg;
	memset(&cfg, 0, sizeof cfg);
	cfg.head_dim = hd;
	cfg.rope_theta = theta;
	if (llama3) {
		cfg.rope_kind = ROPE_LLAMA3;
		cfg.rope_factor = 8.0f, cfg.rope_low_freq = 1.0f, cfg.rope_high_freq = 4.0f;
		cfg.rope_orig_max_pos = 8192;
	}
	float *inv_freq = gc_xmalloc((size_t)half * sizeof *inv_freq);
	ops_rope_inv_freq(&cfg, inv_freq);

	const size_t n_kv = (size_t)n_blocks * kc_block_elems(&g);
	float *kv = gc_frand(n_kv, -1.0f, 1.0f, 1);   /* old cache contents, must survive */
	double *kv_ref = gc_xmalloc(n_kv * sizeof *kv_ref);
	for (size_t i = 0; i < n_kv; i++)
		kv_ref[i] = kv[i];
	float *q = gc_fnan((size_t)rows * qd);
	double *q_ref = dnan((size_t)rows * qd);

	/* The CPU's qkv_rows, on one row at a time. */
	float *v = gc_xmalloc((size_t)width * sizeof *v), *cs = gc_xmalloc((size_t)half * sizeof *cs),
	      *sn = gc_xmalloc((size_t)half * sizeof *sn);
	const struct weight wqn = f32_weight(qn, hd), wkn = f32_weight(kn, hd);
	for (int r = 0; r < n_active; r++) {
		memcpy(v, qkv + (size_t)r * width, (size_t)width * sizeof *v);
		if (b) {
			const struct weight wb = f32_weight(b, width);
			ops_add_weight(v, &wb, width);
		}
		ops_rope_cos_sin(inv_freq, half, pos[r], cs, sn);
		for (int h = 0; h < nh + nkv; h++) {
			float *x = v + (size_t)h * hd;
			if (qk_norm)
				ops_rmsnorm(x, x, h < nh ? &wqn : &wkn, hd, 1e-6f);
			ops_rope(x, half, cs, sn);
		}
		for (int i = 0; i < qd; i++)
			q_ref[(size_t)r * qd + i] = v[i];
		const int32_t blk = tables[tab_off[r] + pos[r] / g.block_tokens];
		for (int kvsel = 0; kvsel < 2; kvsel++)
			for (int h = 0; h < nkv; h++) {
				const size_t o = kc_kv_offset(&g, blk, layer, kvsel, h, pos[r] % g.block_tokens);
				for (int i = 0; i < hd; i++)
					kv_ref[o + i] = v[qd + (size_t)kvsel * kd + (size_t)h * hd + i];
			}
	}
	const struct kc_qkv_args a = {
		.rows = rows, .n_active = n_active, .n_heads = nh, .g = g, .layer = layer, .n_blocks = n_blocks,
		.eps = 1e-6f, .qkv = qkv, .bias = b, .q_norm = qn, .k_norm = kn, .inv_freq = inv_freq, .pos = pos,
		.tab_off = tab_off, .tables = tables, .n_tables = n_tables,
	};
	char shape[120];
	snprintf(shape, sizeof shape, "%d/%d heads hd %d%s%s%s, %d rows (*n %d)", nh, nkv, hd, bias ? " bias" : "",
		 qk_norm ? " qk-norm" : "", llama3 ? " llama3" : "", rows, n_active);
	if (gc_called(kc_qkv_post(&a, q, kv, err, sizeof err), "kc_qkv_post", err)) {
		compare("qkv_post q", shape, q, q_ref, (size_t)rows * qd, (size_t)hd, F32_TOL, F32_TOL);
		compare("qkv_post kv", shape, kv, kv_ref, n_kv, (size_t)hd, BF16_REL, F32_TOL);
	}
	free(tables);
	free(perm);
	free(qkv);
	free(b);
	free(qn);
	free(kn);
	free(inv_freq);
	free(kv);
	free(kv_ref);
	free(q);
	free(q_ref);
	free(v);
	free(cs);
	free(sn);
}

/* ---- attention -------------------------------------------------------------------- */

/* One attention scenario: sequences (a block table each), query rows, the
 * cache, and the float64 reference; then any number of plans (item lists)
 * that must all give the reference. */
struct att {
	int nh, hd, layer, max_rows;
	struct kc_geom g;
	/* sequences */
	int n_seqs;
	int32_t *tables;           /* (n_tables) all tables, one after another */
	int n_tables, cap_tables;
	int seq_tab[64];           /* sequence s's table offset                */
	int n_blocks;
	float *kv;                 /* (n_blocks * block elems), bf16 values    */
	/* rows */
	int rows, n_active, cap_pos, cap_seq, cap_q;
	int32_t *pos, *row_seq;
	float *q;                  /* (rows, nh*hd)                            */
	double *ref;               /* (rows, nh*hd)                            */
	/* the plan */
	struct kc_attn_item *items;
	int n_items, cap_items;
	int32_t *item_rows;
	int n_item_rows, cap_item_rows, n_parts;
};

static void *
grow(void *p, int *cap, int need, size_t elem)
{
	if (need <= *cap)
		return p;
	int c = *cap ? *cap : 16;
	while (c < need)
		c *= 2;
	void *np = realloc(p, (size_t)c * elem);
	if (!np) {
		fprintf(stderr, "out of memory\n");
		exit(1);
	}
	*cap = c;
	return np;
}

static void
att_init(struct att *A, int nh, int nkv, int hd)
{
	memset(A, 0, sizeof *A);
	A->nh = nh, A->hd = hd;
	A->g = (struct kc_geom){ .n_layers = 2, .n_kv_heads = nkv, .head_dim = hd, .block_tokens = 16 };
	A->layer = 1;
	A->max_rows = kc_attention_max_rows(nh, nkv, hd);
}

/* A sequence of n_pos positions; its first `shared` blocks are those of
 * sequence from (< 0: none shared).  Block ids are numbered here and
 * scrambled by att_fill. */
static int
att_seq(struct att *A, int n_pos, int from, int shared)
{
	const int bt = A->g.block_tokens, nb = (n_pos + bt - 1) / bt;
	const int s = A->n_seqs++;
	A->tables = grow(A->tables, &A->cap_tables, A->n_tables + nb, sizeof *A->tables);
	A->seq_tab[s] = A->n_tables;
	for (int i = 0; i < nb; i++)
		A->tables[A->n_tables + i] = from >= 0 && i < shared ? A->tables[A->seq_tab[from] + i] : A->n_blocks++;
	A->n_tables += nb;
	return s;
}

/* A query row of sequence s at position p (q scaled up on every 4th row, so
 * that some softmaxes are sharp). */
static int
att_row(struct att *A, int s, int32_t p)
{
	const int r = A->rows++, qd = A->nh * A->hd;
	A->pos = grow(A->pos, &A->cap_pos, A->rows, sizeof *A->pos);
	A->row_seq = grow(A->row_seq, &A->cap_seq, A->rows, sizeof *A->row_seq);
	A->q = grow(A->q, &A->cap_q, A->rows, (size_t)qd * sizeof *A->q);
	A->pos[r] = p;
	A->row_seq[r] = s;
	const float sc = r % 4 == 3 ? 8.0f : 3.0f;
	for (int i = 0; i < qd; i++)
		A->q[(size_t)r * qd + i] = gc_unif(-sc, sc);
	return r;
}

/* Scramble the block ids, fill the cache (both layers, every block) and
 * compute the reference: per row and head, softmax over positions 0..pos of
 * its sequence, in float64, GQA head h reading kv head h / (nh/nkv). */
static void
att_fill(struct att *A)
{
	int32_t *perm = gc_xmalloc((size_t)A->n_blocks * sizeof *perm);
	for (int i = 0; i < A->n_blocks; i++)
		perm[i] = i;
	for (int i = A->n_blocks - 1; i > 0; i--) {
		int j = gc_irand(i + 1);
		int32_t t = perm[i];
		perm[i] = perm[j], perm[j] = t;
	}
	for (int i = 0; i < A->n_tables; i++)
		A->tables[i] = perm[A->tables[i]];
	free(perm);
	const size_t n_kv = (size_t)A->n_blocks * kc_block_elems(&A->g);
	A->kv = gc_frand(n_kv, -1.0f, 1.0f, 1);
	A->n_active = A->rows;

	const int nh = A->nh, hd = A->hd, group = nh / A->g.n_kv_heads, bt = A->g.block_tokens;
	const int qd = nh * hd;
	A->ref = gc_xmalloc((size_t)A->rows * qd * sizeof *A->ref);
	int max_pos = 0;
	for (int r = 0; r < A->rows; r++)
		if (A->pos[r] > max_pos)
			max_pos = A->pos[r];
	double *sc = gc_xmalloc((size_t)(max_pos + 1) * sizeof *sc);
	const double scale = 1.0 / sqrt((double)hd);
	for (int r = 0; r < A->rows; r++) {
		const int32_t *table = A->tables + A->seq_tab[A->row_seq[r]];
		for (int h = 0; h < nh; h++) {
			const int kvh = h / group;
			const float *qv = A->q + (size_t)r * qd + (size_t)h * hd;
			double mx = -INFINITY, sum = 0.0;
			for (int32_t p = 0; p <= A->pos[r]; p++) {
				const float *k = A->kv + kc_kv_offset(&A->g, table[p / bt], A->layer, 0, kvh, p % bt);
				double s = 0.0;
				for (int i = 0; i < hd; i++)
					s += (double)qv[i] * k[i];
				sc[p] = s * scale;
				if (sc[p] > mx)
					mx = sc[p];
			}
			double *o = A->ref + (size_t)r * qd + (size_t)h * hd;
			for (int i = 0; i < hd; i++)
				o[i] = 0.0;
			for (int32_t p = 0; p <= A->pos[r]; p++) {
				const double w = exp(sc[p] - mx);
				const float *v = A->kv + kc_kv_offset(&A->g, table[p / bt], A->layer, 1, kvh, p % bt);
				sum += w;
				for (int i = 0; i < hd; i++)
					o[i] += w * v[i];
			}
			for (int i = 0; i < hd; i++)
				o[i] /= sum;
		}
	}
	free(sc);
}

static void
att_free(struct att *A)
{
	free(A->tables);
	free(A->kv);
	free(A->pos);
	free(A->row_seq);
	free(A->q);
	free(A->ref);
	free(A->items);
	free(A->item_rows);
}

static void
plan_reset(struct att *A)
{
	A->n_items = A->n_item_rows = A->n_parts = 0;
}

/* One item: rows[n] of sequence s against [kv0, kv1); fresh slots. */
static void
plan_item(struct att *A, const int *rows, int n, int s, int kv0, int kv1)
{
	A->items = grow(A->items, &A->cap_items, A->n_items + 1, sizeof *A->items);
	A->item_rows = grow(A->item_rows, &A->cap_item_rows, A->n_item_rows + n, sizeof *A->item_rows);
	A->items[A->n_items++] = (struct kc_attn_item){
		.row0 = A->n_item_rows, .n_rows = n, .tab = A->seq_tab[s], .kv0 = kv0, .kv1 = kv1, .part0 = A->n_parts,
	};
	for (int j = 0; j < n; j++)
		A->item_rows[A->n_item_rows + j] = rows[j];
	A->n_item_rows += n;
	A->n_parts += n;
}

/* Items for rows[n] of sequence s over [kv0, kv1) in chunks: chunk > 0
 * positions each, or (chunk == 0) uneven random lengths 1..200. */
static void
plan_chunks(struct att *A, const int *rows, int n, int s, int kv0, int kv1, int chunk)
{
	for (int a = kv0; a < kv1;) {
		int len = chunk > 0 ? chunk : 1 + gc_irand(200);
		int b = a + len < kv1 ? a + len : kv1;
		plan_item(A, rows, n, s, a, b);
		a = b;
	}
}

/* The rows of sequence s (consecutive in A), in tiles of max_rows, each tile
 * over [kv0, last position of the tile + 1) in chunks (chunk < 0: one item). */
static void
plan_seq_tiles(struct att *A, int s, int kv0, int chunk)
{
	int rows[256], n = 0;
	for (int r = 0; r < A->rows; r++)
		if (A->row_seq[r] == s)
			rows[n++] = r;
	for (int t = 0; t < n; t += A->max_rows) {
		const int m = n - t < A->max_rows ? n - t : A->max_rows;
		const int kv1 = A->pos[rows[t + m - 1]] + 1;
		if (chunk < 0)
			plan_item(A, rows + t, m, s, kv0, kv1);
		else
			plan_chunks(A, rows + t, m, s, kv0, kv1, chunk);
	}
}

static void
plan_shuffle(struct att *A)
{
	for (int i = A->n_items - 1; i > 0; i--) {
		int j = gc_irand(i + 1);
		struct kc_attn_item t = A->items[i];
		A->items[i] = A->items[j], A->items[j] = t;
	}
}

/* Run the plan and compare with the reference; rows >= n_active must come
 * back zero.  decode_path: the one-row passes' launch (decode items only). */
static void
att_run_on(struct att *A, const char *what, int ctas, int decode_path, int cluster)
{
	const int qd = A->nh * A->hd;
	const size_t n = (size_t)A->rows * qd;
	float *out = gc_fnan(n);
	double *ref = gc_xmalloc(n * sizeof *ref);
	for (size_t i = 0; i < n; i++)
		ref[i] = i < (size_t)A->n_active * qd ? A->ref[i] : 0.0;
	const struct kc_attn_args a = {
		.n_heads = A->nh, .g = A->g, .layer = A->layer, .n_blocks = A->n_blocks, .kv = A->kv,
		.tables = A->tables, .n_tables = A->n_tables, .rows = A->rows, .n_active = A->n_active, .q = A->q,
		.pos = A->pos, .item_rows = A->item_rows, .n_item_rows = A->n_item_rows, .items = A->items,
		.n_items = A->n_items, .ctas = ctas, .decode_path = decode_path, .cluster = cluster,
	};
	char shape[128];
	if (decode_path == 2)
		snprintf(shape, sizeof shape, "%d/%d hd %2d %s: %d rows, clusters of %s", A->nh, A->g.n_kv_heads,
			 A->hd, what, A->rows, cluster ? "2" : "the largest");
	else
		snprintf(shape, sizeof shape, "%d/%d hd %2d %s: %d rows %d items %d %s", A->nh, A->g.n_kv_heads, A->hd,
			 what, A->rows, A->n_items, ctas, decode_path ? "warps, decode path" : "ctas");
	if (gc_called(kc_attention(&a, out, err, sizeof err), "kc_attention", err))
		compare("attention", shape, out, ref, n, (size_t)qd, BF16_REL, ATT_TOL);
	free(out);
	free(ref);
}

static void
att_run(struct att *A, const char *what, int ctas)
{
	att_run_on(A, what, ctas, 0, 0);
}

/* Decode items only: the usual launch, then (where the geometry has
 * one-warp items) the one-row passes' launch and the cluster kernel (the
 * largest clusters, and clusters of 2: more tiles a CTA).
 * BRAID_TEST_NO_CLUSTER=1 leaves the cluster kernel out: compute-sanitizer's
 * racecheck fails inside itself on it ("failed to handle a hardware
 * exception"), and the other kernels' checks follow it. */
static void
att_run_decode(struct att *A, const char *what, int ctas, int clusters)
{
	att_run_on(A, what, ctas, 0, 0);
	if (kc_attn_warp_item(1, A->nh, A->g.n_kv_heads, A->hd)) {
		att_run_on(A, what, ctas, 1, 0);
		const char *nc = getenv("BRAID_TEST_NO_CLUSTER");
		if (clusters && !(nc && !strcmp(nc, "1"))) {
			att_run_on(A, what, ctas, 2, 0);
			att_run_on(A, what, ctas, 2, 2);
		}
	}
}

/* (a) decode and (b) split-K: 8 sequences, one row each at its last
 * position, plus a padding row past the counter. */
static void
att_decode(int nh, int nkv, int hd, int clusters)
{
	static const int lens[] = { 1, 15, 16, 17, 100, 300, 1000, 2047 };
	const int n_seq = (int)(sizeof lens / sizeof lens[0]);
	struct att A;
	att_init(&A, nh, nkv, hd);
	for (int i = 0; i < n_seq; i++)
		att_row(&A, att_seq(&A, lens[i], -1, 0), lens[i] - 1);
	att_row(&A, 0, 0);            /* padding: no items, *n excludes it */
	att_fill(&A);
	A.n_active = n_seq;

	plan_reset(&A);
	for (int s = 0; s < n_seq; s++)
		plan_item(&A, &s, 1, s, 0, lens[s]);
	att_run_decode(&A, "(a) decode", 132, clusters);

	static const int chunks[] = { 32, 96, 0 };
	static const char *names[] = { "(b) split-K 32", "(b) split-K 96", "(b) split-K uneven" };
	for (int c = 0; c < 3; c++) {
		plan_reset(&A);
		for (int s = 0; s < n_seq; s++)
			plan_chunks(&A, &s, 1, s, 0, lens[s], chunks[c]);
		if (chunks[c] == 0)
			plan_shuffle(&A);
		att_run_decode(&A, names[c], c == 0 ? 5 : 1000, 0);
	}
	att_free(&A);
}

/* (c) shared prefix: 12 sequences whose tables share their first 32 blocks,
 * one item for all 12 rows over [0, 512), then one per sequence. */
static void
att_prefix(int nh, int nkv, int hd)
{
	static const int last[] = { 511, 512, 513, 527, 528, 529, 600, 700, 1000, 1023, 1024, 1500 };
	const int n_seq = (int)(sizeof last / sizeof last[0]);
	struct att A;
	att_init(&A, nh, nkv, hd);
	int rows[12];
	for (int i = 0; i < n_seq; i++)
		rows[i] = att_row(&A, att_seq(&A, last[i] + 1, i == 0 ? -1 : 0, 32), last[i]);
	att_fill(&A);
	if (A.max_rows < n_seq) {
		printf("skip attention %d/%d hd %d (c): %d rows per item\n", nh, nkv, hd, A.max_rows);
		att_free(&A);
		return;
	}
	plan_reset(&A);
	plan_item(&A, rows, n_seq, 0, 0, 512);
	for (int s = 0; s < n_seq; s++)    /* the row at 511 gets an empty item */
		plan_item(&A, &rows[s], 1, s, 512, last[s] + 1);
	att_run(&A, "(c) shared prefix", 132);
	/* the same with the per-sequence parts split too, items shuffled */
	plan_reset(&A);
	plan_chunks(&A, rows, n_seq, 0, 0, 512, 96);
	for (int s = 0; s < n_seq; s++)
		plan_chunks(&A, &rows[s], 1, s, 512, last[s] + 1, 0);
	plan_shuffle(&A);
	att_run(&A, "(c) shared prefix split", 7);
	/* the prefix in items of as many rows as one warp's unit carries (a
	 * decode pass's plan): all of them, and every per-sequence part, on the
	 * one-warp kernel - launched as beside CTA units, then alone with
	 * programmatic dependent launch */
	const int wr = kc_attn_warp_rows(nh, nkv, hd);
	if (wr > 1) {
		plan_reset(&A);
		for (int s = 0; s < n_seq; s += wr)
			plan_chunks(&A, rows + s, n_seq - s < wr ? n_seq - s : wr, s, 0, 512, 96);
		for (int s = 0; s < n_seq; s++)
			plan_chunks(&A, &rows[s], 1, s, 512, last[s] + 1, 0);
		plan_shuffle(&A);
		att_run_on(&A, "(c) shared prefix, one-warp units of rows", 7, 0, 0);
		att_run_on(&A, "(c) shared prefix, one-warp units of rows", 7, 1, 0);
	}
	att_free(&A);
}

/* (d) prefill: 100 consecutive rows in tiles of max_rows, causal; then a
 * continued prefill at 300..399 with its tiles split into chunks of 96. */
static void
att_prefill(int nh, int nkv, int hd)
{
	struct att A;
	att_init(&A, nh, nkv, hd);
	int s = att_seq(&A, 100, -1, 0);
	for (int p = 0; p < 100; p++)
		att_row(&A, s, p);
	att_fill(&A);
	plan_reset(&A);
	plan_seq_tiles(&A, s, 0, -1);
	att_run(&A, "(d) prefill 0..99", 7);
	att_free(&A);

	att_init(&A, nh, nkv, hd);
	s = att_seq(&A, 400, -1, 0);
	for (int p = 300; p < 400; p++)
		att_row(&A, s, p);
	att_fill(&A);
	plan_reset(&A);
	plan_seq_tiles(&A, s, 0, 96);
	att_run(&A, "(d) prefill 300..399 split 96", 132);
	att_free(&A);
}

/* (e) items whose range lies past some of their rows' positions: four rows
 * of one sequence (10, 40, 41, 200) over [0, 64) and [64, 201); the first
 * three have empty partials in the second; plus a row of another sequence
 * whose second item starts past its position. */
static void
att_empty(int nh, int nkv, int hd)
{
	struct att A;
	att_init(&A, nh, nkv, hd);
	const int s0 = att_seq(&A, 201, -1, 0), s1 = att_seq(&A, 300, -1, 0);
	int rows[4];
	rows[0] = att_row(&A, s0, 10);
	rows[1] = att_row(&A, s0, 40);
	rows[2] = att_row(&A, s0, 41);
	rows[3] = att_row(&A, s0, 200);
	int r1 = att_row(&A, s1, 70);
	att_fill(&A);
	plan_reset(&A);
	plan_item(&A, rows, 4, s0, 0, 64);
	plan_item(&A, rows, 4, s0, 64, 201);
	plan_item(&A, &r1, 1, s1, 0, 71);
	plan_item(&A, &r1, 1, s1, 100, 300);
	att_run(&A, "(e) empty partials", 3);
	att_free(&A);
}

/* ---- SwiGLU, GEMM ------------------------------------------------------------------- */

static void
check_swiglu(int rows, int f)
{
	float *gu = gc_xmalloc((size_t)rows * 2 * f * sizeof *gu);
	for (int r = 0; r < rows; r++)
		for (int i = 0; i < 2 * f; i++)
			gu[(size_t)r * 2 * f + i] = i < f ? gc_unif(-12.0f, 12.0f) : gc_unif(-2.0f, 2.0f);
	float *h = gc_fnan((size_t)rows * f), *g = gc_xmalloc((size_t)f * sizeof *g);
	double *ref = gc_xmalloc((size_t)rows * f * sizeof *ref);
	for (int r = 0; r < rows; r++) {
		memcpy(g, gu + (size_t)r * 2 * f, (size_t)f * sizeof *g);
		ops_swiglu(g, gu + (size_t)r * 2 * f + f, f);
		for (int i = 0; i < f; i++)
			ref[(size_t)r * f + i] = g[i];
	}
	char shape[96];
	/* gate and up interleaved, as the weights' rows are */
	float *pairs = gc_xmalloc((size_t)rows * 2 * f * sizeof *pairs);
	for (int r = 0; r < rows; r++)
		for (int i = 0; i < f; i++) {
			pairs[(size_t)r * 2 * f + 2 * i] = gu[(size_t)r * 2 * f + i];
			pairs[(size_t)r * 2 * f + 2 * i + 1] = gu[(size_t)r * 2 * f + f + i];
		}
	snprintf(shape, sizeof shape, "rows %d f %d pairs", rows, f);
	if (gc_called(kc_swiglu(pairs, rows, f, h, err, sizeof err), "kc_swiglu", err))
		compare("swiglu", shape, h, ref, (size_t)rows * f, (size_t)f, BF16_REL, F32_TOL);
	free(pairs);
	free(gu);
	free(h);
	free(g);
	free(ref);
}

/* y(n, rows) = x . W^T (+ y when beta is 1), W and x bf16, float64 reference. */
static void
check_gemm(int rows, int cols, int n, float beta)
{
	float *w = gc_frand((size_t)rows * cols, -1.0f, 1.0f, 1);
	float *x = gc_frand((size_t)n * cols, -2.0f, 2.0f, 1);
	float *y = beta != 0.0f ? gc_frand((size_t)n * rows, -50.0f, 50.0f, 0) : gc_fnan((size_t)n * rows);
	double *ref = gc_xmalloc((size_t)n * rows * sizeof *ref);
	for (int b = 0; b < n; b++)
		for (int r = 0; r < rows; r++) {
			double s = beta != 0.0f ? (double)beta * y[(size_t)b * rows + r] : 0.0;
			const float *wr = w + (size_t)r * cols, *xb = x + (size_t)b * cols;
			for (int c = 0; c < cols; c++)
				s += (double)wr[c] * xb[c];
			ref[(size_t)b * rows + r] = s;
		}
	char shape[96];
	snprintf(shape, sizeof shape, "W %dx%d, n %d, beta %g", rows, cols, n, (double)beta);
	if (gc_called(kc_gemm_bf16(w, rows, cols, x, n, beta, y, err, sizeof err), "kc_gemm_bf16", err))
		compare("gemm bf16", shape, y, ref, (size_t)n * rows, (size_t)rows, 0.0, GEMM_TOL);
	free(w);
	free(x);
	free(y);
	free(ref);
}

/* ---- bad arguments: refused on the host, with a message --------------------------- */

static void
check_errors(void)
{
	float emb[4 * 8] = { 0 }, x[2 * 8];
	int32_t tok[2] = { 1, 4 };
	err[0] = 0;
	int rc = kc_embed(emb, 4, 8, tok, 2, 2, x, err, sizeof err);
	gc_check(rc == ENG_ERR_INVALID && err[0], "errors       embed token past the vocabulary: %s (%s)", eng_strerror(rc),
	         err);

	struct att A;
	att_init(&A, 4, 2, 32);
	const int s = att_seq(&A, 40, -1, 0);
	int rows[64];
	for (int p = 0; p < 40; p++)
		rows[p] = att_row(&A, s, p);
	att_fill(&A);
	plan_reset(&A);
	plan_item(&A, rows, A.max_rows + 1 <= 40 ? A.max_rows + 1 : 40, s, 0, 40);
	float *out = gc_fnan((size_t)A.rows * A.nh * A.hd);
	const struct kc_attn_args a = {
		.n_heads = A.nh, .g = A.g, .layer = A.layer, .n_blocks = A.n_blocks, .kv = A.kv, .tables = A.tables,
		.n_tables = A.n_tables, .rows = A.rows, .n_active = A.rows, .q = A.q, .pos = A.pos,
		.item_rows = A.item_rows, .n_item_rows = A.n_item_rows, .items = A.items, .n_items = A.n_items, .ctas = 4,
	};
	err[0] = 0;
	rc = kc_attention(&a, out, err, sizeof err);
	gc_check(rc == ENG_ERR_INVALID && err[0], "errors       attention item with too many rows: %s (%s)",
	         eng_strerror(rc), err);
	plan_reset(&A);
	plan_item(&A, rows, 1, s, 0, 64);           /* reads past the table */
	struct kc_attn_args b = a;
	b.items = A.items, b.item_rows = A.item_rows, b.n_items = A.n_items, b.n_item_rows = A.n_item_rows;
	err[0] = 0;
	rc = kc_attention(&b, out, err, sizeof err);
	gc_check(rc == ENG_ERR_INVALID && err[0], "errors       attention range past the block table: %s (%s)",
	         eng_strerror(rc), err);
	free(out);
	att_free(&A);
}

int
main(void)
{
	if (!gc_start())
		return GC_SKIP;
	printf("CPU kernels: %s\n", ops_simd() ? "AVX2" : "portable");

	check_embed(1000, 896, 37, 33);
	check_embed(5, 4096, 3, 3);

	check_rmsnorm(5, 896, 5, 0, -1);
	check_rmsnorm(5, 4096, 5, 0, 4);
	check_rmsnorm(20, 1000, 7, 1, 6);
	check_rmsnorm(9, 2048, 3, 1, -1);

	check_qkv_post(16, 8, 128, 0, 1, 1000000.0, 0);   /* Qwen3 */
	check_qkv_post(14, 2, 64, 1, 0, 1000000.0, 0);    /* Qwen2 */
	check_qkv_post(32, 8, 128, 0, 0, 500000.0, 1);    /* Llama 3 */
	check_qkv_post(8, 4, 256, 1, 1, 10000.0, 0);      /* widest head */
	check_qkv_post(4, 2, 36, 1, 1, 10000.0, 0);       /* hd not a multiple of 32 */

	/* Every attention scenario twice: units of many queries and one-warp
	 * decode units on the tensor cores (the default), then on the CUDA cores
	 * (BRAID_ATT_MMA=0, read by k_init at each launch). */
	static const int geo[][3] = {
		{ 16, 8, 128 }, { 32, 8, 128 }, { 4, 2, 32 }, { 4, 2, 64 },
		{ 6, 2, 64 },                  /* braid-arith: 3 q heads per kv head */
		{ 8, 4, 256 }, { 4, 2, 40 },   /* widest head; hd % 32 != 0 */
	};
	for (int mma = 1; mma >= 0; mma--) {
		setenv("BRAID_ATT_MMA", mma ? "1" : "0", 1);
		for (size_t i = 0; i < sizeof geo / sizeof geo[0]; i++) {
			printf("attention (%s): %d/%d heads, head_dim %d, %d rows per item\n",
			       mma ? "tensor cores" : "CUDA cores", geo[i][0], geo[i][1], geo[i][2],
			       kc_attention_max_rows(geo[i][0], geo[i][1], geo[i][2]));
			att_decode(geo[i][0], geo[i][1], geo[i][2], mma);
			att_prefix(geo[i][0], geo[i][1], geo[i][2]);
			att_prefill(geo[i][0], geo[i][1], geo[i][2]);
			att_empty(geo[i][0], geo[i][1], geo[i][2]);
		}
	}
	unsetenv("BRAID_ATT_MMA");
	/* Decode geometries the list above lacks: 8 q heads per kv head, one, and
	 * head_dim 16 (the one-warp and cluster kernels' extremes). */
	static const int dgeo[][3] = { { 16, 2, 64 }, { 8, 1, 16 }, { 4, 4, 128 } };
	for (size_t i = 0; i < sizeof dgeo / sizeof dgeo[0]; i++) {
		printf("attention decode: %d/%d heads, head_dim %d\n", dgeo[i][0], dgeo[i][1], dgeo[i][2]);
		att_decode(dgeo[i][0], dgeo[i][1], dgeo[i][2], 1);
	}

	check_swiglu(5, 4864);
	check_swiglu(3, 100);

	static const int gn[] = { 1, 7, 64 };
	for (int i = 0; i < 3; i++) {
		check_gemm(1536, 896, gn[i], 0.0f);
		check_gemm(1000, 4864, gn[i], i == 1 ? 1.0f : 0.0f);
	}

	check_errors();

	return gc_finish();
}
