/* sampler.c - token sampling (temperature, top-k, min-p, top-p) with seeded
 * xoshiro256** generators, plus the model distribution's logprob, entropy and
 * top logprobs.  Pure functions of their arguments: any thread. */
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sampler.h"
#include "status.h"

/* Candidate ids are stored as floats in the second half of scratch (exact
 * for integers below 2^24), which keeps scratch a plain float array. */
#define SAMP_MAX_VOCAB (1 << 24)

/* Below this many elements the nucleus search sorts instead of partitioning. */
#define SAMP_SMALL 32

/* top_k up to this is kept in a sorted list during one scan. */
#define SAMP_LIST_K 64

/* Vectorisable passes work on blocks of SAMP_LANES elements with one
 * accumulator per lane; the draw walks sums of SAMP_CHUNK elements. */
#define SAMP_LANES 16
#define SAMP_CHUNK 256

/* The passes over the whole vocabulary are also built for AVX2+FMA and
 * picked at load time (twice as fast as baseline SSE2). */
#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define SAMP_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
#endif
#ifndef SAMP_CLONES
#define SAMP_CLONES
#endif

struct samp_params
samp_default_params(void)
{
	struct samp_params p = {
		.temperature = 1.0f,
		.top_k = 0,
		.top_p = 1.0f,
		.min_p = 0.0f,
		.seed = 0,
		.n_top = 0,
	};
	return p;
}

/* ---- random numbers --------------------------------------------------------- */

/* splitmix64's output function: a bijection on 64-bit words. */
static uint64_t
samp_mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t
samp_splitmix_next(uint64_t *x)
{
	*x += 0x9e3779b97f4a7c15ULL;
	return samp_mix64(*x);
}

void
samp_rng_seed(struct samp_rng *r, uint64_t seed)
{
	uint64_t x = seed;
	for (int i = 0; i < 4; i++)
		r->s[i] = samp_splitmix_next(&x);
	/* splitmix64 cannot give four zero words in a row, but the all-zero
	 * state is xoshiro's one fixed point, so make sure. */
	if ((r->s[0] | r->s[1] | r->s[2] | r->s[3]) == 0)
		r->s[0] = 1;
}

static uint64_t
samp_rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

uint64_t
samp_rng_next(struct samp_rng *r)
{
	uint64_t *s = r->s;
	uint64_t result = samp_rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = samp_rotl(s[3], 45);
	return result;
}

double
samp_rng_uniform(struct samp_rng *r)
{
	return (double)(samp_rng_next(r) >> 11) * 0x1.0p-53;
}

/* Children of one parent get distinct seeds: mix64 is a bijection and
 * (index + 1) * odd constant is a bijection of the index. */
uint64_t
samp_derive_seed(uint64_t parent, uint64_t index)
{
	uint64_t h = samp_mix64(parent ^ 0x6a09e667f3bcc909ULL);
	return samp_mix64(h + (index + 1) * 0x9e3779b97f4a7c15ULL);
}

/* ---- candidate arrays ----------------------------------------------------------
 * val[m] holds a score (scaled logit, later a weight), idf[m] the token id as
 * a float.  Candidate a comes before b when its score is larger, or equal with
 * a lower id; ids are distinct, so this is a strict total order. */

static inline bool
samp_before(const float *val, const float *idf, int a, int b)
{
	return val[a] > val[b] || (val[a] == val[b] && idf[a] < idf[b]);
}

static inline void
samp_swap(float *val, float *idf, int a, int b)
{
	float v = val[a], i = idf[a];
	val[a] = val[b];
	idf[a] = idf[b];
	val[b] = v;
	idf[b] = i;
}

/* Partition [lo, hi) around a pivot: candidates before it in the order go
 * first.  Returns the pivot's final index; *mass_before (if non-NULL) gets
 * the summed scores of the candidates placed before it.  The pivot position
 * is a hash of (lo, hi), so no input ordering makes it degrade
 * systematically, and no random number is consumed. */
static int
samp_partition(float *val, float *idf, int lo, int hi, double *mass_before)
{
	uint64_t h = samp_mix64(((uint64_t)(uint32_t)lo << 32) | (uint32_t)hi);
	int piv = lo + (int)(h % (uint64_t)(hi - lo));
	samp_swap(val, idf, piv, hi - 1);
	int store = lo;
	double mass = 0;
	for (int j = lo; j < hi - 1; j++) {
		if (samp_before(val, idf, j, hi - 1)) {
			mass += val[j];
			samp_swap(val, idf, j, store);
			store++;
		}
	}
	samp_swap(val, idf, store, hi - 1);
	if (mass_before)
		*mass_before = mass;
	return store;
}

/* Rearrange so that [0, k) holds the first k candidates of [0, m) in the
 * order (in no particular arrangement); 0 < k < m. */
static void
samp_select(float *val, float *idf, int m, int k)
{
	int lo = 0, hi = m;
	while (hi - lo > 1) {
		int p = samp_partition(val, idf, lo, hi, NULL);
		if (p == k || p == k - 1)
			return;
		if (p > k)
			hi = p;
		else
			lo = p + 1;
	}
}

static void
samp_sort(float *val, float *idf, int lo, int hi)
{
	for (int i = lo + 1; i < hi; i++)
		for (int j = i; j > lo && samp_before(val, idf, j, j - 1); j--)
			samp_swap(val, idf, j, j - 1);
}

/* val holds weights (>= 0) of m candidates.  Rearrange so that [0, c) is
 * the nucleus (the shortest prefix of the order whose weight reaches need)
 * and return c.  Only the partitions on the way to the boundary are done:
 * expected O(m), no full sort. */
static int
samp_nucleus(float *val, float *idf, int m, double need)
{
	double acc = 0; /* weight of [0, lo) */
	int lo = 0, hi = m;
	while (hi - lo > SAMP_SMALL) {
		double before;
		int p = samp_partition(val, idf, lo, hi, &before);
		if (acc + before >= need) {
			hi = p;
		} else if (acc + before + val[p] >= need) {
			return p + 1;
		} else {
			acc += before + val[p];
			lo = p + 1;
		}
	}
	samp_sort(val, idf, lo, hi);
	for (int j = lo; j < hi; j++) {
		acc += val[j];
		if (acc >= need)
			return j + 1;
	}
	return hi; /* rounding: the whole remaining range */
}


/* ---- vectorisable passes ---------------------------------------------------------
 * Plain C written so that gcc -O2 vectorises the fixed-length inner loops
 * (no branches, no calls), with one double accumulator per lane. */

static inline float
samp_mask(float v, int keep)
{
	union { float f; uint32_t u; } a = { .f = v };
	a.u &= -(uint32_t)keep;
	return a.f;
}

/* exp(x) for x <= 0, including -inf: 0 below -87, relative error under
 * 3e-7.  x = n ln2 + r with |r| <= ln2/2; e^r by its degree-6 Taylor
 * polynomial; 2^n built in the exponent bits.  Out-of-range lanes compute
 * garbage that the final mask clears. */
static inline float
samp_expf(float x)
{
	const float shift = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
	union { float f; uint32_t u; } t, s;
	t.f = x * 1.44269504f + shift;
	float n = t.f - shift;
	float r = x - n * 0.693145751953125f - n * 1.428606765330187e-6f;
	float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 +
		  r * (1.0f / 120 + r * (1.0f / 720))))));
	s.u = (t.u - 0x4b400000u + 127u) << 23; /* 2^n */
	return samp_mask(p * s.f, x >= -87.0f);
}

/* The largest logit and its lowest index; *bad is set if any logit is NaN
 * or +inf. */
SAMP_CLONES static float
samp_max(const float *restrict l, int n, int *arg, int *bad)
{
	float m[SAMP_LANES];
	int32_t at[SAMP_LANES], b[SAMP_LANES];
	for (int j = 0; j < SAMP_LANES; j++) {
		m[j] = -INFINITY;
		at[j] = j;
		b[j] = 0;
	}
	int i = 0;
	for (; i + SAMP_LANES <= n; i += SAMP_LANES)
		for (int j = 0; j < SAMP_LANES; j++) {
			float x = l[i + j];
			int32_t gt = x > m[j];
			b[j] |= (x != x) | (x == INFINITY);
			m[j] = gt ? x : m[j];
			at[j] = gt ? i + j : at[j];
		}
	float mx = -INFINITY;
	int best = 0, any = 0;
	for (int j = 0; j < SAMP_LANES; j++) {
		any |= b[j];
		if (m[j] > mx || (m[j] == mx && at[j] < best)) {
			mx = m[j];
			best = at[j];
		}
	}
	for (; i < n; i++) {
		float x = l[i];
		any |= (x != x) | (x == INFINITY);
		if (x > mx) {
			mx = x;
			best = i;
		}
	}
	*arg = best;
	*bad = any;
	return mx;
}

/* Does any of x[SAMP_LANES] exceed thr?  Lets the scans below skip whole
 * blocks with one vector compare. */
static inline int
samp_any_above(const float *x, float thr)
{
	int any = 0;
	for (int j = 0; j < SAMP_LANES; j++)
		any |= x[j] > thr;
	return any;
}

/* With e_i = exp(l_i - mx): *s = sum e_i and *sx = sum e_i (l_i - mx). */
SAMP_CLONES static void
samp_moments(const float *restrict l, int n, float mx, double *s, double *sx)
{
	double a[SAMP_LANES] = { 0 }, ax[SAMP_LANES] = { 0 };
	int i = 0;
	for (; i + SAMP_LANES <= n; i += SAMP_LANES) {
		float x[SAMP_LANES], e[SAMP_LANES];
		for (int j = 0; j < SAMP_LANES; j++) {
			x[j] = l[i + j] - mx;
			e[j] = samp_expf(x[j]);
			/* e * x with e = 0 must be 0, also for x = -inf */
			x[j] = x[j] > -87.0f ? x[j] : 0.0f;
		}
		for (int j = 0; j < SAMP_LANES; j++) {
			a[j] += e[j];
			ax[j] += (double)(e[j] * x[j]);
		}
	}
	double ss = 0, ssx = 0;
	for (int j = 0; j < SAMP_LANES; j++) {
		ss += a[j];
		ssx += ax[j];
	}
	for (; i < n; i++) {
		float x = l[i] - mx;
		float e = samp_expf(x);
		if (e > 0.0f) {
			ss += e;
			ssx += (double)(e * x);
		}
	}
	*s = ss;
	*sx = ssx;
}

/* Sampling weights w_i = exp((l_i - mx) / t) = p_i / p_max, 0 where below
 * min_p.  Sums of SAMP_CHUNK weights go to chunk[]; returns their total
 * (summed in double in chunk order, as samp_walk_chunks() walks them). */
SAMP_CLONES static double
samp_weights(const float *restrict l, int n, float mx, float t, float min_p,
	     float *restrict w, float *restrict chunk)
{
	double total = 0;
	for (int c = 0; c * SAMP_CHUNK < n; c++) {
		int i = c * SAMP_CHUNK;
		int end = n - i < SAMP_CHUNK ? n : i + SAMP_CHUNK;
		double a[SAMP_LANES] = { 0 };
		for (; i + SAMP_LANES <= end; i += SAMP_LANES) {
			float v[SAMP_LANES];
			for (int j = 0; j < SAMP_LANES; j++) {
				float e = samp_expf((l[i + j] - mx) / t);
				v[j] = samp_mask(e, e >= min_p);
			}
			for (int j = 0; j < SAMP_LANES; j++) {
				w[i + j] = v[j];
				a[j] += v[j];
			}
		}
		double sum = 0;
		for (int j = 0; j < SAMP_LANES; j++)
			sum += a[j];
		for (; i < end; i++) {
			float e = samp_expf((l[i] - mx) / t);
			w[i] = e >= min_p ? e : 0.0f;
			sum += w[i];
		}
		chunk[c] = (float)sum;
		total += chunk[c];
	}
	return total;
}

/* ---- drawing ------------------------------------------------------------------------ */

/* Index j in [0, m) where the running sum of w passes u; the last positive
 * weight if rounding leaves u beyond the sum; -1 if no weight is positive. */
static int
samp_walk(const float *w, int m, double u)
{
	double acc = 0;
	int last = -1;
	for (int j = 0; j < m; j++) {
		if (w[j] <= 0.0f)
			continue;
		last = j;
		acc += w[j];
		if (u < acc)
			break;
	}
	return last;
}

/* No top-k, no top-p: walk the chunk sums, then the weights of one chunk. */
static int32_t
samp_walk_chunks(const float *w, const float *chunk, int n, double u)
{
	double acc = 0;
	int last = -1;
	for (int c = 0; c * SAMP_CHUNK < n; c++) {
		if (chunk[c] <= 0.0f)
			continue;
		last = c;
		if (u < acc + chunk[c])
			break;
		acc += chunk[c];
	}
	if (last < 0)
		return -1;
	int b = last * SAMP_CHUNK;
	int m = n - b < SAMP_CHUNK ? n - b : SAMP_CHUNK;
	int j = samp_walk(w + b, m, u - acc);
	return j < 0 ? -1 : b + j;
}

/* The n most likely tokens, most likely first, ties to the lowest id, by
 * insertion into a short sorted list (n <= SAMP_MAX_TOP). */
static void
samp_top(const float *logits, int n_vocab, int n, int32_t *ids, float *vals)
{
	int have = 0;
	for (int i = 0; i < n_vocab; i++) {
		float thr = have == n ? vals[n - 1] : -INFINITY;
		if (have == n && i % SAMP_LANES == 0 && i + SAMP_LANES <= n_vocab &&
		    !samp_any_above(logits + i, thr)) {
			i += SAMP_LANES - 1;
			continue;
		}
		float v = logits[i];
		if (!(v > thr) && have == n)
			continue;
		int j = have < n ? have++ : n - 1;
		for (; j > 0 && v > vals[j - 1]; j--) {
			vals[j] = vals[j - 1];
			ids[j] = ids[j - 1];
		}
		vals[j] = v;
		ids[j] = i;
	}
}

/* 0 < k <= SAMP_LIST_K: the k most likely tokens straight from the logits
 * (no pass over the whole vocabulary computes a weight), then min-p and the
 * nucleus on that sorted list, then the draw. */
static int32_t
samp_draw_list(const float *logits, int n, float mx, const struct samp_params *p, int k,
	       double u01)
{
	float lw[SAMP_LIST_K];
	int32_t lid[SAMP_LIST_K];
	samp_top(logits, n, k, lid, lw);
	double total = 0;
	for (int j = 0; j < k; j++) {
		float e = samp_expf((lw[j] - mx) / p->temperature);
		lw[j] = e >= p->min_p ? e : 0.0f;
		total += lw[j];
	}
	int m = k;
	if (p->top_p < 1.0f) {
		double need = p->top_p * total, acc = 0;
		for (int j = 0; j < k; j++) {
			acc += lw[j];
			if (acc >= need) {
				m = j + 1;
				break;
			}
		}
		total = acc;
	}
	int j = samp_walk(lw, m, u01 * total);
	return j < 0 ? -1 : lid[j];
}

/* Mass and number of the weights above theta. */
SAMP_CLONES static double
samp_above(const float *restrict w, int n, float theta, int *count)
{
	double a[SAMP_LANES] = { 0 };
	int32_t c[SAMP_LANES] = { 0 };
	int i = 0;
	for (; i + SAMP_LANES <= n; i += SAMP_LANES)
		for (int j = 0; j < SAMP_LANES; j++) {
			int32_t gt = w[i + j] > theta;
			a[j] += samp_mask(w[i + j], gt);
			c[j] += gt;
		}
	double mass = 0;
	int cnt = 0;
	for (int j = 0; j < SAMP_LANES; j++) {
		mass += a[j];
		cnt += c[j];
	}
	for (; i < n; i++)
		if (w[i] > theta) {
			mass += w[i];
			cnt++;
		}
	*count = cnt;
	return mass;
}

/* A weight theta such that every token at or below it is certainly cut by
 * top-k (k > 0: at least k tokens lie above) or by top-p (k = 0: the
 * tokens above already weigh need).  Tries a few cut-offs, each one cheap
 * pass, so that peaked distributions leave only a few candidates. */
static float
samp_cutoff(const float *w, int n, int k, double need, double wsum)
{
	static const float tries[] = { 1e-3f, 1e-4f, 1e-5f, 1e-6f, 1e-7f };
	for (size_t t = 0; t < sizeof tries / sizeof tries[0]; t++) {
		int count;
		float theta = k > 0 ? tries[t] : (float)(tries[t] * wsum);
		double mass = samp_above(w, n, theta, &count);
		if (k > 0 ? count >= k : mass >= need)
			return theta;
	}
	/* Without top-k, tokens of weight <= theta together weigh at most
	 * n * theta = (1 - top_p) * wsum / 2, so those above reach need. */
	if (k == 0)
		return (float)(0.5 * (wsum - need) / n);
	return 0.0f;
}

/* The general case (top-p without top-k, or a large top-k): gather the
 * candidates, select the top k, find the nucleus by partitioning. */
static int32_t
samp_draw_general(float *w, float *idf, int n, double wsum, int k, float top_p,
		  double u01)
{
	double need = top_p * wsum;
	float theta = samp_cutoff(w, n, k, need, wsum);
	int m = 0;
	for (int i = 0; i < n; i++) {
		if (i % SAMP_LANES == 0 && i + SAMP_LANES <= n && !samp_any_above(w + i, theta)) {
			i += SAMP_LANES - 1;
			continue;
		}
		if (w[i] > theta) {
			w[m] = w[i]; /* in place: m <= i */
			idf[m] = (float)i;
			m++;
		}
	}
	if (k > 0 && k < m) {
		samp_select(w, idf, m, k);
		m = k;
	}
	double total = 0;
	for (int j = 0; j < m; j++)
		total += w[j];
	if (top_p < 1.0f && m > 1) {
		if (k > 0)
			need = top_p * total;
		m = samp_nucleus(w, idf, m, need);
		total = 0;
		for (int j = 0; j < m; j++)
			total += w[j];
	}
	int j = samp_walk(w, m, u01 * total);
	return j < 0 ? -1 : (int32_t)idf[j];
}

/* Draw from the filtered distribution of logits / temperature (see the
 * header for the order of the filters); mx is the largest logit. */
static int32_t
samp_draw(const float *logits, int n, float mx, const struct samp_params *p,
	  struct samp_rng *r, float *scratch)
{
	float *w = scratch;           /* (n) weights p_i / p_max            */
	float *aux = scratch + n;     /* (n) chunk sums or candidate ids    */
	/* min-p is applied with the weights: p_i >= min_p * p_max <=> w_i >=
	 * min_p.  It keeps an upper set of the order, as top-k does, so the
	 * survivors are the same as with top-k applied first. */
	double u01 = samp_rng_uniform(r);
	int k = p->top_k < n ? p->top_k : 0;
	if (k > 0 && k <= SAMP_LIST_K)
		return samp_draw_list(logits, n, mx, p, k, u01);
	double wsum = samp_weights(logits, n, mx, p->temperature, p->min_p, w, aux);
	if (k == 0 && p->top_p >= 1.0f)
		return samp_walk_chunks(w, aux, n, u01 * wsum);
	return samp_draw_general(w, aux, n, wsum, k, p->top_p, u01);
}

/* ---- the model distribution ----------------------------------------------------- */

static int
samp_check(const struct samp_params *p)
{
	if (!(p->temperature >= 0.0f) || isinf(p->temperature))
		return ENG_ERR_INVALID;
	if (p->top_k < 0)
		return ENG_ERR_INVALID;
	if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
		return ENG_ERR_INVALID;
	if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
		return ENG_ERR_INVALID;
	if (p->n_top < 0 || p->n_top > SAMP_MAX_TOP)
		return ENG_ERR_INVALID;
	return ENG_OK;
}

int
samp_sample(const float *logits, int n_vocab, const struct samp_params *p,
	    struct samp_rng *r, float *scratch, struct samp_result *out)
{
	if (!logits || !p || !out || n_vocab < 1 || n_vocab > SAMP_MAX_VOCAB)
		return ENG_ERR_INVALID;
	int rc = samp_check(p);
	if (rc != ENG_OK)
		return rc;
	bool greedy = p->temperature == 0.0f;
	if (!greedy && (!r || !scratch))
		return ENG_ERR_INVALID;

	/* No distribution with NaN or +inf logits, or with all of them -inf. */
	int arg, bad;
	float mx = samp_max(logits, n_vocab, &arg, &bad);
	if (bad || mx == -INFINITY)
		return ENG_ERR_INVALID;

	/* log Z = mx + log S and H = log S - sum(e_i (l_i - mx)) / S, with
	 * e_i = exp(l_i - mx) and S = sum e_i. */
	double s, sx;
	samp_moments(logits, n_vocab, mx, &s, &sx);
	double log_s = log(s);
	double log_z = mx + log_s;

	out->n_top = p->n_top < n_vocab ? p->n_top : n_vocab;
	if (out->n_top > 0) {
		samp_top(logits, n_vocab, out->n_top, out->top_ids, out->top_logprobs);
		for (int j = 0; j < out->n_top; j++)
			out->top_logprobs[j] = (float)(out->top_logprobs[j] - log_z);
	}

	int32_t tok = arg;
	if (!greedy) {
		tok = samp_draw(logits, n_vocab, mx, p, r, scratch);
		if (tok < 0) /* cannot happen: the argmax has weight 1 */
			tok = arg;
	}
	out->token = tok;
	out->logprob = (float)(logits[tok] - log_z);
	double h = log_s - sx / s;
	out->entropy = (float)(h > 0 ? h : 0);
	return ENG_OK;
}
