/* answer.h - final-answer extraction and equivalence (ans_): pull the answer
 * out of a reasoning trace, normalise it, compare two answers, and read the
 * gold answer of a problem line.  Pure functions; any thread. */
#ifndef BRAID_ANSWER_H
#define BRAID_ANSWER_H

#include <jansson.h>

/* The answer a trace commits to, malloc'd (caller frees), or NULL if none.
 * In order of preference: the content of the last \boxed{...} (or \fbox)
 * with balanced braces; else the number after the last "#### "; else the
 * rest of the last line holding "Answer:" or "answer is" (trailing period
 * dropped); else the last number in the text.  The result is trimmed but
 * not normalised. */
char *ans_extract(const char *text);

/* A canonical form for comparison, malloc'd (caller frees; NULL only when
 * out of memory or s is NULL): drops "$", spaces, \text{..}/\mathrm{..}
 * wrappers (keeping their content), \left/\right, \!, \, and friends, "^\circ"
 * / "°" / "degrees", "\%" / "%", a leading "x=" style single-variable
 * assignment, and a final period; \dfrac/\tfrac -> \frac; thousands commas
 * in numbers ("1,000" -> "1000"); numbers lose trailing zeros after the
 * point ("2.50" -> "2.5", "27.0" -> "27") and leading zeros ("025" -> "25"). */
char *ans_normalize(const char *s);

/* 1 if a and b name the same answer: equal after ans_normalize, or both
 * numeric (integers, decimals, a/b, \frac{a}{b}, \frac ab, with a sign) and
 * equal within a relative 1e-9.  0 otherwise, also when either is NULL. */
int ans_equal(const char *a, const char *b);

/* The gold answer of a problem (one parsed JSONL line), malloc'd, or NULL
 * when it has none: "answer" as a string (GSM8K's worked solution "...
 * #### 42" gives "42"), or as a number (AMC's 27.0 gives "27"). */
char *ans_gold(const json_t *problem);

#endif
