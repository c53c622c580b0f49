/* cmd_tokenize.c - braid tokenize: UTF-8 text on stdin to a JSON array of
 * token ids, or (--decode) a JSON array of ids to text (main thread).  Needs
 * only DIR/tokenizer.json (and tokenizer_config.json if present). */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "status.h"
#include "tokenizer.h"

static const struct cli_opt opts[] = {
	{ "model", "DIR", "model directory holding tokenizer.json (default: the embedded model)" },
	{ "decode", NULL, "read a JSON array of ids on stdin and write the text" },
	{ "plain", NULL, "treat special-token strings in the text as plain text (non-special added tokens such as <think> are still matched, as HF matches them)" },
};
#define N_OPTS ((int)(sizeof opts / sizeof opts[0]))
static const char synopsis[] = "[--model DIR] [--decode] [--plain] < input";

static int
decode_stdin(const tok *t)
{
	size_t len;
	char *in = cli_slurp(stdin, &len);
	if (!in) {
		fprintf(stderr, "braid tokenize: cannot read stdin\n");
		return 1;
	}
	json_error_t jerr;
	json_t *arr = json_loadb(in, len, 0, &jerr);
	free(in);
	if (!arr || !json_is_array(arr)) {
		fprintf(stderr, "braid tokenize: stdin: %s\n",
			arr ? "expected a JSON array of token ids" : jerr.text);
		json_decref(arr);
		return 1;
	}
	size_t n = json_array_size(arr);
	int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
	int rc = 1;
	char *text = NULL;
	if (!ids)
		goto done;
	int vocab = tok_vocab_size(t);
	for (size_t i = 0; i < n; i++) {
		json_t *v = json_array_get(arr, i);
		if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= vocab) {
			fprintf(stderr, "braid tokenize: stdin: element %zu is not a token id in [0, %d)\n", i, vocab);
			goto done;
		}
		ids[i] = (int32_t)json_integer_value(v);
	}
	size_t tlen;
	int st = tok_decode(t, ids, n, &text, &tlen);
	if (st < 0) {
		fprintf(stderr, "braid tokenize: decode: %s\n", eng_strerror(st));
		goto done;
	}
	rc = fwrite(text, 1, tlen, stdout) == tlen ? 0 : 1;
done:
	free(text);
	free(ids);
	json_decref(arr);
	return rc;
}

static int
encode_stdin(const tok *t, int parse_special)
{
	size_t len;
	char *in = cli_slurp(stdin, &len);
	if (!in) {
		fprintf(stderr, "braid tokenize: cannot read stdin\n");
		return 1;
	}
	int32_t *ids = NULL;
	size_t n = 0;
	int st = tok_encode(t, in, len, parse_special, &ids, &n);
	free(in);
	if (st < 0) {
		fprintf(stderr, "braid tokenize: stdin: %s\n",
			st == ENG_ERR_INVALID ? "input is not valid UTF-8" : eng_strerror(st));
		return 1;
	}
	putchar('[');
	for (size_t i = 0; i < n; i++)
		printf(i ? ",%d" : "%d", ids[i]);
	printf("]\n");
	free(ids);
	return ferror(stdout) ? 1 : 0;
}

int
cmd_tokenize(int argc, char **argv)
{
	struct cli_args a;
	int pr = cli_parse("tokenize", synopsis, opts, N_OPTS, argc, argv, &a);
	if (pr != 0)
		return pr > 0 ? 0 : 2;
	if (a.n_pos > 0) {
		fprintf(stderr, "braid tokenize: unexpected argument '%s' (the text comes on stdin)\n", a.pos[0]);
		return 2;
	}
	const char *dir = cli_get(opts, N_OPTS, &a, "model");
	if (!dir)
		dir = cli_default_model();
	char err[ENG_ERRLEN];
	tok *t = tok_load_dir(dir, err, sizeof err);
	if (!t) {
		fprintf(stderr, "braid tokenize: %s\n", err);
		return 1;
	}
	int rc = cli_get(opts, N_OPTS, &a, "decode")
		? decode_stdin(t)
		: encode_stdin(t, !cli_get(opts, N_OPTS, &a, "plain"));
	tok_free(t);
	return rc;
}
