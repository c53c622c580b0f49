/* tokenizer.h - HF tokenizer.json byte-level BPE (tok_).  Loaded once; a
 * loaded tokenizer is read-only, so any thread may encode and decode with it
 * (each stream decoder belongs to one thread). */
#ifndef BRAID_TOKENIZER_H
#define BRAID_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct tok tok;

/* Load a tokenizer.json.  If tokenizer_config.json sits beside it, it is read
 * too (bos/eos token names, chat_template).  Supported: model BPE with
 * byte-level pre-tokenizer/decoder; normalizer null, NFC, or a Sequence of
 * those; pre_tokenizer ByteLevel (last), Split (regex or string, PCRE2
 * UTF+UCP; behaviours Isolated, Removed, MergedWithPrevious/Next,
 * Contiguous; invert) or a Sequence of them; added tokens with
 * lstrip/rstrip/single_word/normalized/special flags.  Anything else is an
 * error naming the file and the unsupported piece.  Returns NULL and fills
 * err. */
tok *tok_load(const char *tokenizer_json_path, char *err, size_t errlen);

/* tok_load(DIR/tokenizer.json). */
tok *tok_load_dir(const char *dir, char *err, size_t errlen);

/* NULL is fine. */
void tok_free(tok *t);

/* Encode UTF-8 text.  Added tokens written in the text become their ids:
 * all of them with parse_special; without it, the special ones (e.g.
 * "<|im_start|>") stay plain text while the non-special ones (Qwen3's
 * "<think>", braid-arith's "<Path>") are still matched, as HF matches them.
 * No BOS/EOS is added (HF add_special_tokens=False).  Invalid UTF-8 is
 * ENG_ERR_INVALID.  *ids is malloc'd; the caller frees it. */
int tok_encode(const tok *t, const char *text, size_t len, int parse_special,
	       int32_t **ids, size_t *n_ids);

/* Decode ids to UTF-8, as HF decode(skip_special_tokens=False): bytes that do
 * not form valid UTF-8 become U+FFFD.  *text is malloc'd and NUL-terminated;
 * the caller frees it.  An id outside the vocabulary is ENG_ERR_INVALID. */
int tok_decode(const tok *t, const int32_t *ids, size_t n_ids, char **text, size_t *len);

/* Vocabulary size: 1 + the largest id (model vocab and added tokens). */
int tok_vocab_size(const tok *t);

/* The id of an exact token string (vocab or added), or -1. */
int32_t tok_token_id(const tok *t, const char *piece);

/* The token's string as stored in tokenizer.json (byte-level alphabet for
 * vocab entries), or NULL for an unused id.  Lives as long as t. */
const char *tok_piece(const tok *t, int32_t id);

/* 1 if id is an added token marked special. */
int tok_is_special(const tok *t, int32_t id);

/* From tokenizer_config.json (NULL / -1 when absent). */
const char *tok_bos_token(const tok *t);
const char *tok_eos_token(const tok *t);
int32_t tok_bos_id(const tok *t);
int32_t tok_eos_id(const tok *t);
const char *tok_chat_template(const tok *t);

/* Streaming decoder: push ids one at a time, get back only complete UTF-8;
 * bytes of a character split across tokens are held until it completes.
 * A sequence that can never complete is emitted as U+FFFD. */
typedef struct tok_stream tok_stream;

tok_stream *tok_stream_new(const tok *t);
void tok_stream_free(tok_stream *s);   /* NULL is fine */

/* Append the text that id completes to out (at most cap bytes, always
 * NUL-terminated when cap > 0); *len is the number of bytes written.
 * ENG_ERR_RANGE if cap is too small (nothing consumed). */
int tok_stream_push(tok_stream *s, int32_t id, char *out, size_t cap, size_t *len);

/* Emit whatever is held (as U+FFFD for an incomplete character). */
int tok_stream_flush(tok_stream *s, char *out, size_t cap, size_t *len);

#endif
