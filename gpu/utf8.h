/* utf8.h - strict UTF-8, the one check shared by the tokenizer, the chat
 * template and the event JSON writer; pure functions, any thread. */
#ifndef BRAID_UTF8_H
#define BRAID_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* The length of the character a byte c starts (1 to 4; 0: c is no lead
 * byte), and the range [*lo, *hi] its second byte must fall in (the strict
 * forms: no overlong, no surrogate, nothing past U+10FFFF); the bytes after
 * the second are 0x80..0xbf. */
size_t utf8_lead(unsigned c, unsigned *lo, unsigned *hi);

/* Decode one UTF-8 character at s[0..n) strictly: the well-formed sequences
 * of Unicode (no overlong forms, no surrogates U+D800..U+DFFF, nothing past
 * U+10FFFF, no sequence cut short by n) - what jansson accepts too.  Returns
 * its length (1 to 4) and sets *cp, or 0 (n is 0 or the bytes there are not a
 * valid character; *cp is then unchanged). */
size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp);

/* The character that ends at s[end), not starting before s[lo] (lo < end):
 * its start (found by stepping back over continuation bytes) and, through
 * utf8_next, *cp and its length, which is 0 when the bytes there are not one
 * whole valid character (*cp then unchanged). */
size_t utf8_prev(const unsigned char *s, size_t lo, size_t end, size_t *start, uint32_t *cp);

/* 1 if s[0..n) is a sequence of characters utf8_next accepts (NUL included),
 * else 0. */
int utf8_valid(const char *s, size_t n);

/* Write cp (below 0x110000) as UTF-8 into out (4 bytes room); returns the
 * length. */
size_t utf8_put(uint32_t cp, char *out);

#endif
