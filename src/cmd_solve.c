/* cmd_solve.c - braid solve: run a JSONL problem set through the scheduler
 * (in-process, or a daemon with --server), append one result line per
 * problem as it finishes, resume after a crash, write a report.  Main
 * thread; the in-process engine runs on the scheduler's thread.
 *
 * Problem lines: {"id"?, "question"|"problem"|"prompt", "answer"?}.  A line
 * that is not such an object (or repeats an earlier id) is reported as
 * FILE:LINE and skipped; the rest still run, and the exit status is then 1.
 * Exit status: 0 every problem has a result; 1 some failed or were skipped;
 * 2 bad usage; 130 interrupted (results so far are kept).
 *
 * --out gets one line per finished problem, written with one write() on an
 * O_APPEND fd and fsynced: {id, answer, gold, correct (only when the gold is
 * known), tokens, ms, strategy, n, votes, job}.  A failed job writes no line,
 * so a rerun tries it again; a rerun skips the ids already in --out, after
 * cutting away a torn last line.  --report (written at the end, also after
 * Ctrl-C; replaced atomically) counts every problem of the file, results of
 * earlier runs included: problems, done, correct, graded (with a gold),
 * accuracy (correct / graded, null when none is graded), tokens_total,
 * wall_s (this run), latency_ms_p50/p95 (nearest rank over the results' ms),
 * strategy, n, failed (jobs that failed in this run), resumed (results found
 * in --out at the start), skipped_lines, interrupted. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "answer.h"
#include "cli.h"
#include "client.h"
#include "job.h"
#include "status.h"
#include "strategy.h"

static const struct cli_opt opts[] = {
	{ "strategy", "S", "reasoning strategy: single, sc, ... (default sc)" },
	{ "params", "JSON", "the strategy's parameters as a JSON object, e.g. '{\"mode\":\"offline\"}'" },
	{ "n", "N", "threads per problem (default 8)" },
	{ "out", "FILE", "append one result line per problem; rerunning resumes (default: stdout)" },
	{ "report", "FILE", "write the summary JSON here at the end" },
	{ "server", "URL", "run the jobs on a braid daemon instead of in-process" },
	{ "api-key", "K", "the daemon's API key (default: $BRAID_API_KEY)" },
	{ "model", "DIR", "model directory (default: the embedded model)" },
	{ "max-tokens", "N", "tokens per thread, at most (default 512)" },
	{ "temperature", "T", "sampling temperature; 0 = greedy (default 0.8)" },
	{ "top-p", "P", "nucleus sampling mass in (0, 1] (default 0.95)" },
	{ "seed", "S", "random seed of every problem's first thread (default 0)" },
	{ "concurrency", "C", "problems in flight (default: the scheduler's max running jobs)" },
	CLI_OPT_DEVICE,
	CLI_OPT_KV_MB,
	{ "threads", "N", "CPU threads for the engine (default: all cores)" },
};
#define N_OPTS ((int)(sizeof opts / sizeof opts[0]))
static const char synopsis[] =
	"FILE.jsonl [--strategy S] [-n N] [--out results.jsonl] [--report report.json] [--server URL] "
	"[--model DIR] [--max-tokens N] [--temperature T] [--seed S] [--concurrency C] [--device D]";

#define OPT(name) cli_get(opts, N_OPTS, &a, name)

/* One problem of the file. */
struct problem {
	json_t *id;          /* the id as given (or the line number)          */
	char *key;           /* id as compact JSON: the resume key            */
	char *question;
	char *gold;          /* NULL when unknown                             */
	int line;
	/* its result, from --out or from this run */
	int done;
	int correct;         /* 1, 0, or -1 when there is no gold             */
	long long tokens, ms;
};

struct problems {
	struct problem *v;
	int n;
	int bad_lines;
	struct problem **by_key;   /* sorted by key                          */
};

static int
key_cmp(const void *x, const void *y)
{
	return strcmp((*(struct problem *const *)x)->key, (*(struct problem *const *)y)->key);
}

static struct problem *
problem_find(struct problems *ps, const char *key)
{
	struct problem probe = { .key = (char *)key }, *pp = &probe;
	struct problem **hit = bsearch(&pp, ps->by_key, (size_t)ps->n, sizeof *ps->by_key, key_cmp);
	return hit ? *hit : NULL;
}

static void
problems_free(struct problems *ps)
{
	for (int i = 0; i < ps->n; i++) {
		json_decref(ps->v[i].id);
		free(ps->v[i].key);
		free(ps->v[i].question);
		free(ps->v[i].gold);
	}
	free(ps->v);
	free(ps->by_key);
	memset(ps, 0, sizeof *ps);
}

/* Parse one problem line into p; NULL, or the reason it is malformed. */
static const char *
problem_parse(const char *line, int lineno, struct problem *p, char *why, size_t wlen)
{
	json_error_t jerr;
	json_t *o = json_loads(line, JSON_REJECT_DUPLICATES, &jerr);
	const char *reason = NULL;
	memset(p, 0, sizeof *p);
	p->line = lineno;
	if (!o) {
		snprintf(why, wlen, "not valid JSON: %s", jerr.text);
		return why;
	}
	if (!json_is_object(o)) {
		reason = "not a JSON object";
		goto out;
	}
	const char *q = NULL;
	static const char *const fields[] = { "question", "problem", "prompt" };
	for (size_t i = 0; i < 3 && !q; i++) {
		json_t *v = json_object_get(o, fields[i]);
		if (v && !json_is_string(v)) {
			snprintf(why, wlen, "\"%s\" is not a string", fields[i]);
			reason = why;
			goto out;
		}
		q = json_string_value(v);
	}
	if (!q || !*q) {
		reason = "no question (\"question\", \"problem\" or \"prompt\")";
		goto out;
	}
	json_t *id = json_object_get(o, "id");
	if (id && !json_is_string(id) && !json_is_integer(id)) {
		reason = "\"id\" is neither a string nor an integer";
		goto out;
	}
	if (id && json_is_string(id) && !json_string_length(id)) {
		reason = "\"id\" is empty";
		goto out;
	}
	json_t *ans = json_object_get(o, "answer");
	if (ans && !json_is_null(ans) && !json_is_string(ans) && !json_is_number(ans)) {
		reason = "\"answer\" is neither a string nor a number";
		goto out;
	}
	p->id = id ? json_incref(id) : json_integer(lineno);
	p->key = json_dumps(p->id, JSON_ENCODE_ANY | JSON_COMPACT);
	p->question = strdup(q);
	p->gold = ans_gold(o);
	p->correct = -1;
	if (!p->id || !p->key || !p->question)
		reason = "out of memory";
out:
	json_decref(o);
	if (reason && p->id) {
		json_decref(p->id);
		free(p->key);
		free(p->question);
		free(p->gold);
		memset(p, 0, sizeof *p);
	}
	return reason;
}

/* Read the problem file; malformed lines and repeated ids are reported and
 * skipped.  -1 when the file cannot be read. */
static int
problems_load(const char *path, struct problems *ps)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "braid solve: %s: %s\n", path, strerror(errno));
		return -1;
	}
	char *line = NULL, why[256];
	size_t cap = 0, vcap = 0;
	ssize_t len;
	int lineno = 0, rc = -1;
	while ((len = getline(&line, &cap, f)) >= 0) {
		lineno++;
		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' ||
				   line[len - 1] == ' ' || line[len - 1] == '\t'))
			line[--len] = 0;
		if (len == 0)
			continue;
		if ((size_t)len != strlen(line)) {
			fprintf(stderr, "braid solve: %s:%d: a NUL byte inside the line (skipped)\n", path, lineno);
			ps->bad_lines++;
			continue;
		}
		if ((size_t)ps->n == vcap) {
			vcap = vcap ? vcap * 2 : 256;
			struct problem *nv = realloc(ps->v, vcap * sizeof *nv);
			if (!nv)
				goto out;
			ps->v = nv;
		}
		const char *bad = problem_parse(line, lineno, &ps->v[ps->n], why, sizeof why);
		if (bad) {
			fprintf(stderr, "braid solve: %s:%d: %s (skipped)\n", path, lineno, bad);
			ps->bad_lines++;
			continue;
		}
		ps->n++;
	}
	if (ferror(f)) {
		fprintf(stderr, "braid solve: %s: %s\n", path, strerror(errno));
		goto out;
	}
	/* index by key; a repeated id would make resuming ambiguous */
	ps->by_key = malloc(((size_t)ps->n + 1) * sizeof *ps->by_key);
	if (!ps->by_key)
		goto out;
	for (int i = 0; i < ps->n; i++)
		ps->by_key[i] = &ps->v[i];
	qsort(ps->by_key, (size_t)ps->n, sizeof *ps->by_key, key_cmp);
	int w = 0;
	for (int i = 0; i < ps->n; i++) {
		if (w > 0 && !strcmp(ps->by_key[w - 1]->key, ps->by_key[i]->key)) {
			struct problem *dup = ps->by_key[i], *first = ps->by_key[w - 1];
			if (dup->line < first->line) {
				ps->by_key[w - 1] = dup;
				dup = first;
			}
			fprintf(stderr, "braid solve: %s:%d: id %s repeats line %d's (skipped)\n", path,
				dup->line, dup->key, ps->by_key[w - 1]->line);
			ps->bad_lines++;
			dup->line = -dup->line;   /* marked: dropped below */
			continue;
		}
		ps->by_key[w++] = ps->by_key[i];
	}
	/* compact the problems in file order, dropping the repeats */
	int k = 0;
	for (int i = 0; i < ps->n; i++) {
		if (ps->v[i].line < 0) {
			json_decref(ps->v[i].id);
			free(ps->v[i].key);
			free(ps->v[i].question);
			free(ps->v[i].gold);
			continue;
		}
		ps->v[k++] = ps->v[i];
	}
	ps->n = k;
	for (int i = 0; i < ps->n; i++)
		ps->by_key[i] = &ps->v[i];
	qsort(ps->by_key, (size_t)ps->n, sizeof *ps->by_key, key_cmp);
	rc = 0;
out:
	if (rc < 0 && !ferror(f))
		fprintf(stderr, "braid solve: out of memory\n");
	free(line);
	fclose(f);
	return rc;
}

/* Take a result line's numbers into its problem. */
static void
problem_take_result(struct problem *p, const json_t *r)
{
	json_t *c = json_object_get(r, "correct");
	p->done = 1;
	p->correct = json_is_boolean(c) ? json_is_true(c) : -1;
	p->tokens = json_integer_value(json_object_get(r, "tokens"));
	p->ms = json_integer_value(json_object_get(r, "ms"));
}

/* ---- --out: resume, then append -------------------------------------------------------- */

/* Read the results already in path: mark their problems done and cut a
 * partial last line (a crash mid-write) away.  Returns how many results
 * matched a problem, or -1 (message printed) when the file is not ours. */
static int
out_resume(const char *path, struct problems *ps, const char *strategy)
{
	int fd = open(path, O_RDWR);
	if (fd < 0)
		return errno == ENOENT ? 0 : (fprintf(stderr, "braid solve: %s: %s\n", path, strerror(errno)), -1);
	FILE *f = fdopen(fd, "r");
	if (!f) {
		close(fd);
		fprintf(stderr, "braid solve: %s: %s\n", path, strerror(errno));
		return -1;
	}
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	off_t good = 0;
	int lineno = 0, matched = 0, rc = -1, warned = 0;
	while ((len = getline(&line, &cap, f)) >= 0) {
		lineno++;
		if (line[len - 1] != '\n')
			break;                      /* partial last line: cut below */
		json_t *r = json_loadb(line, (size_t)len, 0, NULL);
		json_t *id = json_object_get(r, "id");
		if (!json_is_object(r) || !id) {
			json_decref(r);
			fprintf(stderr, "braid solve: %s:%d: not a result line; move the file away or fix it\n",
				path, lineno);
			goto out;
		}
		good += len;
		char *key = json_dumps(id, JSON_ENCODE_ANY | JSON_COMPACT);
		struct problem *p = key ? problem_find(ps, key) : NULL;
		free(key);
		if (p && !p->done) {
			problem_take_result(p, r);
			matched++;
		}
		const char *st = json_string_value(json_object_get(r, "strategy"));
		if (st && strcmp(st, strategy) && !warned++)
			fprintf(stderr, "braid solve: warning: %s holds results of strategy %s; adding %s\n",
				path, st, strategy);
		json_decref(r);
	}
	if (ferror(f)) {
		fprintf(stderr, "braid solve: %s: %s\n", path, strerror(errno));
		goto out;
	}
	struct stat sb;
	if (fstat(fd, &sb) == 0 && sb.st_size > good) {
		fprintf(stderr, "braid solve: %s: dropping a partial last line (%lld bytes)\n", path,
			(long long)(sb.st_size - good));
		if (ftruncate(fd, good) < 0 || fsync(fd) < 0) {
			fprintf(stderr, "braid solve: %s: %s\n", path, strerror(errno));
			goto out;
		}
	}
	rc = matched;
out:
	free(line);
	fclose(f);
	return rc;
}

/* Append one line with one write() (O_APPEND), then fsync. */
static int
out_append(int fd, int sync, const char *text)
{
	size_t len = strlen(text), off = 0;
	while (off < len) {
		ssize_t w = write(fd, text + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		off += (size_t)w;
	}
	return sync && fsync(fd) < 0 && errno != EINVAL ? -1 : 0;
}

/* ---- progress ---------------------------------------------------------------------------- */

struct tally {
	int total, done, correct, graded, failed, resumed;
	long long run_done, run_tokens;   /* this run only (for rates)   */
	double t0;
	int tty;
	double last_draw;
};

static void
tally_add(struct tally *t, const struct problem *p)
{
	t->done++;
	if (p->correct >= 0) {
		t->graded++;
		t->correct += p->correct;
	}
}

/* One line redrawn in place on a terminal. */
static void
progress_bar(struct tally *t, int force)
{
	double now = cli_now();
	if (!t->tty || (!force && now - t->last_draw < 0.2))
		return;
	t->last_draw = now;
	double el = now - t->t0;
	char bar[21], acc[32] = "-", eta[32] = "-";
	int fill = t->total ? (int)(20.0 * t->done / t->total) : 20;
	for (int i = 0; i < 20; i++)
		bar[i] = i < fill ? '#' : '.';
	bar[20] = 0;
	if (t->graded)
		snprintf(acc, sizeof acc, "%.1f%%", 100.0 * t->correct / t->graded);
	int left = t->total - t->done - t->failed;
	if (t->run_done > 0 && left > 0) {
		long s = lround(el / (double)t->run_done * left);
		snprintf(eta, sizeof eta, "%ld:%02ld", s / 60, s % 60);
	} else if (left <= 0) {
		snprintf(eta, sizeof eta, "0:00");
	}
	fprintf(stderr, "\r\033[K[%s] %d/%d  acc %s  %.1f tok/s  ETA %s", bar, t->done, t->total, acc,
		el > 0 ? t->run_tokens / el : 0.0, eta);
	if (t->failed)
		fprintf(stderr, "  failed %d", t->failed);
	fflush(stderr);
}

/* A message on its own line, keeping the bar below it. */
static void
progress_say(struct tally *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void
progress_say(struct tally *t, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	if (t->tty)
		fputs("\r\033[K", stderr);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	progress_bar(t, 1);
}

/* ---- the report -------------------------------------------------------------------------- */

static int
ll_cmp(const void *x, const void *y)
{
	long long a = *(const long long *)x, b = *(const long long *)y;
	return (a > b) - (a < b);
}

/* Nearest-rank percentile of sorted v[n]. */
static long long
percentile(const long long *v, int n, double q)
{
	if (n == 0)
		return 0;
	int k = (int)ceil(q * n) - 1;
	return v[k < 0 ? 0 : k >= n ? n - 1 : k];
}

static int
report_write(const char *path, const struct problems *ps, const struct tally *t,
	     const char *strategy, int n, double wall_s)
{
	long long *ms = malloc(((size_t)ps->n + 1) * sizeof *ms), tokens = 0;
	int nd = 0, rc = -1;
	json_t *o = NULL;
	char tmp[4096];
	if (!ms)
		goto out;
	for (int i = 0; i < ps->n; i++) {
		if (!ps->v[i].done)
			continue;
		ms[nd++] = ps->v[i].ms;
		tokens += ps->v[i].tokens;
	}
	qsort(ms, (size_t)nd, sizeof *ms, ll_cmp);
	o = json_pack("{s:i, s:i, s:i, s:i, s:o, s:I, s:f, s:I, s:I, s:s, s:i, s:i, s:i, s:i, s:b}",
		      "problems", ps->n, "done", nd, "correct", t->correct, "graded", t->graded,
		      "accuracy", t->graded ? json_real((double)t->correct / t->graded) : json_null(),
		      "tokens_total", (json_int_t)tokens, "wall_s", wall_s,
		      "latency_ms_p50", (json_int_t)percentile(ms, nd, 0.50),
		      "latency_ms_p95", (json_int_t)percentile(ms, nd, 0.95), "strategy", strategy,
		      "n", n, "failed", t->failed, "resumed", t->resumed, "skipped_lines", ps->bad_lines,
		      "interrupted", cli_interrupted != 0);
	if (!o)
		goto out;
	/* write beside it and rename, so a crash never leaves half a report */
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	if (json_dump_file(o, tmp, JSON_INDENT(2)) < 0 || rename(tmp, path) < 0) {
		fprintf(stderr, "braid solve: %s: %s\n", path, strerror(errno));
		unlink(tmp);
		goto out;
	}
	rc = 0;
out:
	if (!o && ms)
		fprintf(stderr, "braid solve: out of memory\n");
	json_decref(o);
	free(ms);
	return rc;
}

/* ---- the run ------------------------------------------------------------------------------- */

struct slot {
	char job[EV_JOB_ID_MAX];
	struct problem *p;       /* NULL: free */
};

struct run {
	cl *c;
	struct problems *ps;
	struct tally t;
	struct slot *slots;
	int n_slots;
	int out_fd, out_sync;
	const char *strategy;
	int n;
	int fatal;
};

static struct slot *
slot_of(struct run *r, const char *job)
{
	for (int i = 0; job && i < r->n_slots; i++)
		if (r->slots[i].p && !strcmp(r->slots[i].job, job))
			return &r->slots[i];
	return NULL;
}

/* job.done: the result line, appended and fsynced. */
static void
on_done(struct run *r, struct slot *sl, const json_t *ev)
{
	struct problem *p = sl->p;
	const char *answer = json_string_value(json_object_get(ev, "answer"));
	json_t *votes = json_object_get(ev, "votes");
	json_t *line = json_pack("{s:O, s:s?, s:s?, s:I, s:I, s:s, s:i, s:O, s:s}", "id", p->id,
				 "answer", answer, "gold", p->gold,
				 "tokens", (json_int_t)json_integer_value(json_object_get(ev, "tokens")),
				 "ms", (json_int_t)json_integer_value(json_object_get(ev, "ms")),
				 "strategy", r->strategy, "n", r->n,
				 "votes", votes ? votes : json_null(), "job", sl->job);
	if (line && !json_object_get(line, "answer"))
		json_object_set_new(line, "answer", json_null());
	if (line && !json_object_get(line, "gold"))
		json_object_set_new(line, "gold", json_null());
	if (line && p->gold)
		json_object_set_new(line, "correct", json_boolean(ans_equal(answer, p->gold)));
	char *text = line ? json_dumps(line, JSON_COMPACT) : NULL;
	size_t tl = text ? strlen(text) : 0;
	char *nl = text ? realloc(text, tl + 2) : NULL;
	if (nl) {
		text = nl;
		text[tl] = '\n';
		text[tl + 1] = 0;
	}
	if (!nl || out_append(r->out_fd, r->out_sync, text) < 0) {
		progress_say(&r->t, "braid solve: cannot write the result of %s: %s\n", p->key,
			     nl ? strerror(errno) : "out of memory");
		r->t.failed++;
		r->fatal = 1;
	} else {
		problem_take_result(p, line);
		tally_add(&r->t, p);
		r->t.run_done++;
		r->t.run_tokens += p->tokens;
		if (!r->t.tty)
			fprintf(stderr, "[%d/%d] id %s: answer %s%s%s%s, %lld tokens, %lld ms\n", r->t.done,
				r->t.total, p->key, answer ? answer : "(none)", p->gold ? ", gold " : "",
				p->gold ? p->gold : "",
				p->correct < 0 ? "" : p->correct ? " (correct)" : " (wrong)", p->tokens, p->ms);
	}
	free(text);
	json_decref(line);
	sl->p = NULL;
}

static void
on_event(struct run *r, json_t *ev)
{
	const char *type = json_string_value(json_object_get(ev, "type"));
	struct slot *sl = slot_of(r, json_string_value(json_object_get(ev, "job")));
	if (!sl || !type)
		return;
	if (!strcmp(type, "job.done")) {
		on_done(r, sl, ev);
	} else if (!strcmp(type, "job.failed")) {
		const char *why = json_string_value(json_object_get(ev, "reason"));
		if (!cli_interrupted) {     /* our own cancels are "not done", not failed */
			r->t.failed++;
			progress_say(&r->t, "braid solve: problem %s (line %d) failed: %s\n", sl->p->key,
				     sl->p->line, why ? why : "no reason given");
		}
		sl->p = NULL;
	}
}

/* Submit problem p; 1 queued, 0 not now (queue full), -1 refused. */
static int
submit(struct run *r, struct problem *p, const struct job_req *proto)
{
	struct slot *sl = NULL;
	for (int i = 0; i < r->n_slots && !sl; i++)
		if (!r->slots[i].p)
			sl = &r->slots[i];
	if (!sl)
		return 0;
	struct job_req q = *proto;
	char err[512] = "";
	q.params = proto->params ? json_deep_copy(proto->params) : NULL;
	q.question = strdup(p->question);
	q.gold = p->gold ? strdup(p->gold) : NULL;
	if (!q.question || (p->gold && !q.gold) || (proto->params && !q.params)) {
		job_req_free(&q);
		r->fatal = 1;
		progress_say(&r->t, "braid solve: out of memory\n");
		return -1;
	}
	int rc = cl_submit(r->c, &q, err, sizeof err);
	if (rc == 0) {
		memcpy(sl->job, q.id, sizeof sl->job);
		sl->p = p;
		job_req_free(&q);
		return 1;
	}
	job_req_free(&q);
	if (rc == ENG_ERR_RANGE)
		return 0;
	/* a refusal before anything ran is the request's fault, not the
	 * problem's (n past the cap, ...): stop rather than fail them all */
	if (rc != ENG_ERR_INVALID || r->t.run_done + r->t.failed == 0)
		r->fatal = 1;
	r->t.failed++;
	progress_say(&r->t, "braid solve: problem %s (line %d) %s: %s\n", p->key, p->line,
		     rc == ENG_ERR_INVALID ? "refused" : "not submitted", err[0] ? err : eng_strerror(rc));
	return -1;
}

static void
run_loop(struct run *r, const struct job_req *proto)
{
	int next = 0;
	struct problems *ps = r->ps;
	while (!cli_interrupted && !r->fatal) {
		while (next < ps->n && ps->v[next].done)
			next++;
		int full = 0;
		while (!cli_interrupted && !r->fatal && next < ps->n && cl_in_flight(r->c) < r->n_slots) {
			int s = submit(r, &ps->v[next], proto);
			if (s == 0) {
				full = 1;
				break;
			}
			next++;
			while (next < ps->n && ps->v[next].done)
				next++;
		}
		if (next >= ps->n && cl_in_flight(r->c) == 0)
			break;
		if (full && cl_in_flight(r->c) == 0)
			usleep(200 * 1000);     /* a daemon busy with others' jobs */
		json_t *ev = cl_next(r->c, full ? 100 : 200);
		if (ev)
			on_event(r, ev);
		json_decref(ev);
		progress_bar(&r->t, 0);
	}
	if (!cli_interrupted && !r->fatal)
		return;
	/* stop: cancel what runs, keep what finishes meanwhile */
	for (int i = 0; i < r->n_slots; i++)
		if (r->slots[i].p)
			cl_cancel(r->c, r->slots[i].job);
	double until = cli_now() + 15;
	while (cl_in_flight(r->c) > 0 && cli_now() < until) {
		json_t *ev = cl_next(r->c, 200);
		if (ev)
			on_event(r, ev);
		json_decref(ev);
	}
}

int
cmd_solve(int argc, char **argv)
{
	struct cli_args a;
	int pr = cli_parse("solve", synopsis, opts, N_OPTS, argc, argv, &a);
	if (pr != 0)
		return pr > 0 ? 0 : 2;
	if (a.n_pos != 1) {
		fprintf(stderr, "braid solve: %s (see 'braid solve --help')\n",
			a.n_pos ? "give one problem file" : "which problem file? (FILE.jsonl)");
		return 2;
	}
	struct job_req proto;
	job_req_init(&proto);
	long conc = 0;
	struct cl_params cp = cl_default_params();
	if (cli_job_opts("solve", opts, N_OPTS, &a, &proto, &cp) < 0 ||
	    (OPT("concurrency") && cli_int("concurrency", OPT("concurrency"), 1, 100000, &conc)))
		return 2;
	if (OPT("params")) {
		json_error_t jerr;
		proto.params = json_loads(OPT("params"), 0, &jerr);
		if (!json_is_object(proto.params)) {
			fprintf(stderr, "braid solve: --params wants a JSON object%s%s\n",
				proto.params ? "" : ": ", proto.params ? "" : jerr.text);
			job_req_free(&proto);
			return 2;
		}
	}

	struct problems ps;
	struct run r;
	memset(&ps, 0, sizeof ps);
	memset(&r, 0, sizeof r);
	r.out_fd = -1;
	int rc = 1;
	double t_start = cli_now();
	if (problems_load(a.pos[0], &ps) < 0)
		goto out;
	if (ps.n == 0) {
		fprintf(stderr, "braid solve: %s: no problems in the file\n", a.pos[0]);
		goto out;
	}
	r.ps = &ps;
	r.strategy = proto.strategy;
	r.n = proto.n;
	r.t.total = ps.n;
	r.t.tty = isatty(STDERR_FILENO);
	const char *out_path = OPT("out");
	if (out_path) {
		int resumed = out_resume(out_path, &ps, proto.strategy);
		if (resumed < 0)
			goto out;
		r.t.resumed = resumed;
		for (int i = 0; i < ps.n; i++)
			if (ps.v[i].done)
				tally_add(&r.t, &ps.v[i]);
		r.out_fd = open(out_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
		if (r.out_fd < 0) {
			fprintf(stderr, "braid solve: %s: %s\n", out_path, strerror(errno));
			goto out;
		}
		r.out_sync = 1;
		if (resumed)
			fprintf(stderr, "braid solve: %s: %d of %d problems already done; resuming\n",
				out_path, resumed, ps.n);
	} else {
		r.out_fd = STDOUT_FILENO;
	}

	cli_catch_signals();

	char err[ENG_ERRLEN] = "";
	if (r.t.done < ps.n) {
		r.c = cl_create(&cp, err, sizeof err);
		if (!r.c) {
			fprintf(stderr, "braid solve: %s\n", err);
			goto out;
		}
		r.n_slots = conc ? (int)conc : cl_max_running(r.c);
		r.slots = calloc((size_t)r.n_slots, sizeof *r.slots);
		if (!r.slots) {
			fprintf(stderr, "braid solve: out of memory\n");
			goto out;
		}
		r.t.t0 = cli_now();
		progress_bar(&r.t, 1);
		run_loop(&r, &proto);
		if (r.t.tty)
			fputs("\r\033[K", stderr);
	}
	double wall = cli_now() - t_start;
	fprintf(stderr, "braid solve: %d/%d problems done, %d correct of %d graded%s, %d not done, %.1f s%s\n",
		r.t.done, ps.n, r.t.correct, r.t.graded, r.t.graded ? "" : " (no gold answers)",
		ps.n - r.t.done, wall, cli_interrupted ? " (interrupted)" : "");
	if (OPT("report") && report_write(OPT("report"), &ps, &r.t, proto.strategy, proto.n, wall) < 0)
		r.fatal = 1;
	if (cli_interrupted)
		rc = 130;
	else
		rc = r.fatal || r.t.done < ps.n || ps.bad_lines ? 1 : 0;
out:
	cl_destroy(r.c);
	free(r.slots);
	if (r.out_fd > STDERR_FILENO)
		close(r.out_fd);
	problems_free(&ps);
	job_req_free(&proto);
	return rc;
}
