#!/bin/sh
# tools.sh - the measurement scripts behind the model card and docs/strategies.md
# (tools/arith_card.sh, tools/strategies_bench.sh) still run end to end, here on
# a few problems on the CPU, and write what the docs are made from; the GPU
# test runner (tools/gpu_check.sh) finds and runs the GPU programs; the GPU
# benchmark's merge (tools/gpu_bench.sh) computes its targets from the runs.  TAP.
set -u
. "$BRAID_SRCDIR/tests/integration/tap.sh"
B=$BRAID_BIN
export BRAID_MODELS="$BRAID_SRCDIR/models"

tap_plan 10

"$BRAID_SRCDIR/tools/arith_card.sh" --out "$T/card" --braid "$B" --device cpu --problems 3 -n 2 \
	--sets "tier3 tier3-known" >"$T/card.log" 2>&1
check "arith_card.sh: a row per set with greedy, pass@1 and majority in [0, 1]" jqt \
	'[.rows[].set] == ["tier3", "tier3-known"] and all(.rows[]; .problems == 3 and
	 ([.greedy, .pass1, .maj] | all(. >= 0 and . <= 1)))' "$T/card/card.json"
check "arith_card.sh: the Known-block comparison pairs the 3 problems by index (its pass@1s are the rows')" jqt \
	'. as $c | .compare[0] as $k | ($c.rows | map({(.set): .pass1}) | add) as $p |
	 $k.name == "Known block vs none" and $k.problems == 3 and
	 ($k.pass1_a - $p["tier3"] | fabs) < 1e-9 and ($k.pass1_b - $p["tier3-known"] | fabs) < 1e-9 and
	 ($k.diff - ($k.pass1_b - $k.pass1_a) | fabs) < 1e-9' "$T/card/card.json"
check "arith_card.sh: a markdown table" grep -q '^| tier3-known | 3 |' "$T/card/card.md"

"$BRAID_SRCDIR/tools/strategies_bench.sh" --braid "$B" --device cpu --problems 1 -n 2 --concurrency 1 \
	--strategies "single multiverse" --out "$T/sb" >"$T/sb.log" 2>&1
check "strategies_bench.sh: single and multiverse on the three sets, one problem at a time" jqt \
	'.concurrency == "1" and ([.rows[] | "\(.set) \(.strategy)"] == ["tier4 single", "tier4 multiverse",
	 "mixed single", "mixed multiverse", "tier3-split-sequential single", "tier3-split-sequential multiverse"])
	 and all(.rows[]; .problems == 1 and .tokens_total > 0)' "$T/sb/strategies.json"
check "strategies_bench.sh: the table names the machine" grep -q 'in-process CPU engine' "$T/sb/strategies.md"

# The GPU programs of this build (none in a build without CUDA); test_cuda is
# the quick one, and it skips (77) without a GPU.
G="$(dirname "$(dirname "$B")")/tests/gpu"
export TMPDIR="$T"
"$BRAID_SRCDIR/tools/gpu_check.sh" --bogus >"$T/gc0.log" 2>&1
check "gpu_check.sh: an unknown option is refused (exit 2) with a message" \
	sh -c '[ $0 = 2 ] && grep -q "unknown option --bogus" "$1"' "$?" "$T/gc0.log"
if [ -x "$G/test_cuda.gpu" ]; then
	"$BRAID_SRCDIR/tools/gpu_check.sh" --bin "$G" --no-sanitizer --only test_cuda >"$T/gc.log" 2>&1
	check "gpu_check.sh: runs test_cuda alone and sums up" \
		sh -c '[ $0 = 0 ] && grep -Eq "^(ok|skip) +test_cuda " "$1" && grep -q "^1 runs, 0 failed" "$1"' \
		"$?" "$T/gc.log"
else
	"$BRAID_SRCDIR/tools/gpu_check.sh" --bin "$G" --no-sanitizer >"$T/gc.log" 2>&1
	check "gpu_check.sh: no GPU programs in a build without CUDA: exit 2 with a message" \
		sh -c '[ $0 = 2 ] && grep -q "no test_cuda" "$1"' "$?" "$T/gc.log"
fi
mkdir -p "$T/gbin"
printf '#!/bin/sh\necho "stub: 1 check failed"\nexit 1\n' >"$T/gbin/test_cuda_stub.gpu"
chmod +x "$T/gbin/test_cuda_stub.gpu"
"$BRAID_SRCDIR/tools/gpu_check.sh" --bin "$T/gbin" --no-sanitizer >"$T/gc1.log" 2>&1
check "gpu_check.sh: a failing program is reported FAIL with its kept log, and the run exits 1" \
	sh -c '[ $0 = 1 ] && grep -q "^FAIL test_cuda_stub .*stub: 1 check failed" "$1" &&
	       grep -q "1 runs, 1 failed (logs in" "$1" && [ -s "$(sed -n "s/^ *log: //p" "$1")" ]' "$?" "$T/gc1.log"

# gpu_bench.sh's merge (the issue's table and targets) over real braid bench
# JSON from the CPU, filed as the 0.6b shape, and an HF peer file in
# tools/hf_bench.py's format with made-up rates (HF cannot run here).
GB=$T/gb
mkdir -p "$GB"
M=$BRAID_SRCDIR/tests/data/models/qwen3-f32
"$B" bench --model "$M" --device cpu --n 1,64 --prompt-len 16 --gen 4 --json "$GB/braid-0.6b.json" >"$T/gb1.log" 2>&1
"$B" bench --model "$M" --device cpu --n 64 --prompt-len 48 --gen 2 --json "$GB/mem-0.6b.json" >"$T/gb2.log" 2>&1
jq -n '{peer: "HF transformers generate()", shape: "0.6b", rows: [
	{n: 1, mode: "default", tok_s: 10.0}, {n: 64, mode: "default", tok_s: 50.0},
	{n: 64, mode: "static", error: "compile failed"}]}' >"$GB/hf-0.6b.json"
printf '{"shape":"0.6b","step":"hf","rc":3,"seconds":1.5}\n' >"$GB/status-hf-0.6b.json"
"$BRAID_SRCDIR/tools/gpu_bench.sh" --merge-only --out "$GB" >"$T/gb3.log" 2>&1
check "gpu_bench.sh: the targets come from the runs' own figures (bound, e2e / HF, KV stored once)" jqt \
	--slurpfile b "$GB/braid-0.6b.json" --slurpfile m "$GB/mem-0.6b.json" '
	($b[0].rows | map({(.n|tostring): .}) | add) as $r |
	(.targets | map(select(.shape == "0.6b"))) as $t |
	($t | length) == 3 and
	($t[0].n == 1 and $t[0].value == $r["1"].fraction_of_bound and $t[0].ok == ($r["1"].fraction_of_bound >= 0.4)) and
	($t[1].n == 64 and ($t[1].value - $r["64"].e2e_tok_s / 50 | fabs) < 1e-9 and $t[1].ok == ($t[1].value >= 10)) and
	($t[2].n == 64 and $t[2].value == $m[0].rows[0].kv_bytes_used and
	 $t[2].ok == ($m[0].rows[0].kv_bytes_used <= $m[0].rows[0].kv_bytes_private / 64 * 1.001))' "$GB/gpu-bench.json"
check "gpu_bench.sh: the table shows the engine start, an HF failure and the failed step" sh -c '
	grep -q "^## 0.6b: .*engine start [0-9.]* s$" "$1" && grep -q "HF static failed: compile failed" "$1" &&
	grep -q "^- hf 0.6b: rc 3" "$1"' sh "$GB/gpu-bench.md"
