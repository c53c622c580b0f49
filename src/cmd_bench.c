/* cmd_bench.c - braid bench: CPU/GPU decode throughput for N sequences
 * forked from one prompt, against the bound the memory bandwidth sets (host
 * read bandwidth on the CPU, device copy bandwidth on a GPU), and the KV
 * memory the forks share (main thread = engine thread); on a GPU also where
 * a step's time goes (the backend's timing op).  With --shape it
 * writes a random-weight bf16 model of a real architecture's shape to a
 * scratch directory and loads it through the normal loader.  --server-path
 * hands over to bench_server.c: the scheduler and server path against the
 * engine alone. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "backend.h"
#include "bench_server.h"
#include "build_config.h"
#include "cli.h"
#include "engine.h"
#include "safetensors.h"
#ifdef BRAID_HAVE_CUDA
#include "cuda/cuda.h"
#endif

static const struct cli_opt opts[] = {
	{ "model", "DIR", "model directory to benchmark (default: --shape 0.6b)" },
	{ "shape", "NAME", "random bf16 model of this shape: tiny, 0.6b, 1.7b, 8b (Qwen3 shapes)" },
	{ "scratch", "DIR", "where --shape models are written and reused (default $TMPDIR or /tmp; made if missing)" },
	{ "n", "LIST", "comma-separated thread counts N to fork from the prompt (default 1,8,32)" },
	{ "prompt-len", "T", "prompt tokens (default 128)" },
	{ "gen", "T", "tokens generated per sequence (default 16)" },
	{ "threads", "N", "CPU threads (default: all cores)" },
	CLI_OPT_DEVICE,
	CLI_OPT_KV_MB,
	{ "json", "FILE", "also write the results as JSON to FILE" },
	{ "server-path", NULL, "benchmark the server path instead: the engine alone, N sc jobs through the "
			       "scheduler, then through the server with websocket clients (default model: the "
			       "tiny test model; --n is the threads per job, default 8; --gen the steps, default 64)" },
	{ "jobs", "LIST", "--server-path: comma-separated counts N of concurrent sc jobs (default 1,4,16)" },
	{ "clients", "N", "--server-path: websocket clients on /v1/events (default 50; 0 = no server)" },
};
#define N_OPTS ((int)(sizeof opts / sizeof opts[0]))
#define OPT(name) cli_get(opts, N_OPTS, &a, name)
static const char synopsis[] =
	"[--model DIR | --shape tiny|0.6b|1.7b|8b] [--n 1,8,32] [--prompt-len T] [--gen T] [--threads N] [--json FILE]\n"
	"       braid bench --server-path [--model DIR | --shape S] [--jobs 1,4,16] [--n 8] [--gen 64] [--clients 50] [--json FILE]";

/* ---- synthetic models ------------------------------------------------------ */

struct shape {
	const char *name;
	int hidden, layers, heads, kv_heads, head_dim, inter, vocab, tied;
};

static const struct shape shapes[] = {
	{ "tiny", 256, 4, 8, 4, 32, 768, 4096, 1 },
	{ "0.6b", 1024, 28, 16, 8, 128, 3072, 151936, 1 },
	{ "1.7b", 2048, 28, 16, 8, 128, 6144, 151936, 1 },
	{ "8b", 4096, 36, 32, 8, 128, 12288, 151936, 0 },
};

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct tensor_spec {
	char name[96];
	int64_t rows, cols;   /* cols = 0 for vectors */
	int is_norm;
};

static int
shape_tensors(const struct shape *s, struct tensor_spec **out)
{
	int n = 3 + s->layers * 11;
	struct tensor_spec *t = calloc(n, sizeof *t);
	if (!t)
		return -1;
	int k = 0;
#define T(nm, r, c, nrm) do { snprintf(t[k].name, sizeof t[k].name, "%s", nm); \
	t[k].rows = (r); t[k].cols = (c); t[k].is_norm = (nrm); k++; } while (0)
	T("model.embed_tokens.weight", s->vocab, s->hidden, 0);
	T("model.norm.weight", s->hidden, 0, 1);
	if (!s->tied)
		T("lm_head.weight", s->vocab, s->hidden, 0);
	for (int l = 0; l < s->layers; l++) {
		char nm[96];
#define L(suffix, r, c, nrm) do { snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suffix); T(nm, r, c, nrm); } while (0)
		L("input_layernorm.weight", s->hidden, 0, 1);
		L("self_attn.q_proj.weight", s->heads * s->head_dim, s->hidden, 0);
		L("self_attn.k_proj.weight", s->kv_heads * s->head_dim, s->hidden, 0);
		L("self_attn.v_proj.weight", s->kv_heads * s->head_dim, s->hidden, 0);
		L("self_attn.o_proj.weight", s->hidden, s->heads * s->head_dim, 0);
		L("self_attn.q_norm.weight", s->head_dim, 0, 1);
		L("self_attn.k_norm.weight", s->head_dim, 0, 1);
		L("post_attention_layernorm.weight", s->hidden, 0, 1);
		L("mlp.gate_proj.weight", s->inter, s->hidden, 0);
		L("mlp.up_proj.weight", s->inter, s->hidden, 0);
		L("mlp.down_proj.weight", s->hidden, s->inter, 0);
#undef L
	}
#undef T
	*out = t;
	return k;
}

/* Normal-ish values from a xorshift generator (sum of uniforms). */
static inline float
rand_weight(uint64_t *st, float scale)
{
	float acc = 0;
	for (int i = 0; i < 4; i++) {
		*st ^= *st << 13;
		*st ^= *st >> 7;
		*st ^= *st << 17;
		acc += (float)(*st >> 40) * (1.0f / 16777216.0f);
	}
	return (acc - 2.0f) * scale * 1.7320508f;
}

/* mkdir -p: dir and any missing parents; 0 or -1 with errno. */
static int
make_dirs(const char *dir)
{
	char p[4096];
	if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p) {
		errno = ENAMETOOLONG;
		return -1;
	}
	for (char *c = p + 1; *c; c++) {
		if (*c != '/')
			continue;
		*c = '\0';
		if (mkdir(p, 0755) != 0 && errno != EEXIST)
			return -1;
		*c = '/';
	}
	return mkdir(p, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

static int
write_shape_model(const struct shape *s, const char *dir)
{
	char path[4096];
	struct tensor_spec *t = NULL;
	int n = shape_tensors(s, &t);
	if (n < 0)
		return -1;
	int rc = -1;
	FILE *f = NULL;
	json_t *hdr = json_object();
	char *hjson = NULL;
	uint16_t *buf = NULL;
	if (make_dirs(dir) != 0) {
		fprintf(stderr, "braid bench: mkdir %s: %s\n", dir, strerror(errno));
		goto done;
	}
	/* config.json */
	if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
		goto done;
	json_t *cfg = json_pack("{s:[s],s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:f,s:f,s:b,s:i,s:s}",
				"architectures", "Qwen3ForCausalLM", "vocab_size", s->vocab,
				"hidden_size", s->hidden, "num_hidden_layers", s->layers,
				"num_attention_heads", s->heads, "num_key_value_heads", s->kv_heads,
				"head_dim", s->head_dim, "intermediate_size", s->inter,
				"max_position_embeddings", 40960, "rms_norm_eps", 1e-6,
				"rope_theta", 1000000.0, "tie_word_embeddings", s->tied,
				"eos_token_id", s->vocab > 151645 ? 151645 : s->vocab - 1, "torch_dtype", "bfloat16");
	if (!cfg || json_dump_file(cfg, path, JSON_INDENT(1)) != 0) {
		json_decref(cfg);
		fprintf(stderr, "braid bench: cannot write %s\n", path);
		goto done;
	}
	json_decref(cfg);
	/* header */
	uint64_t off = 0;
	for (int i = 0; i < n; i++) {
		int64_t numel = t[i].rows * (t[i].cols ? t[i].cols : 1);
		json_t *shape = t[i].cols ? json_pack("[I,I]", (json_int_t)t[i].rows, (json_int_t)t[i].cols)
					  : json_pack("[I]", (json_int_t)t[i].rows);
		json_object_set_new(hdr, t[i].name,
				    json_pack("{s:s,s:o,s:[I,I]}", "dtype", "BF16", "shape", shape,
					      "data_offsets", (json_int_t)off, (json_int_t)(off + numel * 2)));
		off += numel * 2;
	}
	hjson = json_dumps(hdr, JSON_COMPACT | JSON_SORT_KEYS);
	size_t hlen = strlen(hjson), padded = (hlen + 7) / 8 * 8;
	if (snprintf(path, sizeof path, "%s/model.safetensors.tmp", dir) >= (int)sizeof path)
		goto done;
	f = fopen(path, "wb");
	if (!f) {
		fprintf(stderr, "braid bench: cannot write %s: %s\n", path, strerror(errno));
		goto done;
	}
	uint64_t le = padded;
	fwrite(&le, 8, 1, f);
	fwrite(hjson, 1, hlen, f);
	for (size_t i = hlen; i < padded; i++)
		fputc(' ', f);
	size_t chunk = 1 << 20;
	buf = malloc(chunk * sizeof *buf);
	uint64_t st = 0x9E3779B97F4A7C15ull;
	for (int i = 0; buf && i < n; i++) {
		int64_t numel = t[i].rows * (t[i].cols ? t[i].cols : 1);
		float scale = t[i].cols ? 1.0f / sqrtf((float)t[i].cols) : 0;
		for (int64_t done_n = 0; done_n < numel;) {
			size_t m = (size_t)(numel - done_n) < chunk ? (size_t)(numel - done_n) : chunk;
			for (size_t j = 0; j < m; j++)
				buf[j] = st_f32_to_bf16(t[i].is_norm ? 1.0f + 0.1f * rand_weight(&st, 1)
						       : rand_weight(&st, scale));
			if (fwrite(buf, sizeof *buf, m, f) != m)
				goto done;
			done_n += m;
		}
	}
	if (!buf || fclose(f) != 0) {
		f = NULL;
		goto done;
	}
	f = NULL;
	char final[4096];
	if (snprintf(final, sizeof final, "%s/model.safetensors", dir) >= (int)sizeof final ||
	    rename(path, final) != 0)
		goto done;
	rc = 0;
done:
	if (f)
		fclose(f);
	free(buf);
	free(hjson);
	json_decref(hdr);
	free(t);
	return rc;
}

/* ---- memory bandwidth --------------------------------------------------------- */

struct bw_job {
	const uint64_t *p;
	size_t n;
	uint64_t sum;
};

static void *
bw_read(void *arg)
{
	struct bw_job *j = arg;
	uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
	for (size_t i = 0; i + 4 <= j->n; i += 4) {
		s0 += j->p[i];
		s1 += j->p[i + 1];
		s2 += j->p[i + 2];
		s3 += j->p[i + 3];
	}
	j->sum = s0 ^ s1 ^ s2 ^ s3;
	return NULL;
}

/* Best of several multi-threaded streaming reads of a 1 GiB buffer, bytes/s. */
static double
measure_read_bandwidth(int threads)
{
	size_t bytes = (size_t)1 << 30, n = bytes / 8;
	uint64_t *buf = malloc(bytes);
	if (!buf)
		return 0;
	for (size_t i = 0; i < n; i++)
		buf[i] = i * 0x9E3779B97F4A7C15ull;
	if (threads < 1)
		threads = 1;
	if (threads > 64)
		threads = 64;
	pthread_t th[64];
	struct bw_job jobs[64];
	double best = 0;
	uint64_t sink = 0;
	for (int rep = 0; rep < 5; rep++) {
		double t0 = now_s();
		for (int i = 0; i < threads; i++) {
			jobs[i].p = buf + n / threads * i;
			jobs[i].n = n / threads;
			pthread_create(&th[i], NULL, bw_read, &jobs[i]);
		}
		for (int i = 0; i < threads; i++) {
			pthread_join(th[i], NULL);
			sink ^= jobs[i].sum;
		}
		double bw = (double)(n / threads * threads * 8) / (now_s() - t0);
		if (bw > best)
			best = bw;
	}
	free(buf);
	return sink == 42 ? best + 1e-9 : best;   /* keep the sums alive */
}

/* ---- the benchmark ------------------------------------------------------------- */

/* What every row needs to know about the engine and the machine. */
struct bench_env {
	eng *e;
	int prompt_len;
	double kv_pos_bytes;    /* KV bytes per position: layers x (K, V) x kv_heads x head_dim x elem */
	double block_bytes;     /* KV bytes per block                                   */
	int block_tokens;
	double weights_read;    /* weight bytes streamed per step                       */
	double bw;              /* bandwidth, bytes/s                                   */
};

struct bench_row {
	int n;
	double prefill_tps, decode_tps, e2e_tps, step_ms;
	double kv_read, bytes_per_step, bound_tps, frac_bound;
	double kv_used, kv_private, kv_end;   /* bytes */
	/* per timed step, where the backend times itself (the GPU): device
	 * time of the passes and of sampling, host time spent planning,
	 * uploading and launching a pass */
	int timed;
	double pass_gpu_ms, sample_gpu_ms, pass_host_ms;
	double ahead;    /* the timed passes' fraction planned ahead (while the GPU sampled) */
	double run_ahead;   /* and launched then, with the tokens sampled on the device */
};

static int
kv_blocks_used(const eng *e)
{
	return eng_kv_blocks_total(e) - eng_kv_blocks_free(e);
}

/* One step in which every one of the n sequences must sample a token (the
 * bench never stops a sequence at EOS: each gets exactly its tokens). */
static int
step_all(eng *e, struct eng_token *out, int n)
{
	int got = 0, s = eng_step(e, out, n, &got);
	if (s < 0) {
		const char *why = eng_last_error(e);
		fprintf(stderr, "braid bench: step with N=%d: %s%s%s\n", n, eng_strerror(s), *why ? ": " : "", why);
		return -1;
	}
	if (got != n) {
		fprintf(stderr, "braid bench: a step with N=%d sampled %d sequences\n", n, got);
		return -1;
	}
	return 0;
}

/* KV blocks a row of n threads needs at most: the prompt's, shared by the
 * forks, and each thread's own from the prompt's last full block to its
 * last position. */
static long
blocks_needed(long prompt_len, int n, long gen, int bt)
{
	const long shared = prompt_len / bt;
	const long own = (prompt_len + gen + 1 + bt - 1) / bt - shared;
	return (prompt_len + bt - 1) / bt + (long)n * own;
}

/* Prefill one random prompt, fork n children, sample gen tokens per child
 * plus one more step: the first step samples from the shared prompt logits
 * (no forward); the gen timed steps each run every child's newest token
 * through the model.  End-to-end covers prefill, fork and the steps that
 * produce the first gen tokens of every child. */
static int
run_one(const struct bench_env *be, int n, int gen, struct bench_row *row)
{
	eng *e = be->e;
	const struct model_config *c = eng_config(e);
	int prompt_len = be->prompt_len;
	int32_t *prompt = malloc(prompt_len * sizeof *prompt);
	int *kids = malloc(n * sizeof *kids);
	struct eng_token *out = malloc(n * sizeof *out);
	int rc = -1, parent = -1, n_kids = 0;
	if (!prompt || !kids || !out) {
		fprintf(stderr, "braid bench: out of memory\n");
		goto done;
	}
	uint64_t st = 12345 + n;
	for (int i = 0; i < prompt_len; i++) {
		st = st * 6364136223846793005ull + 1442695040888963407ull;
		prompt[i] = (int32_t)((st >> 33) % (uint64_t)c->vocab_size);
	}
	struct samp_params sp = samp_default_params();
	sp.temperature = 1.0f;
	sp.seed = 7;
	int base_blocks = kv_blocks_used(e);
	double t_start = now_s();
	parent = eng_seq_new(e, prompt, prompt_len, &sp);
	int s = parent < 0 ? parent : eng_seq_prefill(e, parent, NULL);
	if (s < 0) {
		const char *why = eng_last_error(e);
		fprintf(stderr, "braid bench: prefill: %s%s%s\n", eng_strerror(s), *why ? ": " : "", why);
		goto done;
	}
	row->prefill_tps = prompt_len / (now_s() - t_start);
	s = eng_seq_fork(e, parent, n, kids);
	if (s < 0) {
		fprintf(stderr, "braid bench: fork %d: %s\n", n, eng_strerror(s));
		goto done;
	}
	n_kids = n;
	eng_seq_free(e, parent);
	parent = -1;
	row->kv_used = (double)(kv_blocks_used(e) - base_blocks) * be->block_bytes;
	if (step_all(e, out, n))
		goto done;
	row->timed = eng_backend_timing(e, 1, NULL) == 0;
	double t0 = now_s(), t_e2e = t0;
	for (int i = 0; i < gen; i++) {
		if (step_all(e, out, n))
			goto done;
		if (i == gen - 2)
			t_e2e = now_s();   /* every child has gen tokens now */
	}
	double dt = now_s() - t0;
	struct backend_timing tm;
	if (row->timed && eng_backend_timing(e, 0, &tm) == 0 && gen > 0) {
		row->pass_gpu_ms = tm.pass_gpu_ms / gen;
		row->sample_gpu_ms = tm.sample_gpu_ms / gen;
		row->pass_host_ms = tm.pass_host_ms / gen;
		row->ahead = tm.passes > 0 ? (double)tm.passes_ahead / (double)tm.passes : 0.0;
		row->run_ahead = tm.passes > 0 ? (double)tm.passes_run_ahead / (double)tm.passes : 0.0;
	} else {
		row->timed = 0;
	}
	row->kv_end = (double)(kv_blocks_used(e) - base_blocks) * be->block_bytes;
	row->kv_private = (double)n * ((prompt_len + be->block_tokens - 1) / be->block_tokens) * be->block_bytes;
	row->n = n;
	row->decode_tps = (double)n * gen / dt;
	row->e2e_tps = (double)n * gen / (t_e2e - t_start);
	row->step_ms = dt / gen * 1e3;
	/* Timed step j (1..gen) attends over the prompt (shared: read once for
	 * all children) and j positions of the child's own. */
	row->kv_read = be->kv_pos_bytes * (prompt_len + n * (gen + 1) / 2.0);
	row->bytes_per_step = be->weights_read + row->kv_read;
	row->bound_tps = be->bw > 0 ? n * be->bw / row->bytes_per_step : 0;
	row->frac_bound = row->bound_tps > 0 ? row->decode_tps / row->bound_tps : 0;
	rc = 0;
done:
	for (int i = 0; i < n_kids; i++)
		eng_seq_free(e, kids[i]);
	if (parent >= 0)
		eng_seq_free(e, parent);
	free(out);
	free(kids);
	free(prompt);
	return rc;
}

/* A comma-separated list of counts in [1, 4096] into out[max]. */
static int
parse_list(const char *opt, const char *list, int *out, int max, int *n_out)
{
	int n = 0;
	for (const char *p = list; *p;) {
		char *end;
		long v = strtol(p, &end, 10);
		if (end == p || v < 1 || v > 4096 || (*end && *end != ',') || n == max) {
			fprintf(stderr, "braid bench: --%s wants a comma-separated list of at most %d counts in [1, 4096], got '%s'\n",
				opt, max, list);
			return -1;
		}
		out[n++] = (int)v;
		p = *end ? end + 1 : end;
	}
	if (n == 0) {
		fprintf(stderr, "braid bench: --%s is empty\n", opt);
		return -1;
	}
	*n_out = n;
	return 0;
}

/* The tiny test model of the source tree this binary was built from. */
static void
test_model_dir(char *out, size_t cap)
{
	const char *data = getenv("BRAID_TEST_DATA");
	if (data && *data) {
		snprintf(out, cap, "%s/models/qwen3-f32", data);
		return;
	}
	/* BRAID_WEB_ROOT is the tree's web/ folder */
	size_t len = strlen(BRAID_WEB_ROOT);
	snprintf(out, cap, "%.*s/tests/data/models/qwen3-f32", (int)(len > 4 ? len - 4 : len), BRAID_WEB_ROOT);
}

static int
copy_file(const char *from, const char *to)
{
	FILE *in = fopen(from, "rb"), *o = in ? fopen(to, "wb") : NULL;
	char buf[65536];
	size_t n;
	int rc = in && o ? 0 : -1;
	while (rc == 0 && (n = fread(buf, 1, sizeof buf, in)) > 0)
		if (fwrite(buf, 1, n, o) != n)
			rc = -1;
	if (in && ferror(in))
		rc = -1;
	if (o && fclose(o) != 0)
		rc = -1;
	if (in)
		fclose(in);
	return rc;
}

/* Resolve --model / --shape into dir (writing the shape model if needed).
 * A shape model gets the test model's tokenizer when with_tokenizer is
 * set (the scheduler needs one to render prompts).  0, 1 on failure. */
static int
resolve_model(const struct cli_args *args, int with_tokenizer, char *dir, size_t cap)
{
	const struct cli_args a = *args;
	const struct shape *shp = NULL;
	if (OPT("model")) {
		snprintf(dir, cap, "%s", OPT("model"));
		return 0;
	}
	if (with_tokenizer && !OPT("shape")) {
		test_model_dir(dir, cap);
		return 0;
	}
	const char *want = OPT("shape") ? OPT("shape") : "0.6b";
	for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
		if (!strcmp(shapes[i].name, want))
			shp = &shapes[i];
	if (!shp) {
		fprintf(stderr, "braid bench: unknown --shape '%s' (tiny, 0.6b, 1.7b, 8b)\n", want);
		return 2;
	}
	const char *scratch = OPT("scratch") ? OPT("scratch") : getenv("TMPDIR");
	snprintf(dir, cap, "%s/braid-bench-%s", scratch ? scratch : "/tmp", shp->name);
	char st_path[4200];
	snprintf(st_path, sizeof st_path, "%s/model.safetensors", dir);
	if (access(st_path, R_OK) != 0) {
		fprintf(stderr, "writing a random bf16 model of shape %s to %s ...\n", shp->name, dir);
		if (write_shape_model(shp, dir) != 0) {
			fprintf(stderr, "braid bench: cannot write the model to %s\n", dir);
			return 1;
		}
	}
	static const char *const tok_files[] = { "tokenizer.json", "tokenizer_config.json" };
	for (int i = 0; with_tokenizer && i < 2; i++) {
		char from[4200], to[4200], tm[4096];
		test_model_dir(tm, sizeof tm);
		snprintf(from, sizeof from, "%s/%s", tm, tok_files[i]);
		snprintf(to, sizeof to, "%s/%s", dir, tok_files[i]);
		if (access(to, R_OK) != 0 && copy_file(from, to) != 0) {
			fprintf(stderr, "braid bench: cannot copy %s to %s\n", from, to);
			return 1;
		}
	}
	return 0;
}

static int
bench_server_path(const struct cli_args *args, long gen, long threads, enum eng_device device, size_t kv_bytes)
{
	const struct cli_args a = *args;
	struct bsrv_params bp = { 0 };
	char dir[4096];
	long clients = 50;
	if (parse_list("jobs", OPT("jobs") ? OPT("jobs") : "1,4,16", bp.jobs, BSRV_MAX_LIST, &bp.n_jobs) ||
	    parse_list("n", OPT("n") ? OPT("n") : "8", bp.per_job, BSRV_MAX_LIST, &bp.n_per_job) ||
	    (OPT("clients") && cli_int("clients", OPT("clients"), 0, 1000, &clients)))
		return 2;
	for (int i = 0; i < bp.n_jobs; i++)
		for (int k = 0; k < bp.n_per_job; k++)
			if (bp.jobs[i] * bp.per_job[k] > 255) {
				fprintf(stderr, "braid bench: --jobs x --n = %d x %d threads is more than one step carries (255)\n",
					bp.jobs[i], bp.per_job[k]);
				return 2;
			}
	int rc = resolve_model(&a, 1, dir, sizeof dir);
	if (rc)
		return rc;
	bp.model_dir = dir;
	bp.device = device;
	bp.kv_bytes = kv_bytes;
	bp.n_threads = (int)threads;
	bp.steps = OPT("gen") ? (int)gen : 64;
	bp.clients = (int)clients;
	bp.json_path = OPT("json");
	return bsrv_run(&bp);
}

/* The GPU's state for the report (zeros without CUDA). */
struct gpu_report {
	int probed;                  /* device info read before eng_create */
	char name[128];
	size_t total, free_before, free_after;
	int bw_rc;                   /* cuda_copy_bandwidth's status       */
	double bw_gbps;
	char bw_err[256];
};

/* Before eng_create, when the engine may run on a GPU: device 0's memory
 * and its copy bandwidth (measured while the memory is still free). */
static void
gpu_probe_before(enum eng_device dev, struct gpu_report *g)
{
	memset(g, 0, sizeof *g);
#ifdef BRAID_HAVE_CUDA
	if (dev == ENG_DEVICE_CPU || cuda_device_count() < 1)
		return;
	if (cuda_device_info(0, g->name, sizeof g->name, &g->total, &g->free_before) != ENG_OK)
		return;
	g->probed = 1;
	g->bw_rc = cuda_copy_bandwidth(0, &g->bw_gbps, g->bw_err, sizeof g->bw_err);
#else
	(void)dev;
#endif
}

static void
gpu_probe_after(struct gpu_report *g)
{
#ifdef BRAID_HAVE_CUDA
	size_t total = 0;
	if (g->probed && cuda_device_info(0, NULL, 0, &total, &g->free_after) != ENG_OK)
		g->free_after = 0;
#else
	(void)g;
#endif
}

int
cmd_bench(int argc, char **argv)
{
	struct cli_args a;
	int pr = cli_parse("bench", synopsis, opts, N_OPTS, argc, argv, &a);
	if (pr != 0)
		return pr > 0 ? 0 : 2;
	long prompt_len = 128, gen = 16, threads = 0;
	struct eng_params ep = eng_default_params();
	if ((OPT("prompt-len") && cli_int("prompt-len", OPT("prompt-len"), 1, 1 << 20, &prompt_len)) ||
	    (OPT("gen") && cli_int("gen", OPT("gen"), 1, 1 << 20, &gen)) ||
	    (OPT("threads") && cli_int("threads", OPT("threads"), 0, 1024, &threads)) ||
	    cli_parse_device("bench", OPT("device"), &ep.device) || cli_parse_kv("bench", OPT("kv-mb"), &ep.kv_bytes))
		return 2;
	if (OPT("server-path"))
		return bench_server_path(&a, gen, threads, ep.device, ep.kv_bytes);
	if (OPT("jobs") || OPT("clients")) {
		fprintf(stderr, "braid bench: --jobs and --clients go with --server-path\n");
		return 2;
	}
	int ns[16], n_ns = 0;
	if (parse_list("n", OPT("n") ? OPT("n") : "1,8,32", ns, 16, &n_ns))
		return 2;

	char dir[4096];
	int mr = resolve_model(&a, 0, dir, sizeof dir);
	if (mr)
		return mr;

	ep.model_dir = dir;
	ep.n_threads = (int)threads;
	struct gpu_report g;
	gpu_probe_before(ep.device, &g);
	char err[ENG_ERRLEN];
	const double t_create = now_s();
	eng *e = eng_create(&ep, err, sizeof err);
	if (!e) {
		fprintf(stderr, "braid bench: %s\n", err);
		return 1;
	}
	const double start_s = now_s() - t_create;
	const struct model_config *c = eng_config(e);
	/* Every sampled token takes a position, the last one's included. */
	if (c->max_position > 0 && prompt_len + gen + 1 > c->max_position) {
		fprintf(stderr, "braid bench: --prompt-len %ld and --gen %ld (%ld positions with the token the last step "
			"samples) go past the model's context of %d positions\n", prompt_len, gen, prompt_len + gen + 1,
			c->max_position);
		eng_destroy(e);
		return 2;
	}
	int on_gpu = !strcmp(eng_device_name(e), "cuda");
	struct bench_env be = { .e = e, .prompt_len = (int)prompt_len, .block_tokens = ep.block_tokens };
	if (be.block_tokens <= 0)
		be.block_tokens = 16;
	be.kv_pos_bytes = (double)c->n_layers * 2 * c->n_kv_heads * c->head_dim * (on_gpu ? 2 : 4);
	be.block_bytes = be.kv_pos_bytes * be.block_tokens;
	be.weights_read = (double)eng_weight_bytes(e);
	const char *probe;
	if (on_gpu) {
		if (!g.probed || g.bw_rc != ENG_OK) {
			fprintf(stderr, "braid bench: device copy bandwidth: %s\n",
				g.probed ? g.bw_err : "no device information before the engine started");
			eng_destroy(e);
			return 1;
		}
		gpu_probe_after(&g);
		be.bw = g.bw_gbps * 1e9;
		probe = "device-to-device copy of 1 GiB, bytes read + written, best of 10";
	} else {
		be.bw = measure_read_bandwidth(eng_threads(e));
		probe = "host streaming read of 1 GiB, best of 5";
	}
	char rule[512];
	snprintf(rule, sizeof rule,
		 "bound tok/s = N x bandwidth / bytes per step; bytes per step = weights read per step "
		 "(every weight but an untied input embedding table, of which a step gathers N rows) "
		 "+ KV read per step, averaged over the timed steps: the prompt's KV once (shared by the "
		 "N children) plus N x (gen + 1) / 2 positions of their own; KV bytes per position = "
		 "layers x 2 x kv_heads x head_dim x %d (%s)",
		 on_gpu ? 2 : 4, on_gpu ? "bf16 on the GPU" : "f32 on the CPU");
	printf("model %s (%s, hidden %d, %d layers, vocab %d, %.1f MB of weights read per step), device %s, %d threads\n",
	       dir, c->arch_name, c->hidden_size, c->n_layers, c->vocab_size, eng_weight_bytes(e) / 1e6,
	       eng_device_name(e), eng_threads(e));
	printf("engine start: %.2f s (loading the weights%s)\n", start_s,
	       on_gpu ? ", the KV pool, tuning the GEMMs" : " and the KV pool");
	if (on_gpu)
		printf("GPU %s: %.2f GB, %.2f GB free before the engine, %.2f GB after (weights, KV pool, buffers: %.2f GB)\n",
		       g.name, g.total / 1e9, g.free_before / 1e9, g.free_after / 1e9,
		       ((double)g.free_before - (double)g.free_after) / 1e9);
	printf("%s bandwidth (%s): %.1f GB/s\n", on_gpu ? "device copy" : "memory read", probe, be.bw / 1e9);
	printf("KV pool: %d blocks of %d positions, %.0f bytes per position\n", eng_kv_blocks_total(e),
	       be.block_tokens, be.kv_pos_bytes);
	printf("%s\n", rule);
	printf("prompt %ld tokens, %ld tokens generated per sequence (EOS ignored)\n\n", prompt_len, gen);
	printf("| N | prefill tok/s | decode tok/s | end-to-end tok/s | ms/step | bytes/step (MB) | achieved GB/s "
	       "| of bound | KV used (MB) | KV if private (MB) |\n");
	printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
	fflush(stdout);
	json_t *rows = json_array();
	int rc = 0;
	for (int i = 0; i < n_ns; i++) {
		struct bench_row r = { 0 };
		const long need = blocks_needed(prompt_len, ns[i], gen, be.block_tokens);
		if (need > eng_kv_blocks_total(e)) {
			fprintf(stderr, "braid bench: N=%d needs up to %ld KV blocks of %d positions (the %ld-token prompt "
				"once, %ld more positions per thread); the pool holds %d: give a larger --kv-mb\n", ns[i],
				need, be.block_tokens, prompt_len, gen + 1, eng_kv_blocks_total(e));
			rc = 1;
			break;
		}
		/* the GPU's first pass of a batch size captures graphs, tunes
		 * cuBLAS: warm it up with a short untimed run */
		if ((on_gpu && run_one(&be, ns[i], 2, &r) != 0) || run_one(&be, ns[i], (int)gen, &r) != 0) {
			rc = 1;
			break;
		}
		double achieved = r.bytes_per_step / (r.step_ms / 1e3);
		printf("| %d | %.1f | %.2f | %.2f | %.2f | %.1f | %.1f | %.0f%% | %.1f | %.1f |\n", r.n, r.prefill_tps,
		       r.decode_tps, r.e2e_tps, r.step_ms, r.bytes_per_step / 1e6, achieved / 1e9, 100 * r.frac_bound,
		       r.kv_used / 1e6, r.kv_private / 1e6);
		fflush(stdout);
		json_t *row = json_pack("{s:i,s:i,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f}", "n", r.n,
					"tokens_per_seq", (int)gen, "prefill_tok_s", r.prefill_tps,
					"decode_tok_s", r.decode_tps, "e2e_tok_s", r.e2e_tps, "ms_per_step", r.step_ms,
					"kv_read_bytes_per_step", r.kv_read, "bytes_per_step", r.bytes_per_step,
					"bound_tok_s", r.bound_tps, "fraction_of_bound", r.frac_bound,
					"fraction_of_bandwidth", r.frac_bound, "kv_bytes_used", r.kv_used,
					"kv_bytes_private", r.kv_private, "kv_bytes_end", r.kv_end);
		if (row && r.timed)
			json_object_update_new(row, json_pack("{s:f,s:f,s:f,s:f,s:f,s:f}", "pass_gpu_ms_per_step", r.pass_gpu_ms,
							      "sample_gpu_ms_per_step", r.sample_gpu_ms,
							      "pass_host_ms_per_step", r.pass_host_ms,
							      "passes_planned_ahead", r.ahead, "passes_run_ahead", r.run_ahead,
							      "gpu_idle_ms_per_step",
							      r.step_ms - r.pass_gpu_ms - r.sample_gpu_ms));
		if (!row || json_array_append_new(rows, row) != 0)
			rc = 1;
	}
	/* Below the table: a decode step's time by where it went (the timed
	 * rows' fields). */
	size_t ri;
	json_t *jr;
	int first = 1;
	json_array_foreach(rows, ri, jr) {
		if (!json_object_get(jr, "pass_gpu_ms_per_step"))
			continue;
#define F(k) json_real_value(json_object_get(jr, k))
		printf("%sN=%d: %.3f ms/step = passes %.3f ms on the GPU + sampling %.3f ms on the GPU + %.3f ms "
		       "the GPU waits (the host's plan, upload and launch of a pass: %.3f ms; %.0f%% of the passes "
		       "planned while the GPU sampled, %.0f%% also launched then)\n", first ? "\n" : "",
		       (int)json_integer_value(json_object_get(jr, "n")), F("ms_per_step"), F("pass_gpu_ms_per_step"),
		       F("sample_gpu_ms_per_step"), F("gpu_idle_ms_per_step"), F("pass_host_ms_per_step"),
		       100 * F("passes_planned_ahead"), 100 * F("passes_run_ahead"));
#undef F
		first = 0;
	}
	if (OPT("json")) {
		json_t *doc = json_pack("{s:s,s:s,s:s,s:i,s:f,s:f,s:s,s:f,s:f,s:f,s:f,s:f,s:i,s:i,s:i,s:i,s:s,s:f,s:o}",
					"model", dir, "shape", OPT("shape") ? OPT("shape") : "",
					"device", eng_device_name(e), "threads", eng_threads(e),
					"bandwidth_gb_s", be.bw / 1e9, "read_bandwidth_gb_s", be.bw / 1e9,
					"bandwidth_probe", probe, "weight_mb", eng_weight_bytes(e) / 1e6,
					"weight_bytes", (double)eng_weight_bytes(e),
					"weights_read_per_step_bytes", be.weights_read,
					"kv_bytes_per_position", be.kv_pos_bytes, "kv_block_bytes", be.block_bytes,
					"kv_block_tokens", be.block_tokens, "kv_blocks_total", eng_kv_blocks_total(e),
					"prompt_len", (int)prompt_len, "gen", (int)gen, "bound_rule", rule,
					"engine_start_s", start_s, "rows", rows);
		if (doc && on_gpu) {
			json_t *gj = json_pack("{s:s,s:f,s:f,s:f,s:f}", "name", g.name, "total_bytes", (double)g.total,
					       "free_before_bytes", (double)g.free_before,
					       "free_after_bytes", (double)g.free_after,
					       "engine_bytes", (double)g.free_before - (double)g.free_after);
			if (!gj || json_object_set_new(doc, "gpu", gj) != 0)
				rc = 1;
		}
		if (!doc || json_dump_file(doc, OPT("json"), JSON_INDENT(2)) != 0) {
			fprintf(stderr, "braid bench: cannot write %s\n", OPT("json"));
			rc = 1;
		}
		json_decref(doc);
	} else {
		json_decref(rows);
	}
	eng_destroy(e);
	return rc;
}
