#!/bin/sh
# solve.sh - braid solve and braid ask as a user runs them, on the tiny
# random qwen3-f32 model (answers are noise: this tests mechanics): result
# and report shapes and counts, grading against gold, resume after kill -9,
# Ctrl-C and a torn last line, --server mode against a real daemon, and
# clear errors for bad input.  TAP.
#
# tests/data/problems/sample-{gsm8k,math500,amc23,aime24}.jsonl are the first
# lines of the real files; sample-greedy.jsonl asks the same question twice:
# once with the gold answer set to what this model answers greedily ("8",
# found by running it once), once with the true sum, so that `correct` is
# seen both true and false honestly.
set -u
. "$BRAID_SRCDIR/tests/integration/tap.sh"
B=$BRAID_BIN
D=$BRAID_TEST_DATA
P=$D/problems
for tool in jq curl; do
	command -v $tool >/dev/null 2>&1 || { echo "1..0 # SKIP $tool not installed"; exit 0; }
done
MODEL=$D/models/qwen3-f32

# ids FILE: the sorted ids of a problem file as the spec defines them (the
# "id" field, else the 1-based line number), as compact JSON, one a line
ids() { jq -c -s 'to_entries | map(.value.id // (.key + 1)) | .[]' "$1" | sort; }
# result_ids FILE: the sorted ids of a results file
result_ids() { jq -c '.id' "$1" | sort; }
# same_ids RESULTS PROBLEMS: each problem's id in RESULTS exactly once
same_ids() { [ "$(result_ids "$1" | tr '\n' ' ')" = "$(ids "$2" | tr '\n' ' ')" ]; }
# wait_lines FILE N PID: until FILE has N lines (or PID exits, or 60 s)
wait_lines() {
	i=0
	while [ $i -lt 600 ]; do
		[ -f "$1" ] && [ "$(wc -l <"$1")" -ge "$2" ] && return 0
		kill -0 "$3" 2>/dev/null || return 1
		sleep 0.1; i=$((i + 1))
	done
	return 1
}

tap_plan 40

# the main problem file: the real formats (AIME's first problem is longer
# than this model's context, so it gets a test of its own) and the pair
cat "$P/sample-amc23.jsonl" "$P/sample-gsm8k.jsonl" "$P/sample-math500.jsonl" >"$T/main.jsonl"
sed -n '2,3p' "$P/sample-aime24.jsonl" >>"$T/main.jsonl"
cat "$P/sample-greedy.jsonl" >>"$T/main.jsonl"
NMAIN=$(wc -l <"$T/main.jsonl")
ARGS="--strategy sc -n 2 --temperature 0 --max-tokens 40"

run "$B" --help
check "braid --help lists solve and ask" sh -c "grep -q '^  solve ' '$T/out' && grep -q '^  ask ' '$T/out'"

# ---- in-process --------------------------------------------------------------------
run "$B" solve "$T/main.jsonl" --model "$MODEL" $ARGS --out "$T/r1.jsonl" --report "$T/rep1.json"
check "solve: $NMAIN problems in-process, exit 0" [ "$rc" -eq 0 ]
check "solve: one result line per problem, every id exactly once (ids from the file)" \
	eval '[ $(wc -l <"$T/r1.jsonl") -eq $NMAIN ] && same_ids "$T/r1.jsonl" "$T/main.jsonl"'
check "solve: result lines have id, answer, correct, gold, tokens, ms, strategy, n, votes" jqt -s '
	all(.[]; has("id") and has("answer") and has("correct") and has("gold") and
	    (.tokens | type == "number" and . > 0) and (.ms | type == "number" and . >= 0) and
	    .strategy == "sc" and .n == 2 and (.votes | type == "object"))' "$T/r1.jsonl"
check "solve: GSM8K gold is the number after ####" jqt --slurpfile p "$P/sample-gsm8k.jsonl" -s '
	([.[] | select(.id == 4 or .id == 5 or .id == 6)] | sort_by(.id) | map(.gold)) ==
	[$p[] | .answer | split("#### ")[-1]]' "$T/r1.jsonl"
check "solve: AMC's numeric answer 27.0 is gold \"27\", MATH's LaTeX kept" jqt -s '
	(.[] | select(.id == 0) | .gold == "27") and
	(.[] | select(.id == 7) | .gold == "\\left( 3, \\frac{\\pi}{2} \\right)")' "$T/r1.jsonl"
check "solve: the model's greedy answer graded correct against gold 8, wrong against 6" jqt -s '
	(.[] | select(.id == "greedy-right") | .answer == "8" and .correct == true) and
	(.[] | select(.id == "greedy-wrong") | .answer == "8" and .correct == false)' "$T/r1.jsonl"
check "solve: a result without an answer is never correct; votes sum to at most n" jqt -s '
	all(.[]; (.answer != null or .correct == false) and ([.votes[]] | add // 0) <= .n)' "$T/r1.jsonl"
check "report: problems, correct, accuracy, tokens_total, latencies, strategy, n, failed" \
	jqt --slurpfile r "$T/r1.jsonl" '
	.problems == ($r | length) and .correct == ([$r[] | select(.correct == true)] | length) and
	.accuracy == (.correct / ([$r[] | select(.gold != null)] | length)) and
	.tokens_total == ([$r[].tokens] | add) and .latency_ms_p50 <= .latency_ms_p95 and
	.latency_ms_p95 <= ([$r[].ms] | max) and .latency_ms_p50 >= ([$r[].ms] | min) and
	.strategy == "sc" and .n == 2 and .failed == 0 and .wall_s > 0' "$T/rep1.json"
check "solve: plain progress lines (not a terminal), one per finished problem" \
	[ "$(grep -c '^\[[0-9]*/'"$NMAIN"'\] id ' "$T/err")" -eq "$NMAIN" ]

run "$B" solve "$T/main.jsonl" --model "$MODEL" $ARGS
check "solve without --out writes the results to stdout" \
	sh -c "[ $rc -eq 0 ] && [ \$(jq -c .id '$T/out' | sort -u | wc -l) -eq $NMAIN ]"

# ---- resume ----------------------------------------------------------------------------
cp "$T/r1.jsonl" "$T/r1.before"
run "$B" solve "$T/main.jsonl" --model "$MODEL" $ARGS --out "$T/r1.jsonl" --report "$T/rep1b.json"
check "rerun with every problem done: nothing added, report still counts all" sh -c \
	"[ $rc -eq 0 ] && cmp -s '$T/r1.before' '$T/r1.jsonl' && jq -e '.problems == $NMAIN and .done == $NMAIN and .resumed == $NMAIN' '$T/rep1b.json' >/dev/null"

head -n 4 "$T/r1.before" >"$T/r2.jsonl"
printf '{"id":"greedy-right","answer":"8","gol' >>"$T/r2.jsonl"
run "$B" solve "$T/main.jsonl" --model "$MODEL" $ARGS --out "$T/r2.jsonl" --report "$T/rep2.json"
check "a torn last line is cut away and its problem rerun" sh -c \
	"[ $rc -eq 0 ] && grep -q 'partial last line' '$T/err' && jq -e . '$T/r2.jsonl' >/dev/null"
check "... and each id appears exactly once after the resume" same_ids "$T/r2.jsonl" "$T/main.jsonl"
check "... the four whole lines before it kept as they were" \
	eval '[ "$(head -n 4 "$T/r2.jsonl")" = "$(head -n 4 "$T/r1.before")" ]'

# kill -9 mid-run, then the same command again
i=1
: >"$T/long.jsonl"
while [ $i -le 60 ]; do
	echo "{\"id\":\"k$i\",\"question\":\"What is $i plus $i?\",\"answer\":\"$((2 * i))\"}" >>"$T/long.jsonl"
	i=$((i + 1))
done
LONG="--model $MODEL -n 4 --max-tokens 200 --concurrency 2"
"$B" solve "$T/long.jsonl" $LONG --out "$T/k.jsonl" --report "$T/krep.json" 2>"$T/kerr" &
kp=$!
PIDS="$PIDS $kp"
wait_lines "$T/k.jsonl" 5 $kp
kill -9 $kp 2>/dev/null
wait $kp 2>/dev/null
before=$(wc -l <"$T/k.jsonl")
check "kill -9 mid-run leaves finished results ($before of 60)" [ "$before" -ge 5 -a "$before" -lt 60 ]
run "$B" solve "$T/long.jsonl" $LONG --out "$T/k.jsonl" --report "$T/krep.json"
check "the rerun resumes and finishes (exit 0)" sh -c "[ $rc -eq 0 ] && grep -q 'already done; resuming' '$T/err'"
check "after kill -9 and rerun every id is in --out exactly once" same_ids "$T/k.jsonl" "$T/long.jsonl"
check "the report counts all 60 problems" jqt --slurpfile r "$T/k.jsonl" \
	'.problems == 60 and .done == 60 and .resumed == '"$before"' and .tokens_total == ([$r[].tokens] | add)' "$T/krep.json"

# Ctrl-C: stop, cancel, exit 130, keep what is done
"$B" solve "$T/long.jsonl" $LONG --out "$T/c.jsonl" --report "$T/crep.json" 2>"$T/cerr" &
cp=$!
PIDS="$PIDS $cp"
wait_lines "$T/c.jsonl" 3 $cp
kill -INT $cp 2>/dev/null
wait $cp
crc=$?
check "Ctrl-C: exit 130, the report says interrupted" sh -c \
	"[ $crc -eq 130 ] && jq -e '.interrupted == true and .done < 60 and .done >= 3' '$T/crep.json' >/dev/null"
run "$B" solve "$T/long.jsonl" $LONG --out "$T/c.jsonl"
check "after Ctrl-C the rerun completes with every id once" \
	eval '[ $rc -eq 0 ] && same_ids "$T/c.jsonl" "$T/long.jsonl"'

# ---- braid ask -----------------------------------------------------------------------------
run "$B" ask "What is 3 plus 3?" --model "$MODEL" --strategy single --temperature 0 --max-tokens 40
check "ask: streams the thread, then prints the greedy answer 8 and its votes" sh -c \
	"[ $rc -eq 0 ] && grep -q '^\[0\] ' '$T/out' && grep -qx 'answer: 8' '$T/out' && grep -q '^votes: {\"8\": *1}' '$T/out'"
run "$B" ask "What is 3 plus 3?" --model "$MODEL" -n 3 --max-tokens 12
check "ask -n 3: three threads stream and finish, then an answer line" sh -c \
	"[ $rc -eq 0 ] && [ \$(grep -c '^\[[0-2]\] done (' '$T/out') -eq 3 ] && grep -q '^answer: ' '$T/out'"

# ---- --server ------------------------------------------------------------------------------
"$B" serve --port 0 --model "$MODEL" --db "$T/braid.db" >"$T/srv.out" 2>"$T/srv.err" &
sp=$!
PIDS="$PIDS $sp"
url=
i=0
while [ $i -lt 600 ]; do
	url=$(sed -n 's|.* on \(http://[^/]*\)/.*|\1|p' "$T/srv.out" | head -1)
	[ -n "$url" ] && curl -sf "$url/healthz" >/dev/null 2>&1 && break
	kill -0 $sp 2>/dev/null || break
	sleep 0.1; i=$((i + 1))
done
run "$B" solve "$T/main.jsonl" --server "$url" $ARGS --out "$T/s.jsonl" --report "$T/srep.json"
check "solve --server: exit 0, every id once" eval '[ $rc -eq 0 ] && same_ids "$T/s.jsonl" "$T/main.jsonl"'
check "solve --server: the same result fields as in-process" sh -c \
	"[ \"\$(jq -c 'keys' '$T/s.jsonl' | sort -u)\" = \"\$(jq -c 'keys' '$T/r1.jsonl' | sort -u)\" ]"
check "solve --server: the same greedy answers as in-process, graded the same" sh -c \
	"[ \"\$(jq -c '[.id, .answer, .correct, .gold, .votes]' '$T/s.jsonl' | sort)\" = \"\$(jq -c '[.id, .answer, .correct, .gold, .votes]' '$T/r1.jsonl' | sort)\" ]"
check "solve --server: the report has the same counts" sh -c \
	"[ \"\$(jq -c '[.problems, .done, .correct, .tokens_total, .strategy, .n, .failed]' '$T/srep.json')\" = \"\$(jq -c '[.problems, .done, .correct, .tokens_total, .strategy, .n, .failed]' '$T/rep1.json')\" ]"
run "$B" ask "What is 3 plus 3?" --server "$url" --strategy single --temperature 0 --max-tokens 40
check "ask --server: the answer line" sh -c "[ $rc -eq 0 ] && grep -qx 'answer: 8' '$T/out' && grep -q '^\[0\] ' '$T/out'"
fails_clearly "solve --server with n past the daemon's cap: the daemon's reason" 1 "must be in" \
	"$B" solve "$T/main.jsonl" --server "$url" -n 1000 --max-tokens 4

# ---- bad input ---------------------------------------------------------------------------
fails_clearly "a missing problem file" 1 "nope.jsonl: No such file" "$B" solve "$T/nope.jsonl" --model "$MODEL"
{
	sed -n 1p "$P/sample-amc23.jsonl"
	echo '{"id": 7, "question": "unterminated'
	echo '{"id": 8, "answer": "3"}'
	echo '[1, 2, 3]'
	echo '{"id": 9, "question": 42}'
	echo '{"id": 0, "question": "the same id again"}'
	echo
	sed -n 2p "$P/sample-amc23.jsonl"
} >"$T/bad.jsonl"
run "$B" solve "$T/bad.jsonl" --model "$MODEL" -n 1 --max-tokens 4 --out "$T/bad-r.jsonl"
check "malformed lines: each reported with its line number and skipped, the rest run, exit 1" sh -c "
	[ $rc -eq 1 ] && grep -q 'bad.jsonl:2: not valid JSON' '$T/err' && grep -q 'bad.jsonl:3: no question' '$T/err' &&
	grep -q 'bad.jsonl:4: not a JSON object' '$T/err' && grep -q 'bad.jsonl:5: \"question\" is not a string' '$T/err' &&
	grep -q 'bad.jsonl:6: id 0 repeats line 1' '$T/err' && [ \"\$(jq -c .id '$T/bad-r.jsonl' | sort | tr '\n' ' ')\" = '0 1 ' ]"
fails_clearly "an unknown strategy" 2 "unknown strategy 'bogus'" "$B" solve "$T/main.jsonl" --strategy bogus
fails_clearly "-n 0" 2 "\-\-n wants an integer" "$B" solve "$T/main.jsonl" -n 0
fails_clearly "ask -n 0" 2 "\-\-n wants an integer" "$B" ask "hi" -n 0
fails_clearly "no problem file" 2 "which problem file" "$B" solve
fails_clearly "ask without a question" 2 "give one question" "$B" ask
: >"$T/empty.jsonl"
fails_clearly "an empty problem file" 1 "no problems" "$B" solve "$T/empty.jsonl" --model "$MODEL"
echo 'this is not a results file' >"$T/notours.jsonl"
fails_clearly "--out that is not a results file is left alone" 1 "notours.jsonl:1: not a result line" \
	"$B" solve "$T/main.jsonl" --model "$MODEL" --out "$T/notours.jsonl"
sed -n 1p "$P/sample-aime24.jsonl" >"$T/long1.jsonl"
run "$B" solve "$T/long1.jsonl" --model "$MODEL" -n 1 --max-tokens 4 --out "$T/l-r.jsonl" --report "$T/l-rep.json"
check "a problem longer than the context fails clearly, is not written, and is counted" sh -c "
	[ $rc -eq 1 ] && grep -q 'problem 60 (line 1) failed: .*too long' '$T/err' && [ ! -s '$T/l-r.jsonl' ] &&
	jq -e '.problems == 1 and .done == 0 and .failed == 1' '$T/l-rep.json' >/dev/null"
fails_clearly "an unreachable --server" 1 "127.0.0.1:1/healthz" "$B" solve "$T/main.jsonl" --server http://127.0.0.1:1
