/* server.c - the HTTP/WebSocket server core (srv_): the lws context, its one
 * service thread, the route table, sessions, auth, static files and the
 * write path (what handlers call on a session is in server_sess.c).  Every
 * function here runs on the lws service thread except srv_start/srv_stop
 * (caller's thread). */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include <libwebsockets.h>

#include "api.h"
#include "build_config.h"
#include "job.h"

#define OUT_CHUNK 16384          /* bytes per lws_write of a body          */
#define PUMP_HIGH (64 * 1024)    /* stop popping events past this backlog   */

struct srv {
	struct api_ctx ctx;
	struct lws_context *lws;
	pthread_t thread;
	int thread_started;
	atomic_int stop;
	struct api_sess *sessions;   /* lws thread only                          */
	char web_root_real[PATH_MAX];
	int port;
};

/* ---- the route table ------------------------------------------------------ */

enum { R_NOAUTH = 1, R_BODY = 2 };

static const struct route {
	enum api_method method;
	const char *pattern;         /* '*' matches one path segment (the id)  */
	int (*fn)(struct api_sess *s, const char *arg);
	int flags;
} routes[] = {
	{ API_POST, "/v1/jobs", api_jobs_create, R_BODY },
	{ API_GET, "/v1/jobs", api_jobs_list, 0 },
	{ API_GET, "/v1/jobs/*", api_jobs_get, 0 },
	{ API_DELETE, "/v1/jobs/*", api_jobs_cancel, 0 },
	{ API_GET, "/v1/jobs/*/events", api_jobs_events, 0 },
	{ API_POST, "/v1/chat/completions", api_chat_completions, R_BODY },
	{ API_GET, "/v1/models", api_models, 0 },
	{ API_GET, "/healthz", api_healthz, R_NOAUTH },
	{ API_GET, "/metrics", api_metrics, 0 },
};
#define N_ROUTES (sizeof routes / sizeof routes[0])

/* Match path against pattern; the '*' segment goes to arg.  1 on match. */
static int
route_match(const char *pattern, const char *path, char *arg, size_t arglen)
{
	arg[0] = 0;
	while (*pattern && *path) {
		if (*pattern == '*') {
			const char *slash = strchr(path, '/');
			size_t n = slash ? (size_t)(slash - path) : strlen(path);
			if (n == 0 || n >= arglen)
				return 0;
			memcpy(arg, path, n);
			arg[n] = 0;
			path += n;
			pattern++;
			continue;
		}
		if (*pattern != *path)
			return 0;
		pattern++;
		path++;
	}
	return !*pattern && !*path;
}

/* ---- sessions --------------------------------------------------------------- */

static struct api_sess *
sess_new(struct srv *v, struct lws *wsi)
{
	struct api_sess *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->ctx = &v->ctx;
	s->wsi = wsi;
	atomic_init(&s->wake, 0);
	s->next = v->sessions;
	if (v->sessions)
		v->sessions->prev = s;
	v->sessions = s;
	return s;
}

static void
sess_free(struct srv *v, struct api_sess *s)
{
	if (!s)
		return;
	if (s->cancel_on_close && !s->job_over && s->job[0])
		sched_cancel(v->ctx.sched, s->job);
	bus_unsubscribe(v->ctx.bus, s->sub);
	ev_unref(s->pending);
	if (s->free_state)
		s->free_state(s->state);
	if (s->prev)
		s->prev->next = s->next;
	else
		v->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	free(s->body);
	free(s->out);
	free(s);
}


/* ---- auth, origin, static files ----------------------------------------------- */

/* Constant-time comparison of the bearer token. */
static int
auth_ok(struct api_sess *s)
{
	const char *key = s->ctx->p.api_key;
	if (!key || !*key)
		return 1;
	char h[512];
	if (!api_header_in(s, WSI_TOKEN_HTTP_AUTHORIZATION, h, sizeof h))
		return 0;
	if (strncmp(h, "Bearer ", 7))
		return 0;
	const char *t = h + 7;
	size_t kl = strlen(key), tl = strlen(t);
	unsigned diff = (unsigned)(kl ^ tl);
	for (size_t i = 0; i < tl; i++)
		diff |= (unsigned char)t[i] ^ (unsigned char)key[i % (kl ? kl : 1)];
	return diff == 0;
}

/* A browser's Origin must name this server; no Origin (a non-browser client)
 * is fine. */
static int
origin_ok(struct api_sess *s)
{
	char o[512];
	if (!api_header_in(s, WSI_TOKEN_ORIGIN, o, sizeof o))
		return 1;
	const char *hp = strstr(o, "://");
	if (!hp)
		return 0;
	hp += 3;
	if (!strcmp(hp, s->ctx->host_port))
		return 1;
	/* the Host the client used for this very server (localhost vs 127.0.0.1) */
	char host[300];
	if (api_header_in(s, WSI_TOKEN_HOST, host, sizeof host) && !strcmp(hp, host)) {
		const char *colon = strrchr(host, ':');
		char port[16];
		snprintf(port, sizeof port, ":%d", s->ctx->p.port);
		return colon && !strcmp(colon, port);
	}
	return 0;
}

static const struct {
	const char *ext, *type;
} mime_types[] = {
	{ ".html", "text/html; charset=utf-8" },
	{ ".js", "text/javascript; charset=utf-8" },
	{ ".mjs", "text/javascript; charset=utf-8" },
	{ ".css", "text/css; charset=utf-8" },
	{ ".json", "application/json" },
	{ ".svg", "image/svg+xml" },
	{ ".png", "image/png" },
	{ ".ico", "image/x-icon" },
	{ ".txt", "text/plain; charset=utf-8" },
};

static const char *
mime_for(const char *path)
{
	const char *dot = strrchr(path, '.');
	if (dot)
		for (size_t i = 0; i < sizeof mime_types / sizeof mime_types[0]; i++)
			if (!strcmp(dot, mime_types[i].ext))
				return mime_types[i].type;
	return "application/octet-stream";
}

/* GET of a static file: canonicalised, kept under the web root. */
static int
serve_static(struct srv *v, struct api_sess *s)
{
	char want[PATH_MAX + 600], real[PATH_MAX];
	if (strstr(s->path, "..") || strchr(s->path, '\\'))
		return api_error(s, 403, "path outside the web root");
	snprintf(want, sizeof want, "%s%s%s", v->web_root_real, s->path,
		 s->path[strlen(s->path) - 1] == '/' ? "index.html" : "");
	if (!realpath(want, real))
		return api_error(s, 404, "no such file: %s", s->path);
	size_t rl = strlen(v->web_root_real);
	if (strncmp(real, v->web_root_real, rl) || real[rl] != '/')
		return api_error(s, 403, "path outside the web root");
	int fd = open(real, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > 64 * 1024 * 1024) {
		if (fd >= 0)
			close(fd);
		return api_error(s, 404, "no such file: %s", s->path);
	}
	char *buf = malloc((size_t)st.st_size + 1);
	size_t got = 0;
	while (buf && got < (size_t)st.st_size) {
		ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	if (!buf || got != (size_t)st.st_size) {
		free(buf);
		return api_error(s, 500, "cannot read %s", s->path);
	}
	int rc = api_respond(s, 200, mime_for(real), buf, got);
	free(buf);
	return rc;
}

/* ---- dispatch --------------------------------------------------------------------- */

/* Run the route for s (its body, if any, is complete). */
static int
dispatch(struct srv *v, struct api_sess *s)
{
	char arg[128];
	int path_known = 0;
	for (size_t i = 0; i < N_ROUTES; i++) {
		if (!route_match(routes[i].pattern, s->path, arg, sizeof arg))
			continue;
		path_known = 1;
		if (routes[i].method != s->method)
			continue;
		if (!(routes[i].flags & R_NOAUTH) && !auth_ok(s)) {
			api_header(s, "www-authenticate:", "Bearer");
			return api_error(s, 401, "missing or wrong API key (Authorization: Bearer KEY)");
		}
		return routes[i].fn(s, arg[0] ? arg : NULL);
	}
	if (path_known)
		return api_error(s, 405, "method not allowed on %s", s->path);
	if (!strncmp(s->path, "/v1/", 4) || !strcmp(s->path, "/v1"))
		return api_error(s, 404, "no such endpoint: %s", s->path);
	if (s->method != API_GET)
		return api_error(s, 405, "method not allowed on %s", s->path);
	if (!auth_ok(s)) {
		api_header(s, "www-authenticate:", "Bearer");
		return api_error(s, 401, "missing or wrong API key (Authorization: Bearer KEY)");
	}
	return serve_static(v, s);
}

/* Does the route for this method and path take a body? */
static int
wants_body(const struct api_sess *s)
{
	char arg[128];
	for (size_t i = 0; i < N_ROUTES; i++)
		if (routes[i].method == s->method && (routes[i].flags & R_BODY) &&
		    route_match(routes[i].pattern, s->path, arg, sizeof arg))
			return 1;
	return 0;
}

/* Pop the session's events into its output (bounded backlog). */
static int
pump(struct api_sess *s)
{
	while (s->sub && !s->finished && s->out_len - s->out_off < PUMP_HIGH) {
		struct ev *e = bus_pop(s->sub);
		if (!e)
			break;
		if (!strcmp(e->job, s->job) &&
		    (e->type == EV_JOB_DONE || e->type == EV_JOB_FAILED))
			s->job_over = 1;
		int rc = s->on_event(s, e);
		ev_unref(e);
		if (rc < 0)
			return -1;
	}
	return 0;
}

/* HTTP WRITEABLE: headers, then body chunks.  Returns what the callback
 * returns. */
static int
http_writeable(struct srv *v, struct api_sess *s, struct lws *wsi, void **pss)
{
	if (pump(s) < 0)
		return -1;
	if (!s->responding)
		return 0;
	if (!s->headers_sent) {
		unsigned char buf[LWS_PRE + 1024], *start = buf + LWS_PRE, *p = start,
			*end = buf + sizeof buf - 1;
		lws_filepos_t clen = s->streaming ? LWS_ILLEGAL_HTTP_CONTENT_LEN
						  : (lws_filepos_t)(s->out_len - s->out_off);
		if (lws_add_http_common_headers(wsi, (unsigned)s->status, s->ctype, clen, &p, end))
			return -1;
		for (int i = 0; i < s->n_hdr; i++)
			if (lws_add_http_header_by_name(wsi, (const unsigned char *)s->hdr_name[i],
							(const unsigned char *)s->hdr_val[i],
							(int)strlen(s->hdr_val[i]), &p, end))
				return -1;
		if (s->streaming &&
		    lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
						(const unsigned char *)"no-cache", 8, &p, end))
			return -1;
		if (lws_finalize_write_http_header(wsi, start, &p, end))
			return -1;
		/* A stream may stay quiet for long: no pending timeout.  (lws's
		 * lws_http_mark_sse() does this too, but also tries to mark an h2
		 * stream immortal and logs an error on HTTP/1.) */
		if (s->streaming)
			lws_set_timeout(wsi, NO_PENDING_TIMEOUT, 0);
		s->headers_sent = 1;
		lws_callback_on_writable(wsi);
		return 0;
	}
	size_t rem = s->out_len - s->out_off;
	if (rem > 0) {
		unsigned char buf[LWS_PRE + OUT_CHUNK];
		size_t n = rem < OUT_CHUNK ? rem : OUT_CHUNK;
		memcpy(buf + LWS_PRE, s->out + s->out_off, n);
		int last = s->finished && n == rem && !s->streaming;
		int w = lws_write(wsi, buf + LWS_PRE, n, last ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP);
		if (w < 0)
			return -1;
		s->out_off += n;     /* lws keeps what the socket did not take */
		rem -= n;
		if (rem > 0 || !s->finished) {
			if (rem > 0 || s->sub)
				lws_callback_on_writable(wsi);
			return 0;
		}
	}
	if (!s->finished)
		return 0;
	/* the response is complete */
	if (s->streaming || s->close_after)
		return -1;
	sess_free(v, s);
	*pss = NULL;
	return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static enum api_method
method_of(struct lws *wsi)
{
	char *uri;
	int len;
	switch (lws_http_get_uri_and_method(wsi, &uri, &len)) {
	case LWSHUMETH_GET: return API_GET;
	case LWSHUMETH_POST: return API_POST;
	case LWSHUMETH_DELETE: return API_DELETE;
	default: return API_OTHER;
	}
}

static int
callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
	struct lws_context *lc = lws_get_context(wsi);
	struct srv *v = lc ? lws_context_user(lc) : NULL;
	void **pss = user;
	struct api_sess *s = pss ? *pss : NULL;

	switch (reason) {
	case LWS_CALLBACK_HTTP: {
		if (s) {             /* a previous transaction left state */
			sess_free(v, s);
			*pss = NULL;
		}
		s = sess_new(v, wsi);
		if (!s)
			return -1;
		*pss = s;
		s->method = method_of(wsi);
		snprintf(s->path, sizeof s->path, "%s", in ? (const char *)in : "/");
		if (!s->path[0])
			snprintf(s->path, sizeof s->path, "/");
		if (s->method == API_POST && wants_body(s)) {
			char cl[32];
			unsigned long long n = 0;
			if (api_header_in(s, WSI_TOKEN_HTTP_CONTENT_LENGTH, cl, sizeof cl))
				n = strtoull(cl, NULL, 10);
			if (n > s->ctx->p.max_body) {
				s->close_after = 1;
				return api_error(s, 413, "request body of %llu bytes is over the limit of %zu",
						 n, s->ctx->p.max_body) < 0 ? -1 : 0;
			}
			char te[64];
			if (n > 0 || api_header_in(s, WSI_TOKEN_HTTP_TRANSFER_ENCODING, te, sizeof te))
				return 0;    /* wait for the body */
		}
		return dispatch(v, s) < 0 ? -1 : 0;
	}
	case LWS_CALLBACK_HTTP_BODY:
		if (!s || s->responding)
			return 0;
		if (s->body_len + len > s->ctx->p.max_body) {
			s->close_after = 1;
			return api_error(s, 413, "request body over the limit of %zu bytes",
					 s->ctx->p.max_body) < 0 ? -1 : 0;
		}
		{
			char *b = realloc(s->body, s->body_len + len + 1);
			if (!b)
				return -1;
			s->body = b;
			memcpy(s->body + s->body_len, in, len);
			s->body_len += len;
			s->body[s->body_len] = 0;
		}
		return 0;
	case LWS_CALLBACK_HTTP_BODY_COMPLETION:
		if (!s || s->responding)
			return 0;
		return dispatch(v, s) < 0 ? -1 : 0;
	case LWS_CALLBACK_HTTP_WRITEABLE:
		if (!s)
			return 0;
		return http_writeable(v, s, wsi, pss);
	case LWS_CALLBACK_CLOSED_HTTP:
		if (s) {
			sess_free(v, s);
			*pss = NULL;
		}
		return 0;

	case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE: {
		struct api_sess tmp = { .ctx = &v->ctx, .wsi = wsi };
		char *uri;
		int ulen;
		if (lws_http_get_uri_and_method(wsi, &uri, &ulen) != LWSHUMETH_GET ||
		    ulen != 10 || strncmp(uri, "/v1/events", 10)) {
			lws_return_http_status(wsi, 404, "no websocket here: use /v1/events");
			return 1;
		}
		if (!auth_ok(&tmp)) {
			v->ctx.http_by_code[401]++;
			lws_return_http_status(wsi, 401, "missing or wrong API key");
			return 1;
		}
		if (!origin_ok(&tmp)) {
			v->ctx.http_by_code[403]++;
			lws_return_http_status(wsi, 403, "cross-origin websocket refused");
			return 1;
		}
		return 0;
	}
	case LWS_CALLBACK_ESTABLISHED:
		s = sess_new(v, wsi);
		if (!s)
			return -1;
		*pss = s;
		s->is_ws = 1;
		snprintf(s->path, sizeof s->path, "/v1/events");
		v->ctx.http_by_code[101]++;
		return api_ws_open(s) < 0 ? -1 : 0;
	case LWS_CALLBACK_SERVER_WRITEABLE:
		return s ? api_ws_writeable(s) : 0;
	case LWS_CALLBACK_RECEIVE:
		return 0;            /* clients have nothing to say yet */
	case LWS_CALLBACK_CLOSED:
		if (s) {
			sess_free(v, s);
			*pss = NULL;
		}
		return 0;

	case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
		if (!v)
			return 0;
		for (struct api_sess *it = v->sessions; it; it = it->next)
			if (atomic_exchange(&it->wake, 0))
				lws_callback_on_writable(it->wsi);
		return 0;
	default:
		break;
	}
	return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static const struct lws_protocols protocols[] = {
	{ "braid", callback, sizeof(void *), 0, 0, NULL, 0 },
	{ NULL, NULL, 0, 0, 0, NULL, 0 },
};

/* ---- the service thread --------------------------------------------------------- */

static void *
service_main(void *arg)
{
	struct srv *v = arg;
	while (!atomic_load(&v->stop))
		if (lws_service(v->lws, 0) < 0)
			break;
	return NULL;
}

struct srv_params
srv_default_params(void)
{
	struct srv_params p = {
		.host = "127.0.0.1",
		.port = 8080,
		.api_key = NULL,
		.web_root = BRAID_WEB_ROOT,
		.max_body = 1 << 20,
		.ws_queue = 4096,
		.model_name = NULL,
	};
	return p;
}

static int
is_loopback(const char *host)
{
	return !strcmp(host, "127.0.0.1") || !strcmp(host, "localhost") || !strcmp(host, "::1") ||
	       !strncmp(host, "127.", 4);
}

static char *
dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

static void
free_params(struct srv_params *p)
{
	free((char *)p->host);
	free((char *)p->api_key);
	free((char *)p->web_root);
	free((char *)p->model_name);
}

srv *
srv_start(const struct srv_params *p, sched *s, bus *b, store *st, char *err, size_t errlen)
{
	struct srv_params d = srv_default_params();
	srv *v = calloc(1, sizeof *v);
	if (!v) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (!p)
		p = &d;
	v->ctx.sched = s;
	v->ctx.bus = b;
	v->ctx.store = st;
	v->ctx.started_ms = ev_now_ms();
	v->ctx.p = *p;
	v->ctx.p.host = strdup(p->host && *p->host ? p->host : d.host);
	v->ctx.p.api_key = p->api_key && *p->api_key ? strdup(p->api_key) : NULL;
	v->ctx.p.web_root = strdup(p->web_root ? p->web_root : d.web_root);
	v->ctx.p.model_name = dup_or_null(p->model_name);
	if (!v->ctx.p.max_body)
		v->ctx.p.max_body = d.max_body;
	if (!v->ctx.p.ws_queue)
		v->ctx.p.ws_queue = d.ws_queue;
	atomic_init(&v->stop, 0);
	if (!v->ctx.p.host || !v->ctx.p.web_root) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	if (!is_loopback(v->ctx.p.host) && !v->ctx.p.api_key) {
		snprintf(err, errlen, "%s: refusing to serve a non-loopback address without an API key (--api-key)",
			 v->ctx.p.host);
		goto fail;
	}
	if (!realpath(v->ctx.p.web_root, v->web_root_real)) {
		snprintf(err, errlen, "%s: web root: %s", v->ctx.p.web_root, strerror(errno));
		goto fail;
	}
	snprintf(v->ctx.model, sizeof v->ctx.model, "%s",
		 v->ctx.p.model_name && *v->ctx.p.model_name ? v->ctx.p.model_name : "braid");

	lws_set_log_level(LLL_ERR, NULL);
	struct lws_context_creation_info info;
	memset(&info, 0, sizeof info);
	info.port = p->port < 0 ? 0 : p->port;
	info.iface = v->ctx.p.host;
	info.protocols = protocols;
	info.user = v;
	info.options = LWS_SERVER_OPTION_VALIDATE_UTF8 | LWS_SERVER_OPTION_DISABLE_IPV6;
	if (strchr(v->ctx.p.host, ':'))
		info.options &= ~(uint64_t)LWS_SERVER_OPTION_DISABLE_IPV6;
	info.max_http_header_data = 8192;
	info.timeout_secs = 30;
	v->lws = lws_create_context(&info);
	if (!v->lws) {
		snprintf(err, errlen, "%s:%d: cannot listen (address in use or not local?)", v->ctx.p.host,
			 p->port);
		goto fail;
	}
	v->ctx.lws = v->lws;
	struct lws_vhost *vh = lws_get_vhost_by_name(v->lws, "default");
	v->port = vh ? lws_get_vhost_listen_port(vh) : p->port;
	if (v->port <= 0) {
		snprintf(err, errlen, "%s:%d: cannot listen", v->ctx.p.host, p->port);
		goto fail;
	}
	v->ctx.p.port = v->port;
	snprintf(v->ctx.host_port, sizeof v->ctx.host_port, "%s:%d", v->ctx.p.host, v->port);
	if (pthread_create(&v->thread, NULL, service_main, v)) {
		snprintf(err, errlen, "cannot start the server thread");
		goto fail;
	}
	v->thread_started = 1;
	return v;
fail:
	if (v->lws)
		lws_context_destroy(v->lws);
	free_params(&v->ctx.p);
	free(v);
	return NULL;
}

int
srv_port(const srv *v)
{
	return v ? v->port : -1;
}

void
srv_stop(srv *v)
{
	if (!v)
		return;
	atomic_store(&v->stop, 1);
	lws_cancel_service(v->lws);
	if (v->thread_started)
		pthread_join(v->thread, NULL);
	/* closes every connection (CLOSED callbacks free the sessions) */
	lws_context_destroy(v->lws);
	while (v->sessions)
		sess_free(v, v->sessions);
	free_params(&v->ctx.p);
	free(v);
}
