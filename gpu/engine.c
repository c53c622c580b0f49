/* engine.c - the local model engine: sequences with pending tokens and ready
 * logits over a paged KV cache, driven one batched forward + sample step at a
 * time.  Engine thread (the getters: any thread). */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "build_config.h"
#include "backend.h"
#include "engine.h"
#include "kv.h"
#include "model.h"
#include "cpu/pool.h"
#ifdef BRAID_HAVE_CUDA
#include "cuda/cuda.h"
#endif

#define ENG_DEFAULT_BLOCK_TOKENS 16
#define ENG_DEFAULT_MAX_SEQS 1024
#define ENG_DEFAULT_BATCH_ROWS 512
#define ENG_AUTO_KV_BYTES ((size_t)1 << 30)

struct eng_seq {
	int id;                     /* its engine id (= its device logits slot) */
	int kv_id;                  /* the KV pool's sequence                  */
	int32_t *pending;           /* [n_pending] tokens not yet run          */
	int n_pending, cap_pending;
	float *logits;              /* [vocab] when has_logits (on the host
				       backend; a device backend keeps them in
				       slot id and copies them here on demand) */
	int has_logits;
	int host_logits;            /* device backend: logits[] is current     */
	struct samp_params sp;
	struct samp_rng rng;
	uint64_t n_forked;          /* children forked so far                  */
};

struct eng {
	struct eng_params p;        /* with defaults filled in                 */
	struct model *m;
	tok *t;
	enum chat_format chat;
	struct backend be;
	kv_pool *kv;
	pool *pool;                 /* shared with the backend: the forward's
				       loops, then sampling across sequences  */
	int n_slots;                /* = pool threads                          */
	float *samp_scratch;        /* (n_slots, 2 * vocab)                    */
	struct eng_seq **seqs;      /* [max_seqs], NULL = free id              */
	float *logit_buf;           /* (cap_logits, vocab) step logits         */
	int cap_logits;
	int dev;                    /* the backend keeps logits and samples    */
	struct cuda_samp_row *srows;          /* [max_seqs] device sampling    */
	struct samp_result *sres;             /* [max_seqs]                    */
	int32_t *sstat;                       /* [max_seqs]                    */
	/* eng_step's lists, kept between steps (no allocation per step) */
	struct eng_seq **st_live, **st_run;   /* [max_seqs]                    */
	int *st_ids, *st_rcs;                 /* [max_seqs]                    */
	/* run_pending's batch arrays, for passes of max_batch_rows rows */
	int32_t *rp_tokens, *rp_pos, *rp_row_seq, *rp_lrows, *rp_slots;  /* [max_batch_rows] */
	const int32_t **rp_tables;            /* [max_batch_rows]              */
	struct eng_seq **rp_lseq;             /* [max_batch_rows]              */
};

struct eng_params
eng_default_params(void)
{
	struct eng_params p = {
		.model_dir = NULL,
		.device = ENG_DEVICE_AUTO,
		.n_threads = 0,
		.kv_bytes = 0,
		.block_tokens = ENG_DEFAULT_BLOCK_TOKENS,
		.max_seqs = ENG_DEFAULT_MAX_SEQS,
		.max_batch_rows = ENG_DEFAULT_BATCH_ROWS,
	};
	return p;
}

/* ---- create / destroy -------------------------------------------------------- */

static size_t
auto_kv_bytes(void)
{
	long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
	size_t kvb = ENG_AUTO_KV_BYTES;
	if (pages > 0 && psz > 0) {
		size_t quarter = (size_t)pages / 4 * (size_t)psz;
		if (quarter < kvb)
			kvb = quarter;
	}
	return kvb;
}

static int
have_cuda(void)
{
#ifdef BRAID_HAVE_CUDA
	return cuda_device_count() > 0;
#else
	return 0;
#endif
}

/* AUTO: CUDA where it is built in and a GPU is present. */
static enum eng_device
pick_device(enum eng_device want)
{
	if (want == ENG_DEVICE_AUTO)
		return have_cuda() ? ENG_DEVICE_CUDA : ENG_DEVICE_CPU;
	return want;
}

/* The CUDA backend with its KV pool (*nb blocks). */
static int
start_cuda(eng *e, size_t *nb, char *err, size_t errlen)
{
#ifdef BRAID_HAVE_CUDA
	struct cuda_backend_params cp = {
		.kv_bytes = e->p.kv_bytes,
		.block_tokens = e->p.block_tokens,
		.max_rows = e->p.max_batch_rows,
		.max_seqs = e->p.max_seqs,
		.graphs = getenv("BRAID_CUDA_GRAPHS") ? atoi(getenv("BRAID_CUDA_GRAPHS")) != 0 : 1,
	};
	int n = 0;
	int rc = cuda_backend_create(e->m, &cp, &e->be, &n, err, errlen);
	if (rc)
		return rc;
	*nb = (size_t)n;
	e->dev = 1;
	return 0;
#else
	(void)e, (void)nb;
	return eng_seterr(err, errlen, ENG_ERR_UNSUPPORTED, "built without CUDA");
#endif
}

eng *
eng_create(const struct eng_params *p, char *err, size_t errlen)
{
	eng *e = NULL;
	char path[4096];

	if (!p || !p->model_dir) {
		eng_seterr(err, errlen, ENG_ERR_INVALID, "engine: no model directory given");
		return NULL;
	}
	const char *dir = p->model_dir;
	if (p->n_threads < 0 || p->block_tokens < 0 || p->max_seqs < 0 || p->max_batch_rows < 0) {
		eng_seterr(err, errlen, ENG_ERR_INVALID, "%s: negative engine parameter", dir);
		return NULL;
	}
	if (p->device != ENG_DEVICE_AUTO && p->device != ENG_DEVICE_CPU && p->device != ENG_DEVICE_CUDA) {
		eng_seterr(err, errlen, ENG_ERR_INVALID, "%s: unknown device %d", dir, (int)p->device);
		return NULL;
	}
	e = calloc(1, sizeof *e);
	if (!e)
		goto nomem;
	e->p = *p;
	if (!e->p.block_tokens)
		e->p.block_tokens = ENG_DEFAULT_BLOCK_TOKENS;
	if (!e->p.max_seqs)
		e->p.max_seqs = ENG_DEFAULT_MAX_SEQS;
	if (!e->p.max_batch_rows)
		e->p.max_batch_rows = ENG_DEFAULT_BATCH_ROWS;
	e->p.device = pick_device(p->device);
	if (e->p.device == ENG_DEVICE_CUDA && !have_cuda()) {
		eng_seterr(err, errlen, ENG_ERR_DEVICE, "%s: --device cuda: %s", dir,
#ifdef BRAID_HAVE_CUDA
			   "no usable CUDA device (no driver or no GPU)"
#else
			   "this braid was built without the CUDA backend"
#endif
		);
		goto fail;
	}
	if (!e->p.kv_bytes && e->p.device == ENG_DEVICE_CPU)
		e->p.kv_bytes = auto_kv_bytes();    /* CUDA: the backend sizes it */
	e->p.model_dir = NULL;          /* borrowed; the model keeps its own copy */

	e->m = model_load(dir, err, errlen);
	if (!e->m)
		goto fail;
	if ((size_t)snprintf(path, sizeof path, "%s/tokenizer.json", dir) >= sizeof path) {
		eng_seterr(err, errlen, ENG_ERR_INVALID, "%s: path too long", dir);
		goto fail;
	}
	if (access(path, F_OK) == 0) {
		e->t = tok_load_dir(dir, err, errlen);
		if (!e->t)
			goto fail;
		e->chat = chat_detect(e->t);
	} else {
		e->chat = CHAT_NONE;
	}

	e->pool = pool_create(e->p.n_threads);
	if (!e->pool)
		goto nomem;
	size_t nb = 0;
	if (e->p.device == ENG_DEVICE_CUDA) {
		int rc = start_cuda(e, &nb, err, errlen);
		/* --device auto: a model the CUDA kernels do not take (an odd
		 * head_dim, say) runs on the CPU instead; asked for CUDA, it fails. */
		if (rc == ENG_ERR_UNSUPPORTED && p->device == ENG_DEVICE_AUTO) {
			fprintf(stderr, "braid: %s; using the CPU\n", err);
			e->p.device = ENG_DEVICE_CPU;
			if (!e->p.kv_bytes)
				e->p.kv_bytes = auto_kv_bytes();
		} else if (rc) {
			goto fail;
		}
	}
	if (e->p.device == ENG_DEVICE_CPU) {
		size_t bb = backend_kv_block_bytes(e->m, e->p.block_tokens);
		nb = bb ? e->p.kv_bytes / bb : 0;
		if (nb < 1) {
			eng_seterr(err, errlen, ENG_ERR_RANGE, "%s: KV size %zu bytes holds no block of %zu bytes",
				   dir, e->p.kv_bytes, bb);
			goto fail;
		}
		if (nb > INT_MAX / 2)
			nb = INT_MAX / 2;
		if (cpu_backend_create(e->m, (int)nb, e->p.block_tokens, e->p.n_threads, e->pool, &e->be, err, errlen))
			goto fail;
	}
	struct kv_params kp = {
		.n_blocks = (int)nb,
		.block_tokens = e->p.block_tokens,
		.max_seqs = e->p.max_seqs,
		.copy_block = e->be.ops->copy_block,
		.copy_ctx = e->be.self,
	};
	e->kv = kv_create(&kp, err, errlen);
	if (!e->kv)
		goto fail;
	e->n_slots = pool_threads(e->pool);
	e->samp_scratch = malloc((size_t)e->n_slots * 2 * (size_t)e->m->cfg.vocab_size * sizeof(float));
	e->seqs = calloc((size_t)e->p.max_seqs, sizeof *e->seqs);
	e->st_live = malloc((size_t)e->p.max_seqs * sizeof *e->st_live);
	e->st_run = malloc((size_t)e->p.max_seqs * sizeof *e->st_run);
	e->st_ids = malloc((size_t)e->p.max_seqs * sizeof *e->st_ids);
	e->st_rcs = malloc((size_t)e->p.max_seqs * sizeof *e->st_rcs);
	if (!e->samp_scratch || !e->seqs || !e->st_live || !e->st_run || !e->st_ids || !e->st_rcs)
		goto nomem;
	const size_t rows = (size_t)e->p.max_batch_rows;
	e->rp_tokens = malloc(rows * sizeof *e->rp_tokens);
	e->rp_pos = malloc(rows * sizeof *e->rp_pos);
	e->rp_row_seq = malloc(rows * sizeof *e->rp_row_seq);
	e->rp_lrows = malloc(rows * sizeof *e->rp_lrows);
	e->rp_slots = malloc(rows * sizeof *e->rp_slots);
	e->rp_tables = malloc(rows * sizeof *e->rp_tables);
	e->rp_lseq = malloc(rows * sizeof *e->rp_lseq);
	if (!e->rp_tokens || !e->rp_pos || !e->rp_row_seq || !e->rp_lrows || !e->rp_slots || !e->rp_tables ||
	    !e->rp_lseq)
		goto nomem;
	if (e->dev) {
		e->srows = calloc((size_t)e->p.max_seqs, sizeof *e->srows);
		e->sres = calloc((size_t)e->p.max_seqs, sizeof *e->sres);
		e->sstat = calloc((size_t)e->p.max_seqs, sizeof *e->sstat);
		if (!e->srows || !e->sres || !e->sstat)
			goto nomem;
	}
	return e;
nomem:
	eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: out of memory starting the engine", dir);
fail:
	eng_destroy(e);
	return NULL;
}

static void
seq_destroy(struct eng_seq *s)
{
	if (!s)
		return;
	free(s->pending);
	free(s->logits);
	free(s);
}

void
eng_destroy(eng *e)
{
	if (!e)
		return;
	if (e->seqs)
		for (int i = 0; i < e->p.max_seqs; i++)
			seq_destroy(e->seqs[i]);
	free(e->seqs);
	free(e->samp_scratch);
	free(e->srows);
	free(e->sres);
	free(e->sstat);
	free(e->logit_buf);
	free(e->st_live);
	free(e->st_run);
	free(e->st_ids);
	free(e->st_rcs);
	free(e->rp_tokens);
	free(e->rp_pos);
	free(e->rp_row_seq);
	free(e->rp_lrows);
	free(e->rp_slots);
	free(e->rp_tables);
	free(e->rp_lseq);
	kv_destroy(e->kv);
	if (e->be.ops)
		e->be.ops->destroy(e->be.self);
	pool_destroy(e->pool);          /* after the backend, which borrows it */
	tok_free(e->t);
	model_free(e->m);
	free(e);
}

/* ---- getters ------------------------------------------------------------------ */

const struct model_config *eng_config(const eng *e) { return &e->m->cfg; }
const tok *eng_tokenizer(const eng *e) { return e->t; }
enum chat_format eng_chat_format(const eng *e) { return e->chat; }
const char *eng_device_name(const eng *e) { return e->be.ops->name; }
size_t eng_weight_bytes(const eng *e) { return e->be.weight_bytes; }

const char *
eng_last_error(const eng *e)
{
	return e && e->be.ops && e->be.ops->last_error ? e->be.ops->last_error(e->be.self) : "";
}
int eng_threads(const eng *e) { return e->n_slots; }

int
eng_is_eos(const eng *e, int32_t id)
{
	const struct model_config *c = &e->m->cfg;
	for (int i = 0; i < c->n_eos; i++)
		if (c->eos_ids[i] == id)
			return 1;
	return e->t && tok_eos_id(e->t) == id;
}
int eng_kv_blocks_total(const eng *e) { return kv_blocks_total(e->kv); }
int eng_kv_blocks_free(const eng *e) { return kv_blocks_free(e->kv); }

int
eng_backend_timing(eng *e, int on, struct backend_timing *out)
{
	if (!e->be.ops->timing)
		return ENG_ERR_UNSUPPORTED;
	return e->be.ops->timing(e->be.self, on, out);
}

/* ---- sequences ---------------------------------------------------------------- */

static struct eng_seq *
seq_get(const eng *e, int id)
{
	if (!e || id < 0 || id >= e->p.max_seqs)
		return NULL;
	return e->seqs[id];
}

static int
check_samp(const struct samp_params *sp)
{
	if (!(sp->temperature >= 0.0f) || !isfinite(sp->temperature) || sp->top_k < 0 ||
	    !(sp->top_p > 0.0f && sp->top_p <= 1.0f) || !(sp->min_p >= 0.0f && sp->min_p <= 1.0f) ||
	    sp->n_top < 0 || sp->n_top > SAMP_MAX_TOP)
		return ENG_ERR_INVALID;
	return 0;
}

static int
check_ids(const eng *e, const int32_t *ids, int n)
{
	if (!ids || n <= 0)
		return ENG_ERR_INVALID;
	for (int i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= e->m->cfg.vocab_size)
			return ENG_ERR_INVALID;
	return 0;
}

static int
push_pending(struct eng_seq *s, const int32_t *ids, int n)
{
	if (n > INT_MAX - s->n_pending)
		return ENG_ERR_RANGE;
	if (s->n_pending + n > s->cap_pending) {
		int cap = s->cap_pending ? s->cap_pending : 8;
		while (cap < s->n_pending + n)
			cap = cap > INT_MAX / 2 ? s->n_pending + n : cap * 2;
		int32_t *np = realloc(s->pending, (size_t)cap * sizeof *np);
		if (!np)
			return ENG_ERR_NOMEM;
		s->pending = np;
		s->cap_pending = cap;
	}
	memcpy(s->pending + s->n_pending, ids, (size_t)n * sizeof *ids);
	s->n_pending += n;
	return 0;
}

/* ENG_ERR_RANGE if a sequence of len positions (cached + pending) cannot
 * grow by add more: past max_position_embeddings when the config gives it
 * (RoPE and the model were not made for longer), or past INT_MAX. */
static int
check_room(const eng *e, int64_t len, int64_t add)
{
	const int64_t max = e->m->cfg.max_position > 0 ? e->m->cfg.max_position : INT_MAX;
	return len + add > max ? ENG_ERR_RANGE : 0;
}

static int
free_id(const eng *e, int after)
{
	for (int i = after + 1; i < e->p.max_seqs; i++)
		if (!e->seqs[i])
			return i;
	return -1;
}

int
eng_seq_new(eng *e, const int32_t *ids, int n, const struct samp_params *sp)
{
	struct samp_params dp = samp_default_params();
	struct eng_seq *s = NULL;
	int rc;
	if (!e)
		return ENG_ERR_INVALID;
	if (!sp)
		sp = &dp;
	if ((rc = check_ids(e, ids, n)) || (rc = check_samp(sp)) || (rc = check_room(e, 0, n)))
		return rc;
	int id = free_id(e, -1);
	if (id < 0)
		return ENG_ERR_RANGE;
	s = calloc(1, sizeof *s);
	if (!s)
		return ENG_ERR_NOMEM;
	s->kv_id = -1;
	if ((rc = push_pending(s, ids, n)))
		goto fail;
	s->sp = *sp;
	samp_rng_seed(&s->rng, sp->seed);
	if ((rc = kv_seq_new(e->kv)) < 0)
		goto fail;
	s->kv_id = rc;
	s->id = id;
	e->seqs[id] = s;
	return id;
fail:
	seq_destroy(s);
	return rc;
}

int
eng_seq_append(eng *e, int seq, const int32_t *ids, int n)
{
	struct eng_seq *s = seq_get(e, seq);
	int rc;
	if (!s)
		return e ? ENG_ERR_NOT_FOUND : ENG_ERR_INVALID;
	if ((rc = check_ids(e, ids, n)) ||
	    (rc = check_room(e, kv_seq_len(e->kv, s->kv_id) + (int64_t)s->n_pending, n)) ||
	    (rc = push_pending(s, ids, n)))
		return rc;
	s->has_logits = 0;
	return 0;
}

int
eng_seq_free(eng *e, int seq)
{
	struct eng_seq *s = seq_get(e, seq);
	if (!s)
		return e ? ENG_ERR_NOT_FOUND : ENG_ERR_INVALID;
	kv_seq_free(e->kv, s->kv_id);
	seq_destroy(s);
	e->seqs[seq] = NULL;
	return 0;
}

int
eng_seq_set_sampling(eng *e, int seq, const struct samp_params *sp)
{
	struct eng_seq *s = seq_get(e, seq);
	if (!s)
		return e ? ENG_ERR_NOT_FOUND : ENG_ERR_INVALID;
	if (!sp || check_samp(sp))
		return ENG_ERR_INVALID;
	s->sp = *sp;
	samp_rng_seed(&s->rng, sp->seed);
	return 0;
}

const float *
eng_seq_logits(const eng *e, int seq)
{
	struct eng_seq *s = seq_get(e, seq);
	if (!s || !s->has_logits)
		return NULL;
	if (e->dev && !s->host_logits) {
		/* engine thread only, like every other call: fetch the slot */
		if (!s->logits && !(s->logits = malloc((size_t)e->m->cfg.vocab_size * sizeof(float))))
			return NULL;
		if (e->be.ops->read_slot(e->be.self, s->id, s->logits))
			return NULL;
		s->host_logits = 1;
	}
	return s->logits;
}

int
eng_seq_len(const eng *e, int seq)
{
	const struct eng_seq *s = seq_get(e, seq);
	if (!s)
		return e ? ENG_ERR_NOT_FOUND : ENG_ERR_INVALID;
	return kv_seq_len(e->kv, s->kv_id) + s->n_pending;
}

int
eng_seq_fork(eng *e, int seq, int k, int *children)
{
	struct eng_seq *s = seq_get(e, seq);
	const size_t vocab = (size_t)e->m->cfg.vocab_size;
	struct eng_seq **kids = NULL;
	int *kv_ids = NULL, *ids = NULL;
	int rc = ENG_ERR_NOMEM, forked = 0;

	if (!s)
		return e ? ENG_ERR_NOT_FOUND : ENG_ERR_INVALID;
	if (k <= 0 || !children)
		return ENG_ERR_INVALID;
	if (k > e->p.max_seqs)
		return ENG_ERR_RANGE;
	kids = calloc((size_t)k, sizeof *kids);
	kv_ids = malloc((size_t)k * sizeof *kv_ids);
	ids = malloc((size_t)k * sizeof *ids);
	if (!kids || !kv_ids || !ids)
		goto fail;
	for (int j = 0, last = -1; j < k; j++) {
		if ((last = ids[j] = free_id(e, last)) < 0) {
			rc = ENG_ERR_RANGE;
			goto fail;
		}
	}
	for (int j = 0; j < k; j++) {
		struct eng_seq *c = kids[j] = calloc(1, sizeof *c);
		if (!c)
			goto fail;
		c->kv_id = -1;
		if (s->n_pending && (rc = push_pending(c, s->pending, s->n_pending)))
			goto fail;
		if (s->has_logits && e->dev) {
			if ((rc = e->be.ops->copy_slot(e->be.self, s->id, ids[j])))
				goto fail;
			c->has_logits = 1;
		} else if (s->has_logits) {
			c->logits = malloc(vocab * sizeof(float));
			if (!c->logits) {
				rc = ENG_ERR_NOMEM;
				goto fail;
			}
			memcpy(c->logits, s->logits, vocab * sizeof(float));
			c->has_logits = 1;
		}
		c->sp = s->sp;
		c->sp.seed = samp_derive_seed(s->sp.seed, s->n_forked + 1 + (uint64_t)j);
		samp_rng_seed(&c->rng, c->sp.seed);
	}
	if ((rc = kv_seq_fork(e->kv, s->kv_id, k, kv_ids)))
		goto fail;
	forked = 1;
	for (int j = 0; j < k; j++) {
		kids[j]->kv_id = kv_ids[j];
		kids[j]->id = ids[j];
		e->seqs[ids[j]] = kids[j];
		children[j] = ids[j];
	}
	s->n_forked += (uint64_t)k;
	rc = 0;
fail:
	if (!forked && kids)
		for (int j = 0; j < k; j++)
			seq_destroy(kids[j]);
	free(kids);
	free(kv_ids);
	free(ids);
	return rc;
}

/* ---- running pending tokens ---------------------------------------------------- */

static int
ensure_logit_buf(eng *e, int rows)
{
	if (rows <= e->cap_logits)
		return 0;
	float *nb = realloc(e->logit_buf, (size_t)rows * (size_t)e->m->cfg.vocab_size * sizeof(float));
	if (!nb)
		return ENG_ERR_NOMEM;
	e->logit_buf = nb;
	e->cap_logits = rows;
	return 0;
}

/* Run the pending tokens of seqs[n] (KV already reserved) through the model
 * in passes of at most max_batch_rows rows, then commit them and make each
 * sequence's last-position logits ready.  all_logits (one sequence only)
 * receives every position's logits.  On error nothing is committed. */
static int
run_pending(eng *e, struct eng_seq **seqs, int n, float *all_logits)
{
	const size_t vocab = (size_t)e->m->cfg.vocab_size;
	const int cap = e->p.max_batch_rows;   /* rows per pass (the arrays' size) */
	int rc;
	int32_t *tokens = e->rp_tokens, *pos = e->rp_pos, *row_seq = e->rp_row_seq;
	int32_t *lrows = e->rp_lrows, *slots = e->rp_slots;
	const int32_t **tables = e->rp_tables;
	struct eng_seq **lseq = e->rp_lseq;
	for (int i = 0; i < n && !e->dev; i++)
		if (!seqs[i]->logits && !(seqs[i]->logits = malloc(vocab * sizeof(float))))
			return ENG_ERR_NOMEM;

	/* Walk (sequence si, pending index pi) across passes. */
	int si = 0, pi = 0;
	int64_t done_rows = 0;
	while (si < n) {
		int rows = 0, nseq = 0, nlog = 0;
		while (rows < cap && si < n) {
			struct eng_seq *s = seqs[si];
			if (pi == 0 || nseq == 0) {
				int nt;
				tables[nseq++] = kv_seq_blocks(e->kv, s->kv_id, &nt);
			}
			int base = kv_seq_len(e->kv, s->kv_id);
			while (rows < cap && pi < s->n_pending) {
				tokens[rows] = s->pending[pi];
				pos[rows] = base + pi;
				row_seq[rows] = nseq - 1;
				if (all_logits || pi == s->n_pending - 1) {
					lrows[nlog] = rows;
					lseq[nlog++] = pi == s->n_pending - 1 ? s : NULL;
				}
				rows++, pi++;
			}
			if (pi == s->n_pending)
				si++, pi = 0;
		}
		float *lout = NULL;
		if (all_logits) {
			lout = all_logits + (size_t)done_rows * vocab;
		} else if (!e->dev) {
			if ((rc = ensure_logit_buf(e, nlog)))
				return rc;
			lout = e->logit_buf;
		}
		struct fwd_batch b = {
			.n_rows = rows, .tokens = tokens, .pos = pos, .row_seq = row_seq,
			.n_seqs = nseq, .block_tables = tables, .n_logits = nlog, .logit_rows = lrows,
		};
		if (e->dev) {
			/* the logits stay on the device, in each sequence's slot */
			for (int i = 0; i < nlog; i++)
				slots[i] = lseq[i] ? lseq[i]->id : -1;
			if ((rc = e->be.ops->forward_slots(e->be.self, &b, slots, lout)))
				return rc;
		} else {
			if ((rc = e->be.ops->forward(e->be.self, &b, lout)))
				return rc;
			for (int i = 0; i < nlog; i++)
				if (lseq[i])
					memcpy(lseq[i]->logits, lout + (size_t)i * vocab, vocab * sizeof(float));
		}
		done_rows += rows;
	}
	for (int i = 0; i < n; i++) {
		struct eng_seq *s = seqs[i];
		if ((rc = kv_seq_commit(e->kv, s->kv_id, s->n_pending)))
			return rc;
		s->n_pending = 0;
		s->has_logits = 1;
		s->host_logits = 0;
	}
	return 0;
}

int
eng_seq_prefill(eng *e, int seq, float *all_logits)
{
	struct eng_seq *s = seq_get(e, seq);
	int rc;
	if (!s)
		return e ? ENG_ERR_NOT_FOUND : ENG_ERR_INVALID;
	if (s->n_pending == 0)
		return ENG_DONE;
	if ((rc = kv_seq_reserve(e->kv, s->kv_id, s->n_pending)))
		return rc;
	return run_pending(e, &s, 1, all_logits);
}

/* ---- the step ------------------------------------------------------------------- */

struct samp_job {
	eng *e;
	struct eng_seq **seqs;
	const int *ids;
	int n;
	struct eng_token *out;
	int *rcs;
};

/* Slot s samples sequences [n*s/S, n*(s+1)/S) with its own scratch. */
static void
sample_slots(void *ctx, int s0, int s1)
{
	struct samp_job *j = ctx;
	const int vocab = j->e->m->cfg.vocab_size, S = j->e->n_slots;
	for (int s = s0; s < s1; s++) {
		float *scratch = j->e->samp_scratch + (size_t)s * 2 * (size_t)vocab;
		for (int i = j->n * s / S; i < j->n * (s + 1) / S; i++) {
			struct eng_seq *q = j->seqs[i];
			j->out[i].seq = j->ids[i];
			j->rcs[i] = samp_sample(q->logits, vocab, &q->sp, &q->rng, scratch, &j->out[i].r);
		}
	}
}

/* Sample on the device from each sequence's logits slot.  The uniform draw
 * comes from the sequence's own generator, as on the CPU (one per
 * non-greedy token), so a seed means the same stream of draws on both. */
static int
sample_device(eng *e, struct eng_seq **live, const int *ids, int n, struct eng_token *out)
{
	for (int i = 0; i < n; i++) {
		const struct samp_params *sp = &live[i]->sp;
		e->srows[i] = (struct cuda_samp_row){
			.slot = live[i]->id, .top_k = sp->top_k, .n_top = sp->n_top,
			.temperature = sp->temperature, .top_p = sp->top_p, .min_p = sp->min_p,
			.u = sp->temperature > 0.0f ? samp_rng_uniform(&live[i]->rng) : 0.0,
		};
	}
	int rc = e->be.ops->sample(e->be.self, e->srows, n, e->sres, e->sstat);
	if (rc)
		return rc;
	for (int i = 0; i < n; i++) {
		if (e->sstat[i])
			return e->sstat[i];
		out[i].seq = ids[i];
		out[i].r = e->sres[i];
	}
	return 0;
}

int
eng_step(eng *e, struct eng_token *out, int cap, int *n_out)
{
	int n_live = 0, n_run = 0, rc;

	if (!e || !n_out || cap < 0 || (cap > 0 && !out))
		return ENG_ERR_INVALID;
	*n_out = 0;
	for (int i = 0; i < e->p.max_seqs; i++)
		n_live += e->seqs[i] != NULL;
	if (n_live > cap)
		return ENG_ERR_RANGE;
	if (n_live == 0)
		return 0;
	struct eng_seq **live = e->st_live, **run = e->st_run;
	int *ids = e->st_ids, *rcs = e->st_rcs;
	n_live = 0;
	for (int i = 0; i < e->p.max_seqs; i++) {
		if (!e->seqs[i])
			continue;
		/* the sampled token will grow every live sequence by one */
		if ((rc = check_room(e, kv_seq_len(e->kv, e->seqs[i]->kv_id) + (int64_t)e->seqs[i]->n_pending, 1)))
			return rc;
		ids[n_live] = i;
		live[n_live++] = e->seqs[i];
		if (e->seqs[i]->n_pending > 0)
			run[n_run++] = e->seqs[i];
	}

	/* Reserve everything first: if the cache runs out, no sequence's tokens
	 * or logits change (blocks reserved for the earlier sequences stay
	 * with them for their next step). */
	for (int i = 0; i < n_run; i++)
		if ((rc = kv_seq_reserve(e->kv, run[i]->kv_id, run[i]->n_pending)))
			return rc;
	if (n_run && (rc = run_pending(e, run, n_run, NULL)))
		return rc;

	/* Every live sequence now has ready logits. */
	if (e->dev) {
		if ((rc = sample_device(e, live, ids, n_live, out)))
			return rc;
	} else {
		struct samp_job j = { .e = e, .seqs = live, .ids = ids, .n = n_live, .out = out, .rcs = rcs };
		pool_run(e->pool, sample_slots, &j, e->n_slots);
		for (int i = 0; i < n_live; i++)
			if ((rc = rcs[i]))
				return rc;
	}
	for (int i = 0; i < n_live; i++) {
		struct eng_seq *s = live[i];
		if ((rc = push_pending(s, &out[i].r.token, 1)))
			return rc;
		s->has_logits = 0;
	}
	*n_out = n_live;
	return 0;
}
