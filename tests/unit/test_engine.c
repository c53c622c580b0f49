/* test_engine.c - the engine's sequences, forks and batched steps: bitwise
 * equality of batched, forked and chunked runs with runs alone, seeded
 * sampling, KV exhaustion, bad arguments and bad model directories. */
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

#include "engine.h"
#include "sampler.h"
#include "testutil.h"

#define VOCAB 512

static eng *
open_engine(const char *model, size_t kv_bytes, int block_tokens, int batch_rows)
{
	char err[ENG_ERRLEN] = "";
	struct eng_params p = eng_default_params();
	p.model_dir = tu_data(model);
	p.n_threads = 2;
	p.kv_bytes = kv_bytes;
	p.block_tokens = block_tokens;
	p.max_batch_rows = batch_rows;
	eng *e = eng_create(&p, err, sizeof err);
	if (!e)
		fail_msg("eng_create: %s", err);
	return e;
}

/* A fixed pseudo-random token string. */
static void
fill_tokens(int32_t *ids, int n, uint32_t seed)
{
	for (int i = 0; i < n; i++) {
		seed = seed * 1664525u + 1013904223u;
		ids[i] = (int32_t)((seed >> 8) % VOCAB);
	}
}

static void
test_basics(void **state)
{
	(void)state;
	eng *e = open_engine("models/qwen3-f32", 1 << 20, 16, 0);
	assert_int_equal(eng_config(e)->vocab_size, VOCAB);
	assert_string_equal(eng_device_name(e), "cpu");
	assert_non_null(eng_tokenizer(e));
	assert_int_equal(eng_threads(e), 2);
	assert_true(eng_weight_bytes(e) > 0);
	/* 1 MiB of 16-position blocks of 2 layers x 2 x 16 x 2 heads x 32 floats */
	assert_int_equal(eng_kv_blocks_total(e), (1 << 20) / (2 * 2 * 16 * 2 * 32 * 4));
	assert_int_equal(eng_kv_blocks_free(e), eng_kv_blocks_total(e));
	eng_destroy(e);
	eng_destroy(NULL);
}

/* End to end against HF: every prompt of the qwen2-f16 reference, prefilled
 * in passes of 8 rows, gives HF's float32 logits, and greedy steps give
 * HF generate()'s tokens. */
static void
test_matches_hf(void **state)
{
	(void)state;
	json_error_t je;
	json_t *ref = json_load_file(tu_data("ref/qwen2-f16.json"), 0, &je);
	if (!ref)
		fail_msg("ref/qwen2-f16.json: %s", je.text);
	size_t len = 0;
	float *want = (float *)tu_read_file(tu_refgen("qwen2-f16.logits.bin"), &len);
	assert_non_null(want);
	eng *e = open_engine("models/qwen2-f16", 1 << 20, 16, 8);
	json_t *prompts = json_object_get(ref, "prompts"), *greedy = json_object_get(ref, "greedy");
	const float *wrow = want;
	double worst = 0.0;
	for (size_t p = 0; p < json_array_size(prompts); p++) {
		json_t *a = json_array_get(prompts, p), *g = json_array_get(greedy, p);
		int n = (int)json_array_size(a);
		int32_t ids[64];
		assert_true(n <= 64);
		for (int i = 0; i < n; i++)
			ids[i] = (int32_t)json_integer_value(json_array_get(a, (size_t)i));
		struct samp_params sp = samp_default_params();
		sp.temperature = 0.0f;
		int s = eng_seq_new(e, ids, n, &sp);
		float *got = malloc(sizeof(float) * (size_t)n * VOCAB);
		assert_int_equal(eng_seq_prefill(e, s, got), 0);
		for (int i = 0; i < n; i++) {
			double num = 0.0, den = 0.0;
			for (int v = 0; v < VOCAB; v++) {
				double d = (double)got[i * VOCAB + v] - wrow[i * VOCAB + v];
				num += d * d, den += (double)wrow[i * VOCAB + v] * wrow[i * VOCAB + v];
			}
			double r = sqrt(num / den);
			worst = r > worst ? r : worst;
		}
		wrow += (size_t)n * VOCAB;
		free(got);
		for (size_t t = 0; t < json_array_size(g); t++) {
			struct eng_token out[2];
			int k;
			assert_int_equal(eng_step(e, out, 2, &k), 0);
			assert_int_equal(k, 1);
			assert_int_equal(out[0].r.token, (int)json_integer_value(json_array_get(g, t)));
		}
		assert_int_equal(eng_seq_free(e, s), 0);
	}
	assert_true((const char *)wrow - (const char *)want == (ptrdiff_t)len);
	printf("# qwen2-f16 through the engine: largest relative error vs HF float32 %.3g\n", worst);
	assert_true(worst < 1e-4);
	eng_destroy(e);
	free(want);
	json_decref(ref);
}

/* Logits at every position of ids[n] prefilled alone in a fresh sequence. */
static void
prefill_alone(eng *e, const int32_t *ids, int n, float *logits)
{
	int s = eng_seq_new(e, ids, n, NULL);
	assert_true(s >= 0);
	assert_int_equal(eng_seq_prefill(e, s, logits), 0);
	assert_int_equal(eng_seq_len(e, s), n);
	assert_memory_equal(eng_seq_logits(e, s), logits + (size_t)(n - 1) * VOCAB, VOCAB * sizeof(float));
	assert_int_equal(eng_seq_free(e, s), 0);
}

/* Fork after a prefix of length p (at and off block boundaries), run
 * different continuations in the parent and children: each equals the same
 * tokens prefilled alone, bit for bit, and the parent's blocks are intact. */
static void
test_fork_bitwise(void **state)
{
	(void)state;
	static const int prefixes[] = { 7, 16, 20, 32, 33 };
	eng *e = open_engine("models/qwen3-bf16", 1 << 20, 16, 0);
	int32_t ids[80];
	float *alone = malloc(sizeof(float) * 80 * VOCAB), *got = malloc(sizeof(float) * 80 * VOCAB);
	fill_tokens(ids, 80, 7);
	for (size_t pi = 0; pi < sizeof prefixes / sizeof *prefixes; pi++) {
		const int p = prefixes[pi], tail = 11;
		int free0 = eng_kv_blocks_free(e);
		int parent = eng_seq_new(e, ids, p, NULL);
		assert_true(parent >= 0);
		assert_int_equal(eng_seq_prefill(e, parent, NULL), 0);
		int kids[2];
		assert_int_equal(eng_seq_fork(e, parent, 2, kids), 0);
		for (int c = 0; c < 3; c++) {
			int s = c == 0 ? parent : kids[c - 1];
			int32_t cont[16];
			fill_tokens(cont, tail, 100 + (uint32_t)c);
			assert_int_equal(eng_seq_append(e, s, cont, tail), 0);
			assert_int_equal(eng_seq_len(e, s), p + tail);
		}
		for (int c = 0; c < 3; c++) {
			int s = c == 0 ? parent : kids[c - 1];
			int32_t full[80];
			memcpy(full, ids, sizeof(int32_t) * p);
			fill_tokens(full + p, tail, 100 + (uint32_t)c);
			assert_null(eng_seq_logits(e, s));
			assert_int_equal(eng_seq_prefill(e, s, got), 0);
			assert_int_equal(eng_seq_prefill(e, s, got), ENG_DONE);
			prefill_alone(e, full, p + tail, alone);
			assert_memory_equal(got, alone + (size_t)p * VOCAB, sizeof(float) * tail * VOCAB);
		}
		assert_int_equal(eng_seq_free(e, kids[0]), 0);
		assert_int_equal(eng_seq_free(e, parent), 0);
		assert_int_equal(eng_seq_free(e, kids[1]), 0);
		assert_int_equal(eng_kv_blocks_free(e), free0);
	}
	free(alone);
	free(got);
	eng_destroy(e);
}

/* A fork with ready logits and pending tokens: children inherit both. */
static void
test_fork_state(void **state)
{
	(void)state;
	eng *e = open_engine("models/qwen3-f32", 1 << 20, 16, 0);
	int32_t ids[10];
	fill_tokens(ids, 10, 3);
	struct samp_params sp = samp_default_params();
	sp.seed = 1234;
	int s = eng_seq_new(e, ids, 10, &sp);
	assert_int_equal(eng_seq_prefill(e, s, NULL), 0);
	int k1[2], k2;
	assert_int_equal(eng_seq_fork(e, s, 2, k1), 0);
	assert_int_equal(eng_seq_fork(e, s, 1, &k2), 0);
	for (int i = 0; i < 2; i++)
		assert_memory_equal(eng_seq_logits(e, k1[i]), eng_seq_logits(e, s), VOCAB * sizeof(float));
	assert_int_equal(eng_seq_len(e, k2), 10);
	float logits[VOCAB], scratch[2 * VOCAB];
	memcpy(logits, eng_seq_logits(e, s), sizeof logits);
	/* children 1, 2, 3 sample with samp_derive_seed(1234, c), the parent
	 * with its own seed, all from the same logits */
	struct eng_token out[8];
	int n;
	assert_int_equal(eng_step(e, out, 8, &n), 0);
	assert_int_equal(n, 4);
	int who[4] = { s, k1[0], k1[1], k2 };
	for (int c = 0; c < 4; c++) {
		struct samp_rng r;
		struct samp_result want;
		struct samp_params cp = sp;
		if (c > 0)
			cp.seed = samp_derive_seed(1234, (uint64_t)c);
		samp_rng_seed(&r, cp.seed);
		assert_int_equal(samp_sample(logits, VOCAB, &cp, &r, scratch, &want), 0);
		int slot = -1;
		for (int i = 0; i < n; i++)
			if (out[i].seq == who[c])
				slot = i;
		assert_true(slot >= 0);
		assert_int_equal(out[slot].r.token, want.token);
		assert_memory_equal(&out[slot].r.logprob, &want.logprob, sizeof want.logprob);
	}
	int kids[3] = { k1[0], k1[1], k2 };
	/* results come in sequence-id order */
	for (int i = 1; i < n; i++)
		assert_true(out[i].seq > out[i - 1].seq);
	for (int i = 0; i < 3; i++)
		assert_int_equal(eng_seq_free(e, kids[i]), 0);
	assert_int_equal(eng_seq_free(e, s), 0);
	eng_destroy(e);
}

struct run_spec {
	int len;
	uint32_t tok_seed;
	struct samp_params sp;
};

#define N_SPECS 5
#define N_STEPS 9

static struct run_spec specs[N_SPECS];

static void
init_specs(void)
{
	static const int lens[N_SPECS] = { 3, 17, 40, 1, 26 };
	for (int i = 0; i < N_SPECS; i++) {
		specs[i].len = lens[i];
		specs[i].tok_seed = 50 + (uint32_t)i;
		specs[i].sp = samp_default_params();
		specs[i].sp.seed = 1000 + (uint64_t)i;
		specs[i].sp.n_top = 5;
	}
	specs[0].sp.temperature = 0.0f;
	specs[1].sp.temperature = 0.7f, specs[1].sp.top_k = 20;
	specs[2].sp.top_p = 0.9f;
	specs[3].sp.min_p = 0.05f, specs[3].sp.temperature = 1.3f;
	specs[4].sp.temperature = 1.0f;
}

static void
token_equal(const struct samp_result *a, const struct samp_result *b)
{
	assert_int_equal(a->token, b->token);
	assert_memory_equal(&a->logprob, &b->logprob, sizeof a->logprob);
	assert_memory_equal(&a->entropy, &b->entropy, sizeof a->entropy);
	assert_int_equal(a->n_top, b->n_top);
	assert_memory_equal(a->top_ids, b->top_ids, sizeof(int32_t) * (size_t)a->n_top);
	assert_memory_equal(a->top_logprobs, b->top_logprobs, sizeof(float) * (size_t)a->n_top);
}

/* N sequences of different lengths and sampling params stepped together
 * give exactly the tokens, logprobs, entropies and top lists of N runs
 * alone; also with prefills chunked to 8 rows, and with a prefill first. */
static void
test_batch_equals_alone(void **state)
{
	(void)state;
	init_specs();
	struct samp_result alone[N_SPECS][N_STEPS];
	struct eng_token out[N_SPECS + 2];
	int32_t ids[64];
	int n;

	eng *e = open_engine("models/qwen2-bf16", 1 << 20, 16, 0);
	for (int i = 0; i < N_SPECS; i++) {
		fill_tokens(ids, specs[i].len, specs[i].tok_seed);
		int s = eng_seq_new(e, ids, specs[i].len, &specs[i].sp);
		assert_true(s >= 0);
		for (int t = 0; t < N_STEPS; t++) {
			assert_int_equal(eng_step(e, out, 1, &n), 0);
			assert_int_equal(n, 1);
			assert_int_equal(out[0].seq, s);
			alone[i][t] = out[0].r;
		}
		assert_int_equal(eng_seq_len(e, s), specs[i].len + N_STEPS);
		eng_seq_free(e, s);
	}
	eng_destroy(e);

	for (int mode = 0; mode < 3; mode++) {
		/* mode 0: one pass; 1: passes of 8 rows; 2: sequence 2 prefilled first */
		e = open_engine("models/qwen2-bf16", 1 << 20, 16, mode == 1 ? 8 : 0);
		int seq[N_SPECS];
		for (int i = 0; i < N_SPECS; i++) {
			fill_tokens(ids, specs[i].len, specs[i].tok_seed);
			seq[i] = eng_seq_new(e, ids, specs[i].len, &specs[i].sp);
			assert_true(seq[i] >= 0);
		}
		if (mode == 2)
			assert_int_equal(eng_seq_prefill(e, seq[2], NULL), 0);
		assert_int_equal(eng_step(e, out, N_SPECS - 1, &n), ENG_ERR_RANGE);
		for (int t = 0; t < N_STEPS; t++) {
			assert_int_equal(eng_step(e, out, N_SPECS + 2, &n), 0);
			assert_int_equal(n, N_SPECS);
			for (int i = 0; i < N_SPECS; i++) {
				assert_int_equal(out[i].seq, seq[i]);
				token_equal(&out[i].r, &alone[i][t]);
			}
		}
		eng_destroy(e);   /* live sequences are freed with the engine */
	}
}

/* A seeded sequence draws the same tokens whatever else runs beside it. */
static void
test_seed_reproducible(void **state)
{
	(void)state;
	int32_t ids[12], other[20];
	fill_tokens(ids, 12, 9);
	struct samp_params sp = samp_default_params();
	sp.seed = 77;
	sp.temperature = 1.5f;   /* flat enough that the draws matter */
	int32_t first[2][16];
	struct eng_token out[8];
	int n;
	for (int run = 0; run < 2; run++) {
		eng *e = open_engine("models/llama-f16", 1 << 20, 16, 0);
		int mine = -1;
		if (run == 1) {
			/* others first, so mine gets another id and place in the batch */
			for (int k = 0; k < 3; k++) {
				struct samp_params op = samp_default_params();
				op.seed = 5 + (uint64_t)k;
				fill_tokens(other, 5 + 7 * k, 200 + (uint32_t)k);
				assert_true(eng_seq_new(e, other, 5 + 7 * k, &op) >= 0);
			}
		}
		mine = eng_seq_new(e, ids, 12, &sp);
		assert_true(mine >= 0);
		for (int t = 0; t < 16; t++) {
			assert_int_equal(eng_step(e, out, 8, &n), 0);
			int found = 0;
			for (int i = 0; i < n; i++)
				if (out[i].seq == mine)
					first[run][t] = out[i].r.token, found = 1;
			assert_true(found);
		}
		eng_destroy(e);
	}
	assert_memory_equal(first[0], first[1], sizeof first[0]);
	/* a different seed gives a different string (16 draws at T=1.5), and
	 * set_sampling back to seed 77 restarts the generator */
	eng *e = open_engine("models/llama-f16", 1 << 20, 16, 0);
	sp.seed = 78;
	int s = eng_seq_new(e, ids, 12, &sp);
	int32_t diff[16];
	for (int t = 0; t < 16; t++) {
		assert_int_equal(eng_step(e, out, 8, &n), 0);
		diff[t] = out[0].r.token;
	}
	assert_memory_not_equal(first[0], diff, sizeof diff);
	int t2 = eng_seq_new(e, ids, 12, &sp);
	sp.seed = 77;
	assert_int_equal(eng_seq_set_sampling(e, t2, &sp), 0);
	assert_int_equal(eng_seq_free(e, s), 0);
	for (int t = 0; t < 16; t++) {
		assert_int_equal(eng_step(e, out, 8, &n), 0);
		assert_int_equal(out[0].seq, t2);
		diff[t] = out[0].r.token;
	}
	assert_memory_equal(first[0], diff, sizeof diff);
	eng_destroy(e);
}

/* A pool of 4 blocks (64 positions): overfilling it is ENG_ERR_NO_KV with
 * no sequence changed, and the engine works again after a free. */
static void
test_kv_exhaustion(void **state)
{
	(void)state;
	const size_t block = 2 * 2 * 16 * 2 * 32 * sizeof(float);   /* qwen3 tiny */
	eng *e = open_engine("models/qwen3-f32", 4 * block, 16, 0);
	assert_int_equal(eng_kv_blocks_total(e), 4);
	int32_t ids[64];
	fill_tokens(ids, 64, 11);
	struct eng_token out[4];
	int n;
	int a = eng_seq_new(e, ids, 40, NULL);     /* 3 blocks */
	int b = eng_seq_new(e, ids, 20, NULL);     /* 2 blocks */
	assert_true(a >= 0 && b >= 0);
	assert_int_equal(eng_step(e, out, 4, &n), ENG_ERR_NO_KV);
	assert_int_equal(eng_seq_len(e, a), 40);
	assert_int_equal(eng_seq_len(e, b), 20);
	assert_null(eng_seq_logits(e, a));
	assert_int_equal(eng_seq_prefill(e, b, NULL), ENG_ERR_NO_KV);
	assert_int_equal(eng_seq_free(e, a), 0);
	assert_int_equal(eng_step(e, out, 4, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(out[0].seq, b);
	assert_int_equal(eng_seq_len(e, b), 21);
	/* b grows to the pool's 64 positions, then runs out */
	int rc = 0, steps = 0;
	while ((rc = eng_step(e, out, 4, &n)) == 0)
		steps++;
	assert_int_equal(rc, ENG_ERR_NO_KV);
	assert_int_equal(eng_seq_len(e, b), 65);   /* 64 in the cache + 1 pending */
	assert_int_equal(steps, 64 - 20);   /* cache 20 -> 64, one position a step */
	/* a fork of a full sequence shares everything; freeing both empties it */
	int kid;
	assert_int_equal(eng_seq_fork(e, b, 1, &kid), 0);
	assert_int_equal(eng_kv_blocks_free(e), 0);
	assert_int_equal(eng_seq_free(e, b), 0);
	assert_int_equal(eng_kv_blocks_free(e), 0);
	assert_int_equal(eng_seq_free(e, kid), 0);
	assert_int_equal(eng_kv_blocks_free(e), 4);
	int c = eng_seq_new(e, ids, 5, NULL);
	assert_int_equal(eng_step(e, out, 4, &n), 0);
	assert_int_equal(out[0].seq, c);
	eng_destroy(e);
}

static void
test_bad_args(void **state)
{
	(void)state;
	eng *e = open_engine("models/qwen3-f32", 1 << 20, 16, 0);
	int32_t ids[4] = { 1, 2, 3, 4 }, bad[2] = { 5, VOCAB };
	struct eng_token out[4];
	int n, kids[2];
	struct samp_params sp = samp_default_params();

	assert_int_equal(eng_seq_new(e, ids, 0, NULL), ENG_ERR_INVALID);
	assert_int_equal(eng_seq_new(e, ids, -3, NULL), ENG_ERR_INVALID);
	assert_int_equal(eng_seq_new(e, NULL, 2, NULL), ENG_ERR_INVALID);
	assert_int_equal(eng_seq_new(e, bad, 2, NULL), ENG_ERR_INVALID);
	sp.top_p = 0.0f;
	assert_int_equal(eng_seq_new(e, ids, 2, &sp), ENG_ERR_INVALID);
	sp = samp_default_params(), sp.n_top = SAMP_MAX_TOP + 1;
	assert_int_equal(eng_seq_new(e, ids, 2, &sp), ENG_ERR_INVALID);
	sp = samp_default_params(), sp.temperature = -1.0f;
	assert_int_equal(eng_seq_new(e, ids, 2, &sp), ENG_ERR_INVALID);
	sp.temperature = NAN;
	assert_int_equal(eng_seq_new(e, ids, 2, &sp), ENG_ERR_INVALID);

	/* nothing was created by the failures above */
	assert_int_equal(eng_step(e, out, 4, &n), 0);
	assert_int_equal(n, 0);

	for (int id = -1; id <= 1000; id += 1001) {
		assert_int_equal(eng_seq_free(e, id), ENG_ERR_NOT_FOUND);
		assert_int_equal(eng_seq_append(e, id, ids, 2), ENG_ERR_NOT_FOUND);
		assert_int_equal(eng_seq_prefill(e, id, NULL), ENG_ERR_NOT_FOUND);
		assert_int_equal(eng_seq_fork(e, id, 1, kids), ENG_ERR_NOT_FOUND);
		assert_int_equal(eng_seq_len(e, id), ENG_ERR_NOT_FOUND);
		assert_int_equal(eng_seq_set_sampling(e, id, &sp), ENG_ERR_NOT_FOUND);
		assert_null(eng_seq_logits(e, id));
	}
	int s = eng_seq_new(e, ids, 4, NULL);
	assert_true(s >= 0);
	assert_int_equal(eng_seq_append(e, s, ids, 0), ENG_ERR_INVALID);
	assert_int_equal(eng_seq_append(e, s, ids, -1), ENG_ERR_INVALID);
	assert_int_equal(eng_seq_append(e, s, bad, 2), ENG_ERR_INVALID);
	assert_int_equal(eng_seq_fork(e, s, 0, kids), ENG_ERR_INVALID);
	assert_int_equal(eng_seq_fork(e, s, -2, kids), ENG_ERR_INVALID);
	assert_int_equal(eng_seq_fork(e, s, 1, NULL), ENG_ERR_INVALID);
	sp.top_k = -1;
	assert_int_equal(eng_seq_set_sampling(e, s, &sp), ENG_ERR_INVALID);
	assert_int_equal(eng_seq_set_sampling(e, s, NULL), ENG_ERR_INVALID);
	assert_int_equal(eng_step(e, NULL, 4, &n), ENG_ERR_INVALID);
	assert_int_equal(eng_step(e, out, 4, NULL), ENG_ERR_INVALID);
	assert_int_equal(eng_step(e, out, 0, &n), ENG_ERR_RANGE);
	assert_int_equal(eng_seq_len(e, s), 4);   /* the failures changed nothing */
	assert_int_equal(eng_step(e, out, 4, &n), 0);
	assert_int_equal(eng_seq_len(e, s), 5);
	eng_destroy(e);
}

/* The sequence table is full at max_seqs; a fork that does not fit makes
 * no child. */
static void
test_max_seqs(void **state)
{
	(void)state;
	char err[ENG_ERRLEN];
	struct eng_params p = eng_default_params();
	p.model_dir = tu_data("models/qwen3-f32");
	p.n_threads = 1;
	p.kv_bytes = 1 << 20;
	p.max_seqs = 3;
	eng *e = eng_create(&p, err, sizeof err);
	assert_non_null(e);
	int32_t ids[2] = { 1, 2 };
	int a = eng_seq_new(e, ids, 2, NULL), kids[2];
	assert_true(a >= 0);
	assert_int_equal(eng_seq_prefill(e, a, NULL), 0);
	int free0 = eng_kv_blocks_free(e);
	assert_int_equal(eng_seq_fork(e, a, 3, kids), ENG_ERR_RANGE);
	assert_int_equal(eng_seq_fork(e, a, 2, kids), 0);
	assert_int_equal(eng_seq_new(e, ids, 2, NULL), ENG_ERR_RANGE);
	assert_int_equal(eng_seq_free(e, kids[1]), 0);
	assert_int_equal(eng_seq_new(e, ids, 2, NULL), kids[1]);   /* ids are reused */
	assert_int_equal(eng_kv_blocks_free(e), free0);           /* the fork shares a's block */
	eng_destroy(e);
}

/* A scratch copy of qwen3-f32 (no tokenizer) whose config says
 * max_position_embeddings = max, or lacks the key when max is 0. */
static char *
model_with_max_pos(int max)
{
	char *dir = tu_tmpdir(), from[4096], to[4096];
	assert_non_null(dir);
	snprintf(from, sizeof from, "%s/model.safetensors", tu_data("models/qwen3-f32"));
	snprintf(to, sizeof to, "%s/model.safetensors", dir);
	assert_int_equal(tu_copy_file(from, to), 0);
	snprintf(from, sizeof from, "%s/config.json", tu_data("models/qwen3-f32"));
	snprintf(to, sizeof to, "%s/config.json", dir);
	json_t *c = json_load_file(from, 0, NULL);
	assert_non_null(c);
	if (max)
		json_object_set_new(c, "max_position_embeddings", json_integer(max));
	else
		json_object_del(c, "max_position_embeddings");
	assert_int_equal(json_dump_file(c, to, 0), 0);
	json_decref(c);
	return dir;
}

/* No sequence grows past max_position_embeddings: not at creation, not by
 * appending, not by a step's sampled token; a refused call changes nothing. */
static void
test_max_position(void **state)
{
	(void)state;
	char err[ENG_ERRLEN] = "";
	char *dir = model_with_max_pos(8);
	struct eng_params p = eng_default_params();
	p.model_dir = dir;
	p.n_threads = 2;
	p.kv_bytes = 1 << 20;
	eng *e = eng_create(&p, err, sizeof err);
	if (!e)
		fail_msg("eng_create: %s", err);
	assert_int_equal(eng_config(e)->max_position, 8);
	int32_t ids[300];
	fill_tokens(ids, 300, 11);
	struct eng_token out[3];
	int n = -1, kid;

	assert_int_equal(eng_seq_new(e, ids, 9, NULL), ENG_ERR_RANGE);
	int a = eng_seq_new(e, ids, 6, NULL), b = eng_seq_new(e, ids, 3, NULL);
	assert_true(a >= 0 && b >= 0);
	assert_int_equal(eng_seq_append(e, a, ids, 3), ENG_ERR_RANGE);
	assert_int_equal(eng_seq_len(e, a), 6);
	assert_int_equal(eng_seq_append(e, a, ids, 1), 0);
	assert_int_equal(eng_step(e, out, 3, &n), 0);            /* a: 8, b: 4 */
	assert_int_equal(n, 2);
	assert_int_equal(eng_seq_len(e, a), 8);
	assert_int_equal(eng_seq_len(e, b), 4);

	/* a is full: appending or stepping would make it 9 long */
	int free0 = eng_kv_blocks_free(e);
	assert_int_equal(eng_seq_append(e, a, ids, 1), ENG_ERR_RANGE);
	assert_int_equal(eng_step(e, out, 3, &n), ENG_ERR_RANGE);
	assert_int_equal(n, 0);
	assert_int_equal(eng_seq_len(e, a), 8);
	assert_int_equal(eng_seq_len(e, b), 4);
	assert_int_equal(eng_kv_blocks_free(e), free0);
	/* running its last token without growing is fine, and so is a fork */
	assert_int_equal(eng_seq_prefill(e, a, NULL), 0);
	assert_non_null(eng_seq_logits(e, a));
	assert_int_equal(eng_seq_fork(e, a, 1, &kid), 0);
	assert_int_equal(eng_seq_len(e, kid), 8);
	assert_int_equal(eng_seq_free(e, a), 0);
	assert_int_equal(eng_seq_free(e, kid), 0);
	assert_int_equal(eng_step(e, out, 3, &n), 0);            /* b goes on */
	assert_int_equal(n, 1);
	assert_int_equal(eng_seq_len(e, b), 5);
	eng_destroy(e);
	tu_rmtree(dir);
	free(dir);

	/* without the key there is no such limit (the tests' config says 256) */
	dir = model_with_max_pos(0);
	p.model_dir = dir;
	e = eng_create(&p, err, sizeof err);
	if (!e)
		fail_msg("eng_create: %s", err);
	assert_int_equal(eng_config(e)->max_position, 0);
	a = eng_seq_new(e, ids, 300, NULL);
	assert_true(a >= 0);
	assert_int_equal(eng_seq_append(e, a, ids, 300), 0);
	assert_int_equal(eng_seq_len(e, a), 600);
	eng_destroy(e);
	tu_rmtree(dir);
	free(dir);
}

static void
expect_create_fail(const struct eng_params *p, const char *needle)
{
	char err[ENG_ERRLEN] = "";
	eng *e = eng_create(p, err, sizeof err);
	assert_null(e);
	if (!strstr(err, needle))
		fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
	printf("# refused: %s\n", err);
}

static void
test_bad_model_dir(void **state)
{
	(void)state;
	struct eng_params p = eng_default_params();
	char path[4096];
	expect_create_fail(&p, "model");
	p.model_dir = "/nonexistent/braid-model";
	expect_create_fail(&p, "/nonexistent/braid-model");

	p.model_dir = tu_data("models/qwen3-f32");
	p.device = ENG_DEVICE_CUDA;
	expect_create_fail(&p, "CUDA");
	p.device = ENG_DEVICE_CPU;
	p.kv_bytes = 100;   /* less than one block */
	expect_create_fail(&p, "block");

	/* a copy of the model with a broken config, then a truncated
	 * safetensors, then a broken tokenizer */
	char *dir = tu_tmpdir();
	assert_non_null(dir);
	static const char *files[] = { "config.json", "model.safetensors", "tokenizer.json",
				       "tokenizer_config.json" };
	for (int i = 0; i < 4; i++) {
		char from[4096];
		snprintf(from, sizeof from, "%s/%s", tu_data("models/qwen3-f32"), files[i]);
		snprintf(path, sizeof path, "%s/%s", dir, files[i]);
		assert_int_equal(tu_copy_file(from, path), 0);
	}
	p = eng_default_params();
	p.model_dir = dir;
	p.kv_bytes = 1 << 20;
	eng *e = eng_create(&p, NULL, 0);   /* the copy is good */
	assert_non_null(e);
	eng_destroy(e);

	snprintf(path, sizeof path, "%s/tokenizer.json", dir);
	assert_int_equal(tu_write_file(path, "{\"model\": 3", 11), 0);
	expect_create_fail(&p, "tokenizer.json");

	snprintf(path, sizeof path, "%s/model.safetensors", dir);
	assert_int_equal(tu_write_file(path, "\x10\0\0\0\0\0\0\0{}", 10), 0);
	expect_create_fail(&p, dir);

	snprintf(path, sizeof path, "%s/config.json", dir);
	assert_int_equal(tu_write_file(path, "{\"architectures\": [", 19), 0);
	expect_create_fail(&p, "config.json");
	tu_rmtree(dir);
	free(dir);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_basics),
		cmocka_unit_test(test_matches_hf),
		cmocka_unit_test(test_fork_bitwise),
		cmocka_unit_test(test_fork_state),
		cmocka_unit_test(test_batch_equals_alone),
		cmocka_unit_test(test_seed_reproducible),
		cmocka_unit_test(test_kv_exhaustion),
		cmocka_unit_test(test_bad_args),
		cmocka_unit_test(test_max_seqs),
		cmocka_unit_test(test_max_position),
		cmocka_unit_test(test_bad_model_dir),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
