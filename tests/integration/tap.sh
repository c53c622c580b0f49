# tap.sh - a tiny TAP emitter for the integration scripts (sourced), and
# what they all need around it: a scratch directory $T, removed on exit
# together with the daemons whose pids the script adds to $PIDS (killed,
# then waited for).
tap_n=0
tap_failed=0
tap_plan() { echo "1..$1"; }
ok() { tap_n=$((tap_n + 1)); echo "ok $tap_n - $*"; }
not_ok() { tap_n=$((tap_n + 1)); tap_failed=$((tap_failed + 1)); echo "not ok $tap_n - $*"; }
# check "description" command...: one test point from a command's status
check() { local d=$1; shift; if "$@"; then ok "$d"; else not_ok "$d"; fi; }
diag() { echo "# $*"; }

T=$(mktemp -d)
PIDS=
tap_cleanup() {
	for p in $PIDS; do kill "$p" 2>/dev/null; done 2>/dev/null
	for p in $PIDS; do wait "$p" 2>/dev/null; done
	rm -rf "$T"
}
trap tap_cleanup EXIT

# run CMD...: stdout to $T/out, stderr to $T/err, status to $rc
run() { "$@" >"$T/out" 2>"$T/err"; rc=$?; }
# fails_clearly "desc" EXPECTED_RC PATTERN CMD...: exit status and message
fails_clearly() {
	d=$1; want=$2; pat=$3; shift 3
	run "$@"
	if [ "$rc" -eq "$want" ] && grep -q -- "$pat" "$T/err"; then ok "$d"
	else not_ok "$d (rc=$rc, stderr: $(head -c 300 "$T/err"))"; fi
}
# jqt FILTER FILE: jq -e, quietly
jqt() { jq -e "$@" >/dev/null 2>&1; }
