/* job.c - job requests (job_): strict validation of a request body, the
 * request back as JSON, job ids.  Runs on whichever thread got the request. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "job.h"
#include "status.h"
#include "utf8.h"

#define JOB_ID_HEX 20
#define JOB_JSON_DEPTH_MAX 64      /* nesting allowed inside "params"       */
#define JOB_TEMPERATURE_MAX 100.0

void
job_req_init(struct job_req *r)
{
	memset(r, 0, sizeof *r);
	snprintf(r->strategy, sizeof r->strategy, "%s", "sc");
	r->n = 8;
	r->sampling = samp_default_params();
	r->sampling.temperature = 0.8f;
	r->sampling.top_p = 0.95f;
	r->max_tokens = 512;
}

void
job_req_free(struct job_req *r)
{
	if (!r)
		return;
	free(r->question);
	free(r->system);
	free(r->gold);
	json_decref(r->messages);
	json_decref(r->params);
	job_req_init(r);
}

/* ---- validation helpers ------------------------------------------------------ */

/* A JSON string that is valid UTF-8 without NUL bytes; else the reason. */
static const char *
string_problem(const json_t *v)
{
	const char *s = json_string_value(v);
	size_t n = json_string_length(v);
	if (!s)
		return "must be a string";
	if (strlen(s) != n)
		return "must not contain a NUL character";
	if (!utf8_valid(s, n))
		return "must be valid UTF-8";
	return NULL;
}

/* Every string (keys included) inside v, for "params". */
static const char *
tree_problem(const json_t *v, int depth)
{
	const char *why = NULL;
	if (depth > JOB_JSON_DEPTH_MAX)
		return "is nested too deeply";
	if (json_is_string(v))
		return string_problem(v);
	if (json_is_object(v)) {
		const char *k;
		json_t *x;
		json_object_foreach((json_t *)v, k, x) {
			if (!utf8_valid(k, strlen(k)))
				return "has a key that is not valid UTF-8";
			if ((why = tree_problem(x, depth + 1)))
				return why;
		}
	} else if (json_is_array(v)) {
		size_t i;
		json_t *x;
		json_array_foreach(v, i, x)
			if ((why = tree_problem(x, depth + 1)))
				return why;
	} else if (json_is_real(v) && !isfinite(json_real_value(v))) {
		return "must hold finite numbers";
	}
	return NULL;
}

static int
get_string(const json_t *v, const char *key, bool nonempty, char **out, char *err, size_t errlen)
{
	const char *why = string_problem(v);
	if (why)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "%s: %s", key, why);
	if (nonempty && json_string_length(v) == 0)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "%s: must not be empty", key);
	free(*out);
	*out = strdup(json_string_value(v));
	if (!*out)
		return eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: out of memory", key);
	return 0;
}

static int
get_int(const json_t *v, const char *key, long long lo, long long hi, long long *out,
	char *err, size_t errlen)
{
	long long x;
	if (!json_is_integer(v))
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "%s: must be an integer", key);
	x = json_integer_value(v);
	if (x < lo || x > hi)
		return eng_seterr(err, errlen, ENG_ERR_INVALID,
				  "%s: must be in [%lld, %lld], got %lld", key, lo, hi, x);
	*out = x;
	return 0;
}

/* A finite number in [lo, hi] ((lo, hi] when lo_open). */
static int
get_num(const json_t *v, const char *key, double lo, bool lo_open, double hi, float *out,
	char *err, size_t errlen)
{
	double x;
	if (!json_is_number(v))
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "%s: must be a number", key);
	x = json_number_value(v);
	if (!isfinite(x) || x < lo || (lo_open && x == lo) || x > hi)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "%s: must be in %c%g, %g], got %g",
				  key, lo_open ? '(' : '[', lo, hi, x);
	*out = (float)x;
	return 0;
}

static int
get_messages(const json_t *v, json_t **out, char *err, size_t errlen)
{
	static const char *const roles[] = { "system", "user", "assistant" };
	size_t i;
	json_t *m;

	if (!json_is_array(v))
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "messages: must be an array");
	if (json_array_size(v) == 0)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "messages: must not be empty");
	json_array_foreach(v, i, m) {
		const char *k, *why;
		json_t *x, *role, *content;
		bool role_ok = false;

		if (!json_is_object(m))
			return eng_seterr(err, errlen, ENG_ERR_INVALID,
					  "messages[%zu]: must be an object", i);
		json_object_foreach(m, k, x) {
			if (strcmp(k, "role") && strcmp(k, "content") && strcmp(k, "name"))
				return eng_seterr(err, errlen, ENG_ERR_INVALID,
						  "messages[%zu].%.64s: unknown field", i, k);
			if (json_is_null(x) && strcmp(k, "name") == 0)
				continue;
			if ((why = string_problem(x)))
				return eng_seterr(err, errlen, ENG_ERR_INVALID,
						  "messages[%zu].%s: %s", i, k, why);
		}
		role = json_object_get(m, "role");
		content = json_object_get(m, "content");
		if (!role)
			return eng_seterr(err, errlen, ENG_ERR_INVALID,
					  "messages[%zu].role: missing", i);
		if (!content)
			return eng_seterr(err, errlen, ENG_ERR_INVALID,
					  "messages[%zu].content: missing", i);
		for (size_t r = 0; r < sizeof roles / sizeof roles[0]; r++)
			role_ok |= strcmp(json_string_value(role), roles[r]) == 0;
		if (!role_ok)
			return eng_seterr(err, errlen, ENG_ERR_INVALID,
					  "messages[%zu].role: must be \"system\", \"user\" or \"assistant\"", i);
	}
	json_decref(*out);
	*out = json_deep_copy(v);
	if (!*out)
		return eng_seterr(err, errlen, ENG_ERR_NOMEM, "messages: out of memory");
	return 0;
}

static int
get_strategy(const json_t *v, char out[JOB_STRATEGY_MAX], char *err, size_t errlen)
{
	const char *s = json_string_value(v);
	size_t n;
	if (!s)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "strategy: must be a string");
	n = json_string_length(v);
	if (n == 0 || n >= JOB_STRATEGY_MAX)
		return eng_seterr(err, errlen, ENG_ERR_INVALID,
				  "strategy: must be 1 to %d characters", JOB_STRATEGY_MAX - 1);
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-' || c == '.'))
			return eng_seterr(err, errlen, ENG_ERR_INVALID,
					  "strategy: may hold only letters, digits, '_', '-' and '.'");
	}
	memcpy(out, s, n + 1);
	return 0;
}

/* ---- job_req_from_json ------------------------------------------------------- */

enum job_field {
	F_QUESTION, F_MESSAGES, F_STRATEGY, F_N, F_TEMPERATURE, F_TOP_P, F_TOP_K, F_MIN_P,
	F_SEED, F_MAX_TOKENS, F_SYSTEM, F_PARAMS, F_GOLD,
};

static const char *const job_fields[] = {
	[F_QUESTION] = "question", [F_MESSAGES] = "messages", [F_STRATEGY] = "strategy",
	[F_N] = "n", [F_TEMPERATURE] = "temperature", [F_TOP_P] = "top_p",
	[F_TOP_K] = "top_k", [F_MIN_P] = "min_p", [F_SEED] = "seed",
	[F_MAX_TOKENS] = "max_tokens", [F_SYSTEM] = "system", [F_PARAMS] = "params",
	[F_GOLD] = "gold",
};

static int
set_field(enum job_field f, const json_t *v, struct job_req *r, int max_n, int max_tokens_cap,
	  char *err, size_t errlen)
{
	const char *key = job_fields[f];
	long long x = 0;
	int rc;

	switch (f) {
	case F_QUESTION:
		return get_string(v, key, true, &r->question, err, errlen);
	case F_MESSAGES:
		return get_messages(v, &r->messages, err, errlen);
	case F_STRATEGY:
		return get_strategy(v, r->strategy, err, errlen);
	case F_N:
		if ((rc = get_int(v, key, 1, max_n, &x, err, errlen)))
			return rc;
		r->n = (int)x;
		return 0;
	case F_TEMPERATURE:
		return get_num(v, key, 0, false, JOB_TEMPERATURE_MAX, &r->sampling.temperature,
			       err, errlen);
	case F_TOP_P:
		return get_num(v, key, 0, true, 1, &r->sampling.top_p, err, errlen);
	case F_TOP_K:
		if ((rc = get_int(v, key, 0, INT_MAX, &x, err, errlen)))
			return rc;
		r->sampling.top_k = (int)x;
		return 0;
	case F_MIN_P:
		return get_num(v, key, 0, false, 1, &r->sampling.min_p, err, errlen);
	case F_SEED:
		if ((rc = get_int(v, key, 0, LLONG_MAX, &x, err, errlen)))
			return rc;
		r->sampling.seed = (uint64_t)x;
		return 0;
	case F_MAX_TOKENS:
		if ((rc = get_int(v, key, 1, max_tokens_cap, &x, err, errlen)))
			return rc;
		r->max_tokens = (int)x;
		return 0;
	case F_SYSTEM:
		return get_string(v, key, false, &r->system, err, errlen);
	case F_PARAMS: {
		const char *why;
		if (!json_is_object(v))
			return eng_seterr(err, errlen, ENG_ERR_INVALID, "params: must be an object");
		if ((why = tree_problem(v, 0)))
			return eng_seterr(err, errlen, ENG_ERR_INVALID, "params: %s", why);
		json_decref(r->params);
		r->params = json_deep_copy(v);
		if (!r->params)
			return eng_seterr(err, errlen, ENG_ERR_NOMEM, "params: out of memory");
		return 0;
	}
	case F_GOLD:
		/* Problem files often carry numeric answers: keep them as text. */
		if (json_is_integer(v)) {
			char buf[32];
			snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(v));
			free(r->gold);
			r->gold = strdup(buf);
			if (!r->gold)
				return eng_seterr(err, errlen, ENG_ERR_NOMEM, "gold: out of memory");
			return 0;
		}
		if (!json_is_string(v))
			return eng_seterr(err, errlen, ENG_ERR_INVALID,
					  "gold: must be a string or an integer");
		return get_string(v, key, false, &r->gold, err, errlen);
	}
	return eng_seterr(err, errlen, ENG_ERR_INVALID, "%s: unhandled field", key);
}

int
job_req_from_json(const json_t *body, struct job_req *r, int max_n, int max_tokens_cap,
		  char *err, size_t errlen)
{
	const char *key;
	json_t *v;
	int rc;

	if (!json_is_object(body))
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "body: must be a JSON object");
	if (max_n < 1 || max_tokens_cap < 1)
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "limits: max_n and max_tokens_cap must be >= 1");
	json_object_foreach((json_t *)body, key, v) {
		size_t f, n_fields = sizeof job_fields / sizeof job_fields[0];
		for (f = 0; f < n_fields; f++)
			if (strcmp(key, job_fields[f]) == 0)
				break;
		if (f == n_fields) {
			bool printable = utf8_valid(key, strlen(key));
			return eng_seterr(err, errlen, ENG_ERR_INVALID, "%.64s: unknown field",
					  printable ? key : "(a key that is not UTF-8)");
		}
		/* null = not given: the default stays. */
		if (json_is_null(v))
			continue;
		if ((rc = set_field((enum job_field)f, v, r, max_n, max_tokens_cap, err, errlen)))
			return rc;
	}
	if (!r->question && !r->messages)
		return eng_seterr(err, errlen, ENG_ERR_INVALID,
				  "question: missing (give \"question\" or \"messages\")");
	if (r->question && r->messages)
		return eng_seterr(err, errlen, ENG_ERR_INVALID,
				  "messages: give either \"question\" or \"messages\", not both");
	if (r->system && r->messages)
		return eng_seterr(err, errlen, ENG_ERR_INVALID,
				  "system: with \"messages\", put the system prompt in a system message");
	return 0;
}

/* ---- job_req_to_json --------------------------------------------------------- */

/* The shortest decimal that reads back as the same float (0.8f -> 0.8). */
static json_t *
float_json(float f)
{
	char buf[32];
	for (int prec = 6; prec <= 9; prec++) {
		snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
		if ((float)strtod(buf, NULL) == f)
			break;
	}
	return json_real(strtod(buf, NULL));
}

json_t *
job_req_to_json(const struct job_req *r)
{
	json_t *o = json_object();
	if (!o)
		return NULL;
	if ((r->messages ? json_object_set_new(o, "messages", json_deep_copy(r->messages))
			 : json_object_set_new(o, "question", json_string(r->question ? r->question : ""))) ||
	    json_object_set_new(o, "strategy", json_string(r->strategy)) ||
	    json_object_set_new(o, "n", json_integer(r->n)) ||
	    json_object_set_new(o, "temperature", float_json(r->sampling.temperature)) ||
	    json_object_set_new(o, "top_p", float_json(r->sampling.top_p)) ||
	    json_object_set_new(o, "top_k", json_integer(r->sampling.top_k)) ||
	    json_object_set_new(o, "min_p", float_json(r->sampling.min_p)) ||
	    json_object_set_new(o, "seed", json_integer((json_int_t)r->sampling.seed)) ||
	    json_object_set_new(o, "max_tokens", json_integer(r->max_tokens)) ||
	    (r->system && json_object_set_new(o, "system", json_string(r->system))) ||
	    (r->params && json_object_set_new(o, "params", json_deep_copy(r->params))) ||
	    (r->gold && json_object_set_new(o, "gold", json_string(r->gold)))) {
		json_decref(o);
		return NULL;
	}
	return o;
}

/* ---- ids --------------------------------------------------------------------- */

static int
random_bytes(unsigned char *buf, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t k = getrandom(buf + got, n - got, 0);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		got += (size_t)k;
	}
	if (got == n)
		return 0;
	/* getrandom missing (old kernel, seccomp): read the device itself. */
	int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	while (got < n) {
		ssize_t k = read(fd, buf + got, n - got);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		got += (size_t)k;
	}
	close(fd);
	return got == n ? 0 : -1;
}

void
job_new_id(char out[EV_JOB_ID_MAX])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char b[JOB_ID_HEX / 2];

	if (random_bytes(b, sizeof b)) {
		/* No entropy source at all: still unique within this process
		 * (time, pid and a counter through splitmix64), though not
		 * unpredictable. */
		static atomic_ullong counter;
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		uint64_t z = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
		z ^= (uint64_t)getpid() << 40;
		z += atomic_fetch_add(&counter, 1) * 0x9e3779b97f4a7c15ULL;
		for (size_t i = 0; i < sizeof b; i++) {
			z += 0x9e3779b97f4a7c15ULL;
			uint64_t x = z;
			x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
			x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
			b[i] = (unsigned char)(x ^ (x >> 31));
		}
	}
	out[0] = 'j';
	for (size_t i = 0; i < sizeof b; i++) {
		out[1 + 2 * i] = hex[b[i] >> 4];
		out[2 + 2 * i] = hex[b[i] & 15];
	}
	out[1 + JOB_ID_HEX] = '\0';
}

int
job_id_valid(const char *s)
{
	if (!s || s[0] != 'j')
		return 0;
	for (int i = 1; i <= JOB_ID_HEX; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return s[1 + JOB_ID_HEX] == '\0';
}
