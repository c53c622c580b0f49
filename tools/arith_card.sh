#!/usr/bin/env bash
# arith_card.sh - the embedded model's accuracy table, measured with braid
# itself (`braid solve`): per problem set, greedy (single, T=0) and 16 samples
# (sc, T=0.8, top-p 1) -> greedy, pass@1, majority of 16, tokens; then the
# paired comparisons the model card reports (parallel vs sequential format on
# the same expressions, Known block vs none).  Writes OUT/card.json, OUT/card.md
# and the result files.
#   tools/arith_card.sh --out DIR [--braid src/braid] [--model DIR] [--problems K]
#                       [--sets "tier1 tier2 ..."] [-n 16] [--device D]
set -euo pipefail
cd "$(dirname "$0")/.."
braid=src/braid model="" k=0 n=16 out="" dev=auto
sets="tier1 tier2 tier3 tier4 tier3-known tier3-split-sequential tier3-split-parallel"
while [ $# -gt 0 ]; do
	case $1 in
	--out) out=$2; shift 2 ;;
	--braid) braid=$2; shift 2 ;;
	--model) model=$2; shift 2 ;;
	--problems) k=$2; shift 2 ;;
	--sets) sets=$2; shift 2 ;;
	--device) dev=$2; shift 2 ;;
	-n) n=$2; shift 2 ;;
	*) echo "usage: $0 --out DIR [--braid B] [--model DIR] [--problems K] [--sets LIST] [-n N] [--device D]" >&2
	   exit 2 ;;
	esac
done
[ -n "$out" ] || { echo "$0: --out DIR is required" >&2; exit 2; }
mkdir -p "$out"
py=python3
[ -x /usr/bin/python3 ] && py=/usr/bin/python3
margs=(--device "$dev" --max-tokens 800)
[ -n "$model" ] && margs+=(--model "$model")
t0=$(date +%s)
rows=()
for set in $sets; do
	src=examples/problems/$set.jsonl
	if [ "$k" -gt 0 ]; then head -n "$k" "$src" >"$out/$set.jsonl"; src=$out/$set.jsonl; fi
	rm -f "$out/$set-greedy.jsonl" "$out/$set-sc.jsonl"
	"$braid" solve "$src" --strategy single -n 1 --temperature 0 "${margs[@]}" \
		--out "$out/$set-greedy.jsonl" --report "$out/$set-greedy.report.json" >/dev/null 2>"$out/$set.err"
	"$braid" solve "$src" --strategy sc -n "$n" --temperature 0.8 --top-p 1 --seed 1 "${margs[@]}" \
		--out "$out/$set-sc.jsonl" --report "$out/$set-sc.report.json" >/dev/null 2>>"$out/$set.err"
	r=$($py tools/eval_arith.py --solve "$out/$set-greedy.jsonl" "$out/$set-sc.jsonl" --n "$n")
	r=$(jq -c --arg set "$set" '{set: $set} + .' <<<"$r")
	echo "$r"
	rows+=("$r")
done
cmp=()
pair() {   # pair NAME A B: B's pass@1 minus A's on the same expressions (both run now)
	case " $sets " in *" $2 "*) ;; *) return 0 ;; esac
	case " $sets " in *" $3 "*) ;; *) return 0 ;; esac
	local c
	c=$($py tools/eval_arith.py --compare "$out/$2-sc.jsonl" "$out/$3-sc.jsonl" --n "$n")
	c=$(jq -c --arg name "$1" --arg a "$2" --arg b "$3" '{name: $name, a: $a, b: $b} + .' <<<"$c")
	echo "$c"
	cmp+=("$c")
}
pair "parallel vs sequential" tier3-split-sequential tier3-split-parallel
pair "Known block vs none" tier3 tier3-known
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
{ printf '%s\n' "${rows[@]}" | jq -s .; printf '%s\n' "${cmp[@]:-}" | jq -s .; } |
	jq -s --arg braid "$("$braid" --version)" --arg gpu "$gpu" --argjson s $(($(date +%s) - t0)) \
		'{braid: $braid, gpu: $gpu, seconds: $s, rows: .[0], compare: .[1]}' >"$out/card.json"
{
	echo "| set | problems | greedy | pass@1 (T=0.8) | majority of $n | tokens (greedy) | tokens (per sample) |"
	echo "|---|---:|---:|---:|---:|---:|---:|"
	jq -r --argjson n "$n" '.rows[] | "| \(.set) | \(.problems) | \(.greedy * 1000 | round / 10)% | \(.pass1 * 1000 | round / 10)% | \(.maj * 1000 | round / 10)% | \(.tokens_greedy * 10 | round / 10) | \(.tokens_sc / $n * 10 | round / 10) |"' "$out/card.json"
	echo
	jq -r '.compare[] | "- \(.name) (\(.b) - \(.a), \(.problems) problems): pass@1 \(.diff * 1000 | round / 10) points (95% CI \(.lo * 1000 | round / 10) .. \(.hi * 1000 | round / 10)), majority \(.maj_diff * 1000 | round / 10) points, tokens per sample \(.tokens_a | round) -> \(.tokens_b | round)"' "$out/card.json"
} >"$out/card.md"
cat "$out/card.md"
