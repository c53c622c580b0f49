/* chat.c - renders chat messages as the Qwen3 (ChatML) and Llama-3 Jinja
 * templates do, without a template engine.  Pure functions; any thread. */
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "status.h"
#include "tok_impl.h"
#include "utf8.h"

struct sbuf {
	char *p;
	size_t n, cap;
	int err;
};

static void
put(struct sbuf *b, const char *s, size_t n)
{
	if (b->err)
		return;
	if (b->n + n + 1 > b->cap) {
		size_t nc = b->cap ? b->cap : 256;
		while (nc < b->n + n + 1)
			nc *= 2;
		char *np = realloc(b->p, nc);
		if (!np) {
			b->err = ENG_ERR_NOMEM;
			return;
		}
		b->p = np;
		b->cap = nc;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = 0;
}

static void
puts_(struct sbuf *b, const char *s)
{
	put(b, s, strlen(s));
}

enum chat_format
chat_detect(const tok *t)
{
	const char *tpl = t ? tok_chat_template(t) : NULL;
	if (tpl) {
		if (strstr(tpl, "<|im_start|>"))
			return CHAT_CHATML;
		if (strstr(tpl, "<|start_header_id|>"))
			return CHAT_LLAMA3;
		return CHAT_NONE;
	}
	if (t && tok_token_id(t, "<|im_start|>") >= 0 && tok_token_id(t, "<|im_end|>") >= 0)
		return CHAT_CHATML;
	if (t && tok_token_id(t, "<|start_header_id|>") >= 0 &&
	    tok_token_id(t, "<|end_header_id|>") >= 0 && tok_token_id(t, "<|eot_id|>") >= 0)
		return CHAT_LLAMA3;
	return CHAT_NONE;
}

const char *
chat_format_name(enum chat_format f)
{
	static const char *const names[] = { "none", "chatml", "llama3" };
	return (unsigned)f < sizeof names / sizeof names[0] ? names[f] : "unknown";
}

/* ---- Python string helpers, as the templates use them ---------------------------- */

struct str {
	const char *p;
	size_t n;
};

static struct str
mkstr(const char *s)
{
	return (struct str){ s ? s : "", s ? strlen(s) : 0 };
}

static int
starts_with(struct str s, const char *pre)
{
	size_t k = strlen(pre);
	return s.n >= k && memcmp(s.p, pre, k) == 0;
}

static int
ends_with(struct str s, const char *suf)
{
	size_t k = strlen(suf);
	return s.n >= k && memcmp(s.p + s.n - k, suf, k) == 0;
}

/* s.lstrip('\n') / s.rstrip('\n') */
static struct str
lstrip_nl(struct str s)
{
	while (s.n && s.p[0] == '\n') {
		s.p++;
		s.n--;
	}
	return s;
}

static struct str
rstrip_nl(struct str s)
{
	while (s.n && s.p[s.n - 1] == '\n')
		s.n--;
	return s;
}

static const char *
find(struct str s, const char *needle)
{
	return memmem(s.p, s.n, needle, strlen(needle));
}

/* The last occurrence of needle in s, or NULL. */
static const char *
find_last(struct str s, const char *needle)
{
	const char *last = NULL, *p;
	size_t k = strlen(needle);
	struct str rest = s;
	while ((p = find(rest, needle))) {
		last = p;
		rest.n -= (size_t)(p + k - rest.p);
		rest.p = p + k;
	}
	return last;
}

/* Python's str.isspace() for one code point. */
static int
py_space(uint32_t c)
{
	return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
	       c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
	       c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Jinja's trim filter: Python str.strip(). */
static struct str
py_strip(struct str s)
{
	const unsigned char *u = (const unsigned char *)s.p;
	size_t i = 0, end = s.n;
	uint32_t cp;
	size_t k;
	while (i < end && (k = utf8_next(u + i, end - i, &cp)) && py_space(cp))
		i += k;
	while (end > i) {
		size_t j;
		if (!utf8_prev(u, i, end, &j, &cp) || !py_space(cp))
			break;
		end = j;
	}
	return (struct str){ s.p + i, end - i };
}

static void
put_str(struct sbuf *b, struct str s)
{
	put(b, s.p, s.n);
}

/* ---- Qwen3 ChatML ------------------------------------------------------------------- */

static int
is_role(const struct chat_msg *m, const char *role)
{
	return m->role && strcmp(m->role, role) == 0;
}

static void
render_chatml(struct sbuf *b, const struct chat_msg *msgs, size_t n, int gen)
{
	if (n > 0 && is_role(&msgs[0], "system")) {
		puts_(b, "<|im_start|>system\n");
		puts_(b, msgs[0].content ? msgs[0].content : "");
		puts_(b, "<|im_end|>\n");
	}
	/* the last user turn that is not a tool response */
	size_t last_query = n ? n - 1 : 0;
	for (size_t i = n; i-- > 0;) {
		struct str c = mkstr(msgs[i].content);
		if (is_role(&msgs[i], "user") &&
		    !(starts_with(c, "<tool_response>") && ends_with(c, "</tool_response>"))) {
			last_query = i;
			break;
		}
	}
	for (size_t i = 0; i < n; i++) {
		const struct chat_msg *m = &msgs[i];
		struct str c = mkstr(m->content);
		if (is_role(m, "user") || (is_role(m, "system") && i > 0)) {
			puts_(b, "<|im_start|>");
			puts_(b, m->role);
			puts_(b, "\n");
			put_str(b, c);
			puts_(b, "<|im_end|>\n");
		} else if (is_role(m, "assistant")) {
			struct str content = c, reasoning = { "", 0 };
			const char *end_think = find(c, "</think>");
			if (end_think) {
				/* content: after the last </think>; reasoning: before the
				 * first, after the last <think> there */
				const char *last = find_last(c, "</think>") + strlen("</think>");
				content = lstrip_nl((struct str){ last, (size_t)(c.p + c.n - last) });
				struct str before = rstrip_nl((struct str){ c.p, (size_t)(end_think - c.p) });
				const char *open = find_last(before, "<think>");
				if (open) {
					open += strlen("<think>");
					before = (struct str){ open, (size_t)(before.p + before.n - open) };
				}
				reasoning = lstrip_nl(before);
			}
			puts_(b, "<|im_start|>assistant\n");
			if (i > last_query && (i + 1 == n || reasoning.n > 0)) {
				puts_(b, "<think>\n");
				put_str(b, rstrip_nl(lstrip_nl(reasoning)));
				puts_(b, "\n</think>\n\n");
				put_str(b, lstrip_nl(content));
			} else {
				put_str(b, content);
			}
			puts_(b, "<|im_end|>\n");
		} else if (is_role(m, "tool")) {
			if (i == 0 || !is_role(&msgs[i - 1], "tool"))
				puts_(b, "<|im_start|>user");
			puts_(b, "\n<tool_response>\n");
			put_str(b, c);
			puts_(b, "\n</tool_response>");
			if (i + 1 == n || !is_role(&msgs[i + 1], "tool"))
				puts_(b, "<|im_end|>\n");
		}
	}
	if (gen)
		puts_(b, "<|im_start|>assistant\n");
}

/* ---- Llama-3 ---------------------------------------------------------------------------- */

/* The Llama-3 template appends the assistant header after the turns
 * whether or not add_generation_prompt is set (its `{{ ... }}` stands
 * outside any `if`), so gen is not consulted. */
static void
render_llama3(struct sbuf *b, const struct chat_msg *msgs, size_t n, const char *bos)
{
	for (size_t i = 0; i < n; i++) {
		if (i == 0 && bos)
			puts_(b, bos);
		puts_(b, "<|start_header_id|>");
		puts_(b, msgs[i].role ? msgs[i].role : "");
		puts_(b, "<|end_header_id|>\n\n");
		put_str(b, py_strip(mkstr(msgs[i].content)));
		puts_(b, "<|eot_id|>");
	}
	puts_(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

int
chat_render(enum chat_format f, const struct chat_msg *msgs, size_t n, int add_generation_prompt,
	    const char *bos, char **out)
{
	struct sbuf b = { 0 };
	if (!out || (!msgs && n))
		return ENG_ERR_INVALID;
	*out = NULL;
	for (size_t i = 0; i < n; i++)
		if (!msgs[i].role)
			return ENG_ERR_INVALID;
	put(&b, "", 0);
	switch (f) {
	case CHAT_NONE:
		for (size_t i = 0; i < n; i++)
			puts_(&b, msgs[i].content ? msgs[i].content : "");
		break;
	case CHAT_CHATML:
		render_chatml(&b, msgs, n, add_generation_prompt);
		break;
	case CHAT_LLAMA3:
		render_llama3(&b, msgs, n, bos);
		break;
	default:
		free(b.p);
		return ENG_ERR_INVALID;
	}
	if (b.err) {
		free(b.p);
		return b.err;
	}
	*out = b.p;
	return 0;
}
