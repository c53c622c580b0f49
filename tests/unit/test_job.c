/* test_job.c - job requests: defaults, every validation error naming its
 * field, the round trip through JSON, job ids. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"
#include "status.h"

#define MAX_N 16
#define MAX_TOK 1000

/* Parse text (must be valid JSON) into r; returns the status. */
static int
parse(const char *text, struct job_req *r, char *err, size_t errlen)
{
	json_error_t jerr;
	json_t *body = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
	if (!body)
		fail_msg("bad test JSON %s: %s", text, jerr.text);
	err[0] = '\0';
	int rc = job_req_from_json(body, r, MAX_N, MAX_TOK, err, errlen);
	json_decref(body);
	return rc;
}

static void
test_defaults(void **state)
{
	(void)state;
	struct job_req r;
	char err[256];
	job_req_init(&r);
	assert_string_equal(r.strategy, "sc");
	assert_int_equal(r.n, 8);
	assert_true(r.sampling.temperature == 0.8f);
	assert_true(r.sampling.top_p == 0.95f);
	assert_int_equal(r.max_tokens, 512);
	assert_null(r.question);
	assert_null(r.messages);

	assert_int_equal(parse("{\"question\": \"What is 2+2?\"}", &r, err, sizeof err), 0);
	assert_string_equal(r.question, "What is 2+2?");
	assert_string_equal(r.strategy, "sc");
	assert_int_equal(r.n, 8);
	assert_true(r.sampling.temperature == 0.8f);
	assert_true(r.sampling.top_p == 0.95f);
	assert_int_equal(r.sampling.top_k, 0);
	assert_true(r.sampling.min_p == 0.0f);
	assert_int_equal(r.max_tokens, 512);
	assert_null(r.system);
	assert_null(r.params);
	assert_null(r.gold);
	job_req_free(&r);
	/* Reset to the defaults. */
	assert_null(r.question);
	assert_int_equal(r.n, 8);
	job_req_free(&r);
}

static void
test_all_fields(void **state)
{
	(void)state;
	struct job_req r;
	char err[256];
	job_req_init(&r);
	assert_int_equal(parse("{\"question\": \"q\", \"strategy\": \"single\", \"n\": 16,"
			       " \"temperature\": 0, \"top_p\": 0.5, \"top_k\": 40, \"min_p\": 0.05,"
			       " \"seed\": 9007199254740993, \"max_tokens\": 1000, \"system\": \"be brief\","
			       " \"params\": {\"prune\": {\"k\": [1, 2]}}, \"gold\": 42}",
			       &r, err, sizeof err), 0);
	assert_string_equal(r.strategy, "single");
	assert_int_equal(r.n, 16);
	assert_true(r.sampling.temperature == 0.0f);
	assert_true(r.sampling.top_p == 0.5f);
	assert_int_equal(r.sampling.top_k, 40);
	assert_true(r.sampling.min_p == 0.05f);
	assert_true(r.sampling.seed == 9007199254740993ULL);
	assert_int_equal(r.max_tokens, 1000);
	assert_string_equal(r.system, "be brief");
	assert_int_equal(json_integer_value(json_array_get(
		json_object_get(json_object_get(r.params, "prune"), "k"), 1)), 2);
	assert_string_equal(r.gold, "42");
	job_req_free(&r);

	/* null means "not given". */
	job_req_init(&r);
	assert_int_equal(parse("{\"question\": \"q\", \"n\": null, \"system\": null}", &r, err,
			       sizeof err), 0);
	assert_int_equal(r.n, 8);
	assert_null(r.system);
	job_req_free(&r);
}

/* Each bad body must fail with ENG_ERR_INVALID and an error that starts
 * with the field it names. */
static const struct {
	const char *body;
	const char *field;      /* err must start with this + ':' */
	const char *why;        /* and contain this               */
} bad[] = {
	{ "[1]", "body", "object" },
	{ "\"q\"", "body", "object" },
	{ "{}", "question", "missing" },
	{ "{\"strategy\": \"sc\"}", "question", "missing" },
	{ "{\"question\": \"q\", \"bogus\": 1}", "bogus", "unknown" },
	{ "{\"question\": \"q\", \"Question\": \"x\"}", "Question", "unknown" },
	{ "{\"question\": 5}", "question", "string" },
	{ "{\"question\": \"\"}", "question", "empty" },
	{ "{\"question\": \"a\\u0000b\"}", "question", "NUL" },
	{ "{\"question\": \"q\", \"n\": 0}", "n", "[1, 16]" },
	{ "{\"question\": \"q\", \"n\": 17}", "n", "[1, 16]" },
	{ "{\"question\": \"q\", \"n\": -3}", "n", "[1, 16]" },
	{ "{\"question\": \"q\", \"n\": 2.5}", "n", "integer" },
	{ "{\"question\": \"q\", \"n\": 2.0}", "n", "integer" },
	{ "{\"question\": \"q\", \"n\": \"4\"}", "n", "integer" },
	{ "{\"question\": \"q\", \"n\": true}", "n", "integer" },
	{ "{\"question\": \"q\", \"max_tokens\": 0}", "max_tokens", "[1, 1000]" },
	{ "{\"question\": \"q\", \"max_tokens\": 1001}", "max_tokens", "[1, 1000]" },
	{ "{\"question\": \"q\", \"max_tokens\": 99999999999999}", "max_tokens", "[1, 1000]" },
	{ "{\"question\": \"q\", \"temperature\": -0.1}", "temperature", "[0" },
	{ "{\"question\": \"q\", \"temperature\": 1e300}", "temperature", "[0" },
	{ "{\"question\": \"q\", \"temperature\": \"hot\"}", "temperature", "number" },
	{ "{\"question\": \"q\", \"top_p\": 0}", "top_p", "(0" },
	{ "{\"question\": \"q\", \"top_p\": 1.5}", "top_p", "(0" },
	{ "{\"question\": \"q\", \"min_p\": -1}", "min_p", "[0" },
	{ "{\"question\": \"q\", \"min_p\": 2}", "min_p", "[0" },
	{ "{\"question\": \"q\", \"top_k\": -1}", "top_k", "[0" },
	{ "{\"question\": \"q\", \"top_k\": 3000000000}", "top_k", "[0" },
	{ "{\"question\": \"q\", \"top_k\": 1.5}", "top_k", "integer" },
	{ "{\"question\": \"q\", \"seed\": -1}", "seed", "[0" },
	{ "{\"question\": \"q\", \"seed\": 1.0}", "seed", "integer" },
	{ "{\"question\": \"q\", \"strategy\": 3}", "strategy", "string" },
	{ "{\"question\": \"q\", \"strategy\": \"\"}", "strategy", "characters" },
	{ "{\"question\": \"q\", \"strategy\": \"abcdefghijabcdefghijabcdefghijab\"}", "strategy",
	  "characters" },
	{ "{\"question\": \"q\", \"strategy\": \"../x\"}", "strategy", "letters" },
	{ "{\"question\": \"q\", \"system\": 1}", "system", "string" },
	{ "{\"question\": \"q\", \"params\": [1]}", "params", "object" },
	{ "{\"question\": \"q\", \"params\": {\"a\": \"x\\u0000\"}}", "params", "NUL" },
	{ "{\"question\": \"q\", \"gold\": 1.5}", "gold", "string" },
	{ "{\"question\": \"q\", \"gold\": [\"4\"]}", "gold", "string" },
	{ "{\"question\": \"q\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}",
	  "messages", "not both" },
	{ "{\"messages\": []}", "messages", "empty" },
	{ "{\"messages\": {\"role\": \"user\"}}", "messages", "array" },
	{ "{\"messages\": [\"hi\"]}", "messages[0]", "object" },
	{ "{\"messages\": [{\"role\": \"user\"}]}", "messages[0].content", "missing" },
	{ "{\"messages\": [{\"content\": \"x\"}]}", "messages[0].role", "missing" },
	{ "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"tool\","
	  " \"content\": \"y\"}]}", "messages[1].role", "system" },
	{ "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\"}]}]}",
	  "messages[0].content", "string" },
	{ "{\"messages\": [{\"role\": \"user\", \"content\": \"x\", \"extra\": 1}]}",
	  "messages[0].extra", "unknown" },
	{ "{\"messages\": [{\"role\": \"user\", \"content\": \"x\\u0000\"}]}",
	  "messages[0].content", "NUL" },
	{ "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"system\": \"s\"}",
	  "system", "system message" },
};

static void
test_errors(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct job_req r;
		char err[256], want[128];
		job_req_init(&r);
		int rc = parse(bad[i].body, &r, err, sizeof err);
		if (rc != ENG_ERR_INVALID)
			fail_msg("%s: rc %d, want ENG_ERR_INVALID", bad[i].body, rc);
		snprintf(want, sizeof want, "%s: ", bad[i].field);
		if (strncmp(err, want, strlen(want)) != 0 || !strstr(err, bad[i].why))
			fail_msg("%s: error \"%s\", want \"%s...%s\"", bad[i].body, err, want,
				 bad[i].why);
		job_req_free(&r);   /* whatever was filled before the error */
	}
}

/* jansson refuses invalid UTF-8 when parsing, but a json_t built in C may
 * hold anything: those strings are checked too. */
static void
test_invalid_utf8(void **state)
{
	(void)state;
	static const char *const bad_utf8[] = {
		"\xff", "a\xc3", "\xc0\xaf" /* overlong '/' */, "\xed\xa0\x80" /* surrogate */,
		"\xf4\x90\x80\x80" /* > U+10FFFF */, "\xe0\x80\xaf" /* overlong */,
	};
	for (size_t i = 0; i < sizeof bad_utf8 / sizeof bad_utf8[0]; i++) {
		const char *fields[] = { "question", "system", "gold" };
		for (size_t f = 0; f < 3; f++) {
			struct job_req r;
			char err[256];
			json_t *body = json_object();
			if (f)
				json_object_set_new(body, "question", json_string("q"));
			json_object_set_new(body, fields[f], json_stringn_nocheck(bad_utf8[i],
										  strlen(bad_utf8[i])));
			job_req_init(&r);
			assert_int_equal(job_req_from_json(body, &r, MAX_N, MAX_TOK, err, sizeof err),
					 ENG_ERR_INVALID);
			assert_true(strncmp(err, fields[f], strlen(fields[f])) == 0);
			assert_non_null(strstr(err, "UTF-8"));
			job_req_free(&r);
			json_decref(body);
		}
		/* Inside a message and deep inside params. */
		struct job_req r;
		char err[256];
		json_t *msg = json_pack("{s:s}", "role", "user");
		json_object_set_new(msg, "content", json_stringn_nocheck(bad_utf8[i], strlen(bad_utf8[i])));
		json_t *body = json_pack("{s:[o]}", "messages", msg);
		job_req_init(&r);
		assert_int_equal(job_req_from_json(body, &r, MAX_N, MAX_TOK, err, sizeof err),
				 ENG_ERR_INVALID);
		assert_non_null(strstr(err, "messages[0].content: must be valid UTF-8"));
		json_decref(body);
		json_t *deep = json_pack("{s:[{s:o}]}", "list", "x",
					 json_stringn_nocheck(bad_utf8[i], strlen(bad_utf8[i])));
		body = json_pack("{s:s, s:o}", "question", "q", "params", deep);
		assert_int_equal(job_req_from_json(body, &r, MAX_N, MAX_TOK, err, sizeof err),
				 ENG_ERR_INVALID);
		assert_non_null(strstr(err, "params: must be valid UTF-8"));
		json_decref(body);
		job_req_free(&r);
	}
	/* Valid multibyte text passes (2, 3 and 4 byte forms). */
	struct job_req r;
	char err[256];
	job_req_init(&r);
	assert_int_equal(parse("{\"question\": \"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 \\u00e9\"}",
			       &r, err, sizeof err), 0);
	assert_string_equal(r.question, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 \xc3\xa9");
	job_req_free(&r);
}

static void
test_messages(void **state)
{
	(void)state;
	struct job_req r;
	char err[256];
	job_req_init(&r);
	assert_int_equal(parse("{\"messages\": [{\"role\": \"system\", \"content\": \"s\"},"
			       " {\"role\": \"user\", \"content\": \"u\", \"name\": \"bob\"},"
			       " {\"role\": \"assistant\", \"content\": \"\"},"
			       " {\"role\": \"user\", \"content\": \"again\"}], \"n\": 1}",
			       &r, err, sizeof err), 0);
	assert_null(r.question);
	assert_int_equal(json_array_size(r.messages), 4);
	assert_string_equal(json_string_value(json_object_get(json_array_get(r.messages, 3),
							      "content")), "again");
	assert_int_equal(r.n, 1);
	job_req_free(&r);
}

/* to_json then from_json gives an equal request; the JSON is what the
 * fields say. */
static void
check_round_trip(const char *text)
{
	struct job_req a, b;
	char err[256];
	job_req_init(&a);
	job_req_init(&b);
	assert_int_equal(parse(text, &a, err, sizeof err), 0);
	json_t *j = job_req_to_json(&a);
	assert_non_null(j);
	assert_int_equal(job_req_from_json(j, &b, MAX_N, MAX_TOK, err, sizeof err), 0);
	assert_true((a.question == NULL) == (b.question == NULL));
	if (a.question)
		assert_string_equal(a.question, b.question);
	assert_true((a.system == NULL) == (b.system == NULL));
	if (a.system)
		assert_string_equal(a.system, b.system);
	assert_true((a.gold == NULL) == (b.gold == NULL));
	if (a.gold)
		assert_string_equal(a.gold, b.gold);
	assert_true(json_equal(a.messages, b.messages) || (!a.messages && !b.messages));
	assert_true(json_equal(a.params, b.params) || (!a.params && !b.params));
	assert_string_equal(a.strategy, b.strategy);
	assert_int_equal(a.n, b.n);
	assert_int_equal(a.max_tokens, b.max_tokens);
	assert_true(a.sampling.temperature == b.sampling.temperature);
	assert_true(a.sampling.top_p == b.sampling.top_p);
	assert_true(a.sampling.min_p == b.sampling.min_p);
	assert_int_equal(a.sampling.top_k, b.sampling.top_k);
	assert_true(a.sampling.seed == b.sampling.seed);

	/* The JSON itself: floats as their short decimal, ints as ints. */
	json_t *t = json_object_get(j, "temperature");
	assert_true(json_is_real(t));
	assert_true((float)json_real_value(t) == a.sampling.temperature);
	assert_int_equal(json_integer_value(json_object_get(j, "n")), a.n);
	assert_string_equal(json_string_value(json_object_get(j, "strategy")), a.strategy);
	assert_true(json_object_get(j, "question") == NULL || a.messages == NULL);
	assert_null(json_object_get(j, "id"));
	json_decref(j);
	job_req_free(&a);
	job_req_free(&b);
}

static void
test_round_trip(void **state)
{
	(void)state;
	check_round_trip("{\"question\": \"q\"}");
	check_round_trip("{\"question\": \"\xc3\xa9t\xc3\xa9\", \"strategy\": \"single\", \"n\": 3,"
			 " \"temperature\": 0.7, \"top_p\": 0.9, \"top_k\": 5, \"min_p\": 0.1,"
			 " \"seed\": 123456789012, \"max_tokens\": 77, \"system\": \"sys\","
			 " \"params\": {\"a\": [1, \"b\", null]}, \"gold\": \"x = 4\"}");
	check_round_trip("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"temperature\": 0.3}");

	/* The default temperature 0.8f goes out as the double nearest 0.8, not
	 * as (double)0.8f = 0.800000011920929. */
	struct job_req r;
	job_req_init(&r);
	r.question = strdup("q");
	json_t *j = job_req_to_json(&r);
	assert_true(json_real_value(json_object_get(j, "temperature")) == 0.8);
	assert_true(json_real_value(json_object_get(j, "top_p")) == 0.95);
	assert_true(json_real_value(json_object_get(j, "min_p")) == 0.0);
	json_decref(j);
	job_req_free(&r);
}

static void
test_ids(void **state)
{
	(void)state;
	char ids[64][EV_JOB_ID_MAX];
	int hist[16] = { 0 };
	for (int i = 0; i < 64; i++) {
		job_new_id(ids[i]);
		assert_int_equal(strlen(ids[i]), 21);
		assert_int_equal(ids[i][0], 'j');
		assert_true(job_id_valid(ids[i]));
		for (int k = 1; k < 21; k++) {
			const char *hex = "0123456789abcdef";
			const char *p = strchr(hex, ids[i][k]);
			assert_non_null(p);
			hist[p - hex]++;
		}
		for (int k = 0; k < i; k++)
			assert_string_not_equal(ids[i], ids[k]);
	}
	/* 1280 random digits: each of 16 values expected 80 times; a broken
	 * generator (constant, few values) fails this loose bound. */
	for (int d = 0; d < 16; d++)
		assert_true(hist[d] > 30 && hist[d] < 160);

	static const char *const invalid[] = {
		"", "j", "j0123456789abcdef012", "j0123456789abcdef01234", "J0123456789abcdef0123",
		"x0123456789abcdef0123", "j0123456789ABCDEF0123", "j0123456789abcdef012g",
		"j..3456789abcdef0123", "j/123456789abcdef0123", "../etc/passwd",
		"j0123456789abcdef012 ", "j0123456789abcdef0123\n", "j0123456789abcdef01'3",
	};
	for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++)
		if (job_id_valid(invalid[i]))
			fail_msg("accepted \"%s\"", invalid[i]);
	assert_false(job_id_valid(NULL));
	assert_true(job_id_valid("j0123456789abcdef0123"));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_all_fields),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_invalid_utf8),
		cmocka_unit_test(test_messages),
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_ids),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
