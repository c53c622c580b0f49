/* config.c - parse and validate an HF config.json for Llama, Qwen2 and Qwen3
 * (mcfg_).  Engine thread, once per model load. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "status.h"

/* Sanity limits: far above any real model, low enough that products of two
 * of them (rows * cols of a weight) stay within int64 and sizes stay int. */
#define MCFG_MAX_VOCAB     (1 << 24)
#define MCFG_MAX_HIDDEN    (1 << 17)
#define MCFG_MAX_LAYERS    4096
#define MCFG_MAX_HEADS     4096
#define MCFG_MAX_HEAD_DIM  4096
#define MCFG_MAX_FFN       (1 << 20)
#define MCFG_MAX_POS       (1 << 30)

static const struct {
	const char *name;
	enum model_arch arch;
} mcfg_arch_table[] = {
	{ "LlamaForCausalLM", ARCH_LLAMA },
	{ "Qwen2ForCausalLM", ARCH_QWEN2 },
	{ "Qwen3ForCausalLM", ARCH_QWEN3 },
};

/* An integer field, also accepting an integral real ("64.0").  Absent or
 * null gives def when !required.  Errors name the field. */
static int
get_int(const char *path, const json_t *obj, const char *key, int required,
	long long def, long long lo, long long hi, long long *out,
	char *err, size_t errlen)
{
	const json_t *v = json_object_get(obj, key);
	long long x;
	if (!v || json_is_null(v)) {
		if (required)
			return eng_seterr(err, errlen, ENG_ERR_FORMAT,
					  "%s: field \"%s\" is missing", path, key);
		*out = def;
		return 0;
	}
	if (json_is_integer(v)) {
		x = json_integer_value(v);
	} else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
		   fabs(json_real_value(v)) < 9e15) {
		x = (long long)json_real_value(v);
	} else {
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: field \"%s\" is not an integer", path, key);
	}
	if (x < lo || x > hi)
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: field \"%s\" = %lld is out of range [%lld, %lld]",
				  path, key, x, lo, hi);
	*out = x;
	return 0;
}

/* A number field (integer or real); absent or null gives def. */
static int
get_num(const char *path, const json_t *obj, const char *key, int required,
	double def, double *out, char *err, size_t errlen)
{
	const json_t *v = json_object_get(obj, key);
	if (!v || json_is_null(v)) {
		if (required)
			return eng_seterr(err, errlen, ENG_ERR_FORMAT,
					  "%s: field \"%s\" is missing", path, key);
		*out = def;
		return 0;
	}
	if (!json_is_number(v))
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: field \"%s\" is not a number", path, key);
	*out = json_number_value(v);
	if (!isfinite(*out))
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: field \"%s\" is not finite", path, key);
	return 0;
}

/* A boolean field; absent or null gives def. */
static int
get_bool(const char *path, const json_t *obj, const char *key, int def, int *out,
	 char *err, size_t errlen)
{
	const json_t *v = json_object_get(obj, key);
	if (!v || json_is_null(v)) {
		*out = def;
		return 0;
	}
	if (!json_is_boolean(v))
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: field \"%s\" is not a boolean", path, key);
	*out = json_is_true(v);
	return 0;
}

/* Rope: rope_parameters (new form) or rope_scaling (old form) may carry a
 * rope_type (old configs wrote "type"); rope_theta sits in rope_parameters
 * or at the top level. */
static int
parse_rope(const char *path, const json_t *root, struct model_config *cfg,
	   char *err, size_t errlen)
{
	const json_t *params = json_object_get(root, "rope_parameters");
	const json_t *scaling = json_object_get(root, "rope_scaling");
	const char *pname = "rope_parameters";
	int rc;

	if (params && json_is_null(params))
		params = NULL;
	if (scaling && json_is_null(scaling))
		scaling = NULL;
	if (params && !json_is_object(params))
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: field \"rope_parameters\" is not an object", path);
	if (scaling && !json_is_object(scaling))
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: field \"rope_scaling\" is not an object", path);

	double theta;
	if ((rc = get_num(path, root, "rope_theta", 0, 10000.0, &theta, err, errlen)) < 0)
		return rc;
	if (params && json_object_get(params, "rope_theta") &&
	    (rc = get_num(path, params, "rope_theta", 1, 0, &theta, err, errlen)) < 0)
		return rc;
	if (!(theta > 0))
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: field \"rope_theta\" = %g must be positive", path, theta);
	cfg->rope_theta = theta;
	cfg->rope_kind = ROPE_DEFAULT;

	/* The scaling object: rope_parameters when it names a type, else
	 * rope_scaling. */
	const json_t *sc = NULL;
	const json_t *type = NULL;
	if (params) {
		type = json_object_get(params, "rope_type");
		if (!type)
			type = json_object_get(params, "type");
		if (type)
			sc = params;
	}
	if (!sc && scaling) {
		pname = "rope_scaling";
		type = json_object_get(scaling, "rope_type");
		if (!type)
			type = json_object_get(scaling, "type");
		sc = scaling;
	}
	if (!sc)
		return 0;
	if (!type || json_is_null(type))
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: field \"%s\" has no \"rope_type\"", path, pname);
	if (!json_is_string(type))
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: field \"%s.rope_type\" is not a string", path, pname);
	const char *ts = json_string_value(type);
	if (strcmp(ts, "default") == 0)
		return 0;
	if (strcmp(ts, "llama3") != 0)
		return eng_seterr(err, errlen, ENG_ERR_UNSUPPORTED,
				  "%s: field \"%s.rope_type\": \"%s\" is not supported "
				  "(default, llama3)", path, pname, ts);

	double factor, low, high;
	long long orig;
	if ((rc = get_num(path, sc, "factor", 1, 0, &factor, err, errlen)) < 0 ||
	    (rc = get_num(path, sc, "low_freq_factor", 1, 0, &low, err, errlen)) < 0 ||
	    (rc = get_num(path, sc, "high_freq_factor", 1, 0, &high, err, errlen)) < 0 ||
	    (rc = get_int(path, sc, "original_max_position_embeddings", 1, 0, 1,
			  MCFG_MAX_POS, &orig, err, errlen)) < 0)
		return rc;
	if (!(factor > 0) || !(low > 0) || !(high > low))
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: field \"%s\": llama3 needs factor > 0 and "
				  "high_freq_factor > low_freq_factor > 0 (got %g, %g, %g)",
				  path, pname, factor, low, high);
	cfg->rope_kind = ROPE_LLAMA3;
	cfg->rope_factor = (float)factor;
	cfg->rope_low_freq = (float)low;
	cfg->rope_high_freq = (float)high;
	cfg->rope_orig_max_pos = (int)orig;
	return 0;
}

/* bos_token_id: int or null; eos_token_id: int, list of ints, or null. */
static int
parse_special(const char *path, const json_t *root, struct model_config *cfg,
	      char *err, size_t errlen)
{
	long long x;
	int rc = get_int(path, root, "bos_token_id", 0, -1, 0, cfg->vocab_size - 1,
			 &x, err, errlen);
	if (rc < 0)
		return rc;
	cfg->bos_id = (int)x;

	const json_t *eos = json_object_get(root, "eos_token_id");
	cfg->n_eos = 0;
	if (!eos || json_is_null(eos))
		return 0;
	if (!json_is_array(eos)) {
		if ((rc = get_int(path, root, "eos_token_id", 1, 0, 0, cfg->vocab_size - 1,
				  &x, err, errlen)) < 0)
			return rc;
		cfg->eos_ids[cfg->n_eos++] = (int)x;
		return 0;
	}
	if (json_array_size(eos) > MCFG_MAX_EOS)
		return eng_seterr(err, errlen, ENG_ERR_UNSUPPORTED,
				  "%s: field \"eos_token_id\" lists %zu ids (at most %d)",
				  path, json_array_size(eos), MCFG_MAX_EOS);
	size_t i;
	const json_t *v;
	json_array_foreach(eos, i, v) {
		if (!json_is_integer(v) || json_integer_value(v) < 0 ||
		    json_integer_value(v) >= cfg->vocab_size)
			return eng_seterr(err, errlen, ENG_ERR_FORMAT,
					  "%s: field \"eos_token_id\"[%zu] is not a token id "
					  "in [0, %d)", path, i, cfg->vocab_size);
		cfg->eos_ids[cfg->n_eos++] = (int)json_integer_value(v);
	}
	return 0;
}

static int
parse_config(const char *path, const json_t *root, struct model_config *cfg,
	     char *err, size_t errlen)
{
	int rc;
	long long x;

	if (!json_is_object(root))
		return eng_seterr(err, errlen, ENG_ERR_FORMAT, "%s: not a JSON object", path);

	const json_t *archs = json_object_get(root, "architectures");
	const json_t *a0 = json_is_array(archs) ? json_array_get(archs, 0) : NULL;
	if (!json_is_string(a0))
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: field \"architectures\" is missing or has no name", path);
	const char *an = json_string_value(a0);
	size_t k, nk = sizeof mcfg_arch_table / sizeof mcfg_arch_table[0];
	for (k = 0; k < nk; k++)
		if (strcmp(an, mcfg_arch_table[k].name) == 0)
			break;
	if (k == nk)
		return eng_seterr(err, errlen, ENG_ERR_UNSUPPORTED,
				  "%s: field \"architectures\": %.100s is not supported "
				  "(LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)", path, an);
	cfg->arch = mcfg_arch_table[k].arch;
	snprintf(cfg->arch_name, sizeof cfg->arch_name, "%s", an);

#define INT_FIELD(key, req, def, lo, hi, dst)                                     \
	do {                                                                      \
		if ((rc = get_int(path, root, key, req, def, lo, hi, &x, err, errlen)) < 0) \
			return rc;                                                \
		dst = (int)x;                                                     \
	} while (0)

	INT_FIELD("vocab_size", 1, 0, 1, MCFG_MAX_VOCAB, cfg->vocab_size);
	INT_FIELD("hidden_size", 1, 0, 1, MCFG_MAX_HIDDEN, cfg->hidden_size);
	INT_FIELD("num_hidden_layers", 1, 0, 1, MCFG_MAX_LAYERS, cfg->n_layers);
	INT_FIELD("num_attention_heads", 1, 0, 1, MCFG_MAX_HEADS, cfg->n_heads);
	INT_FIELD("num_key_value_heads", 0, cfg->n_heads, 1, MCFG_MAX_HEADS, cfg->n_kv_heads);
	INT_FIELD("intermediate_size", 1, 0, 1, MCFG_MAX_FFN, cfg->intermediate_size);
	INT_FIELD("max_position_embeddings", 0, 0, 0, MCFG_MAX_POS, cfg->max_position);

	const json_t *hd = json_object_get(root, "head_dim");
	if (hd && !json_is_null(hd)) {
		INT_FIELD("head_dim", 1, 0, 1, MCFG_MAX_HEAD_DIM, cfg->head_dim);
	} else {
		if (cfg->hidden_size % cfg->n_heads != 0)
			return eng_seterr(err, errlen, ENG_ERR_FORMAT,
					  "%s: field \"hidden_size\" = %d is not a multiple of "
					  "num_attention_heads = %d (and no head_dim is given)",
					  path, cfg->hidden_size, cfg->n_heads);
		cfg->head_dim = cfg->hidden_size / cfg->n_heads;
	}
#undef INT_FIELD
	if (cfg->head_dim % 2 != 0)
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: field \"head_dim\" = %d must be even for rotary embeddings",
				  path, cfg->head_dim);
	if (cfg->n_heads % cfg->n_kv_heads != 0)
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: field \"num_attention_heads\" = %d is not a multiple of "
				  "num_key_value_heads = %d", path, cfg->n_heads, cfg->n_kv_heads);
	if ((long long)cfg->n_heads * cfg->head_dim > MCFG_MAX_HIDDEN)
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: field \"head_dim\": num_attention_heads * head_dim = %lld "
				  "is over %d", path, (long long)cfg->n_heads * cfg->head_dim,
				  MCFG_MAX_HIDDEN);

	double eps;
	if ((rc = get_num(path, root, "rms_norm_eps", 0, 1e-6, &eps, err, errlen)) < 0)
		return rc;
	if (!(eps > 0) || eps > 1)
		return eng_seterr(err, errlen, ENG_ERR_FORMAT,
				  "%s: field \"rms_norm_eps\" = %g is out of range (0, 1]", path, eps);
	cfg->rms_eps = (float)eps;

	if ((rc = get_bool(path, root, "tie_word_embeddings", 0, &cfg->tie_embeddings,
			   err, errlen)) < 0)
		return rc;

	int abias, mbias, sliding;
	if ((rc = get_bool(path, root, "attention_bias", 0, &abias, err, errlen)) < 0 ||
	    (rc = get_bool(path, root, "mlp_bias", 0, &mbias, err, errlen)) < 0 ||
	    (rc = get_bool(path, root, "use_sliding_window", 0, &sliding, err, errlen)) < 0)
		return rc;
	if (mbias)
		return eng_seterr(err, errlen, ENG_ERR_UNSUPPORTED,
				  "%s: field \"mlp_bias\": MLP biases are not supported", path);
	/* Llama and Qwen3 put attention_bias on o_proj too, which braid lacks;
	 * Qwen2 always has q/k/v biases and never an o_proj bias. */
	if (abias && cfg->arch != ARCH_QWEN2)
		return eng_seterr(err, errlen, ENG_ERR_UNSUPPORTED,
				  "%s: field \"attention_bias\": attention biases (incl. o_proj) "
				  "are not supported for %s", path, an);
	if (sliding)
		return eng_seterr(err, errlen, ENG_ERR_UNSUPPORTED,
				  "%s: field \"use_sliding_window\": sliding-window attention "
				  "is not supported", path);
	cfg->attn_bias = cfg->arch == ARCH_QWEN2;
	cfg->qk_norm = cfg->arch == ARCH_QWEN3;

	const json_t *act = json_object_get(root, "hidden_act");
	if (act && !json_is_null(act) &&
	    (!json_is_string(act) || strcmp(json_string_value(act), "silu") != 0))
		return eng_seterr(err, errlen, ENG_ERR_UNSUPPORTED,
				  "%s: field \"hidden_act\": only \"silu\" is supported", path);

	if ((rc = parse_rope(path, root, cfg, err, errlen)) < 0)
		return rc;
	return parse_special(path, root, cfg, err, errlen);
}

int
mcfg_load(const char *path, struct model_config *cfg, char *err, size_t errlen)
{
	json_error_t jerr;
	memset(cfg, 0, sizeof *cfg);
	json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		if (json_error_code(&jerr) == json_error_cannot_open_file)
			return eng_seterr(err, errlen, ENG_ERR_IO, "%s: %s", path, jerr.text);
		return eng_seterr(err, errlen, ENG_ERR_FORMAT, "%s: line %d, column %d: %s",
				  path, jerr.line, jerr.column, jerr.text);
	}
	int rc = parse_config(path, root, cfg, err, errlen);
	json_decref(root);
	return rc;
}
