/* store.c - the job store in SQLite, WAL mode (store_).  A writer thread
 * owns one connection and applies bus events in batched transactions; reads
 * come from any thread through a second, mutex-guarded, query-only one. */
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#include "status.h"
#include "store.h"

#define STORE_SCHEMA_VERSION 1
#define STORE_BATCH_EVENTS 256     /* commit after this many events ...   */
#define STORE_BATCH_MS 20          /* ... or this long after the first     */
#define STORE_POLL_MS 2            /* queue polling while a batch is open  */
#define STORE_BUSY_MS 5000
#define STORE_INTERRUPTED "interrupted: the daemon stopped while the job ran"

static const char store_schema[] =
	"CREATE TABLE IF NOT EXISTS jobs("
	" id TEXT PRIMARY KEY, created_ms INTEGER, started_ms INTEGER, finished_ms INTEGER,"
	" status TEXT NOT NULL CHECK(status IN ('queued','running','done','failed')),"
	" request TEXT, answer TEXT, votes TEXT, tokens INTEGER, prompt_tokens INTEGER,"
	" ms INTEGER, error TEXT);"
	"CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_ms);"
	"CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, created_ms);"
	"CREATE TABLE IF NOT EXISTS threads("
	" job TEXT NOT NULL, idx INTEGER NOT NULL, parent INTEGER, status TEXT,"
	" text TEXT NOT NULL DEFAULT '', answer TEXT, tokens INTEGER, finish_reason TEXT,"
	" PRIMARY KEY(job, idx));"
	"CREATE TABLE IF NOT EXISTS events("
	" job TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER, type TEXT, json TEXT NOT NULL,"
	" PRIMARY KEY(job, seq));";

/* The writer's statements, prepared once (which also checks the schema). */
enum wstmt {
	W_BEGIN, W_COMMIT, W_ROLLBACK,
	W_EVENT, W_JOB_ENSURE, W_JOB_QUEUED, W_JOB_STARTED, W_MERGE, W_JOB_DONE, W_JOB_FAILED,
	W_THREAD_ENSURE, W_THREAD_SPAWNED, W_THREAD_DELTA, W_THREAD_PRUNED, W_THREAD_DONE,
	W_THREAD_SUMMARY, W_THREADS_FAILED,
	W_N
};

static const char *const wstmt_sql[W_N] = {
	[W_BEGIN] = "BEGIN IMMEDIATE",
	[W_COMMIT] = "COMMIT",
	[W_ROLLBACK] = "ROLLBACK",
	[W_EVENT] = "INSERT OR REPLACE INTO events(job, seq, ts, type, json) VALUES(?1,?2,?3,?4,?5)",
	[W_JOB_ENSURE] = "INSERT OR IGNORE INTO jobs(id, created_ms, status) VALUES(?1, ?2, 'queued')",
	[W_JOB_QUEUED] = "UPDATE jobs SET request = ?2 WHERE id = ?1",
	[W_JOB_STARTED] = "UPDATE jobs SET status = 'running', started_ms = ?2,"
			  " prompt_tokens = COALESCE(?3, prompt_tokens) WHERE id = ?1",
	[W_MERGE] = "UPDATE jobs SET votes = COALESCE(?2, votes), answer = ?3 WHERE id = ?1",
	[W_JOB_DONE] = "UPDATE jobs SET status = 'done', finished_ms = ?2, answer = ?3,"
		       " votes = COALESCE(?4, votes), tokens = ?5,"
		       " prompt_tokens = COALESCE(?6, prompt_tokens), ms = ?7 WHERE id = ?1",
	[W_JOB_FAILED] = "UPDATE jobs SET status = 'failed', finished_ms = ?2, error = ?3 WHERE id = ?1",
	[W_THREAD_ENSURE] = "INSERT OR IGNORE INTO threads(job, idx, parent, status, text, tokens)"
			    " VALUES(?1, ?2, -1, 'running', '', 0)",
	[W_THREAD_SPAWNED] = "INSERT OR REPLACE INTO threads(job, idx, parent, status, text, tokens)"
			     " VALUES(?1, ?2, ?3, 'running', '', 0)",
	[W_THREAD_DELTA] = "UPDATE threads SET text = text || ?3, tokens = COALESCE(?4, tokens)"
			   " WHERE job = ?1 AND idx = ?2",
	[W_THREAD_PRUNED] = "UPDATE threads SET status = 'pruned' WHERE job = ?1 AND idx = ?2",
	[W_THREAD_DONE] = "UPDATE threads SET status = CASE status WHEN 'pruned' THEN 'pruned'"
			  " ELSE 'done' END, finish_reason = COALESCE(?3, finish_reason),"
			  " answer = ?4, tokens = COALESCE(?5, tokens), text = COALESCE(?6, text)"
			  " WHERE job = ?1 AND idx = ?2",
	[W_THREAD_SUMMARY] = "UPDATE threads SET answer = ?3, tokens = COALESCE(?4, tokens),"
			     " finish_reason = COALESCE(?5, finish_reason) WHERE job = ?1 AND idx = ?2",
	[W_THREADS_FAILED] = "UPDATE threads SET status = 'failed' WHERE job = ?1 AND status = 'running'",
};

struct store {
	char *path;
	bus *b;
	bus_sub *sub;
	sqlite3 *wdb;                 /* the writer thread's                    */
	sqlite3_stmt *w[W_N];
	sqlite3 *rdb;                 /* readers', under rmu                    */
	pthread_mutex_t rmu;

	pthread_t thread;
	bool thread_started;
	atomic_bool stop;

	/* store_sync: events queued for the writer (bus_sub_queued) against
	 * events applied. */
	atomic_int sync_waiters;
	pthread_mutex_t mu;
	pthread_cond_t applied_cv;
	unsigned long long applied;   /* under mu                               */
	unsigned long long errors;    /* under mu: failed writes, ever          */
};

static int64_t
mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the writer thread ------------------------------------------------------- */

static void
werror(store *st, const char *what, const struct ev *e)
{
	fprintf(stderr, "braid store: %s: %s%s%s: %s\n", st->path, what, e ? " of " : "",
		e ? e->job : "", sqlite3_errmsg(st->wdb));
	pthread_mutex_lock(&st->mu);
	st->errors++;
	pthread_mutex_unlock(&st->mu);
}

/* Bind a JSON value as text: strings as themselves, null/absent as NULL,
 * anything else as its compact JSON. */
static int
bind_text_of(sqlite3_stmt *s, int i, const json_t *v)
{
	if (!v || json_is_null(v))
		return sqlite3_bind_null(s, i);
	if (json_is_string(v))
		return sqlite3_bind_text(s, i, json_string_value(v), (int)json_string_length(v),
					 SQLITE_TRANSIENT);
	char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
	if (!t)
		return SQLITE_NOMEM;
	return sqlite3_bind_text(s, i, t, -1, free);
}

/* Bind a JSON value as its JSON text (objects like votes, request). */
static int
bind_json(sqlite3_stmt *s, int i, const json_t *v)
{
	if (!v || json_is_null(v))
		return sqlite3_bind_null(s, i);
	char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
	if (!t)
		return SQLITE_NOMEM;
	return sqlite3_bind_text(s, i, t, -1, free);
}

static int
bind_int_of(sqlite3_stmt *s, int i, const json_t *v)
{
	if (json_is_integer(v))
		return sqlite3_bind_int64(s, i, json_integer_value(v));
	if (json_is_real(v))
		return sqlite3_bind_int64(s, i, (sqlite3_int64)json_real_value(v));
	return sqlite3_bind_null(s, i);
}

/* Run a bound statement to completion and reset it. */
static int
wrun(sqlite3_stmt *s)
{
	int rc = sqlite3_step(s);
	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
	return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

/* Statement k with (job, idx) bound first. */
static sqlite3_stmt *
wjob(store *st, enum wstmt k, const char *job)
{
	sqlite3_stmt *s = st->w[k];
	sqlite3_bind_text(s, 1, job, -1, SQLITE_STATIC);
	return s;
}

static int
thread_ensure(store *st, const char *job, int idx)
{
	sqlite3_stmt *s = wjob(st, W_THREAD_ENSURE, job);
	sqlite3_bind_int(s, 2, idx);
	return wrun(s);
}

static int
job_ensure(store *st, const struct ev *e)
{
	sqlite3_stmt *s = wjob(st, W_JOB_ENSURE, e->job);
	sqlite3_bind_int64(s, 2, e->ts_ms);
	return wrun(s);
}

/* Append a delta's text to its thread; sqlite3_changes() says whether the
 * thread row was there. */
static int
apply_delta(store *st, const struct ev *e)
{
	const json_t *text = json_object_get(e->body, "text");
	sqlite3_stmt *s = wjob(st, W_THREAD_DELTA, e->job);
	sqlite3_bind_int(s, 2, e->thread);
	if (json_is_string(text))
		bind_text_of(s, 3, text);
	else
		sqlite3_bind_text(s, 3, "", 0, SQLITE_STATIC);
	bind_int_of(s, 4, json_object_get(e->body, "tokens"));
	return wrun(s);
}

/* Apply one event inside the open transaction. */
static void
apply(store *st, const struct ev *e)
{
	const json_t *b = e->body;
	const char *job = e->job;
	sqlite3_stmt *s;
	int rc = SQLITE_OK;

	if (e->type == EV_GAP || !job[0]) {
		/* The store's subscription is unbounded: a gap means memory ran
		 * out in the bus.  Nothing to key it by; say so. */
		fprintf(stderr, "braid store: %s: %s event not stored\n", st->path,
			ev_type_name(e->type));
		return;
	}

	/* The trace: the exact published text. */
	s = wjob(st, W_EVENT, job);
	sqlite3_bind_int64(s, 2, e->seq);
	sqlite3_bind_int64(s, 3, e->ts_ms);
	sqlite3_bind_text(s, 4, ev_type_name(e->type), -1, SQLITE_STATIC);
	sqlite3_bind_text(s, 5, e->json, (int)e->len, SQLITE_STATIC);
	if ((rc = wrun(s)))
		goto fail;

	/* Deltas are most of the traffic: their job row exists already (from
	 * job.queued) unless events were lost; apply_delta checks. */
	if (e->type != EV_THREAD_DELTA && (rc = job_ensure(st, e)))
		goto fail;

	switch (e->type) {
	case EV_JOB_QUEUED:
		s = wjob(st, W_JOB_QUEUED, job);
		bind_json(s, 2, json_object_get(b, "request"));
		rc = wrun(s);
		break;
	case EV_JOB_STARTED:
		s = wjob(st, W_JOB_STARTED, job);
		sqlite3_bind_int64(s, 2, e->ts_ms);
		bind_int_of(s, 3, json_object_get(b, "prompt_tokens"));
		rc = wrun(s);
		break;
	case EV_THREAD_SPAWNED: {
		const json_t *parent = json_object_get(b, "parent");
		s = wjob(st, W_THREAD_SPAWNED, job);
		sqlite3_bind_int(s, 2, e->thread);
		sqlite3_bind_int64(s, 3, json_is_integer(parent) ? json_integer_value(parent) : -1);
		rc = wrun(s);
		break;
	}
	case EV_THREAD_DELTA:
		rc = apply_delta(st, e);
		if (!rc && !sqlite3_changes(st->wdb)) {
			/* No thread.spawned seen for it: create the rows. */
			if (!(rc = job_ensure(st, e)) && !(rc = thread_ensure(st, job, e->thread)))
				rc = apply_delta(st, e);
		}
		break;
	case EV_THREAD_PRUNED:
		if ((rc = thread_ensure(st, job, e->thread)))
			break;
		s = wjob(st, W_THREAD_PRUNED, job);
		sqlite3_bind_int(s, 2, e->thread);
		rc = wrun(s);
		break;
	case EV_THREAD_DONE:
		if ((rc = thread_ensure(st, job, e->thread)))
			break;
		s = wjob(st, W_THREAD_DONE, job);
		sqlite3_bind_int(s, 2, e->thread);
		bind_text_of(s, 3, json_object_get(b, "finish_reason"));
		bind_text_of(s, 4, json_object_get(b, "answer"));
		bind_int_of(s, 5, json_object_get(b, "tokens"));
		if (json_is_string(json_object_get(b, "text")))
			bind_text_of(s, 6, json_object_get(b, "text"));
		rc = wrun(s);
		break;
	case EV_MERGE:
		s = wjob(st, W_MERGE, job);
		bind_json(s, 2, json_object_get(b, "votes"));
		bind_text_of(s, 3, json_object_get(b, "answer"));
		rc = wrun(s);
		break;
	case EV_JOB_DONE: {
		size_t i;
		json_t *t;
		s = wjob(st, W_JOB_DONE, job);
		sqlite3_bind_int64(s, 2, e->ts_ms);
		bind_text_of(s, 3, json_object_get(b, "answer"));
		bind_json(s, 4, json_object_get(b, "votes"));
		bind_int_of(s, 5, json_object_get(b, "tokens"));
		bind_int_of(s, 6, json_object_get(b, "prompt_tokens"));
		bind_int_of(s, 7, json_object_get(b, "ms"));
		if ((rc = wrun(s)))
			break;
		json_array_foreach(json_object_get(b, "threads"), i, t) {
			json_t *idx = json_object_get(t, "thread");
			if (!json_is_integer(idx) || json_integer_value(idx) < 0 ||
			    json_integer_value(idx) > INT_MAX)
				continue;
			if ((rc = thread_ensure(st, job, (int)json_integer_value(idx))))
				break;
			s = wjob(st, W_THREAD_SUMMARY, job);
			sqlite3_bind_int64(s, 2, json_integer_value(idx));
			bind_text_of(s, 3, json_object_get(t, "answer"));
			bind_int_of(s, 4, json_object_get(t, "tokens"));
			bind_text_of(s, 5, json_object_get(t, "finish_reason"));
			if ((rc = wrun(s)))
				break;
		}
		break;
	}
	case EV_JOB_FAILED:
		s = wjob(st, W_JOB_FAILED, job);
		sqlite3_bind_int64(s, 2, e->ts_ms);
		bind_text_of(s, 3, json_object_get(b, "reason"));
		if ((rc = wrun(s)))
			break;
		rc = wrun(wjob(st, W_THREADS_FAILED, job));
		break;
	case EV_MEMORY_HIT:
	case EV_MEMORY_STORED:
	case EV_GAP:
	case EV_N_TYPES:
		break;           /* the trace row is all */
	}
	if (rc)
		goto fail;
	return;
fail:
	werror(st, ev_type_name(e->type), e);
}

/* Commit the open batch; n real events more are applied. */
static void
commit(store *st, unsigned long long n)
{
	if (!sqlite3_get_autocommit(st->wdb) && wrun(st->w[W_COMMIT])) {
		werror(st, "commit", NULL);
		wrun(st->w[W_ROLLBACK]);
	}
	pthread_mutex_lock(&st->mu);
	st->applied += n;
	pthread_cond_broadcast(&st->applied_cv);
	pthread_mutex_unlock(&st->mu);
}

/* While a batch is open the writer polls the queue every STORE_POLL_MS
 * instead of sleeping on the bus: a publisher (the engine thread) then never
 * pays for a futex wake-up per event.  Idle, it blocks in bus_pop_wait. */
static void *
writer_main(void *p)
{
	store *st = p;
	unsigned long long n = 0;     /* events in the open batch */
	unsigned long long r = 0;     /* of which real (not gap notices: store_sync
				       * counts what the bus queued, which they are not) */
	int64_t deadline = 0;

	for (;;) {
		struct ev *e = bus_pop(st->sub);
		if (!e && n) {
			int64_t left = deadline - mono_ms();
			if (left <= 0 || atomic_load(&st->sync_waiters) || atomic_load(&st->stop)) {
				commit(st, r);
				n = r = 0;
				continue;
			}
			struct timespec nap = { 0, (left < STORE_POLL_MS ? left : STORE_POLL_MS) * 1000000L };
			nanosleep(&nap, NULL);
			continue;
		}
		if (!e) {
			if (atomic_load(&st->stop))
				break;
			/* NULL again: an interrupt (store_sync, stop); loop. */
			e = bus_pop_wait(st->sub, -1);
			if (!e)
				continue;
		}
		if (!n) {
			deadline = mono_ms() + STORE_BATCH_MS;
			/* On failure the statements autocommit one by one. */
			if (wrun(st->w[W_BEGIN]))
				werror(st, "begin", NULL);
		}
		apply(st, e);
		r += e->type != EV_GAP;
		ev_unref(e);
		n++;
		if (n >= STORE_BATCH_EVENTS || atomic_load(&st->sync_waiters)) {
			commit(st, r);
			n = r = 0;
		}
	}
	return NULL;
}

int
store_sync(store *st)
{
	unsigned long long target;
	int rc;

	if (!st)
		return ENG_ERR_INVALID;
	target = bus_sub_queued(st->sub);
	pthread_mutex_lock(&st->mu);
	if (st->applied < target) {
		atomic_fetch_add(&st->sync_waiters, 1);
		pthread_mutex_unlock(&st->mu);
		bus_interrupt(st->sub);       /* commit the open batch now */
		pthread_mutex_lock(&st->mu);
		while (st->applied < target)
			pthread_cond_wait(&st->applied_cv, &st->mu);
		atomic_fetch_sub(&st->sync_waiters, 1);
	}
	rc = st->errors ? ENG_ERR_IO : 0;
	pthread_mutex_unlock(&st->mu);
	return rc;
}

/* ---- open and close ---------------------------------------------------------- */

static int
seterr_db(char *err, size_t errlen, const char *path, sqlite3 *db, const char *what)
{
	return eng_seterr(err, errlen, ENG_ERR_IO, "%s: %s%s%s", path, what ? what : "",
			  what ? ": " : "", db ? sqlite3_errmsg(db) : "out of memory");
}

/* Run a one-row, one-int query; -1 (err filled) on failure. */
static int
query_int(sqlite3 *db, const char *sql, long long *out)
{
	sqlite3_stmt *s = NULL;
	int rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
	if (rc == SQLITE_OK) {
		rc = sqlite3_step(s);
		if (rc == SQLITE_ROW) {
			*out = sqlite3_column_int64(s, 0);
			rc = SQLITE_OK;
		}
	}
	sqlite3_finalize(s);
	return rc == SQLITE_OK ? 0 : -1;
}

static sqlite3 *
open_db(const char *path, int flags, char *err, size_t errlen)
{
	sqlite3 *db = NULL;
	int rc = sqlite3_open_v2(path, &db, flags | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		seterr_db(err, errlen, path, db, "cannot open");
		sqlite3_close(db);
		return NULL;
	}
	sqlite3_extended_result_codes(db, 0);
	sqlite3_busy_timeout(db, STORE_BUSY_MS);
	return db;
}

/* Writer connection: WAL, schema, statements. */
static int
setup_writer(store *st, char *err, size_t errlen)
{
	long long version = 0;
	sqlite3_stmt *s = NULL;
	const char *mode;

	st->wdb = open_db(st->path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, err, errlen);
	if (!st->wdb)
		return ENG_ERR_IO;
	/* The first read of the file: a non-database fails here. */
	if (query_int(st->wdb, "PRAGMA user_version", &version))
		return seterr_db(err, errlen, st->path, st->wdb, NULL);
	if (version > STORE_SCHEMA_VERSION)
		return eng_seterr(err, errlen, ENG_ERR_UNSUPPORTED,
				  "%s: schema version %lld is newer than this braid's (%d)",
				  st->path, version, STORE_SCHEMA_VERSION);
	if (sqlite3_prepare_v2(st->wdb, "PRAGMA journal_mode=WAL", -1, &s, NULL) != SQLITE_OK ||
	    sqlite3_step(s) != SQLITE_ROW)
		goto fail_db;
	mode = (const char *)sqlite3_column_text(s, 0);
	if (!mode || strcmp(mode, "wal") != 0) {
		eng_seterr(err, errlen, ENG_ERR_IO, "%s: cannot switch to WAL mode (got %s)",
			   st->path, mode ? mode : "nothing");
		sqlite3_finalize(s);
		return ENG_ERR_IO;
	}
	sqlite3_finalize(s);
	s = NULL;
	if (sqlite3_exec(st->wdb, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL) != SQLITE_OK)
		goto fail_db;
	if (version < STORE_SCHEMA_VERSION) {
		char sql[sizeof store_schema + 64];
		snprintf(sql, sizeof sql, "BEGIN IMMEDIATE;%sPRAGMA user_version=%d;COMMIT;",
			 store_schema, STORE_SCHEMA_VERSION);
		if (sqlite3_exec(st->wdb, sql, NULL, NULL, NULL) != SQLITE_OK) {
			seterr_db(err, errlen, st->path, st->wdb, "cannot create the schema");
			sqlite3_exec(st->wdb, "ROLLBACK", NULL, NULL, NULL);
			return ENG_ERR_IO;
		}
	}
	for (int k = 0; k < W_N; k++)
		if (sqlite3_prepare_v3(st->wdb, wstmt_sql[k], -1, SQLITE_PREPARE_PERSISTENT,
				       &st->w[k], NULL) != SQLITE_OK)
			return seterr_db(err, errlen, st->path, st->wdb, "schema does not match");
	return 0;
fail_db:
	seterr_db(err, errlen, st->path, st->wdb, NULL);
	sqlite3_finalize(s);
	return ENG_ERR_IO;
}

static void
store_free(store *st)
{
	for (int k = 0; k < W_N; k++)
		sqlite3_finalize(st->w[k]);
	sqlite3_close(st->wdb);
	sqlite3_close(st->rdb);
	pthread_cond_destroy(&st->applied_cv);
	pthread_mutex_destroy(&st->mu);
	pthread_mutex_destroy(&st->rmu);
	free(st->path);
	free(st);
}

store *
store_open(const char *path, bus *b, char *err, size_t errlen)
{
	store *st;

	if (!path || !b) {
		eng_seterr(err, errlen, ENG_ERR_INVALID, "%s: store_open needs a path and a bus",
			   path ? path : "(null)");
		return NULL;
	}
	st = calloc(1, sizeof *st);
	if (!st || !(st->path = strdup(path))) {
		eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: out of memory", path);
		free(st);
		return NULL;
	}
	st->b = b;
	pthread_mutex_init(&st->rmu, NULL);
	pthread_mutex_init(&st->mu, NULL);
	pthread_cond_init(&st->applied_cv, NULL);
	atomic_init(&st->stop, false);
	atomic_init(&st->sync_waiters, 0);

	if (setup_writer(st, err, errlen))
		goto fail;
	st->rdb = open_db(path, SQLITE_OPEN_READWRITE, err, errlen);
	if (!st->rdb)
		goto fail;
	if (sqlite3_exec(st->rdb, "PRAGMA query_only=1", NULL, NULL, NULL) != SQLITE_OK) {
		seterr_db(err, errlen, path, st->rdb, NULL);
		goto fail;
	}
	st->sub = bus_subscribe(b, NULL, 0, NULL, NULL);
	if (!st->sub) {
		eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: cannot subscribe to the bus", path);
		goto fail;
	}
	if (pthread_create(&st->thread, NULL, writer_main, st)) {
		eng_seterr(err, errlen, ENG_ERR_NOMEM, "%s: cannot start the writer thread", path);
		goto fail;
	}
	st->thread_started = true;
	return st;
fail:
	bus_unsubscribe(b, st->sub);
	store_free(st);
	return NULL;
}

void
store_close(store *st)
{
	if (!st)
		return;
	if (st->thread_started) {
		atomic_store(&st->stop, true);
		bus_interrupt(st->sub);
		pthread_join(st->thread, NULL);
	}
	bus_unsubscribe(st->b, st->sub);
	/* Closing the last connection checkpoints the WAL into the file. */
	store_free(st);
}

/* ---- reads ------------------------------------------------------------------- */

static json_t *
col_int(sqlite3_stmt *s, int i)
{
	if (sqlite3_column_type(s, i) == SQLITE_NULL)
		return json_null();
	return json_integer(sqlite3_column_int64(s, i));
}

static json_t *
col_str(sqlite3_stmt *s, int i)
{
	const char *t = (const char *)sqlite3_column_text(s, i);
	json_t *v;
	if (!t)
		return json_null();
	v = json_stringn(t, (size_t)sqlite3_column_bytes(s, i));
	return v ? v : json_null();     /* not UTF-8: cannot have come from us */
}

static json_t *
col_json(sqlite3_stmt *s, int i)
{
	const char *t = (const char *)sqlite3_column_text(s, i);
	json_t *v;
	if (!t)
		return json_null();
	v = json_loadb(t, (size_t)sqlite3_column_bytes(s, i), JSON_DECODE_ANY, NULL);
	return v ? v : json_null();
}

#define JOB_COLS "id, status, created_ms, started_ms, finished_ms, request, answer, votes," \
	" tokens, prompt_tokens, ms, error"

/* The job object of a row of JOB_COLS. */
static json_t *
job_row(sqlite3_stmt *s)
{
	return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
			 "id", col_str(s, 0), "status", col_str(s, 1), "created_ms", col_int(s, 2),
			 "started_ms", col_int(s, 3), "finished_ms", col_int(s, 4),
			 "request", col_json(s, 5), "answer", col_str(s, 6), "votes", col_json(s, 7),
			 "tokens", col_int(s, 8), "prompt_tokens", col_int(s, 9), "ms", col_int(s, 10),
			 "error", col_str(s, 11));
}

static int
rprepare(store *st, const char *sql, sqlite3_stmt **s)
{
	if (sqlite3_prepare_v2(st->rdb, sql, -1, s, NULL) != SQLITE_OK) {
		fprintf(stderr, "braid store: %s: %s\n", st->path, sqlite3_errmsg(st->rdb));
		return ENG_ERR_IO;
	}
	return 0;
}

/* One row of a statement as JSON: 0, or an error. */
typedef int (*row_fn)(sqlite3_stmt *s, json_t **out);

/* Step s to the end, appending row(s) of every row to a new array. */
static int
collect_rows(sqlite3_stmt *s, row_fn row, json_t **out)
{
	json_t *arr = json_array();
	int rc = ENG_ERR_IO, step;
	if (!arr)
		return rc;
	while ((step = sqlite3_step(s)) == SQLITE_ROW) {
		json_t *v = NULL;
		if ((rc = row(s, &v)) || json_array_append_new(arr, v)) {
			rc = rc ? rc : ENG_ERR_IO;
			json_decref(arr);
			return rc;
		}
	}
	if (step != SQLITE_DONE) {
		json_decref(arr);
		return ENG_ERR_IO;
	}
	*out = arr;
	return 0;
}

static int
job_row_fn(sqlite3_stmt *s, json_t **out)
{
	return (*out = job_row(s)) ? 0 : ENG_ERR_IO;
}

static int
thread_row_fn(sqlite3_stmt *s, json_t **out)
{
	*out = json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
			 "thread", col_int(s, 0), "parent", col_int(s, 1),
			 "status", col_str(s, 2), "text", col_str(s, 3),
			 "answer", col_str(s, 4), "tokens", col_int(s, 5),
			 "finish_reason", col_str(s, 6));
	return *out ? 0 : ENG_ERR_IO;
}

/* A stored event: the JSON text that was published. */
static int
event_row_fn(sqlite3_stmt *s, json_t **out)
{
	*out = json_loadb((const char *)sqlite3_column_text(s, 0),
			  (size_t)sqlite3_column_bytes(s, 0), 0, NULL);
	return *out ? 0 : ENG_ERR_FORMAT;
}

/* Caller holds rmu. */
static int
job_get_locked(store *st, const char *id, json_t **out)
{
	sqlite3_stmt *s = NULL;
	json_t *job = NULL, *threads = NULL;
	int rc, step;

	if ((rc = rprepare(st, "SELECT " JOB_COLS " FROM jobs WHERE id = ?1", &s)))
		goto fail;
	sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
	step = sqlite3_step(s);
	if (step == SQLITE_DONE) {
		rc = ENG_ERR_NOT_FOUND;
		goto fail;
	}
	if (step != SQLITE_ROW || !(job = job_row(s)))
		goto fail_io;
	sqlite3_finalize(s);
	s = NULL;

	if ((rc = rprepare(st, "SELECT idx, parent, status, text, answer, tokens, finish_reason"
			       " FROM threads WHERE job = ?1 ORDER BY idx", &s)))
		goto fail;
	sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
	if ((rc = collect_rows(s, thread_row_fn, &threads)))
		goto fail;
	sqlite3_finalize(s);
	if (json_object_set_new(job, "threads", threads)) {
		threads = NULL;
		s = NULL;
		goto fail_io;
	}
	*out = job;
	return 0;
fail_io:
	rc = ENG_ERR_IO;
fail:
	sqlite3_finalize(s);
	json_decref(threads);
	json_decref(job);
	return rc;
}

int
store_job_get(store *st, const char *id, json_t **out)
{
	int rc;
	*out = NULL;
	if (!st || !id)
		return ENG_ERR_INVALID;
	pthread_mutex_lock(&st->rmu);
	rc = job_get_locked(st, id, out);
	pthread_mutex_unlock(&st->rmu);
	return rc;
}

int
store_job_list(store *st, int limit, const char *status, json_t **out)
{
	sqlite3_stmt *s = NULL;
	int rc;

	*out = NULL;
	if (!st || limit < 0)
		return ENG_ERR_INVALID;
	pthread_mutex_lock(&st->rmu);
	if ((rc = rprepare(st, "SELECT " JOB_COLS " FROM jobs WHERE ?1 IS NULL OR status = ?1"
			       " ORDER BY created_ms DESC, rowid DESC LIMIT ?2", &s)))
		goto out;
	if (status)
		sqlite3_bind_text(s, 1, status, -1, SQLITE_STATIC);
	sqlite3_bind_int(s, 2, limit);
	rc = collect_rows(s, job_row_fn, out);
out:
	sqlite3_finalize(s);
	pthread_mutex_unlock(&st->rmu);
	return rc;
}

int
store_events(store *st, const char *id, long long after_seq, json_t **out)
{
	sqlite3_stmt *s = NULL;
	int rc;

	*out = NULL;
	if (!st || !id)
		return ENG_ERR_INVALID;
	pthread_mutex_lock(&st->rmu);
	if ((rc = rprepare(st, "SELECT json FROM events WHERE job = ?1 AND seq > ?2 ORDER BY seq",
			   &s)))
		goto out;
	sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, after_seq);
	rc = collect_rows(s, event_row_fn, out);
out:
	sqlite3_finalize(s);
	pthread_mutex_unlock(&st->rmu);
	return rc;
}

/* ---- recovery ---------------------------------------------------------------- */

/* Publish job.failed {reason} for id after its last stored event; the
 * writer applies it like any other. */
static int
fail_job(store *st, const char *id, const char *reason)
{
	sqlite3_stmt *s = NULL;
	long long seq = 0;
	struct ev *e;

	if (rprepare(st, "SELECT COALESCE(MAX(seq) + 1, 0) FROM events WHERE job = ?1", &s))
		return ENG_ERR_IO;
	sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
	if (sqlite3_step(s) == SQLITE_ROW)
		seq = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	e = ev_new(EV_JOB_FAILED, id, seq, -1, json_pack("{s:s}", "reason", reason));
	if (!e)
		return ENG_ERR_NOMEM;
	bus_publish(st->b, e);
	ev_unref(e);
	return 0;
}

int
store_recover(store *st, struct job_req **reqs, int *n_reqs)
{
	sqlite3_stmt *s = NULL;
	struct job_req *out = NULL;
	int n = 0, cap = 0, rc, step;

	*reqs = NULL;
	*n_reqs = 0;
	if (!st)
		return ENG_ERR_INVALID;
	pthread_mutex_lock(&st->rmu);
	if ((rc = rprepare(st, "SELECT id, status, request FROM jobs"
			       " WHERE status IN ('queued', 'running') ORDER BY created_ms, rowid", &s)))
		goto fail;
	while ((step = sqlite3_step(s)) == SQLITE_ROW) {
		const char *id = (const char *)sqlite3_column_text(s, 0);
		const char *status = (const char *)sqlite3_column_text(s, 1);
		const char *text = (const char *)sqlite3_column_text(s, 2);
		char err[256], reason[320];
		json_t *req;

		if (!id || strlen(id) >= EV_JOB_ID_MAX)
			continue;              /* not one of ours */
		if (strcmp(status, "running") == 0) {
			if ((rc = fail_job(st, id, STORE_INTERRUPTED)))
				goto fail;
			continue;
		}
		if (n == cap) {
			int ncap = cap ? cap * 2 : 8;
			struct job_req *t = realloc(out, (size_t)ncap * sizeof *t);
			if (!t) {
				rc = ENG_ERR_NOMEM;
				goto fail;
			}
			out = t;
			cap = ncap;
		}
		job_req_init(&out[n]);
		req = text ? json_loads(text, 0, NULL) : NULL;
		rc = req ? job_req_from_json(req, &out[n], INT_MAX, INT_MAX, err, sizeof err)
			 : eng_seterr(err, sizeof err, ENG_ERR_FORMAT, "request: not stored");
		json_decref(req);
		if (rc) {
			/* A request this build cannot read back: fail the job
			 * rather than the daemon. */
			job_req_free(&out[n]);
			snprintf(reason, sizeof reason, "recover: the stored request is invalid: %s", err);
			if ((rc = fail_job(st, id, reason)))
				goto fail;
			continue;
		}
		snprintf(out[n].id, sizeof out[n].id, "%s", id);
		n++;
	}
	if (step != SQLITE_DONE) {
		rc = ENG_ERR_IO;
		goto fail;
	}
	sqlite3_finalize(s);
	pthread_mutex_unlock(&st->rmu);
	/* The failures are written before the scheduler starts. */
	if ((rc = store_sync(st)))
		goto fail_unlocked;
	*reqs = out;
	*n_reqs = n;
	return 0;
fail:
	sqlite3_finalize(s);
	pthread_mutex_unlock(&st->rmu);
fail_unlocked:
	for (int i = 0; i < n; i++)
		job_req_free(&out[i]);
	free(out);
	return rc;
}
