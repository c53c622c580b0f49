/* sparams.c - strict parsing of a strategy's params object (see sparams.h).
 * Pure functions; the submitting thread runs them. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "sparams.h"
#include "status.h"

int
sp_check(const json_t *params, const char *strategy, const char *const *keys, char *err,
	 size_t errlen)
{
	const char *key;
	json_t *v;
	if (!params)
		return 0;
	if (!json_is_object(params))
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "params: must be an object");
	json_object_foreach((json_t *)params, key, v) {
		int k;
		for (k = 0; keys[k] && strcmp(key, keys[k]) != 0; k++)
			;
		if (!keys[k])
			return eng_seterr(err, errlen, ENG_ERR_INVALID,
					  "params.%.64s: unknown parameter of strategy \"%s\"", key,
					  strategy);
	}
	return 0;
}

int
sp_int(const json_t *params, const char *key, int lo, int hi, int *out, char *err, size_t errlen)
{
	json_t *v = params ? json_object_get(params, key) : NULL;
	if (!v)
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
		return eng_seterr(err, errlen, ENG_ERR_INVALID,
				  "params.%s: must be an integer in [%d, %d]", key, lo, hi);
	*out = (int)json_integer_value(v);
	return 0;
}

int
sp_num(const json_t *params, const char *key, double lo, double hi, int lo_open, double *out,
       char *err, size_t errlen)
{
	json_t *v = params ? json_object_get(params, key) : NULL;
	if (!v)
		return 0;
	double x = json_is_number(v) ? json_number_value(v) : NAN;
	if (!isfinite(x) || x > hi || (lo_open ? x <= lo : x < lo))
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "params.%s: must be a number in %s%g, %g]",
				  key, lo_open ? "(" : "[", lo, hi);
	*out = x;
	return 0;
}

int
sp_bool(const json_t *params, const char *key, int *out, char *err, size_t errlen)
{
	json_t *v = params ? json_object_get(params, key) : NULL;
	if (!v)
		return 0;
	if (!json_is_boolean(v))
		return eng_seterr(err, errlen, ENG_ERR_INVALID, "params.%s: must be true or false", key);
	*out = json_is_true(v);
	return 0;
}

int
sp_enum(const json_t *params, const char *key, const char *const *names, int *out, char *err,
	size_t errlen)
{
	json_t *v = params ? json_object_get(params, key) : NULL;
	if (!v)
		return 0;
	const char *s = json_string_value(v);
	for (int k = 0; s && names[k]; k++)
		if (strcmp(s, names[k]) == 0) {
			*out = k;
			return 0;
		}
	/* "params.KEY: must be "a", "b" or "c"" */
	char list[256];
	size_t len = 0;
	list[0] = '\0';
	for (int k = 0; names[k] && len < sizeof list; k++) {
		const char *sep = k == 0 ? "" : names[k + 1] ? ", " : " or ";
		int w = snprintf(list + len, sizeof list - len, "%s\"%s\"", sep, names[k]);
		if (w < 0)
			break;
		len += (size_t)w;
	}
	return eng_seterr(err, errlen, ENG_ERR_INVALID, "params.%s: must be %s", key, list);
}
