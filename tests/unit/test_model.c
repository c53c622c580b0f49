/* test_model.c - config.json parsing and model loading: errors on bad input,
 * and every reference model under tests/data/models loading with the fields
 * its config.json gives (read here independently with jansson). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "model.h"
#include "safetensors.h"
#include "status.h"
#include "st_writer.h"
#include "testutil.h"

static int
setup(void **state)
{
	return tu_dirfx_setup(state, "config.json");
}

static int
teardown(void **state)
{
	return tu_dirfx_teardown(state);
}

static void
expect_substr(const char *err, const char *s)
{
	if (!strstr(err, s)) {
		fprintf(stderr, "error \"%s\" lacks \"%s\"\n", err, s);
		fail();
	}
}

/* A small config of the given architecture, as HF writes it. */
static json_t *
base_config(const char *arch)
{
	json_t *c = json_pack("{s:[s], s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:b, s:f, s:n, s:i, s:s}",
			      "architectures", arch, "vocab_size", 96, "hidden_size", 32,
			      "num_hidden_layers", 2, "num_attention_heads", 4,
			      "num_key_value_heads", 2, "intermediate_size", 48,
			      "max_position_embeddings", 128, "rms_norm_eps", 1e-5,
			      "tie_word_embeddings", 0, "rope_theta", 10000.0,
			      "bos_token_id", "eos_token_id", 1, "hidden_act", "silu");
	assert_non_null(c);
	if (strcmp(arch, "Qwen3ForCausalLM") == 0)
		json_object_set_new(c, "head_dim", json_integer(16));
	return c;
}

static void
write_config(struct tu_dirfx *fx, json_t *c)
{
	assert_int_equal(json_dump_file(c, fx->path, JSON_INDENT(1)), 0);
}

/* Write c, load it, and expect status st with err containing s1 (and s2). */
static void
expect_cfg_error(struct tu_dirfx *fx, json_t *c, int st, const char *s1, const char *s2)
{
	struct model_config cfg;
	write_config(fx, c);
	fx->err[0] = 0;
	int rc = mcfg_load(fx->path, &cfg, fx->err, sizeof fx->err);
	if (rc != st)
		fprintf(stderr, "rc %d (%s), want %d: %s\n", rc, eng_strerror(rc), st, fx->err);
	assert_int_equal(rc, st);
	expect_substr(fx->err, fx->path);
	expect_substr(fx->err, s1);
	if (s2)
		expect_substr(fx->err, s2);
	printf("# ok: %s\n", fx->err);
}

static void
test_config_defaults(void **state)
{
	struct tu_dirfx *fx = *state;
	struct model_config cfg;
	json_t *c = base_config("LlamaForCausalLM");
	json_object_del(c, "num_key_value_heads");
	json_object_del(c, "rms_norm_eps");
	json_object_del(c, "rope_theta");
	json_object_del(c, "tie_word_embeddings");
	json_object_del(c, "bos_token_id");
	json_object_del(c, "eos_token_id");
	json_object_del(c, "max_position_embeddings");
	write_config(fx, c);
	assert_int_equal(mcfg_load(fx->path, &cfg, fx->err, sizeof fx->err), 0);
	assert_int_equal(cfg.arch, ARCH_LLAMA);
	assert_string_equal(cfg.arch_name, "LlamaForCausalLM");
	assert_int_equal(cfg.n_kv_heads, 4);
	assert_int_equal(cfg.head_dim, 8);
	assert_true(cfg.rms_eps == 1e-6f);
	assert_true(cfg.rope_theta == 10000.0);
	assert_int_equal(cfg.rope_kind, ROPE_DEFAULT);
	assert_int_equal(cfg.tie_embeddings, 0);
	assert_int_equal(cfg.attn_bias, 0);
	assert_int_equal(cfg.qk_norm, 0);
	assert_int_equal(cfg.bos_id, -1);
	assert_int_equal(cfg.n_eos, 0);
	assert_int_equal(cfg.max_position, 0);
	json_decref(c);

	/* Qwen2: q/k/v biases; Qwen3: q/k norm and its own head_dim. */
	c = base_config("Qwen2ForCausalLM");
	write_config(fx, c);
	assert_int_equal(mcfg_load(fx->path, &cfg, fx->err, sizeof fx->err), 0);
	assert_int_equal(cfg.arch, ARCH_QWEN2);
	assert_int_equal(cfg.attn_bias, 1);
	assert_int_equal(cfg.qk_norm, 0);
	json_decref(c);
	c = base_config("Qwen3ForCausalLM");
	write_config(fx, c);
	assert_int_equal(mcfg_load(fx->path, &cfg, fx->err, sizeof fx->err), 0);
	assert_int_equal(cfg.arch, ARCH_QWEN3);
	assert_int_equal(cfg.attn_bias, 0);
	assert_int_equal(cfg.qk_norm, 1);
	assert_int_equal(cfg.head_dim, 16);
	assert_int_equal(cfg.hidden_size, 32);
	json_decref(c);
}

static void
test_config_special_tokens(void **state)
{
	struct tu_dirfx *fx = *state;
	struct model_config cfg;
	json_t *c = base_config("LlamaForCausalLM");
	json_object_set_new(c, "bos_token_id", json_integer(5));
	json_object_set_new(c, "eos_token_id", json_pack("[i,i,i]", 7, 3, 95));
	write_config(fx, c);
	assert_int_equal(mcfg_load(fx->path, &cfg, fx->err, sizeof fx->err), 0);
	assert_int_equal(cfg.bos_id, 5);
	assert_int_equal(cfg.n_eos, 3);
	assert_int_equal(cfg.eos_ids[0], 7);
	assert_int_equal(cfg.eos_ids[1], 3);
	assert_int_equal(cfg.eos_ids[2], 95);
	json_object_set_new(c, "eos_token_id", json_integer(9));
	write_config(fx, c);
	assert_int_equal(mcfg_load(fx->path, &cfg, fx->err, sizeof fx->err), 0);
	assert_int_equal(cfg.n_eos, 1);
	assert_int_equal(cfg.eos_ids[0], 9);
	json_object_set_new(c, "eos_token_id", json_integer(96));
	expect_cfg_error(fx, c, ENG_ERR_FORMAT, "eos_token_id", NULL);
	json_object_set_new(c, "eos_token_id", json_pack("[i,s]", 1, "x"));
	expect_cfg_error(fx, c, ENG_ERR_FORMAT, "eos_token_id", NULL);
	json_object_set_new(c, "eos_token_id", json_pack("[i,i,i,i,i,i,i,i,i]", 1, 2, 3, 4, 5, 6, 7, 8, 9));
	expect_cfg_error(fx, c, ENG_ERR_UNSUPPORTED, "eos_token_id", NULL);
	json_object_set_new(c, "eos_token_id", json_integer(1));
	json_object_set_new(c, "bos_token_id", json_string("<s>"));
	expect_cfg_error(fx, c, ENG_ERR_FORMAT, "bos_token_id", NULL);
	json_decref(c);
}

static void
test_config_rope(void **state)
{
	struct tu_dirfx *fx = *state;
	struct model_config a, b;

	/* Top-level rope_theta and the rope_parameters form: same theta. */
	json_t *c = base_config("Qwen2ForCausalLM");
	json_object_set_new(c, "rope_theta", json_real(1000000.0));
	write_config(fx, c);
	assert_int_equal(mcfg_load(fx->path, &a, fx->err, sizeof fx->err), 0);
	json_object_del(c, "rope_theta");
	json_object_set_new(c, "rope_parameters",
			    json_pack("{s:s, s:f}", "rope_type", "default", "rope_theta", 1000000.0));
	write_config(fx, c);
	assert_int_equal(mcfg_load(fx->path, &b, fx->err, sizeof fx->err), 0);
	assert_true(a.rope_theta == 1000000.0);
	assert_true(b.rope_theta == a.rope_theta);
	assert_int_equal(a.rope_kind, ROPE_DEFAULT);
	assert_int_equal(b.rope_kind, ROPE_DEFAULT);
	json_decref(c);

	/* Llama 3 scaling, old style (rope_scaling) and new (rope_parameters). */
	c = base_config("LlamaForCausalLM");
	json_object_set_new(c, "rope_theta", json_real(500000.0));
	json_object_set_new(c, "rope_scaling",
			    json_pack("{s:s, s:f, s:f, s:f, s:i}", "rope_type", "llama3",
				      "factor", 8.0, "low_freq_factor", 1.0,
				      "high_freq_factor", 4.0,
				      "original_max_position_embeddings", 8192));
	write_config(fx, c);
	assert_int_equal(mcfg_load(fx->path, &a, fx->err, sizeof fx->err), 0);
	json_object_del(c, "rope_scaling");
	json_object_del(c, "rope_theta");
	json_object_set_new(c, "rope_parameters",
			    json_pack("{s:s, s:f, s:f, s:f, s:f, s:i}", "rope_type", "llama3",
				      "rope_theta", 500000.0, "factor", 8.0,
				      "low_freq_factor", 1.0, "high_freq_factor", 4.0,
				      "original_max_position_embeddings", 8192));
	write_config(fx, c);
	assert_int_equal(mcfg_load(fx->path, &b, fx->err, sizeof fx->err), 0);
	const struct model_config *both[2] = { &a, &b };
	for (int i = 0; i < 2; i++) {
		assert_int_equal(both[i]->rope_kind, ROPE_LLAMA3);
		assert_true(both[i]->rope_theta == 500000.0);
		assert_true(both[i]->rope_factor == 8.0f);
		assert_true(both[i]->rope_low_freq == 1.0f);
		assert_true(both[i]->rope_high_freq == 4.0f);
		assert_int_equal(both[i]->rope_orig_max_pos, 8192);
	}

	/* Old configs spell it "type"; other types are unsupported. */
	json_object_del(c, "rope_parameters");
	json_object_set_new(c, "rope_scaling", json_pack("{s:s, s:f}", "type", "linear", "factor", 2.0));
	expect_cfg_error(fx, c, ENG_ERR_UNSUPPORTED, "rope_scaling", "\"linear\"");
	json_object_set_new(c, "rope_parameters",
			    json_pack("{s:s, s:f, s:f}", "rope_type", "yarn", "rope_theta", 1e4, "factor", 4.0));
	expect_cfg_error(fx, c, ENG_ERR_UNSUPPORTED, "rope_parameters", "\"yarn\"");
	json_object_del(c, "rope_parameters");
	json_object_set_new(c, "rope_scaling", json_pack("{s:s, s:f}", "rope_type", "llama3", "factor", 8.0));
	expect_cfg_error(fx, c, ENG_ERR_FORMAT, "low_freq_factor", "missing");
	json_object_set_new(c, "rope_scaling", json_null());
	json_object_set_new(c, "rope_theta", json_real(-1.0));
	expect_cfg_error(fx, c, ENG_ERR_FORMAT, "rope_theta", NULL);
	json_decref(c);
}

static void
test_config_errors(void **state)
{
	struct tu_dirfx *fx = *state;
	struct model_config cfg;

	/* Broken JSON: jansson's line and column. */
	const char *broken = "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"hidden_size\": 64,,\n}\n";
	assert_int_equal(tu_write_file(fx->path, broken, strlen(broken)), 0);
	assert_int_equal(mcfg_load(fx->path, &cfg, fx->err, sizeof fx->err), ENG_ERR_FORMAT);
	expect_substr(fx->err, fx->path);
	expect_substr(fx->err, "line 3");
	expect_substr(fx->err, "column");
	printf("# ok: %s\n", fx->err);

	/* No file. */
	char missing[1100];
	snprintf(missing, sizeof missing, "%s/none.json", fx->dir);
	assert_int_equal(mcfg_load(missing, &cfg, fx->err, sizeof fx->err), ENG_ERR_IO);
	expect_substr(fx->err, missing);

	json_t *c = base_config("LlamaForCausalLM");
	json_object_del(c, "hidden_size");
	expect_cfg_error(fx, c, ENG_ERR_FORMAT, "hidden_size", "missing");
	json_decref(c);

	c = base_config("MistralForCausalLM");
	expect_cfg_error(fx, c, ENG_ERR_UNSUPPORTED, "MistralForCausalLM", "not supported");
	json_object_set_new(c, "architectures", json_array());
	expect_cfg_error(fx, c, ENG_ERR_FORMAT, "architectures", NULL);
	json_object_del(c, "architectures");
	expect_cfg_error(fx, c, ENG_ERR_FORMAT, "architectures", NULL);
	json_decref(c);

	c = base_config("LlamaForCausalLM");
	json_object_set_new(c, "num_attention_heads", json_integer(6));
	json_object_set_new(c, "num_key_value_heads", json_integer(4));
	json_object_set_new(c, "head_dim", json_integer(8));
	expect_cfg_error(fx, c, ENG_ERR_FORMAT, "num_key_value_heads", "multiple");
	json_decref(c);

	struct {
		const char *key;
		json_t *val;
		int st;
		const char *s;
	} rows[] = {
		{ "vocab_size", json_integer(0), ENG_ERR_FORMAT, "out of range" },
		{ "vocab_size", json_integer(-5), ENG_ERR_FORMAT, "out of range" },
		{ "vocab_size", json_integer(2147483648LL), ENG_ERR_FORMAT, "out of range" },
		{ "vocab_size", json_string("96"), ENG_ERR_FORMAT, "not an integer" },
		{ "hidden_size", json_real(32.5), ENG_ERR_FORMAT, "not an integer" },
		{ "num_hidden_layers", json_integer(0), ENG_ERR_FORMAT, "out of range" },
		{ "num_attention_heads", json_integer(5), ENG_ERR_FORMAT, "multiple" },
		{ "num_key_value_heads", json_integer(3), ENG_ERR_FORMAT, "multiple" },
		{ "intermediate_size", json_integer(-1), ENG_ERR_FORMAT, "out of range" },
		{ "head_dim", json_integer(7), ENG_ERR_FORMAT, "even" },
		{ "rms_norm_eps", json_real(0.0), ENG_ERR_FORMAT, "out of range" },
		{ "rms_norm_eps", json_string("x"), ENG_ERR_FORMAT, "not a number" },
		{ "tie_word_embeddings", json_integer(1), ENG_ERR_FORMAT, "boolean" },
		{ "mlp_bias", json_true(), ENG_ERR_UNSUPPORTED, "not supported" },
		{ "attention_bias", json_true(), ENG_ERR_UNSUPPORTED, "not supported" },
		{ "hidden_act", json_string("gelu"), ENG_ERR_UNSUPPORTED, "silu" },
		{ "use_sliding_window", json_true(), ENG_ERR_UNSUPPORTED, "not supported" },
		{ "rope_scaling", json_integer(3), ENG_ERR_FORMAT, "not an object" },
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		c = base_config("LlamaForCausalLM");
		json_object_set_new(c, rows[i].key, rows[i].val);
		expect_cfg_error(fx, c, rows[i].st, rows[i].key, rows[i].s);
		json_decref(c);
	}

	/* Qwen2's attention_bias does not matter (q/k/v biases always); a
	 * non-integral real is not an integer but an integral one is fine. */
	c = base_config("Qwen2ForCausalLM");
	json_object_set_new(c, "attention_bias", json_true());
	json_object_set_new(c, "hidden_size", json_real(32.0));
	write_config(fx, c);
	assert_int_equal(mcfg_load(fx->path, &cfg, fx->err, sizeof fx->err), 0);
	assert_int_equal(cfg.attn_bias, 1);
	assert_int_equal(cfg.hidden_size, 32);
	json_decref(c);

	/* Not an object at all. */
	assert_int_equal(tu_write_file(fx->path, "[1]", 3), 0);
	assert_int_equal(mcfg_load(fx->path, &cfg, fx->err, sizeof fx->err), ENG_ERR_FORMAT);
	expect_substr(fx->err, fx->path);
}

/* ---- model directories written by the test ------------------------------- */

static int
jint(const json_t *c, const char *key, int def)
{
	const json_t *v = json_object_get(c, key);
	if (!v || json_is_null(v))
		return def;
	return (int)json_number_value(v);
}

/* One expected tensor of a model directory: HF name and shape. */
struct spec {
	char name[96];
	int ndim;
	int64_t shape[2];
};

/* The tensors HF stores for config c (read directly from the JSON, not via
 * mcfg_load): n returned, specs malloc'd.  with_lm_head adds lm_head. */
static struct spec *
model_specs(const json_t *c, int with_lm_head, size_t *n)
{
	const char *arch = json_string_value(json_array_get(json_object_get(c, "architectures"), 0));
	int qwen2 = strcmp(arch, "Qwen2ForCausalLM") == 0;
	int qwen3 = strcmp(arch, "Qwen3ForCausalLM") == 0;
	int V = jint(c, "vocab_size", 0), H = jint(c, "hidden_size", 0);
	int L = jint(c, "num_hidden_layers", 0), nh = jint(c, "num_attention_heads", 0);
	int nkv = jint(c, "num_key_value_heads", nh), hd = jint(c, "head_dim", H / nh);
	int F = jint(c, "intermediate_size", 0);
	struct spec *s = calloc((size_t)L * 16 + 4, sizeof *s);
	assert_non_null(s);
	size_t k = 0;
#define ADD(nd, a, b, ...)                                                   \
	do {                                                                 \
		snprintf(s[k].name, sizeof s[k].name, __VA_ARGS__);          \
		s[k].ndim = nd;                                              \
		s[k].shape[0] = a;                                           \
		s[k].shape[1] = b;                                           \
		k++;                                                         \
	} while (0)
	ADD(2, V, H, "model.embed_tokens.weight");
	for (int l = 0; l < L; l++) {
		ADD(1, H, 0, "model.layers.%d.input_layernorm.weight", l);
		ADD(2, nh * hd, H, "model.layers.%d.self_attn.q_proj.weight", l);
		ADD(2, nkv * hd, H, "model.layers.%d.self_attn.k_proj.weight", l);
		ADD(2, nkv * hd, H, "model.layers.%d.self_attn.v_proj.weight", l);
		if (qwen2) {
			ADD(1, nh * hd, 0, "model.layers.%d.self_attn.q_proj.bias", l);
			ADD(1, nkv * hd, 0, "model.layers.%d.self_attn.k_proj.bias", l);
			ADD(1, nkv * hd, 0, "model.layers.%d.self_attn.v_proj.bias", l);
		}
		if (qwen3) {
			ADD(1, hd, 0, "model.layers.%d.self_attn.q_norm.weight", l);
			ADD(1, hd, 0, "model.layers.%d.self_attn.k_norm.weight", l);
		}
		ADD(2, H, nh * hd, "model.layers.%d.self_attn.o_proj.weight", l);
		ADD(1, H, 0, "model.layers.%d.post_attention_layernorm.weight", l);
		ADD(2, F, H, "model.layers.%d.mlp.gate_proj.weight", l);
		ADD(2, F, H, "model.layers.%d.mlp.up_proj.weight", l);
		ADD(2, H, F, "model.layers.%d.mlp.down_proj.weight", l);
	}
	ADD(1, H, 0, "model.norm.weight");
	if (with_lm_head)
		ADD(2, V, H, "lm_head.weight");
#undef ADD
	*n = k;
	return s;
}

/* Write config c and its tensors (dtype "F32"/"F16"/"BF16") into dir,
 * in n_shards files.  skip: a name to leave out; bad: a name whose first
 * dimension is written one too large. */
static void
write_model(const char *dir, json_t *c, const char *dtype, int n_shards,
	    const char *skip, const char *bad)
{
	char path[1200];
	snprintf(path, sizeof path, "%s/config.json", dir);
	assert_int_equal(json_dump_file(c, path, JSON_INDENT(1)), 0);
	int tied = json_is_true(json_object_get(c, "tie_word_embeddings"));
	size_t n;
	struct spec *s = model_specs(c, !tied, &n);
	size_t es = strcmp(dtype, "F32") == 0 ? 4 : 2;
	json_t *wm = json_object();
	for (int sh = 0; sh < n_shards; sh++) {
		stw *w = stw_new();
		assert_non_null(w);
		char shard[64];
		if (n_shards == 1)
			snprintf(shard, sizeof shard, "model.safetensors");
		else
			snprintf(shard, sizeof shard, "model-%05d-of-%05d.safetensors",
				 sh + 1, n_shards);
		for (size_t i = (size_t)sh; i < n; i += (size_t)n_shards) {
			if (skip && strcmp(s[i].name, skip) == 0)
				continue;
			int64_t shape[2] = { s[i].shape[0], s[i].shape[1] };
			if (bad && strcmp(s[i].name, bad) == 0)
				shape[0]++;
			size_t numel = (size_t)shape[0] * (s[i].ndim == 2 ? (size_t)shape[1] : 1);
			unsigned char *buf = malloc(numel * es);
			assert_non_null(buf);
			for (size_t j = 0; j < numel; j++) {
				float v = sinf((float)(i * 31 + j) * 0.1f);
				if (es == 4) {
					memcpy(buf + 4 * j, &v, 4);
				} else {
					uint16_t h = strcmp(dtype, "F16") == 0 ? st_f32_to_f16(v)
									       : st_f32_to_bf16(v);
					memcpy(buf + 2 * j, &h, 2);
				}
			}
			assert_int_equal(stw_add(w, s[i].name, dtype, s[i].ndim, shape, buf,
						 numel * es), 0);
			free(buf);
			json_object_set_new(wm, s[i].name, json_string(shard));
		}
		snprintf(path, sizeof path, "%s/%s", dir, shard);
		assert_int_equal(stw_write(w, path, 8, "{\"format\":\"pt\"}"), 0);
		stw_free(w);
	}
	if (n_shards > 1) {
		json_t *idx = json_pack("{s:{s:i}, s:o}", "metadata", "total_size", 0, "weight_map", wm);
		snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
		assert_int_equal(json_dump_file(idx, path, JSON_INDENT(1)), 0);
		json_decref(idx);
	} else {
		json_decref(wm);
	}
	free(s);
}

/* The weight bound for an HF name, or NULL if the model has no such slot. */
static const struct weight *
weight_for(const struct model *m, const char *name)
{
	int l, off;
	char rest[96];
	if (strcmp(name, "model.embed_tokens.weight") == 0)
		return &m->tok_embd;
	if (strcmp(name, "model.norm.weight") == 0)
		return &m->out_norm;
	if (strcmp(name, "lm_head.weight") == 0)
		return &m->lm_head;
	if (sscanf(name, "model.layers.%d.%n", &l, &off) != 1 || l < 0 || l >= m->cfg.n_layers)
		return NULL;
	snprintf(rest, sizeof rest, "%s", name + off);
	const struct layer_weights *L = &m->layers[l];
	const struct {
		const char *n;
		const struct weight *w;
	} t[] = {
		{ "input_layernorm.weight", &L->attn_norm },
		{ "self_attn.q_proj.weight", &L->wq },
		{ "self_attn.k_proj.weight", &L->wk },
		{ "self_attn.v_proj.weight", &L->wv },
		{ "self_attn.q_proj.bias", &L->bq },
		{ "self_attn.k_proj.bias", &L->bk },
		{ "self_attn.v_proj.bias", &L->bv },
		{ "self_attn.q_norm.weight", &L->q_norm },
		{ "self_attn.k_norm.weight", &L->k_norm },
		{ "self_attn.o_proj.weight", &L->wo },
		{ "post_attention_layernorm.weight", &L->mlp_norm },
		{ "mlp.gate_proj.weight", &L->w_gate },
		{ "mlp.up_proj.weight", &L->w_up },
		{ "mlp.down_proj.weight", &L->w_down },
	};
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
		if (strcmp(rest, t[i].n) == 0)
			return t[i].w;
	return NULL;
}

/* Load dir and check it against its config.json, read here with jansson:
 * config fields, and every expected tensor bound to the file's data with
 * the expected shape; weight_bytes the sum of the distinct bound tensors. */
static void
check_model_dir(const char *dir)
{
	char err[ENG_ERRLEN] = "", path[1200];
	snprintf(path, sizeof path, "%s/config.json", dir);
	json_error_t jerr;
	json_t *c = json_load_file(path, 0, &jerr);
	assert_non_null(c);
	struct model *m = model_load(dir, err, sizeof err);
	if (!m)
		fprintf(stderr, "%s: %s\n", dir, err);
	assert_non_null(m);
	const struct model_config *g = &m->cfg;

	const char *arch = json_string_value(json_array_get(json_object_get(c, "architectures"), 0));
	assert_string_equal(g->arch_name, arch);
	assert_int_equal(g->arch, strcmp(arch, "LlamaForCausalLM") == 0 ? ARCH_LLAMA :
				  strcmp(arch, "Qwen2ForCausalLM") == 0 ? ARCH_QWEN2 : ARCH_QWEN3);
	int H = jint(c, "hidden_size", 0), nh = jint(c, "num_attention_heads", 0);
	assert_int_equal(g->vocab_size, jint(c, "vocab_size", 0));
	assert_int_equal(g->hidden_size, H);
	assert_int_equal(g->n_layers, jint(c, "num_hidden_layers", 0));
	assert_int_equal(g->n_heads, nh);
	assert_int_equal(g->n_kv_heads, jint(c, "num_key_value_heads", nh));
	assert_int_equal(g->head_dim, jint(c, "head_dim", H / nh));
	assert_int_equal(g->intermediate_size, jint(c, "intermediate_size", 0));
	assert_int_equal(g->max_position, jint(c, "max_position_embeddings", 0));
	const json_t *eps = json_object_get(c, "rms_norm_eps");
	assert_true(g->rms_eps == (float)(eps ? json_number_value(eps) : 1e-6));
	int tied = json_is_true(json_object_get(c, "tie_word_embeddings"));
	assert_int_equal(g->tie_embeddings, tied);
	assert_int_equal(g->attn_bias, strcmp(arch, "Qwen2ForCausalLM") == 0);
	assert_int_equal(g->qk_norm, strcmp(arch, "Qwen3ForCausalLM") == 0);
	assert_int_equal(g->bos_id, jint(c, "bos_token_id", -1));
	const json_t *eos = json_object_get(c, "eos_token_id");
	if (json_is_array(eos)) {
		assert_int_equal(g->n_eos, (int)json_array_size(eos));
		for (int i = 0; i < g->n_eos; i++)
			assert_int_equal(g->eos_ids[i], json_integer_value(json_array_get(eos, (size_t)i)));
	} else if (json_is_integer(eos)) {
		assert_int_equal(g->n_eos, 1);
		assert_int_equal(g->eos_ids[0], json_integer_value(eos));
	} else {
		assert_int_equal(g->n_eos, 0);
	}
	const json_t *rp = json_object_get(c, "rope_parameters");
	const json_t *rt = json_is_object(rp) && json_object_get(rp, "rope_theta") ?
		json_object_get(rp, "rope_theta") : json_object_get(c, "rope_theta");
	assert_true(g->rope_theta == (rt ? json_number_value(rt) : 10000.0));
	const json_t *sc = json_is_object(rp) ? rp : json_object_get(c, "rope_scaling");
	const json_t *ty = json_is_object(sc) ? json_object_get(sc, "rope_type") : NULL;
	if (ty && strcmp(json_string_value(ty), "llama3") == 0) {
		assert_int_equal(g->rope_kind, ROPE_LLAMA3);
		assert_true(g->rope_factor == (float)json_number_value(json_object_get(sc, "factor")));
		assert_true(g->rope_low_freq ==
			    (float)json_number_value(json_object_get(sc, "low_freq_factor")));
		assert_true(g->rope_high_freq ==
			    (float)json_number_value(json_object_get(sc, "high_freq_factor")));
		assert_int_equal(g->rope_orig_max_pos,
				 jint(sc, "original_max_position_embeddings", 0));
	} else {
		assert_int_equal(g->rope_kind, ROPE_DEFAULT);
	}
	assert_non_null(m->dir);
	assert_string_equal(m->dir, dir);
	assert_ptr_not_equal(m->dir, dir);

	/* Every expected tensor bound, with its shape and the file's bytes. */
	size_t n, bytes = 0;
	struct spec *s = model_specs(c, 1, &n);
	for (size_t i = 0; i < n; i++) {
		const struct weight *w = weight_for(m, s[i].name);
		assert_non_null(w);
		const struct st_tensor *t = st_find(m->st, s[i].name);
		if (strcmp(s[i].name, "lm_head.weight") == 0 && tied) {
			assert_ptr_equal(w->data, m->tok_embd.data);
			continue;
		}
		assert_non_null(t);
		assert_ptr_equal(w->data, t->data);
		assert_int_equal(w->dtype, t->dtype);
		assert_int_equal(w->rows, s[i].ndim == 2 ? s[i].shape[0] : 1);
		assert_int_equal(w->cols, s[i].ndim == 2 ? s[i].shape[1] : s[i].shape[0]);
		assert_int_equal(t->ndim, s[i].ndim);
		bytes += t->nbytes;
	}
	/* Slots the architecture lacks stay empty. */
	for (int l = 0; l < g->n_layers; l++) {
		if (!g->attn_bias)
			assert_null(m->layers[l].bq.data);
		if (!g->qk_norm)
			assert_null(m->layers[l].q_norm.data);
	}
	assert_int_equal(m->weight_bytes, bytes);
	/* HF's index states the bytes of every stored tensor: equal to what a
	 * step reads when lm_head is stored only when untied. */
	snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
	json_t *idx = json_load_file(path, 0, &jerr);
	const json_t *ts = json_object_get(json_object_get(idx, "metadata"), "total_size");
	if (json_is_integer(ts) && json_integer_value(ts) > 0 &&
	    (!tied || !st_find(m->st, "lm_head.weight")))
		assert_int_equal(m->weight_bytes, json_integer_value(ts));
	json_decref(idx);
	printf("# %s: %s, %d layers, %zu weight bytes\n", dir, arch, g->n_layers, m->weight_bytes);
	free(s);
	model_free(m);
	json_decref(c);
}

static void
test_generated_models(void **state)
{
	struct tu_dirfx *fx = *state;
	const struct {
		const char *arch, *dtype;
		int shards, tied;
	} rows[] = {
		{ "LlamaForCausalLM", "F32", 1, 0 },
		{ "LlamaForCausalLM", "F16", 1, 1 },
		{ "Qwen2ForCausalLM", "BF16", 1, 0 },
		{ "Qwen2ForCausalLM", "F32", 2, 1 },
		{ "Qwen3ForCausalLM", "F32", 3, 1 },
		{ "Qwen3ForCausalLM", "BF16", 1, 0 },
	};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		char dir[1100];
		snprintf(dir, sizeof dir, "%s/m%zu", fx->dir, i);
		assert_int_equal(mkdir(dir, 0700), 0);
		json_t *c = base_config(rows[i].arch);
		json_object_set_new(c, "tie_word_embeddings", json_boolean(rows[i].tied));
		write_model(dir, c, rows[i].dtype, rows[i].shards, NULL, NULL);
		json_decref(c);
		check_model_dir(dir);

		/* Tied, but the file also stores lm_head: still the table. */
		if (rows[i].tied) {
			struct model *m = model_load(dir, fx->err, sizeof fx->err);
			assert_non_null(m);
			assert_ptr_equal(m->lm_head.data, m->tok_embd.data);
			model_free(m);
		}
	}
}

/* Every reference model the lead generated with HF transformers. */
static void
test_reference_models(void **state)
{
	(void)state;
	const char *root = tu_data("models");
	char rootbuf[4096];
	snprintf(rootbuf, sizeof rootbuf, "%s", root);
	DIR *d = opendir(rootbuf);
	if (!d) {
		printf("# no %s: only generated models checked\n", rootbuf);
		skip();
	}
	int count = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		char dir[4400], cfg[4500];
		snprintf(dir, sizeof dir, "%s/%s", rootbuf, e->d_name);
		snprintf(cfg, sizeof cfg, "%s/config.json", dir);
		struct stat sb;
		if (stat(cfg, &sb) != 0)
			continue;
		check_model_dir(dir);
		count++;
	}
	closedir(d);
	printf("# %d reference models checked\n", count);
	assert_true(count > 0);
}

static void
test_model_errors(void **state)
{
	struct tu_dirfx *fx = *state;
	char dir[1100], err[ENG_ERRLEN];
	json_t *c;
	struct model *m;

	/* Missing tensor. */
	snprintf(dir, sizeof dir, "%s/missing", fx->dir);
	assert_int_equal(mkdir(dir, 0700), 0);
	c = base_config("Qwen2ForCausalLM");
	write_model(dir, c, "F32", 1, "model.layers.1.self_attn.k_proj.bias", NULL);
	m = model_load(dir, err, sizeof err);
	assert_null(m);
	expect_substr(err, dir);
	expect_substr(err, "model.layers.1.self_attn.k_proj.bias");
	expect_substr(err, "not found");
	printf("# ok: %s\n", err);
	json_decref(c);

	/* Shape mismatch: the exact message. */
	snprintf(dir, sizeof dir, "%s/shape", fx->dir);
	assert_int_equal(mkdir(dir, 0700), 0);
	c = base_config("LlamaForCausalLM");
	write_model(dir, c, "BF16", 2, NULL, "model.layers.0.mlp.down_proj.weight");
	m = model_load(dir, err, sizeof err);
	assert_null(m);
	char want[2400];
	/* down_proj is (hidden, intermediate) = (32, 48); written as (33, 48)
	 * into shard 1 or 2 (whichever the writer chose). */
	snprintf(want, sizeof want, "%s: tensor model.layers.0.mlp.down_proj.weight in %s/model-0000",
		 dir, dir);
	expect_substr(err, want);
	expect_substr(err, "-of-00002.safetensors has shape [33, 48], expected [32, 48]");
	printf("# ok: %s\n", err);
	json_decref(c);

	/* A vector with the wrong rank. */
	snprintf(dir, sizeof dir, "%s/rank", fx->dir);
	assert_int_equal(mkdir(dir, 0700), 0);
	c = base_config("Qwen3ForCausalLM");
	json_object_set_new(c, "tie_word_embeddings", json_true());
	write_model(dir, c, "F32", 1, NULL, "model.layers.1.self_attn.q_norm.weight");
	m = model_load(dir, err, sizeof err);
	assert_null(m);
	expect_substr(err, "q_norm.weight in ");
	expect_substr(err, "has shape [17], expected [16]");
	json_decref(c);

	/* Untied without lm_head. */
	snprintf(dir, sizeof dir, "%s/nohead", fx->dir);
	assert_int_equal(mkdir(dir, 0700), 0);
	c = base_config("LlamaForCausalLM");
	write_model(dir, c, "F32", 1, "lm_head.weight", NULL);
	m = model_load(dir, err, sizeof err);
	assert_null(m);
	expect_substr(err, dir);
	expect_substr(err, "lm_head.weight");
	expect_substr(err, "tie_word_embeddings");
	printf("# ok: %s\n", err);

	/* The same directory with a broken config: the config's error. */
	char cp[1200];
	snprintf(cp, sizeof cp, "%s/config.json", dir);
	assert_int_equal(tu_write_file(cp, "{", 1), 0);
	m = model_load(dir, err, sizeof err);
	assert_null(m);
	expect_substr(err, cp);
	json_decref(c);

	/* Config fine, no weights at all. */
	snprintf(dir, sizeof dir, "%s/noweights", fx->dir);
	assert_int_equal(mkdir(dir, 0700), 0);
	snprintf(cp, sizeof cp, "%s/config.json", dir);
	c = base_config("LlamaForCausalLM");
	assert_int_equal(json_dump_file(c, cp, 0), 0);
	m = model_load(dir, err, sizeof err);
	assert_null(m);
	expect_substr(err, dir);
	expect_substr(err, "model.safetensors");
	json_decref(c);

	/* No directory. */
	m = model_load("/nonexistent/braid-model", err, sizeof err);
	assert_null(m);
	expect_substr(err, "/nonexistent/braid-model/config.json");
	model_free(NULL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_config_defaults, setup, teardown),
		cmocka_unit_test_setup_teardown(test_config_special_tokens, setup, teardown),
		cmocka_unit_test_setup_teardown(test_config_rope, setup, teardown),
		cmocka_unit_test_setup_teardown(test_config_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_generated_models, setup, teardown),
		cmocka_unit_test(test_reference_models),
		cmocka_unit_test_setup_teardown(test_model_errors, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
