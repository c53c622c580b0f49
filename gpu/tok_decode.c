/* tok_decode.c - ids -> UTF-8 text through the ByteLevel decoder, whole or
 * streaming.  tok_decode runs on any thread; a tok_stream on its owner's. */
#include <stdlib.h>
#include <string.h>

#include "status.h"
#include "tok_impl.h"
#include "utf8.h"

struct buf {
	char *p;
	size_t n, cap;
};

static int
buf_need(struct buf *b, size_t extra)
{
	if (b->n + extra <= b->cap)
		return 0;
	size_t nc = b->cap ? b->cap : 64;
	while (nc < b->n + extra)
		nc *= 2;
	char *np = realloc(b->p, nc);
	if (!np)
		return ENG_ERR_NOMEM;
	b->p = np;
	b->cap = nc;
	return 0;
}

/* The bytes one token stands for, appended to b.  As HF's ByteLevel decoder:
 * a token whose characters all belong to the byte-level alphabet gives those
 * bytes, any other token (e.g. "<｜User｜>") its own UTF-8. */
static int
token_bytes(const struct tok *t, int32_t id, struct buf *b)
{
	if (id < 0 || (size_t)id >= t->n_pieces || !t->pieces[id])
		return ENG_ERR_INVALID;
	const unsigned char *s = (const unsigned char *)t->pieces[id];
	size_t n = t->piece_len[id], start = b->n;
	if (buf_need(b, n))
		return ENG_ERR_NOMEM;
	for (size_t i = 0; i < n;) {
		uint32_t cp;
		size_t k = utf8_next(s + i, n - i, &cp);
		int byte = k ? tok_cp_to_byte(cp) : -1;
		if (byte < 0) {
			memcpy(b->p + start, s, n);
			b->n = start + n;
			return 0;
		}
		b->p[b->n++] = (char)byte;
		i += k;
	}
	return 0;
}

static int
put_fffd(struct buf *o)
{
	if (buf_need(o, 3))
		return ENG_ERR_NOMEM;
	memcpy(o->p + o->n, "\xef\xbf\xbd", 3);
	o->n += 3;
	return 0;
}

/* Append in[0..n) to o as Rust's String::from_utf8_lossy does: each maximal
 * invalid subpart becomes U+FFFD.  Unless final, a trailing sequence that
 * is still a valid prefix is left alone; *used says how far it got. */
static int
lossy(const unsigned char *in, size_t n, int final, struct buf *o, size_t *used)
{
	size_t i = 0;
	while (i < n) {
		unsigned lo, hi;
		const size_t len = utf8_lead(in[i], &lo, &hi);
		if (len == 0) {   /* not a lead byte */
			if (put_fffd(o))
				return ENG_ERR_NOMEM;
			i++;
			continue;
		}
		size_t k = 1;
		while (k < len && i + k < n) {
			unsigned d = in[i + k];
			if (k == 1 ? (d < lo || d > hi) : (d & 0xc0) != 0x80)
				break;
			k++;
		}
		if (k == len) {
			if (buf_need(o, len))
				return ENG_ERR_NOMEM;
			memcpy(o->p + o->n, in + i, len);
			o->n += len;
			i += len;
		} else if (i + k == n && !final) {
			break;   /* may still complete */
		} else {
			if (put_fffd(o))
				return ENG_ERR_NOMEM;
			i += k;
		}
	}
	*used = i;
	return 0;
}

int
tok_decode(const tok *t, const int32_t *ids, size_t n_ids, char **text, size_t *len)
{
	struct buf raw = { 0 }, out = { 0 };
	size_t used;
	int rc = 0;
	if (!t || (!ids && n_ids) || !text)
		return ENG_ERR_INVALID;
	*text = NULL;
	for (size_t i = 0; i < n_ids; i++)
		if ((rc = token_bytes(t, ids[i], &raw)))
			goto fail;
	if ((rc = lossy((const unsigned char *)raw.p, raw.n, 1, &out, &used)) ||
	    (rc = buf_need(&out, 1)))
		goto fail;
	out.p[out.n] = 0;
	*text = out.p;
	if (len)
		*len = out.n;
	out.p = NULL;
fail:
	free(raw.p);
	free(out.p);
	return rc;
}

/* ---- streaming ------------------------------------------------------------------ */

struct tok_stream {
	const struct tok *t;
	struct buf pend;        /* bytes not yet emitted: a valid prefix, < 4 */
	struct buf out;         /* scratch */
};

tok_stream *
tok_stream_new(const tok *t)
{
	if (!t)
		return NULL;
	struct tok_stream *s = calloc(1, sizeof *s);
	if (s)
		s->t = t;
	return s;
}

void
tok_stream_free(tok_stream *s)
{
	if (!s)
		return;
	free(s->pend.p);
	free(s->out.p);
	free(s);
}

/* Copy s->out to the caller's buffer, or ENG_ERR_RANGE if it does not fit. */
static int
emit(struct tok_stream *s, char *out, size_t cap, size_t *len)
{
	if (s->out.n > 0 && s->out.n + 1 > cap)
		return ENG_ERR_RANGE;
	if (cap > 0) {
		if (s->out.n)
			memcpy(out, s->out.p, s->out.n);
		out[s->out.n] = 0;
	}
	if (len)
		*len = s->out.n;
	return 0;
}

int
tok_stream_push(tok_stream *s, int32_t id, char *out, size_t cap, size_t *len)
{
	if (!s || (!out && cap))
		return ENG_ERR_INVALID;
	size_t keep = s->pend.n, used;
	int rc = token_bytes(s->t, id, &s->pend);
	if (rc)
		goto fail;
	s->out.n = 0;
	if ((rc = lossy((const unsigned char *)s->pend.p, s->pend.n, 0, &s->out, &used)) ||
	    (rc = emit(s, out, cap, len)))
		goto fail;
	memmove(s->pend.p, s->pend.p + used, s->pend.n - used);
	s->pend.n -= used;
	return 0;
fail:
	s->pend.n = keep;   /* nothing consumed */
	return rc;
}

int
tok_stream_flush(tok_stream *s, char *out, size_t cap, size_t *len)
{
	if (!s || (!out && cap))
		return ENG_ERR_INVALID;
	size_t used;
	s->out.n = 0;
	int rc = lossy((const unsigned char *)s->pend.p, s->pend.n, 1, &s->out, &used);
	if (rc || (rc = emit(s, out, cap, len)))
		return rc;
	s->pend.n = 0;
	return 0;
}
