/* test_chat.c - gpu/chat against transformers' apply_chat_template output
 * for the real Qwen3 and Llama-3 templates (tests/data/ref/chat_*.json). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "status.h"
#include "tokenizer.h"
#include "testutil.h"

static void
check_reference(const char *name, enum chat_format want_format)
{
	char rel[256], err[ENG_ERRLEN] = "";
	snprintf(rel, sizeof rel, "tokenizers/%s", name);
	tok *t = tok_load_dir(tu_data(rel), err, sizeof err);
	if (!t)
		fail_msg("%s", err);
	enum chat_format f = chat_detect(t);
	assert_int_equal(f, want_format);

	snprintf(rel, sizeof rel, "ref/chat_%s.json", name);
	json_error_t jerr;
	json_t *ref = json_load_file(tu_data(rel), 0, &jerr);
	if (!ref)
		fail_msg("%s: %s (reference data missing?)", tu_data(rel), jerr.text);
	json_t *cases = json_object_get(ref, "cases");
	assert_true(json_array_size(cases) > 0);
	size_t bad = 0;
	for (size_t c = 0; c < json_array_size(cases); c++) {
		json_t *cs = json_array_get(cases, c), *jm = json_object_get(cs, "messages");
		size_t n = json_array_size(jm);
		struct chat_msg *msgs = calloc(n + 1, sizeof *msgs);
		assert_non_null(msgs);
		for (size_t i = 0; i < n; i++) {
			msgs[i].role = json_string_value(json_object_get(json_array_get(jm, i), "role"));
			msgs[i].content =
				json_string_value(json_object_get(json_array_get(jm, i), "content"));
		}
		int gen = json_is_true(json_object_get(cs, "add_generation_prompt"));
		const char *want = json_string_value(json_object_get(cs, "text"));
		assert_non_null(want);
		char *out = NULL;
		assert_int_equal(chat_render(f, msgs, n, gen, tok_bos_token(t), &out), 0);
		if (strcmp(out, want) != 0) {
			printf("# %s case %zu differs:\n#   got  %s\n#   want %s\n", name, c, out, want);
			bad++;
		}
		free(out);
		free(msgs);
	}
	printf("# %s (%s): %zu cases, %zu mismatches\n", name, chat_format_name(f),
	       json_array_size(cases), bad);
	assert_int_equal(bad, 0);
	json_decref(ref);
	tok_free(t);
}

static void test_qwen3(void **state) { (void)state; check_reference("qwen3", CHAT_CHATML); }
static void test_llama3(void **state) { (void)state; check_reference("llama3", CHAT_LLAMA3); }

static void
test_names_and_errors(void **state)
{
	(void)state;
	assert_string_equal(chat_format_name(CHAT_NONE), "none");
	assert_string_equal(chat_format_name(CHAT_CHATML), "chatml");
	assert_string_equal(chat_format_name(CHAT_LLAMA3), "llama3");
	struct chat_msg m[2] = { { "user", "a" }, { "assistant", "b" } };
	char *out = NULL;
	assert_int_equal(chat_render(CHAT_NONE, m, 2, 1, NULL, &out), 0);
	assert_string_equal(out, "ab");
	free(out);
	struct chat_msg bad = { NULL, "x" };
	assert_int_equal(chat_render(CHAT_CHATML, &bad, 1, 1, NULL, &out), ENG_ERR_INVALID);
	assert_int_equal(chat_render((enum chat_format)42, m, 2, 1, NULL, &out), ENG_ERR_INVALID);
	/* DeepSeek-V3's template is neither format */
	char err[ENG_ERRLEN];
	tok *t = tok_load_dir(tu_data("tokenizers/deepseek_v3"), err, sizeof err);
	assert_non_null(t);
	assert_int_equal(chat_detect(t), CHAT_NONE);
	tok_free(t);
}

/* Without a chat_template, the special tokens decide: copy tokenizer.json
 * alone into a scratch directory. */
static void
test_detect_without_template(void **state)
{
	(void)state;
	static const struct {
		const char *name;
		enum chat_format want;
	} cases[] = { { "qwen3", CHAT_CHATML }, { "llama3", CHAT_LLAMA3 }, { "deepseek_v3", CHAT_NONE } };
	for (size_t i = 0; i < 3; i++) {
		char *dir = tu_tmpdir(), rel[256], to[1024], err[ENG_ERRLEN];
		assert_non_null(dir);
		snprintf(rel, sizeof rel, "tokenizers/%s/tokenizer.json", cases[i].name);
		snprintf(to, sizeof to, "%s/tokenizer.json", dir);
		assert_int_equal(tu_copy_file(tu_data(rel), to), 0);
		tok *t = tok_load_dir(dir, err, sizeof err);
		if (!t)
			fail_msg("%s", err);
		assert_null(tok_chat_template(t));
		assert_int_equal(chat_detect(t), cases[i].want);
		tok_free(t);
		tu_rmtree(dir);
		free(dir);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_qwen3),
		cmocka_unit_test(test_llama3),
		cmocka_unit_test(test_names_and_errors),
		cmocka_unit_test(test_detect_without_template),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
