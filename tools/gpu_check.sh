#!/usr/bin/env bash
# gpu_check.sh - the GPU tests in one command, run on the GPU machine from the
# repository root: each tests/gpu program plainly, then under
# compute-sanitizer memcheck (leak check on), test_cuda_engine also with
# BRAID_ATT_CLUSTER=0, BRAID_ATT_CLUSTER_EARLY=0, BRAID_FUSE_SWIGLU=0,
# BRAID_FUSE_NORM=0, BRAID_ATT_PREFIX_WARP=0, BRAID_PLAN_AHEAD=0 and
# BRAID_RUN_AHEAD=0; a summary line per run, exit 1 if any failed.
#
#   tools/gpu_check.sh [--bin DIR] [--no-sanitizer] [--only NAME,...]
#
# DIR holds the test_cuda*.gpu programs: .gpu/bin when that bundle is present
# (with LD_LIBRARY_PATH=.gpu/lib), else tests/gpu of the build in the current
# directory.  CUDA API errors are not reported by the sanitizer
# (--report-api-errors no): test_cuda_engine provokes out-of-memory errors on
# purpose and checks that they come back as error codes.  A program that
# exits 77 (no GPU) counts as skipped.  The logs are kept (and named) only
# when something failed.

set -u

usage() {
	sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
	exit "${1:-2}"
}

bin= sanitize=1 only=
while [ $# -gt 0 ]; do
	case $1 in
	--bin) [ $# -ge 2 ] || usage; bin=$2; shift ;;
	--no-sanitizer) sanitize=0 ;;
	--only) [ $# -ge 2 ] || usage; only=$2; shift ;;
	-h|--help) usage 0 ;;
	*) echo "gpu_check.sh: unknown option $1" >&2; usage ;;
	esac
	shift
done
if [ -z "$bin" ]; then
	if [ -d .gpu/bin ]; then
		bin=.gpu/bin
		export LD_LIBRARY_PATH=$PWD/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
	else
		bin=tests/gpu
	fi
fi
export BRAID_TEST_DATA=${BRAID_TEST_DATA:-$PWD/tests/data} BRAID_SRCDIR=${BRAID_SRCDIR:-$PWD}
export BRAID_MODELS=${BRAID_MODELS:-$PWD/models}
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [ "$sanitize" = 1 ] && [ -z "$cs" ]; then
	echo "gpu_check.sh: compute-sanitizer not found (--no-sanitizer to run without)" >&2
	exit 2
fi
logs=${TMPDIR:-/tmp}/gpu-check.$$
mkdir -p "$logs"
failed=0 ran=0

# run LABEL LOG CMD...: one line with the exit status, the time and the
# program's last line (or the sanitizer's error summary).
run() {
	local label=$1 log=$2 t0 rc
	shift 2
	t0=$(date +%s)
	"$@" >"$log" 2>&1
	rc=$?
	ran=$((ran + 1))
	local what
	case $rc in
	0) what=ok ;;
	77) what=skip ;;
	*) what=FAIL failed=$((failed + 1)) ;;
	esac
	local tail
	tail=$(grep -E 'ERROR SUMMARY|LEAK SUMMARY' "$log" | tr '\n' ' ')
	[ -n "$tail" ] || tail=$(tail -n 1 "$log")
	printf '%-4s %-34s exit %-3d %4d s  %s\n' "$what" "$label" "$rc" "$(($(date +%s) - t0))" "$tail"
	[ "$what" = FAIL ] && echo "     log: $log"
}

set -- "$bin"/test_cuda*.gpu
if [ ! -e "$1" ]; then
	echo "gpu_check.sh: no test_cuda*.gpu in $bin" >&2
	rm -rf "$logs"
	exit 2
fi
for p in "$@"; do
	name=$(basename "$p" .gpu)
	if [ -n "$only" ] && ! echo ",$only," | grep -q ",$name,"; then
		continue
	fi
	run "$name" "$logs/$name.log" "$p"
	# The engine again on the paths its switches choose (the one-warp kernel
	# and the merge for one-row passes, the clusters' late trigger that
	# models with a large o projection take, SwiGLU as its own kernel,
	# RMSNorm as its own kernel in one-row passes, shared prefixes of
	# decode passes in CTA units, every pass planned when it comes, or
	# planned ahead but launched when it comes).
	if [ "$name" = test_cuda_engine ]; then
		run "$name BRAID_ATT_CLUSTER=0" "$logs/$name.nocluster.log" env BRAID_ATT_CLUSTER=0 "$p"
		run "$name BRAID_ATT_CLUSTER_EARLY=0" "$logs/$name.late.log" env BRAID_ATT_CLUSTER_EARLY=0 "$p"
		run "$name BRAID_FUSE_SWIGLU=0" "$logs/$name.nofuse.log" env BRAID_FUSE_SWIGLU=0 "$p"
		run "$name BRAID_FUSE_NORM=0" "$logs/$name.nonorm.log" env BRAID_FUSE_NORM=0 "$p"
		run "$name BRAID_ATT_PREFIX_WARP=0" "$logs/$name.noprefixwarp.log" env BRAID_ATT_PREFIX_WARP=0 "$p"
		run "$name BRAID_PLAN_AHEAD=0" "$logs/$name.noahead.log" env BRAID_PLAN_AHEAD=0 "$p"
		run "$name BRAID_RUN_AHEAD=0" "$logs/$name.norun.log" env BRAID_RUN_AHEAD=0 "$p"
	fi
	[ "$sanitize" = 1 ] || continue
	run "$name (memcheck)" "$logs/$name.memcheck.log" "$cs" --tool memcheck --leak-check full \
		--report-api-errors no --error-exitcode 9 "$p"
done
if [ "$failed" = 0 ]; then
	rm -rf "$logs"
	echo "$ran runs, $failed failed"
	exit 0
fi
echo "$ran runs, $failed failed (logs in $logs)"
exit 1
