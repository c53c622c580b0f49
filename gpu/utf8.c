/* utf8.c - strict UTF-8 decoding, checking and encoding (see utf8.h); pure
 * functions, any thread. */
#include "utf8.h"

size_t
utf8_lead(unsigned c, unsigned *lo, unsigned *hi)
{
	*lo = 0x80;
	*hi = 0xbf;
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		return 2;
	if (c >= 0xe0 && c <= 0xef) {
		if (c == 0xe0)
			*lo = 0xa0;
		else if (c == 0xed)
			*hi = 0x9f;
		return 3;
	}
	if (c >= 0xf0 && c <= 0xf4) {
		if (c == 0xf0)
			*lo = 0x90;
		else if (c == 0xf4)
			*hi = 0x8f;
		return 4;
	}
	return 0;
}

size_t
utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
	if (n == 0)
		return 0;
	unsigned lo, hi;
	const size_t len = utf8_lead(s[0], &lo, &hi);
	if (len == 1) {
		*cp = s[0];
		return 1;
	}
	if (len == 0 || n < len || s[1] < lo || s[1] > hi)
		return 0;
	/* the lead byte's payload: 5, 4 or 3 bits for 2, 3 or 4 bytes */
	uint32_t v = ((uint32_t)s[0] & (0x7fu >> len)) << 6 | (s[1] & 0x3f);
	for (size_t i = 2; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		v = (v << 6) | (s[i] & 0x3f);
	}
	*cp = v;
	return len;
}

size_t
utf8_prev(const unsigned char *s, size_t lo, size_t end, size_t *start, uint32_t *cp)
{
	size_t i = end - 1;
	while (i > lo && (s[i] & 0xc0) == 0x80)
		i--;
	*start = i;
	return utf8_next(s + i, end - i, cp);
}

int
utf8_valid(const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	uint32_t cp;
	for (size_t i = 0; i < n;) {
		size_t k = u[i] < 0x80 ? 1 : utf8_next(u + i, n - i, &cp);
		if (k == 0)
			return 0;
		i += k;
	}
	return 1;
}

size_t
utf8_put(uint32_t cp, char *out)
{
	unsigned char *o = (unsigned char *)out;
	if (cp < 0x80) {
		o[0] = (unsigned char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (unsigned char)(0xc0 | (cp >> 6));
		o[1] = (unsigned char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (unsigned char)(0xe0 | (cp >> 12));
		o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
		o[2] = (unsigned char)(0x80 | (cp & 0x3f));
		return 3;
	}
	o[0] = (unsigned char)(0xf0 | (cp >> 18));
	o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
	o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
	o[3] = (unsigned char)(0x80 | (cp & 0x3f));
	return 4;
}
