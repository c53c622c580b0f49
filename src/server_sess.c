/* server_sess.c - what route handlers call on a session (api.h): buffer and
 * stream the response, answer errors, follow the bus, read the query,
 * headers and JSON body.  Runs on the lws service thread, except
 * sess_wake, which the bus calls on the publishing thread. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libwebsockets.h>

#include "api.h"
#include "utf8.h"

/* The bus has events for s (any thread): flag it and wake the service
 * loop, which asks for WRITEABLE on flagged sessions. */
static void
sess_wake(void *arg)
{
	struct api_sess *s = arg;
	atomic_store(&s->wake, 1);
	lws_cancel_service(s->ctx->lws);
}

/* ---- answering ---------------------------------------------------------------- */

static int
out_reserve(struct api_sess *s, size_t more)
{
	if (s->out_off > 0 && s->out_off == s->out_len) {
		s->out_off = s->out_len = 0;
	}
	if (s->out_len + more + 1 <= s->out_cap)
		return 0;
	if (s->out_off > 0) {                 /* slide the unsent part down */
		memmove(s->out, s->out + s->out_off, s->out_len - s->out_off);
		s->out_len -= s->out_off;
		s->out_off = 0;
		if (s->out_len + more + 1 <= s->out_cap)
			return 0;
	}
	size_t cap = s->out_cap ? s->out_cap : 4096;
	while (cap < s->out_len + more + 1)
		cap *= 2;
	char *p = realloc(s->out, cap);
	if (!p)
		return -1;
	s->out = p;
	s->out_cap = cap;
	return 0;
}

int
api_out(struct api_sess *s, const void *data, size_t len)
{
	if (out_reserve(s, len) < 0)
		return -1;
	memcpy(s->out + s->out_len, data, len);
	s->out_len += len;
	s->out[s->out_len] = 0;
	if (s->responding)
		lws_callback_on_writable(s->wsi);
	return 0;
}

int
api_outf(struct api_sess *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *str = NULL;
	int n = vasprintf(&str, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -1;
	int rc = api_out(s, str, (size_t)n);
	free(str);
	return rc;
}

static void
count_code(struct api_sess *s, int status)
{
	if (status >= 100 && status < 600)
		s->ctx->http_by_code[status]++;
}

int
api_respond(struct api_sess *s, int status, const char *ctype, const char *body, size_t len)
{
	if (s->responding)
		return 0;
	s->out_len = s->out_off = 0;
	if (api_out(s, body, len) < 0)
		return -1;
	s->responding = 1;
	s->status = status;
	snprintf(s->ctype, sizeof s->ctype, "%s", ctype);
	s->finished = 1;
	count_code(s, status);
	lws_callback_on_writable(s->wsi);
	return 0;
}

int
api_respond_json(struct api_sess *s, int status, json_t *j)
{
	if (s->responding) {
		/* as api_respond: the response is set already, and the newline
		 * below must not land after a body whose length went out */
		json_decref(j);
		return 0;
	}
	char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (!text)
		return api_respond(s, 500, "application/json",
				   "{\"error\":{\"message\":\"out of memory\"}}", 37);
	size_t n = strlen(text);
	int rc = api_respond(s, status, "application/json", text, n);
	api_out(s, "\n", 1);
	free(text);
	return rc;
}

static const char *
error_type(int status)
{
	switch (status) {
	case 400: return "invalid_request_error";
	case 401: return "authentication_error";
	case 403: return "permission_error";
	case 404: return "not_found_error";
	case 409: return "conflict_error";
	case 413: return "request_too_large";
	case 429: return "rate_limit_error";
	default: return status >= 500 ? "server_error" : "invalid_request_error";
	}
}

int
api_error(struct api_sess *s, int status, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	/* the message may quote request bytes: keep only valid UTF-8 */
	if (!utf8_valid(msg, strlen(msg)))
		snprintf(msg, sizeof msg, "invalid request");
	json_t *j = json_pack("{s:{s:s, s:s, s:i}}", "error", "message", msg, "type",
			      error_type(status), "code", status);
	return api_respond_json(s, status, j);
}

void
api_header(struct api_sess *s, const char *name, const char *value)
{
	if (s->n_hdr >= 2)
		return;
	snprintf(s->hdr_name[s->n_hdr], sizeof s->hdr_name[0], "%s", name);
	snprintf(s->hdr_val[s->n_hdr], sizeof s->hdr_val[0], "%s", value);
	s->n_hdr++;
}

int
api_stream_start(struct api_sess *s, int status, const char *ctype)
{
	if (s->responding)
		return 0;
	s->responding = 1;
	s->streaming = 1;
	s->status = status;
	snprintf(s->ctype, sizeof s->ctype, "%s", ctype);
	count_code(s, status);
	lws_callback_on_writable(s->wsi);
	return 0;
}

void
api_stream_end(struct api_sess *s)
{
	s->finished = 1;
	lws_callback_on_writable(s->wsi);
}

int
api_subscribe(struct api_sess *s, const char *job, size_t cap, api_event_fn fn)
{
	s->on_event = fn;
	s->sub = bus_subscribe(s->ctx->bus, job, cap, sess_wake, s);
	return s->sub ? 0 : -1;
}

int
api_query(struct api_sess *s, const char *name, char *buf, size_t len)
{
	char frag[1024];
	size_t nl = strlen(name);
	for (int i = 0; i < 32; i++) {
		int n = lws_hdr_copy_fragment(s->wsi, frag, sizeof frag, WSI_TOKEN_HTTP_URI_ARGS, i);
		if (n < 0)
			break;
		if (!strncmp(frag, name, nl) && (frag[nl] == '=' || frag[nl] == 0)) {
			snprintf(buf, len, "%s", frag[nl] == '=' ? frag + nl + 1 : "");
			return 1;
		}
	}
	return 0;
}

int
api_header_in(struct api_sess *s, int token, char *buf, size_t len)
{
	int n = lws_hdr_total_length(s->wsi, (enum lws_token_indexes)token);
	if (n <= 0 || (size_t)n >= len) {
		buf[0] = 0;
		return 0;
	}
	return lws_hdr_copy(s->wsi, buf, (int)len, (enum lws_token_indexes)token) >= 0;
}

json_t *
api_body_json(struct api_sess *s)
{
	if (!s->body || s->body_len == 0) {
		api_error(s, 400, "the request needs a JSON object body");
		return NULL;
	}
	if (!utf8_valid(s->body, s->body_len)) {
		api_error(s, 400, "the request body is not valid UTF-8");
		return NULL;
	}
	json_error_t jerr;
	json_t *j = json_loadb(s->body, s->body_len, JSON_REJECT_DUPLICATES, &jerr);
	if (!j) {
		api_error(s, 400, "malformed JSON at line %d column %d: %s", jerr.line, jerr.column,
			  jerr.text);
		return NULL;
	}
	if (!json_is_object(j)) {
		json_decref(j);
		api_error(s, 400, "the request body must be a JSON object");
		return NULL;
	}
	return j;
}
