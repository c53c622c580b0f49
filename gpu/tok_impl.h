/* tok_impl.h - the inside of a loaded tokenizer, shared by tokenizer.c (load),
 * tok_encode.c and tok_decode.c.  Not part of the public API; read-only after
 * tok_load, so any thread may read it. */
#ifndef BRAID_TOK_IMPL_H
#define BRAID_TOK_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

/* String -> id, open addressing over an external string arena. */
struct tok_strmap {
	uint32_t *slots;        /* (cap) index into keys+1, 0 = empty */
	size_t cap;             /* power of two */
	size_t n;
	const char **keys;      /* (n) borrowed pointers */
	uint32_t *lens;         /* (n) */
	int32_t *vals;          /* (n) */
	size_t kcap;
};

/* (left id, right id) -> (rank, merged id). */
struct tok_mergemap {
	uint64_t *keys;         /* (cap) left<<32 | right; UINT64_MAX = empty */
	int32_t *rank;          /* (cap) */
	int32_t *merged;        /* (cap) */
	size_t cap;             /* power of two */
	size_t n;
};

struct tok_added {
	char *content;          /* as in tokenizer.json (owned) */
	size_t len;
	char *match;            /* what is searched for: content, normalized if
	                           `normalized` (owned, may alias content) */
	size_t match_len;
	int32_t id;
	unsigned special : 1, lstrip : 1, rstrip : 1, single_word : 1, normalized : 1;
};

/* Byte trie over added-token strings, for leftmost-longest matching. */
struct tok_trie_node {
	int32_t child;          /* first child node, -1 none */
	int32_t sibling;        /* next sibling, -1 none */
	int32_t added;          /* index into tok.added ending here, -1 none */
	uint8_t byte;
};

struct tok_trie {
	struct tok_trie_node *nodes;   /* (n); node 0 is the root */
	size_t n, cap;
	int32_t first[256];            /* root's child per first byte, -1 none */
};

enum tok_split_behavior {
	TOK_ISOLATED, TOK_REMOVED, TOK_MERGED_PREV, TOK_MERGED_NEXT, TOK_CONTIGUOUS,
};

enum tok_pt_type { TOK_PT_SPLIT, TOK_PT_BYTELEVEL };

struct tok_pretok {
	enum tok_pt_type type;
	pcre2_code *re;                 /* Split pattern, or ByteLevel GPT-2 regex
	                                   when use_regex (else NULL) */
	enum tok_split_behavior behavior;
	int invert;
	int add_prefix_space;           /* ByteLevel */
};

struct tok {
	char *path;

	/* model vocab and pieces by id */
	struct tok_strmap vocab;        /* byte-level string -> id */
	char *arena;                    /* vocab strings, NUL-separated (owned) */
	const char **pieces;            /* (n_pieces) id -> string (in arena or an
	                                   added token's content), NULL = unused */
	uint32_t *piece_len;            /* (n_pieces) */
	size_t n_pieces;                /* 1 + largest id */
	struct tok_mergemap merges;
	int ignore_merges;
	int32_t unk_id;                 /* -1: unknown chars are dropped */
	int fuse_unk;
	int32_t byte_id[256];           /* vocab id of each byte's character, -1 */

	/* added tokens */
	struct tok_added *added;        /* (n_added) */
	size_t n_added;
	struct tok_strmap added_map;    /* content -> index into added */
	struct tok_trie trie_raw;       /* tokens with normalized = false */
	struct tok_trie trie_norm;      /* tokens with normalized = true */
	unsigned char *is_special;      /* (n_pieces) */
	int32_t *added_of_id;           /* (n_pieces) index into added, -1 */

	/* normalizer: NFC or nothing */
	int nfc;

	/* pre-tokenizer steps, ByteLevel last */
	struct tok_pretok *pretok;      /* (n_pretok) */
	size_t n_pretok;

	/* tokenizer_config.json */
	char *bos_token, *eos_token, *chat_template;
	int32_t bos_id, eos_id;
};

/* The byte-level alphabet (GPT-2 bytes_to_unicode): byte -> code point. */
uint32_t tok_byte_to_cp(uint8_t b);
/* Code point -> byte, or -1 if cp is not in the alphabet. */
int tok_cp_to_byte(uint32_t cp);

/* NFC as HF tokenizers computes it (utf8proc, with the code points HF's
 * older tables lack left alone).  *out is malloc'd and NUL-terminated. */
int tok_nfc(const char *s, size_t n, char **out, size_t *outlen);

/* Lookup in a string map; -1 when absent. */
int32_t tok_strmap_get(const struct tok_strmap *m, const char *key, size_t len);

/* Lookup in the merge map; 0 if found (fills rank/merged), -1 if not. */
int tok_merge_get(const struct tok_mergemap *m, int32_t a, int32_t b,
		  int32_t *rank, int32_t *merged);

/* Compile a HF (Oniguruma-flavoured) regex with PCRE2 UTF+UCP, JIT when
 * available.  NULL with err filled on failure. */
pcre2_code *tok_regex_compile(const char *pattern, size_t len, int literal,
			      char *err, size_t errlen);

#endif
