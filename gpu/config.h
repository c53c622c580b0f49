/* config.h - HF config.json for the decoder-only architectures braid runs
 * (mcfg_).  Parsed once on the engine thread. */
#ifndef BRAID_CONFIG_H
#define BRAID_CONFIG_H

#include <stddef.h>

enum model_arch {
	ARCH_LLAMA = 0,   /* LlamaForCausalLM                          */
	ARCH_QWEN2 = 1,   /* Qwen2ForCausalLM: q/k/v bias               */
	ARCH_QWEN3 = 2,   /* Qwen3ForCausalLM: q/k RMSNorm, own head_dim */
};

enum rope_kind {
	ROPE_DEFAULT = 0, /* theta^(-2i/d), no scaling                  */
	ROPE_LLAMA3 = 1,  /* Llama 3.1 frequency-band scaling           */
};

#define MCFG_MAX_EOS 8

struct model_config {
	enum model_arch arch;
	char arch_name[64];      /* as written in "architectures"            */
	int vocab_size;
	int hidden_size;         /* d_model                                  */
	int n_layers;
	int n_heads;             /* query heads                              */
	int n_kv_heads;          /* key/value heads (GQA); = n_heads if absent */
	int head_dim;            /* hidden_size / n_heads unless given       */
	int intermediate_size;   /* MLP width                                */
	int max_position;        /* max_position_embeddings (0 = unknown)    */
	float rms_eps;
	double rope_theta;       /* top-level or rope_parameters.rope_theta  */
	enum rope_kind rope_kind;
	float rope_factor;       /* llama3: factor                           */
	float rope_low_freq;     /* llama3: low_freq_factor                  */
	float rope_high_freq;    /* llama3: high_freq_factor                 */
	int rope_orig_max_pos;   /* llama3: original_max_position_embeddings */
	int tie_embeddings;      /* lm_head shares embed_tokens              */
	int attn_bias;           /* q/k/v projections carry a bias           */
	int qk_norm;             /* per-head RMSNorm on q and k (Qwen3)      */
	int bos_id;              /* -1 if none                               */
	int eos_ids[MCFG_MAX_EOS];
	int n_eos;
};

/* Parse config.json at path.  Unknown architecture, missing or non-positive
 * sizes, n_heads not a multiple of n_kv_heads, and malformed JSON are errors
 * that name the file and the field. */
int mcfg_load(const char *path, struct model_config *cfg, char *err, size_t errlen);

#endif
