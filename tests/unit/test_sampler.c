/* test_sampler.c - the sampler against a slow float64 reference: model
 * statistics, greedy ties, seeding, filters (exclusion and chi-square). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sampler.h"
#include "status.h"

/* ---- test helpers ------------------------------------------------------------ */

/* A generator for test data, independent of the one under test (LCG + a
 * Box-Muller normal). */
static uint64_t lcg_state;

static double
lcg_uniform(void)
{
	lcg_state = lcg_state * 6364136223846793005ULL + 1442695040888963407ULL;
	return (double)(lcg_state >> 11) * (1.0 / 9007199254740992.0);
}

static double
lcg_normal(void)
{
	double u = lcg_uniform(), v = lcg_uniform();
	if (u < 1e-300)
		u = 1e-300;
	return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

static float *
random_logits(int n, double scale, uint64_t seed)
{
	lcg_state = seed;
	float *l = malloc((size_t)n * sizeof *l);
	assert_non_null(l);
	for (int i = 0; i < n; i++)
		l[i] = (float)(scale * lcg_normal());
	return l;
}

/* Indices sorted by logit descending, ties by id ascending (full sort). */
static const float *sort_logits;

static int
cmp_desc(const void *a, const void *b)
{
	int i = *(const int *)a, j = *(const int *)b;
	if (sort_logits[i] > sort_logits[j])
		return -1;
	if (sort_logits[i] < sort_logits[j])
		return 1;
	return (i > j) - (i < j);
}

static int *
sorted_order(const float *l, int n)
{
	int *ord = malloc((size_t)n * sizeof *ord);
	assert_non_null(ord);
	for (int i = 0; i < n; i++)
		ord[i] = i;
	sort_logits = l;
	qsort(ord, (size_t)n, sizeof *ord, cmp_desc);
	return ord;
}

/* The filtered, renormalised sampling distribution, in double, done the
 * obvious way: full sort, then top-k, min-p, top-p on the sorted list.
 * q[n] receives it; before[n] (if non-NULL) the renormalised mass (after
 * top-k and min-p) of candidates ahead of each token in the order. */
static void
ref_dist(const float *l, int n, const struct samp_params *p, double *q, double *before)
{
	int *ord = sorted_order(l, n);
	double t = p->temperature, mx = l[ord[0]];
	double *w = calloc((size_t)n, sizeof *w);
	assert_non_null(w);
	int kept = 0;
	for (int r = 0; r < n; r++) {
		int i = ord[r];
		double wi = exp(((double)l[i] - mx) / t);
		if (p->top_k > 0 && r >= p->top_k)
			wi = 0;
		if (wi < p->min_p) /* p_i / p_max = wi */
			wi = 0;
		w[i] = wi;
		if (wi > 0)
			kept = r + 1;
	}
	double tot = 0;
	for (int i = 0; i < n; i++)
		tot += w[i];
	double cum = 0;
	int cut = kept;
	for (int r = 0; r < kept; r++) {
		int i = ord[r];
		if (before)
			before[i] = cum / tot;
		cum += w[i];
		if (cum / tot >= p->top_p && cut == kept)
			cut = r + 1;
	}
	for (int r = kept; r < n; r++)
		if (before)
			before[ord[r]] = 2; /* never allowed */
	for (int r = cut; r < n; r++)
		w[ord[r]] = 0;
	tot = 0;
	for (int i = 0; i < n; i++)
		tot += w[i];
	for (int i = 0; i < n; i++)
		q[i] = w[i] / tot;
	free(w);
	free(ord);
}

/* ---- random numbers ----------------------------------------------------------- */

static void
test_rng_seeding(void **state)
{
	(void)state;
	struct samp_rng a, b, c;
	samp_rng_seed(&a, 42);
	samp_rng_seed(&b, 42);
	samp_rng_seed(&c, 43);
	int differ = 0;
	for (int i = 0; i < 1000; i++) {
		uint64_t x = samp_rng_next(&a), y = samp_rng_next(&b), z = samp_rng_next(&c);
		assert_true(x == y);
		differ += x != z;
	}
	assert_true(differ > 990);

	/* seed 0 must not be a degenerate state */
	samp_rng_seed(&a, 0);
	uint64_t first = samp_rng_next(&a), second = samp_rng_next(&a);
	assert_true(first != 0 || second != 0);
	assert_true(first != second);

	/* uniform: range, mean and a 16-bin chi-square */
	samp_rng_seed(&a, 7);
	int bins[16] = { 0 };
	double sum = 0;
	const int N = 160000;
	for (int i = 0; i < N; i++) {
		double u = samp_rng_uniform(&a);
		assert_true(u >= 0.0 && u < 1.0);
		sum += u;
		bins[(int)(u * 16)]++;
	}
	assert_true(fabs(sum / N - 0.5) < 0.005);
	double chi = 0, e = N / 16.0;
	for (int k = 0; k < 16; k++)
		chi += (bins[k] - e) * (bins[k] - e) / e;
	assert_true(chi < 50); /* df 15: p < 1e-5 */
}

static void
test_derive_seed(void **state)
{
	(void)state;
	enum { K = 2000 };
	uint64_t *s = malloc(K * sizeof *s);
	assert_non_null(s);
	for (int i = 0; i < K; i++) {
		s[i] = samp_derive_seed(1234, (uint64_t)i);
		assert_true(s[i] != 1234);
		assert_true(s[i] == samp_derive_seed(1234, (uint64_t)i));
		assert_true(s[i] != samp_derive_seed(1235, (uint64_t)i));
		for (int j = 0; j < i; j++)
			assert_true(s[i] != s[j]);
	}
	/* children's streams differ from each other */
	struct samp_rng a, b;
	samp_rng_seed(&a, samp_derive_seed(99, 1));
	samp_rng_seed(&b, samp_derive_seed(99, 2));
	assert_true(samp_rng_next(&a) != samp_rng_next(&b));
	free(s);
}

/* ---- the model distribution ----------------------------------------------------- */

static void
check_stats(const float *l, int n, int n_top, double tol)
{
	/* float64 reference: log Z by a max-shifted sum, entropy from p log p */
	double mx = -INFINITY;
	for (int i = 0; i < n; i++)
		if (l[i] > mx)
			mx = l[i];
	double s = 0;
	for (int i = 0; i < n; i++)
		s += exp((double)l[i] - mx);
	double lz = mx + log(s), h = 0;
	for (int i = 0; i < n; i++) {
		double lp = (double)l[i] - lz;
		if (isfinite(lp))
			h -= exp(lp) * lp;
	}
	int *ord = sorted_order(l, n);

	struct samp_params p = samp_default_params();
	p.n_top = n_top;
	float *scratch = malloc(2 * (size_t)n * sizeof *scratch);
	assert_non_null(scratch);
	struct samp_rng r;
	samp_rng_seed(&r, 5);
	for (int rep = 0; rep < 3; rep++) {
		struct samp_result out;
		p.temperature = rep == 0 ? 0.0f : rep == 1 ? 1.0f : 0.5f;
		assert_int_equal(samp_sample(l, n, &p, &r, scratch, &out), ENG_OK);
		assert_true(out.token >= 0 && out.token < n);
		assert_true(fabs(out.logprob - ((double)l[out.token] - lz)) < tol * (1 + fabs(lz)));
		assert_true(fabs(out.entropy - h) < tol * (1 + h));
		int want = n_top < n ? n_top : n;
		assert_int_equal(out.n_top, want);
		for (int j = 0; j < want; j++) {
			assert_int_equal(out.top_ids[j], ord[j]);
			assert_true(fabs(out.top_logprobs[j] - ((double)l[ord[j]] - lz)) <
				    tol * (1 + fabs(lz)));
		}
	}
	free(scratch);
	free(ord);
}

static void
test_stats_reference(void **state)
{
	(void)state;
	static const int sizes[] = { 1, 2, 7, 20, 21, 1000, 151936 };
	for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
		int n = sizes[k];
		float *l = random_logits(n, 3.0, 100 + k);
		check_stats(l, n, SAMP_MAX_TOP, 1e-5);
		check_stats(l, n, 5, 1e-5);
		free(l);
	}
	/* large offsets, -inf entries and duplicated values */
	float *l = random_logits(5000, 8.0, 77);
	for (int i = 0; i < 5000; i++)
		l[i] += 1000.0f;
	for (int i = 0; i < 5000; i += 7)
		l[i] = -INFINITY;
	for (int i = 1; i < 5000; i += 50)
		l[i] = l[i + 1];
	check_stats(l, 5000, SAMP_MAX_TOP, 1e-5);
	check_stats(l, 5000, 0, 1e-5);
	free(l);

	/* a nearly one-hot distribution: entropy near 0, logprob near 0 */
	float one[4] = { 50.0f, 0.0f, 0.0f, 0.0f };
	check_stats(one, 4, 4, 1e-6);
}

static void
test_greedy(void **state)
{
	(void)state;
	float l[8] = { 0.5f, 3.0f, -1.0f, 3.0f, 2.0f, 3.0f, -INFINITY, 1.0f };
	struct samp_params p = samp_default_params();
	p.temperature = 0;
	p.n_top = 4;
	struct samp_rng r, before;
	samp_rng_seed(&r, 3);
	before = r;
	struct samp_result out;
	assert_int_equal(samp_sample(l, 8, &p, &r, NULL, &out), ENG_OK);
	assert_int_equal(out.token, 1);
	assert_memory_equal(&r, &before, sizeof r); /* no random number drawn */
	/* ties in the top list: lowest id first */
	assert_int_equal(out.top_ids[0], 1);
	assert_int_equal(out.top_ids[1], 3);
	assert_int_equal(out.top_ids[2], 5);
	assert_int_equal(out.top_ids[3], 4);
	assert_float_equal(out.top_logprobs[0], out.logprob, 0);
	/* greedy needs neither generator nor scratch */
	assert_int_equal(samp_sample(l, 8, &p, NULL, NULL, &out), ENG_OK);
	assert_int_equal(out.token, 1);

	/* random argmax positions, including the last */
	for (int k = 0; k < 50; k++) {
		float *v = random_logits(3000, 1.0, 500 + k);
		int pos = (int)(lcg_uniform() * 3000);
		if (k == 0)
			pos = 2999;
		v[pos] = 10.0f;
		assert_int_equal(samp_sample(v, 3000, &p, NULL, NULL, &out), ENG_OK);
		assert_int_equal(out.token, pos);
		free(v);
	}

	/* min_p = 1 and top_k = 1 keep only the argmax (lowest id on ties) */
	float scratch[16];
	p.temperature = 1.0f;
	p.min_p = 1.0f;
	for (int i = 0; i < 200; i++) {
		assert_int_equal(samp_sample(l, 8, &p, &r, scratch, &out), ENG_OK);
		assert_true(out.token == 1 || out.token == 3 || out.token == 5);
	}
	p.min_p = 0;
	p.top_k = 1;
	for (int i = 0; i < 200; i++) {
		assert_int_equal(samp_sample(l, 8, &p, &r, scratch, &out), ENG_OK);
		assert_int_equal(out.token, 1);
	}
}

static void
test_invalid(void **state)
{
	(void)state;
	float l[4] = { 1, 2, 3, 4 };
	float scratch[8];
	struct samp_rng r;
	samp_rng_seed(&r, 1);
	struct samp_result out;
	struct samp_params p = samp_default_params();
	assert_int_equal(samp_sample(l, 4, &p, &r, scratch, &out), ENG_OK);

	struct samp_params bad[12];
	for (int i = 0; i < 12; i++)
		bad[i] = samp_default_params();
	bad[0].temperature = -0.1f;
	bad[1].temperature = NAN;
	bad[2].temperature = INFINITY;
	bad[3].top_p = 0.0f;
	bad[4].top_p = 1.01f;
	bad[5].top_p = NAN;
	bad[6].min_p = -0.01f;
	bad[7].min_p = 1.5f;
	bad[8].min_p = NAN;
	bad[9].n_top = -1;
	bad[10].n_top = SAMP_MAX_TOP + 1;
	bad[11].top_k = -3;
	for (int i = 0; i < 12; i++)
		assert_int_equal(samp_sample(l, 4, &bad[i], &r, scratch, &out), ENG_ERR_INVALID);

	float nan_l[4] = { 1, NAN, 3, 4 };
	float inf_l[4] = { 1, INFINITY, 3, 4 };
	float ninf_l[4] = { -INFINITY, -INFINITY, -INFINITY, -INFINITY };
	assert_int_equal(samp_sample(nan_l, 4, &p, &r, scratch, &out), ENG_ERR_INVALID);
	p.temperature = 0;
	assert_int_equal(samp_sample(nan_l, 4, &p, &r, scratch, &out), ENG_ERR_INVALID);
	assert_int_equal(samp_sample(inf_l, 4, &p, &r, scratch, &out), ENG_ERR_INVALID);
	assert_int_equal(samp_sample(ninf_l, 4, &p, &r, scratch, &out), ENG_ERR_INVALID);
	p.temperature = 1;
	assert_int_equal(samp_sample(l, 0, &p, &r, scratch, &out), ENG_ERR_INVALID);
	assert_int_equal(samp_sample(NULL, 4, &p, &r, scratch, &out), ENG_ERR_INVALID);
	assert_int_equal(samp_sample(l, 4, NULL, &r, scratch, &out), ENG_ERR_INVALID);
	assert_int_equal(samp_sample(l, 4, &p, NULL, scratch, &out), ENG_ERR_INVALID);
	assert_int_equal(samp_sample(l, 4, &p, &r, NULL, &out), ENG_ERR_INVALID);
	assert_int_equal(samp_sample(l, 4, &p, &r, scratch, NULL), ENG_ERR_INVALID);

	/* n_top larger than the vocabulary clamps */
	p.n_top = SAMP_MAX_TOP;
	assert_int_equal(samp_sample(l, 4, &p, &r, scratch, &out), ENG_OK);
	assert_int_equal(out.n_top, 4);
	for (int j = 0; j < 4; j++)
		assert_int_equal(out.top_ids[j], 3 - j);
	/* edge values that are valid */
	p.top_p = 1e-6f;
	p.min_p = 1.0f;
	assert_int_equal(samp_sample(l, 4, &p, &r, scratch, &out), ENG_OK);
	assert_int_equal(out.token, 3);
}

/* ---- sampling -------------------------------------------------------------------- */

static int *
draw_counts(const float *l, int n, const struct samp_params *p, int draws)
{
	int *cnt = calloc((size_t)n, sizeof *cnt);
	float *scratch = malloc(2 * (size_t)n * sizeof *scratch);
	assert_non_null(cnt);
	assert_non_null(scratch);
	struct samp_rng r;
	samp_rng_seed(&r, p->seed);
	for (int d = 0; d < draws; d++) {
		struct samp_result out;
		assert_int_equal(samp_sample(l, n, p, &r, scratch, &out), ENG_OK);
		assert_true(out.token >= 0 && out.token < n);
		cnt[out.token]++;
	}
	free(scratch);
	return cnt;
}

static void
test_seed_sequences(void **state)
{
	(void)state;
	int n = 500;
	float *l = random_logits(n, 1.0, 9);
	float *scratch = malloc(2 * (size_t)n * sizeof *scratch);
	assert_non_null(scratch);
	struct samp_params p = samp_default_params();
	p.top_p = 0.9f;
	int32_t seq[3][200];
	uint64_t seeds[3] = { 11, 11, 12 };
	for (int s = 0; s < 3; s++) {
		struct samp_rng r;
		samp_rng_seed(&r, seeds[s]);
		for (int i = 0; i < 200; i++) {
			struct samp_result out;
			assert_int_equal(samp_sample(l, n, &p, &r, scratch, &out), ENG_OK);
			seq[s][i] = out.token;
		}
	}
	assert_memory_equal(seq[0], seq[1], sizeof seq[0]);
	int differ = 0;
	for (int i = 0; i < 200; i++)
		differ += seq[0][i] != seq[2][i];
	assert_true(differ > 150);

	/* exactly one uniform per sampled token: the generator advances once */
	struct samp_rng r, shadow;
	samp_rng_seed(&r, 5);
	samp_rng_seed(&shadow, 5);
	struct samp_result out;
	assert_int_equal(samp_sample(l, n, &p, &r, scratch, &out), ENG_OK);
	samp_rng_next(&shadow);
	assert_memory_equal(&r, &shadow, sizeof r);
	free(scratch);
	free(l);
}

/* Chi-square of counts against q over the support; counts outside it fail. */
static void
check_chi_square(const int *cnt, const double *q, int n, int draws)
{
	double chi = 0;
	int df = -1;
	for (int i = 0; i < n; i++) {
		if (q[i] == 0) {
			assert_int_equal(cnt[i], 0);
			continue;
		}
		double e = q[i] * draws;
		chi += (cnt[i] - e) * (cnt[i] - e) / e;
		df++;
	}
	if (df <= 0)
		return;
	/* generous: mean df, sd sqrt(2 df); allow ~6 sd */
	double limit = df + 6 * sqrt(2.0 * df) + 10;
	if (chi > limit)
		fail_msg("chi-square %.1f > %.1f (df %d)", chi, limit, df);
}

static void
test_distribution(void **state)
{
	(void)state;
	/* boost: that many tokens (spread over the vocabulary) get +6, a
	 * peaked distribution like a language model's */
	struct {
		int n;
		double scale;
		int boost;
		float t, top_p, min_p;
		int top_k;
	} cases[] = {
		{ 40, 1.5, 0, 1.0f, 1.0f, 0.0f, 0 },
		{ 40, 1.5, 0, 0.7f, 1.0f, 0.0f, 0 },
		{ 40, 1.5, 0, 1.6f, 1.0f, 0.0f, 0 },
		{ 40, 1.5, 0, 1.0f, 1.0f, 0.0f, 7 },
		{ 40, 1.5, 0, 1.0f, 1.0f, 0.1f, 0 },
		{ 40, 1.5, 0, 1.0f, 0.8f, 0.0f, 0 },
		{ 40, 1.5, 0, 0.8f, 0.9f, 0.02f, 12 },
		{ 40, 1.5, 0, 1.0f, 1.0f, 0.3f, 20 },   /* min-p on the top-k list */
		{ 300, 0.7, 0, 1.0f, 0.6f, 0.0f, 0 },   /* nucleus > 32: partitions */
		{ 300, 0.7, 0, 1.2f, 0.7f, 0.0f, 150 }, /* top-k by selection, then top-p */
		{ 300, 0.7, 0, 1.0f, 1.0f, 0.3f, 90 },
		{ 1000, 0.5, 0, 1.3f, 1.0f, 0.0f, 0 },  /* several chunks to walk */
		{ 1000, 0.5, 0, 0.9f, 1.0f, 0.0f, 64 },
		{ 3000, 1.0, 12, 1.0f, 0.9f, 0.0f, 0 }, /* first cut-off suffices */
		{ 3000, 1.0, 12, 1.0f, 1.0f, 0.0f, 100 },
		{ 3000, 1.0, 12, 0.7f, 0.95f, 0.0f, 20 },
	};
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		int n = cases[c].n;
		float *l = random_logits(n, cases[c].scale, 1000 + c);
		for (int b = 0; b < cases[c].boost; b++)
			l[(b * 977 + 13) % n] += 6.0f;
		struct samp_params p = samp_default_params();
		p.temperature = cases[c].t;
		p.top_p = cases[c].top_p;
		p.min_p = cases[c].min_p;
		p.top_k = cases[c].top_k;
		p.seed = 31 + c;
		double *q = malloc((size_t)n * sizeof *q);
		assert_non_null(q);
		ref_dist(l, n, &p, q, NULL);
		int draws = n >= 1000 ? 20000 : 60000;
		int *cnt = draw_counts(l, n, &p, draws);
		check_chi_square(cnt, q, n, draws);
		free(cnt);
		free(q);
		free(l);
	}
}

static void
test_exclusion(void **state)
{
	(void)state;
	/* A real vocabulary size: drawn tokens must survive every filter.  A
	 * token is allowed when top-k and min-p keep it and the mass ahead of
	 * it (renormalised) is below top_p (a hair of rounding allowed). */
	int n = 151936;
	float *l = random_logits(n, 2.0, 4242);
	struct {
		float t, top_p, min_p;
		int top_k;
	} cases[] = {
		{ 1.0f, 0.9f, 0.0f, 0 },
		{ 0.6f, 1.0f, 0.0f, 40 },
		{ 1.0f, 1.0f, 0.05f, 0 },
		{ 0.8f, 0.95f, 0.01f, 500 },
		{ 1.3f, 0.5f, 0.0f, 0 },
		{ 1.0f, 1.0f, 0.2f, 50 },
	};
	double *q = malloc((size_t)n * sizeof *q);
	double *before = malloc((size_t)n * sizeof *before);
	assert_non_null(q);
	assert_non_null(before);
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		struct samp_params p = samp_default_params();
		p.temperature = cases[c].t;
		p.top_p = cases[c].top_p;
		p.min_p = cases[c].min_p;
		p.top_k = cases[c].top_k;
		p.seed = 77 + c;
		ref_dist(l, n, &p, q, before);
		int *cnt = draw_counts(l, n, &p, 400);
		int distinct = 0;
		for (int i = 0; i < n; i++) {
			if (!cnt[i])
				continue;
			distinct++;
			if (!(before[i] < p.top_p + 1e-6))
				fail_msg("case %zu: token %d drawn %d times, mass ahead %.8f", c, i,
					 cnt[i], before[i]);
		}
		assert_true(distinct > 5); /* it does sample, not argmax */
		free(cnt);
	}
	free(before);
	free(q);
	free(l);
}

static void
test_temperature(void **state)
{
	(void)state;
	int n = 30;
	float *l = random_logits(n, 1.0, 55);
	int *ord = sorted_order(l, n);
	int top = ord[0];
	double freq[4];
	float temps[4] = { 0.25f, 0.5f, 1.0f, 2.0f };
	for (int k = 0; k < 4; k++) {
		struct samp_params p = samp_default_params();
		p.temperature = temps[k];
		p.seed = 3;
		int *cnt = draw_counts(l, n, &p, 20000);
		freq[k] = cnt[top] / 20000.0;
		free(cnt);
	}
	for (int k = 1; k < 4; k++)
		assert_true(freq[k - 1] > freq[k] + 0.01); /* sharper at lower t */

	/* very low temperature: always the argmax; very high: near uniform */
	struct samp_params p = samp_default_params();
	p.temperature = 1e-4f;
	int *cnt = draw_counts(l, n, &p, 2000);
	assert_int_equal(cnt[top], 2000);
	free(cnt);
	p.temperature = 1e4f;
	cnt = draw_counts(l, n, &p, 30000);
	double *q = malloc((size_t)n * sizeof *q);
	assert_non_null(q);
	for (int i = 0; i < n; i++)
		q[i] = 1.0 / n;
	check_chi_square(cnt, q, n, 30000);
	free(q);
	free(cnt);
	free(ord);
	free(l);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rng_seeding),
		cmocka_unit_test(test_derive_seed),
		cmocka_unit_test(test_stats_reference),
		cmocka_unit_test(test_greedy),
		cmocka_unit_test(test_invalid),
		cmocka_unit_test(test_seed_sequences),
		cmocka_unit_test(test_distribution),
		cmocka_unit_test(test_exclusion),
		cmocka_unit_test(test_temperature),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
