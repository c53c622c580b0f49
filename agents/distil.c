/* distil.c - the intermediate results finished traces agree on, as a
 * bounded "Known:" block, and the prompt that restates a question with it
 * (dst_).  Pure CPU code; engine thread (parathink.c and pdr.c). */
#include <stdlib.h>
#include <string.h>

#include "answer.h"
#include "distil.h"
#include "status.h"
#include "vote.h"

#define DST_NUM_MAX 18        /* digits of one number (fits a long long)  */
#define DST_FACTS_MAX 4096    /* distinct facts kept; a bound for garbage */

struct dst_fact {
	char lhs[2 * DST_NUM_MAX + 2];   /* "a*b"                              */
	char value[DST_NUM_MAX + 1];     /* "c"                                */
	int votes;                       /* traces holding it                   */
	int last_trace;                  /* the last trace that voted (dedup)   */
	int first;                       /* order first seen                    */
};

struct dst {
	struct dst_fact *f;   /* (n, cap) */
	int n, cap;
	int traces;
};

dst *
dst_new(void)
{
	return calloc(1, sizeof(dst));
}

void
dst_free(dst *d)
{
	if (!d)
		return;
	free(d->f);
	free(d);
}

int
dst_traces(const dst *d)
{
	return d->traces;
}

static int
is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static int
is_op(char c)
{
	return c == '+' || c == '-' || c == '*';
}

/* Digits at p (1..DST_NUM_MAX of them); their count, or 0. */
static size_t
digits(const char *p)
{
	size_t n = 0;
	while (is_digit(p[n]))
		n++;
	return n <= DST_NUM_MAX ? n : 0;
}

/* Where a chain segment ends: at ",", a newline, "<", " = " or the end. */
static const char *
segment_end(const char *p)
{
	while (*p && *p != ',' && *p != '\n' && *p != '<' && strncmp(p, " = ", 3) != 0)
		p++;
	return p;
}

/* A step "a OP b = ... = c" starting at p: fills lhs and value and returns
 * the end of the chain, or NULL when p holds no step. */
static const char *
parse_step(const char *p, char lhs[2 * DST_NUM_MAX + 2], char value[DST_NUM_MAX + 1])
{
	size_t na = digits(p);
	if (!na || !is_op(p[na]))
		return NULL;
	size_t nb = digits(p + na + 1);
	if (!nb || strncmp(p + na + 1 + nb, " = ", 3) != 0)
		return NULL;
	memcpy(lhs, p, na + 1 + nb);
	lhs[na + 1 + nb] = '\0';
	const char *q = p + na + 1 + nb, *last = NULL;
	while (strncmp(q, " = ", 3) == 0) {
		last = q + 3;
		q = segment_end(last);
	}
	/* the last segment: an integer, then nothing or " (known)" and such */
	size_t nc = digits(last);
	if (!nc || (last + nc != q && last[nc] != ' '))
		return NULL;
	memcpy(value, last, nc);
	value[nc] = '\0';
	return q;
}

static int
vote(dst *d, const char *lhs, const char *value)
{
	for (int i = 0; i < d->n; i++) {
		struct dst_fact *f = &d->f[i];
		if (strcmp(f->lhs, lhs) == 0 && strcmp(f->value, value) == 0) {
			if (f->last_trace != d->traces) {
				f->last_trace = d->traces;
				f->votes++;
			}
			return 0;
		}
	}
	if (d->n == DST_FACTS_MAX)
		return 0;     /* beyond any real trace: ignore the rest */
	if (d->n == d->cap) {
		int cap = d->cap ? 2 * d->cap : 32;
		struct dst_fact *nf = realloc(d->f, (size_t)cap * sizeof *nf);
		if (!nf)
			return ENG_ERR_NOMEM;
		d->f = nf;
		d->cap = cap;
	}
	struct dst_fact *f = &d->f[d->n];
	strcpy(f->lhs, lhs);     /* (sizes checked by parse_step) */
	strcpy(f->value, value);
	f->votes = 1;
	f->last_trace = d->traces;
	f->first = d->n++;
	return 0;
}

int
dst_add_trace(dst *d, const char *text)
{
	d->traces++;
	if (!text)
		return 0;
	for (const char *p = text; *p;) {
		char lhs[2 * DST_NUM_MAX + 2], value[DST_NUM_MAX + 1];
		/* a step starts a line, or follows a space, ":" or a tag */
		int start = p == text || p[-1] == '\n' || p[-1] == ' ' || p[-1] == ':' || p[-1] == '>';
		const char *end = start && is_digit(*p) ? parse_step(p, lhs, value) : NULL;
		if (!end) {
			p++;
			continue;
		}
		int rc = vote(d, lhs, value);
		if (rc < 0)
			return rc;
		p = end;
	}
	return 0;
}

static int
is_product(const struct dst_fact *f)
{
	return strchr(f->lhs, '*') != NULL;
}

/* qsort order: more votes, then products, then first seen. */
static int
fact_cmp(const void *a, const void *b)
{
	const struct dst_fact *x = *(const struct dst_fact *const *)a;
	const struct dst_fact *y = *(const struct dst_fact *const *)b;
	if (x->votes != y->votes)
		return y->votes - x->votes;
	if (is_product(x) != is_product(y))
		return is_product(y) - is_product(x);
	return x->first - y->first;
}

/* 1 if f is its left-hand side's clear winner with a strict majority. */
static int
agreed(const dst *d, const struct dst_fact *f)
{
	if (f->votes * 2 <= d->traces)
		return 0;
	for (int i = 0; i < d->n; i++) {
		const struct dst_fact *g = &d->f[i];
		if (g != f && strcmp(g->lhs, f->lhs) == 0 && g->votes >= f->votes)
			return 0;
	}
	return 1;
}

int
dst_workspace(const dst *d, size_t cap_bytes, char **block, json_t **facts)
{
	const struct dst_fact **order = NULL;
	char *out = NULL;
	json_t *arr = NULL;
	int rc = ENG_ERR_NOMEM, n = 0;

	if (!(out = malloc(cap_bytes + 1)) || (facts && !(arr = json_array())))
		goto fail;
	if (d->n && !(order = malloc((size_t)d->n * sizeof *order)))
		goto fail;
	for (int i = 0; i < d->n; i++)
		if (agreed(d, &d->f[i]))
			order[n++] = &d->f[i];
	if (n > 1)
		qsort(order, (size_t)n, sizeof *order, fact_cmp);
	size_t len = 0;
	out[0] = '\0';
	for (int i = 0; i < n; i++) {
		char line[sizeof order[i]->lhs + sizeof order[i]->value + 16];
		size_t m = (size_t)snprintf(line, sizeof line, "Known: %s=%s\n", order[i]->lhs,
					    order[i]->value);
		if (len + m > cap_bytes)
			continue;    /* a shorter line further on may still fit */
		memcpy(out + len, line, m + 1);
		len += m;
		if (arr) {
			line[m - 1] = '\0';
			if (json_array_append_new(arr, json_pack("{s:s, s:i}", "fact", line + 7,
								 "votes", order[i]->votes)))
				goto fail;
		}
	}
	*block = out;
	out = NULL;
	if (facts) {
		*facts = arr;
		arr = NULL;
	}
	rc = 0;
fail:
	free(order);
	free(out);
	json_decref(arr);
	return rc;
}

/* After optional "Known: ..." lines, the "Compute " line of q, or NULL. */
static const char *
compute_line(const char *q)
{
	while (strncmp(q, "Known: ", 7) == 0) {
		const char *nl = strchr(q, '\n');
		if (!nl)
			return NULL;
		q = nl + 1;
	}
	if (strncmp(q, "Parallel: ", 10) == 0)
		q += 10;
	return strncmp(q, "Compute ", 8) == 0 ? q : NULL;
}

int
dst_is_arith(const char *q)
{
	const char *c = q ? compute_line(q) : NULL;
	if (!c)
		return 0;
	int any = 0;
	for (c += 8; *c && *c != '\n'; c++) {
		if (!is_digit(*c) && !is_op(*c) && *c != '(' && *c != ')' && *c != ' ')
			return 0;
		any |= is_digit(*c);
	}
	while (*c == '\n')
		c++;
	return any && *c == '\0';
}

char *
dst_known_prompt(const char *q, const char *block)
{
	size_t lq = strlen(q), lb = strlen(block);
	char *out = malloc(lq + lb + 2), *w = out;
	if (!out)
		return NULL;
	if (!dst_is_arith(q)) {
		memcpy(w, block, lb);
		memcpy(w + lb, q, lq + 1);
		return out;
	}
	const char *c = compute_line(q);
	/* q's own Known lines (they sit before any "Parallel: " prefix) */
	const char *own_end = q;
	while (strncmp(own_end, "Known: ", 7) == 0)
		own_end = strchr(own_end, '\n') + 1;
	size_t own = (size_t)(own_end - q);
	memcpy(w, q, own);
	w += own;
	for (const char *l = block; *l;) {
		const char *nl = strchr(l, '\n');
		size_t m = nl ? (size_t)(nl - l) + 1 : strlen(l);
		/* skip a line q already holds */
		int dup = 0;
		for (const char *o = q; o < own_end; o = strchr(o, '\n') + 1)
			if (strncmp(o, l, m) == 0 && (m == 0 || l[m - 1] == '\n' || o[m] == '\n'))
				dup = 1;
		if (!dup) {
			memcpy(w, l, m);
			w += m;
			if (!nl)
				*w++ = '\n';
		}
		l += m;
	}
	strcpy(w, c);
	return out;
}

const char *
dst_request_question(const char *question, const json_t *messages)
{
	if (question)
		return question;
	const char *last = NULL;
	size_t i;
	json_t *m;
	json_array_foreach(messages, i, m) {
		const char *role = json_string_value(json_object_get(m, "role"));
		const char *content = json_string_value(json_object_get(m, "content"));
		if (role && content && strcmp(role, "user") == 0)
			last = content;
	}
	return last;
}

char *
dst_tail(const char *s, size_t max_bytes)
{
	size_t n = strlen(s);
	const char *p = n > max_bytes ? s + n - max_bytes : s;
	while (((unsigned char)*p & 0xC0) == 0x80)
		p++;
	return strdup(p);
}

int
dst_vote(char *const *answers, const int *order, int n, json_t **votes, int *best)
{
	vote_tally *v = vote_new(n);
	if (!v)
		return ENG_ERR_NOMEM;
	for (int k = 1; k <= n; k++)
		for (int i = 0; i < n; i++)
			if (order[i] == k) {
				vote_add(v, answers[i], 1.0, i);
				break;
			}
	int rc = vote_result(v, 0, votes, best, NULL);
	vote_free(v);
	return rc;
}
