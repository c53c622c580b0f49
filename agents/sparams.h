/* sparams.h - strict parsing of a strategy's params object (sp_): unknown
 * keys rejected, typed getters with ranges, errors naming "params.KEY".
 * Pure functions; run by the strategies' init on the submitting thread. */
#ifndef BRAID_SPARAMS_H
#define BRAID_SPARAMS_H

#include <stddef.h>

#include <jansson.h>

/* Check params (NULL: none given) is an object whose keys are all in keys
 * (NULL-terminated).  0, or ENG_ERR_INVALID with err "params: must be an
 * object" or "params.KEY: unknown parameter of strategy \"STRATEGY\"". */
int sp_check(const json_t *params, const char *strategy, const char *const *keys, char *err,
	     size_t errlen);

/* The getters leave *out as it is when params (NULL allowed) lacks key, and
 * return 0; a present value of the wrong type or range gives
 * ENG_ERR_INVALID with err "params.KEY: must be ...". */

/* An integer in [lo, hi]. */
int sp_int(const json_t *params, const char *key, int lo, int hi, int *out, char *err,
	   size_t errlen);
/* A finite number in [lo, hi], or (lo, hi] when lo_open. */
int sp_num(const json_t *params, const char *key, double lo, double hi, int lo_open, double *out,
	   char *err, size_t errlen);
/* true or false, as 1 or 0. */
int sp_bool(const json_t *params, const char *key, int *out, char *err, size_t errlen);
/* One of the strings names (NULL-terminated, 2 or more), as its index. */
int sp_enum(const json_t *params, const char *key, const char *const *names, int *out, char *err,
	    size_t errlen);

#endif
