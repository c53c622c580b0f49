/* server.h - the HTTP/WebSocket server (srv_): one libwebsockets context,
 * one service thread that owns every socket.  Routes, mounts and protocols
 * are static tables.  Other threads reach it only through bus wake-ups
 * (lws_cancel_service); writes happen only in WRITEABLE callbacks.
 *
 * Routes (DESIGN.md): POST/GET /v1/jobs, GET/DELETE /v1/jobs/{id},
 * GET /v1/jobs/{id}/events (JSON trace; SSE with Accept: text/event-stream),
 * POST /v1/chat/completions, GET /v1/models, WS /v1/events[?job=ID],
 * GET /healthz, GET /metrics, static files from the web root at /. */
#ifndef BRAID_SERVER_H
#define BRAID_SERVER_H

#include <stddef.h>

#include "bus.h"
#include "sched.h"
#include "store.h"

typedef struct srv srv;

struct srv_params {
	const char *host;          /* bind address; default "127.0.0.1"           */
	int port;                  /* default 8080; 0 = any free port              */
	const char *api_key;       /* Bearer token; required unless host is loopback */
	const char *web_root;      /* static files; default the tree's web/         */
	size_t max_body;           /* request body cap in bytes; default 1 MiB     */
	size_t ws_queue;           /* events queued per websocket client; default 4096 */
	const char *model_name;    /* for /v1/models and slugs; default the dir's name */
};

struct srv_params srv_default_params(void);

/* Bind and start serving on its own thread.  NULL and err on failure
 * (address in use, non-loopback host without api_key, ...). */
srv *srv_start(const struct srv_params *p, sched *s, bus *b, store *st, char *err, size_t errlen);

/* The port actually bound (useful with port 0). */
int srv_port(const srv *v);

/* Stop serving, close every connection, join the thread.  NULL is fine. */
void srv_stop(srv *v);

#endif
