// check.cu - host wrappers that run one kernel of kernels.cu (or the backend's
// bf16 cuBLAS GEMM) on host arrays, for the kernel checks (see check.h).
// The caller's thread; synchronous.  Each call owns a stream and a list of
// device and host buffers, released together on its one way out.
#include <cassert>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <cublas_v2.h>
#include <cuda_runtime.h>

extern "C" {
#include "status.h"
#include "cuda/check.h"
}
#include "cuda/kernels.cuh"

#define MAX_BUFS 24

// One wrapper call: its stream, cuBLAS handle and every buffer it made.
struct run {
	const char *fn;          // the wrapper's name, for messages
	char *err;
	int errlen;
	cudaStream_t s;
	cublasHandle_t blas;
	void *dev[MAX_BUFS];
	void *host[MAX_BUFS];
	int n_dev, n_host;
};

static int
r_fail(struct run *r, cudaError_t e, const char *what)
{
	return eng_seterr(r->err, r->errlen > 0 ? (size_t)r->errlen : 0, ENG_ERR_DEVICE, "%s: %s: %s", r->fn, what,
			  cudaGetErrorString(e));
}

#define CK(r, call)                                                     \
	do {                                                            \
		cudaError_t e_ = (call);                                \
		if (e_ != cudaSuccess) {                                \
			rc = r_fail((r), e_, #call);                    \
			goto done;                                      \
		}                                                       \
	} while (0)

#define TRY(call)                                                       \
	do {                                                            \
		if ((rc = (call)) != 0)                                 \
			goto done;                                      \
	} while (0)

static int
r_begin(struct run *r, const char *fn, char *err, int errlen)
{
	memset(r, 0, sizeof *r);
	r->fn = fn;
	r->err = err;
	r->errlen = errlen;
	cudaError_t e = cudaStreamCreateWithFlags(&r->s, cudaStreamNonBlocking);
	if (e != cudaSuccess) {
		r->s = NULL;
		return r_fail(r, e, "cudaStreamCreateWithFlags");
	}
	return 0;
}

// Wait for what is still queued (a failed call may leave copies in flight
// from host buffers), then free everything.
static void
r_end(struct run *r)
{
	if (r->s)
		cudaStreamSynchronize(r->s);
	if (r->blas)
		cublasDestroy(r->blas);
	for (int i = 0; i < r->n_dev; i++)
		cudaFree(r->dev[i]);
	for (int i = 0; i < r->n_host; i++)
		free(r->host[i]);
	if (r->s)
		cudaStreamDestroy(r->s);
}

static int
d_alloc(struct run *r, void **p, size_t bytes)
{
	assert(r->n_dev < MAX_BUFS);
	*p = NULL;
	cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
	if (e != cudaSuccess) {
		*p = NULL;
		return r_fail(r, e, "cudaMalloc");
	}
	r->dev[r->n_dev++] = *p;
	return 0;
}

static int
h_alloc(struct run *r, void **p, size_t bytes)
{
	assert(r->n_host < MAX_BUFS);
	*p = malloc(bytes ? bytes : 1);
	if (!*p)
		return eng_seterr(r->err, r->errlen > 0 ? (size_t)r->errlen : 0, ENG_ERR_NOMEM,
				  "%s: cannot allocate %zu host bytes", r->fn, bytes);
	r->host[r->n_host++] = *p;
	return 0;
}

// A device copy of host[bytes] (queued on the stream).
static int
d_upload(struct run *r, void **p, const void *host, size_t bytes)
{
	int rc = d_alloc(r, p, bytes);
	if (rc)
		return rc;
	cudaError_t e = cudaMemcpyAsync(*p, host, bytes, cudaMemcpyHostToDevice, r->s);
	return e == cudaSuccess ? 0 : r_fail(r, e, "cudaMemcpyAsync (upload)");
}

// A device bf16 copy of host f32 src[n], rounded to nearest even.
static int
d_upload_bf16(struct run *r, bf16 **p, const float *src, size_t n)
{
	void *h = NULL;
	int rc = h_alloc(r, &h, n * sizeof(bf16));
	if (rc)
		return rc;
	bf16 *hb = (bf16 *)h;
	for (size_t i = 0; i < n; i++)
		hb[i] = __float2bfloat16(src[i]);
	return d_upload(r, (void **)p, hb, n * sizeof(bf16));
}

// A device counter holding v.
static int
d_counter(struct run *r, int **p, int v)
{
	void *h = NULL;
	int rc = h_alloc(r, &h, sizeof(int));
	if (rc)
		return rc;
	*(int *)h = v;
	return d_upload(r, (void **)p, h, sizeof(int));
}

static int
d_sync(struct run *r)
{
	cudaError_t e = cudaStreamSynchronize(r->s);
	return e == cudaSuccess ? 0 : r_fail(r, e, "cudaStreamSynchronize");
}

// host[bytes] = device[bytes], synchronously (the stream is drained first).
static int
d_download(struct run *r, void *host, const void *dev, size_t bytes)
{
	cudaError_t e = cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, r->s);
	if (e != cudaSuccess)
		return r_fail(r, e, "cudaMemcpyAsync (download)");
	return d_sync(r);
}

// dst[n] f32 = device bf16 src[n].
static int
d_download_bf16(struct run *r, float *dst, const bf16 *src, size_t n)
{
	void *h = NULL;
	int rc = h_alloc(r, &h, n * sizeof(bf16));
	if (rc || (rc = d_download(r, h, src, n * sizeof(bf16))))
		return rc;
	const bf16 *hb = (const bf16 *)h;
	for (size_t i = 0; i < n; i++)
		dst[i] = __bfloat162float(hb[i]);
	return 0;
}

static int
bad(char *err, int errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int
bad(char *err, int errlen, const char *fmt, ...)
{
	if (err && errlen > 0) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, (size_t)errlen, fmt, ap);
		va_end(ap);
	}
	return ENG_ERR_INVALID;
}

static k_kv_geom
to_geom(const struct kc_geom &g)
{
	k_kv_geom k;
	k.n_layers = g.n_layers;
	k.n_kv_heads = g.n_kv_heads;
	k.head_dim = g.head_dim;
	k.block_tokens = g.block_tokens;
	return k;
}

static bool
geom_ok(const struct kc_geom &g, int layer, int n_blocks)
{
	return g.n_layers > 0 && g.n_kv_heads > 0 && g.head_dim >= 2 && g.head_dim % 2 == 0 &&
	       g.head_dim <= K_MAX_HEAD_DIM && g.block_tokens > 0 && layer >= 0 && layer < g.n_layers &&
	       n_blocks > 0;
}

// ---- geometry ------------------------------------------------------------------------

extern "C" size_t
kc_block_elems(const struct kc_geom *g)
{
	return (size_t)g->n_layers * 2 * (size_t)g->n_kv_heads * (size_t)g->block_tokens * (size_t)g->head_dim;
}

extern "C" size_t
kc_kv_offset(const struct kc_geom *g, int32_t blk, int l, int kv, int h, int off)
{
	return k_kv_offset(to_geom(*g), blk, l, kv, h, off);
}

extern "C" int
kc_attn_warp_item(int n_rows, int n_heads, int n_kv_heads, int head_dim)
{
	if (n_rows > 1 && k_init(head_dim) != cudaSuccess)
		return 0;
	return k_attn_warp_item(n_rows, n_heads, n_kv_heads, head_dim);
}

extern "C" int
kc_attn_warp_rows(int n_heads, int n_kv_heads, int head_dim)
{
	if (k_init(head_dim) != cudaSuccess)
		return 1;
	return k_attn_warp_rows(n_heads, n_kv_heads, head_dim);
}

extern "C" int
kc_attention_max_rows(int n_heads, int n_kv_heads, int head_dim)
{
	return k_attention_max_rows(n_heads, n_kv_heads, head_dim);
}

// ---- embedding, RMSNorm, SwiGLU ------------------------------------------------------

extern "C" int
kc_embed(const float *emb, int vocab, int d, const int32_t *tokens, int rows, int n_active, float *x, char *err,
	 int errlen)
{
	if (!emb || !tokens || !x || vocab <= 0 || d <= 0 || rows <= 0 || n_active < 0 || n_active > rows)
		return bad(err, errlen, "kc_embed: bad arguments (vocab %d, d %d, rows %d, n_active %d)", vocab, d,
			   rows, n_active);
	for (int r = 0; r < n_active; r++)
		if (tokens[r] < 0 || tokens[r] >= vocab)
			return bad(err, errlen, "kc_embed: token %d of row %d is outside 0..%d", (int)tokens[r], r,
				   vocab - 1);
	struct run R;
	int rc = r_begin(&R, "kc_embed", err, errlen);
	bf16 *d_emb = NULL;
	int32_t *d_tok = NULL;
	int *d_n = NULL;
	float *d_x = NULL;
	const size_t xbytes = (size_t)rows * d * sizeof(float);
	if (rc)
		goto done;
	TRY(d_upload_bf16(&R, &d_emb, emb, (size_t)vocab * d));
	TRY(d_upload(&R, (void **)&d_tok, tokens, (size_t)rows * sizeof(int32_t)));
	TRY(d_counter(&R, &d_n, n_active));
	TRY(d_upload(&R, (void **)&d_x, x, xbytes));
	CK(&R, k_embed(d_emb, d_tok, d_n, rows, d, d_x, R.s));
	TRY(d_download(&R, x, d_x, xbytes));
done:
	r_end(&R);
	return rc;
}

extern "C" int
kc_rmsnorm(const float *x, int n_x, const int32_t *idx, int rows, int n_active, const float *w, int d, float eps,
	   float *out, char *err, int errlen)
{
	if (!x || !w || !out || n_x <= 0 || rows <= 0 || d <= 0 || n_active > rows)
		return bad(err, errlen, "kc_rmsnorm: bad arguments (n_x %d, rows %d, d %d, n_active %d)", n_x, rows,
			   d, n_active);
	const int act = n_active < 0 ? rows : n_active;
	for (int r = 0; r < act; r++) {
		const int src = idx ? idx[r] : r;
		if (src < 0 || src >= n_x)
			return bad(err, errlen, "kc_rmsnorm: row %d reads x row %d of %d", r, src, n_x);
	}
	struct run R;
	int rc = r_begin(&R, "kc_rmsnorm", err, errlen);
	float *d_x = NULL, *d_w = NULL;
	int32_t *d_idx = NULL;
	int *d_n = NULL;
	bf16 *d_out = NULL;
	const size_t n_out = (size_t)rows * d;
	if (rc)
		goto done;
	TRY(d_upload(&R, (void **)&d_x, x, (size_t)n_x * d * sizeof(float)));
	TRY(d_upload(&R, (void **)&d_w, w, (size_t)d * sizeof(float)));
	if (idx)
		TRY(d_upload(&R, (void **)&d_idx, idx, (size_t)rows * sizeof(int32_t)));
	if (n_active >= 0)
		TRY(d_counter(&R, &d_n, n_active));
	TRY(d_upload_bf16(&R, &d_out, out, n_out));
	CK(&R, k_rmsnorm(d_x, d_idx, d_n, d_w, rows, d, eps, d_out, R.s));
	TRY(d_download_bf16(&R, out, d_out, n_out));
done:
	r_end(&R);
	return rc;
}

extern "C" int
kc_swiglu(const float *gu, int rows, int f, float *h, char *err, int errlen)
{
	if (!gu || !h || rows <= 0 || f <= 0)
		return bad(err, errlen, "kc_swiglu: bad arguments (rows %d, f %d)", rows, f);
	struct run R;
	int rc = r_begin(&R, "kc_swiglu", err, errlen);
	float *d_gu = NULL;
	bf16 *d_h = NULL;
	const size_t n_h = (size_t)rows * f;
	if (rc)
		goto done;
	TRY(d_upload(&R, (void **)&d_gu, gu, 2 * n_h * sizeof(float)));
	TRY(d_upload_bf16(&R, &d_h, h, n_h));
	CK(&R, k_swiglu(d_gu, rows, f, d_h, R.s));
	TRY(d_download_bf16(&R, h, d_h, n_h));
done:
	r_end(&R);
	return rc;
}

// ---- QKV epilogue ------------------------------------------------------------------------

extern "C" int
kc_qkv_post(const struct kc_qkv_args *a, float *q, float *kv, char *err, int errlen)
{
	if (!a || !q || !kv || !a->qkv || !a->inv_freq || !a->pos || !a->tab_off || !a->tables || a->rows <= 0 ||
	    a->n_active < 0 || a->n_active > a->rows || a->n_heads <= 0 || a->n_tables <= 0 ||
	    !geom_ok(a->g, a->layer, a->n_blocks))
		return bad(err, errlen, "kc_qkv_post: bad arguments");
	const int bt = a->g.block_tokens, hd = a->g.head_dim;
	for (int r = 0; r < a->n_active; r++) {
		if (a->pos[r] < 0 || a->tab_off[r] < 0 ||
		    (int64_t)a->tab_off[r] + a->pos[r] / bt >= a->n_tables)
			return bad(err, errlen, "kc_qkv_post: row %d: position %d or table offset %d out of range", r,
				   (int)a->pos[r], (int)a->tab_off[r]);
		const int32_t blk = a->tables[a->tab_off[r] + a->pos[r] / bt];
		if (blk < 0 || blk >= a->n_blocks)
			return bad(err, errlen, "kc_qkv_post: row %d: block %d is outside 0..%d", r, (int)blk,
				   a->n_blocks - 1);
	}
	const int width = (a->n_heads + 2 * a->g.n_kv_heads) * hd;
	const size_t n_kv = (size_t)a->n_blocks * kc_block_elems(&a->g);
	const size_t qbytes = (size_t)a->rows * a->n_heads * hd * sizeof(float);
	struct run R;
	int rc = r_begin(&R, "kc_qkv_post", err, errlen);
	float *d_qkv = NULL, *d_b = NULL, *d_qn = NULL, *d_kn = NULL, *d_if = NULL, *d_q = NULL;
	int32_t *d_pos = NULL, *d_toff = NULL, *d_tab = NULL;
	int *d_n = NULL;
	bf16 *d_kv = NULL;
	if (rc)
		goto done;
	TRY(d_upload(&R, (void **)&d_qkv, a->qkv, (size_t)a->rows * width * sizeof(float)));
	if (a->bias)
		TRY(d_upload(&R, (void **)&d_b, a->bias, (size_t)width * sizeof(float)));
	if (a->q_norm)
		TRY(d_upload(&R, (void **)&d_qn, a->q_norm, (size_t)hd * sizeof(float)));
	if (a->k_norm)
		TRY(d_upload(&R, (void **)&d_kn, a->k_norm, (size_t)hd * sizeof(float)));
	TRY(d_upload(&R, (void **)&d_if, a->inv_freq, (size_t)(hd / 2) * sizeof(float)));
	TRY(d_upload(&R, (void **)&d_pos, a->pos, (size_t)a->rows * sizeof(int32_t)));
	TRY(d_upload(&R, (void **)&d_toff, a->tab_off, (size_t)a->rows * sizeof(int32_t)));
	TRY(d_upload(&R, (void **)&d_tab, a->tables, (size_t)a->n_tables * sizeof(int32_t)));
	TRY(d_counter(&R, &d_n, a->n_active));
	TRY(d_upload_bf16(&R, &d_kv, kv, n_kv));
	TRY(d_upload(&R, (void **)&d_q, q, qbytes));
	CK(&R, k_qkv_post(d_qkv, d_b, d_qn, d_kn, d_if, d_pos, d_toff, d_tab, d_n, a->rows, a->n_heads, a->eps,
			  to_geom(a->g), a->layer, d_kv, d_q, R.s));
	TRY(d_download(&R, q, d_q, qbytes));
	TRY(d_download_bf16(&R, kv, d_kv, n_kv));
done:
	r_end(&R);
	return rc;
}

// ---- attention ---------------------------------------------------------------------------

// Check the items against the rows, tables and slots; *n_parts = slots used
// (one past the largest), *n_pairs = (item, row) pairs.
static int
attn_validate(const struct kc_attn_args *a, int *n_parts, int *n_pairs, char *err, int errlen)
{
	if (!a->kv || !a->tables || !a->q || !a->pos || (a->n_items > 0 && (!a->items || !a->item_rows)) ||
	    a->n_heads <= 0 || a->n_heads % (a->g.n_kv_heads > 0 ? a->g.n_kv_heads : 1) != 0 || a->n_tables <= 0 ||
	    a->rows <= 0 || a->n_active < 0 || a->n_active > a->rows || a->n_item_rows < 0 || a->n_items < 0 ||
	    a->ctas < 1 || !geom_ok(a->g, a->layer, a->n_blocks))
		return bad(err, errlen, "kc_attention: bad arguments");
	const int bt = a->g.block_tokens;
	const int max_rows = k_attention_max_rows(a->n_heads, a->g.n_kv_heads, a->g.head_dim);
	for (int i = 0; i < a->n_tables; i++)
		if (a->tables[i] < 0 || a->tables[i] >= a->n_blocks)
			return bad(err, errlen, "kc_attention: table entry %d is block %d, outside 0..%d", i,
				   (int)a->tables[i], a->n_blocks - 1);
	for (int r = 0; r < a->rows; r++)
		if (a->pos[r] < 0)
			return bad(err, errlen, "kc_attention: row %d has position %d", r, (int)a->pos[r]);
	int64_t parts = 0, pairs = 0;
	for (int i = 0; i < a->n_items; i++) {
		const struct kc_attn_item *it = &a->items[i];
		if (it->n_rows < 1 || it->n_rows > max_rows || it->row0 < 0 ||
		    (int64_t)it->row0 + it->n_rows > a->n_item_rows || it->part0 < 0 || it->kv0 < 0 ||
		    it->kv1 < it->kv0 || it->tab < 0 ||
		    (it->kv1 > it->kv0 && (int64_t)it->tab + (it->kv1 - 1) / bt >= a->n_tables))
			return bad(err, errlen,
				   "kc_attention: item %d (row0 %d, n_rows %d of at most %d, tab %d, kv [%d, %d), part0 %d) "
				   "is out of range",
				   i, (int)it->row0, (int)it->n_rows, max_rows, (int)it->tab, (int)it->kv0, (int)it->kv1,
				   (int)it->part0);
		for (int j = 0; j < it->n_rows; j++)
			if (a->item_rows[it->row0 + j] < 0 || a->item_rows[it->row0 + j] >= a->rows)
				return bad(err, errlen, "kc_attention: item %d row %d is query row %d of %d", i, j,
					   (int)a->item_rows[it->row0 + j], a->rows);
		if ((int64_t)it->part0 + it->n_rows > parts)
			parts = (int64_t)it->part0 + it->n_rows;
		pairs += it->n_rows;
	}
	if (parts > (1 << 24))
		return bad(err, errlen, "kc_attention: %lld partial slots is too many", (long long)parts);
	*n_parts = (int)parts;
	*n_pairs = (int)pairs;
	return 0;
}

extern "C" int
kc_attention(const struct kc_attn_args *a, float *out, char *err, int errlen)
{
	if (!a || !out)
		return bad(err, errlen, "kc_attention: bad arguments");
	int n_parts = 0, n_pairs = 0;
	int rc = attn_validate(a, &n_parts, &n_pairs, err, errlen);
	if (rc)
		return rc;
	const int nh = a->n_heads, hd = a->g.head_dim;
	const size_t n_kv = (size_t)a->n_blocks * kc_block_elems(&a->g);
	const size_t n_out = (size_t)a->rows * nh * hd;
	struct run R;
	rc = r_begin(&R, "kc_attention", err, errlen);
	int32_t *rp_off = NULL, *rp_idx = NULL, *fill = NULL;
	unsigned char *used = NULL;
	k_attn_item *items = NULL;
	bf16 *d_kv = NULL, *d_out = NULL;
	float *d_q = NULL, *d_ml = NULL, *d_acc = NULL;
	int32_t *d_tab = NULL, *d_pos = NULL, *d_irows = NULL, *d_rpoff = NULL, *d_rpidx = NULL;
	k_attn_item *d_items = NULL;
	int *d_nitems = NULL, *d_n = NULL;
	int counts[2] = { 0, 0 }, n_cta = 0, n_sorted = 0;
	if (rc)
		goto done;

	// The merge's lists: row r's slots are rp_idx[rp_off[r] .. rp_off[r+1]).
	TRY(h_alloc(&R, (void **)&rp_off, (size_t)(a->rows + 1) * sizeof(int32_t)));
	TRY(h_alloc(&R, (void **)&fill, (size_t)(a->rows + 1) * sizeof(int32_t)));
	TRY(h_alloc(&R, (void **)&rp_idx, (size_t)n_pairs * sizeof(int32_t)));
	TRY(h_alloc(&R, (void **)&used, (size_t)n_parts));
	TRY(h_alloc(&R, (void **)&items, (size_t)a->n_items * sizeof(k_attn_item)));
	memset(rp_off, 0, (size_t)(a->rows + 1) * sizeof(int32_t));
	memset(used, 0, (size_t)n_parts);
	for (int i = 0; i < a->n_items; i++) {
		const struct kc_attn_item *it = &a->items[i];
		for (int j = 0; j < it->n_rows; j++) {
			if (used[it->part0 + j]) {
				rc = bad(err, errlen, "kc_attention: item %d reuses partial slot %d", i, (int)(it->part0 + j));
				goto done;
			}
			used[it->part0 + j] = 1;
			rp_off[a->item_rows[it->row0 + j] + 1]++;
		}
	}
	// One-warp items (decode items, and items of a few rows where the
	// kernel runs them: k_attn_warp_item reads k_init's settings) go after
	// the others, to the one-warp kernel, as backend.cu's plan puts them.
	CK(&R, k_init(hd));
	n_cta = 0;
	for (int pass = 0; pass < 2; pass++) {
		for (int i = 0; i < a->n_items; i++) {
			const struct kc_attn_item *it = &a->items[i];
			const int warp = k_attn_warp_item(it->n_rows, a->n_heads, a->g.n_kv_heads, a->g.head_dim);
			if (warp != pass)
				continue;
			k_attn_item *o = &items[n_sorted++];
			o->row0 = it->row0;
			o->n_rows = it->n_rows;
			o->tab = it->tab;
			o->kv0 = it->kv0;
			o->kv1 = it->kv1;
			o->part0 = it->part0;
			o->row = a->item_rows[it->row0];
			o->pos = a->pos[o->row];
		}
		if (pass == 0)
			n_cta = n_sorted;
	}
	counts[0] = n_cta;
	counts[1] = n_sorted - n_cta;
	for (int r = 0; r < a->rows; r++)
		rp_off[r + 1] += rp_off[r];
	memcpy(fill, rp_off, (size_t)(a->rows + 1) * sizeof(int32_t));
	for (int i = 0; i < a->n_items; i++) {
		const struct kc_attn_item *it = &a->items[i];
		for (int j = 0; j < it->n_rows; j++)
			rp_idx[fill[a->item_rows[it->row0 + j]]++] = it->part0 + j;
	}

	TRY(d_upload_bf16(&R, &d_kv, a->kv, n_kv));
	TRY(d_upload(&R, (void **)&d_tab, a->tables, (size_t)a->n_tables * sizeof(int32_t)));
	TRY(d_upload(&R, (void **)&d_q, a->q, n_out * sizeof(float)));
	TRY(d_upload(&R, (void **)&d_pos, a->pos, (size_t)a->rows * sizeof(int32_t)));
	TRY(d_upload(&R, (void **)&d_irows, a->item_rows, (size_t)a->n_item_rows * sizeof(int32_t)));
	TRY(d_upload(&R, (void **)&d_items, items, (size_t)a->n_items * sizeof(k_attn_item)));
	TRY(d_upload(&R, (void **)&d_nitems, counts, sizeof counts));
	TRY(d_upload(&R, (void **)&d_rpoff, rp_off, (size_t)(a->rows + 1) * sizeof(int32_t)));
	TRY(d_upload(&R, (void **)&d_rpidx, rp_idx, (size_t)n_pairs * sizeof(int32_t)));
	TRY(d_counter(&R, &d_n, a->n_active));
	TRY(d_upload_bf16(&R, &d_out, out, n_out));
	// Partials start as NaN (all bits set): a slot the merge reads but the
	// attention never wrote poisons the result.
	TRY(d_alloc(&R, (void **)&d_ml, (size_t)n_parts * nh * 2 * sizeof(float)));
	TRY(d_alloc(&R, (void **)&d_acc, (size_t)n_parts * nh * hd * sizeof(float)));
	CK(&R, cudaMemsetAsync(d_ml, 0xff, (size_t)n_parts * nh * 2 * sizeof(float), R.s));
	CK(&R, cudaMemsetAsync(d_acc, 0xff, (size_t)n_parts * nh * hd * sizeof(float), R.s));

	if (a->decode_path == 2) {
		int32_t *tab_off = NULL, *d_taboff = NULL;
		TRY(h_alloc(&R, (void **)&tab_off, (size_t)a->rows * sizeof(int32_t)));
		memset(tab_off, 0, (size_t)a->rows * sizeof(int32_t));
		for (int i = 0; i < a->n_items; i++)
			for (int j = 0; j < a->items[i].n_rows; j++)
				tab_off[a->item_rows[a->items[i].row0 + j]] = a->items[i].tab;
		TRY(d_upload(&R, (void **)&d_taboff, tab_off, (size_t)a->rows * sizeof(int32_t)));
		const int size = a->cluster ? a->cluster : k_attention_cluster_size(to_geom(a->g), nh);
		if (size < 1) {
			rc = bad(err, errlen, "kc_attention: no cluster kernel for this geometry");
			goto done;
		}
		CK(&R, k_attention_rows(d_q, d_kv, d_tab, d_taboff, d_pos, d_n, a->rows, nh, to_geom(a->g), a->layer, size,
					false, d_out, R.s));
		TRY(d_download_bf16(&R, out, d_out, n_out));
		goto done;
	}
	if (a->decode_path) {
		if (n_cta) {
			rc = bad(err, errlen, "kc_attention: decode_path with %d items that are not one-warp items", n_cta);
			goto done;
		}
		CK(&R, k_attention_decode(d_q, d_kv, d_tab, d_pos, d_irows, d_items, d_nitems, a->ctas, nh, to_geom(a->g),
					  a->layer, d_ml, d_acc, R.s));
	} else {
		CK(&R, k_attention(d_q, d_kv, d_tab, d_pos, d_irows, d_items, d_nitems, a->ctas, a->ctas, nh,
				   to_geom(a->g), a->layer, d_ml, d_acc, R.s, R.s));
	}
	CK(&R, k_attn_merge(d_ml, d_acc, d_rpoff, d_rpidx, d_n, a->rows, nh, hd, d_out, R.s));
	TRY(d_download_bf16(&R, out, d_out, n_out));
done:
	r_end(&R);
	return rc;
}

// ---- GEMM ----------------------------------------------------------------------------------

extern "C" int
kc_gemm_bf16(const float *w, int rows, int cols, const float *x, int n, float beta, float *y, char *err, int errlen)
{
	if (!w || !x || !y || rows <= 0 || cols <= 0 || n <= 0)
		return bad(err, errlen, "kc_gemm_bf16: bad arguments (rows %d, cols %d, n %d)", rows, cols, n);
	struct run R;
	int rc = r_begin(&R, "kc_gemm_bf16", err, errlen);
	bf16 *d_w = NULL, *d_x = NULL;
	float *d_y = NULL;
	const float alpha = 1.0f;
	const size_t ybytes = (size_t)n * rows * sizeof(float);
	cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
	if (rc)
		goto done;
	TRY(d_upload_bf16(&R, &d_w, w, (size_t)rows * cols));
	TRY(d_upload_bf16(&R, &d_x, x, (size_t)n * cols));
	TRY(d_upload(&R, (void **)&d_y, y, ybytes));
	if ((st = cublasCreate(&R.blas)) != CUBLAS_STATUS_SUCCESS) {
		R.blas = NULL;
		goto blas_fail;
	}
	if ((st = cublasSetStream(R.blas, R.s)) != CUBLAS_STATUS_SUCCESS ||
	    (st = cublasSetMathMode(R.blas, CUBLAS_DEFAULT_MATH)) != CUBLAS_STATUS_SUCCESS)
		goto blas_fail;
	// The backend's gemm(): column-major C (rows x n) = W^T' . X, i.e.
	// y(n, rows) row-major = x(n, cols) . W(rows, cols)^T.
	st = cublasGemmEx(R.blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, cols, &alpha, d_w, CUDA_R_16BF, cols, d_x,
			  CUDA_R_16BF, cols, &beta, d_y, CUDA_R_32F, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
	if (st != CUBLAS_STATUS_SUCCESS)
		goto blas_fail;
	TRY(d_download(&R, y, d_y, ybytes));
	goto done;
blas_fail:
	rc = eng_seterr(err, errlen > 0 ? (size_t)errlen : 0, ENG_ERR_DEVICE, "kc_gemm_bf16: cuBLAS: %s",
			cublasGetStatusString(st));
done:
	r_end(&R);
	return rc;
}
