/* model.c - load config.json and the safetensors of a model directory and
 * bind every weight by its HF name, checking shapes (model_).  Engine thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "status.h"

/* Format a shape as "[a, b]". */
static void
fmt_shape(char *buf, size_t n, int ndim, const int64_t *shape)
{
	size_t off = 0;
	off += (size_t)snprintf(buf + off, n - off, "[");
	for (int i = 0; i < ndim && off < n; i++)
		off += (size_t)snprintf(buf + off, n - off, "%s%lld", i ? ", " : "",
					(long long)shape[i]);
	if (off < n)
		snprintf(buf + off, n - off, "]");
}

/* Bind NAME as a vector (rows == 0) of cols elements, or a (rows, cols)
 * matrix.  A missing tensor is an error unless optional. */
static int
bind(const struct model *m, struct weight *w, const char *name, int64_t rows,
     int64_t cols, int optional, char *err, size_t errlen)
{
	const struct st_tensor *t = st_find(m->st, name);
	memset(w, 0, sizeof *w);
	if (!t) {
		if (optional)
			return 0;
		return eng_seterr(err, errlen, ENG_ERR_NOT_FOUND,
				  "%s: tensor %s not found", m->dir, name);
	}
	int64_t want[2] = { rows, cols };
	int want_ndim = rows ? 2 : 1;
	const int64_t *wp = rows ? want : want + 1;
	int ok = t->ndim == want_ndim;
	for (int i = 0; ok && i < want_ndim; i++)
		ok = t->shape[i] == wp[i];
	if (!ok) {
		char got[128], exp[64];
		fmt_shape(got, sizeof got, t->ndim, t->shape);
		fmt_shape(exp, sizeof exp, want_ndim, wp);
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: tensor %s in %s has shape %s, expected %s",
				  m->dir, name, t->file, got, exp);
	}
	w->data = t->data;
	w->dtype = t->dtype;
	w->rows = rows ? rows : 1;
	w->cols = cols;
	return 0;
}

static size_t
weight_nbytes(const struct weight *w)
{
	if (!w->data)
		return 0;
	return (size_t)(w->rows * w->cols) * st_dtype_size(w->dtype);
}

static int
bind_layer(struct model *m, int l, char *err, size_t errlen)
{
	const struct model_config *c = &m->cfg;
	struct layer_weights *L = &m->layers[l];
	int64_t hid = c->hidden_size, q = (int64_t)c->n_heads * c->head_dim;
	int64_t kv = (int64_t)c->n_kv_heads * c->head_dim, ffn = c->intermediate_size;
	char name[128];
	int rc;

	const struct {
		struct weight *w;
		const char *suffix;
		int64_t rows, cols;
		int want;     /* 1 = required for this arch, 0 = not bound */
	} rows[] = {
		{ &L->attn_norm, "input_layernorm.weight", 0, hid, 1 },
		{ &L->wq, "self_attn.q_proj.weight", q, hid, 1 },
		{ &L->wk, "self_attn.k_proj.weight", kv, hid, 1 },
		{ &L->wv, "self_attn.v_proj.weight", kv, hid, 1 },
		{ &L->bq, "self_attn.q_proj.bias", 0, q, c->attn_bias },
		{ &L->bk, "self_attn.k_proj.bias", 0, kv, c->attn_bias },
		{ &L->bv, "self_attn.v_proj.bias", 0, kv, c->attn_bias },
		{ &L->q_norm, "self_attn.q_norm.weight", 0, c->head_dim, c->qk_norm },
		{ &L->k_norm, "self_attn.k_norm.weight", 0, c->head_dim, c->qk_norm },
		{ &L->wo, "self_attn.o_proj.weight", hid, q, 1 },
		{ &L->mlp_norm, "post_attention_layernorm.weight", 0, hid, 1 },
		{ &L->w_gate, "mlp.gate_proj.weight", ffn, hid, 1 },
		{ &L->w_up, "mlp.up_proj.weight", ffn, hid, 1 },
		{ &L->w_down, "mlp.down_proj.weight", hid, ffn, 1 },
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		if (!rows[i].want)
			continue;
		snprintf(name, sizeof name, "model.layers.%d.%s", l, rows[i].suffix);
		rc = bind(m, rows[i].w, name, rows[i].rows, rows[i].cols, 0, err, errlen);
		if (rc < 0)
			return rc;
		m->weight_bytes += weight_nbytes(rows[i].w);
	}
	return 0;
}

struct model *
model_load(const char *dir, char *err, size_t errlen)
{
	struct model *m = calloc(1, sizeof *m);
	char *cpath = NULL;
	if (!m)
		goto nomem;
	m->dir = strdup(dir);
	size_t n = strlen(dir) + sizeof "/config.json";
	cpath = malloc(n);
	if (!m->dir || !cpath)
		goto nomem;
	snprintf(cpath, n, "%s/config.json", dir);
	if (mcfg_load(cpath, &m->cfg, err, errlen) < 0)
		goto fail;
	m->st = st_open_dir(dir, err, errlen);
	if (!m->st)
		goto fail;

	const struct model_config *c = &m->cfg;
	int64_t vocab = c->vocab_size, hid = c->hidden_size;
	if (bind(m, &m->tok_embd, "model.embed_tokens.weight", vocab, hid, 0, err, errlen) < 0 ||
	    bind(m, &m->out_norm, "model.norm.weight", 0, hid, 0, err, errlen) < 0)
		goto fail;
	m->weight_bytes += weight_nbytes(&m->tok_embd) + weight_nbytes(&m->out_norm);

	if (c->tie_embeddings) {
		/* HF ties even when the file also stores lm_head: use the table. */
		m->lm_head = m->tok_embd;
	} else {
		if (!st_find(m->st, "lm_head.weight")) {
			eng_seterr(err, errlen, ENG_ERR_NOT_FOUND,
				   "%s: tensor lm_head.weight not found and "
				   "tie_word_embeddings is false", dir);
			goto fail;
		}
		if (bind(m, &m->lm_head, "lm_head.weight", vocab, hid, 0, err, errlen) < 0)
			goto fail;
		m->weight_bytes += weight_nbytes(&m->lm_head);
	}

	m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
	if (!m->layers)
		goto nomem;
	for (int l = 0; l < c->n_layers; l++)
		if (bind_layer(m, l, err, errlen) < 0)
			goto fail;
	free(cpath);
	return m;

nomem:
	eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: out of memory", dir);
fail:
	free(cpath);
	model_free(m);
	return NULL;
}

void
model_free(struct model *m)
{
	if (!m)
		return;
	st_close(m->st);
	free(m->layers);
	free(m->dir);
	free(m);
}
