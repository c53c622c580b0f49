#!/usr/bin/env python3
"""eval_arith.py - accuracy of a model on arithmetic problem sets, measured with
the braid binary itself (`braid generate`): greedy, pass@1 at T=0.8 and
majority of N samples (one `braid generate --n N` call), by tier, and tokens
per problem.  Python standard library only.

Usage: eval_arith.py --braid src/braid [--model DIR] [--n 16] [--limit K]
                     [--json OUT.json] [--md OUT.md] FILE.jsonl...
Each FILE is a JSONL problem set from tools/arith_tasks.py (id, question,
answer, tier, format); its rows are reported under the file's name and tier.

       eval_arith.py --solve GREEDY.jsonl SC.jsonl [--n 16]
       eval_arith.py --compare A_SC.jsonl B_SC.jsonl [--n 16]
summarises two `braid solve --out` result files of one problem set (the model
card's table): greedy accuracy and tokens from a `--strategy single
--temperature 0` run; pass@1 (the share of right answers among each problem's
votes, over N samples) and majority accuracy from a `--strategy sc -n N` run.
"""
import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time


def extract(text):
    m = re.findall(r"Answer:\s*(-?\d+)", text)
    return m[-1] if m else None


def generate(braid, model, question, n, temperature, seed, max_tokens):
    cmd = [braid, "generate", "--prompt", question, "--chat", "--n", str(n),
           "--temperature", str(temperature), "--seed", str(seed), "--max-tokens", str(max_tokens)]
    if model:
        cmd += ["--model", model]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])}: exit {p.returncode}: {p.stderr.strip()[:300]}")
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def eval_set(a, path):
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    if a.limit:
        rows = rows[: a.limit]
    stats = collections.defaultdict(lambda: collections.Counter())
    per = []
    for i, r in enumerate(rows):
        g = generate(a.braid, a.model, r["question"], 1, 0, 0, a.max_tokens)[0]
        s = generate(a.braid, a.model, r["question"], a.n, 0.8, 1000 + i, a.max_tokens)
        gold = str(r["answer"])
        answers = [extract(x["text"]) for x in s]
        votes = collections.Counter(x for x in answers if x is not None)
        maj = votes.most_common(1)[0][0] if votes else None
        c = stats[r.get("tier", 0)]
        c["n"] += 1
        c["greedy"] += extract(g["text"]) == gold
        c["pass1"] += sum(x == gold for x in answers) / len(answers)
        c["maj"] += maj == gold
        c["tokens_greedy"] += len(g["ids"])
        c["tokens_sample"] += sum(len(x["ids"]) for x in s) / len(s)
        per.append({"id": r["id"], "answer": gold, "greedy": extract(g["text"]), "samples": answers,
                    "majority": maj, "tokens_greedy": len(g["ids"])})
        print(f"{os.path.basename(path)} {r['id']}: gold {gold} greedy {per[-1]['greedy']} maj {maj} "
              f"({sum(x == gold for x in answers)}/{len(answers)})", file=sys.stderr, flush=True)
    out = []
    for tier, c in sorted(stats.items()):
        n = c["n"]
        out.append({"set": os.path.basename(path), "tier": tier, "n": n,
                    "greedy": c["greedy"] / n, "pass1": c["pass1"] / n, "maj": c["maj"] / n,
                    "tokens_greedy": c["tokens_greedy"] / n, "tokens_sample": c["tokens_sample"] / n})
    return out, per


def load_results(path, key=lambda r: r["id"]):
    """A braid solve result file (JSONL) as {key(result): result}."""
    return {key(r): r for r in (json.loads(x) for x in open(path, encoding="utf-8") if x.strip())}


def gold_votes(r):
    """How many of a solve result's samples gave the gold answer."""
    return r["votes"].get(str(r["gold"]), 0)


def summarize_solve(greedy_path, sc_path, n):
    """One table row from braid solve result files (see the usage above)."""
    g, s = load_results(greedy_path), load_results(sc_path)
    ids = sorted(set(g) & set(s))
    if not ids:
        raise ValueError(f"{greedy_path}, {sc_path}: no common problem ids")
    greedy = sum(bool(g[i]["correct"]) for i in ids) / len(ids)
    pass1 = sum(gold_votes(s[i]) / n for i in ids) / len(ids)
    maj = sum(bool(s[i]["correct"]) for i in ids) / len(ids)
    hist = [0] * (n + 1)
    for i in ids:
        hist[min(n, gold_votes(s[i]))] += 1
    return {"problems": len(ids), "greedy": greedy, "pass1": pass1, "maj": maj,
            "tokens_greedy": sum(g[i]["tokens"] for i in ids) / len(ids),
            "tokens_sc": sum(s[i]["tokens"] for i in ids) / len(ids), "hist": hist}


def compare_solve(a_path, b_path, n):
    """Paired comparison of two `braid solve --strategy sc` result files over
    the same expressions (e.g. sequential vs parallel format; problems are
    paired by the index that ends their ids, as tools/arith_tasks.py numbers
    the variants of one set): the mean of B's pass@1 minus A's per problem,
    with a 95% interval from the per-problem differences (normal
    approximation), the majority difference and tokens."""
    index = lambda r: r["id"].rsplit("-", 1)[-1]
    a, b = load_results(a_path, index), load_results(b_path, index)
    ids = sorted(set(a) & set(b))
    if len(ids) < 2:
        raise ValueError(f"{a_path}, {b_path}: fewer than 2 common problem ids")
    def p1(r):
        return gold_votes(r) / n
    d = [p1(b[i]) - p1(a[i]) for i in ids]
    mean = sum(d) / len(d)
    se = (sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d)) ** 0.5
    return {"problems": len(ids), "pass1_a": sum(p1(a[i]) for i in ids) / len(ids),
            "pass1_b": sum(p1(b[i]) for i in ids) / len(ids), "diff": mean, "lo": mean - 1.96 * se,
            "hi": mean + 1.96 * se,
            "maj_diff": (sum(bool(b[i]["correct"]) for i in ids) - sum(bool(a[i]["correct"]) for i in ids)) / len(ids),
            "tokens_a": sum(a[i]["tokens"] for i in ids) / len(ids) / n,
            "tokens_b": sum(b[i]["tokens"] for i in ids) / len(ids) / n}


# The two-file modes: flag -> (metavars, description, function(path_a, path_b, n) -> dict).
FILE_PAIR_MODES = {
    "--compare": (("A", "B"), "compare two braid solve sc result files", compare_solve),
    "--solve": (("GREEDY", "SC"), "summarise braid solve results", summarize_solve),
}


def file_pair_main(flag):
    """`eval_arith.py FLAG X Y [--n N]`: prints the mode's result for X and Y as one JSON line; exit status."""
    metavars, description, fn = FILE_PAIR_MODES[flag]
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument(flag, nargs=2, metavar=metavars, required=True)
    ap.add_argument("--n", type=int, default=16)
    a = ap.parse_args()
    try:
        r = fn(*getattr(a, flag[2:]), a.n)
    except (OSError, ValueError, KeyError) as e:
        print(f"eval_arith: {e}", file=sys.stderr)
        return 1
    print(json.dumps(r))
    return 0


def main():
    if len(sys.argv) > 1 and sys.argv[1] in FILE_PAIR_MODES:
        return file_pair_main(sys.argv[1])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--braid", required=True, help="the braid binary")
    ap.add_argument("--model", help="model directory (default: braid's embedded model)")
    ap.add_argument("--n", type=int, default=16, help="samples per problem for pass@1 and majority")
    ap.add_argument("--limit", type=int, default=0, help="the first K problems of each file")
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--md", help="write a markdown table here")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    t0 = time.time()
    table, per = [], {}
    try:
        for f in a.files:
            rows, p = eval_set(a, f)
            table += rows
            per[os.path.basename(f)] = p
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        print(f"eval_arith: {e}", file=sys.stderr)
        return 1
    md = [f"| set | tier | problems | greedy | pass@1 (T=0.8) | majority of {a.n} | tokens (greedy) | tokens (sampled) |",
          "|---|---|---|---|---|---|---|---|"]
    for r in table:
        md.append(f"| {r['set']} | {r['tier']} | {r['n']} | {100 * r['greedy']:.1f}% | {100 * r['pass1']:.1f}% | "
                  f"{100 * r['maj']:.1f}% | {r['tokens_greedy']:.1f} | {r['tokens_sample']:.1f} |")
    print("\n".join(md))
    if a.md:
        with open(a.md, "w") as f:
            f.write("\n".join(md) + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"braid": a.braid, "model": a.model, "n": a.n, "limit": a.limit, "rows": table,
                       "problems": per, "seconds": round(time.time() - t0, 1)}, f, indent=1)
    print(f"# {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
