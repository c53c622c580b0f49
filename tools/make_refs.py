#!/usr/bin/env python3
"""make_refs.py - reference data for braid's engine tests, from the real thing.

Runs where torch, transformers and tokenizers are installed (the GPU machine;
everything here runs on its CPU, in float32 unless stated).  Writes, under
OUT (default tests/data):

  tokenizer_corpus.json            (input: hard strings, kept in the repo)
  ref/tok_<name>.json              HF tokenizers ids + decode of every corpus
                                   string, for the real Qwen3 / Llama-3 /
                                   DeepSeek-V3 tokenizer.json files
  ref/chat_<name>.json             transformers apply_chat_template strings
  models/<arch>-<dtype>/           tiny random-weight HF model directories
                                   (llama, qwen2, qwen3 x f32, f16, bf16, plus
                                   qwen3-f32-sharded), each with a small BPE
                                   tokenizer trained here
  ref/<model>.json + .bin          logits at every prompt position and greedy
                                   continuations

Usage: python3 tools/make_refs.py [--out tests/data] [--tokenizers DIR]
DIR holds <name>/tokenizer.json (+ tokenizer_config.json), as ./setup
fetches them (tests/data/tokenizers).
"""
import argparse
import json
import os
import shutil
import sys

VERSION = "refs-1"

PROMPT_LENS = (7, 19, 33)       # cross 16-token KV block boundaries
GREEDY_NEW = 24

CHAT_CASES = [
    ([{"role": "user", "content": "What is 2+2?"}], True),
    ([{"role": "system", "content": "You are a careful solver."},
      {"role": "user", "content": "Compute 37*24."}], True),
    ([{"role": "system", "content": "Be brief."},
      {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello! How can I help?"},
      {"role": "user", "content": "  Add 3 and 4.  \n"}], True),
    ([{"role": "user", "content": "First question"},
      {"role": "assistant", "content": "<think>\nreasoning here\n</think>\n\nFirst answer"},
      {"role": "user", "content": "Second question"}], True),
    ([{"role": "user", "content": "Unicode: 你好 👍 é"},
      {"role": "assistant", "content": "Sure: 42"}], False),
    ([{"role": "user", "content": "\n\nleading and trailing newlines\n\n"}], True),
    ([{"role": "system", "content": "sys"},
      {"role": "user", "content": "u1"},
      {"role": "assistant", "content": "a1"},
      {"role": "user", "content": "u2"},
      {"role": "assistant", "content": "a2"},
      {"role": "user", "content": "u3"}], True),
]


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")


def tokenizer_refs(out, tokdir, corpus):
    import tokenizers
    for name in ("qwen3", "llama3", "deepseek_v3"):
        path = os.path.join(tokdir, name, "tokenizer.json")
        tk = tokenizers.Tokenizer.from_file(path)
        cases = []
        for text in corpus:
            ids = tk.encode(text, add_special_tokens=False).ids
            cases.append({"text": text, "ids": ids,
                          "decoded": tk.decode(ids, skip_special_tokens=False)})
        write_json(os.path.join(out, "ref", f"tok_{name}.json"),
                   {"tokenizer": name, "version": VERSION,
                    "tokenizers_version": tokenizers.__version__, "cases": cases})
        print(f"tok_{name}: {len(cases)} cases", flush=True)


# Pieces for random strings: whitespace of every kind, contractions in odd
# cases, digits of several scripts, marks, CJK range edges, emoji, specials.
FUZZ_PIECES = [
    " ", "  ", "   ", "\n", "\n\n", "\r\n", "\r", "\t", "\x85", "\xa0", "\u3000", "\u2028",
    "'s", "'S", "'LL", "'re", "'Ve", "'d", "'M", "'t", "\u2019s", "a", "Z", "hello", "World",
    "\u00e9", "e\u0301", "\u00c5", "A\u030a", "1", "12", "1234", "\u0661\u0662", "\uff15", "\u00b2",
    "\u2167", "\u4e2d", "\u6587\u5b57", "\u3041\u3042", "\u30a2\u30a4", "\ud55c\uad6d", "\U0001f600",
    "\U0001f44d\U0001f3fd", "\u200d", "\u200b", ".", ",", "!", "?", "-", "_", '"', "(", ")", "$", "%",
    "<", "|", ">", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>",
    "<|begin_of_text|>", "<|eot_id|>", "<\uff5cUser\uff5c>", "<\uff5cAssistant\uff5c>",
    "\u017f", "\u212a", "\u01c5", "\x00", "\x7f", "\x01", "\ufb01", "\ufeff", "\U0001d518", "\u0300",
    "\u0651", "xxxxxxx", "\u0915\u094d", "\u0e44\u0e17\u0e22", "\u05d0", "\u0627\u064b",
    "\u1100\u1161", "\U00010000", "\U0010fffd", "\ufffd", "\u00ad", "\u2060", "\u034f", "\u0f00",
    "\u2e80", "\u9fa5", "\u9fa6", "\u4e00", "\u309f", "\u30a0", "\u30ff", "::", "...", "--", "#",
    "@@", "''", "`", ";", "\u08d2", "\u0c3c", "a\u0308\u0301",
]


def fuzz_strings(n, seed):
    import random
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.2:       # random code points, surrogates avoided
            cps = [rng.randint(0, 0x10FFFF) if rng.random() < 0.5 else rng.randint(0, 0x3000)
                   for _ in range(rng.randint(1, 20))]
            out.append("".join(chr(c if not 0xD800 <= c < 0xE000 else 0x41) for c in cps))
        else:
            out.append("".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(1, 30))))
    return out


def tokenizer_fuzz_refs(out, tokdir):
    """Seeded random strings and id sequences: a second, wider net than the corpus."""
    import random
    import tokenizers
    texts = fuzz_strings(800, 7)
    for name in ("qwen3", "llama3", "deepseek_v3"):
        tk = tokenizers.Tokenizer.from_file(os.path.join(tokdir, name, "tokenizer.json"))
        rng = random.Random(11)
        vocab = tk.get_vocab_size()
        enc = [{"text": t, "ids": tk.encode(t, add_special_tokens=False).ids} for t in texts]
        dec = []
        for _ in range(400):
            ids = [rng.randrange(vocab) for _ in range(rng.randint(1, 6))]
            dec.append({"ids": ids, "decoded": tk.decode(ids, skip_special_tokens=False)})
        write_json(os.path.join(out, "ref", f"tok_fuzz_{name}.json"),
                   {"tokenizer": name, "version": VERSION, "tokenizers_version": tokenizers.__version__,
                    "encode": enc, "decode": dec})
        print(f"tok_fuzz_{name}: {len(enc)} strings, {len(dec)} id lists", flush=True)


def load_hf_tokenizer(d):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    try:
        return AutoTokenizer.from_pretrained(d)
    except Exception as e:   # tokenizer_class that needs more files than we ship
        print(f"AutoTokenizer({d}) failed ({e}); using PreTrainedTokenizerFast", flush=True)
        cfg = json.load(open(os.path.join(d, "tokenizer_config.json")))
        kw = {k: cfg[k] for k in ("bos_token", "eos_token", "pad_token", "chat_template") if cfg.get(k)}
        for k in ("bos_token", "eos_token", "pad_token"):
            if isinstance(kw.get(k), dict):
                kw[k] = kw[k]["content"]
        return PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"), **kw)


def chat_refs(out, tokdir):
    import transformers
    for name in ("qwen3", "llama3"):
        tk = load_hf_tokenizer(os.path.join(tokdir, name))
        cases = []
        for msgs, gen in CHAT_CASES:
            text = tk.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            cases.append({"messages": msgs, "add_generation_prompt": gen, "text": text})
        write_json(os.path.join(out, "ref", f"chat_{name}.json"),
                   {"tokenizer": name, "version": VERSION,
                    "transformers_version": transformers.__version__, "cases": cases})
        print(f"chat_{name}: {len(cases)} cases", flush=True)


def train_tiny_tokenizer(corpus, vocab_size, qwen_dir):
    """A byte-level BPE in the Qwen style (same pre-tokenizer, ChatML specials)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, decoders, trainers, Regex
    qwen = json.load(open(os.path.join(qwen_dir, "tokenizer.json")))
    pattern = qwen["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    text = list(corpus)
    import random
    rng = random.Random(7)
    for _ in range(3000):   # arithmetic in the style of the embedded model's task
        a, b, c = rng.randint(1, 999), rng.randint(1, 99), rng.randint(1, 99)
        text.append(f"Compute {a}*{b}+{c}. {a}*{b}={a*b}. {a*b}+{c}={a*b+c}. Answer: {a*b+c}")
    tk.train_from_iterator(text, trainer)
    qcfg = json.load(open(os.path.join(qwen_dir, "tokenizer_config.json")))
    tcfg = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
            "chat_template": qcfg["chat_template"], "model_max_length": 256,
            "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    return tk, tcfg


def model_refs(out, tokdir, corpus):
    import torch
    import transformers
    from transformers import (AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config)

    torch.set_num_threads(8)
    tk, tcfg = train_tiny_tokenizer(corpus, 512, os.path.join(tokdir, "qwen3"))
    eos = tk.token_to_id("<|im_end|>")
    common = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-6, initializer_range=0.2, bos_token_id=None, eos_token_id=eos)
    v5 = int(transformers.__version__.split(".")[0]) >= 5

    def rope(theta, scaling=None):
        # transformers 5 takes rope_parameters; 4.x takes rope_theta/rope_scaling
        if v5:
            rp = {"rope_type": "default", "rope_theta": theta}
            rp.update(scaling or {})
            return {"rope_parameters": rp}
        return {"rope_theta": theta, "rope_scaling": scaling}

    llama3_scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    archs = {
        # Llama: untied, Llama-3.1 rope scaling, config written in the old top-level form
        "llama": LlamaConfig(**common, **rope(500000.0, llama3_scaling), tie_word_embeddings=False),
        # Qwen2: q/k/v bias, untied
        "qwen2": Qwen2Config(**common, **rope(1000000.0), tie_word_embeddings=False),
        # Qwen3: q/k norm, head_dim independent of hidden/heads, tied
        "qwen3": Qwen3Config(**common, **rope(1000000.0), head_dim=32, tie_word_embeddings=True),
    }
    dtypes = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
    g = torch.Generator().manual_seed(1234)
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in PROMPT_LENS]

    for ai, (arch, cfg) in enumerate(archs.items()):
        torch.manual_seed(100 + ai)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
        with torch.no_grad():    # norms and biases away from their 1/0 init, so a missing one shows
            for pname, p in model.named_parameters():
                if "norm" in pname:
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape))
                elif pname.endswith(".bias"):
                    p.copy_(0.2 * torch.randn(p.shape))
        variants = [(f"{arch}-{d}", d, None) for d in dtypes]
        if arch == "qwen3":
            variants.append(("qwen3-f32-sharded", "f32", "150KB"))
        for name, dname, shard in variants:
            mdir = os.path.join(out, "models", name)
            shutil.rmtree(mdir, ignore_errors=True)
            import copy   # Module.to() is in place: cast a copy, keep the f32 master
            m = copy.deepcopy(model).to(dtypes[dname])
            kw = {"max_shard_size": shard} if shard else {}
            m.save_pretrained(mdir, **kw)
            del m
            tk.save(os.path.join(mdir, "tokenizer.json"))
            write_json(os.path.join(mdir, "tokenizer_config.json"), tcfg)
            cpath = os.path.join(mdir, "config.json")
            c = json.load(open(cpath))
            if arch == "llama" and "rope_parameters" in c:   # the older top-level form
                rp = c.pop("rope_parameters")
                c["rope_theta"] = rp.pop("rope_theta")
                if rp.get("rope_type", "default") != "default":
                    c["rope_scaling"] = rp
                write_json(cpath, c)
            files = sorted(os.listdir(mdir))
            # reference: HF on the stored weights, upcast to float32
            ref32 = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32).eval()
            native = None
            if dname != "f32":
                native = AutoModelForCausalLM.from_pretrained(mdir, dtype=dtypes[dname]).eval()
            logits, nat, greedy, margins = [], [], [], []
            with torch.no_grad():
                for p in prompts:
                    ids = torch.tensor([p])
                    logits.append(ref32(ids).logits[0].float().numpy())
                    if native is not None:
                        nat.append(native(ids).logits[0].float().numpy())
                    seq, ms = list(p), []
                    for _ in range(GREEDY_NEW):
                        lg = ref32(torch.tensor([seq])).logits[0, -1].float()
                        top = torch.topk(lg, 2)
                        ms.append(float(top.values[0] - top.values[1]))
                        seq.append(int(torch.argmax(lg)))
                    greedy.append(seq[len(p):])
                    margins.append(ms)
            write_json(os.path.join(out, "ref", f"{name}.json"), {
                "model": name, "arch": arch, "dtype": dname, "version": VERSION,
                "torch_version": torch.__version__, "transformers_version": transformers.__version__,
                "vocab": 512, "prompts": prompts,
                "logits": f"{name}.logits.bin",
                "native_logits": f"{name}.native.bin" if nat else None,
                "greedy": greedy, "greedy_margins": margins, "files": files})
            # The logits themselves are not kept: the build computes them
            # (tools/ref_logits.py); compare that with these HF runs here.
            check_ref_logits(out, name, np_rows(logits), np_rows(nat) if nat else None)
            print(f"{name}: {files} min greedy margin {min(min(m) for m in margins):.4f}", flush=True)


def np_rows(rows):
    import numpy as np
    return np.concatenate(rows).astype(np.float64)


def check_ref_logits(out, name, hf32, hfnat):
    """The build's reference logits (tools/ref_logits.py, NumPy) against HF's
    on the same prompts: float32 within 1e-5 relative per row, the stored
    dtype within 0.05 (it rounds where HF's modules round, not bit for bit)."""
    import subprocess
    import tempfile
    import numpy as np
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "ref_logits.py"),
                        os.path.join(out, "models", name), os.path.join(out, "ref", f"{name}.json"), tmp],
                       check=True)
        for file, hf, tol in ((f"{name}.logits.bin", hf32, 1e-5), (f"{name}.native.bin", hfnat, 0.05)):
            if hf is None:
                continue
            mine = np.fromfile(os.path.join(tmp, file), "<f4").astype(np.float64).reshape(-1, 512)
            hf = hf.reshape(-1, 512)
            err = max(np.sqrt(((a - b) ** 2).sum() / (b ** 2).sum()) for a, b in zip(mine, hf))
            print(f"{file}: ref_logits.py vs HF relative error {err:.3g}", flush=True)
            if err > tol:
                sys.exit(f"{file}: ref_logits.py differs from HF by {err:.3g} (> {tol})")


def write_manifest(out):
    """ref/SHA256SUMS: what this script wrote, so `make check` can tell the
    committed reference data is exactly what HF produced."""
    import hashlib
    paths = []
    for top in ("ref", "models"):
        for d, _, files in os.walk(os.path.join(out, top)):
            for f in files:
                if f.endswith((".safetensors", ".json")) and f != "braid-arith.json":
                    paths.append(os.path.relpath(os.path.join(d, f), out))
    with open(os.path.join(out, "ref", "SHA256SUMS"), "w") as fh:
        for rel in sorted(paths):
            digest = hashlib.sha256(open(os.path.join(out, rel), "rb").read()).hexdigest()
            fh.write(f"{digest}  {rel}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/data")
    ap.add_argument("--tokenizers", default="tests/data/tokenizers")
    a = ap.parse_args()
    corpus = json.load(open(os.path.join(a.out, "tokenizer_corpus.json"), encoding="utf-8"))
    os.makedirs(os.path.join(a.out, "ref"), exist_ok=True)
    tokenizer_refs(a.out, a.tokenizers, corpus)
    tokenizer_fuzz_refs(a.out, a.tokenizers)
    chat_refs(a.out, a.tokenizers)
    model_refs(a.out, a.tokenizers, corpus)
    write_json(os.path.join(a.out, "ref", "VERSION.json"), {"script": "tools/make_refs.py", "version": VERSION})
    write_manifest(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
