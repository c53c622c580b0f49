/* event.c - immutable, refcounted stream events (ev_): the JSON text is built
 * once by the publishing thread; any thread may then hold a reference. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "event.h"
#include "utf8.h"

/* In the order of enum ev_type. */
static const char *const ev_type_names[EV_N_TYPES] = {
	[EV_JOB_QUEUED] = "job.queued",
	[EV_JOB_STARTED] = "job.started",
	[EV_THREAD_SPAWNED] = "thread.spawned",
	[EV_THREAD_DELTA] = "thread.delta",
	[EV_THREAD_PRUNED] = "thread.pruned",
	[EV_THREAD_DONE] = "thread.done",
	[EV_MERGE] = "merge",
	[EV_MEMORY_HIT] = "memory.hit",
	[EV_MEMORY_STORED] = "memory.stored",
	[EV_JOB_DONE] = "job.done",
	[EV_JOB_FAILED] = "job.failed",
	[EV_GAP] = "gap",
};

const char *
ev_type_name(enum ev_type t)
{
	if ((int)t < 0 || t >= EV_N_TYPES)
		return NULL;
	return ev_type_names[t];
}

int
ev_type_from_name(const char *name)
{
	if (!name)
		return -1;
	for (int i = 0; i < EV_N_TYPES; i++)
		if (strcmp(ev_type_names[i], name) == 0)
			return i;
	return -1;
}

int64_t
ev_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the JSON text ----------------------------------------------------------- */

/* A compact JSON writer for flat objects: for an object whose values are
 * strings, integers, reals, true, false or null it writes exactly the bytes
 * json_dumps(JSON_COMPACT) would (keys in insertion order, the same string
 * escapes, reals through jansson itself), without jansson's per-object
 * allocations.  Anything else (nested values) is left to json_dumps.  It
 * starts in a caller's buffer and moves to the heap when that is full. */
struct jw {
	char *p;
	size_t len, cap;
	int heap;
	int fail;          /* out of memory, or not something it writes */
};

static void
jw_init(struct jw *w, char *buf, size_t cap)
{
	*w = (struct jw){ .p = buf, .cap = cap };
}

static void
jw_free(struct jw *w)
{
	if (w->heap)
		free(w->p);
}

/* Room for n more bytes; 0 or -1 (w->fail set). */
static int
jw_room(struct jw *w, size_t n)
{
	if (w->fail)
		return -1;
	if (w->len + n <= w->cap)
		return 0;
	size_t cap = w->cap * 2;
	while (cap < w->len + n)
		cap *= 2;
	char *np = w->heap ? realloc(w->p, cap) : malloc(cap);
	if (!np) {
		w->fail = 1;
		return -1;
	}
	if (!w->heap)
		memcpy(np, w->p, w->len);
	w->p = np;
	w->cap = cap;
	w->heap = 1;
	return 0;
}

static void
jw_put(struct jw *w, const char *s, size_t n)
{
	if (jw_room(w, n) == 0) {
		memcpy(w->p + w->len, s, n);
		w->len += n;
	}
}

static void
jw_ch(struct jw *w, char c)
{
	if (jw_room(w, 1) == 0)
		w->p[w->len++] = c;
}

/* A JSON string with jansson's escapes: \\ \" \b \f \n \r \t, other
 * control bytes as \u00XX (upper-case hex); everything else as is.  Invalid
 * UTF-8 fails (json_dumps fails on it too). */
static void
jw_string(struct jw *w, const char *s, size_t n)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *p = (const unsigned char *)s;
	size_t run = 0, i = 0;
	jw_ch(w, '"');
	while (i < n) {
		unsigned c = p[i];
		if (c >= 0x20 && c != '"' && c != '\\') {
			if (c < 0x80) {
				i++;
				continue;
			}
			uint32_t cp;
			size_t k = utf8_next(p + i, n - i, &cp);
			if (!k) {
				w->fail = 1;
				return;
			}
			i += k;
			continue;
		}
		jw_put(w, s + run, i - run);
		char esc[6] = { '\\', 0 };
		size_t m = 2;
		switch (c) {
		case '"': esc[1] = '"'; break;
		case '\\': esc[1] = '\\'; break;
		case '\b': esc[1] = 'b'; break;
		case '\f': esc[1] = 'f'; break;
		case '\n': esc[1] = 'n'; break;
		case '\r': esc[1] = 'r'; break;
		case '\t': esc[1] = 't'; break;
		default:
			memcpy(esc + 1, "u00", 3);
			esc[4] = hex[c >> 4];
			esc[5] = hex[c & 15];
			m = 6;
		}
		jw_put(w, esc, m);
		run = ++i;
	}
	jw_put(w, s + run, i - run);
	jw_ch(w, '"');
}

static void
jw_int(struct jw *w, json_int_t v)
{
	char buf[24], *q = buf + sizeof buf;
	unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
	do {
		*--q = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		*--q = '-';
	jw_put(w, q, (size_t)(buf + sizeof buf - q));
}

/* A scalar value; nested objects and arrays fail (left to json_dumps). */
static void
jw_value(struct jw *w, const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_STRING:
		jw_string(w, json_string_value(v), json_string_length(v));
		break;
	case JSON_INTEGER:
		jw_int(w, json_integer_value(v));
		break;
	case JSON_REAL: {
		/* jansson's own format (it differs between versions); a scalar
		 * dump into a buffer allocates nothing */
		char buf[64];
		size_t n = json_dumpb(v, buf, sizeof buf, JSON_ENCODE_ANY | JSON_COMPACT);
		if (n == 0 || n > sizeof buf)
			w->fail = 1;
		else
			jw_put(w, buf, n);
		break;
	}
	case JSON_TRUE:
		jw_put(w, "true", 4);
		break;
	case JSON_FALSE:
		jw_put(w, "false", 5);
		break;
	case JSON_NULL:
		jw_put(w, "null", 4);
		break;
	default:
		w->fail = 1;
	}
}

/* "key": value pairs of a flat object, without the braces. */
static void
jw_members(struct jw *w, const json_t *o)
{
	const char *key;
	json_t *v;
	int first = 1;
	json_object_foreach((json_t *)o, key, v) {
		if (w->fail)
			return;
		if (!first)
			jw_ch(w, ',');
		first = 0;
		jw_string(w, key, json_object_iter_key_len(json_object_key_to_iter(key)));
		jw_ch(w, ':');
		jw_value(w, v);
	}
}

/* ---- building events --------------------------------------------------------- */

/* The event record with its JSON text (len bytes) in the same allocation. */
static struct ev *
ev_alloc(enum ev_type t, const char *job, int64_t seq, int64_t ts, int thread, const char *json,
	 size_t len)
{
	struct ev *e = malloc(sizeof *e + len + 1);
	if (!e)
		return NULL;
	atomic_init(&e->refs, 1);
	e->type = t;
	snprintf(e->job, sizeof e->job, "%s", job);   /* fits: envelope truncated it */
	e->seq = seq;
	e->ts_ms = ts;
	e->thread = thread;
	e->body = NULL;
	e->json = (char *)(e + 1);
	memcpy(e->json, json, len);
	e->json[len] = '\0';
	e->len = len;
	return e;
}

/* The envelope of an event: "type", "job", "seq", "ts", then "thread" when
 * thread >= 0 (jansson keeps insertion order, so these come first).  The
 * event's job id (job truncated; job ids are validated upstream by
 * job_id_valid), time and thread (-1 when negative) go to jid, *ts and
 * *thread for ev_finish. */
static json_t *
envelope(const char *name, const char *job, int64_t seq, char jid[EV_JOB_ID_MAX], int64_t *ts, int *thread)
{
	snprintf(jid, EV_JOB_ID_MAX, "%s", job ? job : "");
	*ts = ev_now_ms();
	if (*thread < 0)
		*thread = -1;
	json_t *body = json_object();
	if (!body ||
	    json_object_set_new_nocheck(body, "type", json_string_nocheck(name)) ||
	    json_object_set_new(body, "job", json_string(jid)) ||
	    json_object_set_new_nocheck(body, "seq", json_integer(seq)) ||
	    json_object_set_new_nocheck(body, "ts", json_integer(*ts)) ||
	    (*thread >= 0 && json_object_set_new_nocheck(body, "thread", json_integer(*thread)))) {
		json_decref(body);
		return NULL;
	}
	return body;
}

/* The event for a complete body (stolen): its text from the flat writer,
 * or from json_dumps when the body nests. */
static struct ev *
ev_finish(enum ev_type t, const char *job, int64_t seq, int64_t ts, int thread, json_t *body)
{
	char buf[1024], *dumped = NULL;
	struct jw w;
	struct ev *e = NULL;

	jw_init(&w, buf, sizeof buf);
	jw_ch(&w, '{');
	jw_members(&w, body);
	jw_ch(&w, '}');
	if (!w.fail) {
		e = ev_alloc(t, job, seq, ts, thread, w.p, w.len);
	} else if ((dumped = json_dumps(body, JSON_COMPACT))) {
		e = ev_alloc(t, job, seq, ts, thread, dumped, strlen(dumped));
		free(dumped);
	}
	jw_free(&w);
	if (!e) {
		json_decref(body);
		return NULL;
	}
	e->body = body;
	return e;
}

struct ev *
ev_new(enum ev_type t, const char *job, int64_t seq, int thread, json_t *payload)
{
	json_t *body = NULL;
	const char *name = ev_type_name(t);
	char jid[EV_JOB_ID_MAX];
	int64_t ts;

	if (!name || (payload && !json_is_object(payload)))
		goto fail;
	/* The envelope fields first, then the payload's; an envelope field
	 * wins over a payload field of that name. */
	body = envelope(name, job, seq, jid, &ts, &thread);
	if (!body || (payload && json_object_update_missing(body, payload)))
		goto fail;
	json_decref(payload);
	return ev_finish(t, jid, seq, ts, thread, body);
fail:
	json_decref(payload);
	json_decref(body);
	return NULL;
}

struct ev *
ev_new_delta(const char *job, int64_t seq, int thread, const char *text, size_t n, int tokens,
	     double logprob, double entropy)
{
	/* what json_pack refuses (then the event goes out without a payload) */
	if (!text || !utf8_valid(text, n) || !isfinite(logprob) || !isfinite(entropy))
		return ev_new(EV_THREAD_DELTA, job, seq, thread, NULL);
	char jid[EV_JOB_ID_MAX];
	int64_t ts;
	json_t *body = envelope(ev_type_name(EV_THREAD_DELTA), job, seq, jid, &ts, &thread);
	if (!body ||
	    json_object_set_new_nocheck(body, "text", json_stringn_nocheck(text, n)) ||
	    json_object_set_new_nocheck(body, "tokens", json_integer(tokens)) ||
	    json_object_set_new_nocheck(body, "logprob", json_real(logprob)) ||
	    json_object_set_new_nocheck(body, "entropy", json_real(entropy))) {
		json_decref(body);
		return NULL;
	}
	return ev_finish(EV_THREAD_DELTA, jid, seq, ts, thread, body);
}

void
ev_ref(struct ev *e)
{
	atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
}

void
ev_unref(struct ev *e)
{
	if (!e)
		return;
	if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) != 1)
		return;
	json_decref(e->body);
	free(e);              /* the JSON text lives in the same block */
}
