#!/usr/bin/env python3
"""hf_bench.py - the HF transformers peer of `braid bench`: generate() with
num_return_sequences=N on a random-weight Qwen3 model of one of braid's
--shape shapes, built directly on the GPU in bf16 (no download, no network).

    python3 tools/hf_bench.py --shape 0.6b --n 1,8,32,64,128 [--static-n 1,64]
                              [--prompt-len 512] [--gen 256] [--out FILE]

For each N (after a short untimed warm-up) it times one
generate(do_sample=True, num_return_sequences=N, max_new_tokens=gen,
min_new_tokens=gen, top_p=1.0, top_k=0, temperature=1.0) between
torch.cuda.synchronize() calls: tokens/s = N * gen / seconds, prefill of the
N copies of the prompt included (that is what generate() does).  With
--static-n (or --static: every N of --n) the same with
cache_implementation="static", which compiles the decoding step: a first,
untimed call of the same shapes pays the compilation, and its time is
reported as compile_s.  It checks that every sequence really got gen new
tokens.  JSON goes to stdout or --out; progress to stderr.  Exit 1 if any run
failed (its row then carries "error"), 2 on bad arguments.
"""
import argparse
import json
import sys
import time

# Same shapes as braid bench --shape (src/cmd_bench.c): hidden, layers,
# heads, kv_heads, head_dim, intermediate, vocab, tied.
SHAPES = {
    "tiny": (256, 4, 8, 4, 32, 768, 4096, True),
    "0.6b": (1024, 28, 16, 8, 128, 3072, 151936, True),
    "1.7b": (2048, 28, 16, 8, 128, 6144, 151936, True),
    "8b": (4096, 36, 32, 8, 128, 12288, 151936, False),
}
ROPE_THETA = 1e6


def log(*a):
    print("hf_bench:", *a, file=sys.stderr, flush=True)


def counts(s, opt):
    if s is None or s.strip() == "":
        return []
    try:
        v = [int(x) for x in s.split(",")]
    except ValueError:
        v = []
    if not v or any(x < 1 or x > 4096 for x in v):
        raise SystemExit(f"hf_bench: --{opt} wants a comma-separated list of counts in [1, 4096], got '{s}'")
    return v


def make_config(shape):
    from transformers import Qwen3Config
    hid, layers, heads, kvh, hd, inter, vocab, tied = SHAPES[shape]
    eos = 151645 if vocab > 151645 else vocab - 1
    cfg = Qwen3Config(
        vocab_size=vocab, hidden_size=hid, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kvh, head_dim=hd,
        intermediate_size=inter, max_position_embeddings=40960,
        rms_norm_eps=1e-6, rope_theta=ROPE_THETA, tie_word_embeddings=tied,
        eos_token_id=eos, bos_token_id=None, pad_token_id=eos)
    # transformers 5 moves rope_theta into rope_parameters; 4.x keeps it.
    rp = getattr(cfg, "rope_parameters", None)
    theta = rp.get("rope_theta") if isinstance(rp, dict) else getattr(cfg, "rope_theta", None)
    if theta != ROPE_THETA:
        if isinstance(rp, dict):
            rp["rope_theta"] = ROPE_THETA
        else:
            cfg.rope_theta = ROPE_THETA
    return cfg, eos


def build_model(cfg):
    import torch
    from transformers import AutoModelForCausalLM
    with torch.device("cuda"):
        try:
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        except TypeError:   # transformers 4.x
            model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
    model.eval()
    p = next(model.parameters())
    if p.dtype != torch.bfloat16 or p.device.type != "cuda":
        raise RuntimeError(f"model built as {p.dtype} on {p.device}, not bf16 on cuda")
    return model


def generate(model, ids, n, gen, static, pad):
    import torch
    kw = dict(do_sample=True, num_return_sequences=n, max_new_tokens=gen, min_new_tokens=gen,
              top_p=1.0, top_k=0, temperature=1.0, pad_token_id=pad)
    if static:
        kw["cache_implementation"] = "static"
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)   # generate() is no_grad
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def run(model, ids, n, gen, static, pad):
    """One timed generate() for N, after its untimed warm-up."""
    import torch
    row = {"n": n, "mode": "static" if static else "default"}
    try:
        # default: a short warm-up (kernels, allocator); static: the same
        # shapes, since the compiled step and the cache depend on them
        _, w = generate(model, ids, n, gen if static else 8, static, pad)
        row["compile_s" if static else "warmup_s"] = w
        torch.cuda.reset_peak_memory_stats()
        out, secs = generate(model, ids, n, gen, static, pad)
        p = ids.shape[1]
        new = out.shape[1] - p
        if out.shape[0] != n or new != gen:
            raise RuntimeError(f"generate() returned {tuple(out.shape)}, not ({n}, {p + gen})")
        if not torch.equal(out[:, :p], ids.expand(n, p)):
            raise RuntimeError("generate() changed the prompt")
        row.update(seconds=secs, tok_s=n * gen / secs, new_tokens_per_seq=new,
                   distinct_sequences=len({tuple(r) for r in out[:, p:].tolist()}),
                   peak_memory_bytes=torch.cuda.max_memory_allocated())
        del out
    except Exception as ex:   # noqa: BLE001 - recorded, and the next N still runs
        row["error"] = f"{type(ex).__name__}: {ex}"
        log(f"N={n} {row['mode']}: {row['error']}")
    torch.cuda.empty_cache()
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES))
    ap.add_argument("--n", default="1,8,32,64,128", help="N for default generate() ('' = none)")
    ap.add_argument("--static-n", default="", help="N for cache_implementation='static'")
    ap.add_argument("--static", action="store_true", help="static runs for every N of --n too")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--gen", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="write the JSON here instead of stdout")
    a = ap.parse_args()
    ns = counts(a.n, "n")
    sns = counts(a.static_n, "static-n")
    if a.static:
        sns = sorted(set(sns) | set(ns))
    if a.prompt_len < 1 or a.gen < 1 or a.prompt_len + a.gen > 40960:
        raise SystemExit("hf_bench: --prompt-len and --gen must be >= 1 and fit 40960 positions")

    import torch
    import transformers
    if not torch.cuda.is_available():
        raise SystemExit("hf_bench: no CUDA device")
    try:   # one compiled step per static N: do not fall back to eager
        import torch._dynamo
        for k in ("cache_size_limit", "recompile_limit"):
            if hasattr(torch._dynamo.config, k):
                setattr(torch._dynamo.config, k, max(64, getattr(torch._dynamo.config, k)))
    except Exception:   # noqa: BLE001
        pass

    torch.manual_seed(a.seed)
    cfg, pad = make_config(a.shape)
    t0 = time.perf_counter()
    model = build_model(cfg)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{a.shape}: {n_params / 1e9:.3f} B parameters built in {build_s:.1f} s on {torch.cuda.get_device_name(0)}")
    g = torch.Generator(device="cuda").manual_seed(a.seed)
    ids = torch.randint(0, cfg.vocab_size, (1, a.prompt_len), device="cuda", generator=g)

    rows = []
    for static, lst in ((False, ns), (True, sns)):
        for n in lst:
            row = run(model, ids, n, a.gen, static, pad)
            rows.append(row)
            if "tok_s" in row:
                log(f"N={n} {row['mode']}: {row['tok_s']:.1f} tok/s ({row['seconds']:.2f} s)")

    rp = getattr(model.config, "rope_parameters", None)
    doc = {
        "peer": "HF transformers generate()",
        "shape": a.shape,
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "parameters": n_params,
        "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "rope_theta": rp.get("rope_theta") if isinstance(rp, dict) else getattr(model.config, "rope_theta", None),
        "tie_word_embeddings": bool(cfg.tie_word_embeddings),
        "prompt_len": a.prompt_len,
        "gen": a.gen,
        "build_s": build_s,
        "sampling": "do_sample, temperature 1.0, top_p 1.0, top_k 0, min_new_tokens = max_new_tokens = gen",
        "timing": "one generate() call per N after an untimed warm-up; tok_s = N * gen / seconds, prefill included",
        "rows": rows,
    }
    text = json.dumps(doc, indent=2)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
