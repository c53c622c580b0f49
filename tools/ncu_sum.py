#!/usr/bin/env python3
"""ncu_sum.py CSV: sum an `ncu --csv --metrics gpu__time_duration.sum` log by
kernel name (time, launches, mean), largest first.  Used to see where a
decode step's GPU time goes: `BRAID_PROFILE_PASS=K ncu --profile-from-start off
--csv --metrics gpu__time_duration.sum braid bench ...` records pass K (one
step with its sampling; the graph's kernels one by one)."""
import collections
import csv
import sys

SCALE = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}


def main(path):
    rows = [r for r in csv.reader(open(path)) if len(r) > 10]
    if not rows:
        sys.exit(f"{path}: no ncu rows")
    head = rows[0]
    ki, vi, ui = head.index("Kernel Name"), head.index("Metric Value"), head.index("Metric Unit")
    total, count = collections.defaultdict(float), collections.Counter()
    for r in rows[1:]:
        us = float(r[vi].replace(",", "")) * SCALE.get(r[ui], 1.0)
        name = r[ki].split("(")[0][:70]
        total[name] += us
        count[name] += 1
    for name, us in sorted(total.items(), key=lambda x: -x[1]):
        print(f"{us:10.1f} us {count[name]:5d} launches {us / count[name]:8.2f} us each  {name}")
    print(f"{sum(total.values()):10.1f} us in all")


if __name__ == "__main__":
    main(sys.argv[1])
