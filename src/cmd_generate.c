/* cmd_generate.c - braid generate: one prompt, one sampled continuation,
 * printed as one JSON object {"ids","text","top_logits"} (main thread, which
 * is the engine thread here). */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "engine.h"

static const struct cli_opt opts[] = {
	{ "model", "DIR", "model directory (default: the embedded model)" },
	{ "prompt", "TEXT", "the prompt as text (special-token strings are parsed)" },
	{ "prompt-ids", "JSON", "the prompt as a JSON array of token ids" },
	{ "chat", NULL, "wrap --prompt as a user turn in the model's chat format" },
	{ "max-tokens", "N", "tokens to generate, at most (default 128)" },
	{ "temperature", "T", "sampling temperature; 0 = greedy (default 0)" },
	{ "top-k", "K", "keep the K most likely tokens; 0 = off (default 0)" },
	{ "top-p", "P", "nucleus sampling mass in (0, 1] (default 1 = off)" },
	{ "min-p", "P", "drop tokens below P times the most likely (default 0 = off)" },
	{ "seed", "S", "random seed (default 0)" },
	{ "top-logits", "K", "report the K largest logits at the last prompt position (default 0)" },
	{ "n", "N", "N samples forked from the prompt, one JSON line each (default 1)" },
	{ "ignore-eos", NULL, "keep generating after an end-of-sequence token" },
	CLI_OPT_DEVICE,
	CLI_OPT_KV_MB,
	{ "threads", "N", "CPU threads (default: all cores)" },
};
#define N_OPTS ((int)(sizeof opts / sizeof opts[0]))
static const char synopsis[] =
	"[--model DIR] (--prompt TEXT | --prompt-ids JSON) [--max-tokens N] [--temperature T] [--seed S] [--top-logits K] [--device D]";

#define OPT(name) cli_get(opts, N_OPTS, &a, name)

/* Prompt ids from --prompt-ids (validated against the vocabulary). */
static int
ids_from_json(const char *s, int vocab, int32_t **out, int *n_out)
{
	json_error_t jerr;
	json_t *arr = json_loads(s, 0, &jerr);
	if (!arr || !json_is_array(arr) || json_array_size(arr) == 0) {
		fprintf(stderr, "braid generate: --prompt-ids wants a non-empty JSON array of token ids%s%s\n",
			arr ? "" : ": ", arr ? "" : jerr.text);
		json_decref(arr);
		return -1;
	}
	size_t n = json_array_size(arr);
	int32_t *ids = malloc(n * sizeof *ids);
	if (!ids) {
		json_decref(arr);
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *v = json_array_get(arr, i);
		if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= vocab) {
			fprintf(stderr, "braid generate: --prompt-ids: element %zu is not a token id in [0, %d)\n",
				i, vocab);
			free(ids);
			json_decref(arr);
			return -1;
		}
		ids[i] = (int32_t)json_integer_value(v);
	}
	json_decref(arr);
	*out = ids;
	*n_out = (int)n;
	return 0;
}

/* Prompt ids from --prompt text, optionally in the chat format. */
static int
ids_from_text(const eng *e, const char *text, int chat, int32_t **out, int *n_out)
{
	const tok *t = eng_tokenizer(e);
	if (!t) {
		fprintf(stderr, "braid generate: the model directory has no tokenizer.json; use --prompt-ids\n");
		return -1;
	}
	char *rendered = NULL;
	if (chat) {
		struct chat_msg m = { "user", text };
		int st = chat_render(eng_chat_format(e), &m, 1, 1, tok_bos_token(t), &rendered);
		if (st < 0) {
			fprintf(stderr, "braid generate: chat template: %s\n", eng_strerror(st));
			return -1;
		}
		text = rendered;
	}
	int32_t *ids = NULL;
	size_t n = 0;
	int st = tok_encode(t, text, strlen(text), 1, &ids, &n);
	free(rendered);
	if (st < 0 || n == 0) {
		fprintf(stderr, "braid generate: --prompt: %s\n",
			st == ENG_ERR_INVALID ? "not valid UTF-8" : st < 0 ? eng_strerror(st) : "empty prompt");
		free(ids);
		return -1;
	}
	*out = ids;
	*n_out = (int)n;
	return 0;
}

/* The K largest of logits[n] as [[id, logit], ...], largest first. */
static json_t *
top_logits_json(const float *logits, int n, int k)
{
	json_t *arr = json_array();
	if (k > n)
		k = n;
	if (k <= 0)
		return arr;
	int *best = malloc((k ? k : 1) * sizeof *best);
	int nb = 0;
	for (int i = 0; best && i < n; i++) {
		if (nb == k && !(logits[i] > logits[best[k - 1]]))
			continue;
		int j = nb < k ? nb++ : k - 1;
		while (j > 0 && logits[i] > logits[best[j - 1]]) {
			best[j] = best[j - 1];
			j--;
		}
		best[j] = i;
	}
	for (int i = 0; i < nb; i++)
		json_array_append_new(arr, json_pack("[i,f]", best[i], (double)logits[best[i]]));
	free(best);
	return arr;
}

/* Print one sample as {"ids","text","top_logits"} on its own line. */
static int
print_sample(const eng *e, const int32_t *out_ids, long n_out, json_t *top)
{
	json_t *ids = json_array();
	for (long i = 0; i < n_out; i++)
		json_array_append_new(ids, json_integer(out_ids[i]));
	char *text = NULL;
	const tok *t = eng_tokenizer(e);
	if (t) {
		/* The text skips special tokens (as HF decode(skip_special_tokens=True)). */
		int32_t *keep = malloc(((size_t)n_out + 1) * sizeof *keep);
		size_t nk = 0, tlen;
		for (long i = 0; keep && i < n_out; i++)
			if (!tok_is_special(t, out_ids[i]))
				keep[nk++] = out_ids[i];
		if (!keep || tok_decode(t, keep, nk, &text, &tlen) < 0)
			text = NULL;
		free(keep);
	}
	json_t *obj = json_pack("{s:o,s:s,s:O}", "ids", ids, "text", text ? text : "", "top_logits", top);
	free(text);
	if (!obj || json_dumpf(obj, stdout, JSON_COMPACT) < 0) {
		fprintf(stderr, "braid generate: cannot write the result\n");
		json_decref(obj);
		return -1;
	}
	putchar('\n');
	json_decref(obj);
	return 0;
}

int
cmd_generate(int argc, char **argv)
{
	struct cli_args a;
	int pr = cli_parse("generate", synopsis, opts, N_OPTS, argc, argv, &a);
	if (pr != 0)
		return pr > 0 ? 0 : 2;
	if (a.n_pos > 0) {
		fprintf(stderr, "braid generate: unexpected argument '%s'\n", a.pos[0]);
		return 2;
	}
	if (!OPT("prompt") == !OPT("prompt-ids")) {
		fprintf(stderr, "braid generate: give exactly one of --prompt and --prompt-ids\n");
		return 2;
	}
	long max_tokens = 128, top_k = 0, top_logits = 0, threads = 0, seed = 0, n_samples = 1;
	double temperature = 0, top_p = 1, min_p = 0;
	struct eng_params ep = eng_default_params();
	if ((OPT("max-tokens") && cli_int("max-tokens", OPT("max-tokens"), 0, 1 << 20, &max_tokens)) ||
	    (OPT("top-k") && cli_int("top-k", OPT("top-k"), 0, 1 << 30, &top_k)) ||
	    (OPT("top-logits") && cli_int("top-logits", OPT("top-logits"), 0, 1 << 20, &top_logits)) ||
	    (OPT("threads") && cli_int("threads", OPT("threads"), 0, 1024, &threads)) ||
	    (OPT("n") && cli_int("n", OPT("n"), 1, 4096, &n_samples)) ||
	    (OPT("seed") && cli_int("seed", OPT("seed"), 0, 0x7fffffffffffffffL, &seed)) ||
	    (OPT("temperature") && cli_double("temperature", OPT("temperature"), 0, 100, &temperature)) ||
	    (OPT("top-p") && cli_double("top-p", OPT("top-p"), 1e-9, 1, &top_p)) ||
	    (OPT("min-p") && cli_double("min-p", OPT("min-p"), 0, 1, &min_p)) ||
	    cli_parse_device("generate", OPT("device"), &ep.device) ||
	    cli_parse_kv("generate", OPT("kv-mb"), &ep.kv_bytes))
		return 2;

	ep.model_dir = OPT("model") ? OPT("model") : cli_default_model();
	ep.n_threads = (int)threads;
	char err[ENG_ERRLEN];
	eng *e = eng_create(&ep, err, sizeof err);
	if (!e) {
		fprintf(stderr, "braid generate: %s\n", err);
		return 1;
	}
	const struct model_config *cfg = eng_config(e);
	int rc = 1, n_prompt = 0, seq = -1, n_live = 0;
	int32_t *prompt = NULL, *out_ids = NULL;
	int *kids = NULL;
	long *n_out = NULL;
	struct eng_token *toks = NULL;
	json_t *top = NULL;
	int got = OPT("prompt-ids")
		? ids_from_json(OPT("prompt-ids"), cfg->vocab_size, &prompt, &n_prompt)
		: ids_from_text(e, OPT("prompt"), OPT("chat") != NULL, &prompt, &n_prompt);
	if (got < 0)
		goto done;
	if (cfg->max_position > 0 && n_prompt + max_tokens > cfg->max_position) {
		long room = cfg->max_position - n_prompt;
		if (room < 0) {
			fprintf(stderr, "braid generate: the prompt (%d tokens) is longer than the model's context (%d)\n",
				n_prompt, cfg->max_position);
			goto done;
		}
		max_tokens = room;
	}

	struct samp_params sp = samp_default_params();
	sp.temperature = (float)temperature;
	sp.top_k = (int)top_k;
	sp.top_p = (float)top_p;
	sp.min_p = (float)min_p;
	sp.seed = (uint64_t)seed;
	seq = eng_seq_new(e, prompt, n_prompt, &sp);
	int st = seq < 0 ? seq : eng_seq_prefill(e, seq, NULL);
	if (st < 0) {
		fprintf(stderr, "braid generate: prefill: %s\n", eng_strerror(st));
		goto done;
	}
	const float *last = eng_seq_logits(e, seq);
	top = last ? top_logits_json(last, cfg->vocab_size, (int)top_logits) : json_array();

	/* n samples: fork n children from the prefilled prompt (they share its
	 * cache and its last logits), step them together, print one line each. */
	if (n_samples > 1) {
		kids = malloc(n_samples * sizeof *kids);
		st = kids ? eng_seq_fork(e, seq, (int)n_samples, kids) : ENG_ERR_NOMEM;
		if (st < 0) {
			fprintf(stderr, "braid generate: fork: %s\n", eng_strerror(st));
			free(kids);
			kids = NULL;
			goto done;
		}
		eng_seq_free(e, seq);
		seq = -1;
	} else {
		kids = malloc(sizeof *kids);
		if (!kids)
			goto done;
		kids[0] = seq;
		seq = -1;
	}
	n_live = (int)n_samples;
	out_ids = malloc((size_t)n_samples * ((size_t)max_tokens + 1) * sizeof *out_ids);
	n_out = calloc(n_samples, sizeof *n_out);
	toks = malloc(n_samples * sizeof *toks);
	if (!out_ids || !n_out || !toks)
		goto done;
	int live = n_live;
	while (live > 0) {
		int n = 0;
		st = eng_step(e, toks, (int)n_samples, &n);
		if (st < 0) {
			fprintf(stderr, "braid generate: step: %s\n", eng_strerror(st));
			goto done;
		}
		if (n == 0)
			break;
		for (int j = 0; j < n; j++) {
			long i = 0;
			while (i < n_samples && kids[i] != toks[j].seq)
				i++;
			if (i == n_samples)
				continue;
			int32_t *mine = out_ids + i * (max_tokens + 1);
			mine[n_out[i]++] = toks[j].r.token;
			if (n_out[i] >= max_tokens || (!OPT("ignore-eos") && eng_is_eos(e, toks[j].r.token))) {
				eng_seq_free(e, kids[i]);
				kids[i] = -1;
				live--;
			}
		}
	}

	for (long i = 0; i < n_samples; i++)
		if (print_sample(e, out_ids + i * (max_tokens + 1), n_out[i], top) < 0)
			goto done;
	rc = 0;
done:
	json_decref(top);
	for (int i = 0; kids && i < n_live; i++)
		if (kids[i] >= 0)
			eng_seq_free(e, kids[i]);
	free(kids);
	free(toks);
	free(n_out);
	free(out_ids);
	free(prompt);
	if (seq >= 0)
		eng_seq_free(e, seq);
	eng_destroy(e);
	return rc;
}
