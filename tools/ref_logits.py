#!/usr/bin/env python3
"""ref_logits.py MODEL_DIR REF_JSON OUT_DIR: the reference logits the engine
tests compare against, computed at build time by an independent NumPy forward
pass (Llama, Qwen2, Qwen3) over the model's safetensors.

Writes OUT_DIR/<model>.logits.bin: little-endian float32 logits, (prompt
length, vocab) rows for each prompt of REF_JSON (the prompts HF transformers
was run on, tools/make_refs.py), computed in float64 on the stored weights -
what HF computes in float32.  When the model is stored in f16 or bf16 it also
writes <model>.native.bin: the same pass with every intermediate rounded to
the stored dtype where HF's modules round it (linear outputs, RMSNorm output,
RoPE, attention output, residual adds, SwiGLU) - HF computing in that dtype.

It checks itself against the HF outputs recorded in REF_JSON (the greedy
continuations) and fails when they disagree.  Nothing here is shared with
braid's C code: that is the point of a reference."""
import json
import os
import struct
import sys

import numpy as np


def load_safetensors(path, out):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        raw = np.fromfile(f, dtype=np.uint8, offset=0)
    for name, t in head.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        buf = raw[a:b]
        if t["dtype"] == "F32":
            v = buf.view("<f4").astype(np.float64)
        elif t["dtype"] == "F16":
            v = buf.view("<f2").astype(np.float64)
        elif t["dtype"] == "BF16":
            v = (buf.view("<u2").astype(np.uint32) << 16).view("<f4").astype(np.float64)
        else:
            sys.exit(f"{path}: {name}: dtype {t['dtype']} not handled")
        out[name] = (v.reshape(t["shape"]), t["dtype"])


def load_model(mdir):
    cfg = json.load(open(os.path.join(mdir, "config.json")))
    w = {}
    for f in sorted(os.listdir(mdir)):
        if f.endswith(".safetensors"):
            load_safetensors(os.path.join(mdir, f), w)
    dtypes = {d for _, d in w.values()}
    if len(dtypes) != 1:
        sys.exit(f"{mdir}: mixed dtypes {dtypes}")
    return cfg, {k: v for k, (v, _) in w.items()}, dtypes.pop()


def rounder(dtype):
    if dtype == "F16":
        return lambda x: x.astype(np.float16).astype(np.float64)
    if dtype == "BF16":
        def bf16(x):
            u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
            u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16   # round to nearest even
            return u.astype(np.uint32).view(np.float32).astype(np.float64)
        return bf16
    return lambda x: x


def inv_freq(cfg, hd):
    rp = cfg.get("rope_parameters") or {}
    theta = cfg.get("rope_theta", rp.get("rope_theta", 10000.0))
    f = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    sc = cfg.get("rope_scaling") or (rp if rp.get("rope_type") == "llama3" else None)
    if sc and sc.get("rope_type", sc.get("type")) == "llama3":
        factor, lo, hi = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
        old = sc["original_max_position_embeddings"]
        wl = 2 * np.pi / f
        smooth = (old / wl - lo) / (hi - lo)
        f = np.where(wl < old / hi, f, np.where(wl > old / lo, f / factor, (1 - smooth) * f / factor + smooth * f))
    return f


def forward(cfg, w, ids, r):
    """Logits (len(ids), vocab) of one prompt; r rounds to the compute dtype."""
    d = cfg["hidden_size"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or d // nh
    eps = cfg["rms_norm_eps"]
    L = len(ids)

    def norm(x, g):            # HF: in float32, then weight * x.to(dtype)
        return r(g * r(x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)))

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        if name + ".bias" in w:
            y = y + w[name + ".bias"]
        return r(y)

    ang = np.arange(L, dtype=np.float64)[:, None] * inv_freq(cfg, hd)[None, :]
    cos, sin = r(np.cos(np.concatenate([ang, ang], -1))), r(np.sin(np.concatenate([ang, ang], -1)))

    def rope(x):               # (heads, L, hd), rotate_half form
        half = hd // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
        return r(r(x * cos) + r(rot * sin))

    x = w["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((L, L), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = norm(x, w[p + "input_layernorm.weight"])
        q = lin(h, p + "self_attn.q_proj").reshape(L, nh, hd).transpose(1, 0, 2)
        k = lin(h, p + "self_attn.k_proj").reshape(L, nkv, hd).transpose(1, 0, 2)
        v = lin(h, p + "self_attn.v_proj").reshape(L, nkv, hd).transpose(1, 0, 2)
        if p + "self_attn.q_norm.weight" in w:
            q = norm(q, w[p + "self_attn.q_norm.weight"])
            k = norm(k, w[p + "self_attn.k_norm.weight"])
        q, k = rope(q), rope(k)
        k = np.repeat(k, nh // nkv, axis=0)
        v = np.repeat(v, nh // nkv, axis=0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        a = r((s / s.sum(-1, keepdims=True)) @ v)
        x = r(x + lin(a.transpose(1, 0, 2).reshape(L, nh * hd), p + "self_attn.o_proj"))
        h = norm(x, w[p + "post_attention_layernorm.weight"])
        g = lin(h, p + "mlp.gate_proj")
        x = r(x + lin(r(r(g / (1 + np.exp(-g))) * lin(h, p + "mlp.up_proj")), p + "mlp.down_proj"))
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return r(norm(x, w["model.norm.weight"]) @ head.T)


def main(mdir, ref_json, out_dir):
    cfg, w, dtype = load_model(mdir)
    ref = json.load(open(ref_json))
    name = ref["model"]
    os.makedirs(out_dir, exist_ok=True)
    exact = lambda x: x
    rows = [forward(cfg, w, p, exact) for p in ref["prompts"]]
    # The HF run recorded greedy continuations with their top-2 margins: the
    # first token of each must be this pass's argmax at the prompt's end.
    for p, lg, g, m in zip(ref["prompts"], rows, ref["greedy"], ref["greedy_margins"]):
        top = int(np.argmax(lg[-1]))
        if top != g[0] and m[0] > 1e-3:
            sys.exit(f"{name}: argmax {top} after prompt {p[:4]}..., HF chose {g[0]} (margin {m[0]})")
    np.concatenate(rows).astype("<f4").tofile(os.path.join(out_dir, f"{name}.logits.bin"))
    if dtype != "F32" and ref.get("native_logits"):
        r = rounder(dtype)
        nat = [forward(cfg, w, p, r) for p in ref["prompts"]]
        np.concatenate(nat).astype("<f4").tofile(os.path.join(out_dir, ref["native_logits"]))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: ref_logits.py MODEL_DIR REF_JSON OUT_DIR")
    main(*sys.argv[1:])
