/* test_answer.c - answer extraction and equivalence on the real gold answers
 * of GSM8K, MATH-500, AIME24 and AMC23 (copies in tests/data/problems), on
 * common equivalent spellings, and on pairs that must stay different. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "answer.h"
#include "testutil.h"

/* Read every line of a problem file; returns the number of problems. */
static size_t
each_gold(const char *rel, void (*fn)(const json_t *problem, const char *gold, void *ctx), void *ctx)
{
	size_t len = 0, count = 0;
	char *text = tu_read_file(tu_data(rel), &len);
	if (!text)
		fail_msg("%s: cannot read", rel);
	for (char *line = text, *next; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (!*line)
			continue;
		json_error_t je;
		json_t *p = json_loads(line, 0, &je);
		if (!p)
			fail_msg("%s: %s", rel, je.text);
		char *gold = ans_gold(p);
		if (!gold)
			fail_msg("%s: no gold answer in line %zu", rel, count + 1);
		fn(p, gold, ctx);
		free(gold);
		json_decref(p);
		count++;
	}
	free(text);
	return count;
}

/* A solution text ending with the gold answer in four forms (boxed, ####,
 * "Answer:", "answer is"), after noise holding other numbers: each one
 * extracts to something ans_equal to the gold; the gold equals itself. */
static void
check_forms(const json_t *problem, const char *gold, void *ctx)
{
	(void)problem;
	size_t *checked = ctx;
	static const char *const forms[][2] = {
		{ "Let me think step by step. First 12 + 7 = 19, then 3 * 4 = 12.\n"
		  "So the final answer is $\\boxed{", "}$." },
		{ "We compute 5 - 2 = 3 and 3 * 3 = 9.\n#### ", "\n" },
		{ "Reasoning: 10 / 2 = 5.\nAnswer: ", "\n" },
		{ "Step 1: 2+2=4. Thus the answer is ", "" },
	};
	assert_true(ans_equal(gold, gold));
	for (size_t f = 0; f < sizeof forms / sizeof forms[0]; f++) {
		char text[4096];
		snprintf(text, sizeof text, "%s%s%s", forms[f][0], gold, forms[f][1]);
		char *got = ans_extract(text);
		if (!got || !ans_equal(got, gold))
			fail_msg("form %zu: gold \"%s\" extracted as \"%s\"", f, gold, got ? got : "(null)");
		free(got);
		(*checked)++;
	}
}

static void
test_gold_gsm8k(void **state)
{
	(void)state;
	size_t checked = 0;
	assert_int_equal(each_gold("problems/gsm8k-test.jsonl", check_forms, &checked), 1319);
	assert_int_equal(checked, 4 * 1319);
}

static void
test_gold_math500(void **state)
{
	(void)state;
	size_t checked = 0;
	assert_int_equal(each_gold("problems/math500.jsonl", check_forms, &checked), 500);
	assert_int_equal(checked, 4 * 500);
}

static void
test_gold_aime_amc(void **state)
{
	(void)state;
	size_t checked = 0;
	assert_int_equal(each_gold("problems/aime24.jsonl", check_forms, &checked), 30);
	assert_int_equal(each_gold("problems/amc23.jsonl", check_forms, &checked), 40);
	assert_int_equal(checked, 4 * 70);
}

/* The gold answers themselves: GSM8K's "#### N" (with thousands commas),
 * AIME's zero-padded strings, AMC's floats. */
static void
test_gold_forms(void **state)
{
	(void)state;
	static const struct { const char *json, *want; } cases[] = {
		{ "{\"answer\": \"So 3 + 4 = <<3+4=7>>7.\\n#### 7\"}", "7" },
		{ "{\"answer\": \"Total 2,125 dollars.\\n#### 2,125\"}", "2,125" },
		{ "{\"answer\": \"025\"}", "025" },
		{ "{\"answer\": 27.0}", "27" },
		{ "{\"answer\": 2.5}", "2.5" },
		{ "{\"answer\": -1}", "-1" },
		{ "{\"answer\": \"\\\\frac{14}{3}\"}", "\\frac{14}{3}" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		json_t *p = json_loads(cases[i].json, 0, NULL);
		assert_non_null(p);
		char *g = ans_gold(p);
		assert_non_null(g);
		assert_string_equal(g, cases[i].want);
		free(g);
		json_decref(p);
	}
	json_t *p = json_loads("{\"question\": \"no answer\"}", 0, NULL);
	assert_null(ans_gold(p));
	json_decref(p);
	p = json_loads("{\"answer\": null}", 0, NULL);
	assert_null(ans_gold(p));
	json_decref(p);
	assert_null(ans_gold(NULL));
	assert_true(ans_equal("2,125", "2125"));
	assert_true(ans_equal("025", "25"));
	assert_true(ans_equal("27", "27.0"));
}

static void
test_extract_order(void **state)
{
	(void)state;
	static const struct { const char *text, *want; } cases[] = {
		/* the last boxed wins, nested braces kept */
		{ "first \\boxed{1} then \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}" },
		{ "\\boxed{\\text{(A)}}", "\\text{(A)}" },
		/* an unbalanced (truncated) last box falls back to the earlier one */
		{ "\\boxed{7} and later \\boxed{\\frac{3", "7" },
		{ "so \\boxed 5 is it", "5" },
		{ "\\fbox{12}", "12" },
		/* boxed beats #### and Answer: */
		{ "\\boxed{3}\n#### 4\nAnswer: 5", "3" },
		{ "#### 4\nAnswer: 5", "4" },
		{ "blah\nThe answer is 6.\nmore 9 text", "6" },
		{ "Answer: 8\nThe answer is 9", "9" },
		{ "Final Answer: $x^2 + 1$.", "$x^2 + 1$" },
		/* the last number, with sign, thousands and decimals */
		{ "we get 3 then 4 then -12.5 apples", "-12.5" },
		{ "pay 1,000 dollars", "1,000" },
		{ "the values 3, 5", "5" },
		{ "ratio 3/4", "3/4" },
		{ "x-3", "3" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char *got = ans_extract(cases[i].text);
		if (!got || strcmp(got, cases[i].want) != 0)
			fail_msg("\"%s\": got \"%s\", want \"%s\"", cases[i].text, got ? got : "(null)",
				 cases[i].want);
		free(got);
	}
	assert_null(ans_extract("no digits here at all"));
	assert_null(ans_extract(""));
	assert_null(ans_extract(NULL));
	/* an empty box and an empty Answer: fall through */
	char *got = ans_extract("\\boxed{} and 42");
	assert_non_null(got);
	assert_string_equal(got, "42");
	free(got);
}

static void
test_equal_variants(void **state)
{
	(void)state;
	static const char *const pairs[][2] = {
		{ "1,000", "1000" }, { "1,234,567.50", "1234567.5" }, { "0.5", "\\frac12" },
		{ "0.5", "\\frac{1}{2}" }, { "1/2", "\\frac{1}{2}" }, { "\\dfrac{3}{4}", "\\frac34" },
		{ "\\tfrac{3}{4}", "0.75" }, { "-\\frac{1}{4}", "-0.25" }, { "\\frac{-1}{4}", "-1/4" },
		{ "\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})" },
		{ "\\left(3, \\dfrac{\\pi}{2}\\right)", "(3, \\frac{\\pi}{2})" },
		{ "90^\\circ", "90" }, { "90^{\\circ}", "90" }, { "90\xc2\xb0", "90" },
		{ "90 degrees", "90" }, { "5\\%", "5" }, { "5%", "5" }, { "$18", "18" },
		{ "\\$18.00", "18" }, { "\\text{Evelyn}", "Evelyn" }, { "\\textbf{(C)}", "(C)" },
		{ "x=5", "5" }, { "x = 5", "5" }, { "11\\sqrt2", "11\\sqrt{2}" }, { "27.0", "27" },
		{ "3.", "3" }, { "-0", "0" }, { "007", "7" }, { ".5", "0.5" }, { "6 - 5i", "6-5i" },
		{ "3\\,000", "3000" }, { "\\frac{14}{3}", "\\dfrac{14}{3}" },
	};
	for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
		if (!ans_equal(pairs[i][0], pairs[i][1]))
			fail_msg("\"%s\" should equal \"%s\"", pairs[i][0], pairs[i][1]);
		if (!ans_equal(pairs[i][1], pairs[i][0]))
			fail_msg("\"%s\" should equal \"%s\" (reversed)", pairs[i][1], pairs[i][0]);
	}
}

static void
test_not_equal(void **state)
{
	(void)state;
	static const char *const pairs[][2] = {
		{ "1/2", "2" }, { "\\frac{1}{2}", "\\frac{2}{1}" }, { "12", "1.2" }, { "x+1", "x-1" },
		{ "1,000", "100" }, { "(1,2)", "(2,1)" }, { "5\\%", "50" }, { "Evelyn", "Eve" },
		{ "", "0" }, { "1,-2", "1-2" }, { "3, 5, 7", "357" }, { "\\sqrt{2}", "2" },
		{ "-3", "3" }, { "0.333", "\\frac13" }, { "1/0", "0/0" }, { "\\text{east}", "west" },
		{ "2k+2", "2k" }, { "x=5", "y=5x" },
	};
	for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++)
		if (ans_equal(pairs[i][0], pairs[i][1]) || ans_equal(pairs[i][1], pairs[i][0]))
			fail_msg("\"%s\" should differ from \"%s\"", pairs[i][0], pairs[i][1]);
	assert_false(ans_equal(NULL, "1"));
	assert_false(ans_equal("1", NULL));
	assert_false(ans_equal("", ""));
}

static void
test_normalize(void **state)
{
	(void)state;
	static const char *const cases[][2] = {
		{ "\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})" },
		{ "1,000", "1000" }, { "27.0", "27" }, { "\\dfrac{1}{2}", "\\frac{1}{2}" },
		{ "\\text{ Evelyn }", "Evelyn" }, { "1,-2", "1,-2" }, { "2.50", "2.5" },
		{ "\\leftarrow", "\\leftarrow" }, { "$90^\\circ$.", "90" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char *n = ans_normalize(cases[i][0]);
		assert_non_null(n);
		if (strcmp(n, cases[i][1]) != 0)
			fail_msg("normalize \"%s\" = \"%s\", want \"%s\"", cases[i][0], n, cases[i][1]);
		free(n);
	}
	assert_null(ans_normalize(NULL));
	/* hostile input: unbalanced braces and lone backslashes neither crash
	 * nor read past the end */
	static const char *const junk[] = { "\\frac{", "\\frac{1}{", "\\text{", "\\", "{{{}",
					    "\\sqrt", "\\boxed{", "####", "Answer:", "-", "," };
	for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
		free(ans_normalize(junk[i]));
		free(ans_extract(junk[i]));
		(void)ans_equal(junk[i], junk[i]);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_gold_gsm8k),    cmocka_unit_test(test_gold_math500),
		cmocka_unit_test(test_gold_aime_amc), cmocka_unit_test(test_gold_forms),
		cmocka_unit_test(test_extract_order), cmocka_unit_test(test_equal_variants),
		cmocka_unit_test(test_not_equal),     cmocka_unit_test(test_normalize),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
