/* forward.c - the CPU reference backend: one batched forward pass of a
 * Llama/Qwen2/Qwen3 decoder over the paged KV cache in host memory.  Engine
 * thread; matmuls, attention and per-row work fan out over the pool. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "model.h"
#include "ops.h"
#include "pool.h"
#include "status.h"

struct cpu_backend {
	const struct model *m;        /* borrowed                                */
	pool *pool;                   /* own_pool ? owned : borrowed             */
	int own_pool;
	ops_mm *mm;
	int n_blocks;
	int block_tokens;
	size_t layer_floats;          /* K (or V) of one layer in one block      */
	size_t block_floats;          /* = n_layers * 2 * layer_floats           */
	float *kv;                    /* (n_blocks, n_layers, 2, block_tokens,
				         n_kv_heads, head_dim)                  */
	float *inv_freq;              /* (head_dim/2)                            */

	/* Activations, grown to cap_rows rows on demand. */
	int cap_rows;
	float *x;                     /* (rows, hidden) residual stream          */
	float *xb;                    /* (rows, hidden) normed input / sublayer out */
	float *q;                     /* (rows, n_heads*head_dim)                */
	float *k;                     /* (rows, n_kv_heads*head_dim)             */
	float *v;                     /* (rows, n_kv_heads*head_dim)             */
	float *att;                   /* (rows, n_heads*head_dim)                */
	float *hg;                    /* (rows, intermediate) gate, then SwiGLU  */
	float *hu;                    /* (rows, intermediate) up                 */
	float *rcos, *rsin;           /* (rows, head_dim/2)                      */
};

size_t
backend_kv_block_bytes(const struct model *m, int block_tokens)
{
	const struct model_config *c = &m->cfg;
	return (size_t)c->n_layers * 2 * (size_t)block_tokens * (size_t)c->n_kv_heads *
	       (size_t)c->head_dim * sizeof(float);
}

/* K (kv = 0) or V (kv = 1) of layer l at position p of a sequence:
 * (n_kv_heads, head_dim) floats. */
static float *
kv_at(const struct cpu_backend *cb, const int32_t *table, int l, int kv, int32_t p)
{
	const struct model_config *c = &cb->m->cfg;
	int32_t blk = table[p / cb->block_tokens];
	int off = p % cb->block_tokens;
	return cb->kv + (size_t)blk * cb->block_floats + ((size_t)l * 2 + (size_t)kv) * cb->layer_floats +
	       (size_t)off * (size_t)c->n_kv_heads * (size_t)c->head_dim;
}

/* ---- batch checks and buffers ---------------------------------------------- */

static int
grow(float **p, size_t n)
{
	float *np = realloc(*p, n * sizeof(float));
	if (!np)
		return ENG_ERR_NOMEM;
	*p = np;
	return 0;
}

static int
ensure_rows(struct cpu_backend *cb, int rows)
{
	const struct model_config *c = &cb->m->cfg;
	if (rows <= cb->cap_rows)
		return 0;
	const size_t n = (size_t)rows;
	const size_t qd = (size_t)c->n_heads * c->head_dim, kd = (size_t)c->n_kv_heads * c->head_dim;
	int rc = 0;
	if ((rc = grow(&cb->x, n * c->hidden_size)) || (rc = grow(&cb->xb, n * c->hidden_size)) ||
	    (rc = grow(&cb->q, n * qd)) || (rc = grow(&cb->k, n * kd)) || (rc = grow(&cb->v, n * kd)) ||
	    (rc = grow(&cb->att, n * qd)) || (rc = grow(&cb->hg, n * c->intermediate_size)) ||
	    (rc = grow(&cb->hu, n * c->intermediate_size)) ||
	    (rc = grow(&cb->rcos, n * (c->head_dim / 2))) || (rc = grow(&cb->rsin, n * (c->head_dim / 2))))
		return rc;
	cb->cap_rows = rows;
	return 0;
}

/* ---- per-row stages (parallel over rows) ------------------------------------ */

struct row_job {
	struct cpu_backend *cb;
	const struct fwd_batch *b;
	int layer;
	const struct weight *norm;    /* rmsnorm stage: the weight            */
	float *dst;                   /* rmsnorm stage: output rows           */
	const float *src;
	float *logits;
};

static void
embed_rows(void *ctx, int r0, int r1)
{
	const struct row_job *j = ctx;
	const struct model *m = j->cb->m;
	const int d = m->cfg.hidden_size, half = m->cfg.head_dim / 2;
	const size_t esz = st_dtype_size(m->tok_embd.dtype);
	for (int r = r0; r < r1; r++) {
		const char *row = (const char *)m->tok_embd.data + (size_t)j->b->tokens[r] * d * esz;
		float *x = j->cb->x + (size_t)r * d;
		for (int i = 0; i < d; i++)
			x[i] = st_load(row, m->tok_embd.dtype, (size_t)i);
		ops_rope_cos_sin(j->cb->inv_freq, half, j->b->pos[r], j->cb->rcos + (size_t)r * half,
				 j->cb->rsin + (size_t)r * half);
	}
}

static void
norm_rows(void *ctx, int r0, int r1)
{
	const struct row_job *j = ctx;
	const struct model_config *c = &j->cb->m->cfg;
	const size_t d = (size_t)c->hidden_size;
	for (int r = r0; r < r1; r++)
		ops_rmsnorm(j->dst + r * d, j->src + r * d, j->norm, c->hidden_size, c->rms_eps);
}

/* Bias (Qwen2), per-head q/k norm (Qwen3), RoPE, then K and V to the cache. */
static void
qkv_rows(void *ctx, int r0, int r1)
{
	const struct row_job *j = ctx;
	struct cpu_backend *cb = j->cb;
	const struct model_config *c = &cb->m->cfg;
	const struct layer_weights *lw = &cb->m->layers[j->layer];
	const int hd = c->head_dim, half = hd / 2;
	const size_t qd = (size_t)c->n_heads * hd, kd = (size_t)c->n_kv_heads * hd;
	for (int r = r0; r < r1; r++) {
		float *q = cb->q + r * qd, *k = cb->k + r * kd, *v = cb->v + r * kd;
		const float *cs = cb->rcos + (size_t)r * half, *sn = cb->rsin + (size_t)r * half;
		if (c->attn_bias) {
			ops_add_weight(q, &lw->bq, (int64_t)qd);
			ops_add_weight(k, &lw->bk, (int64_t)kd);
			ops_add_weight(v, &lw->bv, (int64_t)kd);
		}
		for (int h = 0; h < c->n_heads; h++) {
			if (c->qk_norm)
				ops_rmsnorm(q + h * hd, q + h * hd, &lw->q_norm, hd, c->rms_eps);
			ops_rope(q + h * hd, half, cs, sn);
		}
		for (int h = 0; h < c->n_kv_heads; h++) {
			if (c->qk_norm)
				ops_rmsnorm(k + h * hd, k + h * hd, &lw->k_norm, hd, c->rms_eps);
			ops_rope(k + h * hd, half, cs, sn);
		}
		const int32_t *table = j->b->block_tables[j->b->row_seq[r]];
		memcpy(kv_at(cb, table, j->layer, 0, j->b->pos[r]), k, kd * sizeof(float));
		memcpy(kv_at(cb, table, j->layer, 1, j->b->pos[r]), v, kd * sizeof(float));
	}
}

/* Causal GQA attention for tasks t = row * n_heads + head: the row's query
 * head against positions 0..pos of its sequence, one pass with a running
 * max (online softmax), positions in order. */
static void
attn_tasks(void *ctx, int t0, int t1)
{
	const struct row_job *j = ctx;
	const struct cpu_backend *cb = j->cb;
	const struct model_config *c = &cb->m->cfg;
	const int hd = c->head_dim, nh = c->n_heads, group = c->n_heads / c->n_kv_heads;
	const float scale = 1.0f / sqrtf((float)hd);
	float acc[OPS_MAX_HEAD_DIM];
	for (int t = t0; t < t1; t++) {
		const int r = t / nh, h = t % nh, kvh = h / group;
		const float *q = cb->q + (size_t)r * nh * hd + (size_t)h * hd;
		const int32_t *table = j->b->block_tables[j->b->row_seq[r]];
		float mx = -INFINITY, sum = 0.0f;
		memset(acc, 0, (size_t)hd * sizeof(float));
		for (int32_t p = 0; p <= j->b->pos[r]; p++) {
			const float *kp = kv_at(cb, table, j->layer, 0, p) + (size_t)kvh * hd;
			const float *vp = kv_at(cb, table, j->layer, 1, p) + (size_t)kvh * hd;
			float s = ops_dot(q, kp, ST_F32, hd) * scale;
			if (s > mx) {
				float corr = expf(mx - s);
				sum *= corr;
				ops_scale(acc, corr, hd);
				mx = s;
			}
			float w = expf(s - mx);
			sum += w;
			ops_axpy(acc, w, vp, hd);
		}
		float *o = cb->att + (size_t)r * nh * hd + (size_t)h * hd;
		float inv = 1.0f / sum;
		for (int i = 0; i < hd; i++)
			o[i] = acc[i] * inv;
	}
}

static void
residual_rows(void *ctx, int r0, int r1)
{
	const struct row_job *j = ctx;
	const size_t d = (size_t)j->cb->m->cfg.hidden_size;
	for (int r = r0; r < r1; r++)
		ops_add(j->cb->x + r * d, j->cb->xb + r * d, (int64_t)d);
}

static void
swiglu_rows(void *ctx, int r0, int r1)
{
	const struct row_job *j = ctx;
	const size_t f = (size_t)j->cb->m->cfg.intermediate_size;
	for (int r = r0; r < r1; r++)
		ops_swiglu(j->cb->hg + r * f, j->cb->hu + r * f, (int64_t)f);
}

static void
final_norm_rows(void *ctx, int i0, int i1)
{
	const struct row_job *j = ctx;
	const struct model_config *c = &j->cb->m->cfg;
	const size_t d = (size_t)c->hidden_size;
	for (int i = i0; i < i1; i++)
		ops_rmsnorm(j->cb->xb + i * d, j->cb->x + (size_t)j->b->logit_rows[i] * d,
			    &j->cb->m->out_norm, c->hidden_size, c->rms_eps);
}

/* ---- the pass --------------------------------------------------------------- */

static int
cpu_forward(void *self, const struct fwd_batch *b, float *logits)
{
	struct cpu_backend *cb = self;
	const struct model *m = cb->m;
	const struct model_config *c = &m->cfg;
	int rc = backend_check_batch(b, cb->m->cfg.vocab_size, cb->block_tokens, cb->n_blocks, 0);
	if (rc)
		return rc;
	if ((rc = ensure_rows(cb, b->n_rows)))
		return rc;
	const int n = b->n_rows;
	struct row_job j = { .cb = cb, .b = b };

	pool_run(cb->pool, embed_rows, &j, n);
	for (int l = 0; l < c->n_layers; l++) {
		const struct layer_weights *lw = &m->layers[l];
		j.layer = l;

		/* attention block */
		j.norm = &lw->attn_norm, j.src = cb->x, j.dst = cb->xb;
		pool_run(cb->pool, norm_rows, &j, n);
		ops_matmul(cb->mm, cb->q, cb->xb, n, &lw->wq);
		ops_matmul(cb->mm, cb->k, cb->xb, n, &lw->wk);
		ops_matmul(cb->mm, cb->v, cb->xb, n, &lw->wv);
		pool_run(cb->pool, qkv_rows, &j, n);
		pool_run(cb->pool, attn_tasks, &j, n * c->n_heads);
		ops_matmul(cb->mm, cb->xb, cb->att, n, &lw->wo);
		pool_run(cb->pool, residual_rows, &j, n);

		/* MLP block */
		j.norm = &lw->mlp_norm, j.src = cb->x, j.dst = cb->xb;
		pool_run(cb->pool, norm_rows, &j, n);
		ops_matmul(cb->mm, cb->hg, cb->xb, n, &lw->w_gate);
		ops_matmul(cb->mm, cb->hu, cb->xb, n, &lw->w_up);
		pool_run(cb->pool, swiglu_rows, &j, n);
		ops_matmul(cb->mm, cb->xb, cb->hg, n, &lw->w_down);
		pool_run(cb->pool, residual_rows, &j, n);
	}
	if (b->n_logits > 0) {
		pool_run(cb->pool, final_norm_rows, &j, b->n_logits);
		ops_matmul(cb->mm, logits, cb->xb, b->n_logits, &m->lm_head);
	}
	return 0;
}

static int
cpu_copy_block(void *self, int32_t src, int32_t dst)
{
	struct cpu_backend *cb = self;
	if (src < 0 || src >= cb->n_blocks || dst < 0 || dst >= cb->n_blocks)
		return ENG_ERR_INVALID;
	if (src != dst)
		memcpy(cb->kv + (size_t)dst * cb->block_floats, cb->kv + (size_t)src * cb->block_floats,
		       cb->block_floats * sizeof(float));
	return 0;
}

static void
cpu_destroy(void *self)
{
	struct cpu_backend *cb = self;
	if (!cb)
		return;
	ops_mm_destroy(cb->mm);
	if (cb->own_pool)
		pool_destroy(cb->pool);
	free(cb->kv);
	free(cb->inv_freq);
	free(cb->x);
	free(cb->xb);
	free(cb->q);
	free(cb->k);
	free(cb->v);
	free(cb->att);
	free(cb->hg);
	free(cb->hu);
	free(cb->rcos);
	free(cb->rsin);
	free(cb);
}

static const struct backend_ops cpu_ops = {
	.name = "cpu",
	.forward = cpu_forward,
	.copy_block = cpu_copy_block,
	.destroy = cpu_destroy,
};

int
cpu_backend_create(const struct model *m, int n_blocks, int block_tokens, int n_threads,
		   pool *shared, struct backend *out, char *err, size_t errlen)
{
	const struct model_config *c = &m->cfg;
	struct cpu_backend *cb = NULL;
	int rc = ENG_ERR_NOMEM;

	out->ops = NULL, out->self = NULL;
	if (n_blocks <= 0 || block_tokens <= 0 || n_threads < 0) {
		rc = eng_seterr(err, errlen, ENG_ERR_INVALID,
				"%s: bad CPU backend size (%d blocks of %d tokens, %d threads)",
				m->dir ? m->dir : "model", n_blocks, block_tokens, n_threads);
		goto fail;
	}
	if (c->head_dim > OPS_MAX_HEAD_DIM || c->head_dim % 2 != 0) {
		rc = eng_seterr(err, errlen, ENG_ERR_UNSUPPORTED, "%s: head_dim %d is not supported (even, <= %d)",
				m->dir ? m->dir : "model", c->head_dim, OPS_MAX_HEAD_DIM);
		goto fail;
	}
	cb = calloc(1, sizeof *cb);
	if (!cb)
		goto nomem;
	cb->m = m;
	cb->n_blocks = n_blocks;
	cb->block_tokens = block_tokens;
	cb->layer_floats = (size_t)block_tokens * (size_t)c->n_kv_heads * (size_t)c->head_dim;
	cb->block_floats = (size_t)c->n_layers * 2 * cb->layer_floats;
	if (cb->block_floats != 0 && (size_t)n_blocks > SIZE_MAX / sizeof(float) / cb->block_floats)
		goto nomem;
	cb->kv = calloc((size_t)n_blocks * cb->block_floats, sizeof(float));
	cb->inv_freq = malloc((size_t)(c->head_dim / 2 + 1) * sizeof(float));
	if (shared) {
		cb->pool = shared;
	} else {
		cb->pool = pool_create(n_threads);
		cb->own_pool = 1;
	}
	if (!cb->kv || !cb->inv_freq || !cb->pool)
		goto nomem;
	int64_t max_cols = c->hidden_size;
	if (c->intermediate_size > max_cols)
		max_cols = c->intermediate_size;
	if ((int64_t)c->n_heads * c->head_dim > max_cols)
		max_cols = (int64_t)c->n_heads * c->head_dim;
	cb->mm = ops_mm_create(cb->pool, max_cols);
	if (!cb->mm)
		goto nomem;
	ops_rope_inv_freq(c, cb->inv_freq);
	out->ops = &cpu_ops;
	out->self = cb;
	out->weight_bytes = m->weight_bytes;
	if (m->lm_head.data != m->tok_embd.data)
		out->weight_bytes -= (size_t)m->tok_embd.rows * (size_t)m->tok_embd.cols *
				     st_dtype_size(m->tok_embd.dtype);
	return 0;
nomem:
	rc = eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: cannot allocate the CPU backend (%d KV blocks of %zu bytes)",
			m->dir ? m->dir : "model", n_blocks, backend_kv_block_bytes(m, block_tokens));
fail:
	cpu_destroy(cb);
	return rc;
}
