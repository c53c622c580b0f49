/* test_tokenizer.c - gpu/tokenizer against HF tokenizers' own output on the
 * real Qwen3, Llama-3 and DeepSeek-V3 files, plus load errors, bad input,
 * the Split behaviours and long inputs. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "status.h"
#include "tokenizer.h"
#include "testutil.h"

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Independent strict UTF-8 check (Unicode Table 3-7). */
static int
valid_utf8(const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0;
	while (i < n) {
		unsigned c = u[i];
		size_t len;
		unsigned lo = 0x80, hi = 0xbf;
		if (c <= 0x7f) {
			i++;
			continue;
		} else if (c >= 0xc2 && c <= 0xdf) {
			len = 2;
		} else if (c >= 0xe0 && c <= 0xef) {
			len = 3;
			if (c == 0xe0) lo = 0xa0;
			if (c == 0xed) hi = 0x9f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			len = 4;
			if (c == 0xf0) lo = 0x90;
			if (c == 0xf4) hi = 0x8f;
		} else {
			return 0;
		}
		if (i + len > n || u[i + 1] < lo || u[i + 1] > hi)
			return 0;
		for (size_t k = 2; k < len; k++)
			if (u[i + k] < 0x80 || u[i + k] > 0xbf)
				return 0;
		i += len;
	}
	return 1;
}

static tok *
load_named(const char *name)
{
	char rel[256], err[ENG_ERRLEN] = "";
	snprintf(rel, sizeof rel, "tokenizers/%s", name);
	double t0 = now_s();
	tok *t = tok_load_dir(tu_data(rel), err, sizeof err);
	double dt = now_s() - t0;
	if (!t)
		fail_msg("load %s: %s", name, err);
	printf("# %s: loaded in %.0f ms, vocab %d\n", name, dt * 1e3, tok_vocab_size(t));
	return t;
}

/* Stream-decode ids; every chunk must be valid UTF-8 by itself, and the
 * concatenation is returned (malloc'd). */
static char *
stream_decode(const tok *t, const int32_t *ids, size_t n, size_t *len)
{
	tok_stream *s = tok_stream_new(t);
	assert_non_null(s);
	size_t cap = 64, used = 0;
	char *all = malloc(cap), chunk[4096];
	assert_non_null(all);
	for (size_t i = 0; i <= n; i++) {
		size_t k = 0;
		int rc = i < n ? tok_stream_push(s, ids[i], chunk, sizeof chunk, &k)
			       : tok_stream_flush(s, chunk, sizeof chunk, &k);
		assert_int_equal(rc, 0);
		assert_int_equal(chunk[k], 0);
		if (!valid_utf8(chunk, k))
			fail_msg("stream chunk %zu is not valid UTF-8", i);
		if (used + k + 1 > cap) {
			cap = (used + k + 1) * 2;
			all = realloc(all, cap);
			assert_non_null(all);
		}
		memcpy(all + used, chunk, k);
		used += k;
	}
	all[used] = 0;
	tok_stream_free(s);
	*len = used;
	return all;
}

static void
print_ids(const char *label, const int32_t *ids, size_t n)
{
	printf("#   %s (%zu):", label, n);
	for (size_t i = 0; i < n && i < 40; i++)
		printf(" %d", ids[i]);
	printf("%s\n", n > 40 ? " ..." : "");
}

/* Every case of tests/data/ref/tok_NAME.json: ids, decode, stream decode. */
static void
check_reference(const char *name)
{
	char rel[256];
	snprintf(rel, sizeof rel, "ref/tok_%s.json", name);
	json_error_t jerr;
	json_t *ref = json_load_file(tu_data(rel), 0, &jerr);
	if (!ref)
		fail_msg("%s: %s (reference data missing?)", tu_data(rel), jerr.text);
	json_t *cases = json_object_get(ref, "cases");
	json_t *corpus = json_load_file(tu_data("tokenizer_corpus.json"), 0, &jerr);
	assert_non_null(corpus);
	assert_true(json_array_size(cases) > 0);
	assert_int_equal(json_array_size(cases), json_array_size(corpus));
	tok *t = load_named(name);
	size_t bad = 0, n_tokens = 0;
	for (size_t c = 0; c < json_array_size(cases); c++) {
		json_t *cs = json_array_get(cases, c), *jids = json_object_get(cs, "ids");
		const char *text = json_string_value(json_object_get(cs, "text"));
		size_t tlen = json_string_length(json_object_get(cs, "text"));
		const char *want_dec = json_string_value(json_object_get(cs, "decoded"));
		size_t want_len = json_string_length(json_object_get(cs, "decoded"));
		assert_non_null(text);
		assert_non_null(want_dec);
		size_t nw = json_array_size(jids);
		int32_t *want = malloc((nw + 1) * sizeof *want);
		assert_non_null(want);
		for (size_t i = 0; i < nw; i++)
			want[i] = (int32_t)json_integer_value(json_array_get(jids, i));
		n_tokens += nw;

		int32_t *ids = NULL;
		size_t n = 0;
		assert_int_equal(tok_encode(t, text, tlen, 1, &ids, &n), 0);
		int ok_ids = n == nw && (n == 0 || memcmp(ids, want, n * sizeof *ids) == 0);
		if (!ok_ids) {
			printf("# %s case %zu: ids differ for \"%.80s\"\n", name, c, text);
			print_ids("want", want, nw);
			print_ids("got ", ids, n);
		}

		/* decode the reference ids, so a decode bug shows on its own */
		char *dec = NULL;
		size_t dlen = 0;
		assert_int_equal(tok_decode(t, want, nw, &dec, &dlen), 0);
		int ok_dec = dlen == want_len && memcmp(dec, want_dec, dlen) == 0;
		if (!ok_dec)
			printf("# %s case %zu: decode differs: got \"%.80s\" want \"%.80s\"\n", name,
			       c, dec, want_dec);
		size_t slen;
		char *sdec = stream_decode(t, want, nw, &slen);
		int ok_stream = slen == want_len && memcmp(sdec, want_dec, slen) == 0;
		if (!ok_stream)
			printf("# %s case %zu: stream decode differs\n", name, c);
		bad += !ok_ids + !ok_dec + !ok_stream;
		free(sdec);
		free(dec);
		free(ids);
		free(want);
	}
	printf("# %s: %zu cases, %zu reference tokens, %zu mismatches\n", name,
	       json_array_size(cases), n_tokens, bad);
	assert_int_equal(bad, 0);
	tok_free(t);
	json_decref(ref);
	json_decref(corpus);
}

/* Every case of tests/data/ref/tok_fuzz_NAME.json (HF tokenizers on seeded
 * random strings and random id lists): encode id for id, decode byte for
 * byte, and the streaming decoder's concatenation on the decode cases.  A
 * case that cannot be compared (malformed entry, an id tok_decode refuses)
 * is a failure, never skipped. */
static void
check_fuzz(const char *name)
{
	char rel[256];
	snprintf(rel, sizeof rel, "ref/tok_fuzz_%s.json", name);
	json_error_t jerr;
	/* the random strings include U+0000 */
	json_t *ref = json_load_file(tu_data(rel), JSON_ALLOW_NUL, &jerr);
	if (!ref)
		fail_msg("%s: %s (reference data missing?)", tu_data(rel), jerr.text);
	json_t *enc = json_object_get(ref, "encode"), *dec = json_object_get(ref, "decode");
	if (!json_is_array(enc) || !json_is_array(dec) || json_array_size(enc) == 0 ||
	    json_array_size(dec) == 0)
		fail_msg("%s: no \"encode\"/\"decode\" cases", tu_data(rel));
	tok *t = load_named(name);
	size_t bad = 0, n_enc = 0, n_dec = 0, n_stream = 0, n_tokens = 0;

	for (size_t c = 0; c < json_array_size(enc); c++) {
		json_t *cs = json_array_get(enc, c), *jids = json_object_get(cs, "ids");
		json_t *jtext = json_object_get(cs, "text");
		if (!json_is_string(jtext) || !json_is_array(jids))
			fail_msg("%s encode case %zu: malformed entry", name, c);
		const char *text = json_string_value(jtext);
		size_t tlen = json_string_length(jtext), nw = json_array_size(jids);
		int32_t *want = malloc((nw + 1) * sizeof *want);
		assert_non_null(want);
		for (size_t i = 0; i < nw; i++) {
			json_t *v = json_array_get(jids, i);
			if (!json_is_integer(v))
				fail_msg("%s encode case %zu: id %zu is not an integer", name, c, i);
			want[i] = (int32_t)json_integer_value(v);
		}
		n_tokens += nw;
		int32_t *ids = NULL;
		size_t n = 0;
		int rc = tok_encode(t, text, tlen, 1, &ids, &n);
		if (rc != 0)
			fail_msg("%s encode case %zu: tok_encode failed (%d) on \"%.80s\"", name, c,
				 rc, text);
		if (n != nw || (n > 0 && memcmp(ids, want, n * sizeof *ids) != 0)) {
			printf("# %s encode case %zu: ids differ for \"%.80s\"\n", name, c, text);
			print_ids("want", want, nw);
			print_ids("got ", ids, n);
			bad++;
		}
		n_enc++;
		free(ids);
		free(want);
	}

	for (size_t c = 0; c < json_array_size(dec); c++) {
		json_t *cs = json_array_get(dec, c), *jids = json_object_get(cs, "ids");
		json_t *jwant = json_object_get(cs, "decoded");
		if (!json_is_string(jwant) || !json_is_array(jids))
			fail_msg("%s decode case %zu: malformed entry", name, c);
		const char *want_dec = json_string_value(jwant);
		size_t want_len = json_string_length(jwant), nw = json_array_size(jids);
		int32_t *ids = malloc((nw + 1) * sizeof *ids);
		assert_non_null(ids);
		for (size_t i = 0; i < nw; i++) {
			json_t *v = json_array_get(jids, i);
			json_int_t id = json_integer_value(v);
			if (!json_is_integer(v) || id < 0 || id >= tok_vocab_size(t) ||
			    !tok_piece(t, (int32_t)id))
				fail_msg("%s decode case %zu: id %zu (%lld) is not a token here, so HF's"
					 " decode cannot be compared", name, c, i, (long long)id);
			ids[i] = (int32_t)id;
		}
		char *got = NULL;
		size_t glen = 0;
		int rc = tok_decode(t, ids, nw, &got, &glen);
		if (rc != 0)
			fail_msg("%s decode case %zu: tok_decode failed (%d)", name, c, rc);
		if (glen != want_len || memcmp(got, want_dec, glen) != 0) {
			printf("# %s decode case %zu: got \"%.80s\" want \"%.80s\"\n", name, c, got,
			       want_dec);
			print_ids("ids", ids, nw);
			bad++;
		}
		n_dec++;
		size_t slen = 0;
		char *sdec = stream_decode(t, ids, nw, &slen);
		if (slen != want_len || memcmp(sdec, want_dec, slen) != 0) {
			printf("# %s decode case %zu: stream got \"%.80s\" want \"%.80s\"\n", name, c,
			       sdec, want_dec);
			print_ids("ids", ids, nw);
			bad++;
		}
		n_stream++;
		free(sdec);
		free(got);
		free(ids);
	}
	printf("# %s fuzz: compared %zu encode cases (%zu reference tokens), %zu decode cases,"
	       " %zu stream decodes; %zu mismatches\n", name, n_enc, n_tokens, n_dec, n_stream, bad);
	assert_int_equal(n_enc, json_array_size(enc));
	assert_int_equal(n_dec, json_array_size(dec));
	assert_int_equal(bad, 0);
	tok_free(t);
	json_decref(ref);
}

static void test_fuzz_qwen3(void **state) { (void)state; check_fuzz("qwen3"); }
static void test_fuzz_llama3(void **state) { (void)state; check_fuzz("llama3"); }
static void test_fuzz_deepseek(void **state) { (void)state; check_fuzz("deepseek_v3"); }

static void test_ref_qwen3(void **state) { (void)state; check_reference("qwen3"); }
static void test_ref_llama3(void **state) { (void)state; check_reference("llama3"); }
static void test_ref_deepseek(void **state) { (void)state; check_reference("deepseek_v3"); }

/* Vocab size, special tokens and config values against the JSON files read
 * here independently. */
static void
test_vocab_and_config(void **state)
{
	(void)state;
	static const char *const names[] = { "qwen3", "llama3", "deepseek_v3" };
	for (size_t k = 0; k < 3; k++) {
		char rel[256];
		snprintf(rel, sizeof rel, "tokenizers/%s/tokenizer.json", names[k]);
		json_t *j = json_load_file(tu_data(rel), 0, NULL);
		snprintf(rel, sizeof rel, "tokenizers/%s/tokenizer_config.json", names[k]);
		json_t *cfg = json_load_file(tu_data(rel), JSON_DECODE_INT_AS_REAL, NULL);
		assert_non_null(j);
		assert_non_null(cfg);
		tok *t = load_named(names[k]);
		json_int_t maxid = -1;
		const char *key;
		json_t *v;
		json_t *vocab = json_object_get(json_object_get(j, "model"), "vocab");
		json_object_foreach(vocab, key, v) {
			if (json_integer_value(v) > maxid)
				maxid = json_integer_value(v);
		}
		json_t *added = json_object_get(j, "added_tokens");
		for (size_t i = 0; i < json_array_size(added); i++) {
			json_t *a = json_array_get(added, i);
			json_int_t id = json_integer_value(json_object_get(a, "id"));
			const char *content = json_string_value(json_object_get(a, "content"));
			if (id > maxid)
				maxid = id;
			assert_int_equal(tok_token_id(t, content), id);
			assert_string_equal(tok_piece(t, (int32_t)id), content);
			assert_int_equal(tok_is_special(t, (int32_t)id),
					 json_is_true(json_object_get(a, "special")));
		}
		assert_int_equal(tok_vocab_size(t), maxid + 1);
		/* a plain vocab entry */
		json_object_foreach(vocab, key, v) {
			if (json_integer_value(v) == 1000) {
				assert_int_equal(tok_token_id(t, key), 1000);
				assert_string_equal(tok_piece(t, 1000), key);
				assert_false(tok_is_special(t, 1000));
			}
		}
		assert_int_equal(tok_token_id(t, "no such token \x01\x02"), -1);
		assert_null(tok_piece(t, -1));
		assert_null(tok_piece(t, tok_vocab_size(t)));
		/* bos/eos: a string or {"content": ...} */
		static const char *const which[] = { "bos_token", "eos_token" };
		for (size_t w = 0; w < 2; w++) {
			json_t *b = json_object_get(cfg, which[w]);
			if (json_is_object(b))
				b = json_object_get(b, "content");
			const char *got = w ? tok_eos_token(t) : tok_bos_token(t);
			int32_t gid = w ? tok_eos_id(t) : tok_bos_id(t);
			if (json_is_string(b)) {
				assert_non_null(got);
				assert_string_equal(got, json_string_value(b));
				assert_int_equal(gid, tok_token_id(t, got));
				assert_true(gid >= 0);
			} else {
				assert_null(got);
				assert_int_equal(gid, -1);
			}
		}
		json_t *ct = json_object_get(cfg, "chat_template");
		assert_non_null(tok_chat_template(t));
		assert_string_equal(tok_chat_template(t), json_string_value(ct));
		tok_free(t);
		json_decref(j);
		json_decref(cfg);
	}
}

/* ---- a tiny tokenizer written here --------------------------------------- */

/* The 256 byte-level characters (GPT-2 bytes_to_unicode), as JSON vocab
 * entries with ids 0..255, computed from the definition. */
static void
byte_vocab(char *out, size_t cap)
{
	size_t w = 0;
	int n = 0;
	for (int b = 0; b < 256; b++) {
		int printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
		unsigned cp = printable ? (unsigned)b : 256u + (unsigned)n++;
		char ch[8];
		if (cp < 0x80)
			snprintf(ch, sizeof ch, "%c", cp);
		else
			snprintf(ch, sizeof ch, "%c%c", 0xc0 | (cp >> 6), 0x80 | (cp & 0x3f));
		const char *esc = (cp == '"') ? "\\\"" : (cp == '\\') ? "\\\\" : ch;
		w += (size_t)snprintf(out + w, cap - w, "%s\"%s\": %d", b ? ", " : "", esc, b);
	}
}

static char *
tiny_json(const char *normalizer, const char *pretok, const char *model_extra,
	  const char *extra_vocab, const char *merges, const char *added)
{
	static char bytes[8192];
	byte_vocab(bytes, sizeof bytes);
	size_t cap = 16384 + strlen(pretok) + strlen(extra_vocab) + strlen(merges);
	char *s = malloc(cap);
	assert_non_null(s);
	snprintf(s, cap,
		 "{\"version\": \"1.0\", \"added_tokens\": [%s], \"normalizer\": %s,"
		 " \"pre_tokenizer\": %s, \"post_processor\": null,"
		 " \"decoder\": {\"type\": \"ByteLevel\"},"
		 " \"model\": {\"type\": \"BPE\", %s \"vocab\": {%s%s}, \"merges\": [%s]}}",
		 added, normalizer, pretok, model_extra, bytes, extra_vocab, merges);
	return s;
}

static const char *const tiny_pretok_ok =
	"{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\","
	" \"pattern\": {\"String\": \"-\"}, \"behavior\": \"Isolated\", \"invert\": false},"
	" {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": false}]}";

static void
expect_load_error(const char *dir, const char *json, const char *want1, const char *want2)
{
	char path[1024], err[ENG_ERRLEN] = "";
	snprintf(path, sizeof path, "%s/tokenizer.json", dir);
	assert_int_equal(tu_write_file(path, json, strlen(json)), 0);
	tok *t = tok_load(path, err, sizeof err);
	if (t) {
		tok_free(t);
		fail_msg("loaded a broken file (want '%s')", want1);
	}
	printf("# error: %s\n", err);
	if (!strstr(err, path) || !strstr(err, want1) || (want2 && !strstr(err, want2)))
		fail_msg("error '%s' should name %s and '%s'", err, path, want1);
}

static void
test_load_errors(void **state)
{
	(void)state;
	char *dir = tu_tmpdir();
	assert_non_null(dir);
	char *j;

	/* the valid tiny file loads (so the failures below are the edits) */
	char path[1024], err[ENG_ERRLEN] = "";
	j = tiny_json("null", tiny_pretok_ok, "", ", \"ab\": 256", "\"a b\"", "");
	snprintf(path, sizeof path, "%s/tokenizer.json", dir);
	assert_int_equal(tu_write_file(path, j, strlen(j)), 0);
	tok *t = tok_load(path, err, sizeof err);
	if (!t)
		fail_msg("tiny: %s", err);
	int32_t *ids = NULL;
	size_t n = 0;
	assert_int_equal(tok_encode(t, "abab", 4, 1, &ids, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(ids[0], 256);
	assert_int_equal(ids[1], 256);
	free(ids);
	assert_null(tok_bos_token(t));      /* no tokenizer_config.json */
	assert_null(tok_chat_template(t));
	assert_int_equal(tok_eos_id(t), -1);
	tok_free(t);
	free(j);

	expect_load_error(dir, "{\"model\": {\"type\": \"BPE\", ", "line", NULL);
	j = tiny_json("null", tiny_pretok_ok, "", "", "", "");
	j[strlen(j) - 1] = ',';     /* truncated / trailing comma */
	expect_load_error(dir, j, "line", NULL);
	free(j);
	j = tiny_json("null", tiny_pretok_ok, "", "", "", "");
	char *bpe = strstr(j, "\"BPE\"");
	char *wp = malloc(strlen(j) + 16);
	assert_non_null(wp);
	snprintf(wp, strlen(j) + 16, "%.*s\"WordPiece\"%s", (int)(bpe - j), j, bpe + 5);
	expect_load_error(dir, wp, "unsupported model type 'WordPiece'", NULL);
	free(wp);
	free(j);
	j = tiny_json("null", "{\"type\": \"Metaspace\", \"replacement\": \"_\"}", "", "", "", "");
	expect_load_error(dir, j, "unsupported pre_tokenizer type 'Metaspace'", NULL);
	free(j);
	j = tiny_json("null", "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Whitespace\"},"
		      " {\"type\": \"ByteLevel\"}]}", "", "", "", "");
	expect_load_error(dir, j, "unsupported pre_tokenizer type 'Whitespace'", NULL);
	free(j);
	j = tiny_json("{\"type\": \"Lowercase\"}", tiny_pretok_ok, "", "", "", "");
	expect_load_error(dir, j, "unsupported normalizer type 'Lowercase'", NULL);
	free(j);
	j = tiny_json("null", tiny_pretok_ok, "", ", \"ab\": 256", "\"a zz\"", "");
	expect_load_error(dir, j, "not in the vocab", "zz");
	free(j);
	j = tiny_json("null", tiny_pretok_ok, "", "", "[\"a\", \"b\"]", "");   /* "ab" missing */
	expect_load_error(dir, j, "not in the vocab", "ab");
	free(j);
	j = tiny_json("null", "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(ab\"},"
		      " \"behavior\": \"Isolated\", \"invert\": false}", "", "", "", "");
	expect_load_error(dir, j, "bad regex", "(ab");
	free(j);
	j = tiny_json("null", tiny_pretok_ok, "", "", "", "{\"id\": -4, \"content\": \"x\"}");
	expect_load_error(dir, j, "added_tokens", NULL);
	free(j);
	j = tiny_json("null", tiny_pretok_ok, "\"byte_fallback\": true,", "", "", "");
	expect_load_error(dir, j, "byte_fallback", NULL);
	free(j);

	/* a missing file */
	snprintf(path, sizeof path, "%s/nothere.json", dir);
	assert_null(tok_load(path, err, sizeof err));
	assert_non_null(strstr(err, path));
	tu_rmtree(dir);
	free(dir);
}

/* The Split behaviours on HF's own documented example:
 * "the-final--countdown" split on '-'. */
static void
test_split_behaviors(void **state)
{
	(void)state;
	static const char *const words[] = {
		"the", "final", "countdown", "-", "the-", "final-", "-final", "-countdown", "--",
	};
	static const struct {
		const char *behavior;
		int invert;
		const char *want[8];
	} cases[] = {
		{ "Removed", 0, { "the", "final", "countdown" } },
		{ "Isolated", 0, { "the", "-", "final", "-", "-", "countdown" } },
		{ "MergedWithPrevious", 0, { "the-", "final-", "-", "countdown" } },
		{ "MergedWithNext", 0, { "the", "-final", "-", "-countdown" } },
		{ "Contiguous", 0, { "the", "-", "final", "--", "countdown" } },
		{ "Removed", 1, { "-", "-", "-" } },
	};
	char extra[1024];
	size_t w = 0;
	for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
		w += (size_t)snprintf(extra + w, sizeof extra - w, ", \"%s\": %zu", words[i],
				      300 + i);
	char *dir = tu_tmpdir();
	assert_non_null(dir);
	char path[1024], err[ENG_ERRLEN];
	snprintf(path, sizeof path, "%s/tokenizer.json", dir);
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		for (int regex = 0; regex < 2; regex++) {
			char pre[512];
			snprintf(pre, sizeof pre,
				 "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\","
				 " \"pattern\": {\"%s\": \"%s\"}, \"behavior\": \"%s\", \"invert\": %s},"
				 " {\"type\": \"ByteLevel\", \"add_prefix_space\": false,"
				 " \"use_regex\": false}]}",
				 regex ? "Regex" : "String", regex ? "-" : "-", cases[c].behavior,
				 cases[c].invert ? "true" : "false");
			/* ignore_merges: a pre-token that is in the vocab comes out whole */
			char *j = tiny_json("null", pre, "\"ignore_merges\": true,", extra, "", "");
			assert_int_equal(tu_write_file(path, j, strlen(j)), 0);
			free(j);
			tok *t = tok_load(path, err, sizeof err);
			if (!t)
				fail_msg("%s", err);
			int32_t *ids = NULL;
			size_t n = 0;
			assert_int_equal(tok_encode(t, "the-final--countdown", 20, 1, &ids, &n), 0);
			size_t k = 0;
			for (; cases[c].want[k]; k++) {
				if (k >= n || strcmp(tok_piece(t, ids[k]), cases[c].want[k]) != 0)
					fail_msg("%s invert=%d: piece %zu is %s, want %s", cases[c].behavior,
						 cases[c].invert, k, k < n ? tok_piece(t, ids[k]) : "(none)",
						 cases[c].want[k]);
			}
			assert_int_equal(n, k);
			free(ids);
			tok_free(t);
		}
	}
	tu_rmtree(dir);
	free(dir);
}

static void
test_invalid_input(void **state)
{
	(void)state;
	tok *t = load_named("qwen3");
	static const char *const bad[] = {
		"\xff", "abc\x80", "\xc0\xaf", "\xe0\x80\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
		"ok \xe4\xbd", "\xc3", "\xf0\x9f\x98",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		int32_t *ids = (int32_t *)&ids;
		size_t n = 99;
		assert_int_equal(tok_encode(t, bad[i], strlen(bad[i]), 1, &ids, &n), ENG_ERR_INVALID);
		assert_null(ids);
		assert_int_equal(n, 0);
	}
	/* empty text: no ids */
	int32_t *ids = NULL;
	size_t n = 1;
	assert_int_equal(tok_encode(t, "", 0, 1, &ids, &n), 0);
	assert_int_equal(n, 0);
	free(ids);
	/* out-of-range ids */
	int32_t badid[2] = { 5, tok_vocab_size(t) };
	char *text = NULL;
	assert_int_equal(tok_decode(t, badid, 2, &text, NULL), ENG_ERR_INVALID);
	assert_null(text);
	badid[1] = -1;
	assert_int_equal(tok_decode(t, badid, 2, &text, NULL), ENG_ERR_INVALID);
	tok_free(t);
}

/* parse_special = 0: special tokens are plain text, so "<|im_start|>" is not
 * id 151644, and the ids decode back to the text (non-special added tokens
 * are still matched: test_parse_special_off_keeps_added). */
static void
test_parse_special_off(void **state)
{
	(void)state;
	tok *t = load_named("qwen3");
	const char *s = "<|im_start|>user\nhi<|im_end|>";
	int32_t *ids = NULL;
	size_t n = 0;
	int32_t start = tok_token_id(t, "<|im_start|>");
	assert_true(start > 0);
	assert_int_equal(tok_encode(t, s, strlen(s), 1, &ids, &n), 0);
	assert_int_equal(ids[0], start);
	free(ids);
	assert_int_equal(tok_encode(t, s, strlen(s), 0, &ids, &n), 0);
	for (size_t i = 0; i < n; i++)
		assert_false(tok_is_special(t, ids[i]));
	assert_true(n > 4);
	char *d = NULL;
	assert_int_equal(tok_decode(t, ids, n, &d, NULL), 0);
	assert_string_equal(d, s);
	free(d);
	free(ids);
	tok_free(t);
}

/* Without parse_special a special token's text stays plain text as a whole:
 * a non-special added token of the same (unnormalized) kind inside it is
 * not matched, as HF's split_special_tokens skips the match and resumes
 * after it, while the same token elsewhere is.  (A normalized token inside
 * would be matched, by HF too: its pass runs on the text left over.) */
static void
test_parse_special_off_inside_special(void **state)
{
	(void)state;
	char *dir = tu_tmpdir(), path[1024], err[ENG_ERRLEN] = "";
	assert_non_null(dir);
	char *j = tiny_json("null", tiny_pretok_ok, "", "", "",
			    "{\"id\": 300, \"content\": \"<|x_end|>\", \"special\": true},"
			    " {\"id\": 301, \"content\": \"x_end\", \"special\": false, \"normalized\": false}");
	snprintf(path, sizeof path, "%s/tokenizer.json", dir);
	assert_int_equal(tu_write_file(path, j, strlen(j)), 0);
	tok *t = tok_load(path, err, sizeof err);
	if (!t)
		fail_msg("tiny: %s", err);
	const char *s = "a<|x_end|>b x_end";
	int32_t *ids = NULL;
	size_t n = 0, n300 = 0, n301 = 0;
	assert_int_equal(tok_encode(t, s, strlen(s), 0, &ids, &n), 0);
	for (size_t i = 0; i < n; i++)
		n300 += ids[i] == 300, n301 += ids[i] == 301;
	assert_int_equal(n300, 0);
	assert_int_equal(n301, 1);          /* the free-standing one only */
	assert_int_equal(ids[n - 1], 301);
	free(ids);
	assert_int_equal(tok_encode(t, s, strlen(s), 1, &ids, &n), 0);
	n300 = n301 = 0;
	for (size_t i = 0; i < n; i++)
		n300 += ids[i] == 300, n301 += ids[i] == 301;
	assert_int_equal(n300, 1);
	assert_int_equal(n301, 1);
	free(ids);
	tok_free(t);
	free(j);
	tu_rmtree(dir);
	free(dir);
}

/* parse_special = 0 still matches the non-special added tokens, as HF does
 * (Qwen3's "<think>" and "<tool_call>"), while the special ones stay text. */
static void
test_parse_special_off_keeps_added(void **state)
{
	(void)state;
	tok *t = load_named("qwen3");
	const char *s = "<think>\nhi</think><tool_call><|im_end|>";
	int32_t think = tok_token_id(t, "<think>"), end_think = tok_token_id(t, "</think>"),
		call = tok_token_id(t, "<tool_call>"), im_end = tok_token_id(t, "<|im_end|>");
	assert_true(think > 0 && end_think > 0 && call > 0 && im_end > 0);
	assert_false(tok_is_special(t, think));
	assert_true(tok_is_special(t, im_end));
	int32_t *ids = NULL;
	size_t n = 0;
	assert_int_equal(tok_encode(t, s, strlen(s), 0, &ids, &n), 0);
	assert_true(n > 4);
	assert_int_equal(ids[0], think);
	int seen_end = 0, seen_call = 0;
	for (size_t i = 0; i < n; i++) {
		assert_false(tok_is_special(t, ids[i]));
		seen_end += ids[i] == end_think;
		seen_call += ids[i] == call;
	}
	assert_int_equal(seen_end, 1);
	assert_int_equal(seen_call, 1);
	char *d = NULL;
	assert_int_equal(tok_decode(t, ids, n, &d, NULL), 0);
	assert_string_equal(d, s);
	free(d);
	free(ids);
	/* with parse_special the special one is matched too */
	assert_int_equal(tok_encode(t, s, strlen(s), 1, &ids, &n), 0);
	assert_int_equal(ids[n - 1], im_end);
	free(ids);
	tok_free(t);
}

/* Qwen3's NFC, on strings whose HF output was observed with tokenizers
 * 0.23.2: known marks are reordered and composed, marks newer than HF's
 * Unicode tables (U+08D2) are left where they are. */
static void
test_nfc_as_hf(void **state)
{
	(void)state;
	static const char *const cases[][2] = {
		{ "x\u0301\u0316", "x\u0316\u0301" },
		{ "e\u0301", "\u00e9" },
		{ "a\u08e5\u08d2", "a\u08e5\u08d2" },
		{ "\U00026ea4\u0301\u0316 e\u0301\u0316", "\U00026ea4\u0316\u0301 \u00e9\u0316" },
		{ "\U00010000a\u0301\u0316", "\U00010000\u00e1\u0316" },
	};
	tok *t = load_named("qwen3");
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int32_t *ids = NULL;
		size_t n = 0;
		char *d = NULL;
		assert_int_equal(tok_encode(t, cases[i][0], strlen(cases[i][0]), 1, &ids, &n), 0);
		assert_int_equal(tok_decode(t, ids, n, &d, NULL), 0);
		assert_string_equal(d, cases[i][1]);
		free(d);
		free(ids);
	}
	tok_free(t);
}

/* The streaming decoder: a split character is held, a small buffer is
 * ENG_ERR_RANGE without consuming, a never-completed one is U+FFFD. */
static void
test_stream_edges(void **state)
{
	(void)state;
	tok *t = load_named("llama3");
	/* byte-level pieces for the bytes of "é" (c3 a9): "Ã" and "©" */
	int32_t c3 = tok_token_id(t, "\xc3\x83"), a9 = tok_token_id(t, "\xc2\xa9");
	int32_t x = tok_token_id(t, "x");
	assert_true(c3 >= 0 && a9 >= 0 && x >= 0);
	tok_stream *s = tok_stream_new(t);
	char out[16];
	size_t len = 99;
	assert_int_equal(tok_stream_push(s, c3, out, sizeof out, &len), 0);
	assert_int_equal(len, 0);
	assert_int_equal(tok_stream_push(s, a9, out, 2, &len), ENG_ERR_RANGE);
	assert_int_equal(tok_stream_push(s, a9, out, sizeof out, &len), 0);
	assert_int_equal(len, 2);
	assert_string_equal(out, "\xc3\xa9");
	assert_int_equal(tok_stream_push(s, c3, out, sizeof out, &len), 0);
	assert_int_equal(len, 0);
	assert_int_equal(tok_stream_push(s, x, out, sizeof out, &len), 0);
	assert_string_equal(out, "\xef\xbf\xbdx");
	assert_int_equal(tok_stream_push(s, c3, out, sizeof out, &len), 0);
	assert_int_equal(tok_stream_flush(s, out, sizeof out, &len), 0);
	assert_string_equal(out, "\xef\xbf\xbd");
	assert_int_equal(tok_stream_flush(s, out, sizeof out, &len), 0);
	assert_int_equal(len, 0);
	assert_int_equal(tok_stream_push(s, -3, out, sizeof out, &len), ENG_ERR_INVALID);
	tok_stream_free(s);
	tok_stream_free(NULL);
	tok_free(t);
}

/* Plain BPE by its definition: merge the lowest-ranked adjacent pair
 * (leftmost on ties) until none is left.  Quadratic; for checking only. */
static size_t
naive_bpe(json_t *vocab, json_t *merges, const char *word, int32_t *out)
{
	size_t n = 0;
	char **sym = malloc(strlen(word) * sizeof *sym);
	assert_non_null(sym);
	for (const char *p = word; *p;) {   /* split into UTF-8 characters */
		size_t k = 1;
		while ((p[k] & 0xc0) == 0x80)
			k++;
		sym[n++] = strndup(p, k);
		p += k;
	}
	json_t *rank = json_object();
	for (size_t i = 0; i < json_array_size(merges); i++) {
		json_t *m = json_array_get(merges, i);
		char key[512];
		snprintf(key, sizeof key, "%s %s", json_string_value(json_array_get(m, 0)),
			 json_string_value(json_array_get(m, 1)));
		if (!json_object_get(rank, key))
			json_object_set_new(rank, key, json_integer((json_int_t)i));
	}
	for (;;) {
		long best = -1;
		size_t at = 0;
		for (size_t i = 0; i + 1 < n; i++) {
			char key[512];
			snprintf(key, sizeof key, "%s %s", sym[i], sym[i + 1]);
			json_t *r = json_object_get(rank, key);
			if (r && (best < 0 || json_integer_value(r) < best)) {
				best = (long)json_integer_value(r);
				at = i;
			}
		}
		if (best < 0)
			break;
		size_t la = strlen(sym[at]), lb = strlen(sym[at + 1]);
		char *m = malloc(la + lb + 1);
		memcpy(m, sym[at], la);
		memcpy(m + la, sym[at + 1], lb + 1);
		free(sym[at]);
		free(sym[at + 1]);
		sym[at] = m;
		memmove(sym + at + 1, sym + at + 2, (n - at - 2) * sizeof *sym);
		n--;
	}
	for (size_t i = 0; i < n; i++) {
		out[i] = (int32_t)json_integer_value(json_object_get(vocab, sym[i]));
		free(sym[i]);
	}
	free(sym);
	json_decref(rank);
	return n;
}

/* Long runs: a 1,200-space pre-token equals the definition of BPE; a
 * 10,000-space run and a 1 MB text are fast and round-trip. */
static void
test_long_inputs(void **state)
{
	(void)state;
	tok *t = load_named("qwen3");
	json_t *j = json_load_file(tu_data("tokenizers/qwen3/tokenizer.json"), 0, NULL);
	assert_non_null(j);
	json_t *model = json_object_get(j, "model");

	/* "x" + 1200 spaces + "y": pieces "x", 1199 spaces, " y" */
	size_t ns = 1200;
	char *s = malloc(ns + 3);
	s[0] = 'x';
	memset(s + 1, ' ', ns);
	s[ns + 1] = 'y';
	s[ns + 2] = 0;
	int32_t *ids = NULL;
	size_t n = 0;
	assert_int_equal(tok_encode(t, s, ns + 2, 1, &ids, &n), 0);
	char *word = malloc(2 * ns + 1);
	for (size_t i = 0; i < ns - 1; i++)
		memcpy(word + 2 * i, "\xc4\xa0", 2);   /* 'Ġ' */
	word[2 * (ns - 1)] = 0;
	int32_t *want = malloc(ns * sizeof *want);
	size_t nw = naive_bpe(json_object_get(model, "vocab"), json_object_get(model, "merges"),
			      word, want);
	assert_true(n == nw + 2);
	assert_int_equal(ids[0], tok_token_id(t, "x"));
	assert_memory_equal(ids + 1, want, nw * sizeof *want);
	assert_int_equal(ids[n - 1], tok_token_id(t, "\xc4\xa0y"));
	printf("# 1200-space run: %zu tokens, equal to the plain BPE definition\n", nw);
	free(ids);
	free(word);
	free(want);
	free(s);
	json_decref(j);
	tok_free(t);

	/* 10,000 spaces, then 1 MB of corpus text, on Llama-3 (no normalizer,
	 * so decode(encode(x)) must give x back byte for byte) */
	t = load_named("llama3");
	ns = 10000;
	s = malloc(ns + 1);
	memset(s, ' ', ns);
	s[ns] = 0;
	double t0 = now_s();
	assert_int_equal(tok_encode(t, s, ns, 1, &ids, &n), 0);
	double dt = now_s() - t0;
	printf("# 10,000 spaces: %zu tokens in %.1f ms\n", n, dt * 1e3);
	assert_true(dt < 2.0);
	char *d = NULL;
	assert_int_equal(tok_decode(t, ids, n, &d, NULL), 0);
	assert_string_equal(d, s);
	free(d);
	free(ids);
	free(s);

	json_t *corpus = json_load_file(tu_data("tokenizer_corpus.json"), 0, NULL);
	assert_non_null(corpus);
	size_t cap = (1 << 20) + 4096, len = 0;
	s = malloc(cap);
	for (size_t i = 0; len < (1 << 20); i = (i + 1) % json_array_size(corpus)) {
		json_t *e = json_array_get(corpus, i);
		size_t k = json_string_length(e);
		if (len + k + 1 >= cap)
			break;
		memcpy(s + len, json_string_value(e), k);
		len += k;
		s[len++] = '\n';
	}
	s[len] = 0;
	t0 = now_s();
	assert_int_equal(tok_encode(t, s, len, 0, &ids, &n), 0);
	dt = now_s() - t0;
	printf("# %zu bytes: %zu tokens in %.0f ms (%.1f MB/s)\n", len, n, dt * 1e3,
	       len / dt / 1e6);
	assert_true(dt < 20.0);
	size_t dlen = 0;
	assert_int_equal(tok_decode(t, ids, n, &d, &dlen), 0);
	assert_int_equal(dlen, len);
	assert_memory_equal(d, s, len);
	free(d);
	free(ids);
	free(s);
	json_decref(corpus);
	tok_free(t);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ref_qwen3),
		cmocka_unit_test(test_ref_llama3),
		cmocka_unit_test(test_ref_deepseek),
		cmocka_unit_test(test_fuzz_qwen3),
		cmocka_unit_test(test_fuzz_llama3),
		cmocka_unit_test(test_fuzz_deepseek),
		cmocka_unit_test(test_vocab_and_config),
		cmocka_unit_test(test_load_errors),
		cmocka_unit_test(test_split_behaviors),
		cmocka_unit_test(test_invalid_input),
		cmocka_unit_test(test_parse_special_off),
		cmocka_unit_test(test_parse_special_off_keeps_added),
		cmocka_unit_test(test_parse_special_off_inside_special),
		cmocka_unit_test(test_nfc_as_hf),
		cmocka_unit_test(test_stream_edges),
		cmocka_unit_test(test_long_inputs),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
