#!/usr/bin/env bash
# strategies_bench.sh - accuracy, tokens and wall time of every strategy on the
# embedded model's hardest tier, mixed set and decomposable set, measured with
# `braid solve`; writes DIR/strategies.md and DIR/strategies.json (default DIR
# strategies-out; docs/strategies.md is written from such runs).
#   tools/strategies_bench.sh [--problems K] [--braid src/braid] [--strategies "single sc ..."]
#                             [-n N] [--device auto|cpu|cuda] [--out DIR] [--concurrency C]
# K: the first K problems of each set (default: all).  Each row is one
# `braid solve` run in-process on this machine's engine; the machine is named
# in the output.
set -euo pipefail
cd "$(dirname "$0")/.."
braid=src/braid
k=0
strategies="single sc deepconf prune multiverse parathink pdr team"
n=16
dev=auto
outdir=strategies-out
conc=()
while [ $# -gt 0 ]; do
	case $1 in
	--problems) k=$2; shift 2 ;;
	--braid) braid=$2; shift 2 ;;
	--strategies) strategies=$2; shift 2 ;;
	-n) n=$2; shift 2 ;;
	--device) dev=$2; shift 2 ;;
	--out) outdir=$2; shift 2 ;;
	--concurrency) conc=(--concurrency "$2"); shift 2 ;;
	*) echo "usage: $0 [--problems K] [--braid PATH] [--strategies LIST] [-n N] [--device D] [--out DIR]" >&2
	   exit 2 ;;
	esac
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
hardest=$(ls examples/problems/tier*.jsonl | grep -E 'tier[0-9]+\.jsonl$' | sort -V | tail -1)
# the decomposable set (expressions with independent sub-expressions), for
# multiverse against a single sequential thread on the same problems
decomp=examples/problems/tier3-split-sequential.jsonl
sets="$hardest examples/problems/mixed.jsonl $decomp"
# the parallel-format copies feed multiverse, which forks on the model's <Parallel> blocks
machine="$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
engine="in-process CPU engine"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
if [ -n "$gpu" ] && [ "$dev" != cpu ]; then
	machine="$gpu (CPU: $machine)"
	engine="in-process CUDA engine"
fi
echo "machine: $machine; braid $($braid --version)"
rows=()
for set in $sets; do
	name=$(basename "$set" .jsonl)
	src=$set
	if [ "$k" -gt 0 ]; then head -n "$k" "$set" >"$tmp/$name.jsonl"; src=$tmp/$name.jsonl; fi
	list=$strategies
	[ "$set" = "$decomp" ] && list=$(tr ' ' '\n' <<<"$strategies" | { grep -xE 'single|sc|multiverse' || true; } |
		tr '\n' ' ')
	for s in $list; do
		in=$src
		if [ "$s" = multiverse ]; then   # ask for the parallel format
			jq -c '.question = ("Parallel: " + .question)' "$src" >"$tmp/$name-par.jsonl"
			in=$tmp/$name-par.jsonl
		fi
		nn=$n; [ "$s" = single ] && nn=1
		if ! "$braid" solve "$in" --strategy "$s" -n "$nn" --device "$dev" ${conc[@]+"${conc[@]}"} --out "$tmp/$name-$s.jsonl" \
			--report "$tmp/$name-$s.report.json" >/dev/null 2>"$tmp/$name-$s.err"; then
			echo "$name $s: failed: $(tail -1 "$tmp/$name-$s.err")" >&2
			continue
		fi
		r=$(jq -c --arg set "$name" --arg s "$s" '{set: $set, strategy: $s, n: .n, problems, correct,
			accuracy, tokens_total, wall_s, latency_ms_p50, latency_ms_p95}' "$tmp/$name-$s.report.json")
		echo "$r"
		rows+=("$r")
	done
done
mkdir -p "$outdir"
printf '%s\n' "${rows[@]}" | jq -s --arg machine "$machine" --arg engine "$engine" \
	--arg conc "${conc[1]:-default}" '{machine: $machine, engine: $engine, concurrency: $conc, rows: .}' >"$outdir/strategies.json"
{
	echo "# Strategies on the embedded model"
	echo
	echo "Measured by \`tools/strategies_bench.sh\` with \`braid solve\` ($engine) on: $machine."
	echo "Sets: the hardest tier ($(basename "$hardest")), the mixed set and the decomposable set ($(basename "$decomp"): single, sc and multiverse only)$( [ "$k" -gt 0 ] && echo ", first $k problems of each")."
	if [ ${#conc[@]} -gt 0 ]; then
		echo "wall s: the whole set, ${conc[1]} problem(s) in flight at a time (\`--concurrency ${conc[1]}\`); p50/p95: per-problem latency."
	else
		echo "wall s: the whole set (problems run side by side, \`braid solve\`'s default concurrency); p50/p95: per-problem latency."
	fi
	echo
	echo "| set | strategy | n | problems | accuracy | tokens | wall s | p50 ms | p95 ms |"
	echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
	jq -r '.rows[] | "| \(.set) | \(.strategy) | \(.n) | \(.problems) | \((.accuracy // 0) * 1000 | round / 10)% | \(.tokens_total) | \(.wall_s * 10 | round / 10) | \(.latency_ms_p50) | \(.latency_ms_p95) |"' "$outdir/strategies.json"
} >"$outdir/strategies.md"
echo "wrote $outdir/strategies.md"
