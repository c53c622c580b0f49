#!/usr/bin/env bash
# exp_next.sh - branch exp/normfuse only: the first device call of the
# twelfth session, for the two unmet targets.  On the GPU machine from the
# repository root with a bundle in .gpu whose bin/ holds braid-main (main),
# braid-norm, test_cuda_gemm-norm.gpu, test_cuda_engine-norm.gpu (this
# branch), braid-sk and test_cuda_gemm-sk.gpu (exp/skinny); ~8 minutes.
#  1. exp/normfuse's checks (the fused GEMV bit for bit against k_rmsnorm +
#     GEMV; the engine with and without it) and N=1/8 against main;
#  2. exp/skinny's checks (four variants) and every GEMM candidate's time at
#     1.7b n = 64 / 128 (BRAID_GEMM_TUNE_LOG=1), with the bench against main.
set -u
export LD_LIBRARY_PATH=$PWD/.gpu/lib PATH=$PWD/.gpu/bin:$PATH BRAID_TEST_DATA=$PWD/tests/data
export BRAID_MODELS=$PWD/models BRAID_SRCDIR=$PWD
out=${OUT:-/tmp/exp-next}
mkdir -p "$out" /tmp/sc
t0=$(date +%s)
nvidia-smi --query-gpu=name --format=csv,noheader
t() { echo "t=$(( $(date +%s) - t0 ))s"; }
chk() {   # name program [env...]
	local nm=$1 p=$2
	shift 2
	env "$@" timeout 150 "$p" > "$out/$nm.log" 2>&1
	echo "$nm: rc=$? $(tail -1 "$out/$nm.log") $(t)"
	grep "^FAIL" "$out/$nm.log" | head -5
}
b() {     # name binary shape ns [env...]
	local nm=$1 bin=$2 s=$3 n=$4
	shift 4
	env "$@" timeout 120 "$bin" bench --device cuda --shape "$s" --scratch /tmp/sc --prompt-len 512 --gen 256 \
		--n "$n" --json "$out/$nm.json" > "$out/$nm.log" 2>&1
	echo "$nm: rc=$? $(jq -c '[.rows[] | [.n, (.decode_tok_s | floor), ((.fraction_of_bound * 1000 | floor) / 10)]]' \
		"$out/$nm.json") $(t)"
}
chk gemm-norm test_cuda_gemm-norm.gpu
grep "norm" "$out/gemm-norm.log" | grep -c "^ok"
chk engine-norm test_cuda_engine-norm.gpu
chk engine-nonorm test_cuda_engine-norm.gpu BRAID_FUSE_NORM=0
chk engine-noswiglu test_cuda_engine-norm.gpu BRAID_FUSE_SWIGLU=0
for s in 0.6b 1.7b; do
	b $s-main braid-main $s 1,8
	b $s-norm braid-norm $s 1,8
	b $s-main2 braid-main $s 1
	b $s-norm2 braid-norm $s 1
done
b 0.6b-norm-early braid-norm 0.6b 1 BRAID_ATT_CLUSTER_EARLY=1
chk gemm-sk test_cuda_gemm-sk.gpu
b 1.7b-64-main braid-main 1.7b 64,128
b 1.7b-64-sk braid-sk 1.7b 64,128 BRAID_GEMM_TUNE_LOG=1 BRAID_GEMM_LOG=1
# Per shape and n: the fastest candidate of each kind.
grep "^braid: tuning" "$out/1.7b-64-sk.log" | awk '{
	shape = $3; n = $4; sub(",", "", shape); kind = $6; us = $(NF - 1)
	k = shape " n " n " " kind
	if (!(k in best) || us < best[k]) best[k] = us
} END { for (k in best) print k, best[k] " us" }' | sort -V | grep " n \(64\|128\) "
b 0.6b-64-sk braid-sk 0.6b 64 BRAID_GEMM_LOG=1
grep "64 rows" "$out/0.6b-64-sk.log"
echo "total $(t)"
