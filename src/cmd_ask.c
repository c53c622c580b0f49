/* cmd_ask.c - braid ask: one question as one job (in-process, or on a daemon
 * with --server); its threads stream in the terminal, then the answer and
 * the votes.  Main thread; the in-process engine runs on the scheduler's
 * thread.  On a terminal each thread has one line redrawn in place (the
 * tail of its text and its token count); otherwise every thread.delta is
 * printed as it arrives, "[T] text" with newlines escaped. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"
#include "client.h"
#include "job.h"
#include "status.h"
#include "strategy.h"

static const struct cli_opt opts[] = {
	{ "strategy", "S", "reasoning strategy: single, sc, ... (default sc)" },
	{ "n", "N", "threads (default 8)" },
	{ "server", "URL", "run the job on a braid daemon instead of in-process" },
	{ "api-key", "K", "the daemon's API key (default: $BRAID_API_KEY)" },
	{ "model", "DIR", "model directory (default: the embedded model)" },
	{ "max-tokens", "N", "tokens per thread, at most (default 512)" },
	{ "temperature", "T", "sampling temperature; 0 = greedy (default 0.8)" },
	{ "top-p", "P", "nucleus sampling mass in (0, 1] (default 0.95)" },
	{ "seed", "S", "random seed of the first thread (default 0)" },
	CLI_OPT_DEVICE,
	CLI_OPT_KV_MB,
	{ "threads", "N", "CPU threads for the engine (default: all cores)" },
};
#define N_OPTS ((int)(sizeof opts / sizeof opts[0]))
static const char synopsis[] =
	"\"question\" [--strategy S] [-n N] [--server URL] [--model DIR] [--max-tokens N] [--temperature T] [--seed S]";

#define OPT(name) cli_get(opts, N_OPTS, &a, name)

#define TAIL_MAX 1024    /* bytes of each thread's text kept for its line */

/* What the terminal shows of one thread. */
struct tline {
	char tail[TAIL_MAX + 1];
	size_t len;
	long tokens;
	char state[48];       /* "" while decoding, else how it ended */
};

struct view {
	struct tline *t;
	int n;
	int tty, width, height;
	int drawn;            /* lines drawn last time (to move back over) */
	double last_draw;
};

static struct tline *
view_thread(struct view *v, int i)
{
	if (i < 0 || i >= 4096)
		return NULL;
	if (i >= v->n) {
		struct tline *nt = realloc(v->t, (size_t)(i + 1) * sizeof *nt);
		if (!nt)
			return NULL;
		memset(nt + v->n, 0, (size_t)(i + 1 - v->n) * sizeof *nt);
		v->t = nt;
		v->n = i + 1;
	}
	return &v->t[i];
}

/* Keep the last TAIL_MAX bytes of a thread's text. */
static void
tail_append(struct tline *t, const char *s)
{
	size_t n = strlen(s);
	if (n >= TAIL_MAX) {
		s += n - TAIL_MAX;
		n = TAIL_MAX;
		t->len = 0;
	} else if (t->len + n > TAIL_MAX) {
		size_t drop = t->len + n - TAIL_MAX;
		memmove(t->tail, t->tail + drop, t->len - drop);
		t->len -= drop;
	}
	memcpy(t->tail + t->len, s, n);
	t->len += n;
	t->tail[t->len] = 0;
}

/* The last `cols` characters of s on one line: control characters become
 * spaces, and the cut falls on a UTF-8 character boundary. */
static void
put_tail(const char *s, size_t len, int cols)
{
	size_t start = len, chars = 0;
	while (start > 0 && chars < (size_t)cols) {
		start--;
		if (((unsigned char)s[start] & 0xc0) != 0x80)
			chars++;
	}
	while (start < len && ((unsigned char)s[start] & 0xc0) == 0x80)
		start++;
	for (size_t i = start; i < len; i++) {
		unsigned char ch = (unsigned char)s[i];
		putchar(ch < 0x20 || ch == 0x7f ? ' ' : ch);
	}
}

/* Redraw every thread's line in place (at most once per 80 ms unless
 * forced). */
static void
view_draw(struct view *v, int force)
{
	double now = cli_now();
	if (!v->tty || (!force && now - v->last_draw < 0.08))
		return;
	v->last_draw = now;
	if (v->drawn > 0)
		printf("\033[%dA", v->drawn);
	int rows = v->n, extra = 0;
	if (v->height > 3 && rows > v->height - 2) {
		rows = v->height - 3;
		extra = v->n - rows;
	}
	for (int i = 0; i < rows; i++) {
		struct tline *t = &v->t[i];
		char head[96];
		int hl = snprintf(head, sizeof head, "[%2d] %5ld tok %-10.10s | ", i, t->tokens,
				  t->state[0] ? t->state : "");
		fputs("\r\033[K", stdout);
		fputs(head, stdout);
		int cols = v->width - hl - 1;
		if (cols > 0)
			put_tail(t->tail, t->len, cols);
		putchar('\n');
	}
	if (extra)
		printf("\r\033[K... and %d more threads\n", extra);
	v->drawn = rows + (extra > 0);
	fflush(stdout);
}

/* Plain output: one line per event, text with newlines escaped. */
static void
plain_delta(int thread, const char *text)
{
	if (!*text)
		return;
	printf("[%d] ", thread);
	for (const char *p = text; *p; p++) {
		if (*p == '\n')
			fputs("\\n", stdout);
		else if (*p == '\r')
			fputs("\\r", stdout);
		else if (*p == '\t')
			fputs("\\t", stdout);
		else if ((unsigned char)*p >= 0x20 && *p != 0x7f)
			putchar(*p);
	}
	putchar('\n');
}

/* Handle one event of our job; returns 1 when the job ended (0 done, and
 * *failed set for job.failed). */
static int
on_event(struct view *v, const json_t *ev, int *failed)
{
	const char *type = json_string_value(json_object_get(ev, "type"));
	json_t *jt = json_object_get(ev, "thread");
	int th = json_is_integer(jt) ? (int)json_integer_value(jt) : -1;
	struct tline *t = th >= 0 ? view_thread(v, th) : NULL;
	if (!type)
		return 0;
	if (!strcmp(type, "thread.delta") && t) {
		const char *text = json_string_value(json_object_get(ev, "text"));
		t->tokens = (long)json_integer_value(json_object_get(ev, "tokens"));
		if (text) {
			tail_append(t, text);
			if (!v->tty)
				plain_delta(th, text);
		}
		view_draw(v, 0);
	} else if (!strcmp(type, "thread.spawned") && t) {
		if (!v->tty)
			printf("[%d] spawned\n", th);
		view_draw(v, 1);
	} else if (!strcmp(type, "thread.pruned") && t) {
		const char *why = json_string_value(json_object_get(ev, "reason"));
		snprintf(t->state, sizeof t->state, "pruned");
		if (!v->tty)
			printf("[%d] pruned: %s\n", th, why ? why : "");
		view_draw(v, 1);
	} else if (!strcmp(type, "thread.done") && t) {
		const char *fin = json_string_value(json_object_get(ev, "finish_reason"));
		const char *ans = json_string_value(json_object_get(ev, "answer"));
		if (strcmp(t->state, "pruned"))
			snprintf(t->state, sizeof t->state, "%s", fin ? fin : "done");
		t->tokens = (long)json_integer_value(json_object_get(ev, "tokens"));
		if (!v->tty)
			printf("[%d] done (%s, %ld tokens): answer %s\n", th, fin ? fin : "?", t->tokens,
			       ans ? ans : "(none)");
		view_draw(v, 1);
	} else if (!strcmp(type, "job.done")) {
		view_draw(v, 1);
		const char *ans = json_string_value(json_object_get(ev, "answer"));
		json_t *votes = json_object_get(ev, "votes");
		char *vs = votes ? json_dumps(votes, JSON_COMPACT) : NULL;
		printf("answer: %s\n", ans ? ans : "(none)");
		printf("votes: %s\n", vs ? vs : "{}");
		printf("tokens: %lld, %lld ms\n", (long long)json_integer_value(json_object_get(ev, "tokens")),
		       (long long)json_integer_value(json_object_get(ev, "ms")));
		free(vs);
		return 1;
	} else if (!strcmp(type, "job.failed")) {
		view_draw(v, 1);
		const char *why = json_string_value(json_object_get(ev, "reason"));
		fflush(stdout);
		fprintf(stderr, "braid ask: the job failed: %s\n", why ? why : "no reason given");
		*failed = 1;
		return 1;
	}
	return 0;
}

int
cmd_ask(int argc, char **argv)
{
	struct cli_args a;
	int pr = cli_parse("ask", synopsis, opts, N_OPTS, argc, argv, &a);
	if (pr != 0)
		return pr > 0 ? 0 : 2;
	if (a.n_pos != 1 || !*a.pos[0]) {
		fprintf(stderr, "braid ask: give one question, quoted (see 'braid ask --help')\n");
		return 2;
	}
	struct job_req req;
	job_req_init(&req);
	struct cl_params cp = cl_default_params();
	if (cli_job_opts("ask", opts, N_OPTS, &a, &req, &cp) < 0)
		return 2;

	struct view v;
	memset(&v, 0, sizeof v);
	v.tty = isatty(STDOUT_FILENO);
	v.width = 80;
	v.height = 24;
	struct winsize ws;
	if (v.tty && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 20) {
		v.width = ws.ws_col;
		v.height = ws.ws_row;
	}

	int rc = 1;
	cl *c = NULL;
	char err[ENG_ERRLEN] = "";
	req.question = strdup(a.pos[0]);
	if (!req.question) {
		fprintf(stderr, "braid ask: out of memory\n");
		goto out;
	}
	cli_catch_signals();

	cp.deltas = 1;
	c = cl_create(&cp, err, sizeof err);
	if (!c) {
		fprintf(stderr, "braid ask: %s\n", err);
		goto out;
	}
	if (cl_submit(c, &req, err, sizeof err) < 0) {
		fprintf(stderr, "braid ask: %s\n", err[0] ? err : "the job was refused");
		goto out;
	}
	char job[EV_JOB_ID_MAX];
	memcpy(job, req.id, sizeof job);
	int ended = 0, failed = 0, cancelled = 0;
	double give_up = 0;
	while (!ended) {
		if (cli_interrupted && !cancelled) {
			cancelled = 1;
			give_up = cli_now() + 10;
			cl_cancel(c, job);
		}
		if (cancelled && cli_now() > give_up)
			break;
		json_t *ev = cl_next(c, 100);
		if (ev && !strcmp(json_string_value(json_object_get(ev, "job")) ?
				  json_string_value(json_object_get(ev, "job")) : "", job))
			ended = on_event(&v, ev, &failed);
		json_decref(ev);
		view_draw(&v, 0);
	}
	fflush(stdout);
	rc = cli_interrupted ? 130 : failed ? 1 : 0;
out:
	cl_destroy(c);
	job_req_free(&req);
	free(v.t);
	return rc;
}
