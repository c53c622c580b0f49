/* chat.h - chat prompt formats (chat_): ChatML (Qwen) and Llama-3 headers,
 * rendered exactly as transformers' apply_chat_template does for
 * system/user/assistant turns.  Pure functions; any thread. */
#ifndef BRAID_CHAT_H
#define BRAID_CHAT_H

#include <stddef.h>

#include "tokenizer.h"

enum chat_format {
	CHAT_NONE = 0,     /* no template: plain concatenation of contents */
	CHAT_CHATML = 1,   /* <|im_start|>role\n...<|im_end|>\n             */
	CHAT_LLAMA3 = 2,   /* <|start_header_id|>role<|end_header_id|>\n\n  */
};

struct chat_msg {
	const char *role;      /* "system", "user", "assistant" */
	const char *content;
};

/* Detect the format from the tokenizer's chat_template (or, without one,
 * from the special tokens it defines). */
enum chat_format chat_detect(const tok *t);

/* "none", "chatml", "llama3". */
const char *chat_format_name(enum chat_format f);

/* Render messages; with add_generation_prompt, end with the assistant
 * header (Llama-3 always ends with it: its template appends the header
 * unconditionally).  bos is prepended where the format does (Llama-3,
 * before the first message; may be NULL).
 * *out is malloc'd and NUL-terminated; the caller frees it. */
int chat_render(enum chat_format f, const struct chat_msg *msgs, size_t n,
		int add_generation_prompt, const char *bos, char **out);

#endif
