// backend.cu - the CUDA backend: bf16 weights on the device, cuBLAS GEMMs,
// the kernels of kernels.cu, paged attention planned on the host (split-K
// chunks and shared-prefix items), logits kept in device slots and sampled
// there, and one CUDA graph per bucket of batch rows.  Engine thread.
#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <vector>

#include <cuda_runtime.h>
#include <cuda_profiler_api.h>

extern "C" {
#include "backend.h"
#include "model.h"
#include "status.h"
#include "cuda/cuda.h"
#include "cpu/ops.h"
}
#include "cuda/gemm.cuh"
#include "cuda/kernels.cuh"

// Row buckets for CUDA graphs: a pass of n rows runs the graph captured for
// the smallest bucket >= n (padding rows compute and are ignored).
static const int buckets[] = { 1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 80, 96, 128, 160, 192, 224, 256 };
#define N_BUCKETS ((int)(sizeof buckets / sizeof buckets[0]))

// Shared-prefix attention must save at least this many bytes per layer and
// kv head over per-sequence reads (it costs a launch-free but real extra
// partial per row), and cover at least this many positions.
#define CASCADE_MIN_SAVING 16384.0
#define CASCADE_MIN_POS 64

// Shortest split-K chunk.  Measured on an H100 (0.6B shape, 512-token
// prompt): one tile per unit beats four (16 vs 28 us a layer at N=1, 54 vs
// 68 us at N=64): a unit's tiles run one after another and each waits on
// its barriers, so spreading them over more CTAs wins despite the extra
// partials to merge.
#define ATT_MIN_CHUNK K_ATT_TILE
// Decode rows (the one-warp kernel) split into chunks this many times
// smaller than the CTA kernel's: its units are short (one warp, no
// prologue to amortise) and more of them keep more loads in flight.  Of 1,
// 2 and 3 (H100, 0.6b and 1.7b shapes), 3 was best at N = 128 and within 1%
// of the best at N = 64.
#define ATT_WARP_SPLIT 3

struct cl_layer {
	bf16 *wqkv;          // (nh*hd + 2*nkv*hd, hidden)
	bf16 *wo;            // (hidden, nh*hd)
	bf16 *wgu;           // (2*inter, hidden): gate and up rows interleaved (2j gate j, 2j+1 up j)
	bf16 *wdown;         // (hidden, inter)
	float *bqkv;         // (nh*hd + 2*nkv*hd) or NULL
	float *attn_norm, *mlp_norm;   // (hidden)
	float *qn, *kn;      // (hd) or NULL
};

// Host-planned metadata, mirrored in pinned host memory and on the device at
// fixed offsets (graphs read it from there).
struct meta_layout {
	size_t counters;     // int[4]: n_rows, n_logits, CTA items, warp items
	size_t tokens, pos, tab_off, logit_rows;   // int[rows_cap]
	size_t tok_src;      // int[rows_cap]: run ahead, row i's token is sampling result tok_src[i]'s
	size_t rp_off;       // int[rows_cap + 1]
	size_t items;        // k_attn_item[cap_items]
	size_t item_rows;    // int[cap_parts]
	size_t rp_idx;       // int[cap_parts]
	size_t tables;       // int[cap_table]
	size_t bytes;
};

struct graph_entry {
	int rows, logits;
	bool warp_pass;              // the pass's attention on the one-warp kernel alone
	cudaGraphExec_t exec;
};

struct cuda_backend {
	const struct model *m;
	struct model_config c;
	int qd, kd, qkvd;            // nh*hd, nkv*hd, qd + 2*kd
	int max_rows, max_seqs, use_graphs, n_sm, ctas, warps, one_stream, one_warps, att_cluster, fuse_swiglu, fuse_norm;
	bool att_cluster_early;      // k_attention_rows' early (BRAID_ATT_CLUSTER_EARLY=0 / 1)
	unsigned skip;               // BRAID_PROFILE_SKIP: SKIP_* kinds of kernels left out
	bool warp_items;             // one-row items go to the one-warp kernel (k_attn_warp_item)
	// Rows a shared-prefix item of a decode pass carries on the one-warp
	// kernel (k_attn_warp_rows; 1: such items go to the CTA kernel, as do
	// all with BRAID_ATT_PREFIX_WARP=0).
	int warp_rows;
	// The current pass: every row the only one of its sequence and every
	// item a one-warp item, so its attention is the one-warp kernel alone,
	// on st with programmatic dependent launch (k_attention_decode).
	bool warp_pass;
	// Rows the buffers hold: max_rows, or the graph bucket above it (a pass
	// of max_rows or fewer rows runs padded to its bucket).
	int rows_cap;
	cudaStream_t st, st2;        // st2: the decode attention beside st's
	cudaEvent_t ev_fork, ev_join;
	k_gemm *gm;                  // the projections (gemm.cu)

	bf16 *emb, *lm_head;
	float *out_norm, *inv_freq;
	struct cl_layer *L;

	bf16 *kv;
	k_kv_geom g;
	int n_blocks;
	size_t block_elems;

	float *x, *qkv, *q, *gu, *part_ml, *part_acc;
	// A pass's logits (row i: its logit row i) go to `logits`, rows_cap rows
	// right behind the max_seqs slots in one buffer (`slots`).  A slot's
	// logits stay where its last pass left them (slot_row[s] = i: logits
	// row i; -1: slot s itself) until a pass that does not recompute them
	// would overwrite that row (keep_slots copies them to the slot then).
	// Sampling and slot reads and copies find them through slot_row, so a
	// decode step copies no logits.
	float *slots, *logits;
	std::vector<int32_t> *slot_row, *staged;     // staged: slots whose slot_row may be >= 0
	std::vector<long> *slot_mark;                // keep_slots: marked with the pass's number
	long n_pass;
	bf16 *xb, *att, *h;
	int cap_items, cap_parts, cap_table;

	struct meta_layout ml;
	char *hmeta, *dmeta;
	int32_t *d_counters;

	std::vector<graph_entry> *graphs;
	// BRAID_PROFILE_PASS=K: the profiler (ncu --profile-from-start off)
	// records from pass K to pass K+1: one step with its sampling.
	long pass, profile_pass;

	struct cuda_samp_row *d_srows, *h_srows;
	// One buffer for a sampling launch's results and, right behind the n
	// results, their n statuses, so a step's outcome comes back in one copy
	// (h_sout, pinned, the same layout).
	void *d_sout, *h_sout;
	void *d_sscratch;
	size_t sscratch_bytes;

	// cuda_timing: events at a pass's start and end and a sampling
	// launch's (created when timing first starts), whether a pair is
	// recorded and not yet added to tm.
	int timing, t_pass, t_samp;
	cudaEvent_t ev_t[4];
	struct backend_timing tm;

	// Planning ahead (BRAID_PLAN_AHEAD=0: off): the last pass's batch, and
	// whether dmeta holds the next pass's plan, made and uploaded while the
	// GPU sampled (plan_ahead).
	bool ahead_on;
	// Running ahead (BRAID_RUN_AHEAD=0: off): the planned pass launched too,
	// its tokens taken from the sampling's results on the device; confirmed
	// by the next forward_slots when its batch is the guess.
	bool run_ahead_on;
	struct ahead_state *ahead;
	cudaEvent_t ev_up, ev_sout;  // after a pass's upload; after sampling's results
	// The sampling's copies and a plan made ahead go on st_up, beside the
	// sampling and the pass before: ev_pass_end (st: the pass before the
	// sampling has ended), ev_rows (st_up: the rows are on the device),
	// ev_samp (st: the sampling has ended).
	cudaStream_t st_up;
	cudaEvent_t ev_pass_end, ev_rows, ev_samp;
	// Timing a pass run ahead: two pairs of events (start, end), used in
	// turn, so that the host never waits to read one (the pair used two
	// passes ago has ended by the time it is used again); t_spec[k]: pair
	// k's pass was confirmed and is not yet added to tm.
	cudaEvent_t ev_s[2][2];
	int t_spec[2], spec_pair;

	// Sampling's rows upload (h_srows) may still be in flight.
	bool srows_busy;

	char err[ENG_ERRLEN];
};

static int
fail(struct cuda_backend *cb, cudaError_t e, const char *what)
{
	snprintf(cb->err, sizeof cb->err, "CUDA: %s: %s", what, cudaGetErrorString(e));
	return ENG_ERR_DEVICE;
}

#define CK(call)                                                        \
	do {                                                            \
		cudaError_t e_ = (call);                                \
		if (e_ != cudaSuccess)                                  \
			return fail(cb, e_, #call);                     \
	} while (0)

template <typename T>
static T *
meta_at(char *base, size_t off)
{
	return (T *)(base + off);
}

// ---- weights -------------------------------------------------------------------

// w (rows, cols) in bf16 into host staging: row j at dst + j * stride.
static void
stage_bf16(const struct weight *w, bf16 *dst, size_t stride)
{
	const size_t rows = (size_t)w->rows, cols = (size_t)w->cols;
	if (w->dtype == ST_BF16 && stride == cols) {
		memcpy(dst, w->data, rows * cols * sizeof(bf16));
		return;
	}
	for (size_t j = 0; j < rows; j++) {
		bf16 *d = dst + j * stride;
		if (w->dtype == ST_BF16) {
			memcpy(d, (const bf16 *)w->data + j * cols, cols * sizeof(bf16));
			continue;
		}
		for (size_t i = 0; i < cols; i++)
			d[i] = __float2bfloat16(st_load(w->data, w->dtype, j * cols + i));
	}
}

// ws[0..nw) concatenated by rows, as bf16 on the device; with pairs (nw 2,
// equal shapes) their rows interleaved instead: row 2j = ws[0]'s j, row
// 2j+1 = ws[1]'s j (the gate and up projections, for k_gemm_run_swiglu).
static int
upload_bf16(struct cuda_backend *cb, const struct weight *const *ws, int nw, bf16 **out, size_t *bytes,
	    bool pairs = false)
{
	if (pairs && (nw != 2 || ws[0]->rows != ws[1]->rows || ws[0]->cols != ws[1]->cols)) {
		snprintf(cb->err, sizeof cb->err, "gate and up projections of different shapes (%lldx%lld, %lldx%lld)",
			 (long long)ws[0]->rows, (long long)ws[0]->cols, (long long)ws[nw > 1]->rows,
			 (long long)ws[nw > 1]->cols);
		return ENG_ERR_INVALID;
	}
	size_t n = 0;
	for (int i = 0; i < nw; i++)
		n += (size_t)ws[i]->rows * (size_t)ws[i]->cols;
	bf16 *host = (bf16 *)malloc(n * sizeof(bf16));
	if (!host) {
		snprintf(cb->err, sizeof cb->err, "out of host memory staging %zu weights", n);
		return ENG_ERR_NOMEM;
	}
	if (pairs) {
		const size_t cols = (size_t)ws[0]->cols;
		stage_bf16(ws[0], host, 2 * cols);
		stage_bf16(ws[1], host + cols, 2 * cols);
	} else {
		size_t at = 0;
		for (int i = 0; i < nw; i++) {
			stage_bf16(ws[i], host + at, (size_t)ws[i]->cols);
			at += (size_t)ws[i]->rows * (size_t)ws[i]->cols;
		}
	}
	cudaError_t e = cudaMalloc((void **)out, n * sizeof(bf16));
	if (e == cudaSuccess)
		e = cudaMemcpy(*out, host, n * sizeof(bf16), cudaMemcpyHostToDevice);
	free(host);
	if (e != cudaSuccess) {
		size_t fr = 0, tot = 0;
		cudaMemGetInfo(&fr, &tot);
		snprintf(cb->err, sizeof cb->err, "cannot place %zu bytes of weights on the GPU (%zu of %zu bytes free): %s",
			 n * sizeof(bf16), fr, tot, cudaGetErrorString(e));
		return e == cudaErrorMemoryAllocation ? ENG_ERR_NOMEM : ENG_ERR_DEVICE;
	}
	*bytes += n * sizeof(bf16);
	return 0;
}

// A vector weight (or several, concatenated) as f32 on the device; *out
// stays NULL when the first is absent.
static int
upload_f32(struct cuda_backend *cb, const struct weight *const *ws, int nw, float **out, size_t *bytes)
{
	*out = NULL;
	if (!ws[0]->data)
		return 0;
	size_t n = 0;
	for (int i = 0; i < nw; i++)
		n += (size_t)ws[i]->rows * (size_t)ws[i]->cols;
	std::vector<float> host(n);
	size_t at = 0;
	for (int i = 0; i < nw; i++)
		for (int64_t j = 0; j < ws[i]->rows * ws[i]->cols; j++)
			host[at++] = st_load(ws[i]->data, ws[i]->dtype, (size_t)j);
	CK(cudaMalloc((void **)out, n * sizeof(float)));
	CK(cudaMemcpy(*out, host.data(), n * sizeof(float), cudaMemcpyHostToDevice));
	*bytes += n * sizeof(float);
	return 0;
}

static int
upload_weights(struct cuda_backend *cb, size_t *bytes)
{
	const struct model *m = cb->m;
	int rc;
	*bytes = 0;
	const struct weight *emb[] = { &m->tok_embd };
	if ((rc = upload_bf16(cb, emb, 1, &cb->emb, bytes)))
		return rc;
	size_t emb_bytes = *bytes;
	if (m->lm_head.data == m->tok_embd.data) {
		cb->lm_head = cb->emb;
	} else {
		const struct weight *lm[] = { &m->lm_head };
		if ((rc = upload_bf16(cb, lm, 1, &cb->lm_head, bytes)))
			return rc;
		*bytes -= emb_bytes;      // an untied embedding is not read per step: a few rows
	}
	const struct weight *on[] = { &m->out_norm };
	if ((rc = upload_f32(cb, on, 1, &cb->out_norm, bytes)))
		return rc;
	for (int l = 0; l < cb->c.n_layers; l++) {
		const struct layer_weights *lw = &m->layers[l];
		struct cl_layer *d = &cb->L[l];
		const struct weight *qkv[] = { &lw->wq, &lw->wk, &lw->wv };
		const struct weight *wo[] = { &lw->wo };
		const struct weight *gu[] = { &lw->w_gate, &lw->w_up };
		const struct weight *dn[] = { &lw->w_down };
		const struct weight *bqkv[] = { &lw->bq, &lw->bk, &lw->bv };
		const struct weight *an[] = { &lw->attn_norm }, *mn[] = { &lw->mlp_norm };
		const struct weight *qn[] = { &lw->q_norm }, *kn[] = { &lw->k_norm };
		if ((rc = upload_bf16(cb, qkv, 3, &d->wqkv, bytes)) || (rc = upload_bf16(cb, wo, 1, &d->wo, bytes)) ||
		    (rc = upload_bf16(cb, gu, 2, &d->wgu, bytes, true)) || (rc = upload_bf16(cb, dn, 1, &d->wdown, bytes)) ||
		    (rc = upload_f32(cb, an, 1, &d->attn_norm, bytes)) || (rc = upload_f32(cb, mn, 1, &d->mlp_norm, bytes)) ||
		    (rc = upload_f32(cb, qn, 1, &d->qn, bytes)) || (rc = upload_f32(cb, kn, 1, &d->kn, bytes)))
			return rc;
		if (cb->c.attn_bias && (rc = upload_f32(cb, bqkv, 3, &d->bqkv, bytes)))
			return rc;
	}
	std::vector<float> inv((size_t)cb->c.head_dim / 2 + 1);
	ops_rope_inv_freq(&cb->c, inv.data());
	CK(cudaMalloc((void **)&cb->inv_freq, inv.size() * sizeof(float)));
	CK(cudaMemcpy(cb->inv_freq, inv.data(), inv.size() * sizeof(float), cudaMemcpyHostToDevice));
	return 0;
}

// ---- the plan: tables, attention items, partial lists ------------------------------

struct seq_span {
	int r0, r1;          // rows [r0, r1)
	int32_t first, last; // first and last position in this pass
	int tab;             // offset of its table in the uploaded tables
	int nb;              // blocks uploaded
	int prefix;          // positions covered by a shared-prefix item (0 = none)
	const int32_t *table;
};

struct task {                // rows against positions [kv0, kv1) of table tab
	int rows0, n_rows;       // into the task-row list
	int tab, kv0, kv1;
	bool warp;               // to the one-warp kernel
};

struct plan {
	int n_items, n_parts, n_tables;
	bool warp_pass;          // as cuda_backend's
};

// A pass's batch as the next pass is guessed from it: rows, positions,
// sequences, logit rows, slots, and each sequence's table up to the block
// of its last position (tab_off[s] into tab).
struct ahead_state {
	bool have;                   // a batch is recorded
	bool planned;                // dmeta holds the guess's plan, all but its tokens
	bool launched;               // and its pass runs, with the sampled tokens (tok)
	// The last guess was the pass that came (none yet: true).  A guess is
	// launched only then: where sequences come and go every few steps, a
	// pass run ahead would often be one run for nothing.
	bool last_hit = true;
	int n_rows, n_seqs, n_logits;
	std::vector<int32_t> tok, src, j_of_slot;   // launched: row i's token; its sampling row
	std::vector<int32_t> tokens, pos, row_seq, lrows, slots, tab, tab_off, tab_n;
	struct plan pl;              // the guess's
};

// A task of n rows that is a decode item: the one-warp kernel's where the
// geometry has them (k_attn_warp_item).
static bool
decode_item(const struct cuda_backend *cb, int n)
{
	return n == 1 && cb->warp_items;
}

// Sequences whose tables start with the same blocks share the KV of those
// positions (forks of one prompt).  Group them, and give each group one task
// over the common prefix when the cost rule says it pays.
static void
plan_cascades(const struct cuda_backend *cb, std::vector<seq_span> &sp, std::vector<task> &tasks,
	      std::vector<int32_t> &task_rows, int max_rows_item, bool decode)
{
	const int bt = cb->g.block_tokens, group = cb->c.n_heads / cb->c.n_kv_heads;
	std::vector<int> order;
	for (int s = 0; s < (int)sp.size(); s++)
		if (sp[s].first >= bt)
			order.push_back(s);
	std::stable_sort(order.begin(), order.end(),
			 [&](int a, int b) { return sp[a].table[0] < sp[b].table[0]; });
	for (size_t i = 0; i < order.size();) {
		size_t j = i + 1;
		while (j < order.size() && sp[order[j]].table[0] == sp[order[i]].table[0])
			j++;
		const int G = (int)(j - i);
		if (G >= 2) {
			const seq_span &lead = sp[order[i]];
			int pb = lead.first / bt;
			int rows = 0;
			for (size_t k = i; k < j; k++) {
				const seq_span &s = sp[order[k]];
				int lim = std::min(pb, s.first / bt), c = 0;
				while (c < lim && s.table[c] == lead.table[c])
					c++;
				pb = c;
				rows += s.r1 - s.r0;
			}
			// Cost per layer and kv head: per-sequence reads of the prefix
			// against one read per tile of rows, plus the extra partial
			// each row writes and the merge reads.
			const double pos_bytes = 2.0 * cb->c.head_dim * sizeof(bf16);
			const double P = (double)pb * bt;
			const int tiles = (rows + max_rows_item - 1) / max_rows_item;
			const double without = (double)G * P * pos_bytes;
			const double with = tiles * P * pos_bytes + 2.0 * rows * group * (cb->c.head_dim + 2) * 4.0;
			if (P >= CASCADE_MIN_POS && without - with >= CASCADE_MIN_SAVING) {
				int start = (int)task_rows.size();
				for (size_t k = i; k < j; k++) {
					seq_span &s = sp[order[k]];
					s.prefix = (int)P;
					for (int r = s.r0; r < s.r1; r++)
						task_rows.push_back(r);
				}
				// A decode pass's prefix rows in one-warp items (its queries
				// read the prefix's tiles from the L2 several times).
				const bool w = decode && cb->warp_rows > 1;
				const int per = w ? cb->warp_rows : max_rows_item;
				for (int t = 0; t < rows; t += per)
					tasks.push_back(task{ start + t, std::min(per, rows - t), lead.tab, 0, (int)P,
							      w || decode_item(cb, std::min(per, rows - t)) });
			}
		}
		i = j;
	}
}

// Fill the host metadata for batch b (rows padded to pad_rows, logits to
// pad_logits) within cap_items items.  ENG_ERR_RANGE when it cannot fit.
static int
make_plan(struct cuda_backend *cb, const struct fwd_batch *b, int pad_rows, int pad_logits, int cap_items,
	  struct plan *pl)
{
	const struct meta_layout &ml = cb->ml;
	char *hm = cb->hmeta;
	const int bt = cb->g.block_tokens;
	int32_t *cnt = meta_at<int32_t>(hm, ml.counters);
	int32_t *tokens = meta_at<int32_t>(hm, ml.tokens), *pos = meta_at<int32_t>(hm, ml.pos);
	int32_t *tab_off = meta_at<int32_t>(hm, ml.tab_off), *lrows = meta_at<int32_t>(hm, ml.logit_rows);
	int32_t *rp_off = meta_at<int32_t>(hm, ml.rp_off);
	k_attn_item *items = meta_at<k_attn_item>(hm, ml.items);
	int32_t *item_rows = meta_at<int32_t>(hm, ml.item_rows), *rp_idx = meta_at<int32_t>(hm, ml.rp_idx);
	int32_t *tables = meta_at<int32_t>(hm, ml.tables);

	// Sequences and their tables.
	std::vector<seq_span> sp;
	int tab = 0;
	for (int r = 0; r < b->n_rows; r++) {
		if (r == 0 || b->row_seq[r] != b->row_seq[r - 1]) {
			const int32_t *t = b->block_tables[b->row_seq[r]];
			sp.push_back(seq_span{ r, r + 1, b->pos[r], b->pos[r], tab, 0, 0, t });
		}
		seq_span &s = sp.back();
		s.r1 = r + 1;
		s.last = b->pos[r];
		if (r + 1 == b->n_rows || b->row_seq[r + 1] != b->row_seq[r]) {
			s.nb = s.last / bt + 1;
			if (tab + s.nb > cb->cap_table)
				return ENG_ERR_RANGE;
			memcpy(tables + tab, s.table, (size_t)s.nb * sizeof(int32_t));
			tab += s.nb;
		}
	}
	for (int r = 0; r < pad_rows; r++) {
		tokens[r] = r < b->n_rows ? b->tokens[r] : 0;
		pos[r] = r < b->n_rows ? b->pos[r] : 0;
	}
	for (const seq_span &s : sp)
		for (int r = s.r0; r < s.r1; r++)
			tab_off[r] = s.tab;
	for (int i = 0; i < pad_logits; i++) {
		lrows[i] = i < b->n_logits ? b->logit_rows[i] : 0;
	}

	// Tasks: shared prefixes, then each sequence's own rows in tiles, each
	// tile against the positions it can see past the prefix.
	const int max_rows_item = k_attention_max_rows(cb->c.n_heads, cb->c.n_kv_heads, cb->c.head_dim);
	std::vector<task> tasks;
	std::vector<int32_t> task_rows;
	const bool decode = (int)sp.size() == b->n_rows;   // every row its sequence's only one
	plan_cascades(cb, sp, tasks, task_rows, max_rows_item, decode);
	for (const seq_span &s : sp) {
		for (int r = s.r0; r < s.r1; r += max_rows_item) {
			int n = std::min(max_rows_item, s.r1 - r);
			int start = (int)task_rows.size();
			for (int k = 0; k < n; k++)
				task_rows.push_back(r + k);
			int kv1 = b->pos[r + n - 1] + 1;
			if (kv1 > s.prefix)
				tasks.push_back(task{ start, n, s.tab, s.prefix, kv1, decode_item(cb, n) });
		}
	}

	// Split-K: chunks of ch positions, ch chosen so that the work units
	// (items x kv heads) fill the persistent grid, then doubled until the
	// items and partials fit.
	long work = 0;
	for (const task &t : tasks)
		work += t.kv1 - t.kv0;
	const long target = 4L * cb->ctas;     // units in flight: CTAs and warps
	long ch = (work * cb->c.n_kv_heads + target - 1) / target;
	ch = std::max<long>(ATT_MIN_CHUNK, (ch + K_ATT_TILE - 1) / K_ATT_TILE * K_ATT_TILE);
	auto is_warp = [&](const task &t) { return t.warp; };
	// The one-warp kernel's chunks: ch / ATT_WARP_SPLIT for decode items;
	// ch for items of several rows (an H100, 1.7b: ch / 3 measured 3-6%
	// slower at N = 32..128 and within noise at N = 8, 2 ch 2-9% slower at
	// N = 8..128).
	long chw = std::max<long>(ATT_MIN_CHUNK, (ch / ATT_WARP_SPLIT + K_ATT_TILE - 1) / K_ATT_TILE * K_ATT_TILE);
	auto chunk = [&](const task &t) { return t.warp && t.n_rows == 1 ? chw : ch; };
	for (;; ch *= 2, chw *= 2) {
		long ni = 0, np = 0;
		for (const task &t : tasks) {
			const long c = chunk(t);
			long k = (t.kv1 - t.kv0 + c - 1) / c;
			ni += k;
			np += k * t.n_rows;
		}
		if (ni <= cap_items && np <= cb->cap_parts)
			break;
		if (ch > (1L << 30))
			return ENG_ERR_RANGE;
	}
	int ni = 0, np = 0;
	std::vector<int> per_row(pad_rows + 1, 0);
	std::vector<k_attn_item> warp_items;
	for (const task &t : tasks) {
		const long c = chunk(t);
		for (long a = t.kv0; a < t.kv1; a += c) {
			const int32_t r0 = task_rows[t.rows0];
			const k_attn_item it = { np, t.n_rows, t.tab, (int32_t)a, (int32_t)std::min<long>(a + c, t.kv1), np,
						 r0, b->pos[r0] };
			if (is_warp(t))
				warp_items.push_back(it);
			else
				items[ni++] = it;
			for (int k = 0; k < t.n_rows; k++) {
				item_rows[np + k] = task_rows[t.rows0 + k];
				per_row[task_rows[t.rows0 + k]]++;
			}
			np += t.n_rows;
		}
	}
	// Decode items go after the others: the one-warp kernel takes them.
	const int n_cta = ni;
	for (const k_attn_item &it : warp_items)
		items[ni++] = it;
	// Row r's partials, as a CSR list.
	rp_off[0] = 0;
	for (int r = 0; r < pad_rows; r++)
		rp_off[r + 1] = rp_off[r] + per_row[r];
	std::vector<int> fill(rp_off, rp_off + pad_rows);
	for (int p = 0; p < np; p++)
		rp_idx[fill[item_rows[p]]++] = p;
	cnt[0] = b->n_rows;
	cnt[1] = b->n_logits;
	cnt[2] = n_cta;
	cnt[3] = ni - n_cta;
	pl->n_tables = tab;
	pl->n_items = ni;
	pl->n_parts = np;
	pl->warp_pass = decode && n_cta == 0 && b->n_rows > 1 && cb->warp_items && cb->one_stream;
	return 0;
}

// The plan's copies, on stream s (st, or st_up for a plan made ahead).
static int
upload_plan(struct cuda_backend *cb, int pad_rows, const struct plan *pl, cudaStream_t s)
{
	const struct meta_layout &ml = cb->ml;
	const int32_t tab = pl->n_tables;
	// counters .. rp_off are one contiguous range.
	CK(cudaMemcpyAsync(cb->dmeta, cb->hmeta, ml.rp_off + (size_t)(pad_rows + 1) * sizeof(int32_t),
			   cudaMemcpyHostToDevice, s));
	CK(cudaMemcpyAsync(cb->dmeta + ml.items, cb->hmeta + ml.items, (size_t)pl->n_items * sizeof(k_attn_item),
			   cudaMemcpyHostToDevice, s));
	CK(cudaMemcpyAsync(cb->dmeta + ml.item_rows, cb->hmeta + ml.item_rows, (size_t)pl->n_parts * sizeof(int32_t),
			   cudaMemcpyHostToDevice, s));
	CK(cudaMemcpyAsync(cb->dmeta + ml.rp_idx, cb->hmeta + ml.rp_idx, (size_t)pl->n_parts * sizeof(int32_t),
			   cudaMemcpyHostToDevice, s));
	CK(cudaMemcpyAsync(cb->dmeta + ml.tables, cb->hmeta + ml.tables, (size_t)tab * sizeof(int32_t),
			   cudaMemcpyHostToDevice, s));
	return 0;
}

// ---- timing (braid bench) -----------------------------------------------------------------

static double
host_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

// Adds the recorded event pairs to the totals; st has finished them.
static void
timing_collect(struct cuda_backend *cb)
{
	float ms;
	if (cb->t_pass && cudaEventElapsedTime(&ms, cb->ev_t[0], cb->ev_t[1]) == cudaSuccess)
		cb->tm.pass_gpu_ms += ms;
	if (cb->t_samp && cudaEventElapsedTime(&ms, cb->ev_t[2], cb->ev_t[3]) == cudaSuccess)
		cb->tm.sample_gpu_ms += ms;
	cb->t_pass = cb->t_samp = 0;
	// Confirmed passes run ahead, once they have ended.
	for (int k = 0; k < 2; k++)
		if (cb->t_spec[k] && cudaEventElapsedTime(&ms, cb->ev_s[k][0], cb->ev_s[k][1]) == cudaSuccess) {
			cb->tm.pass_gpu_ms += ms;
			cb->t_spec[k] = 0;
		}
}

static int
cuda_timing(void *self, int on, struct backend_timing *out)
{
	struct cuda_backend *cb = (struct cuda_backend *)self;
	CK(cudaStreamSynchronize(cb->st));
	timing_collect(cb);
	if (out)
		*out = cb->tm;
	if (on && !cb->ev_t[0])
		for (cudaEvent_t &ev : cb->ev_t)
			CK(cudaEventCreate(&ev));
	if (on)
		memset(&cb->tm, 0, sizeof cb->tm);
	cb->timing = on;
	return 0;
}

// ---- the pass ---------------------------------------------------------------------------

// out(n, w_rows) = in(n, w_cols) . W^T, W bf16 row-major (w_rows, w_cols);
// out f32 (beta 0 overwrites, 1 accumulates) from bf16 in.
static int
gemm(struct cuda_backend *cb, const bf16 *w, int w_rows, int w_cols, const bf16 *in, int n, float *out,
     float beta)
{
	cudaError_t e = k_gemm_run(cb->gm, w, w_rows, w_cols, in, n, out, beta, cb->st);
	if (e != cudaSuccess) {
		snprintf(cb->err, sizeof cb->err, "CUDA: GEMM %dx%d, %d rows: %s", w_rows, w_cols, n,
			 *k_gemm_error(cb->gm) ? k_gemm_error(cb->gm) : cudaGetErrorString(e));
		return ENG_ERR_DEVICE;
	}
	return 0;
}

// A one-row pass's projection with its input normalised in the GEMV
// (k_gemm_run_norm) when on: *done when it was enqueued; not when on is
// false or the GEMV does not serve the shape (then run k_rmsnorm and the
// plain projection).  0 or an ENG_ERR_ code.  h != NULL: the gate-up
// projection writing silu(gate) * up.
static int
norm_gemm(struct cuda_backend *cb, bool on, const float *nw, const bf16 *w, int w_rows, float *out, bf16 *h,
	  bool *done)
{
	*done = false;
	if (!on)
		return 0;
	const int d = cb->c.hidden_size;
	cudaError_t e = k_gemm_run_norm(cb->gm, w, w_rows, d, cb->x, nw, cb->c.rms_eps, out, 0.0f, h, cb->st);
	if (e == cudaErrorNotSupported)
		return 0;
	if (e != cudaSuccess) {
		snprintf(cb->err, sizeof cb->err, "CUDA: GEMM with RMSNorm %dx%d, 1 row: %s", w_rows, d,
			 *k_gemm_error(cb->gm) ? k_gemm_error(cb->gm) : cudaGetErrorString(e));
		return ENG_ERR_DEVICE;
	}
	*done = true;
	return 0;
}

// BRAID_PROFILE_SKIP=kind,...: kernels left out of every pass, so that a
// benchmark's step time without them shows what they cost on the critical
// path (the outputs are wrong: for timing only).
enum {
	SKIP_SMALL = 1,      // RMSNorm, the QKV epilogue, SwiGLU (its own kernel)
	SKIP_CTA = 2,        // attention units of many queries (attention_kernel)
	SKIP_WARP = 4,       // decode attention units (the one-warp kernel)
	SKIP_ONE_ROW = 8,    // a one-row pass's attention (cluster or one-warp kernel)
	SKIP_MERGE = 16,     // the attention merge
	SKIP_GEMM = 32,      // the layers' projections (not the LM head; SwiGLU's own kernel goes too)
};

static const struct {
	const char *name;
	unsigned bits;
} skip_kinds[] = {
	{ "small", SKIP_SMALL }, { "cta", SKIP_CTA }, { "warp", SKIP_WARP }, { "one-row", SKIP_ONE_ROW },
	{ "attention", SKIP_CTA | SKIP_WARP | SKIP_ONE_ROW }, { "merge", SKIP_MERGE }, { "gemm", SKIP_GEMM },
};

// The mask of a BRAID_PROFILE_SKIP list ("" none), or -1 (err says why).
static long
parse_skip(const char *v, char *err, size_t errlen)
{
	const size_t nk = sizeof skip_kinds / sizeof skip_kinds[0];
	unsigned mask = 0;
	if (!*v)
		return 0;
	// One kind per round; the round ends past its comma (a trailing comma
	// leaves an empty kind, which no kind matches).
	for (const char *p = v;; p++) {
		const size_t n = strcspn(p, ",");
		size_t k = 0;
		while (k < nk && (strlen(skip_kinds[k].name) != n || strncmp(skip_kinds[k].name, p, n)))
			k++;
		if (k == nk) {
			int at = snprintf(err, errlen, "BRAID_PROFILE_SKIP=%s: unknown kernel kind \"%.*s\" (expected a comma list of",
					  v, (int)n, p);
			for (size_t i = 0; i < nk && at >= 0 && (size_t)at < errlen; i++)
				at += snprintf(err + at, errlen - at, "%s %s", i ? "," : "", skip_kinds[i].name);
			if (at >= 0 && (size_t)at < errlen)
				snprintf(err + at, errlen - at, ")");
			return -1;
		}
		mask |= skip_kinds[k].bits;
		p += n;
		if (!*p)
			break;
	}
	return mask;
}

// Everything from the uploaded metadata to the logits slots, for rows
// padded to `rows` and logits to `nlog`: the body of a graph, or run eagerly.
static int
enqueue_pass(struct cuda_backend *cb, int rows, int nlog)
{
	const struct model_config *c = &cb->c;
	const struct meta_layout &ml = cb->ml;
	char *dm = cb->dmeta;
	const int *n_rows = meta_at<int>(dm, ml.counters), *n_logits = n_rows + 1, *n_items = n_rows + 2;
	const int32_t *tokens = meta_at<int32_t>(dm, ml.tokens), *pos = meta_at<int32_t>(dm, ml.pos);
	const int32_t *tab_off = meta_at<int32_t>(dm, ml.tab_off), *tables = meta_at<int32_t>(dm, ml.tables);
	const int32_t *item_rows = meta_at<int32_t>(dm, ml.item_rows), *rp_off = meta_at<int32_t>(dm, ml.rp_off);
	const int32_t *rp_idx = meta_at<int32_t>(dm, ml.rp_idx), *lrows = meta_at<int32_t>(dm, ml.logit_rows);
	const k_attn_item *items = meta_at<k_attn_item>(dm, ml.items);
	const int d = c->hidden_size, f = c->intermediate_size;
	int rc;

	CK(k_embed(cb->emb, tokens, n_rows, rows, d, cb->x, cb->st));
	for (int l = 0; l < c->n_layers; l++) {
		const struct cl_layer *L = &cb->L[l];
		const bool small = !(cb->skip & SKIP_SMALL), proj = !(cb->skip & SKIP_GEMM);
		// A one-row pass's qkv and gate-up GEMVs normalise the row
		// themselves where the GEMV serves them (k_gemm_run_norm: the
		// values k_rmsnorm writes, bit for bit).
		const bool fnorm = rows == 1 && cb->fuse_norm && small && proj;
		bool done;
		if ((rc = norm_gemm(cb, fnorm, L->attn_norm, L->wqkv, cb->qkvd, cb->qkv, nullptr, &done)))
			return rc;
		if (!done) {
			if (small)
				CK(k_rmsnorm(cb->x, NULL, n_rows, L->attn_norm, rows, d, c->rms_eps, cb->xb, cb->st));
			if (proj && (rc = gemm(cb, L->wqkv, cb->qkvd, d, cb->xb, rows, cb->qkv, 0.0f)))
				return rc;
		}
		if (small)
			CK(k_qkv_post(cb->qkv, L->bqkv, L->qn, L->kn, cb->inv_freq, pos, tab_off, tables, n_rows, rows,
			      c->n_heads, c->rms_eps, cb->g, l, cb->kv, cb->q, cb->st));
		// A one-row pass has only decode items, and a decode pass (each
		// row its sequence's only one) only one-warp items where its shared
		// prefixes go to units of several rows (warp_pass): the one-warp
		// kernel alone, on st with programmatic dependent launch, so it is
		// scheduled while qkv_post runs and fetches the older K/V rows
		// before it waits (k_attention_decode).  Otherwise the one-warp
		// units run on a second stream beside the CTA units (side by side,
		// an H100, 1.7b N = 8..128: the decode pass on two streams measured
		// 0-3% slower than on one).  Either way the merge is
		// launched plainly: that ends the chain of early-scheduled kernels
		// at each layer (with the merge launched early too, the later
		// kernels' early starts cost 8b N=1 13%).
		const bool one = rows == 1 && cb->one_stream && cb->warp_items;
		if (one && (cb->skip & SKIP_ONE_ROW))
			;   // BRAID_PROFILE_SKIP=one-row
		else if (one && cb->att_cluster) {
			CK(k_attention_rows(cb->q, cb->kv, tables, tab_off, pos, n_rows, rows, c->n_heads, cb->g, l,
					    cb->att_cluster, cb->att_cluster_early, cb->att, cb->st));
		} else if (one) {
			CK(k_attention_decode(cb->q, cb->kv, tables, pos, item_rows, items, n_items, cb->one_warps, c->n_heads,
					      cb->g, l, cb->part_ml, cb->part_acc, cb->st));
		} else if (cb->warp_pass) {
			if (!(cb->skip & SKIP_WARP))
				CK(k_attention_decode(cb->q, cb->kv, tables, pos, item_rows, items, n_items, cb->warps,
						      c->n_heads, cb->g, l, cb->part_ml, cb->part_acc, cb->st));
		} else {
			CK(cudaEventRecord(cb->ev_fork, cb->st));
			CK(cudaStreamWaitEvent(cb->st2, cb->ev_fork, 0));
			CK(k_attention(cb->q, cb->kv, tables, pos, item_rows, items, n_items,
				       (cb->skip & SKIP_CTA) ? 0 : cb->ctas, (cb->skip & SKIP_WARP) ? 0 : cb->warps,
				       c->n_heads, cb->g, l, cb->part_ml, cb->part_acc, cb->st, cb->st2));
			CK(cudaEventRecord(cb->ev_join, cb->st2));
			CK(cudaStreamWaitEvent(cb->st, cb->ev_join, 0));
		}
		if (!(one && cb->att_cluster) && !(cb->skip & SKIP_MERGE))
			CK(k_attn_merge(cb->part_ml, cb->part_acc, rp_off, rp_idx, n_rows, rows, c->n_heads, c->head_dim,
					cb->att, cb->st));
		if (proj && (rc = gemm(cb, L->wo, d, cb->qd, cb->att, rows, cb->x, 1.0f)))
			return rc;
		// The GEMV, where it serves the gate-up projection, writes silu(gate)
		// * up itself (BRAID_FUSE_SWIGLU=0: the GEMV, then k_swiglu).
		cudaError_t fe = cudaSuccess;   // BRAID_PROFILE_SKIP=gemm: neither
		if ((rc = norm_gemm(cb, fnorm && cb->fuse_swiglu, L->mlp_norm, L->wgu, 2 * f, nullptr, cb->h, &done)))
			return rc;
		if (!done && small)
			CK(k_rmsnorm(cb->x, NULL, n_rows, L->mlp_norm, rows, d, c->rms_eps, cb->xb, cb->st));
		if (!done && proj)
			fe = cb->fuse_swiglu ? k_gemm_run_swiglu(cb->gm, L->wgu, 2 * f, d, cb->xb, rows, cb->h, cb->st)
					     : cudaErrorNotSupported;
		if (fe == cudaErrorNotSupported) {
			if ((rc = gemm(cb, L->wgu, 2 * f, d, cb->xb, rows, cb->gu, 0.0f)))
				return rc;
			if (small)
				CK(k_swiglu(cb->gu, rows, f, cb->h, cb->st));
		} else if (fe != cudaSuccess) {
			snprintf(cb->err, sizeof cb->err, "CUDA: GEMM+SwiGLU %dx%d, %d rows: %s", 2 * f, d, rows,
				 *k_gemm_error(cb->gm) ? k_gemm_error(cb->gm) : cudaGetErrorString(fe));
			return ENG_ERR_DEVICE;
		}
		if (proj && (rc = gemm(cb, L->wdown, d, f, cb->h, rows, cb->x, 1.0f)))
			return rc;
	}
	if (nlog > 0) {
		CK(k_rmsnorm(cb->x, lrows, n_logits, cb->out_norm, nlog, d, c->rms_eps, cb->xb, cb->st));
		if ((rc = gemm(cb, cb->lm_head, c->vocab_size, d, cb->xb, nlog, cb->logits, 0.0f)))
			return rc;
	}
	return 0;
}

static int
bucket_of(int n)
{
	for (int i = 0; i < N_BUCKETS; i++)
		if (buckets[i] >= n)
			return buckets[i];
	return 0;
}

// A pass of n rows runs as a graph padded to bucket_of(n).
static bool
graphed(const struct cuda_backend *cb, int n)
{
	return cb->use_graphs && n <= buckets[N_BUCKETS - 1];
}

// The graph for (rows, nlog), captured on first use.  NULL exec on failure
// to capture (then the pass runs eagerly; err says why).
static int
graph_for(struct cuda_backend *cb, int rows, int nlog, cudaGraphExec_t *exec)
{
	for (const graph_entry &ge : *cb->graphs)
		if (ge.rows == rows && ge.logits == nlog && ge.warp_pass == cb->warp_pass) {
			*exec = ge.exec;
			return 0;
		}
	cudaGraph_t graph = NULL;
	CK(cudaStreamBeginCapture(cb->st, cudaStreamCaptureModeThreadLocal));
	int rc = enqueue_pass(cb, rows, nlog);
	cudaError_t e = cudaStreamEndCapture(cb->st, &graph);
	if (rc) {
		if (graph)
			cudaGraphDestroy(graph);
		return rc;
	}
	if (e != cudaSuccess)
		return fail(cb, e, "cudaStreamEndCapture");
	e = cudaGraphInstantiate(exec, graph, 0);
	cudaGraphDestroy(graph);
	if (e != cudaSuccess)
		return fail(cb, e, "cudaGraphInstantiate");
	cb->graphs->push_back(graph_entry{ rows, nlog, cb->warp_pass, *exec });
	return 0;
}

// The rows and logits a pass of n_rows rows and n_logits logits runs with:
// padded to their graph buckets where it runs as a graph (the result).
static bool
pass_shape(const struct cuda_backend *cb, int n_rows, int n_logits, int *rows, int *nlog)
{
	const bool graph = graphed(cb, n_rows);
	*rows = graph ? bucket_of(n_rows) : n_rows;
	*nlog = graph && n_logits ? bucket_of(n_logits) : n_logits;
	return graph;
}

// The pass on st, from its uploaded metadata: its graph, or kernel by kernel.
static int
launch_pass(struct cuda_backend *cb, bool graph, int rows, int nlog)
{
	if (!graph)
		return enqueue_pass(cb, rows, nlog);
	cudaGraphExec_t exec = NULL;
	int rc = graph_for(cb, rows, nlog, &exec);
	if (rc)
		return rc;
	CK(cudaGraphLaunch(exec, cb->st));
	return 0;
}

// ---- logits slots ------------------------------------------------------------------------

// The row of the slots buffer that holds slot s's logits.
static size_t
slot_at(const struct cuda_backend *cb, int32_t s)
{
	const int32_t r = (*cb->slot_row)[s];
	return r >= 0 ? (size_t)cb->max_seqs + (size_t)r : (size_t)s;
}

// Before a pass writes the logits rows: a slot whose logits lie there and
// that the pass does not recompute (its logits to slots[0 .. n), NULL: none)
// gets them copied into the slot itself.
static int
keep_slots(struct cuda_backend *cb, const int32_t *slots, int n)
{
	std::vector<int32_t> &row = *cb->slot_row;
	std::vector<long> &mark = *cb->slot_mark;
	const size_t v = (size_t)cb->c.vocab_size;
	const long pass = ++cb->n_pass;
	for (int i = 0; slots && i < n; i++)
		if (slots[i] >= 0)
			mark[slots[i]] = pass;
	for (int32_t s : *cb->staged)
		if (row[s] >= 0 && mark[s] != pass) {
			CK(cudaMemcpyAsync(cb->slots + (size_t)s * v, cb->logits + (size_t)row[s] * v, v * sizeof(float),
					   cudaMemcpyDeviceToDevice, cb->st));
			row[s] = -1;
		}
	return 0;
}

// After a pass: logit row i is slot slots[i]'s (none: slots NULL; the rows'
// earlier slots point at themselves again).
static void
stage_slots(struct cuda_backend *cb, const int32_t *slots, int n)
{
	std::vector<int32_t> &row = *cb->slot_row;
	for (int32_t s : *cb->staged)
		row[s] = -1;
	cb->staged->clear();
	for (int i = 0; slots && i < n; i++)
		if (slots[i] >= 0) {
			row[slots[i]] = i;
			cb->staged->push_back(slots[i]);
		}
}

// ---- planning ahead ---------------------------------------------------------------------

// The recorded batch as a fwd_batch, its tokens and positions replaced
// (tables: the pointers it needs, which it keeps).
static struct fwd_batch
ahead_batch(const ahead_state &A, const int32_t *tokens, const int32_t *pos, std::vector<const int32_t *> &tables)
{
	tables.resize(A.n_seqs);
	for (int q = 0; q < A.n_seqs; q++)
		tables[q] = A.tab.data() + A.tab_off[q];
	return fwd_batch{
		.n_rows = A.n_rows, .tokens = tokens, .pos = pos, .row_seq = A.row_seq.data(),
		.n_seqs = A.n_seqs, .block_tables = tables.data(), .n_logits = A.n_logits, .logit_rows = A.lrows.data(),
	};
}

// Keep batch b (with its logits' slots) as the one the next pass is guessed from.
static void
ahead_record(struct cuda_backend *cb, const struct fwd_batch *b, const int32_t *slots)
{
	ahead_state &A = *cb->ahead;
	const int bt = cb->g.block_tokens;
	A.have = true;
	A.n_rows = b->n_rows;
	A.n_seqs = b->n_seqs;
	A.n_logits = b->n_logits;
	A.tokens.assign(b->tokens, b->tokens + b->n_rows);
	A.pos.assign(b->pos, b->pos + b->n_rows);
	A.row_seq.assign(b->row_seq, b->row_seq + b->n_rows);
	A.lrows.assign(b->logit_rows, b->logit_rows + b->n_logits);
	A.slots.resize(b->n_logits);
	for (int i = 0; i < b->n_logits; i++)
		A.slots[i] = slots ? slots[i] : -1;
	// Each sequence's blocks up to its last row's; rows of a sequence are
	// consecutive (make_plan's spans), so its last row is the last seen.
	A.tab.clear();
	A.tab_off.assign(b->n_seqs, 0);
	A.tab_n.assign(b->n_seqs, 0);
	for (int r = 0; r < b->n_rows; r++)
		A.tab_n[b->row_seq[r]] = b->pos[r] / bt + 1;
	for (int q = 0; q < b->n_seqs; q++) {
		A.tab_off[q] = (int)A.tab.size();
		A.tab.insert(A.tab.end(), b->block_tables[q], b->block_tables[q] + A.tab_n[q]);
	}
}

// While the GPU samples after a decode pass (each row its sequence's only
// one, each with its logits), plan the likely next pass - the same rows one
// position on - and upload all of it but the tokens, behind the sampling on
// the stream.  Not where a row's next position starts a block (its table
// may not hold that block yet).  forward_slots then checks the real batch
// against the guess and, where they agree, uploads only the tokens.
//
// Running ahead, where every row's slot is among the sampled rows
// (srows[n]): the pass is launched too, behind the sampling, its tokens
// gathered from the sampling's results on the device, so that the GPU goes
// from sampling to the next pass without waiting for the host; forward_slots
// then only confirms it (the batch is the guess, with the sampled tokens).
// A pass run ahead and not confirmed has written each row's K and V at its
// next position and the rows' logits: the engine reserved that position's
// block for the row's last position (so it is the row's alone), and rewrites
// the position in the pass that does commit a token there; the logits
// replaced are those just sampled, which no one reads again (a sequence's
// logits are sampled once, then recomputed).
static void
plan_ahead(struct cuda_backend *cb, const struct cuda_samp_row *srows, int n_s)
{
	ahead_state &A = *cb->ahead;
	A.planned = A.launched = false;
	if (!cb->ahead_on || !A.have || A.n_rows == 0 || A.n_seqs != A.n_rows || A.n_logits != A.n_rows)
		return;
	const int bt = cb->g.block_tokens;
	for (int r = 0; r < A.n_rows; r++)
		if (A.lrows[r] != r || A.row_seq[r] != r || (A.pos[r] + 1) % bt == 0)
			return;
	std::vector<int32_t> tokens(A.n_rows, 0), pos(A.n_rows);
	std::vector<const int32_t *> tables;
	for (int r = 0; r < A.n_rows; r++)
		pos[r] = A.pos[r] + 1;
	const struct fwd_batch g = ahead_batch(A, tokens.data(), pos.data(), tables);
	int rows, nlog;
	const bool graph = pass_shape(cb, A.n_rows, A.n_logits, &rows, &nlog);
	// hmeta is the source of the last upload (a pass's, or one planned
	// ahead) until that upload is done.
	if (cudaEventSynchronize(cb->ev_up) != cudaSuccess || make_plan(cb, &g, rows, nlog, cb->cap_items, &A.pl))
		return;
	// Each row's sampling row, where all are sampled.
	bool run = cb->run_ahead_on && A.last_hit;
	A.src.assign(A.n_rows, -1);
	if (run) {
		A.j_of_slot.resize(cb->max_seqs, -1);
		for (int j = 0; j < n_s; j++)
			A.j_of_slot[srows[j].slot] = j;
		for (int i = 0; i < A.n_rows; i++)
			run = run && (A.src[i] = A.slots[i] >= 0 ? A.j_of_slot[A.slots[i]] : -1) >= 0;
		for (int j = 0; j < n_s; j++)
			A.j_of_slot[srows[j].slot] = -1;
	}
	if (run)
		memcpy(meta_at<int32_t>(cb->hmeta, cb->ml.tok_src), A.src.data(), (size_t)A.n_rows * sizeof(int32_t));
	// The copies on st_up, beside the sampling: after the pass before
	// (which reads dmeta), before the pass planned.
	if (cudaStreamWaitEvent(cb->st_up, cb->ev_pass_end, 0) != cudaSuccess || upload_plan(cb, rows, &A.pl, cb->st_up) ||
	    cudaEventRecord(cb->ev_up, cb->st_up) != cudaSuccess || cudaStreamWaitEvent(cb->st, cb->ev_up, 0) != cudaSuccess)
		return;
	A.planned = true;
	if (!run)
		return;
	// The pass itself, as forward_slots would launch it, between the events
	// that time it (recorded whether timing is on or not: it may be on when
	// the pass is confirmed).  The pair was last used two passes ago: that
	// pass has ended (the host waited for the sampling behind it), so a
	// confirmed one's time is read without waiting.
	const int k = cb->spec_pair ^= 1;
	float ms;
	if (cb->t_spec[k] && cudaEventElapsedTime(&ms, cb->ev_s[k][0], cb->ev_s[k][1]) == cudaSuccess)
		cb->tm.pass_gpu_ms += ms;
	cb->t_spec[k] = 0;
	if (cudaEventRecord(cb->ev_s[k][0], cb->st) != cudaSuccess)
		return;
	cb->warp_pass = A.pl.warp_pass;
	if (cuda_sample_tokens_to((const struct samp_result *)cb->d_sout, meta_at<int32_t>(cb->dmeta, cb->ml.tok_src),
				  A.n_rows, cb->c.vocab_size, meta_at<int32_t>(cb->dmeta, cb->ml.tokens), cb->st) ||
	    keep_slots(cb, A.slots.data(), A.n_logits) || launch_pass(cb, graph, rows, nlog))
		return;
	if (cudaEventRecord(cb->ev_s[k][1], cb->st) != cudaSuccess)
		return;
	stage_slots(cb, A.slots.data(), A.n_logits);
	A.launched = true;
}

static int cuda_forward_slots(void *self, const struct fwd_batch *b, const int32_t *slots, float *host);

// A pass launched or confirmed: it is the one the next is guessed from, and
// host, when not NULL, receives its logits.  Otherwise the next call on the
// stream (sampling, a slot read, the next pass) waits for it and reports its
// errors.
static int
forward_end(struct cuda_backend *cb, const struct fwd_batch *b, const int32_t *slots, float *host)
{
	ahead_record(cb, b, slots);
	if (host && b->n_logits > 0) {
		CK(cudaMemcpyAsync(host, cb->logits, (size_t)b->n_logits * cb->c.vocab_size * sizeof(float),
				   cudaMemcpyDeviceToHost, cb->st));
		CK(cudaStreamSynchronize(cb->st));
	}
	return 0;
}

// After the sampling that plan_ahead ran a pass behind: the tokens it fed
// that pass (out: the sampling's results).  Where a row's sampling failed,
// the engine keeps the logits it could not sample, which the pass run ahead
// has replaced: the recorded pass runs again to put them back (the same
// batch, so the same values; its K and V rows too).
static int
ahead_tokens(struct cuda_backend *cb, const struct samp_result *out, const int32_t *status)
{
	ahead_state &A = *cb->ahead;
	if (!A.launched)
		return 0;
	bool failed = false;
	A.tok.resize(A.n_rows);
	for (int i = 0; i < A.n_rows; i++) {
		const int32_t t = out[A.src[i]].token;
		failed |= status[A.src[i]] != ENG_OK;
		A.tok[i] = status[A.src[i]] == ENG_OK && t >= 0 && t < cb->c.vocab_size ? t : -1;
	}
	if (!failed)
		return 0;
	A.planned = A.launched = false;
	const ahead_state R = A;         // forward_slots records the batch again, into A
	std::vector<const int32_t *> tables;
	const struct fwd_batch b = ahead_batch(R, R.tokens.data(), R.pos.data(), tables);
	return cuda_forward_slots(cb, &b, R.slots.data(), NULL);
}

// Whether batch b's tokens are those the pass run ahead took.
static bool
ahead_tokens_match(const struct cuda_backend *cb, const struct fwd_batch *b)
{
	const ahead_state &A = *cb->ahead;
	for (int i = 0; i < b->n_rows; i++)
		if (b->tokens[i] != A.tok[i])
			return false;
	return true;
}

// Whether batch b (with slots) is the pass plan_ahead guessed.
static bool
ahead_match(const struct cuda_backend *cb, const struct fwd_batch *b, const int32_t *slots)
{
	const ahead_state &A = *cb->ahead;
	if (!A.planned || b->n_rows != A.n_rows || b->n_seqs != A.n_seqs || b->n_logits != A.n_logits)
		return false;
	for (int r = 0; r < b->n_rows; r++)
		if (b->pos[r] != A.pos[r] + 1 || b->row_seq[r] != A.row_seq[r])
			return false;
	for (int i = 0; i < b->n_logits; i++)
		if (b->logit_rows[i] != A.lrows[i] || (slots ? slots[i] : -1) != A.slots[i])
			return false;
	for (int q = 0; q < b->n_seqs; q++)
		if (memcmp(b->block_tables[q], A.tab.data() + A.tab_off[q], (size_t)A.tab_n[q] * sizeof(int32_t)))
			return false;
	return true;
}

static int
cuda_forward_slots(void *self, const struct fwd_batch *b, const int32_t *slots, float *host)
{
	struct cuda_backend *cb = (struct cuda_backend *)self;
	int rc = backend_check_batch(b, cb->c.vocab_size, cb->g.block_tokens, cb->n_blocks, cb->max_rows);
	if (rc)
		return rc;
	if (slots)
		for (int i = 0; i < b->n_logits; i++)
			if (slots[i] < -1 || slots[i] >= cb->max_seqs)
				return ENG_ERR_INVALID;
	double h0 = cb->timing ? host_ms() : 0.0;
	ahead_state &A = *cb->ahead;
	// The pass run ahead, when this is it: nothing left to do.
	if (A.launched && ahead_match(cb, b, slots) && ahead_tokens_match(cb, b)) {
		A.have = A.planned = A.launched = false;
		A.last_hit = true;
		cb->warp_pass = A.pl.warp_pass;
		if (cb->timing) {
			cb->t_spec[cb->spec_pair] = 1;
			cb->tm.passes++;
			cb->tm.passes_ahead++;
			cb->tm.passes_run_ahead++;
			cb->tm.pass_host_ms += host_ms() - h0;
		}
		return forward_end(cb, b, slots, host);
	}
	// Not it: its logits rows hold logits no one needs (those it replaced
	// were sampled, the only use of a sequence's logits before it runs again).
	const bool guessed = A.planned, ran = A.launched;
	if (ran)
		stage_slots(cb, NULL, 0);
	// The host metadata may still be in flight from the previous pass, or
	// from a plan made ahead (on st_up).
	CK(cudaStreamSynchronize(cb->st));
	CK(cudaStreamSynchronize(cb->st_up));
	if (cb->timing) {
		timing_collect(cb);
		h0 = host_ms();
	}
	int rows, nlog;
	const bool graph = pass_shape(cb, b->n_rows, b->n_logits, &rows, &nlog);
	if (cb->profile_pass >= 0) {
		if (cb->pass == cb->profile_pass)
			cudaProfilerStart();
		else if (cb->pass == cb->profile_pass + 1)
			cudaProfilerStop();
		cb->pass++;
	}
	// The pass planned ahead while the GPU sampled wants only its tokens.
	const bool ahead = ahead_match(cb, b, slots);
	if (guessed)
		A.last_hit = ahead && !ran;  // a pass run ahead with other tokens was run for nothing
	A.have = A.planned = A.launched = false;
	struct plan pl;
	if (ahead) {
		pl = A.pl;
		memcpy(meta_at<int32_t>(cb->hmeta, cb->ml.tokens), b->tokens, (size_t)b->n_rows * sizeof(int32_t));
	} else if ((rc = make_plan(cb, b, rows, nlog, cb->cap_items, &pl))) {
		return rc;
	}
	cb->warp_pass = pl.warp_pass;
	if ((rc = keep_slots(cb, slots, b->n_logits)))
		return rc;
	if (cb->timing)
		CK(cudaEventRecord(cb->ev_t[0], cb->st));
	if (ahead)
		CK(cudaMemcpyAsync(cb->dmeta + cb->ml.tokens, cb->hmeta + cb->ml.tokens,
				   (size_t)b->n_rows * sizeof(int32_t), cudaMemcpyHostToDevice, cb->st));
	else if ((rc = upload_plan(cb, rows, &pl, cb->st)))
		return rc;
	CK(cudaEventRecord(cb->ev_up, cb->st));
	if ((rc = launch_pass(cb, graph, rows, nlog)))
		return rc;
	if (cb->timing) {
		CK(cudaEventRecord(cb->ev_t[1], cb->st));
		cb->t_pass = 1;
		cb->tm.passes++;
		cb->tm.passes_ahead += ahead;
		cb->tm.pass_host_ms += host_ms() - h0;
	}
	stage_slots(cb, slots, b->n_logits);
	return forward_end(cb, b, slots, host);
}

static int
cuda_forward(void *self, const struct fwd_batch *b, float *logits)
{
	return cuda_forward_slots(self, b, NULL, logits);
}

static int
cuda_copy_block(void *self, int32_t src, int32_t dst)
{
	struct cuda_backend *cb = (struct cuda_backend *)self;
	if (src < 0 || src >= cb->n_blocks || dst < 0 || dst >= cb->n_blocks)
		return ENG_ERR_INVALID;
	if (src != dst)
		CK(cudaMemcpyAsync(cb->kv + (size_t)dst * cb->block_elems, cb->kv + (size_t)src * cb->block_elems,
				   cb->block_elems * sizeof(bf16), cudaMemcpyDeviceToDevice, cb->st));
	return 0;
}

static int
cuda_copy_slot(void *self, int32_t src, int32_t dst)
{
	struct cuda_backend *cb = (struct cuda_backend *)self;
	if (src < 0 || src >= cb->max_seqs || dst < 0 || dst >= cb->max_seqs)
		return ENG_ERR_INVALID;
	const size_t v = (size_t)cb->c.vocab_size;
	if (src != dst) {
		CK(cudaMemcpyAsync(cb->slots + (size_t)dst * v, cb->slots + slot_at(cb, src) * v, v * sizeof(float),
				   cudaMemcpyDeviceToDevice, cb->st));
		(*cb->slot_row)[dst] = -1;
	}
	return 0;
}

static int
cuda_read_slot(void *self, int32_t slot, float *host)
{
	struct cuda_backend *cb = (struct cuda_backend *)self;
	if (slot < 0 || slot >= cb->max_seqs || !host)
		return ENG_ERR_INVALID;
	const size_t v = (size_t)cb->c.vocab_size;
	CK(cudaMemcpyAsync(host, cb->slots + slot_at(cb, slot) * v, v * sizeof(float), cudaMemcpyDeviceToHost, cb->st));
	CK(cudaStreamSynchronize(cb->st));
	return 0;
}

static int
cuda_sample(void *self, const struct cuda_samp_row *rows, int n, struct samp_result *out, int32_t *status)
{
	struct cuda_backend *cb = (struct cuda_backend *)self;
	if (n <= 0 || n > cb->max_seqs || !rows || !out || !status)
		return ENG_ERR_INVALID;
	for (int i = 0; i < n; i++)
		if (rows[i].slot < 0 || rows[i].slot >= cb->max_seqs)
			return ENG_ERR_INVALID;
	// The pass before may still run: sampling queues behind it.  h_srows'
	// last upload is done unless that call failed on the way.
	if (cb->srows_busy) {
		CK(cudaStreamSynchronize(cb->st));
		CK(cudaStreamSynchronize(cb->st_up));
	}
	memcpy(cb->h_srows, rows, (size_t)n * sizeof *rows);
	for (int i = 0; i < n; i++)
		cb->h_srows[i].slot = (int32_t)slot_at(cb, rows[i].slot);
	cb->srows_busy = true;
	CK(cudaEventRecord(cb->ev_pass_end, cb->st));
	CK(cudaMemcpyAsync(cb->d_srows, cb->h_srows, (size_t)n * sizeof *rows, cudaMemcpyHostToDevice, cb->st_up));
	CK(cudaEventRecord(cb->ev_rows, cb->st_up));
	CK(cudaStreamWaitEvent(cb->st, cb->ev_rows, 0));
	if (cb->timing)
		CK(cudaEventRecord(cb->ev_t[2], cb->st));
	const size_t res_bytes = (size_t)n * sizeof *out, stat_bytes = (size_t)n * sizeof *status;
	int rc = cuda_sample_launch(cb->slots, cb->c.vocab_size, cb->d_srows, n, (struct samp_result *)cb->d_sout,
				    (int32_t *)((char *)cb->d_sout + res_bytes), cb->d_sscratch, cb->sscratch_bytes,
				    cb->st);
	if (rc) {
		snprintf(cb->err, sizeof cb->err, "CUDA: sampling kernel launch failed: %s",
			 cudaGetErrorString(cudaGetLastError()));
		return rc;
	}
	if (cb->timing) {
		CK(cudaEventRecord(cb->ev_t[3], cb->st));
		cb->t_samp = 1;
		cb->tm.samples++;
	}
	CK(cudaEventRecord(cb->ev_samp, cb->st));
	plan_ahead(cb, rows, n);                     // while the GPU samples
	// The results come back on st_up, while st goes on to a pass run ahead.
	CK(cudaStreamWaitEvent(cb->st_up, cb->ev_samp, 0));
	CK(cudaMemcpyAsync(cb->h_sout, cb->d_sout, res_bytes + stat_bytes, cudaMemcpyDeviceToHost, cb->st_up));
	CK(cudaEventRecord(cb->ev_sout, cb->st_up));
	CK(cudaEventSynchronize(cb->ev_sout));
	cb->srows_busy = false;
	if (cb->timing)
		timing_collect(cb);
	memcpy(out, cb->h_sout, res_bytes);
	memcpy(status, (char *)cb->h_sout + res_bytes, stat_bytes);
	return ahead_tokens(cb, out, status);
}

static const char *
cuda_last_error(void *self)
{
	return ((struct cuda_backend *)self)->err;
}

static void
cuda_destroy(void *self)
{
	struct cuda_backend *cb = (struct cuda_backend *)self;
	if (!cb)
		return;
	if (cb->st)
		cudaStreamSynchronize(cb->st);
	if (cb->st_up)
		cudaStreamSynchronize(cb->st_up);
	if (cb->graphs) {
		for (const graph_entry &ge : *cb->graphs)
			cudaGraphExecDestroy(ge.exec);
		delete cb->graphs;
	}
	if (cb->L) {
		for (int l = 0; l < cb->c.n_layers; l++) {
			struct cl_layer *d = &cb->L[l];
			cudaFree(d->wqkv);
			cudaFree(d->wo);
			cudaFree(d->wgu);
			cudaFree(d->wdown);
			cudaFree(d->bqkv);
			cudaFree(d->attn_norm);
			cudaFree(d->mlp_norm);
			cudaFree(d->qn);
			cudaFree(d->kn);
		}
		free(cb->L);
	}
	if (cb->lm_head != cb->emb)
		cudaFree(cb->lm_head);
	cudaFree(cb->emb);
	cudaFree(cb->out_norm);
	cudaFree(cb->inv_freq);
	cudaFree(cb->kv);
	delete cb->slot_row;
	delete cb->staged;
	delete cb->slot_mark;
	void *bufs[] = { cb->x, cb->qkv, cb->q, cb->gu, cb->slots, cb->part_ml, cb->part_acc,
			 cb->xb, cb->att, cb->h, cb->dmeta, cb->d_srows, cb->d_sout, cb->d_sscratch };
	for (void *p : bufs)
		cudaFree(p);
	cudaFreeHost(cb->hmeta);
	cudaFreeHost(cb->h_srows);
	cudaFreeHost(cb->h_sout);
	k_gemm_destroy(cb->gm);
	if (cb->ev_fork)
		cudaEventDestroy(cb->ev_fork);
	if (cb->ev_join)
		cudaEventDestroy(cb->ev_join);
	if (cb->ev_up)
		cudaEventDestroy(cb->ev_up);
	if (cb->ev_sout)
		cudaEventDestroy(cb->ev_sout);
	for (cudaEvent_t ev : { cb->ev_pass_end, cb->ev_rows, cb->ev_samp })
		if (ev)
			cudaEventDestroy(ev);
	delete cb->ahead;
	for (cudaEvent_t ev : cb->ev_t)
		if (ev)
			cudaEventDestroy(ev);
	for (auto &pair : cb->ev_s)
		for (cudaEvent_t ev : pair)
			if (ev)
				cudaEventDestroy(ev);
	if (cb->st2)
		cudaStreamDestroy(cb->st2);
	if (cb->st_up)
		cudaStreamDestroy(cb->st_up);
	if (cb->st)
		cudaStreamDestroy(cb->st);
	free(cb);
}

static const struct backend_ops cuda_ops = {
	"cuda",
	cuda_forward,
	cuda_copy_block,
	cuda_destroy,
	cuda_forward_slots,
	cuda_copy_slot,
	cuda_read_slot,
	cuda_sample,
	cuda_last_error,
	cuda_timing,
};

// ---- creation ---------------------------------------------------------------------------

static size_t
align_up(size_t n)
{
	return (n + 255) / 256 * 256;
}

static void
layout_meta(struct cuda_backend *cb)
{
	struct meta_layout &ml = cb->ml;
	size_t at = 0;
	const size_t ri = (size_t)cb->rows_cap * sizeof(int32_t);
	ml.counters = at, at += 4 * sizeof(int32_t);
	ml.tokens = at, at += ri;
	ml.pos = at, at += ri;
	ml.tab_off = at, at += ri;
	ml.logit_rows = at, at += ri;
	ml.tok_src = at, at += ri;
	ml.rp_off = at, at += ri + sizeof(int32_t);
	at = align_up(at);
	ml.items = at, at = align_up(at + (size_t)cb->cap_items * sizeof(k_attn_item));
	ml.item_rows = at, at = align_up(at + (size_t)cb->cap_parts * sizeof(int32_t));
	ml.rp_idx = at, at = align_up(at + (size_t)cb->cap_parts * sizeof(int32_t));
	ml.tables = at, at = align_up(at + (size_t)cb->cap_table * sizeof(int32_t));
	ml.bytes = at;
}

#define DMALLOC(ptr, bytes) CK(cudaMalloc((void **)&(ptr), (bytes)))

static int
alloc_buffers(struct cuda_backend *cb)
{
	const struct model_config *c = &cb->c;
	const size_t R = (size_t)cb->rows_cap, v = (size_t)c->vocab_size;
	DMALLOC(cb->x, R * c->hidden_size * sizeof(float));
	DMALLOC(cb->xb, R * c->hidden_size * sizeof(bf16));
	DMALLOC(cb->qkv, R * cb->qkvd * sizeof(float));
	DMALLOC(cb->q, R * cb->qd * sizeof(float));
	DMALLOC(cb->att, R * cb->qd * sizeof(bf16));
	DMALLOC(cb->gu, R * 2 * c->intermediate_size * sizeof(float));
	DMALLOC(cb->h, R * c->intermediate_size * sizeof(bf16));
	DMALLOC(cb->slots, ((size_t)cb->max_seqs + R) * v * sizeof(float));
	cb->logits = cb->slots + (size_t)cb->max_seqs * v;
	cb->slot_row = new std::vector<int32_t>(cb->max_seqs, -1);
	cb->staged = new std::vector<int32_t>();
	cb->slot_mark = new std::vector<long>(cb->max_seqs, 0);
	DMALLOC(cb->part_ml, (size_t)cb->cap_parts * c->n_heads * 2 * sizeof(float));
	DMALLOC(cb->part_acc, (size_t)cb->cap_parts * c->n_heads * c->head_dim * sizeof(float));
	layout_meta(cb);
	DMALLOC(cb->dmeta, cb->ml.bytes);
	CK(cudaMemset(cb->dmeta, 0, cb->ml.bytes));
	CK(cudaMemset(cb->x, 0, R * c->hidden_size * sizeof(float)));
	CK(cudaMallocHost((void **)&cb->hmeta, cb->ml.bytes));
	memset(cb->hmeta, 0, cb->ml.bytes);
	DMALLOC(cb->d_srows, (size_t)cb->max_seqs * sizeof(struct cuda_samp_row));
	CK(cudaMallocHost((void **)&cb->h_srows, (size_t)cb->max_seqs * sizeof(struct cuda_samp_row)));
	DMALLOC(cb->d_sout, (size_t)cb->max_seqs * (sizeof(struct samp_result) + sizeof(int32_t)));
	CK(cudaMallocHost(&cb->h_sout, (size_t)cb->max_seqs * (sizeof(struct samp_result) + sizeof(int32_t))));
	cb->sscratch_bytes = cuda_sample_scratch_bytes(cb->max_seqs, c->vocab_size);
	if (cb->sscratch_bytes)
		DMALLOC(cb->d_sscratch, cb->sscratch_bytes);
	return 0;
}

// The projections' GEMMs, tuned for every graph bucket of rows before the
// KV pool takes the free memory (tuning needs scratch copies of the weights);
// matrices under GEMM_TUNE_MIN_BYTES are not tuned.
// BRAID_GEMM: "tuned" (default), "untuned" (the GEMV up to its row limit,
// cublasGemmEx above, no tuning: fast start), "cublas" (cublasGemmEx only).
#define GEMM_TUNE_MIN_BYTES ((size_t)2 << 20)
static int
setup_gemm(struct cuda_backend *cb)
{
	const struct model_config *c = &cb->c;
	const char *mode = getenv("BRAID_GEMM");
	const bool plain = mode && !strcmp(mode, "cublas");
	if (mode && *mode && !plain && strcmp(mode, "tuned") && strcmp(mode, "untuned")) {
		snprintf(cb->err, sizeof cb->err, "BRAID_GEMM=%s: expected tuned, untuned or cublas", mode);
		return ENG_ERR_INVALID;
	}
	char e[ENG_ERRLEN];
	if (!(cb->gm = k_gemm_create(e, sizeof e))) {
		snprintf(cb->err, sizeof cb->err, "%s", e);
		return ENG_ERR_DEVICE;
	}
	k_gemm_set_plain(cb->gm, plain);
	if (plain || (mode && !strcmp(mode, "untuned")))
		return 0;
	const int shapes[][2] = { { cb->qkvd, c->hidden_size }, { c->hidden_size, cb->qd },
				  { 2 * c->intermediate_size, c->hidden_size }, { c->hidden_size, c->intermediate_size },
				  { c->vocab_size, c->hidden_size } };
	int nb = 0;
	while (nb < N_BUCKETS && buckets[nb] <= cb->rows_cap)
		nb++;
	for (const auto &sh : shapes) {
		// Small matrices are latency-bound whatever the algorithm: the
		// untuned choice serves them and the load stays quick.
		if ((size_t)sh[0] * sh[1] * sizeof(bf16) < GEMM_TUNE_MIN_BYTES)
			continue;
		cudaError_t ce = k_gemm_tune(cb->gm, sh[0], sh[1], buckets, nb, cb->st);
		if (ce != cudaSuccess) {
			snprintf(cb->err, sizeof cb->err, "CUDA: tuning the %dx%d GEMM: %s", sh[0], sh[1],
				 *k_gemm_error(cb->gm) ? k_gemm_error(cb->gm) : cudaGetErrorString(ce));
			return ce == cudaErrorMemoryAllocation ? ENG_ERR_NOMEM : ENG_ERR_DEVICE;
		}
	}
	// BRAID_GEMM_LOG=1: every projection's choice for every bucket, on stderr.
	const char *lg = getenv("BRAID_GEMM_LOG");
	if (lg && !strcmp(lg, "1"))
		for (const auto &sh : shapes)
			for (int i = 0; i < nb; i++) {
				char what[256];
				k_gemm_describe(cb->gm, sh[0], sh[1], buckets[i], what, sizeof what);
				fprintf(stderr, "braid: GEMM %dx%d, %d rows: %s\n", sh[0], sh[1], buckets[i], what);
			}
	return 0;
}

// A path that is on unless its switch (an environment variable) is "0".
static bool
switch_on(const char *name)
{
	const char *v = getenv(name);
	return !v || strcmp(v, "0");
}

static int
create(struct cuda_backend *cb, const struct cuda_backend_params *p, size_t *weight_bytes)
{
	const struct model_config *c = &cb->c;
	int n_dev = 0, rc;
	cudaError_t e = cudaGetDeviceCount(&n_dev);
	if (e != cudaSuccess || n_dev == 0) {
		snprintf(cb->err, sizeof cb->err, "no usable CUDA device (%s)",
			 e != cudaSuccess ? cudaGetErrorString(e) : "none found");
		return ENG_ERR_DEVICE;
	}
	CK(cudaSetDevice(0));
	cudaDeviceProp prop;
	CK(cudaGetDeviceProperties(&prop, 0));
	cb->n_sm = prop.multiProcessorCount;
	int per_sm = 0;
	CK(k_init(c->head_dim));
	CK(cudaStreamCreateWithFlags(&cb->st, cudaStreamNonBlocking));
	CK(cudaStreamCreateWithFlags(&cb->st2, cudaStreamNonBlocking));
	CK(cudaEventCreateWithFlags(&cb->ev_fork, cudaEventDisableTiming));
	CK(cudaEventCreateWithFlags(&cb->ev_join, cudaEventDisableTiming));
	CK(cudaEventCreateWithFlags(&cb->ev_up, cudaEventDisableTiming));
	CK(cudaEventCreateWithFlags(&cb->ev_sout, cudaEventDisableTiming));
	CK(cudaStreamCreateWithFlags(&cb->st_up, cudaStreamNonBlocking));
	for (cudaEvent_t *ev : { &cb->ev_pass_end, &cb->ev_rows, &cb->ev_samp })
		CK(cudaEventCreateWithFlags(ev, cudaEventDisableTiming));
	for (auto &pair : cb->ev_s)
		for (cudaEvent_t &ev : pair)
			CK(cudaEventCreate(&ev));
	// The next decode pass planned and uploaded while the GPU samples
	// (plan_ahead); BRAID_PLAN_AHEAD=0: planned when it comes.
	cb->ahead_on = switch_on("BRAID_PLAN_AHEAD");
	// And launched behind the sampling, with the sampled tokens, before the
	// host has them (plan_ahead); BRAID_RUN_AHEAD=0: launched when it comes.
	// Not under BRAID_PROFILE_PASS, which counts the passes forward_slots launches.
	cb->run_ahead_on = cb->ahead_on && switch_on("BRAID_RUN_AHEAD") && cb->profile_pass < 0;
	per_sm = (int)(prop.sharedMemPerMultiprocessor / (k_attention_smem(c->head_dim) + 1024));
	cb->ctas = cb->n_sm * std::max(1, std::min(per_sm, 4));
	cb->warps = cb->n_sm * 32;
	cb->warp_items = k_attn_warp_item(1, c->n_heads, c->n_kv_heads, c->head_dim) != 0;
	// The one-row path (enqueue_pass): 4 warps an SM measured best of 2, 4
	// and 8 (0.6b N=1); BRAID_ATT_ONE_STREAM=0 turns the path off.
	cb->one_stream = switch_on("BRAID_ATT_ONE_STREAM");
	cb->one_warps = cb->n_sm * 4;
	// A decode pass's shared-prefix rows in one-warp units of several rows
	// instead of CTA units on a second stream (an H100, against
	// BRAID_ATT_PREFIX_WARP=0 side by side: 1.7b N = 8 / 32 / 64 / 128 +1-4%
	// / +5% / +3% / +3%, 0.6b N = 8 / 64 / 128 +10% / +5% / +4%, 8b N = 8 /
	// 64 +5% / +3%; docs/gpu-bench.md).
	cb->warp_rows = switch_on("BRAID_ATT_PREFIX_WARP") ? k_attn_warp_rows(c->n_heads, c->n_kv_heads, c->head_dim) : 1;
	// SwiGLU in the gate-up GEMV's epilogue; BRAID_FUSE_SWIGLU=0 keeps the
	// separate kernel.
	cb->fuse_swiglu = switch_on("BRAID_FUSE_SWIGLU");
	// One-row passes: the qkv and gate-up GEMVs normalise their row
	// themselves (k_gemm_run_norm) instead of after a k_rmsnorm;
	// BRAID_FUSE_NORM=0 keeps the separate kernel.
	cb->fuse_norm = switch_on("BRAID_FUSE_NORM");
	// One-row passes' attention on clusters merged in distributed shared
	// memory (k_attention_rows) instead of the one-warp kernel and the
	// merge: the largest clusters the device runs, BRAID_ATT_CLUSTER=N
	// clusters of N CTAs, =0 off (an H100, N=1, against off in two calls:
	// 0.6b +4-6%, 1.7b 0-1%, 8b +1-3%; docs/gpu-bench.md).
	// The next kernel (the o projection) may be scheduled before the
	// clusters' merge where its weights are at most 8 MB (early), else only
	// when they end; BRAID_ATT_CLUSTER_EARLY=1 / 0 forces either.  The
	// eighth session measured 0.6b +4%, 1.7b -8%, 8b 0 and kept it off;
	// with the twelfth session's kernels, an H100 at N=1, side by side in
	// one call each: 0.6b (o 4 MB) 946-963 vs 910-913 tok/s, 1.7b (8 MB)
	// 545 vs 534 and 546 vs 521-524, 8b (32 MB) 160-162 vs 165-168.  Why
	// the large projection loses was not measured (docs/gpu-bench.md).
	const char *ac = getenv("BRAID_ATT_CLUSTER"), *ae = getenv("BRAID_ATT_CLUSTER_EARLY");
	const bool ac_auto = !ac || !strcmp(ac, "auto"), ac_off = ac && !strcmp(ac, "0");
	cb->att_cluster = ac_off ? 0 : ac_auto ? k_attention_cluster_size(cb->g, c->n_heads) : atoi(ac);
	const bool small_o = (size_t)c->hidden_size * (size_t)cb->qd * sizeof(bf16) <= ((size_t)8 << 20);
	cb->att_cluster_early = ae && !strcmp(ae, "0") ? false : ae && !strcmp(ae, "1") ? true : small_o;
	const char *sk = getenv("BRAID_PROFILE_SKIP");
	const long skip = sk ? parse_skip(sk, cb->err, sizeof cb->err) : 0;
	if (skip < 0)
		return ENG_ERR_INVALID;
	cb->skip = (unsigned)skip;
	if (skip)
		fprintf(stderr, "braid: BRAID_PROFILE_SKIP=%s: kernels left out of every pass; outputs are wrong (timing only)\n",
			sk);
	// k_attention_cluster_fits refuses sizes outside 1..16 (and "abc" reads 0).
	if (!ac_auto && !ac_off && !k_attention_cluster_fits(cb->g, c->n_heads, cb->att_cluster)) {
		snprintf(cb->err, sizeof cb->err,
			 "BRAID_ATT_CLUSTER=%s: expected 0 (off), auto or a cluster size 1..16 this device runs for this model",
			 ac);
		return ENG_ERR_INVALID;
	}

	cb->L = (struct cl_layer *)calloc((size_t)c->n_layers, sizeof *cb->L);
	if (!cb->L)
		return ENG_ERR_NOMEM;
	if ((rc = upload_weights(cb, weight_bytes)))
		return rc;
	const int max_pos = c->max_position > 0 ? c->max_position : (1 << 20);
	const long blocks_per_seq = (max_pos + cb->g.block_tokens - 1) / cb->g.block_tokens;
	cb->cap_items = 8 * cb->rows_cap + 4 * cb->ctas;
	cb->cap_parts = 16 * cb->rows_cap + 1024;
	cb->cap_table = (int)std::min<long>((long)cb->max_rows * blocks_per_seq, 1L << 24);
	if ((rc = alloc_buffers(cb)))
		return rc;
	if ((rc = setup_gemm(cb)))
		return rc;

	// The KV pool: what was asked, or 90% of what is left.
	size_t fr = 0, tot = 0;
	CK(cudaMemGetInfo(&fr, &tot));
	const size_t block_bytes = cb->block_elems * sizeof(bf16);
	size_t kvb = p->kv_bytes;
	const size_t reserve = (size_t)256 << 20;   // graphs, cuBLAS, sampling
	if (!kvb)
		kvb = fr > reserve ? (size_t)((double)(fr - reserve) * 0.9) : 0;
	size_t nb = kvb / block_bytes;
	if (nb < 1) {
		snprintf(cb->err, sizeof cb->err, "KV size %zu bytes holds no block of %zu bytes", kvb, block_bytes);
		return ENG_ERR_RANGE;
	}
	if (nb > (size_t)INT32_MAX / 2)
		nb = (size_t)INT32_MAX / 2;
	e = cudaMalloc((void **)&cb->kv, nb * block_bytes);
	if (e != cudaSuccess) {
		cudaGetLastError();
		snprintf(cb->err, sizeof cb->err, "cannot allocate a KV pool of %zu bytes on the GPU (%zu of %zu bytes free): %s",
			 nb * block_bytes, fr, tot, cudaGetErrorString(e));
		return e == cudaErrorMemoryAllocation ? ENG_ERR_NOMEM : ENG_ERR_DEVICE;
	}
	cb->n_blocks = (int)nb;
	return 0;
}

extern "C" int
cuda_backend_create(const struct model *m, const struct cuda_backend_params *p, struct backend *out,
		    int *n_blocks, char *err, size_t errlen)
{
	const struct model_config *c = &m->cfg;
	const char *dir = m->dir ? m->dir : "model";
	out->ops = NULL, out->self = NULL;
	if (!p || p->block_tokens <= 0 || p->max_rows <= 0 || p->max_seqs <= 0)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "%s: bad CUDA backend parameters", dir);
	if (c->head_dim % 8 || c->head_dim > K_MAX_HEAD_DIM || c->n_heads % c->n_kv_heads ||
	    k_attention_max_rows(c->n_heads, c->n_kv_heads, c->head_dim) < 1)
		return eng_seterr(err, errlen, ENG_ERR_UNSUPPORTED,
				  "%s: the CUDA backend needs a head_dim that is a multiple of 8, <= %d, and at most %d query heads per kv head",
				  dir, K_MAX_HEAD_DIM, K_ATT_QMAX);
	struct cuda_backend *cb = (struct cuda_backend *)calloc(1, sizeof *cb);
	if (!cb)
		return eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: out of memory", dir);
	cb->m = m;
	cb->c = *c;
	cb->qd = c->n_heads * c->head_dim;
	cb->kd = c->n_kv_heads * c->head_dim;
	cb->qkvd = cb->qd + 2 * cb->kd;
	cb->max_rows = p->max_rows;
	cb->max_seqs = p->max_seqs;
	cb->use_graphs = p->graphs;
	cb->rows_cap = graphed(cb, cb->max_rows) ? bucket_of(cb->max_rows) : cb->max_rows;
	const char *pp = getenv("BRAID_PROFILE_PASS");
	cb->profile_pass = pp && *pp ? strtol(pp, NULL, 10) : -1;
	cb->g = k_kv_geom{ c->n_layers, c->n_kv_heads, c->head_dim, p->block_tokens };
	cb->block_elems = (size_t)c->n_layers * 2 * c->n_kv_heads * (size_t)p->block_tokens * c->head_dim;
	cb->graphs = new std::vector<graph_entry>();
	cb->ahead = new ahead_state();
	size_t wbytes = 0;
	int rc = create(cb, p, &wbytes);
	if (rc) {
		eng_seterr(err, errlen, rc, "%s: %s", dir, cb->err);
		cuda_destroy(cb);
		return rc;
	}
	out->ops = &cuda_ops;
	out->self = cb;
	out->weight_bytes = wbytes;
	*n_blocks = cb->n_blocks;
	return 0;
}
