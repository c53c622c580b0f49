/* tokenizer.c - loads an HF tokenizer.json (+ tokenizer_config.json) into the
 * read-only tables of tok_impl.h, and answers vocabulary queries.  Loading
 * runs on whichever thread calls tok_load; queries on any thread. */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "status.h"
#include "tok_impl.h"
#include "utf8.h"

#define TOK_MAX_ID (1 << 24)    /* ids past this are a malformed file */

/* ---- small helpers ------------------------------------------------------- */

uint32_t
tok_byte_to_cp(uint8_t b)
{
	/* Printable Latin-1 bytes stand for themselves; the other 68 bytes map,
	 * in order, to U+0100.. (GPT-2's bytes_to_unicode). */
	if ((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae)
		return b;
	uint32_t n = 0;
	for (unsigned x = 0; x < b; x++)
		if (!((x >= 0x21 && x <= 0x7e) || (x >= 0xa1 && x <= 0xac) || x >= 0xae))
			n++;
	return 0x100 + n;
}

int
tok_cp_to_byte(uint32_t cp)
{
	static int16_t inv[0x144];
	static int ready;   /* benign race: every thread writes the same table */
	if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
		int16_t tmp[0x144];
		for (int i = 0; i < 0x144; i++)
			tmp[i] = -1;
		for (int b = 0; b < 256; b++)
			tmp[tok_byte_to_cp((uint8_t)b)] = (int16_t)b;
		memcpy(inv, tmp, sizeof inv);
		__atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
	}
	return cp < 0x144 ? inv[cp] : -1;
}

/* ---- string map ------------------------------------------------------------ */

static uint64_t
hash_bytes(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;   /* FNV-1a */
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 0x100000001b3ull;
	}
	return h ^ (h >> 29);
}

static int
strmap_init(struct tok_strmap *m, size_t expected)
{
	size_t cap = 16;
	while (cap < expected * 2)
		cap <<= 1;
	m->slots = calloc(cap, sizeof *m->slots);
	m->cap = cap;
	m->n = 0;
	m->kcap = expected ? expected : 1;
	m->keys = malloc(m->kcap * sizeof *m->keys);
	m->lens = malloc(m->kcap * sizeof *m->lens);
	m->vals = malloc(m->kcap * sizeof *m->vals);
	return m->slots && m->keys && m->lens && m->vals ? 0 : ENG_ERR_NOMEM;
}

static void
strmap_free(struct tok_strmap *m)
{
	free(m->slots);
	free(m->keys);
	free(m->lens);
	free(m->vals);
	memset(m, 0, sizeof *m);
}

/* Insert or overwrite; key is borrowed and must outlive the map.  The map
 * never grows its slot array: strmap_init sized it. */
static int
strmap_put(struct tok_strmap *m, const char *key, size_t len, int32_t val)
{
	size_t mask = m->cap - 1, i = hash_bytes(key, len) & mask;
	for (;; i = (i + 1) & mask) {
		uint32_t s = m->slots[i];
		if (s == 0)
			break;
		if (m->lens[s - 1] == len && memcmp(m->keys[s - 1], key, len) == 0) {
			m->vals[s - 1] = val;
			return 0;
		}
	}
	if (m->n == m->kcap || (m->n + 1) * 2 > m->cap)
		return ENG_ERR_RANGE;
	m->keys[m->n] = key;
	m->lens[m->n] = (uint32_t)len;
	m->vals[m->n] = val;
	m->slots[i] = (uint32_t)++m->n;
	return 0;
}

int32_t
tok_strmap_get(const struct tok_strmap *m, const char *key, size_t len)
{
	if (!m->cap)
		return -1;
	size_t mask = m->cap - 1, i = hash_bytes(key, len) & mask;
	for (;; i = (i + 1) & mask) {
		uint32_t s = m->slots[i];
		if (s == 0)
			return -1;
		if (m->lens[s - 1] == len && memcmp(m->keys[s - 1], key, len) == 0)
			return m->vals[s - 1];
	}
}

/* ---- merge map --------------------------------------------------------------- */

static size_t
merge_slot(uint64_t key, size_t cap)
{
	return (size_t)((key * 0x9e3779b97f4a7c15ull) >> 17) & (cap - 1);
}

static int
mergemap_init(struct tok_mergemap *m, size_t expected)
{
	size_t cap = 16;
	while (cap < expected * 2)
		cap <<= 1;
	m->keys = malloc(cap * sizeof *m->keys);
	m->rank = malloc(cap * sizeof *m->rank);
	m->merged = malloc(cap * sizeof *m->merged);
	m->cap = cap;
	m->n = 0;
	if (!m->keys || !m->rank || !m->merged)
		return ENG_ERR_NOMEM;
	memset(m->keys, 0xff, cap * sizeof *m->keys);
	return 0;
}

static void
mergemap_free(struct tok_mergemap *m)
{
	free(m->keys);
	free(m->rank);
	free(m->merged);
	memset(m, 0, sizeof *m);
}

/* Insert or overwrite (HF builds a hash map from the list: a repeated pair
 * keeps its last rank). */
static void
mergemap_put(struct tok_mergemap *m, int32_t a, int32_t b, int32_t rank, int32_t merged)
{
	uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
	size_t i = merge_slot(key, m->cap);
	while (m->keys[i] != UINT64_MAX && m->keys[i] != key)
		i = (i + 1) & (m->cap - 1);
	if (m->keys[i] == UINT64_MAX)
		m->n++;
	m->keys[i] = key;
	m->rank[i] = rank;
	m->merged[i] = merged;
}

int
tok_merge_get(const struct tok_mergemap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged)
{
	uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
	size_t i = merge_slot(key, m->cap);
	for (; m->keys[i] != UINT64_MAX; i = (i + 1) & (m->cap - 1)) {
		if (m->keys[i] == key) {
			*rank = m->rank[i];
			*merged = m->merged[i];
			return 0;
		}
	}
	return -1;
}

/* ---- regex --------------------------------------------------------------------- */

/* HF compiles these patterns with Oniguruma, whose Unicode \s is the
 * White_Space property; PCRE2's UCP \s lacks U+0085 (NEL), so add it. */
static char *
regex_translate(const char *p, size_t n, size_t *outlen)
{
	char *o = malloc(n * 8 + 1), *w = o;
	if (!o)
		return NULL;
	int in_class = 0;
	for (size_t i = 0; i < n; i++) {
		char c = p[i];
		if (c == '\\' && i + 1 < n) {
			char d = p[++i];
			if (d == 's') {
				const char *r = in_class ? "\\s\\x{85}" : "[\\s\\x{85}]";
				w = stpcpy(w, r);
			} else if (d == 'S' && !in_class) {
				w = stpcpy(w, "[^\\s\\x{85}]");
			} else {
				*w++ = c;
				*w++ = d;
			}
			continue;
		}
		if (!in_class && c == '[') {
			in_class = 1;
			*w++ = c;
			if (i + 1 < n && p[i + 1] == '^')
				*w++ = p[++i];
			if (i + 1 < n && p[i + 1] == ']')   /* a leading ']' is literal */
				*w++ = p[++i];
			continue;
		}
		if (in_class && c == '[' && i + 1 < n && p[i + 1] == ':') {
			const char *end = memmem(p + i + 2, n - i - 2, ":]", 2);
			if (end) {
				size_t k = (size_t)(end + 2 - (p + i));
				memcpy(w, p + i, k);
				w += k;
				i += k - 1;
				continue;
			}
		}
		if (in_class && c == ']')
			in_class = 0;
		*w++ = c;
	}
	*w = 0;
	*outlen = (size_t)(w - o);
	return o;
}

pcre2_code *
tok_regex_compile(const char *pattern, size_t len, int literal, char *err, size_t errlen)
{
	char *tr = NULL;
	const char *pat = pattern;
	size_t plen = len;
	uint32_t opts = PCRE2_UTF | PCRE2_UCP;
	if (literal) {
		opts = PCRE2_UTF | PCRE2_LITERAL;   /* UCP is not allowed with LITERAL */
	} else {
		tr = regex_translate(pattern, len, &plen);
		if (!tr) {
			eng_seterr(err, errlen, ENG_ERR_NOMEM, "out of memory");
			return NULL;
		}
		pat = tr;
	}
	int ec;
	PCRE2_SIZE eoff;
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, plen, opts, &ec, &eoff, NULL);
	free(tr);
	if (!re) {
		PCRE2_UCHAR msg[256];
		pcre2_get_error_message(ec, msg, sizeof msg);
		eng_seterr(err, errlen, ENG_ERR_FORMAT, "bad regex '%.*s': %s",
			   (int)(len > 200 ? 200 : len), pattern, (const char *)msg);
		return NULL;
	}
	(void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);   /* interpreter if no JIT */
	return re;
}

/* ---- loading ----------------------------------------------------------------- */

struct loader {
	struct tok *t;
	const char *path;
	char *err;
	size_t errlen;
};

#define FAIL(L, st, ...) \
	do { \
		rc = eng_seterr((L)->err, (L)->errlen, (st), __VA_ARGS__); \
		goto fail; \
	} while (0)

static int
bool_field(json_t *o, const char *k, int dflt)
{
	json_t *v = json_object_get(o, k);
	return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static int
ensure_pieces(struct tok *t, size_t n)
{
	if (n <= t->n_pieces)
		return 0;
	const char **p = realloc(t->pieces, n * sizeof *p);
	if (!p)
		return ENG_ERR_NOMEM;
	t->pieces = p;
	uint32_t *l = realloc(t->piece_len, n * sizeof *l);
	if (!l)
		return ENG_ERR_NOMEM;
	t->piece_len = l;
	for (size_t i = t->n_pieces; i < n; i++) {
		t->pieces[i] = NULL;
		t->piece_len[i] = 0;
	}
	t->n_pieces = n;
	return 0;
}

static int
load_vocab(struct loader *L, json_t *vocab)
{
	struct tok *t = L->t;
	int rc = 0;
	if (!json_is_object(vocab))
		FAIL(L, ENG_ERR_FORMAT, "%s: model.vocab is not an object", L->path);
	size_t n = json_object_size(vocab), total = 0, maxid = 0;
	const char *key;
	json_t *val;
	json_object_foreach(vocab, key, val) {
		json_int_t id = json_is_integer(val) ? json_integer_value(val) : -1;
		if (id < 0 || id >= TOK_MAX_ID)
			FAIL(L, ENG_ERR_FORMAT, "%s: vocab entry '%.100s' has a bad id", L->path, key);
		if ((size_t)id + 1 > maxid)
			maxid = (size_t)id + 1;
		total += strlen(key) + 1;
	}
	t->arena = malloc(total ? total : 1);
	if (!t->arena || strmap_init(&t->vocab, n) || ensure_pieces(t, maxid))
		FAIL(L, ENG_ERR_NOMEM, "%s: out of memory", L->path);
	char *w = t->arena;
	json_object_foreach(vocab, key, val) {
		size_t len = strlen(key);
		int32_t id = (int32_t)json_integer_value(val);
		memcpy(w, key, len + 1);
		if (strmap_put(&t->vocab, w, len, id))
			FAIL(L, ENG_ERR_NOMEM, "%s: out of memory", L->path);
		t->pieces[id] = w;
		t->piece_len[id] = (uint32_t)len;
		w += len + 1;
	}
fail:
	return rc;
}

static int
load_merges(struct loader *L, json_t *merges)
{
	struct tok *t = L->t;
	int rc = 0;
	char *buf = NULL;
	if (!json_is_array(merges))
		FAIL(L, ENG_ERR_FORMAT, "%s: model.merges is not an array", L->path);
	size_t n = json_array_size(merges), cap = 0;
	if (mergemap_init(&t->merges, n))
		FAIL(L, ENG_ERR_NOMEM, "%s: out of memory", L->path);
	for (size_t i = 0; i < n; i++) {
		json_t *m = json_array_get(merges, i);
		const char *a, *b;
		size_t alen, blen;
		if (json_is_string(m)) {
			/* "a b": exactly one space (byte-level tokens hold none) */
			a = json_string_value(m);
			size_t len = json_string_length(m);
			const char *sp = memchr(a, ' ', len);
			if (!sp || memchr(sp + 1, ' ', len - (size_t)(sp + 1 - a)))
				FAIL(L, ENG_ERR_FORMAT, "%s: merge %zu '%.100s' is not two tokens",
				     L->path, i, a);
			alen = (size_t)(sp - a);
			b = sp + 1;
			blen = len - alen - 1;
		} else if (json_is_array(m) && json_array_size(m) == 2 &&
			   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
			a = json_string_value(json_array_get(m, 0));
			alen = json_string_length(json_array_get(m, 0));
			b = json_string_value(json_array_get(m, 1));
			blen = json_string_length(json_array_get(m, 1));
		} else {
			FAIL(L, ENG_ERR_FORMAT, "%s: merge %zu is neither \"a b\" nor [a, b]", L->path, i);
		}
		int32_t ia = tok_strmap_get(&t->vocab, a, alen);
		int32_t ib = tok_strmap_get(&t->vocab, b, blen);
		if (ia < 0 || ib < 0)
			FAIL(L, ENG_ERR_FORMAT, "%s: merge %zu: token '%.*s' is not in the vocab",
			     L->path, i, (int)(ia < 0 ? alen : blen), ia < 0 ? a : b);
		if (alen + blen > cap) {
			cap = (alen + blen) * 2;
			char *nb = realloc(buf, cap);
			if (!nb)
				FAIL(L, ENG_ERR_NOMEM, "%s: out of memory", L->path);
			buf = nb;
		}
		memcpy(buf, a, alen);
		memcpy(buf + alen, b, blen);
		int32_t im = tok_strmap_get(&t->vocab, buf, alen + blen);
		if (im < 0)
			FAIL(L, ENG_ERR_FORMAT, "%s: merge %zu: token '%.*s' is not in the vocab",
			     L->path, i, (int)(alen + blen), buf);
		mergemap_put(&t->merges, ia, ib, (int32_t)i, im);
	}
fail:
	free(buf);
	return rc;
}

static int
load_model(struct loader *L, json_t *model)
{
	struct tok *t = L->t;
	int rc = 0;
	if (!json_is_object(model))
		FAIL(L, ENG_ERR_FORMAT, "%s: no model object", L->path);
	json_t *type = json_object_get(model, "type");
	if (type && !(json_is_string(type) && strcmp(json_string_value(type), "BPE") == 0))
		FAIL(L, ENG_ERR_UNSUPPORTED, "%s: unsupported model type '%s'", L->path,
		     json_is_string(type) ? json_string_value(type) : "?");
	json_t *v = json_object_get(model, "dropout");
	if (v && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 0.0))
		FAIL(L, ENG_ERR_UNSUPPORTED, "%s: unsupported BPE dropout", L->path);
	if (bool_field(model, "byte_fallback", 0))
		FAIL(L, ENG_ERR_UNSUPPORTED, "%s: unsupported BPE byte_fallback", L->path);
	static const char *const affixes[] = { "continuing_subword_prefix", "end_of_word_suffix" };
	for (size_t i = 0; i < 2; i++) {
		v = json_object_get(model, affixes[i]);
		if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
			FAIL(L, ENG_ERR_UNSUPPORTED, "%s: unsupported BPE %s", L->path, affixes[i]);
	}
	t->ignore_merges = bool_field(model, "ignore_merges", 0);
	t->fuse_unk = bool_field(model, "fuse_unk", 0);
	if ((rc = load_vocab(L, json_object_get(model, "vocab"))))
		goto fail;
	if ((rc = load_merges(L, json_object_get(model, "merges"))))
		goto fail;
	t->unk_id = -1;
	v = json_object_get(model, "unk_token");
	if (json_is_string(v)) {
		t->unk_id = tok_strmap_get(&t->vocab, json_string_value(v), json_string_length(v));
		if (t->unk_id < 0)
			FAIL(L, ENG_ERR_FORMAT, "%s: unk_token '%s' is not in the vocab", L->path,
			     json_string_value(v));
	}
	for (int b = 0; b < 256; b++) {
		char s[4];
		size_t n = utf8_put(tok_byte_to_cp((uint8_t)b), s);
		t->byte_id[b] = tok_strmap_get(&t->vocab, s, n);
	}
fail:
	return rc;
}

static int
trie_add(struct tok_trie *tr, const char *s, size_t n, int32_t added)
{
	int32_t node = 0;
	for (size_t i = 0; i < n; i++) {
		uint8_t c = (uint8_t)s[i];
		int32_t ch = i == 0 ? tr->first[c] : tr->nodes[node].child;
		while (ch >= 0 && tr->nodes[ch].byte != c)
			ch = tr->nodes[ch].sibling;
		if (ch < 0) {
			if (tr->n == tr->cap) {
				size_t nc = tr->cap ? tr->cap * 2 : 256;
				struct tok_trie_node *nn = realloc(tr->nodes, nc * sizeof *nn);
				if (!nn)
					return ENG_ERR_NOMEM;
				tr->nodes = nn;
				tr->cap = nc;
			}
			ch = (int32_t)tr->n++;
			tr->nodes[ch] = (struct tok_trie_node){ .child = -1, .added = -1, .byte = c };
			if (i == 0) {
				tr->nodes[ch].sibling = -1;
				tr->first[c] = ch;
			} else {
				tr->nodes[ch].sibling = tr->nodes[node].child;
				tr->nodes[node].child = ch;
			}
		}
		node = ch;
	}
	/* a repeated content: the later entry wins, as in HF's map */
	tr->nodes[node].added = added;
	return 0;
}

static int
trie_init(struct tok_trie *tr)
{
	for (int i = 0; i < 256; i++)
		tr->first[i] = -1;
	tr->nodes = malloc(sizeof *tr->nodes);   /* node 0: the root */
	if (!tr->nodes)
		return ENG_ERR_NOMEM;
	tr->nodes[0] = (struct tok_trie_node){ .child = -1, .sibling = -1, .added = -1 };
	tr->n = tr->cap = 1;
	return 0;
}

static int
load_added(struct loader *L, json_t *arr)
{
	struct tok *t = L->t;
	int rc = 0;
	if (trie_init(&t->trie_raw) || trie_init(&t->trie_norm))
		FAIL(L, ENG_ERR_NOMEM, "%s: out of memory", L->path);
	if (arr && !json_is_null(arr) && !json_is_array(arr))
		FAIL(L, ENG_ERR_FORMAT, "%s: added_tokens is not an array", L->path);
	size_t n = json_array_size(arr);
	t->added = calloc(n ? n : 1, sizeof *t->added);
	if (!t->added || strmap_init(&t->added_map, n))
		FAIL(L, ENG_ERR_NOMEM, "%s: out of memory", L->path);
	for (size_t i = 0; i < n; i++) {
		json_t *o = json_array_get(arr, i), *jid = json_object_get(o, "id"),
		       *jc = json_object_get(o, "content");
		if (!json_is_integer(jid) || json_integer_value(jid) < 0 ||
		    json_integer_value(jid) >= TOK_MAX_ID || !json_is_string(jc) ||
		    json_string_length(jc) == 0)
			FAIL(L, ENG_ERR_FORMAT, "%s: added_tokens[%zu] needs an id and a content",
			     L->path, i);
		struct tok_added *a = &t->added[t->n_added++];
		a->len = json_string_length(jc);
		a->content = malloc(a->len + 1);
		if (!a->content)
			FAIL(L, ENG_ERR_NOMEM, "%s: out of memory", L->path);
		memcpy(a->content, json_string_value(jc), a->len + 1);
		a->match = a->content;
		a->match_len = a->len;
		a->id = (int32_t)json_integer_value(jid);
		a->special = bool_field(o, "special", 0);
		a->lstrip = bool_field(o, "lstrip", 0);
		a->rstrip = bool_field(o, "rstrip", 0);
		a->single_word = bool_field(o, "single_word", 0);
		a->normalized = bool_field(o, "normalized", !a->special);
		if (a->normalized && t->nfc) {
			size_t ml;
			if (tok_nfc(a->content, a->len, &a->match, &ml)) {
				a->match = a->content;
				FAIL(L, ENG_ERR_NOMEM, "%s: out of memory", L->path);
			}
			a->match_len = ml;
		}
		if (ensure_pieces(t, (size_t)a->id + 1) ||
		    strmap_put(&t->added_map, a->content, a->len, (int32_t)i) ||
		    trie_add(a->normalized ? &t->trie_norm : &t->trie_raw, a->match, a->match_len,
			     (int32_t)i))
			FAIL(L, ENG_ERR_NOMEM, "%s: out of memory", L->path);
		t->pieces[a->id] = a->content;
		t->piece_len[a->id] = (uint32_t)a->len;
	}
	t->is_special = calloc(t->n_pieces ? t->n_pieces : 1, 1);
	t->added_of_id = malloc((t->n_pieces ? t->n_pieces : 1) * sizeof *t->added_of_id);
	if (!t->is_special || !t->added_of_id)
		FAIL(L, ENG_ERR_NOMEM, "%s: out of memory", L->path);
	for (size_t i = 0; i < t->n_pieces; i++)
		t->added_of_id[i] = -1;
	for (size_t i = 0; i < t->n_added; i++) {
		t->added_of_id[t->added[i].id] = (int32_t)i;
		t->is_special[t->added[i].id] = t->added[i].special;
	}
fail:
	return rc;
}

static int
load_normalizer(struct loader *L, json_t *n)
{
	int rc = 0;
	if (!n || json_is_null(n))
		return 0;
	const char *type = json_string_value(json_object_get(n, "type"));
	if (type && strcmp(type, "NFC") == 0) {
		L->t->nfc = 1;
	} else if (type && strcmp(type, "Sequence") == 0) {
		json_t *list = json_object_get(n, "normalizers");
		if (!json_is_array(list))
			FAIL(L, ENG_ERR_FORMAT, "%s: normalizer Sequence without a list", L->path);
		for (size_t i = 0; i < json_array_size(list); i++)
			if ((rc = load_normalizer(L, json_array_get(list, i))))
				goto fail;
	} else {
		FAIL(L, ENG_ERR_UNSUPPORTED, "%s: unsupported normalizer type '%s'", L->path,
		     type ? type : "?");
	}
fail:
	return rc;
}

static const char gpt2_pattern[] =
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int
add_pretok(struct loader *L, json_t *p)
{
	struct tok *t = L->t;
	int rc = 0;
	const char *type = json_string_value(json_object_get(p, "type"));
	if (type && strcmp(type, "Sequence") == 0) {
		json_t *list = json_object_get(p, "pretokenizers");
		if (!json_is_array(list))
			FAIL(L, ENG_ERR_FORMAT, "%s: pre_tokenizer Sequence without a list", L->path);
		for (size_t i = 0; i < json_array_size(list); i++)
			if ((rc = add_pretok(L, json_array_get(list, i))))
				goto fail;
		return 0;
	}
	int split = type && strcmp(type, "Split") == 0;
	if (!split && !(type && strcmp(type, "ByteLevel") == 0))
		FAIL(L, ENG_ERR_UNSUPPORTED, "%s: unsupported pre_tokenizer type '%s'", L->path,
		     type ? type : "?");
	struct tok_pretok *np = realloc(t->pretok, (t->n_pretok + 1) * sizeof *np);
	if (!np)
		FAIL(L, ENG_ERR_NOMEM, "%s: out of memory", L->path);
	t->pretok = np;
	struct tok_pretok *s = &t->pretok[t->n_pretok++];
	memset(s, 0, sizeof *s);
	char rerr[ENG_ERRLEN];
	if (split) {
		static const struct {
			const char *name;
			enum tok_split_behavior b;
		} behaviors[] = {
			{ "Isolated", TOK_ISOLATED },          { "Removed", TOK_REMOVED },
			{ "MergedWithPrevious", TOK_MERGED_PREV }, { "MergedWithNext", TOK_MERGED_NEXT },
			{ "Contiguous", TOK_CONTIGUOUS },
		};
		s->type = TOK_PT_SPLIT;
		const char *bname = json_string_value(json_object_get(p, "behavior"));
		size_t k = 0, nb = sizeof behaviors / sizeof behaviors[0];
		while (k < nb && !(bname && strcmp(bname, behaviors[k].name) == 0))
			k++;
		if (k == nb)
			FAIL(L, ENG_ERR_UNSUPPORTED, "%s: unsupported Split behavior '%s'", L->path,
			     bname ? bname : "?");
		s->behavior = behaviors[k].b;
		s->invert = bool_field(p, "invert", 0);
		json_t *pat = json_object_get(p, "pattern");
		json_t *rx = json_object_get(pat, "Regex"), *str = json_object_get(pat, "String");
		json_t *use = json_is_string(rx) ? rx : str;
		if (!json_is_string(use))
			FAIL(L, ENG_ERR_FORMAT, "%s: Split pattern is neither Regex nor String", L->path);
		if (json_string_length(use) == 0) {
			/* HF: an empty pattern matches nothing */
			s->re = NULL;
		} else {
			s->re = tok_regex_compile(json_string_value(use), json_string_length(use),
						  use == str, rerr, sizeof rerr);
			if (!s->re)
				FAIL(L, ENG_ERR_FORMAT, "%s: %s", L->path, rerr);
		}
	} else {
		s->type = TOK_PT_BYTELEVEL;
		s->add_prefix_space = bool_field(p, "add_prefix_space", 1);
		if (bool_field(p, "use_regex", 1)) {
			s->re = tok_regex_compile(gpt2_pattern, strlen(gpt2_pattern), 0, rerr, sizeof rerr);
			if (!s->re)
				FAIL(L, ENG_ERR_FORMAT, "%s: %s", L->path, rerr);
		}
	}
fail:
	return rc;
}

static int
load_pretok(struct loader *L, json_t *p)
{
	struct tok *t = L->t;
	int rc = 0;
	if (!p || json_is_null(p))
		FAIL(L, ENG_ERR_UNSUPPORTED, "%s: no pre_tokenizer (byte-level BPE needs ByteLevel)",
		     L->path);
	if ((rc = add_pretok(L, p)))
		goto fail;
	for (size_t i = 0; i < t->n_pretok; i++) {
		int bl = t->pretok[i].type == TOK_PT_BYTELEVEL, last = i + 1 == t->n_pretok;
		if (bl != last)
			FAIL(L, ENG_ERR_UNSUPPORTED,
			     "%s: unsupported pre_tokenizer: ByteLevel must come last, once", L->path);
	}
fail:
	return rc;
}

static int
load_decoder(struct loader *L, json_t *d)
{
	int rc = 0;
	const char *type = json_string_value(json_object_get(d, "type"));
	if (!type || strcmp(type, "ByteLevel") != 0)
		FAIL(L, ENG_ERR_UNSUPPORTED, "%s: unsupported decoder type '%s'", L->path,
		     type ? type : "null");
fail:
	return rc;
}

/* A special-token entry of tokenizer_config.json: "s" or {"content": "s"}. */
static int
config_token(json_t *v, char **out)
{
	if (json_is_object(v))
		v = json_object_get(v, "content");
	if (!json_is_string(v))
		return 0;
	*out = strdup(json_string_value(v));
	return *out ? 0 : ENG_ERR_NOMEM;
}

static int
load_config(struct loader *L)
{
	struct tok *t = L->t;
	int rc = 0;
	json_t *root = NULL;
	char *cpath = NULL;
	const char *slash = strrchr(L->path, '/');
	size_t dlen = slash ? (size_t)(slash - L->path) + 1 : 0;
	cpath = malloc(dlen + sizeof "tokenizer_config.json");
	if (!cpath)
		FAIL(L, ENG_ERR_NOMEM, "%s: out of memory", L->path);
	memcpy(cpath, L->path, dlen);
	strcpy(cpath + dlen, "tokenizer_config.json");
	FILE *f = fopen(cpath, "rb");
	if (!f) {
		if (errno == ENOENT)
			goto fail;   /* optional */
		FAIL(L, ENG_ERR_IO, "%s: %s", cpath, strerror(errno));
	}
	json_error_t jerr;
	root = json_loadf(f, JSON_DECODE_INT_AS_REAL, &jerr);   /* model_max_length 1e30 */
	fclose(f);
	if (!json_is_object(root))
		FAIL(L, ENG_ERR_FORMAT, "%s: line %d: %s", cpath, jerr.line,
		     root ? "not an object" : jerr.text);
	if (config_token(json_object_get(root, "bos_token"), &t->bos_token) ||
	    config_token(json_object_get(root, "eos_token"), &t->eos_token))
		FAIL(L, ENG_ERR_NOMEM, "%s: out of memory", cpath);
	json_t *ct = json_object_get(root, "chat_template");
	if (json_is_array(ct)) {   /* [{"name": ..., "template": ...}]: the default */
		json_t *pick = NULL;
		for (size_t i = 0; i < json_array_size(ct); i++) {
			json_t *e = json_array_get(ct, i);
			const char *name = json_string_value(json_object_get(e, "name"));
			if (!pick || (name && strcmp(name, "default") == 0))
				pick = e;
		}
		ct = json_object_get(pick, "template");
	}
	if (json_is_string(ct) && !(t->chat_template = strdup(json_string_value(ct))))
		FAIL(L, ENG_ERR_NOMEM, "%s: out of memory", cpath);
fail:
	json_decref(root);
	free(cpath);
	return rc;
}

tok *
tok_load(const char *path, char *err, size_t errlen)
{
	json_t *root = NULL;
	struct tok *t = calloc(1, sizeof *t);
	struct loader L = { t, path, err, errlen };
	int rc = 0;
	if (!t || !(t->path = strdup(path)))
		FAIL(&L, ENG_ERR_NOMEM, "%s: out of memory", path);
	t->bos_id = t->eos_id = t->unk_id = -1;
	json_error_t jerr;
	root = json_load_file(path, 0, &jerr);
	if (!root) {
		FILE *f = fopen(path, "rb");
		if (!f)
			FAIL(&L, ENG_ERR_IO, "%s: %s", path, strerror(errno));
		fclose(f);
		FAIL(&L, ENG_ERR_FORMAT, "%s: line %d: %s", path, jerr.line, jerr.text);
	}
	if (!json_is_object(root))
		FAIL(&L, ENG_ERR_FORMAT, "%s: not a JSON object", path);
	if ((rc = load_normalizer(&L, json_object_get(root, "normalizer"))) ||
	    (rc = load_pretok(&L, json_object_get(root, "pre_tokenizer"))) ||
	    (rc = load_decoder(&L, json_object_get(root, "decoder"))) ||
	    (rc = load_model(&L, json_object_get(root, "model"))) ||
	    (rc = load_added(&L, json_object_get(root, "added_tokens"))) ||
	    (rc = load_config(&L)))
		goto fail;
	if (t->bos_token)
		t->bos_id = tok_token_id(t, t->bos_token);
	if (t->eos_token)
		t->eos_id = tok_token_id(t, t->eos_token);
	json_decref(root);
	return t;
fail:
	(void)rc;
	json_decref(root);
	tok_free(t);
	return NULL;
}

tok *
tok_load_dir(const char *dir, char *err, size_t errlen)
{
	size_t n = strlen(dir);
	char *p = malloc(n + sizeof "/tokenizer.json");
	if (!p) {
		eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: out of memory", dir);
		return NULL;
	}
	memcpy(p, dir, n);
	strcpy(p + n, "/tokenizer.json");
	tok *t = tok_load(p, err, errlen);
	free(p);
	return t;
}

void
tok_free(tok *t)
{
	if (!t)
		return;
	strmap_free(&t->vocab);
	free(t->arena);
	free(t->pieces);
	free(t->piece_len);
	mergemap_free(&t->merges);
	for (size_t i = 0; i < t->n_added; i++) {
		if (t->added[i].match != t->added[i].content)
			free(t->added[i].match);
		free(t->added[i].content);
	}
	free(t->added);
	strmap_free(&t->added_map);
	free(t->trie_raw.nodes);
	free(t->trie_norm.nodes);
	free(t->is_special);
	free(t->added_of_id);
	for (size_t i = 0; i < t->n_pretok; i++)
		pcre2_code_free(t->pretok[i].re);
	free(t->pretok);
	free(t->bos_token);
	free(t->eos_token);
	free(t->chat_template);
	free(t->path);
	free(t);
}

/* ---- queries ------------------------------------------------------------------- */

int
tok_vocab_size(const tok *t)
{
	return (int)t->n_pieces;
}

int32_t
tok_token_id(const tok *t, const char *piece)
{
	size_t n = strlen(piece);
	int32_t a = tok_strmap_get(&t->added_map, piece, n);
	if (a >= 0)
		return t->added[a].id;
	return tok_strmap_get(&t->vocab, piece, n);
}

const char *
tok_piece(const tok *t, int32_t id)
{
	return id >= 0 && (size_t)id < t->n_pieces ? t->pieces[id] : NULL;
}

int
tok_is_special(const tok *t, int32_t id)
{
	return id >= 0 && (size_t)id < t->n_pieces && t->is_special[id];
}

const char *
tok_bos_token(const tok *t)
{
	return t->bos_token;
}

const char *
tok_eos_token(const tok *t)
{
	return t->eos_token;
}

int32_t
tok_bos_id(const tok *t)
{
	return t->bos_id;
}

int32_t
tok_eos_id(const tok *t)
{
	return t->eos_id;
}

const char *
tok_chat_template(const tok *t)
{
	return t->chat_template;
}
