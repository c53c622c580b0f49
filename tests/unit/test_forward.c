/* test_forward.c - the CPU kernels against float64 loops, and the CPU forward
 * pass against HF transformers reference logits and greedy continuations. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu/ops.h"
#include "cpu/pool.h"
#include "model.h"
#include "safetensors.h"
#include "status.h"
#include "testutil.h"

/* ---- helpers ------------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float
frand(void)   /* uniform in [-1, 1) */
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* Values stored as dtype dt in buf (n elements); vals gets what they decode to. */
static void *
make_weight(enum st_dtype dt, const float *src, size_t n, float *vals)
{
	void *buf = malloc(n * st_dtype_size(dt));
	assert_non_null(buf);
	for (size_t i = 0; i < n; i++) {
		switch (dt) {
		case ST_F32: ((float *)buf)[i] = src[i]; break;
		case ST_F16: ((uint16_t *)buf)[i] = st_f32_to_f16(src[i]); break;
		case ST_BF16: ((uint16_t *)buf)[i] = st_f32_to_bf16(src[i]); break;
		}
		vals[i] = st_load(buf, dt, i);
	}
	return buf;
}

static const enum st_dtype all_dtypes[] = { ST_F32, ST_F16, ST_BF16 };

/* ---- dot and matmul --------------------------------------------------------------- */

static void
check_dot(int simd)
{
	static const int lens[] = { 1, 7, 8, 9, 31, 32, 33, 63, 100, 1000, 4099 };
	ops_set_simd(simd);
	for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
		int n = lens[li];
		float *x = malloc((size_t)n * sizeof(float)), *w = malloc((size_t)n * sizeof(float));
		float *vals = malloc((size_t)n * sizeof(float));
		assert_non_null(x), assert_non_null(w), assert_non_null(vals);
		for (int i = 0; i < n; i++)
			x[i] = frand(), w[i] = frand();
		for (size_t d = 0; d < 3; d++) {
			void *wb = make_weight(all_dtypes[d], w, (size_t)n, vals);
			double ref = 0.0, mag = 0.0;
			for (int i = 0; i < n; i++)
				ref += (double)x[i] * vals[i], mag += fabs((double)x[i] * vals[i]);
			float got = ops_dot(x, wb, all_dtypes[d], n);
			/* float32 summation: error well under n * 2^-24 of the magnitude */
			assert_true(fabs(got - ref) <= 1e-6 * mag * sqrt((double)n) + 1e-30);
			/* the same values stored as f32 give the same bits */
			float same = ops_dot(x, vals, ST_F32, n);
			assert_memory_equal(&got, &same, sizeof got);
			free(wb);
		}
		free(x), free(w), free(vals);
	}
	ops_set_simd(1);
}

static void
test_dot_simd(void **state)
{
	(void)state;
	check_dot(1);
}

static void
test_dot_portable(void **state)
{
	(void)state;
	check_dot(0);
}

static void
check_matmul(int simd, int threads, int rows, int cols, int B)
{
	pool *p = pool_create(threads);
	assert_non_null(p);
	ops_mm *mm = ops_mm_create(p, cols);
	assert_non_null(mm);
	ops_set_simd(simd);
	float *w = malloc(sizeof(float) * rows * cols), *vals = malloc(sizeof(float) * rows * cols);
	float *x = malloc(sizeof(float) * B * cols), *out = malloc(sizeof(float) * B * rows);
	float *one = malloc(sizeof(float) * rows);
	for (int i = 0; i < rows * cols; i++)
		w[i] = frand();
	for (int i = 0; i < B * cols; i++)
		x[i] = frand();
	double maxerr = 0.0;
	for (size_t d = 0; d < 3; d++) {
		void *wb = make_weight(all_dtypes[d], w, (size_t)rows * cols, vals);
		struct weight wt = { .data = wb, .dtype = all_dtypes[d], .rows = rows, .cols = cols };
		ops_matmul(mm, out, x, B, &wt);
		for (int b = 0; b < B; b++) {
			for (int r = 0; r < rows; r++) {
				double ref = 0.0, mag = 0.0;
				for (int c = 0; c < cols; c++) {
					ref += (double)x[b * cols + c] * vals[r * cols + c];
					mag += fabs((double)x[b * cols + c] * vals[r * cols + c]);
				}
				double e = fabs(out[b * rows + r] - ref) / mag;
				maxerr = e > maxerr ? e : maxerr;
				assert_true(e < 1e-6);
			}
			/* batch invariance: row b alone gives the same bits */
			ops_matmul(mm, one, x + b * cols, 1, &wt);
			assert_memory_equal(one, out + b * rows, sizeof(float) * rows);
		}
		free(wb);
	}
	printf("# matmul %dx%d B=%d simd=%d threads=%d: max relative error %.3g\n", rows, cols, B, ops_simd(),
	       pool_threads(p), maxerr);
	ops_set_simd(1);
	free(w), free(vals), free(x), free(out), free(one);
	ops_mm_destroy(mm);
	pool_destroy(p);
}

static void
test_matmul(void **state)
{
	(void)state;
	/* column counts with and without tails, one and several L1 chunks,
	 * batches of one and several row blocks */
	check_matmul(1, 0, 37, 75, 6);
	check_matmul(1, 3, 37, 75, 6);
	check_matmul(0, 2, 37, 75, 6);
	check_matmul(1, 2, 13, 603, 11);
	/* batches of 1-2 (one weight row at a time), past one batch chunk,
	 * several work items with a partial last one */
	check_matmul(1, 2, 37, 75, 2);
	check_matmul(0, 2, 37, 75, 2);
	check_matmul(1, 2, 70, 136, 50);
	check_matmul(0, 3, 70, 41, 29);
	check_matmul(1, 1, 9, 512, 17);
	check_matmul(0, 2, 9, 603, 3);
}

/* ops_axpy and ops_scale against float64, both kernels, with tails. */
static void
test_axpy_scale(void **state)
{
	(void)state;
	for (int simd = 1; simd >= 0; simd--) {
		ops_set_simd(simd);
		for (int n = 1; n <= 45; n += 11) {
			float y0[64], y[64], z[64], v[64];
			for (int i = 0; i < n; i++)
				y0[i] = y[i] = z[i] = frand(), v[i] = frand();
			ops_axpy(y, 0.37f, v, n);
			ops_scale(z, -1.5f, n);
			for (int i = 0; i < n; i++) {
				double want = (double)y0[i] + (double)0.37f * v[i];
				assert_true(fabs(y[i] - want) <= 1.2e-7 * (fabs(y0[i]) + fabs(0.37 * v[i])));
				/* -1.5 * y0 is exact in float64 and rounds once to float */
				assert_true(z[i] == (float)(-1.5 * (double)y0[i]));
			}
		}
	}
	ops_set_simd(1);
}

/* ---- rmsnorm, rope ------------------------------------------------------------------ */

static void
test_rmsnorm(void **state)
{
	(void)state;
	const int n = 67;
	float x[67], wv[67], vals[67], out[67];
	for (int i = 0; i < n; i++)
		x[i] = frand() * 3.0f, wv[i] = frand();
	for (size_t d = 0; d < 3; d++) {
		void *wb = make_weight(all_dtypes[d], wv, (size_t)n, vals);
		struct weight wt = { .data = wb, .dtype = all_dtypes[d], .rows = 1, .cols = n };
		ops_rmsnorm(out, x, &wt, n, 1e-5f);
		double ss = 0.0;
		for (int i = 0; i < n; i++)
			ss += (double)x[i] * x[i];
		double r = 1.0 / sqrt(ss / n + 1e-5);
		for (int i = 0; i < n; i++)
			assert_true(fabs(out[i] - x[i] * r * vals[i]) <= 1e-6 * (fabs(x[i] * r * vals[i]) + 1e-3));
		free(wb);
	}
}

/* HF inv_freq in float64, with the llama3 band rule written from the paper's
 * description: wavelengths above orig/low are scaled by 1/factor, below
 * orig/high kept, and linearly blended in 1/wavelen between. */
static double
ref_inv_freq(const struct model_config *c, int i)
{
	double f = pow(c->rope_theta, -(2.0 * i) / c->head_dim);
	if (c->rope_kind != ROPE_LLAMA3)
		return f;
	double wl = 2.0 * M_PI / f;
	double lo_wl = c->rope_orig_max_pos / c->rope_low_freq, hi_wl = c->rope_orig_max_pos / c->rope_high_freq;
	if (wl > lo_wl)
		return f / c->rope_factor;
	if (wl < hi_wl)
		return f;
	double t = (c->rope_orig_max_pos / wl - c->rope_low_freq) / (c->rope_high_freq - c->rope_low_freq);
	return t * f + (1.0 - t) * f / c->rope_factor;
}

static void
test_rope(void **state)
{
	(void)state;
	struct model_config c = { .head_dim = 64, .rope_theta = 500000.0, .rope_kind = ROPE_DEFAULT };
	float inv[32], cs[32], sn[32], v[64], v0[64];
	for (int kind = 0; kind < 2; kind++) {
		if (kind == 1) {
			c.rope_kind = ROPE_LLAMA3, c.rope_factor = 8.0f, c.rope_low_freq = 1.0f;
			c.rope_high_freq = 4.0f, c.rope_orig_max_pos = 8192;
		}
		ops_rope_inv_freq(&c, inv);
		int blended = 0;
		for (int i = 0; i < 32; i++) {
			double ref = ref_inv_freq(&c, i);
			assert_true(fabs(inv[i] - ref) <= 1e-6 * ref);
			double wl = 2.0 * M_PI / ref;
			blended += kind == 1 && wl > 8192 / 4.0 && wl < 8192 / 1.0;
		}
		if (kind == 1)
			assert_true(blended > 0);   /* the test covers the blended band */
		for (int pos = 0; pos < 300; pos += 37) {
			for (int i = 0; i < 64; i++)
				v[i] = v0[i] = frand();
			ops_rope_cos_sin(inv, 32, pos, cs, sn);
			ops_rope(v, 32, cs, sn);
			for (int i = 0; i < 32; i++) {
				double a = (double)pos * ref_inv_freq(&c, i);
				double e0 = v0[i] * cos(a) - v0[i + 32] * sin(a);
				double e1 = v0[i + 32] * cos(a) + v0[i] * sin(a);
				/* float32 angle: error grows with pos * 2^-24 */
				double tol = 2e-6 + 2e-7 * pos;
				assert_true(fabs(v[i] - e0) < tol);
				assert_true(fabs(v[i + 32] - e1) < tol);
			}
		}
	}
}

/* ---- the forward pass against HF -------------------------------------------------- */

struct ref {
	json_t *j;
	int n_prompts;
	int lens[8];
	const int32_t *prompt[8];
	int32_t *ids;            /* all prompt tokens, concatenated */
	float *logits;           /* (sum lens, vocab) */
	float *native;           /* same, or NULL */
	int vocab;
};

static float *
read_floats(const char *rel, size_t expect)
{
	size_t len = 0;
	char *buf = tu_read_file(tu_refgen(rel), &len);
	if (!buf)
		fail_msg("cannot read %s (made by the build: tools/ref_logits.py)", tu_refgen(rel));
	assert_int_equal(len, expect * sizeof(float));
	return (float *)buf;
}

static void
ref_load(const char *name, struct ref *r)
{
	char rel[256];
	json_error_t je;
	memset(r, 0, sizeof *r);
	snprintf(rel, sizeof rel, "ref/%s.json", name);
	r->j = json_load_file(tu_data(rel), 0, &je);
	if (!r->j)
		fail_msg("%s: %s", rel, je.text);
	r->vocab = (int)json_integer_value(json_object_get(r->j, "vocab"));
	json_t *pr = json_object_get(r->j, "prompts");
	r->n_prompts = (int)json_array_size(pr);
	assert_true(r->n_prompts > 0 && r->n_prompts <= 8);
	size_t total = 0;
	for (int i = 0; i < r->n_prompts; i++)
		total += json_array_size(json_array_get(pr, (size_t)i));
	r->ids = malloc(total * sizeof(int32_t));
	total = 0;
	for (int i = 0; i < r->n_prompts; i++) {
		json_t *a = json_array_get(pr, (size_t)i);
		r->lens[i] = (int)json_array_size(a);
		r->prompt[i] = r->ids + total;
		for (size_t k = 0; k < json_array_size(a); k++)
			r->ids[total++] = (int32_t)json_integer_value(json_array_get(a, k));
	}
	const char *lf = json_string_value(json_object_get(r->j, "logits"));
	if (!lf)
		fail_msg("%s: no \"logits\" file name", rel);
	r->logits = read_floats(lf, total * (size_t)r->vocab);
	json_t *nat = json_object_get(r->j, "native_logits");
	if (json_is_string(nat))
		r->native = read_floats(json_string_value(nat), total * (size_t)r->vocab);
}

static void
ref_free(struct ref *r)
{
	json_decref(r->j);
	free(r->ids);
	free(r->logits);
	free(r->native);
}

static double
rel_err(const float *a, const float *ref, int n)
{
	double num = 0.0, den = 0.0;
	for (int i = 0; i < n; i++) {
		double d = (double)a[i] - ref[i];
		num += d * d, den += (double)ref[i] * ref[i];
	}
	return sqrt(num / den);
}

/* Each sequence s uses blocks [s*8, s*8+8): 128 positions. */
#define SEQ_BLOCKS 8
#define BT 16

static int32_t tables_storage[8][SEQ_BLOCKS];
static const int32_t *tables[8];

static void
init_tables(void)
{
	for (int s = 0; s < 8; s++) {
		for (int b = 0; b < SEQ_BLOCKS; b++)
			tables_storage[s][b] = s * SEQ_BLOCKS + (SEQ_BLOCKS - 1 - b);  /* not in order */
		tables[s] = tables_storage[s];
	}
}

/* Run tokens[n] of sequence s (positions start..) as one pass; logits for
 * every row when all, else the last. */
static int
run_seq(struct backend *be, int s, const int32_t *tokens, int n, int start, int all, float *logits)
{
	int32_t *pos = malloc(sizeof(int32_t) * n), *rs = malloc(sizeof(int32_t) * n);
	int32_t *lr = malloc(sizeof(int32_t) * n);
	for (int i = 0; i < n; i++)
		pos[i] = start + i, rs[i] = 0, lr[i] = i;
	struct fwd_batch b = {
		.n_rows = n, .tokens = tokens, .pos = pos, .row_seq = rs, .n_seqs = 1,
		.block_tables = &tables[s], .n_logits = all ? n : 1, .logit_rows = all ? lr : lr + n - 1,
	};
	int rc = be->ops->forward(be->self, &b, logits);
	free(pos), free(rs), free(lr);
	return rc;
}

static int
argmax(const float *v, int n)
{
	int best = 0;
	for (int i = 1; i < n; i++)
		if (v[i] > v[best])
			best = i;
	return best;
}

/* Native-dtype logits: HF computing in f16/bf16 rounds every activation to
 * that format, so it differs from our float32 computation by some units of
 * the format's roundoff u (f16: 2^-11 ~ 4.9e-4, bf16: 2^-8 ~ 3.9e-3).
 * Measured (refs-1, largest per-position relative L2 error over the three
 * tiny models): f16 2.9e-3..4.6e-3 (6-9 u), bf16 2.0e-2..3.9e-2 (5-10 u).
 * The bound is 20 u: twice the worst measured, and still far below the O(1)
 * error of a misread dtype or a wrong layer. */
#define NATIVE_TOL_F16 (20.0 / 2048.0)
#define NATIVE_TOL_BF16 (20.0 / 256.0)

static void
check_model(const char *name)
{
	char err[ENG_ERRLEN] = "", rel[256];
	struct ref r;
	ref_load(name, &r);
	const char *mname = json_string_value(json_object_get(r.j, "model"));
	assert_string_equal(mname, name);
	snprintf(rel, sizeof rel, "models/%s", name);
	struct model *m = model_load(tu_data(rel), err, sizeof err);
	if (!m)
		fail_msg("%s", err);
	assert_int_equal(m->cfg.vocab_size, r.vocab);
	struct backend be;
	assert_int_equal(cpu_backend_create(m, 8 * SEQ_BLOCKS, BT, 2, NULL, &be, err, sizeof err), 0);
	init_tables();
	const int V = r.vocab;
	float *out = malloc(sizeof(float) * 64 * V);
	double worst = 0.0, worst_nat = 0.0;
	const float *refrow = r.logits, *natrow = r.native;
	json_t *greedy = json_object_get(r.j, "greedy"), *margins = json_object_get(r.j, "greedy_margins");

	for (int p = 0; p < r.n_prompts; p++) {
		int L = r.lens[p];
		assert_int_equal(run_seq(&be, p, r.prompt[p], L, 0, 1, out), 0);
		for (int i = 0; i < L; i++) {
			double e = rel_err(out + (size_t)i * V, refrow + (size_t)i * V, V);
			worst = e > worst ? e : worst;
			if (natrow) {
				double en = rel_err(out + (size_t)i * V, natrow + (size_t)i * V, V);
				worst_nat = en > worst_nat ? en : worst_nat;
			}
		}
		refrow += (size_t)L * V;
		if (natrow)
			natrow += (size_t)L * V;

		/* greedy decode, one token per pass, against HF generate() */
		json_t *g = json_array_get(greedy, (size_t)p), *gm = json_array_get(margins, (size_t)p);
		int tok = argmax(out + (size_t)(L - 1) * V, V);
		for (size_t t = 0; t < json_array_size(g); t++) {
			int want = (int)json_integer_value(json_array_get(g, t));
			if (tok != want)
				fail_msg("%s prompt %d step %zu: token %d, HF %d (HF margin %g)", name, p, t, tok,
					 want, json_real_value(json_array_get(gm, t)));
			int32_t t32 = tok;
			assert_int_equal(run_seq(&be, p, &t32, 1, L + (int)t, 0, out), 0);
			tok = argmax(out, V);
		}
	}
	printf("# %s: largest relative error vs the reference logits (tools/ref_logits.py) %.3g", name, worst);
	if (r.native)
		printf(", vs the reference in %s %.3g", json_string_value(json_object_get(r.j, "dtype")), worst_nat);
	printf("\n");
	assert_true(worst < 1e-4);
	if (r.native) {
		const char *dt = json_string_value(json_object_get(r.j, "dtype"));
		assert_true(worst_nat < (strcmp(dt, "bf16") == 0 ? NATIVE_TOL_BF16 : NATIVE_TOL_F16));
	}
	free(out);
	be.ops->destroy(be.self);
	model_free(m);
	ref_free(&r);
}

#define MODEL_TEST(fn, name) \
	static void fn(void **state) { (void)state; check_model(name); }
MODEL_TEST(test_llama_f32, "llama-f32")
MODEL_TEST(test_llama_f16, "llama-f16")
MODEL_TEST(test_llama_bf16, "llama-bf16")
MODEL_TEST(test_qwen2_f32, "qwen2-f32")
MODEL_TEST(test_qwen2_f16, "qwen2-f16")
MODEL_TEST(test_qwen2_bf16, "qwen2-bf16")
MODEL_TEST(test_qwen3_f32, "qwen3-f32")
MODEL_TEST(test_qwen3_f16, "qwen3-f16")
MODEL_TEST(test_qwen3_bf16, "qwen3-bf16")
MODEL_TEST(test_qwen3_sharded, "qwen3-f32-sharded")

/* The three prompts batched together, and one prompt in two chunks, give the
 * same bits as each prompt run alone. */
static void
test_batch_invariance(void **state)
{
	(void)state;
	char err[ENG_ERRLEN] = "";
	struct ref r;
	ref_load("qwen3-bf16", &r);
	struct model *m = model_load(tu_data("models/qwen3-bf16"), err, sizeof err);
	if (!m)
		fail_msg("%s", err);
	struct backend be;
	assert_int_equal(cpu_backend_create(m, 8 * SEQ_BLOCKS, BT, 0, NULL, &be, err, sizeof err), 0);
	init_tables();
	const int V = r.vocab;
	int total = 0;
	for (int p = 0; p < r.n_prompts; p++)
		total += r.lens[p];
	float *alone = malloc(sizeof(float) * total * V), *batch = malloc(sizeof(float) * total * V);
	int32_t *pos = malloc(sizeof(int32_t) * total), *rs = malloc(sizeof(int32_t) * total);
	int32_t *lr = malloc(sizeof(int32_t) * total);
	int off = 0;
	for (int p = 0; p < r.n_prompts; p++) {
		assert_int_equal(run_seq(&be, p, r.prompt[p], r.lens[p], 0, 1, alone + (size_t)off * V), 0);
		for (int i = 0; i < r.lens[p]; i++)
			pos[off + i] = i, rs[off + i] = p, lr[off + i] = off + i;
		off += r.lens[p];
	}
	/* the batch writes into other blocks: sequences 4.. */
	const int32_t *bt[8];
	for (int p = 0; p < r.n_prompts; p++)
		bt[p] = tables[4 + p];
	struct fwd_batch b = {
		.n_rows = total, .tokens = r.ids, .pos = pos, .row_seq = rs, .n_seqs = r.n_prompts,
		.block_tables = bt, .n_logits = total, .logit_rows = lr,
	};
	assert_int_equal(be.ops->forward(be.self, &b, batch), 0);
	assert_memory_equal(alone, batch, sizeof(float) * total * V);

	/* chunks: prompt 2 as 5 + 11 + rest rows, in sequence 7 */
	int L = r.lens[2], o2 = r.lens[0] + r.lens[1];
	assert_int_equal(run_seq(&be, 7, r.prompt[2], 5, 0, 1, batch), 0);
	assert_int_equal(run_seq(&be, 7, r.prompt[2] + 5, 11, 5, 1, batch + 5 * V), 0);
	assert_int_equal(run_seq(&be, 7, r.prompt[2] + 16, L - 16, 16, 1, batch + 16 * V), 0);
	assert_memory_equal(alone + (size_t)o2 * V, batch, sizeof(float) * L * V);

	/* copy_block: a copy of sequence 2's blocks continues identically */
	for (int i = 0; i < SEQ_BLOCKS; i++)
		assert_int_equal(be.ops->copy_block(be.self, tables[2][i], tables[6][i]), 0);
	int32_t t = 17;
	float *a = malloc(sizeof(float) * V), *c = malloc(sizeof(float) * V);
	assert_int_equal(run_seq(&be, 2, &t, 1, L, 0, a), 0);
	assert_int_equal(run_seq(&be, 6, &t, 1, L, 0, c), 0);
	assert_memory_equal(a, c, sizeof(float) * V);

	/* bad batches are refused */
	int32_t bad = V;
	assert_int_equal(run_seq(&be, 0, &bad, 1, 0, 0, a), ENG_ERR_INVALID);
	bad = -1;
	assert_int_equal(run_seq(&be, 0, &bad, 1, 0, 0, a), ENG_ERR_INVALID);
	tables_storage[0][1] = 8 * SEQ_BLOCKS;   /* a block id past the pool */
	assert_int_equal(run_seq(&be, 0, &t, 1, BT, 0, a), ENG_ERR_INVALID);
	tables_storage[0][1] = -1;
	assert_int_equal(run_seq(&be, 0, &t, 1, BT + 3, 0, a), ENG_ERR_INVALID);
	assert_int_equal(be.ops->copy_block(be.self, -1, 0), ENG_ERR_INVALID);
	assert_int_equal(be.ops->copy_block(be.self, 0, 8 * SEQ_BLOCKS), ENG_ERR_INVALID);

	free(a), free(c), free(alone), free(batch), free(pos), free(rs), free(lr);
	be.ops->destroy(be.self);
	model_free(m);
	ref_free(&r);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_dot_simd),
		cmocka_unit_test(test_dot_portable),
		cmocka_unit_test(test_matmul),
		cmocka_unit_test(test_axpy_scale),
		cmocka_unit_test(test_rmsnorm),
		cmocka_unit_test(test_rope),
		cmocka_unit_test(test_llama_f32),
		cmocka_unit_test(test_llama_f16),
		cmocka_unit_test(test_llama_bf16),
		cmocka_unit_test(test_qwen2_f32),
		cmocka_unit_test(test_qwen2_f16),
		cmocka_unit_test(test_qwen2_bf16),
		cmocka_unit_test(test_qwen3_f32),
		cmocka_unit_test(test_qwen3_f16),
		cmocka_unit_test(test_qwen3_bf16),
		cmocka_unit_test(test_qwen3_sharded),
		cmocka_unit_test(test_batch_invariance),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
