/* test_cuda_sample.c - sampling on the GPU (gpu/cuda/sample.cu) against
 * samp_sample() and a float64 reference of the filtered distribution; times
 * 64 rows of a 151,936 vocabulary.  Every check runs with all rows in one
 * launch (one CTA a row) and with a few rows a launch (rows split over
 * thread-block clusters).  Exits 77 (skipped) where there is no GPU. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "backend.h"
#include "cuda/cuda.h"
#include "gpucheck.h"
#include "sampler.h"
#include "status.h"

static int n_fail;

static void
fail(const char *fmt, ...)
{
	if (++n_fail > 40)
		return;
	va_list ap;
	va_start(ap, fmt);
	printf("FAIL: ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
}

/* ---- logits ----------------------------------------------------------------- */

enum { SL_NORMAL3, SL_NORMAL1, SL_PEAKED, SL_FLAT, SL_TIES, SL_NEGINF, SL_NAN, SL_ALLNEG, N_SLOTS };
static const char *const slot_name[N_SLOTS] = {
	"normal*3", "normal*1", "peaked", "flat", "ties", "-inf", "NaN", "all -inf",
};

static double
gauss(struct samp_rng *r)
{
	double u1 = samp_rng_uniform(r), u2 = samp_rng_uniform(r);
	return sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2);
}

static void
make_slot(float *l, int V, int kind, uint64_t seed)
{
	struct samp_rng r;
	samp_rng_seed(&r, seed);
	double scale = kind == SL_NORMAL1 ? 1.0 : kind == SL_PEAKED || kind == SL_TIES ? 2.0 : 3.0;
	for (int i = 0; i < V; i++)
		l[i] = (float)(scale * gauss(&r));
	switch (kind) {
	case SL_PEAKED:
		l[V / 3] += 50.0f;
		break;
	case SL_FLAT:
		for (int i = 0; i < V; i++)
			l[i] = 0.25f;
		break;
	case SL_TIES: {
		float mx = -INFINITY;
		for (int i = 0; i < V; i++)
			mx = l[i] > mx ? l[i] : mx;
		/* three equal maxima, not at the lowest ids, and a few equal
		 * values lower down (ties inside top-k) */
		l[V - 1] = l[V / 2] = l[(7 * V) / 10] = mx + 1.0f;
		for (int i = 1; i < V && i < 12; i++)
			l[(i * 37) % V] = mx - 0.5f;
		break;
	}
	case SL_NEGINF:
		for (int i = 0; i < V; i += 3)
			l[i] = -INFINITY;
		if (V == 1)
			l[0] = 0.0f;
		break;
	case SL_NAN:
		l[V / 2] = NAN;
		break;
	case SL_ALLNEG:
		for (int i = 0; i < V; i++)
			l[i] = -INFINITY;
		break;
	}
}

/* ---- parameter sets ----------------------------------------------------------- */

struct pset {
	float t;
	int k;
	float p;
	float minp;
	int n_top;
};

static const struct pset psets[] = {
	{ 0.0f, 0, 1.0f, 0.0f, 20 },     /* greedy */
	{ 0.0f, 5, 0.5f, 0.1f, 3 },      /* greedy ignores the filters */
	{ 0.5f, 0, 1.0f, 0.0f, 20 },     /* temperature only */
	{ 1.0f, 0, 1.0f, 0.0f, 5 },
	{ 1.5f, 0, 1.0f, 0.0f, 0 },      /* plain (one pass over the logits) */
	{ 1.0f, 0, 1.0f, 0.0f, 0 },
	{ 0.7f, 0, 1.0f, 0.0f, 0 },
	{ 1.0f, 1, 1.0f, 0.0f, 20 },     /* top-k */
	{ 1.0f, 5, 1.0f, 0.0f, 20 },
	{ 0.7f, 50, 1.0f, 0.0f, 20 },
	{ 1.0f, 1000, 1.0f, 0.0f, 20 },
	{ 1.0f, 0, 0.5f, 0.0f, 20 },     /* top-p */
	{ 0.8f, 0, 0.9f, 0.0f, 20 },
	{ 1.0f, 0, 0.95f, 0.0f, 20 },
	{ 1.0f, 0, 1.0f, 0.05f, 20 },    /* min-p */
	{ 1.2f, 0, 1.0f, 0.1f, 20 },
	{ 0.7f, 50, 0.9f, 0.0f, 20 },    /* combinations */
	{ 1.0f, 1000, 0.95f, 0.05f, 20 },
	{ 1.5f, 0, 0.9f, 0.1f, 20 },
	{ 0.8f, 5, 1.0f, 0.1f, 20 },
	{ 1.0f, 20, 0.8f, 0.02f, 10 },
	{ -1.0f, 0, 1.0f, 0.0f, 20 },    /* bad parameters */
	{ NAN, 0, 1.0f, 0.0f, 20 },
	{ INFINITY, 0, 1.0f, 0.0f, 20 },
	{ 1.0f, -1, 1.0f, 0.0f, 20 },
	{ 1.0f, 0, 0.0f, 0.0f, 20 },
	{ 1.0f, 0, 1.5f, 0.0f, 20 },
	{ 1.0f, 0, 1.0f, -0.1f, 20 },
	{ 1.0f, 0, 1.0f, 2.0f, 20 },
	{ 1.0f, 0, 1.0f, 0.0f, 21 },
};
#define N_PSETS ((int)(sizeof psets / sizeof psets[0]))

static struct samp_params
to_params(const struct pset *s, uint64_t seed)
{
	struct samp_params p = samp_default_params();
	p.temperature = s->t;
	p.top_k = s->k;
	p.top_p = s->p;
	p.min_p = s->minp;
	p.n_top = s->n_top;
	p.seed = seed;
	return p;
}

/* The u samp_sample would draw from a generator seeded with seed. */
static double
draw_u(uint64_t seed)
{
	struct samp_rng r;
	samp_rng_seed(&r, seed);
	return samp_rng_uniform(&r);
}

static struct cuda_samp_row
to_row(const struct pset *s, int slot, double u)
{
	struct cuda_samp_row row = {
		.slot = slot, .top_k = s->k, .n_top = s->n_top, .temperature = s->t,
		.top_p = s->p, .min_p = s->minp, .u = u,
	};
	return row;
}

/* ---- float64 reference --------------------------------------------------------- */

static const float *g_sort_l;

static int
cmp_order(const void *a, const void *b)
{
	int i = *(const int *)a, j = *(const int *)b;
	float x = g_sort_l[i], y = g_sort_l[j];
	if (x != y)
		return x > y ? -1 : 1;
	return i < j ? -1 : i > j;
}

/* ids by logit, largest first, ties to the lower id */
static void
make_order(const float *l, int V, int *order)
{
	for (int i = 0; i < V; i++)
		order[i] = i;
	g_sort_l = l;
	qsort(order, V, sizeof *order, cmp_order);
}

/* The kept distribution of params p, sorted and filtered in float64:
 * w[i] the weight of token i (0 if not kept), *total their sum; loose[i] is
 * 1 where rounding at a min-p or top-p boundary could keep token i. */
static void
ref_kept(const float *l, int V, const int *order, const struct cuda_samp_row *p, double *w,
	 unsigned char *loose, double *total)
{
	double mx = l[order[0]], T = p->temperature;
	int k = p->top_k > 0 && p->top_k < V ? p->top_k : V;
	double ts = 0, tl = 0;
	for (int r = 0; r < V; r++) {
		int i = order[r];
		double wi = l[i] == -INFINITY ? 0.0 : exp(((double)l[i] - mx) / T);
		w[i] = r < k && wi > 0 && wi >= p->min_p ? wi : 0.0;
		loose[i] = r < k && wi > 0 && wi >= p->min_p * (1.0 - 1e-5);
		ts += w[i];
		tl += loose[i] ? wi : 0.0;
	}
	if (p->top_p < 1.0f) {
		double need = p->top_p * ts, needl = p->top_p * tl * (1.0 + 1e-5), acc = 0;
		float lb = -INFINITY, lbl = -INFINITY;
		for (int r = 0; r < V; r++) {
			int i = order[r];
			if (w[i] > 0) {
				acc += w[i];
				if (acc >= need) {
					lb = l[i];
					break;
				}
			}
		}
		acc = 0;
		for (int r = 0; r < V; r++) {
			int i = order[r];
			if (loose[i]) {
				acc += l[i] == -INFINITY ? 0.0 : exp(((double)l[i] - mx) / T);
				if (acc >= needl) {
					lbl = l[i];
					break;
				}
			}
		}
		ts = 0;
		for (int i = 0; i < V; i++) {
			if (l[i] < lb)
				w[i] = 0.0;
			ts += w[i];
			loose[i] = w[i] > 0 || (loose[i] && l[i] >= lbl);
		}
	}
	*total = ts;
}

static double
ref_log_z(const float *l, int V)
{
	double mx = -INFINITY, s = 0;
	for (int i = 0; i < V; i++)
		mx = l[i] > mx ? l[i] : mx;
	for (int i = 0; i < V; i++)
		if (l[i] > -INFINITY)
			s += exp((double)l[i] - mx);
	return mx + log(s);
}

/* Distance of target from the nearest end of token t's interval in the
 * id-order cumulative sum of w. */
static double
boundary_dist(const double *w, int t, double target)
{
	double c = 0;
	for (int i = 0; i < t; i++)
		c += w[i];
	double a = fabs(c - target), b = fabs(c + w[t] - target);
	return a < b ? a : b;
}

/* ---- the GPU ------------------------------------------------------------------- */

#define CU(call)                                                                   \
	do {                                                                       \
		cudaError_t e_ = (call);                                           \
		if (e_ != cudaSuccess) {                                           \
			printf("%s: %s\n", #call, cudaGetErrorString(e_));         \
			exit(1);                                                   \
		}                                                                  \
	} while (0)

/* Rows a launch: 0 all in one (then sampling runs one CTA a row), else
 * launches of at most this many rows (few rows run on thread-block
 * clusters that split each row). */
static int g_batch;

/* rows[n] on device logits (n_slots, V) through cuda_sample_launch, g_batch
 * rows a launch. */
static void
gpu_sample(const float *d_logits, int V, const struct cuda_samp_row *rows, int n,
	   struct samp_result *out, int32_t *status)
{
	struct cuda_samp_row *d_rows;
	struct samp_result *d_out;
	int32_t *d_status;
	size_t sb = cuda_sample_scratch_bytes(n, V);
	void *d_scratch = NULL;
	CU(cudaMalloc((void **)&d_rows, n * sizeof *rows));
	CU(cudaMalloc((void **)&d_out, n * sizeof *out));
	CU(cudaMalloc((void **)&d_status, n * sizeof *status));
	if (sb)
		CU(cudaMalloc(&d_scratch, sb));
	CU(cudaMemcpy(d_rows, rows, n * sizeof *rows, cudaMemcpyHostToDevice));
	for (int s = 0; s < n; s += g_batch ? g_batch : n) {
		const int m = g_batch && g_batch < n - s ? g_batch : n - s;
		int rc = cuda_sample_launch(d_logits, V, d_rows + s, m, d_out + s, d_status + s, d_scratch, sb, NULL);
		if (rc != 0) {
			printf("cuda_sample_launch: %s\n", eng_strerror(rc));
			exit(1);
		}
	}
	CU(cudaDeviceSynchronize());
	CU(cudaMemcpy(out, d_out, n * sizeof *out, cudaMemcpyDeviceToHost));
	CU(cudaMemcpy(status, d_status, n * sizeof *status, cudaMemcpyDeviceToHost));
	cudaFree(d_rows);
	cudaFree(d_out);
	cudaFree(d_status);
	cudaFree(d_scratch);
}

static float *
upload(const float *h, size_t n)
{
	float *d;
	CU(cudaMalloc((void **)&d, n * sizeof *d));
	CU(cudaMemcpy(d, h, n * sizeof *d, cudaMemcpyHostToDevice));
	return d;
}

/* ---- every slot kind with every parameter set ------------------------------------ */

struct stats {
	int rows, invalid, greedy, same_walk, same_walk_mismatch, filtered;
	double d_lp, d_ent, d_top;
};

static void
check_row(const float *l, int V, const int *order, const struct cuda_samp_row *row,
	  const struct pset *ps, uint64_t seed, const struct samp_result *g, int32_t gst,
	  double *w, unsigned char *loose, float *scratch, struct stats *st, const char *what)
{
	struct samp_params sp = to_params(ps, seed);
	struct samp_rng rng;
	samp_rng_seed(&rng, seed);
	struct samp_result c;
	int crc = samp_sample(l, V, &sp, &rng, scratch, &c);
	st->rows++;
	if (crc != 0) {
		st->invalid++;
		if (gst != ENG_ERR_INVALID)
			fail("%s: CPU says invalid, GPU status %d", what, gst);
		return;
	}
	if (gst != 0) {
		fail("%s: GPU status %d, CPU ok", what, gst);
		return;
	}
	if (g->token < 0 || g->token >= V) {
		fail("%s: GPU token %d out of range", what, g->token);
		return;
	}
	/* the model distribution's statistics */
	double log_z = ref_log_z(l, V);
	double lp = (double)l[g->token] - log_z;
	double d = fabs(g->logprob - lp);
	if (!(d <= 1e-4) && !(isinf(lp) && g->logprob == lp))
		fail("%s: logprob %.6f, reference %.6f", what, g->logprob, lp);
	if (d > st->d_lp && isfinite(d))
		st->d_lp = d;
	d = fabs(g->entropy - c.entropy);
	if (!(d <= 1e-4))
		fail("%s: entropy %.6f, CPU %.6f", what, g->entropy, c.entropy);
	if (d > st->d_ent)
		st->d_ent = d;
	if (g->n_top != c.n_top) {
		fail("%s: n_top %d, CPU %d", what, g->n_top, c.n_top);
	} else {
		for (int j = 0; j < c.n_top; j++) {
			if (g->top_ids[j] != c.top_ids[j])
				fail("%s: top %d id %d, CPU %d", what, j, g->top_ids[j], c.top_ids[j]);
			d = fabs(g->top_logprobs[j] - c.top_logprobs[j]);
			if (isinf(c.top_logprobs[j]) && g->top_logprobs[j] == c.top_logprobs[j])
				d = 0;
			if (!(d <= 1e-4))
				fail("%s: top %d logprob %.6f, CPU %.6f", what, j, g->top_logprobs[j],
				     c.top_logprobs[j]);
			if (d > st->d_top)
				st->d_top = d;
		}
	}
	/* the token */
	if (ps->t == 0.0f) {
		st->greedy++;
		if (g->token != c.token)
			fail("%s: greedy token %d, CPU %d", what, g->token, c.token);
		return;
	}
	double total;
	ref_kept(l, V, order, row, w, loose, &total);
	if (!loose[g->token])
		fail("%s: token %d (logit %g) is not in the kept set", what, g->token, l[g->token]);
	int k = ps->k > 0 && ps->k < V ? ps->k : 0;
	if (k == 0 && ps->p >= 1.0f) {
		/* the CPU walks in id order too: the same token for the same u */
		st->same_walk++;
		if (g->token != c.token) {
			st->same_walk_mismatch++;
			double dist = boundary_dist(w, c.token, row->u * total);
			if (dist > 1e-5 * total)
				fail("%s: token %d, CPU %d, u*total %.9g is %.3g from a boundary", what,
				     g->token, c.token, row->u * total, dist / total);
		}
	} else {
		st->filtered++;
	}
}

static void
test_all_rows(int V)
{
	float *l = malloc((size_t)N_SLOTS * V * sizeof *l);
	int *order = malloc((size_t)N_SLOTS * V * sizeof *order);
	double *w = malloc((size_t)V * sizeof *w);
	unsigned char *loose = malloc((size_t)V);
	float *scratch = malloc(2 * (size_t)V * sizeof *scratch);
	int n = N_SLOTS * N_PSETS + 2;
	struct cuda_samp_row *rows = malloc(n * sizeof *rows);
	uint64_t *seeds = malloc(n * sizeof *seeds);
	struct samp_result *out = malloc(n * sizeof *out);
	int32_t *status = malloc(n * sizeof *status);
	if (!l || !order || !w || !loose || !scratch || !rows || !seeds || !out || !status) {
		fail("out of memory");
		exit(1);
	}
	for (int s = 0; s < N_SLOTS; s++) {
		make_slot(l + (size_t)s * V, V, s, 1000 + 17 * (uint64_t)V + s);
		if (s != SL_NAN)
			make_order(l + (size_t)s * V, V, order + (size_t)s * V);
	}
	for (int s = 0; s < N_SLOTS; s++)
		for (int j = 0; j < N_PSETS; j++) {
			int r = s * N_PSETS + j;
			seeds[r] = 0x5eed0000ULL + (uint64_t)V * 1000 + r;
			rows[r] = to_row(&psets[j], s, draw_u(seeds[r]));
		}
	/* two rows naming slots that do not exist */
	rows[n - 2] = to_row(&psets[2], -1, 0.5);
	rows[n - 1] = to_row(&psets[2], N_SLOTS, 0.5);

	/* small vocabularies through cuda_sample_host (one logits row per
	 * sampled row), the large one through cuda_sample_launch */
	const char *api;
	if ((size_t)V * n <= ((size_t)1 << 24)) {
		api = "cuda_sample_host";
		float *rep = malloc((size_t)n * V * sizeof *rep);
		struct cuda_samp_row *hr = malloc(n * sizeof *hr);
		if (!rep || !hr)
			exit(1);
		for (int r = 0; r < n; r++) {
			hr[r] = rows[r];
			if (r < n - 2) {
				memcpy(rep + (size_t)r * V, l + (size_t)rows[r].slot * V, V * sizeof *rep);
				hr[r].slot = r;
			} else {
				memset(rep + (size_t)r * V, 0, V * sizeof *rep);
				hr[r].slot = r == n - 2 ? -1 : n;
			}
		}
		char err[256] = "";
		for (int s = 0; s < n; s += g_batch ? g_batch : n) {
			const int m = g_batch && g_batch < n - s ? g_batch : n - s;
			for (int r = s; r < s + m; r++)   /* slots relative to the launch's first row */
				if (hr[r].slot >= 0 && hr[r].slot < n)
					hr[r].slot -= s;
				else if (hr[r].slot >= 0)
					hr[r].slot = m;
			int rc = cuda_sample_host(rep + (size_t)s * V, m, V, hr + s, out + s, status + s, err, sizeof err);
			if (rc != 0) {
				printf("cuda_sample_host: %s %s\n", eng_strerror(rc), err);
				exit(1);
			}
		}
		free(rep);
		free(hr);
	} else {
		api = "cuda_sample_launch";
		float *d = upload(l, (size_t)N_SLOTS * V);
		/* the launch cannot know n_slots: only the negative slot is checked */
		gpu_sample(d, V, rows, n - 1, out, status);
		status[n - 1] = ENG_ERR_INVALID;
		cudaFree(d);
	}

	struct stats st = { 0 };
	for (int r = 0; r < n - 2; r++) {
		int s = rows[r].slot, j = r % N_PSETS;
		char what[160];
		snprintf(what, sizeof what, "V %d slot %s params (T %g k %d p %g min_p %g n_top %d)", V,
			 slot_name[s], psets[j].t, psets[j].k, psets[j].p, psets[j].minp, psets[j].n_top);
		check_row(l + (size_t)s * V, V, order + (size_t)s * V, &rows[r], &psets[j], seeds[r],
			  &out[r], status[r], w, loose, scratch, &st, what);
	}
	for (int r = n - 2; r < n; r++)
		if (status[r] != ENG_ERR_INVALID)
			fail("V %d: row with slot %d: status %d, want invalid", V, rows[r].slot, status[r]);
	printf("V %6d (%s): %d rows, %d invalid as on the CPU; %d greedy = CPU; "
	       "id-order draws: %d of %d = CPU token; %d filtered draws in the reference kept set\n",
	       V, api, st.rows, st.invalid, st.greedy, st.same_walk - st.same_walk_mismatch, st.same_walk,
	       st.filtered);
	printf("           largest differences: logprob %.3g, entropy %.3g, top logprobs %.3g\n", st.d_lp,
	       st.d_ent, st.d_top);
	if (st.same_walk_mismatch * 50 > st.same_walk)
		fail("V %d: %d of %d id-order draws differ from the CPU", V, st.same_walk_mismatch,
		     st.same_walk);
	free(l);
	free(order);
	free(w);
	free(loose);
	free(scratch);
	free(rows);
	free(seeds);
	free(out);
	free(status);
}

/* ---- the distribution over many u ------------------------------------------------ */

/* N evenly spaced u on one row: every token kept, each draw where the
 * reference's id-order cumulative sum puts u, and total variation < 0.02
 * (per token for small kept sets, else over 50 buckets of equal mass). */
static void
test_distribution(int V, int kind, const struct pset *ps)
{
	enum { N = 2000, NB = 50 };
	float *l = malloc((size_t)V * sizeof *l);
	int *order = malloc((size_t)V * sizeof *order);
	double *w = malloc((size_t)V * sizeof *w), *cum = malloc((size_t)V * sizeof *cum);
	unsigned char *loose = malloc((size_t)V);
	int *count = calloc((size_t)V, sizeof *count);
	struct cuda_samp_row *rows = malloc(N * sizeof *rows);
	struct samp_result *out = malloc(N * sizeof *out);
	int32_t *status = malloc(N * sizeof *status);
	if (!l || !order || !w || !cum || !loose || !count || !rows || !out || !status)
		exit(1);
	make_slot(l, V, kind, 77 + V + kind);
	make_order(l, V, order);
	for (int j = 0; j < N; j++)
		rows[j] = to_row(ps, 0, (j + 0.5) / N);
	float *d = upload(l, V);
	gpu_sample(d, V, rows, N, out, status);
	cudaFree(d);
	double total;
	ref_kept(l, V, order, &rows[0], w, loose, &total);
	int n_kept = 0;
	double c = 0;
	for (int i = 0; i < V; i++) {
		c += w[i];
		cum[i] = c;
		n_kept += w[i] > 0;
	}
	int bad = 0, off = 0;
	double worst = 0;
	for (int j = 0; j < N; j++) {
		int t = out[j].token;
		if (status[j] != 0 || t < 0 || t >= V || !loose[t]) {
			bad++;
			continue;
		}
		count[t]++;
		double target = rows[j].u * total, lo = t ? cum[t - 1] : 0.0, hi = cum[t];
		double dist = target < lo ? lo - target : target > hi ? target - hi : 0.0;
		if (dist / total > worst)
			worst = dist / total;
		off += dist > 1e-5 * total;
	}
	double tv = 0;
	if (n_kept <= 40) {
		for (int i = 0; i < V; i++)
			tv += fabs((double)count[i] / N - w[i] / total);
	} else {
		double bref[NB] = { 0 }, bemp[NB] = { 0 };
		for (int i = 0; i < V; i++) {
			if (w[i] <= 0 && count[i] == 0)
				continue;
			int b = (int)((cum[i] - 0.5 * w[i]) / total * NB);
			b = b < 0 ? 0 : b >= NB ? NB - 1 : b;
			bref[b] += w[i] / total;
			bemp[b] += (double)count[i] / N;
		}
		for (int b = 0; b < NB; b++)
			tv += fabs(bemp[b] - bref[b]);
	}
	tv *= 0.5;
	printf("V %6d %-9s T %.2g k %4d p %.2g min_p %.2g: %5d kept, %d draws: total variation %.4f%s, "
	       "%d off the id-order CDF (worst %.2g of the total), %d not kept\n",
	       V, slot_name[kind], ps->t, ps->k, ps->p, ps->minp, n_kept, N, tv,
	       n_kept <= 40 ? "" : " (50 buckets)", off, worst, bad);
	if (bad)
		fail("V %d %s: %d draws not in the kept set or failed", V, slot_name[kind], bad);
	if (!(tv < 0.02))
		fail("V %d %s: total variation %.4f", V, slot_name[kind], tv);
	if (off * 100 > N)
		fail("V %d %s: %d draws off the id-order CDF", V, slot_name[kind], off);
	free(l);
	free(order);
	free(w);
	free(cum);
	free(loose);
	free(count);
	free(rows);
	free(out);
	free(status);
}

/* ---- timing ------------------------------------------------------------------------- */

static void
time_launches(void)
{
	enum { V = 151936, R = 64, ITERS = 20 };
	static const struct { const char *name; struct pset ps; } cases[] = {
		{ "greedy, 20 top", { 0.0f, 0, 1.0f, 0.0f, 20 } },
		{ "T 1, 20 top", { 1.0f, 0, 1.0f, 0.0f, 20 } },
		{ "T 0.7 top-p 0.95, 20 top", { 0.7f, 0, 0.95f, 0.0f, 20 } },
		{ "T 0.7 top-k 50 top-p 0.9, 20 top", { 0.7f, 50, 0.9f, 0.0f, 20 } },
		{ "T 0.6 top-k 20 top-p 0.95 min-p 0.05, 0 top", { 0.6f, 20, 0.95f, 0.05f, 0 } },
	};
	float *l = malloc((size_t)R * V * sizeof *l);
	if (!l)
		exit(1);
	for (int r = 0; r < R; r++)
		make_slot(l + (size_t)r * V, V, SL_NORMAL3, 9000 + r);
	float *d = upload(l, (size_t)R * V);
	free(l);
	struct cuda_samp_row rows[R];
	struct cuda_samp_row *d_rows;
	struct samp_result *d_out;
	int32_t *d_status;
	CU(cudaMalloc((void **)&d_rows, sizeof rows));
	CU(cudaMalloc((void **)&d_out, R * sizeof *d_out));
	CU(cudaMalloc((void **)&d_status, R * sizeof *d_status));
	cudaEvent_t e0, e1;
	CU(cudaEventCreate(&e0));
	CU(cudaEventCreate(&e1));
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		for (int r = 0; r < R; r++)
			rows[r] = to_row(&cases[c].ps, r, draw_u(r + 1));
		CU(cudaMemcpy(d_rows, rows, sizeof rows, cudaMemcpyHostToDevice));
		if (cuda_sample_launch(d, V, d_rows, R, d_out, d_status, NULL, 0, NULL) != 0)
			exit(1);
		CU(cudaEventRecord(e0, 0));
		for (int it = 0; it < ITERS; it++)
			if (cuda_sample_launch(d, V, d_rows, R, d_out, d_status, NULL, 0, NULL) != 0)
				exit(1);
		CU(cudaEventRecord(e1, 0));
		CU(cudaEventSynchronize(e1));
		float ms = 0;
		CU(cudaEventElapsedTime(&ms, e0, e1));
		printf("time: %d rows x %d, %-44s %7.1f us per launch\n", R, V, cases[c].name,
		       1000.0 * ms / ITERS);
	}
	cudaEventDestroy(e0);
	cudaEventDestroy(e1);
	cudaFree(d_rows);
	cudaFree(d_out);
	cudaFree(d_status);
	cudaFree(d);
}

int
main(void)
{
	if (!gc_start())
		return GC_SKIP;
	static const int vocabs[] = { 1, 3, 400, 4096, 151936 };
	/* every row in one launch (one CTA a row), then 4 rows a launch (rows
	 * split over clusters of CTAs where the vocabulary is large enough) */
	static const int batches[] = { 0, 4 };
	for (size_t b = 0; b < 2; b++) {
		g_batch = batches[b];
		printf("-- %s\n", g_batch ? "4 rows a launch" : "all rows in one launch");
		for (size_t v = 0; v < sizeof vocabs / sizeof vocabs[0]; v++)
			test_all_rows(vocabs[v]);
	}
	g_batch = 0;

	static const struct { int V, kind; struct pset ps; } dist[] = {
		{ 400, SL_TIES, { 1.0f, 5, 1.0f, 0.0f, 0 } },
		{ 4096, SL_NORMAL3, { 0.7f, 50, 1.0f, 0.0f, 0 } },
		{ 4096, SL_NORMAL3, { 0.8f, 0, 0.9f, 0.0f, 0 } },
		{ 4096, SL_PEAKED, { 1.0f, 0, 1.0f, 0.0f, 0 } },
		{ 4096, SL_NEGINF, { 1.5f, 0, 0.95f, 0.01f, 0 } },
		{ 4096, SL_FLAT, { 1.0f, 100, 0.5f, 0.0f, 0 } },
		{ 151936, SL_NORMAL3, { 1.0f, 0, 1.0f, 0.0f, 0 } },
		{ 151936, SL_NORMAL3, { 1.0f, 0, 0.5f, 0.0f, 0 } },
		{ 151936, SL_NORMAL3, { 1.0f, 1000, 0.95f, 0.05f, 0 } },
		{ 151936, SL_NORMAL1, { 1.0f, 0, 1.0f, 0.1f, 0 } },
		{ 151936, SL_NORMAL3, { 1.5f, 20, 0.8f, 0.02f, 0 } },
	};
	for (size_t b = 0; b < 2; b++) {
		g_batch = b ? 8 : 0;
		printf("-- %s\n", g_batch ? "8 draws a launch" : "all draws in one launch");
		for (size_t j = 0; j < sizeof dist / sizeof dist[0]; j++)
			test_distribution(dist[j].V, dist[j].kind, &dist[j].ps);
	}
	g_batch = 0;

	time_launches();
	if (n_fail)
		printf("%d failure(s)\n", n_fail);
	else
		printf("all GPU sampling checks passed\n");
	return n_fail ? 1 : 0;
}
