/* answer.c - final-answer extraction, normalisation and equivalence for
 * reasoning traces and gold answers.  Pure string code; any thread. */
#include "answer.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- small string helpers ------------------------------------------------ */

/* A growable byte buffer; err set on allocation failure. */
struct buf {
	char *p;
	size_t n, cap;
	int err;
};

static void
buf_put(struct buf *b, const char *s, size_t n)
{
	if (b->err)
		return;
	if (b->n + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 64;
		while (cap < b->n + n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->err = 1;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = '\0';
}

/* The buffer's string (never NULL unless out of memory); the caller owns it. */
static char *
buf_take(struct buf *b)
{
	if (b->err) {
		free(b->p);
		return NULL;
	}
	if (!b->p)
		return strdup("");
	return b->p;
}

/* A malloc'd copy of s[0..n) with surrounding whitespace trimmed. */
static char *
dup_trim(const char *s, size_t n)
{
	while (n && isspace((unsigned char)*s))
		s++, n--;
	while (n && isspace((unsigned char)s[n - 1]))
		n--;
	char *r = malloc(n + 1);
	if (r) {
		memcpy(r, s, n);
		r[n] = '\0';
	}
	return r;
}

/* Last occurrence of needle in hay (case-sensitive), or NULL. */
static const char *
last_strstr(const char *hay, const char *needle)
{
	const char *last = NULL;
	for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
		last = p;
	return last;
}

/* Last occurrence of needle in hay ignoring ASCII case, or NULL. */
static const char *
last_strcasestr(const char *hay, const char *needle)
{
	const char *last = NULL;
	for (const char *p = strcasestr(hay, needle); p; p = strcasestr(p + 1, needle))
		last = p;
	return last;
}

/* p points at '{': the index just past the matching '}', or 0 if the braces
 * do not balance before the end of the string. */
static size_t
match_brace(const char *p)
{
	int depth = 0;
	for (size_t i = 0; p[i]; i++) {
		if (p[i] == '\\' && p[i + 1]) {
			i++;         /* \{ and \} are literal braces */
			continue;
		}
		if (p[i] == '{')
			depth++;
		else if (p[i] == '}' && --depth == 0)
			return i + 1;
	}
	return 0;
}

/* ---- extraction ------------------------------------------------------------ */

/* The content of the last balanced \boxed{...} / \fbox{...} (or "\boxed 5"). */
static char *
extract_boxed(const char *text)
{
	static const char *const cmds[] = { "\\boxed", "\\fbox" };
	const char *best = NULL;
	size_t best_len = 0;
	for (size_t c = 0; c < sizeof cmds / sizeof cmds[0]; c++) {
		size_t cl = strlen(cmds[c]);
		for (const char *p = strstr(text, cmds[c]); p; p = strstr(p + 1, cmds[c])) {
			const char *q = p + cl;
			const char *content;
			size_t len;
			if (*q == '{') {
				size_t end = match_brace(q);
				if (!end)
					continue;
				content = q + 1;
				len = end - 2;
			} else if (*q == ' ') {
				content = q + 1;
				len = strcspn(content, " $\n");
			} else {
				continue;
			}
			if (!best || content > best) {
				best = content;
				best_len = len;
			}
		}
	}
	return best ? dup_trim(best, best_len) : NULL;
}

/* The rest of the line after p, trimmed, without a final period; NULL if
 * that leaves nothing. */
static char *
rest_of_line(const char *p)
{
	size_t n = strcspn(p, "\n");
	while (n && isspace((unsigned char)p[n - 1]))
		n--;
	if (n && p[n - 1] == '.')
		n--;
	char *r = dup_trim(p, n);
	if (r && !*r) {
		free(r);
		r = NULL;
	}
	return r;
}

/* Scan one number at p (which starts with a digit): digits, thousands
 * groups ",ddd", a decimal part; or a simple fraction d/d.  Returns its
 * length. */
static size_t
number_len(const char *p)
{
	size_t i = 0;
	while (isdigit((unsigned char)p[i]))
		i++;
	while (p[i] == ',' && isdigit((unsigned char)p[i + 1]) && isdigit((unsigned char)p[i + 2]) &&
	       isdigit((unsigned char)p[i + 3]) && !isdigit((unsigned char)p[i + 4]))
		i += 4;
	if (p[i] == '.' && isdigit((unsigned char)p[i + 1])) {
		i++;
		while (isdigit((unsigned char)p[i]))
			i++;
	} else if (p[i] == '/' && isdigit((unsigned char)p[i + 1])) {
		i++;
		while (isdigit((unsigned char)p[i]))
			i++;
	}
	return i;
}

/* The last number in the text, with its sign. */
static char *
extract_last_number(const char *text)
{
	const char *best = NULL;
	size_t best_len = 0;
	for (const char *p = text; *p;) {
		if (isdigit((unsigned char)*p)) {
			size_t n = number_len(p);
			const char *start = p;
			if (p > text && p[-1] == '-' && (p - 1 == text || !isalnum((unsigned char)p[-2])))
				start = p - 1;
			best = start;
			best_len = (size_t)(p + n - start);
			p += n;
		} else {
			p++;
		}
	}
	return best ? dup_trim(best, best_len) : NULL;
}

char *
ans_extract(const char *text)
{
	char *r;
	const char *p;

	if (!text)
		return NULL;
	if ((r = extract_boxed(text)) && *r)
		return r;
	free(r);
	if ((p = last_strstr(text, "####")) && (r = rest_of_line(p + 4)))
		return r;
	/* "Answer:" and "answer is", whichever comes last. */
	const char *a = last_strcasestr(text, "answer:");
	const char *b = last_strcasestr(text, "answer is");
	if (a || b) {
		p = (a && (!b || a > b)) ? a + 7 : b + 9;
		while (*p == ':' || *p == ' ' || *p == '\t')
			p++;
		if ((r = rest_of_line(p)))
			return r;
	}
	return extract_last_number(text);
}

/* ---- normalisation ----------------------------------------------------------- */

/* 1 if s at i starts the LaTeX command cmd (a backslash word) not followed by
 * another letter. */
static int
at_cmd(const char *s, size_t i, const char *cmd)
{
	size_t n = strlen(cmd);
	return strncmp(s + i, cmd, n) == 0 && !isalpha((unsigned char)s[i + n]);
}

/* One argument of a command at s+i: a balanced {} group or a single
 * character.  Sets *arg and *arg_len to its content; returns the characters
 * consumed, 0 if none. */
static size_t
take_arg(const char *s, size_t i, const char **arg, size_t *arg_len)
{
	while (s[i] == ' ')
		i++;
	if (s[i] == '{') {
		size_t end = match_brace(s + i);
		if (!end)
			return 0;
		*arg = s + i + 1;
		*arg_len = end - 2;
		return end;
	}
	if (s[i] && s[i] != '}' && s[i] != '\\') {
		*arg = s + i;
		*arg_len = 1;
		return 1;
	}
	return 0;
}

/* The first pass: LaTeX wrappers and units out, spaces out. */
static char *
strip_latex(const char *s)
{
	static const char *const wrappers[] = { "\\text", "\\textbf", "\\textit", "\\mathrm",
						"\\mathbf", "\\mbox", "\\operatorname" };
	static const char *const dropped[] = { "\\left", "\\right", "\\displaystyle", "\\!", "\\,",
					       "\\;", "\\:", "\\ ", "\\%", "^\\circ", "^{\\circ}",
					       "\\circ", "\\$", "\xc2\xb0", "degrees", "%", "$", "~" };
	struct buf b = { 0 };
	size_t i = 0, n = strlen(s);

	while (i < n) {
		size_t skip = 0;
		for (size_t k = 0; k < sizeof dropped / sizeof dropped[0] && !skip; k++) {
			size_t dl = strlen(dropped[k]);
			if (strncmp(s + i, dropped[k], dl) == 0 &&
			    (!isalpha((unsigned char)dropped[k][dl - 1]) || !isalpha((unsigned char)s[i + dl])))
				skip = dl;
		}
		if (skip) {
			i += skip;
			continue;
		}
		if (isspace((unsigned char)s[i])) {
			i++;
			continue;
		}
		int wrapped = 0;
		for (size_t k = 0; k < sizeof wrappers / sizeof wrappers[0] && !wrapped; k++) {
			if (!at_cmd(s, i, wrappers[k]))
				continue;
			size_t wl = strlen(wrappers[k]);
			const char *arg;
			size_t alen, used = take_arg(s, i + wl, &arg, &alen);
			if (!used)
				continue;
			char *inner = dup_trim(arg, alen);
			char *sub = inner ? strip_latex(inner) : NULL;
			free(inner);
			if (!sub) {
				b.err = 1;
				break;
			}
			buf_put(&b, sub, strlen(sub));
			free(sub);
			i += wl + used;
			wrapped = 1;
		}
		if (b.err)
			break;
		if (wrapped)
			continue;
		/* \dfrac, \tfrac -> \frac; \frac ab and \sqrt2 get their braces */
		if (at_cmd(s, i, "\\dfrac") || at_cmd(s, i, "\\tfrac") || at_cmd(s, i, "\\frac")) {
			size_t cl = s[i + 1] == 'f' ? 5 : 6;
			const char *a1, *a2;
			size_t l1, l2, u1 = take_arg(s, i + cl, &a1, &l1), u2 = 0;
			if (u1)
				u2 = take_arg(s, i + cl + u1, &a2, &l2);
			if (u1 && u2) {
				char *x = dup_trim(a1, l1), *y = dup_trim(a2, l2);
				char *nx = x ? strip_latex(x) : NULL, *ny = y ? strip_latex(y) : NULL;
				if (nx && ny) {
					buf_put(&b, "\\frac{", 6);
					buf_put(&b, nx, strlen(nx));
					buf_put(&b, "}{", 2);
					buf_put(&b, ny, strlen(ny));
					buf_put(&b, "}", 1);
				} else {
					b.err = 1;
				}
				free(x), free(y), free(nx), free(ny);
				i += cl + u1 + u2;
				continue;
			}
		}
		if (at_cmd(s, i, "\\sqrt")) {
			const char *a1;
			size_t l1, u1 = take_arg(s, i + 5, &a1, &l1);
			if (u1 && s[i + 5] != '[') {
				char *x = dup_trim(a1, l1), *nx = x ? strip_latex(x) : NULL;
				if (nx) {
					buf_put(&b, "\\sqrt{", 6);
					buf_put(&b, nx, strlen(nx));
					buf_put(&b, "}", 1);
				} else {
					b.err = 1;
				}
				free(x), free(nx);
				i += 5 + u1;
				continue;
			}
		}
		buf_put(&b, s + i, 1);
		i++;
	}
	return buf_take(&b);
}

/* 1 if s (whole) is -?\d{1,3}(,\d{3})+(\.\d+)? */
static int
is_thousands(const char *s)
{
	size_t i = *s == '-' ? 1 : 0, d = 0;
	while (isdigit((unsigned char)s[i]))
		i++, d++;
	if (d < 1 || d > 3 || s[i] != ',')
		return 0;
	while (s[i] == ',') {
		for (int k = 1; k <= 3; k++)
			if (!isdigit((unsigned char)s[i + k]))
				return 0;
		i += 4;
	}
	if (isdigit((unsigned char)s[i]))
		return 0;
	if (s[i] == '.') {
		if (!isdigit((unsigned char)s[++i]))
			return 0;
		while (isdigit((unsigned char)s[i]))
			i++;
	}
	return s[i] == '\0';
}

/* 1 if s (whole) is -?\d+(\.\d*)? or -?\.\d+ */
static int
is_decimal(const char *s)
{
	size_t i = *s == '-' || *s == '+' ? 1 : 0, d = 0;
	while (isdigit((unsigned char)s[i]))
		i++, d++;
	if (s[i] == '.') {
		i++;
		while (isdigit((unsigned char)s[i]))
			i++, d++;
	}
	return d > 0 && s[i] == '\0';
}

/* Canonical decimal in place: no sign '+', no leading zeros, no trailing
 * fractional zeros, "-0" -> "0". */
static void
canon_decimal(char *s)
{
	char *w = s, *r = s;
	int neg = 0;
	if (*r == '-' || *r == '+')
		neg = *r++ == '-';
	while (*r == '0' && isdigit((unsigned char)r[1]))
		r++;
	if (neg)
		*w++ = '-';
	memmove(w, r, strlen(r) + 1);
	char *dot = strchr(w, '.');
	if (dot) {
		char *end = w + strlen(w);
		while (end > dot + 1 && end[-1] == '0')
			*--end = '\0';
		if (end == dot + 1)
			*dot = '\0';
		if (*w == '.') {          /* ".5" -> "0.5" */
			memmove(w + 1, w, strlen(w) + 1);
			*w = '0';
		}
	}
	if (!*w) {                        /* "-" after stripping cannot happen; keep safe */
		strcpy(s, "0");
		return;
	}
	if (strcmp(s, "-0") == 0)
		strcpy(s, "0");
}

char *
ans_normalize(const char *s)
{
	if (!s)
		return NULL;
	char *r = strip_latex(s);
	if (!r)
		return NULL;
	/* drop a final period and a leading single-letter assignment "x=" */
	size_t n = strlen(r);
	while (n && r[n - 1] == '.')
		r[--n] = '\0';
	if (n > 2 && isalpha((unsigned char)r[0]) && r[1] == '=' && !strchr(r + 2, '='))
		memmove(r, r + 2, n - 1);
	if (is_thousands(r)) {
		char *w = r;
		for (char *p = r; *p; p++)
			if (*p != ',')
				*w++ = *p;
		*w = '\0';
	}
	if (is_decimal(r))
		canon_decimal(r);
	return r;
}

/* ---- equivalence --------------------------------------------------------------- */

/* Parse a whole normalised string as a decimal; 1 on success. */
static int
parse_decimal(const char *s, size_t n, double *out)
{
	char tmp[64];
	if (n == 0 || n >= sizeof tmp)
		return 0;
	memcpy(tmp, s, n);
	tmp[n] = '\0';
	if (!is_decimal(tmp))
		return 0;
	*out = strtod(tmp, NULL);
	return 1;
}

/* The value of a normalised numeric answer: a decimal, a/b, or
 * \frac{a}{b}, each with an optional leading '-'.  1 on success. */
static int
numeric_value(const char *s, double *out)
{
	double sign = 1, x, y;
	if (*s == '-' && s[1] && !isdigit((unsigned char)s[1])) {
		sign = -1;
		s++;
	}
	if (strncmp(s, "\\frac{", 6) == 0) {
		const char *a = s + 6, *mid = strstr(a, "}{");
		if (!mid)
			return 0;
		const char *b = mid + 2;
		size_t bl = strlen(b);
		if (!bl || b[bl - 1] != '}')
			return 0;
		if (!parse_decimal(a, (size_t)(mid - a), &x) || !parse_decimal(b, bl - 1, &y) || y == 0)
			return 0;
		*out = sign * x / y;
		return 1;
	}
	const char *slash = strchr(s, '/');
	if (slash) {
		if (!parse_decimal(s, (size_t)(slash - s), &x) ||
		    !parse_decimal(slash + 1, strlen(slash + 1), &y) || y == 0)
			return 0;
		*out = sign * x / y;
		return 1;
	}
	if (!parse_decimal(s, strlen(s), &x))
		return 0;
	*out = sign * x;
	return 1;
}

int
ans_equal(const char *a, const char *b)
{
	int eq = 0;
	char *na = ans_normalize(a), *nb = ans_normalize(b);
	if (!na || !nb)
		goto out;
	if (*na && strcmp(na, nb) == 0) {
		eq = 1;
		goto out;
	}
	double x, y;
	if (numeric_value(na, &x) && numeric_value(nb, &y) && isfinite(x) && isfinite(y)) {
		double scale = fmax(1.0, fmax(fabs(x), fabs(y)));
		eq = fabs(x - y) <= 1e-9 * scale;
	}
out:
	free(na);
	free(nb);
	return eq;
}

/* ---- gold answers ------------------------------------------------------------------ */

char *
ans_gold(const json_t *problem)
{
	const json_t *a = json_is_object(problem) ? json_object_get(problem, "answer") : NULL;
	if (json_is_string(a)) {
		const char *s = json_string_value(a);
		const char *h = last_strstr(s, "####");
		if (h)
			return rest_of_line(h + 4);
		char *r = dup_trim(s, strlen(s));
		if (r && !*r) {
			free(r);
			r = NULL;
		}
		return r;
	}
	if (json_is_integer(a)) {
		char tmp[32];
		snprintf(tmp, sizeof tmp, "%lld", (long long)json_integer_value(a));
		return strdup(tmp);
	}
	if (json_is_real(a)) {
		double v = json_real_value(a);
		char tmp[64];
		if (!isfinite(v))
			return NULL;
		if (v == floor(v) && fabs(v) < 1e15)
			snprintf(tmp, sizeof tmp, "%.0f", v);
		else
			snprintf(tmp, sizeof tmp, "%.17g", v);
		return strdup(tmp);
	}
	return NULL;
}
