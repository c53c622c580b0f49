/* sampler.h - token sampling with per-sequence seeded randomness, and the
 * confidence statistics of each step (samp_).  Pure CPU code; each call uses
 * only its arguments, so any thread may call it. */
#ifndef BRAID_SAMPLER_H
#define BRAID_SAMPLER_H

#include <stdint.h>

#define SAMP_MAX_TOP 20

struct samp_params {
	float temperature;   /* 0 = greedy (argmax); default 1.0              */
	int top_k;           /* keep the k most likely; 0 = off               */
	float top_p;         /* nucleus mass in (0,1]; 1 = off                */
	float min_p;         /* drop p < min_p * p_max; 0 = off               */
	uint64_t seed;       /* seeds this sequence's generator               */
	int n_top;           /* top logprobs to report, 0..SAMP_MAX_TOP       */
};

struct samp_params samp_default_params(void);

/* xoshiro256** state; one per sequence, advanced only by that sequence. */
struct samp_rng {
	uint64_t s[4];
};

void samp_rng_seed(struct samp_rng *r, uint64_t seed);
uint64_t samp_rng_next(struct samp_rng *r);
/* Uniform in [0, 1). */
double samp_rng_uniform(struct samp_rng *r);
/* A child seed derived from a parent seed and a child index (for forks). */
uint64_t samp_derive_seed(uint64_t parent, uint64_t index);

struct samp_result {
	int32_t token;                        /* the chosen token                */
	float logprob;                        /* log p(token), model distribution */
	float entropy;                        /* nats, model distribution        */
	int n_top;                            /* = params->n_top (<= vocab)      */
	int32_t top_ids[SAMP_MAX_TOP];        /* most likely first               */
	float top_logprobs[SAMP_MAX_TOP];
};

/* Pick a token from logits[n_vocab].  logprob, entropy and top logprobs are
 * those of the model's own distribution (softmax of the raw logits, as
 * DeepConf's confidence uses), whatever the sampling parameters.  The filter
 * order is: temperature, top-k, min-p, top-p, then one draw from r.
 * scratch must hold 2*n_vocab floats (it is overwritten).  Greedy draws no
 * random number; ties go to the lowest id.  Returns 0 or ENG_ERR_INVALID
 * (bad parameters, NaN logits). */
int samp_sample(const float *logits, int n_vocab, const struct samp_params *p,
		struct samp_rng *r, float *scratch, struct samp_result *out);

#endif
