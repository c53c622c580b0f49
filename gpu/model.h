/* model.h - a loaded model: config plus weight views into the mmapped
 * safetensors (model_).  Built on the engine thread, then read-only. */
#ifndef BRAID_MODEL_H
#define BRAID_MODEL_H

#include "config.h"
#include "safetensors.h"

/* A 1-D or row-major 2-D weight, kept in its file dtype (not copied).
 * HF Linear layout: rows = out features, cols = in features. */
struct weight {
	const void *data;       /* NULL when absent (e.g. no bias)   */
	enum st_dtype dtype;
	int64_t rows;           /* 1 for vectors                     */
	int64_t cols;
};

struct layer_weights {
	struct weight attn_norm;   /* (hidden)                               */
	struct weight wq;          /* (n_heads*head_dim, hidden)             */
	struct weight wk;          /* (n_kv_heads*head_dim, hidden)          */
	struct weight wv;          /* (n_kv_heads*head_dim, hidden)          */
	struct weight bq;          /* (n_heads*head_dim) Qwen2 only          */
	struct weight bk;          /* (n_kv_heads*head_dim) Qwen2 only       */
	struct weight bv;          /* (n_kv_heads*head_dim) Qwen2 only       */
	struct weight q_norm;      /* (head_dim) Qwen3 only                  */
	struct weight k_norm;      /* (head_dim) Qwen3 only                  */
	struct weight wo;          /* (hidden, n_heads*head_dim)             */
	struct weight mlp_norm;    /* (hidden)  post_attention_layernorm     */
	struct weight w_gate;      /* (intermediate, hidden)                 */
	struct weight w_up;        /* (intermediate, hidden)                 */
	struct weight w_down;      /* (hidden, intermediate)                 */
};

struct model {
	struct model_config cfg;
	struct weight tok_embd;        /* (vocab, hidden)                    */
	struct weight out_norm;        /* (hidden)                           */
	struct weight lm_head;         /* (vocab, hidden); = tok_embd if tied */
	struct layer_weights *layers;  /* [n_layers]                         */
	st_set *st;                    /* owns the mappings                  */
	char *dir;                     /* the model directory (owned)        */
	size_t weight_bytes;           /* bytes of all weights as stored     */
};

/* Load DIR/config.json and DIR's safetensors, bind every tensor by its HF
 * name ("model.layers.N.self_attn.q_proj.weight", ...) and check its shape
 * against the config.  A missing tensor or a shape mismatch is an error
 * naming the tensor, the file, and the expected and found shapes.
 * Returns NULL and fills err on failure.  Free with model_free(). */
struct model *model_load(const char *dir, char *err, size_t errlen);

/* NULL is fine. */
void model_free(struct model *m);

#endif
