#!/usr/bin/env python3
"""arith_tasks.py - seeded generator of checkable arithmetic problems for the
embedded model models/braid-arith, and the worked solutions it is trained on.

Python standard library only (it runs here and on the GPU machine).

Problems read `Compute <expression>`: non-negative integers, + - * and
parentheses, every intermediate value non-negative.  The assistant answers
with a chain of thought and a final line `Answer: <integer>`.

User-turn forms (the whole prompt is one user turn; no system message):
  Compute E                      sequential solution
  Parallel: Compute E            parallel solution (Multiverse tags)
  Known: a*b=c  (one per line)   facts computed before, reused as `(known)`
  Compute E
  Check: Compute E               a worked solution follows, steps numbered;
  Step 1: ...                    the model re-checks each step and names the
  ...                            first wrong one (Answer: its number, or 0)

Solution steps (sequential): one line per reduction of the leftmost innermost
operation, then the rewritten expression:
  37+12 = 49, now 49*(8-5)+4
  347*86 = 347*80+347*6 = 27760+2082 = 29842, now ...
  (products whose right operand has two or more non-zero digits are split by
  digit; a product found in the Known block is written `a*b = c (known)`)

CLI:
  arith_tasks.py --tier 3 --n 100 --seed 1 [--format sequential|parallel]
                 [--known] [--check] [--out FILE]      write a JSONL problem set
  arith_tasks.py --sample --tier 4 --format parallel   print one full example
JSONL fields: id, question, answer, tier, format, known (list of facts).
"""
import argparse
import json
import random
import sys

# ---- difficulty ---------------------------------------------------------------------
# A level: (min ops, max ops, operand digits, digits of a product's left and right
# operand, weight of '*' among the ops).  Training draws from every level; the
# published tiers are levels picked by measurement (see models/braid-arith/README.md).
LEVELS = {
    1: dict(ops=(1, 2), digits=2, mul=(2, 1), pmul=0.3),
    2: dict(ops=(2, 3), digits=2, mul=(2, 2), pmul=0.35),
    3: dict(ops=(3, 4), digits=3, mul=(3, 2), pmul=0.35),
    4: dict(ops=(4, 5), digits=3, mul=(3, 2), pmul=0.4),
    5: dict(ops=(5, 6), digits=3, mul=(3, 3), pmul=0.4),
    6: dict(ops=(6, 7), digits=3, mul=(3, 3), pmul=0.45),
    7: dict(ops=(7, 8), digits=3, mul=(3, 3), pmul=0.45),
    8: dict(ops=(8, 9), digits=4, mul=(4, 3), pmul=0.45),
    # beyond the training mix (levels 1-8): longer chains
    9: dict(ops=(10, 11), digits=3, mul=(3, 3), pmul=0.45),
    10: dict(ops=(10, 11), digits=4, mul=(4, 3), pmul=0.45),
}
# training mix: weight of each level (levels 7-8 in a smaller share, so the model
# has seen long chains and 4-digit operands but stays unsure on them)
TRAIN_WEIGHTS = (1, 1, 2, 2, 3, 3, 2, 2)
P_PARALLEL = 0.5
P_KNOWN = 0.2
TIERS = {1: 2, 2: 4, 3: 7, 4: 8}     # tier -> level (calibrated, see models/braid-arith/README.md)
MAX_VALUE = 999999

OPS = "+-*"
PREC = {"+": 1, "-": 1, "*": 2}


def ev(op, a, b):
    return a + b if op == "+" else a - b if op == "-" else a * b


# ---- expression trees: an int, or a tuple (op, left, right) -------------------------

def render(t):
    """Minimal parentheses that re-parse to the same tree."""
    if isinstance(t, int):
        return str(t)
    op, l, r = t
    ls, rs = render(l), render(r)
    if not isinstance(l, int) and PREC[l[0]] < PREC[op]:
        ls = "(" + ls + ")"
    if not isinstance(r, int) and PREC[r[0]] <= PREC[op]:
        rs = "(" + rs + ")"
    return ls + op + rs


def value(t):
    if isinstance(t, int):
        return t
    return ev(t[0], value(t[1]), value(t[2]))


def n_ops(t):
    return 0 if isinstance(t, int) else 1 + n_ops(t[1]) + n_ops(t[2])


def parse(s):
    """Parse an expression string back to a tree (for tests and checking)."""
    pos = 0

    def peek():
        return s[pos] if pos < len(s) else ""

    def atom():
        nonlocal pos
        if peek() == "(":
            pos += 1
            t = expr()
            assert peek() == ")", s
            pos += 1
            return t
        st = pos
        while peek().isdigit():
            pos += 1
        assert pos > st, s
        return int(s[st:pos])

    def term():
        nonlocal pos
        t = atom()
        while peek() == "*":
            pos += 1
            t = ("*", t, atom())
        return t

    def expr():
        nonlocal pos
        t = term()
        while peek() in ("+", "-") and peek():
            op = s[pos]
            pos += 1
            t = (op, t, term())
        return t

    t = expr()
    assert pos == len(s), s
    return t


def _ok(t, lv):
    """Every intermediate value in [0, MAX_VALUE], products within the level's sizes."""
    if isinstance(t, int):
        return True
    if not (_ok(t[1], lv) and _ok(t[2], lv)):
        return False
    a, b = value(t[1]), value(t[2])
    v = ev(t[0], a, b)
    if v < 0 or v > MAX_VALUE:
        return False
    if t[0] == "*":
        da, db = sorted((len(str(a)), len(str(b))), reverse=True)
        if da > lv["mul"][0] or db > lv["mul"][1]:
            return False
    return True


def _rand_tree(rng, k, lv):
    if k == 0:
        d = rng.randint(1, lv["digits"])
        return rng.randint(10 ** (d - 1) if d > 1 else 0, 10 ** d - 1)
    left = rng.randint(0, k - 1)
    op = "*" if rng.random() < lv["pmul"] else rng.choice("+-")
    return (op, _rand_tree(rng, left, lv), _rand_tree(rng, k - 1 - left, lv))


def _has_split(t):
    return _split_node(t) is not None


def _split_node(t):
    """The first node (pre-order) whose two children both hold operations."""
    if isinstance(t, int):
        return None
    if not isinstance(t[1], int) and not isinstance(t[2], int):
        return t
    return _split_node(t[1]) or _split_node(t[2])


def make_expr(rng, level, need_split=False):
    lv = LEVELS[level]
    for _ in range(100000):
        k = rng.randint(*lv["ops"])
        if need_split and k < 3:      # a split needs two compound operands
            k = 3
        t = _rand_tree(rng, k, lv)
        if _ok(t, lv) and (not need_split or _has_split(t)):
            return t
    raise RuntimeError("no expression found for level %d" % level)


# ---- worked solutions ---------------------------------------------------------------

def _leftmost_innermost(t, path=()):
    """Path (tuple of 1/2) to the leftmost node whose children are both numbers."""
    if isinstance(t, int):
        return None
    if isinstance(t[1], int) and isinstance(t[2], int):
        return path
    return _leftmost_innermost(t[1], path + (1,)) or _leftmost_innermost(t[2], path + (2,))


def _get(t, path):
    for i in path:
        t = t[i]
    return t


def _replace(t, path, new):
    if not path:
        return new
    lst = list(t)
    lst[path[0]] = _replace(t[path[0]], path[1:], new)
    return tuple(lst)


def op_text(op, a, b, known, result=None):
    """The work for one operation: `a op b = [partials =] v`, or `(known)`."""
    v = ev(op, a, b) if result is None else result
    head = f"{a}{op}{b}"
    if f"{head}={ev(op, a, b)}" in known:
        return f"{head} = {v} (known)"
    if op == "*":
        digits = [(int(c), len(str(b)) - 1 - i) for i, c in enumerate(str(b)) if c != "0"]
        if len(digits) >= 2:
            parts = [(a, d * 10 ** p) for d, p in digits]
            prods = [x * y for x, y in parts]
            s = f"{head} = " + "+".join(f"{x}*{y}" for x, y in parts)
            acc = prods
            s += " = " + "+".join(map(str, acc))
            while len(acc) > 2:
                acc = [acc[0] + acc[1]] + acc[2:]
                s += " = " + "+".join(map(str, acc))
            return s + f" = {v}"
    return f"{head} = {v}"


def steps(t, known=(), corrupt=None):
    """Sequential reduction of t: a list of (a, op, b, stated value, rest), where
    rest is the rewritten expression (None after the last step).  corrupt=(k, v)
    states v at step k (0-based) and carries it on, the later steps right."""
    out = []
    while not isinstance(t, int):
        p = _leftmost_innermost(t)
        op, a, b = _get(t, p)
        v = ev(op, a, b)
        if corrupt and corrupt[0] == len(out):
            v = corrupt[1]
        t = _replace(t, p, v)
        out.append((a, op, b, v, None if isinstance(t, int) else render(t)))
    return out


def _step_lines(st, known):
    lines = []
    for a, op, b, v, rest in st:
        s = op_text(op, a, b, known, v)
        lines.append(s + (f", now {rest}" if rest is not None else ""))
    return lines


def solve_sequential(t, known=()):
    lines = _step_lines(steps(t, known), known)
    return "\n".join(lines + [f"Answer: {value(t)}"])


def solve_parallel(t, known=()):
    """One Multiverse block for the two operands of the first split node, then
    sequential steps on what remains.  Without a split node: sequential."""
    s = _split_node(t)
    if s is None:
        return solve_sequential(t, known)
    l, r = s[1], s[2]
    path = []

    def find(x, p=()):     # path to s (by identity: the first match pre-order)
        if x is s:
            return p
        if isinstance(x, int):
            return None
        return find(x[1], p + (1,)) or find(x[2], p + (2,))
    path = find(t)
    outline = "".join(f"<Outline>{i}: {render(x)}</Outline>" for i, x in ((1, l), (2, r)))
    paths = "".join(f"<Path>{i}: " + "\n".join(_step_lines(steps(x, known), known)) + "</Path>"
                    for i, x in ((1, l), (2, r)))
    rest = _replace(t, path, (s[0], value(l), value(r)))
    block = (f"<Parallel><Goal>{outline}</Goal>{paths}"
             f"<Conclusion>{render(rest)}</Conclusion></Parallel>")
    lines = _step_lines(steps(rest, known), known)
    return "\n".join([block] + lines + [f"Answer: {value(t)}"])


def fork_view(response, i):
    """What braid's multiverse strategy shows a forked path: the response up to
    </Goal>, then `<Path>i:` (path i alone, without the paths before it), and
    what the path must write from there, through its </Path>.  Returns (head,
    body), or None when the response has no path i."""
    tag = f"<Path>{i}:"
    g, start = response.find("</Goal>"), response.find(tag)
    if g < 0 or start < 0:
        return None
    end = response.index("</Path>", start) + len("</Path>")
    return response[:g + len("</Goal>")] + tag, response[start + len(tag):end]


def known_facts(rng, t, level):
    """A correct Known block: most of the products (and a few sums) this problem
    computes, shuffled with unrelated true facts."""
    facts = []
    for a, op, b, v, _ in steps(t):
        if (op == "*" and rng.random() < 0.85) or rng.random() < 0.2:
            facts.append(f"{a}{op}{b}={v}")
    for _ in range(rng.randint(0, 2)):      # distractors
        a, op, b, v, _ = steps(make_expr(rng, level))[0]
        facts.append(f"{a}{op}{b}={v}")
    rng.shuffle(facts)
    return facts


def check_case(rng, t, wrong):
    """A worked solution (wrong at one step when `wrong`) and the check of it."""
    st = steps(t)
    k = None
    if wrong:
        k = rng.randrange(len(st))
        v = st[k][3]
        for _ in range(50):
            delta = rng.choice([1, 2, 10, 100, 9, 11]) * rng.choice([-1, 1])
            bad = steps(t, corrupt=(k, v + delta))
            if all(s[3] >= 0 for s in bad):
                st = bad
                break
    shown = [f"Step {i + 1}: {line}" for i, line in enumerate(_step_lines(st, ()))]
    ans = st[-1][3]
    q = "Check: Compute " + render(t) + "\n" + "\n".join(shown) + f"\nAnswer: {ans}"
    out = []
    for i, (a, op, b, v, _) in enumerate(st):
        true = ev(op, a, b)
        if true == v:
            out.append(f"Step {i + 1}: {op_text(op, a, b, ())}, ok")
        else:
            out.append(f"Step {i + 1}: {op_text(op, a, b, ())}, not {v}")
            out.append(f"Step {i + 1} is wrong")
            out.append(f"Answer: {i + 1}")
            return q, "\n".join(out), i + 1
    out.append("All steps are correct")
    out.append("Answer: 0")
    return q, "\n".join(out), 0


# ---- problems -----------------------------------------------------------------------

def make_problem(rng, level, fmt="sequential", known=False, check=False, split=False):
    """One example as a dict: question (user turn), response, answer, ...
    split: draw only expressions that have independent sub-expressions (the
    parallel format always does), so both formats can be compared on one set."""
    if check:
        t = make_expr(rng, level)
        q, resp, ans = check_case(rng, t, rng.random() < 0.5)
        return dict(question=q, response=resp, answer=str(ans), format="check", known=[])
    t = make_expr(rng, level, need_split=(fmt == "parallel" or split))
    facts = known_facts(rng, t, level) if known else []
    q = "Compute " + render(t)
    if fmt == "parallel":
        q = "Parallel: " + q
    if facts:
        q = "".join(f"Known: {f}\n" for f in facts) + q
    resp = (solve_parallel if fmt == "parallel" else solve_sequential)(t, set(facts))
    return dict(question=q, response=resp, answer=str(value(t)), format=fmt, known=facts)


def training_example(rng, weights=TRAIN_WEIGHTS, p_parallel=P_PARALLEL, p_known=P_KNOWN):
    """The training mix: levels 1..len(weights) by weight; 10% checking, p_known
    with a Known block (either format), and p_parallel of the rest parallel."""
    level = rng.choices(range(1, len(weights) + 1), weights=weights)[0]
    r = rng.random()
    if r < 0.10:
        return make_problem(rng, min(level, 4), check=True)
    fmt = "parallel" if rng.random() < p_parallel else "sequential"
    return make_problem(rng, level, fmt, known=(r < 0.10 + p_known))


def problem_set(tier, n, seed, fmt="sequential", known=False, check=False, split=False):
    """n problems; problem i's expression depends only on (seed, tier, split or
    parallel, check, i), so the variants of one set share their expressions."""
    split = split or fmt == "parallel"
    out = []
    for i in range(n):
        rng = random.Random(f"braid-arith/{seed}/{tier}/{int(split)}/{int(check)}/{i}")
        p = make_problem(rng, TIERS[tier], fmt, known, check, split)
        kind = "check" if check else fmt + ("-known" if known else "") + ("-split" if split else "")
        out.append(dict(id=f"t{tier}-{kind}-{i:03d}", question=p["question"], answer=p["answer"],
                        tier=tier, format=p["format"], known=p["known"]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tier", type=int, default=1, choices=sorted(TIERS))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--format", default="sequential", choices=("sequential", "parallel"))
    ap.add_argument("--known", action="store_true", help="prompts carry a correct Known: block")
    ap.add_argument("--check", action="store_true", help="the checking task")
    ap.add_argument("--split", action="store_true",
                    help="only expressions with independent sub-expressions (those of --format parallel)")
    ap.add_argument("--out", help="JSONL file (default stdout)")
    ap.add_argument("--sample", action="store_true", help="print one question and its worked solution")
    a = ap.parse_args(argv)
    if a.sample:
        rng = random.Random(a.seed)
        p = make_problem(rng, TIERS[a.tier], a.format, a.known, a.check)
        print(p["question"] + "\n---\n" + p["response"])
        return 0
    rows = problem_set(a.tier, a.n, a.seed, a.format, a.known, a.check, a.split)
    f = open(a.out, "w", encoding="utf-8") if a.out else sys.stdout
    for r in rows:
        f.write(json.dumps(r) + "\n")
    if a.out:
        f.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
