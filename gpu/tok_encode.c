/* tok_encode.c - text -> ids as HF tokenizers does it: added tokens found in
 * the raw text, NFC, Split/ByteLevel pre-tokenization, then BPE merges by
 * rank.  Runs on any thread; all scratch lives in one call's struct enc. */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "status.h"
#include "tok_impl.h"
#include "utf8.h"

struct span {
	size_t start, end;
	int32_t added;          /* index into tok.added, -1 for plain text */
};

struct spans {
	struct span *v;
	size_t n, cap;
};

struct piece {
	size_t off, len;        /* into enc.buf */
};

struct pieces {
	struct piece *v;
	size_t n, cap;
};

struct split {
	size_t start, end;
	int flag;               /* is a match (then: remove) */
};

struct sym {
	int32_t id, prev, next, len;
};

struct hent {
	int32_t rank, pos, merged;
};

struct enc {
	const struct tok *t;
	char *buf;              /* (blen) the text being pre-tokenized */
	size_t blen, bcap;
	struct pieces pa, pb;
	struct split *sp;       /* (spcap) */
	size_t spcap;
	pcre2_match_data *md;
	pcre2_match_context *mctx;
	pcre2_jit_stack *jstack;
	struct sym *syms;       /* (symcap) */
	size_t symcap;
	struct hent *heap;      /* (heapcap) */
	size_t heapcap;
	char *bl;               /* (blcap) byte-level form of a piece */
	size_t blcap;
	int32_t *ids;           /* (n_ids) the output */
	size_t n_ids, ids_cap;
};

#define GROW(ptr, cap, need) \
	((need) <= (cap) ? 0 : grow((void **)&(ptr), &(cap), (need), sizeof *(ptr)))

static int
grow(void **p, size_t *cap, size_t need, size_t elem)
{
	size_t nc = *cap ? *cap : 16;
	while (nc < need)
		nc *= 2;
	void *np = realloc(*p, nc * elem);
	if (!np)
		return ENG_ERR_NOMEM;
	*p = np;
	*cap = nc;
	return 0;
}

static int
push_id(struct enc *e, int32_t id)
{
	if (GROW(e->ids, e->ids_cap, e->n_ids + 1))
		return ENG_ERR_NOMEM;
	e->ids[e->n_ids++] = id;
	return 0;
}

/* ---- added tokens ----------------------------------------------------------- */

/* Rust's char::is_whitespace (the White_Space property). */
static int
is_ws(uint32_t c)
{
	return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
	       (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
	       c == 0x205f || c == 0x3000;
}

static int
is_word(uint32_t c)
{
	if (c == '_')
		return 1;
	switch (utf8proc_category((utf8proc_int32_t)c)) {
	case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
	case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_ND:
	case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
		return 1;
	default:
		return 0;
	}
}

/* The code point that ends at s[end) (valid UTF-8 assumed). */
static uint32_t
cp_before(const char *s, size_t end, size_t *start)
{
	uint32_t cp = 0;
	utf8_prev((const unsigned char *)s, 0, end, start, &cp);
	return cp;
}

static int
push_span(struct spans *sp, size_t start, size_t end, int32_t added)
{
	if (GROW(sp->v, sp->cap, sp->n + 1))
		return ENG_ERR_NOMEM;
	sp->v[sp->n++] = (struct span){ start, end, added };
	return 0;
}

/* Split s into plain spans and added-token spans: leftmost-longest matches
 * over the trie (HF's aho-corasick LeftmostLongest), then single_word,
 * lstrip and rstrip as HF's AddedVocabulary applies them.  With
 * skip_special, a special token's match stays plain text (and nothing
 * inside it is matched), as HF's split_special_tokens does. */
static int
split_added(const struct tok *t, const struct tok_trie *tr, const char *s, size_t n, int skip_special,
	    struct spans *out)
{
	size_t pos = 0, plain = 0;
	out->n = 0;
	while (pos < n) {
		int32_t node = tr->first[(unsigned char)s[pos]], best = -1;
		size_t best_end = 0, i = pos;
		while (node >= 0) {
			i++;
			if (tr->nodes[node].added >= 0) {
				best = tr->nodes[node].added;
				best_end = i;
			}
			if (i == n)
				break;
			int32_t ch = tr->nodes[node].child;
			while (ch >= 0 && tr->nodes[ch].byte != (unsigned char)s[i])
				ch = tr->nodes[ch].sibling;
			node = ch;
		}
		if (best < 0) {
			pos++;
			continue;
		}
		const struct tok_added *a = &t->added[best];
		size_t start = pos, stop = best_end;
		pos = best_end;
		if (start < plain)   /* swallowed by the previous token's rstrip */
			continue;
		if (skip_special && a->special)
			continue;
		if (a->single_word) {
			size_t k;
			uint32_t cp;
			int before = start > 0 && is_word(cp_before(s, start, &k));
			int after = stop < n && utf8_next((const unsigned char *)s + stop,
							   n - stop, &cp) && is_word(cp);
			if (before || after)
				continue;
		}
		if (a->lstrip) {
			while (start > plain) {
				size_t k;
				if (!is_ws(cp_before(s, start, &k)))
					break;
				start = k;
			}
		}
		if (a->rstrip) {
			uint32_t cp;
			size_t k;
			while (stop < n && (k = utf8_next((const unsigned char *)s + stop, n - stop,
							   &cp)) && is_ws(cp))
				stop += k;
			pos = stop;
		}
		if (plain < start && push_span(out, plain, start, -1))
			return ENG_ERR_NOMEM;
		if (push_span(out, start, stop, best))
			return ENG_ERR_NOMEM;
		plain = stop;
	}
	if (plain < n && push_span(out, plain, n, -1))
		return ENG_ERR_NOMEM;
	return 0;
}

/* ---- pre-tokenization --------------------------------------------------------- */

static int
push_piece(struct pieces *p, size_t off, size_t len)
{
	if (len == 0)
		return 0;   /* HF drops empty splits */
	if (GROW(p->v, p->cap, p->n + 1))
		return ENG_ERR_NOMEM;
	p->v[p->n++] = (struct piece){ off, len };
	return 0;
}

static int
add_split(struct enc *e, size_t *n, size_t start, size_t end, int flag)
{
	if (GROW(e->sp, e->spcap, *n + 1))
		return ENG_ERR_NOMEM;
	e->sp[(*n)++] = (struct split){ start, end, flag };
	return 0;
}

/* All matches of re in buf[off..off+len), with the gaps between them, like
 * HF's Pattern::find_matches; an empty match right after the previous match
 * is skipped (Rust regex find_iter). */
static int
find_matches(struct enc *e, const pcre2_code *re, size_t off, size_t len, size_t *n)
{
	const unsigned char *s = (const unsigned char *)e->buf + off;
	size_t pos = 0, prev = 0, last_end = (size_t)-1;
	*n = 0;
	if (!re) {
		return add_split(e, n, 0, len, 0);
	}
	while (pos <= len) {
		int r = pcre2_match(re, s, len, pos, PCRE2_NO_UTF_CHECK, e->md, e->mctx);
		if (r == PCRE2_ERROR_NOMATCH)
			break;
		if (r < 0)
			return r == PCRE2_ERROR_NOMEMORY ? ENG_ERR_NOMEM : ENG_ERR_RANGE;
		PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
		size_t ms = ov[0], me = ov[1];
		if (ms == me) {
			size_t step = 1;
			while (ms + step < len && (s[ms + step] & 0xc0) == 0x80)
				step++;
			if (ms == last_end) {
				if (ms >= len)
					break;
				pos = ms + step;
				continue;
			}
		}
		if (prev != ms && add_split(e, n, prev, ms, 0))
			return ENG_ERR_NOMEM;
		if (add_split(e, n, ms, me, 1))
			return ENG_ERR_NOMEM;
		prev = last_end = me;
		if (ms == me) {
			if (ms >= len)
				break;
			size_t step = 1;
			while (ms + step < len && (s[ms + step] & 0xc0) == 0x80)
				step++;
			pos = ms + step;
		} else {
			pos = me;
		}
	}
	if (prev != len && add_split(e, n, prev, len, 0))
		return ENG_ERR_NOMEM;
	return 0;
}

/* One Split step over one piece, appending to out (HF NormalizedString::split). */
static int
split_piece(struct enc *e, const pcre2_code *re, enum tok_split_behavior beh, int invert,
	    size_t off, size_t len, struct pieces *out)
{
	size_t n, m = 0;
	int rc = find_matches(e, re, off, len, &n);
	if (rc)
		return rc;
	struct split *sp = e->sp;
	if (invert)
		for (size_t i = 0; i < n; i++)
			sp[i].flag = !sp[i].flag;
	/* fold into (offsets, remove) in place: m <= i always */
	int prev_match = 0;
	switch (beh) {
	case TOK_ISOLATED:
		for (size_t i = 0; i < n; i++)
			sp[i].flag = 0;
		m = n;
		break;
	case TOK_REMOVED:
		m = n;
		break;
	case TOK_CONTIGUOUS:
		for (size_t i = 0; i < n; i++) {
			int is_match = sp[i].flag;
			if (is_match == prev_match && m > 0)
				sp[m - 1].end = sp[i].end;
			else
				sp[m++] = (struct split){ sp[i].start, sp[i].end, 0 };
			prev_match = is_match;
		}
		break;
	case TOK_MERGED_PREV:
		for (size_t i = 0; i < n; i++) {
			int is_match = sp[i].flag;
			if (is_match && !prev_match && m > 0)
				sp[m - 1].end = sp[i].end;
			else
				sp[m++] = (struct split){ sp[i].start, sp[i].end, 0 };
			prev_match = is_match;
		}
		break;
	case TOK_MERGED_NEXT:
		/* HF folds from the back; build reversed at the top, then flip */
		for (size_t i = n; i-- > 0;) {
			int is_match = sp[i].flag;
			if (is_match && !prev_match && m > 0) {
				sp[n - m].start = sp[i].start;
			} else {
				m++;
				sp[n - m] = (struct split){ sp[i].start, sp[i].end, 0 };
			}
			prev_match = is_match;
		}
		memmove(sp, sp + (n - m), m * sizeof *sp);
		break;
	}
	for (size_t i = 0; i < m; i++)
		if (!sp[i].flag && push_piece(out, off + sp[i].start, sp[i].end - sp[i].start))
			return ENG_ERR_NOMEM;
	return 0;
}

/* ByteLevel over one piece: the prefix space, then the GPT-2 split. */
static int
bytelevel_piece(struct enc *e, const struct tok_pretok *st, size_t off, size_t len,
		struct pieces *out)
{
	if (st->add_prefix_space && e->buf[off] != ' ') {
		if (GROW(e->buf, e->bcap, e->blen + len + 1))
			return ENG_ERR_NOMEM;
		e->buf[e->blen] = ' ';
		memcpy(e->buf + e->blen + 1, e->buf + off, len);
		off = e->blen;
		len += 1;
		e->blen += len;
	}
	if (!st->re)
		return push_piece(out, off, len);
	return split_piece(e, st->re, TOK_ISOLATED, 0, off, len, out);
}

static int
pretokenize(struct enc *e, const char *s, size_t n)
{
	e->blen = 0;
	if (GROW(e->buf, e->bcap, n))
		return ENG_ERR_NOMEM;
	memcpy(e->buf, s, n);
	e->blen = n;
	e->pa.n = 0;
	if (push_piece(&e->pa, 0, n))
		return ENG_ERR_NOMEM;
	for (size_t k = 0; k < e->t->n_pretok; k++) {
		const struct tok_pretok *st = &e->t->pretok[k];
		e->pb.n = 0;
		for (size_t i = 0; i < e->pa.n; i++) {
			struct piece p = e->pa.v[i];
			int rc = st->type == TOK_PT_SPLIT
					 ? split_piece(e, st->re, st->behavior, st->invert, p.off,
						       p.len, &e->pb)
					 : bytelevel_piece(e, st, p.off, p.len, &e->pb);
			if (rc)
				return rc;
		}
		struct pieces tmp = e->pa;
		e->pa = e->pb;
		e->pb = tmp;
	}
	return 0;
}

/* ---- BPE ---------------------------------------------------------------------------- */

static int
hent_less(const struct hent *a, const struct hent *b)
{
	return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void
heap_push(struct hent *h, size_t *n, struct hent x)
{
	size_t i = (*n)++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!hent_less(&x, &h[p]))
			break;
		h[i] = h[p];
		i = p;
	}
	h[i] = x;
}

static struct hent
heap_pop(struct hent *h, size_t *n)
{
	struct hent top = h[0], x = h[--(*n)];
	size_t i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= *n)
			break;
		if (c + 1 < *n && hent_less(&h[c + 1], &h[c]))
			c++;
		if (!hent_less(&h[c], &x))
			break;
		h[i] = h[c];
		i = c;
	}
	if (*n > 0)
		h[i] = x;
	return top;
}

/* Queue the pair starting at symbol pos, if it is a merge. */
static void
queue_pair(struct enc *e, size_t *hn, int32_t pos)
{
	struct sym *sy = e->syms;
	int32_t nx = sy[pos].next, rank, merged;
	if (nx < 0)
		return;
	if (tok_merge_get(&e->t->merges, sy[pos].id, sy[nx].id, &rank, &merged) == 0)
		heap_push(e->heap, hn, (struct hent){ rank, pos, merged });
}

/* BPE of one pre-token (raw bytes; the byte-level alphabet is applied
 * through byte_id).  Follows HF Word::merge_all: lowest rank first, then
 * leftmost; a queued pair is used only if it still merges to the same id. */
static int
bpe_piece(struct enc *e, const unsigned char *s, size_t n)
{
	const struct tok *t = e->t;
	if (t->ignore_merges) {
		if (GROW(e->bl, e->blcap, n * 2))
			return ENG_ERR_NOMEM;
		size_t k = 0;
		for (size_t i = 0; i < n; i++)
			k += utf8_put(tok_byte_to_cp(s[i]), e->bl + k);
		int32_t id = tok_strmap_get(&t->vocab, e->bl, k);
		if (id >= 0)
			return push_id(e, id);
	}
	if (GROW(e->syms, e->symcap, n) || GROW(e->heap, e->heapcap, 2 * n + 1))
		return ENG_ERR_NOMEM;
	struct sym *sy = e->syms;
	int32_t ns = 0;
	for (size_t i = 0; i < n; i++) {
		int32_t id = t->byte_id[s[i]];
		if (id < 0) {
			if (t->unk_id < 0)
				continue;   /* HF drops a char with no id and no unk */
			if (t->fuse_unk && ns > 0 && sy[ns - 1].id == t->unk_id) {
				sy[ns - 1].len++;
				continue;
			}
			id = t->unk_id;
		}
		sy[ns] = (struct sym){ id, ns - 1, ns + 1, 1 };
		ns++;
	}
	if (ns == 0)
		return 0;
	sy[ns - 1].next = -1;
	size_t hn = 0;
	for (int32_t i = 0; i + 1 < ns; i++)
		queue_pair(e, &hn, i);
	while (hn > 0) {
		struct hent top = heap_pop(e->heap, &hn);
		struct sym *cur = &sy[top.pos];
		if (cur->len == 0 || cur->next < 0)
			continue;
		int32_t nx = cur->next, rank, merged;
		if (tok_merge_get(&t->merges, cur->id, sy[nx].id, &rank, &merged) != 0 ||
		    merged != top.merged)
			continue;
		cur->id = top.merged;
		cur->len += sy[nx].len;
		cur->next = sy[nx].next;
		sy[nx].len = 0;
		if (cur->next >= 0)
			sy[cur->next].prev = top.pos;
		/* the heap never holds more than one entry per live pair plus the
		 * stale ones popped so far, but keep room: at most 2 pushes here */
		if (GROW(e->heap, e->heapcap, hn + 2))
			return ENG_ERR_NOMEM;
		if (cur->prev >= 0)
			queue_pair(e, &hn, cur->prev);
		queue_pair(e, &hn, top.pos);
	}
	for (int32_t i = 0; i >= 0; i = sy[i].next)
		if (push_id(e, sy[i].id))
			return ENG_ERR_NOMEM;
	return 0;
}

/* Pre-tokenize and BPE one stretch of normalized plain text. */
static int
encode_plain(struct enc *e, const char *s, size_t n)
{
	if (n == 0)
		return 0;
	int rc = pretokenize(e, s, n);
	for (size_t i = 0; !rc && i < e->pa.n; i++)
		rc = bpe_piece(e, (const unsigned char *)e->buf + e->pa.v[i].off, e->pa.v[i].len);
	return rc;
}

/* ---- NFC -------------------------------------------------------------------------- */

/* Code points that HF tokenizers' NFC tables (unicode-normalization-
 * alignments, an older Unicode) do not know, while newer Unicode gives them
 * a combining class or a composition: HF leaves them as inert starters.
 * Found by probing tokenizers 0.23.2's NFC against Unicode 15 on every code
 * point with a nonzero combining class or a canonical decomposition. */
static const uint32_t nfc_inert[][2] = {
	{ 0x07fd, 0x07fd }, { 0x0898, 0x089f }, { 0x08ca, 0x08d3 }, { 0x09fe, 0x09fe },
	{ 0x0c3c, 0x0c3c }, { 0x0d3b, 0x0d3c }, { 0x0eba, 0x0eba }, { 0x1715, 0x1715 },
	{ 0x1abf, 0x1ace }, { 0x1df6, 0x1dfa }, { 0xa82c, 0xa82c }, { 0x10d24, 0x10d27 },
	{ 0x10eab, 0x10eac }, { 0x10efd, 0x10eff }, { 0x10f46, 0x10f50 }, { 0x10f82, 0x10f85 },
	{ 0x11070, 0x11070 }, { 0x1133b, 0x1133b }, { 0x1145e, 0x1145e }, { 0x11839, 0x1183a },
	{ 0x11930, 0x11930 }, { 0x11935, 0x11935 }, { 0x1193d, 0x1193e }, { 0x11943, 0x11943 },
	{ 0x119e0, 0x119e0 }, { 0x11a34, 0x11a34 }, { 0x11a47, 0x11a47 }, { 0x11a99, 0x11a99 },
	{ 0x11d42, 0x11d42 }, { 0x11d44, 0x11d45 }, { 0x11d97, 0x11d97 }, { 0x11f41, 0x11f42 },
	{ 0x16ff0, 0x16ff1 }, { 0x1e08f, 0x1e08f }, { 0x1e130, 0x1e136 }, { 0x1e2ae, 0x1e2ae },
	{ 0x1e2ec, 0x1e2ef }, { 0x1e4ec, 0x1e4ef },
};

static int
nfc_is_inert(uint32_t cp)
{
	size_t lo = 0, hi = sizeof nfc_inert / sizeof nfc_inert[0];
	if (cp < nfc_inert[0][0])
		return 0;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (cp < nfc_inert[mid][0])
			hi = mid;
		else if (cp > nfc_inert[mid][1])
			lo = mid + 1;
		else
			return 1;
	}
	return 0;
}

static int
nfc_append(const char *s, size_t n, char **out, size_t *len, size_t *cap)
{
	utf8proc_uint8_t *dst = NULL;
	utf8proc_ssize_t r = 0;
	if (n > 0) {
		r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst,
				 UTF8PROC_STABLE | UTF8PROC_COMPOSE);
		if (r < 0)
			return r == UTF8PROC_ERROR_NOMEM ? ENG_ERR_NOMEM : ENG_ERR_INVALID;
	}
	int rc = GROW(*out, *cap, *len + (size_t)r + 1);
	if (!rc && r > 0) {
		memcpy(*out + *len, dst, (size_t)r);
		*len += (size_t)r;
	}
	free(dst);
	return rc;
}

int
tok_nfc(const char *s, size_t n, char **out, size_t *outlen)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0, run = 0, len = 0, cap = 0;
	char *o = NULL;
	int rc = 0;
	*out = NULL;
	while (i < n) {
		uint32_t cp;
		size_t k = utf8_next(u + i, n - i, &cp);
		if (k == 0) {
			rc = ENG_ERR_INVALID;
			goto fail;
		}
		if (cp >= 0x7fd && nfc_is_inert(cp)) {
			if ((rc = nfc_append(s + run, i - run, &o, &len, &cap)) ||
			    (rc = GROW(o, cap, len + k + 1)))
				goto fail;
			memcpy(o + len, s + i, k);
			len += k;
			run = i + k;
		}
		i += k;
	}
	if ((rc = nfc_append(s + run, n - run, &o, &len, &cap)))
		goto fail;
	o[len] = 0;
	*out = o;
	*outlen = len;
	return 0;
fail:
	free(o);
	return rc;
}

/* One stretch of raw text between added tokens: normalize, then look for
 * the added tokens matched on normalized text. */
static int
encode_segment(struct enc *e, const char *s, size_t n, int parse_special)
{
	const struct tok *t = e->t;
	char *norm = NULL;
	struct spans sp = { 0 };
	int rc = 0;
	if (t->nfc && n > 0) {
		if ((rc = tok_nfc(s, n, &norm, &n)))
			goto fail;
		s = norm;
	}
	if (t->trie_norm.n <= 1) {
		rc = encode_plain(e, s, n);
		goto fail;
	}
	if ((rc = split_added(t, &t->trie_norm, s, n, !parse_special, &sp)))
		goto fail;
	for (size_t i = 0; !rc && i < sp.n; i++)
		rc = sp.v[i].added >= 0 ? push_id(e, t->added[sp.v[i].added].id)
					: encode_plain(e, s + sp.v[i].start, sp.v[i].end - sp.v[i].start);
fail:
	free(sp.v);
	free(norm);
	return rc;
}

int
tok_encode(const tok *t, const char *text, size_t len, int parse_special, int32_t **ids,
	   size_t *n_ids)
{
	struct enc e = { .t = t };
	struct spans sp = { 0 };
	int rc = 0;
	if (!t || (!text && len) || !ids || !n_ids)
		return ENG_ERR_INVALID;
	*ids = NULL;
	*n_ids = 0;
	if (len && !utf8_valid(text, len))
		return ENG_ERR_INVALID;
	e.md = pcre2_match_data_create(1, NULL);
	e.mctx = pcre2_match_context_create(NULL);
	e.jstack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
	if (!e.md || !e.mctx || !e.jstack) {
		rc = ENG_ERR_NOMEM;
		goto fail;
	}
	pcre2_jit_stack_assign(e.mctx, NULL, e.jstack);
	if (t->trie_raw.n > 1) {
		if ((rc = split_added(t, &t->trie_raw, text, len, !parse_special, &sp)))
			goto fail;
		for (size_t i = 0; !rc && i < sp.n; i++)
			rc = sp.v[i].added >= 0
				     ? push_id(&e, t->added[sp.v[i].added].id)
				     : encode_segment(&e, text + sp.v[i].start,
						      sp.v[i].end - sp.v[i].start, parse_special);
	} else {
		rc = encode_segment(&e, text, len, parse_special);
	}
	if (rc)
		goto fail;
	*ids = e.ids ? e.ids : malloc(sizeof(int32_t));
	if (!*ids) {
		rc = ENG_ERR_NOMEM;
		goto fail;
	}
	*n_ids = e.n_ids;
	e.ids = NULL;
fail:
	free(sp.v);
	free(e.ids);
	free(e.buf);
	free(e.pa.v);
	free(e.pb.v);
	free(e.sp);
	free(e.syms);
	free(e.heap);
	free(e.bl);
	pcre2_match_data_free(e.md);
	pcre2_match_context_free(e.mctx);
	pcre2_jit_stack_free(e.jstack);
	return rc;
}
