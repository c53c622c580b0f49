#!/bin/sh
# serve.sh - braid serve as clients use it: a real daemon on a free loopback
# port with a temp --db and the tiny qwen3-f32 model; REST through curl, SSE
# parsed as it streams, the websocket and the official openai SDK through
# node, malformed input, API keys, 20 concurrent jobs, a restart.  TAP.
set -u
. "$BRAID_SRCDIR/tests/integration/tap.sh"
B=$BRAID_BIN
D=$BRAID_TEST_DATA
S=$BRAID_SRCDIR
for tool in curl jq node; do
	command -v $tool >/dev/null 2>&1 || { echo "1..0 # SKIP $tool not installed"; exit 0; }
done
[ -d "$S/node_modules/ws" ] && [ -d "$S/node_modules/openai" ] ||
	{ echo "1..0 # SKIP node_modules missing: run ./setup (npm install)"; exit 0; }
MODEL=$D/models/qwen3-f32

# start NAME ARGS...: a daemon on a free port; sets $pid and $url
start() {
	name=$1; shift
	"$B" serve --port 0 --model "$MODEL" "$@" >"$T/$name.out" 2>"$T/$name.err" &
	pid=$!
	PIDS="$PIDS $pid"
	url=
	i=0
	while [ $i -lt 600 ]; do
		url=$(sed -n 's|.* on \(http://[^/]*\)/.*|\1|p' "$T/$name.out" | head -1)
		[ -n "$url" ] && curl -sf "$url/healthz" >/dev/null 2>&1 && return 0
		kill -0 $pid 2>/dev/null || return 1
		sleep 0.1; i=$((i + 1))
	done
	return 1
}
# req METHOD PATH [curl args]: body to $T/body, status to $code
req() {
	m=$1; p=$2; shift 2
	code=$(curl -s -o "$T/body" -w '%{http_code}' -X "$m" "$@" "$url$p")
}
# is4xx "desc" WANT_CODE PATTERN: the last req answered WANT_CODE with a message
is_err() {
	if [ "$code" = "$2" ] && jq -e '.error.message | length > 0' "$T/body" >/dev/null 2>&1 &&
	   grep -qi -- "$3" "$T/body"; then ok "$1"
	else not_ok "$1 (got $code: $(head -c 200 "$T/body"))"; fi
}
# wait_final ID: poll until the job is done or failed (60 s); prints status
wait_final() {
	i=0
	while [ $i -lt 600 ]; do
		st=$(curl -s "$url/v1/jobs/$1" | jq -r .status)
		case $st in done|failed) echo "$st"; return 0;; esac
		sleep 0.1; i=$((i + 1))
	done
	echo "$st"
}

tap_plan 44

# ---- start, health, REST ------------------------------------------------------------
start main --db "$T/braid.db"
check "daemon starts and prints its URL" [ -n "$url" ]
URL1=$url
req GET /healthz
check "/healthz answers ok" sh -c "[ $code = 200 ] && jq -e '.status == \"ok\"' '$T/body' >/dev/null"

req POST /v1/jobs -H 'content-type: application/json' -d '{"question":"What is 2+2?","strategy":"sc","n":3,"max_tokens":16}'
J1=$(jq -r .id "$T/body" 2>/dev/null)
check "POST /v1/jobs answers 202 with an id" sh -c "[ $code = 202 ] && echo '$J1' | grep -qE '^j[0-9a-f]{20}$'"
req GET "/v1/jobs/$J1"
check "GET /v1/jobs/ID right after creating it" sh -c "[ $code = 200 ] && jq -e '.id == \"$J1\"' '$T/body' >/dev/null"
st=$(wait_final "$J1")
check "the job finishes (status $st)" [ "$st" = done ]
req GET "/v1/jobs/$J1"
check "a finished job has its 3 threads and token counts" \
 jqt '(.threads | length) == 3 and .tokens > 0 and (.threads | all(.tokens >= 1))' "$T/body"
req GET /v1/jobs
check "GET /v1/jobs lists it" jqt --arg id "$J1" '.jobs | map(.id) | index($id) != null' "$T/body"
req GET "/v1/jobs/$J1/events"
check "trace: job.queued .. job.done, seq 0..n-1, every thread spawned and done" jqt '
	.[0].type == "job.queued" and .[-1].type == "job.done" and
	([.[].seq] == [range(0; length)]) and
	([.[] | select(.type == "thread.spawned")] | length) == 3 and
	([.[] | select(.type == "thread.done")] | length) == 3' "$T/body"
TRACE_LEN=$(jq length "$T/body")

# ---- SSE, parsed as it arrives -------------------------------------------------------------
req POST /v1/jobs -d '{"question":"1+1?","n":2,"max_tokens":16}'
J2=$(jq -r .id "$T/body")
curl -sN -H 'Accept: text/event-stream' "$url/v1/jobs/$J2/events" | awk '
	/^event: / { type = $2 }
	/^data: / { n++; sub(/^data: /, ""); if (index($0, "\"type\":\"" type "\"") == 0) bad++ }
	/^$/ && type != "" { last = type; type = "" }
	END { printf "%d %s %d\n", n, last, bad }' >"$T/sse"
read -r sse_n sse_last sse_bad <"$T/sse"
check "SSE: the whole job streamed, ending at job.done ($sse_n events)" \
	[ "$sse_n" -ge 6 -a "$sse_last" = job.done -a "$sse_bad" -eq 0 ]
curl -s "$url/v1/jobs/$J2/events?stream=1" | grep -c '^data: ' >"$T/replay"
check "SSE of a finished job replays its trace and ends" [ "$(cat "$T/replay")" -eq "$sse_n" ]

# ---- cancel ---------------------------------------------------------------------------------
req POST /v1/jobs -d '{"question":"Count to a million.","n":32,"max_tokens":4000}'
J3=$(jq -r .id "$T/body")
req DELETE "/v1/jobs/$J3"
check "DELETE a running job: 202" [ "$code" = 202 ]
st=$(wait_final "$J3")
curl -s "$url/v1/jobs/$J3/events" >"$T/body"
check "the cancelled job fails with reason cancelled" sh -c \
	"[ '$st' = failed ] && jq -e 'any(.[]; .type == \"job.failed\" and .reason == \"cancelled\")' '$T/body' >/dev/null"
req DELETE "/v1/jobs/$J1"
is_err "DELETE a finished job: 409" 409 "already"
req DELETE /v1/jobs/j00000000000000000000
is_err "DELETE an unknown job: 404" 404 "no such job"

# ---- malformed input: a clear 4xx each, and the daemon keeps serving -------------------------
req POST /v1/jobs -d '{"question": "x", '
is_err "broken JSON: 400 naming the problem" 400 "malformed JSON"
head -c 20000000 /dev/zero | tr '\0' 'a' >"$T/big"
req POST /v1/jobs --data-binary @"$T/big"
check "a 20 MB body: 413" [ "$code" = 413 ]
printf '{"question":"caf\351"}' >"$T/latin1"
req POST /v1/jobs --data-binary @"$T/latin1"
is_err "invalid UTF-8: 400" 400 "UTF-8"
req POST /v1/jobs -d '{"question":"x","strategy":"telepathy"}'
is_err "unknown strategy: 400 naming it" 400 "telepathy"
req POST /v1/jobs -d '{"question":"x","n":-3}'
is_err "negative n: 400" 400 "n"
req POST /v1/jobs -d '{"question":"x","n":1000000000}'
is_err "huge n: 400" 400 "n"
req GET /v1/jobs/j00000000000000000000
is_err "unknown job id: 404" 404 "no such job"
req GET "/v1/jobs/x';DROP%20TABLE%20jobs"
is_err "a malformed job id: 404" 404 "not a job id"
code=$(curl -s --path-as-is -o "$T/body" -w '%{http_code}' "$url/../../etc/passwd")
check "path traversal /../../etc/passwd: 403/404 ($code)" sh -c "[ $code = 403 -o $code = 404 ] && ! grep -q root: '$T/body'"
code=$(curl -s --path-as-is -o "$T/body" -w '%{http_code}' "$url/%2e%2e/%2e%2e/etc/passwd")
check "path traversal %2e%2e: 403/404 ($code)" sh -c "[ $code = 403 -o $code = 404 ] && ! grep -q root: '$T/body'"
req GET /
check "the page is served at / as HTML" sh -c "[ $code = 200 ] && grep -qi '<html' '$T/body'"
req GET /v1/models
check "/v1/models lists the model and sc16 slug" jqt '.data | map(.id) | (index("qwen3-f32") != null and index("sc16:qwen3-f32") != null)' "$T/body"
req GET /metrics
check "/metrics: Prometheus text with jobs, queue, KV and 4xx counts" sh -c \
	"grep -q '^braid_jobs{state=\"done\"}' '$T/body' && grep -q '^braid_kv_blocks' '$T/body' && grep -q '^braid_queue_depth' '$T/body' && grep -q 'braid_http_responses_total{code=\"400\"}' '$T/body'"
req GET /healthz
check "still serving after the bad input" [ "$code" = 200 ]

# ---- 20 concurrent jobs --------------------------------------------------------------------
i=0
while [ $i -lt 20 ]; do
	curl -s -X POST "$url/v1/jobs" -d "{\"question\":\"job $i: 3*$i?\",\"n\":2,\"max_tokens\":12}" >"$T/c$i" &
	i=$((i + 1))
done
wait_all() { i=0; while [ $i -lt 20 ]; do [ -s "$T/c$i" ] || return 1; i=$((i + 1)); done; }
n=0; while ! wait_all && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
done_n=0
i=0
while [ $i -lt 20 ]; do
	id=$(jq -r .id "$T/c$i" 2>/dev/null)
	[ "$(wait_final "$id")" = done ] && done_n=$((done_n + 1))
	i=$((i + 1))
done
check "20 concurrent jobs all finish ($done_n/20)" [ $done_n -eq 20 ]

# ---- websocket -------------------------------------------------------------------------------
cd "$S"
node tests/integration/ws_client.mjs "$url" follow "What is 7*6?" 3 >"$T/ws" 2>&1
check "websocket: a job's whole event sequence, in order" jqt \
	'.first == "job.queued" and .last == "job.done" and .consecutive and .allHave and .spawned == 3 and .done == 3 and (.types | index("thread.delta") != null)' "$T/ws"
node tests/integration/ws_client.mjs "$url" origin "http://evil.example" >"$T/ws" 2>&1
check "websocket from a foreign Origin is refused" jqt '.opened == false and .status == 403' "$T/ws"
node tests/integration/ws_client.mjs "$url" origin "$url" >"$T/ws" 2>&1
check "websocket from the server's own Origin is accepted" jqt '.opened == true' "$T/ws"

# ---- the openai SDK ------------------------------------------------------------------------
node tests/integration/openai_client.mjs "$url" plain "single:qwen3-f32" >"$T/oa" 2>&1
check "openai SDK: non-streaming chat completion" jqt \
	'.object == "chat.completion" and .n_choices == 1 and .contents_are_strings and .usage.prompt_tokens > 0 and .usage.total_tokens == .usage.prompt_tokens + .usage.completion_tokens' "$T/oa"
node tests/integration/openai_client.mjs "$url" stream "sc2:qwen3-f32" >"$T/oa" 2>&1
check "openai SDK: streaming, 2 choices, finish_reason, usage last" jqt \
	'.object == "chat.completion.chunk" and (.finish | length) == 2 and .usage.completion_tokens > 0 and .after_usage == 0 and .chunks > 4' "$T/oa"
node tests/integration/openai_client.mjs "$url" n3 "qwen3-f32" >"$T/oa" 2>&1
check "openai SDK: n=3 gives 3 choices (sc over 3 threads) and the vote" jqt \
	'.n_choices == 3 and .indexes == [0,1,2] and .braid.strategy == "sc" and (.braid | has("votes"))' "$T/oa"

# a streaming client that leaves cancels its job
# (it hangs up right after the first content chunk: sed quits, curl's next write fails)
curl -sN --max-time 20 "$url/v1/chat/completions" -d \
	'{"model":"sc64:qwen3-f32","stream":true,"max_tokens":4000,"messages":[{"role":"user","content":"Tell me everything."}]}' 2>/dev/null |
	sed -n '/"content":"[^"]/{p;q}' >"$T/leave"
JL=$(sed -n 's/^data: {"id":"chatcmpl-\(j[0-9a-f]*\)".*/\1/p' "$T/leave" | head -1)
st=$(wait_final "$JL")
curl -s "$url/v1/jobs/$JL/events" >"$T/body"
check "a streaming client that disconnects cancels its job ($JL: $st)" sh -c \
	"[ -n '$JL' ] && [ '$st' = failed ] && jq -e 'any(.[]; .type == \"job.failed\" and .reason == \"cancelled\")' '$T/body' >/dev/null"
[ $tap_failed -eq 0 ] || diag "trace tail: $(jq -c '.[-3:] | map([.type, .reason])' "$T/body")"

# ---- a slow websocket client ------------------------------------------------------------------
# A client that stops reading must not hold the engine back: its queue is
# bounded (--ws-queue 8 here), the job runs to the end meanwhile, and when
# the client reads again it finds a gap event counting what was dropped.
start slow --db "$T/slow.db" --ws-queue 8
node tests/integration/ws_client.mjs "$url" slow "Count to a hundred." 32 >"$T/ws" 2>&1
check "a websocket client that stops reading does not stall the job" jqt '.doneWhilePaused == true' "$T/ws"
check "... it gets gap events naming the job and the number dropped; re-reading gives the final state" jqt \
	'.gaps >= 1 and .dropped > 0 and .gapNamesJob and .stateAfter == "done" and .threadsAfter == 32' "$T/ws"
[ $tap_failed -eq 0 ] || diag "slow client: $(cat "$T/ws")"
kill $pid

# ---- API keys ------------------------------------------------------------------------------------
"$B" serve --port 0 --host 0.0.0.0 --model "$MODEL" --db "$T/other.db" >"$T/nokey.out" 2>"$T/nokey.err" &
p=$!
PIDS="$PIDS $p"
n=0; while kill -0 $p 2>/dev/null && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
wait $p; rc=$?
check "a non-loopback host without --api-key is refused" sh -c "[ $rc -ne 0 ] && grep -q 'api-key' '$T/nokey.err'"
start keyed --db "$T/keyed.db" --api-key s3cret
req GET /healthz
c1=$code
req GET /v1/jobs
c2=$code
req GET /v1/jobs -H 'Authorization: Bearer wrong'
c3=$code
req GET /v1/jobs -H 'Authorization: Bearer s3cret'
c4=$code
check "api key: /healthz open, others 401 without or with a wrong key, 200 with it ($c1 $c2 $c3 $c4)" \
	[ "$c1" = 200 -a "$c2" = 401 -a "$c3" = 401 -a "$c4" = 200 ]
node tests/integration/ws_client.mjs "$url" origin "$url" >"$T/ws" 2>&1
c5=$(jq -r .status "$T/ws")
BRAID_API_KEY=s3cret node tests/integration/ws_client.mjs "$url" origin "$url" >"$T/ws" 2>&1
c6=$(jq -r .status "$T/ws")
check "api key: websocket upgrade 401 without it, 101 with it ($c5 $c6)" [ "$c5" = 401 -a "$c6" = 101 ]
kill $pid

# ---- restart on the same db -----------------------------------------------------------------
url=$URL1
kill -TERM "$(echo $PIDS | cut -d' ' -f1)"
wait "$(echo $PIDS | cut -d' ' -f1)"; rc=$?
check "SIGTERM: a clean shutdown (exit $rc)" [ $rc -eq 0 ]
start again --db "$T/braid.db"
req GET "/v1/jobs/$J1"
check "after a restart the finished job is still readable" jqt '.status == "done" and (.threads | length) == 3' "$T/body"
req GET "/v1/jobs/$J1/events"
check "... and so is its whole trace" [ "$(jq length "$T/body")" = "$TRACE_LEN" ]
