#!/usr/bin/env python3
"""train_arith.py - trains the embedded model models/braid-arith from scratch:
a byte-level BPE tokenizer (HF tokenizers) and a small Qwen3ForCausalLM on the
arithmetic tasks of tools/arith_tasks.py, on one GPU, with fixed seeds.

Runs on the GPU machine (torch, transformers, tokenizers).  Writes:
  MODEL_DIR/braid-arith/       the HF model directory (bf16 safetensors shards
                               <= 15 MB, tokenizer.json, tokenizer_config.json
                               with a ChatML template, config.json)
  OUT/braid-arith.json         HF float32 reference for braid's engine test:
                               prompt ids, top logits at the last position,
                               greedy continuation, tokenizer cases
  OUT/calibration.json         accuracy by level measured here with HF sampling
                               (greedy, pass@1 at T=0.8, majority of 16)
Prints the loss curve and the wall time.

Usage: python3 tools/train_arith.py --out DIR [--steps N] [--seed S] [--label-smoothing E]
       [--level-weights W1,..,Wk] [--p-parallel P] [--calib ROWS] [--small]
"""
import argparse
import collections
import json
import math
import os
import random
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import arith_tasks as A  # noqa: E402

QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TAGS = ["<Parallel>", "</Parallel>", "<Goal>", "</Goal>", "<Outline>", "</Outline>",
        "<Path>", "</Path>", "<Conclusion>", "</Conclusion>"]
CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                 "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
REF_QUESTION = "Compute (37+12)*(45-8)+6*7"


def chat_prompt(q):
    return f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"


def train_tokenizer(vocab_size, seed, weights, p_par):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, decoders, trainers, Regex
    from tokenizers import AddedToken
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(TAGS), special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    rng = random.Random(seed)
    text = []
    for _ in range(20000):
        e = A.training_example(rng, weights, p_par)
        text.append(e["question"] + "\n" + e["response"])
    tk.train_from_iterator(text, trainer)
    # the Multiverse tags: one token each, decoded as text (not special)
    tk.add_tokens([AddedToken(t, normalized=False, special=False) for t in TAGS])
    return tk


def make_stream(tk, seed, max_len, batch, weights, p_par, p_fork, p_known):
    import torch

    class Stream(torch.utils.data.IterableDataset):
        """Endless seeded batches; each worker sorts 8 batches' worth of examples
        by length and cuts them into batches, so little is padding."""

        def __iter__(self):
            rng = random.Random(f"order/{seed}/{torch.utils.data.get_worker_info().id}")
            buf = []
            for ex in examples(tk, seed, max_len, weights, p_par, p_fork, p_known):
                buf.append(ex)
                if len(buf) == 8 * batch:
                    buf.sort(key=lambda e: len(e[0]))
                    bs = [buf[i:i + batch] for i in range(0, len(buf), batch)]
                    rng.shuffle(bs)
                    for b in bs:
                        yield collate(b)
                    buf = []
    return Stream()


def examples(tk, seed, max_len, weights, p_par, p_fork, p_known):
    """Endless seeded training examples as (ids, prompt length).  A share p_fork
    of the parallel examples is shown as braid's multiverse strategy forks it:
    the goal, then path 2 alone (`<Path>2:` right after </Goal>, the tag
    and number not in the loss, as the strategy injects them), ending at its
    </Path>; a path learns to depend on nothing but the goal."""
    import torch
    wi = torch.utils.data.get_worker_info()
    wid = wi.id if wi else 0
    rng = random.Random(f"train/{seed}/{wid}")
    frng = random.Random(f"fork/{seed}/{wid}")      # apart, so the mix and tokenizer stay as before
    eos = tk.token_to_id("<|im_end|>")
    while True:
        e = A.training_example(rng, weights, p_par, p_known)
        p = tk.encode(chat_prompt(e["question"])).ids
        view = A.fork_view(e["response"], 2) if e["format"] == "parallel" else None
        if view and frng.random() < p_fork:
            p += tk.encode(view[0]).ids
            r = tk.encode(view[1]).ids
        else:
            r = tk.encode(e["response"]).ids + [eos]
        ids = (p + r)[: max_len]
        yield ids, len(p)


def collate(batch):
    import torch
    n = max(len(ids) for ids, _ in batch)
    x = torch.zeros(len(batch), n, dtype=torch.long)
    y = torch.full((len(batch), n), -100, dtype=torch.long)
    for i, (ids, np_) in enumerate(batch):
        t = torch.tensor(ids)
        x[i, : len(ids)] = t
        y[i, np_ - 1: len(ids) - 1] = t[np_:]    # predict the response and its <|im_end|>
    return x, y


def extract(text):
    m = re.findall(r"Answer:\s*(-?\d+)", text)
    return m[-1] if m else None


def calibrate(model, tk, device, levels, n_prob, n_samp, seed, max_new, deadline=None):
    """HF sampling on the GPU: greedy, pass@1 (T=0.8) and majority of n_samp."""
    import torch
    eos = tk.token_to_id("<|im_end|>")
    pad = tk.token_to_id("<|endoftext|>")
    out = {}
    for name, level, fmt, known, split, top_p in levels:
        if deadline and time.time() > deadline:
            print(f"calib {name}: skipped (time)", flush=True)
            continue
        probs = [A.make_problem(random.Random(f"calib/{seed}/{level}/{int(split)}/{i}"), level, fmt, known,
                                split=split) for i in range(n_prob)]
        enc = [tk.encode(chat_prompt(p["question"])).ids for p in probs]
        L = max(map(len, enc))
        ids = torch.tensor([[pad] * (L - len(e)) + e for e in enc], device=device)
        att = torch.tensor([[0] * (L - len(e)) + [1] * len(e) for e in enc], device=device)
        res = {}
        with torch.no_grad():
            for mode in ("greedy", "sample"):
                kw = dict(do_sample=False) if mode == "greedy" else dict(
                    do_sample=True, temperature=0.8, top_k=0, top_p=top_p, num_return_sequences=n_samp)
                g = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=max_new,
                                   eos_token_id=eos, pad_token_id=pad, **kw)
                gen = g[:, L:].tolist()
                texts, lens = [], []
                for s in gen:
                    if eos in s:
                        s = s[: s.index(eos) + 1]
                    lens.append(len(s))
                    texts.append(tk.decode(s))
                res[mode] = (texts, lens)
        gt, _ = res["greedy"]
        st, sl = res["sample"]
        greedy = sum(extract(t) == p["answer"] for t, p in zip(gt, probs)) / n_prob
        p1 = maj = 0
        hist = [0] * (n_samp + 1)       # problems by number of right samples
        distinct = 0
        for i, p in enumerate(probs):
            answers = [extract(t) for t in st[i * n_samp:(i + 1) * n_samp]]
            p1 += sum(a == p["answer"] for a in answers) / n_samp
            hist[sum(a == p["answer"] for a in answers)] += 1
            distinct += len(set(answers))
            votes = collections.Counter(a for a in answers if a is not None)
            maj += bool(votes) and votes.most_common(1)[0][0] == p["answer"]
        r = dict(level=level, format=fmt, known=known, split=split, top_p=top_p, greedy=greedy,
                 pass1=p1 / n_prob, maj=maj / n_prob, tokens=sum(sl) / len(sl), hist=hist,
                 distinct=distinct / n_prob)
        out[name] = r
        print(f"calib {name:14s} greedy {greedy:.3f} pass@1 {r['pass1']:.3f} maj{n_samp} {r['maj']:.3f} "
              f"tokens {r['tokens']:.1f} distinct {r['distinct']:.1f} hist {hist}", flush=True)
        if mode == "sample" and name == levels[0][0]:
            print("sample:", st[0][:400].replace("\n", " | "), flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model-dir", default="/tmp/braid-arith-train", help="where the HF directory is built")
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=768)
    ap.add_argument("--workers", type=int, default=10)
    ap.add_argument("--calib-n", type=int, default=48)
    ap.add_argument("--label-smoothing", type=float, default=0.02,
                    help="keeps every step a little unsure, so sampled errors are diverse")
    ap.add_argument("--level-weights", default=",".join(map(str, A.TRAIN_WEIGHTS)),
                    help="training weight of levels 1..k")
    ap.add_argument("--p-parallel", type=float, default=A.P_PARALLEL)
    ap.add_argument("--p-known", type=float, default=0.3,
                    help="share of all examples with a Known block (the tokenizer keeps arith_tasks' mix)")
    ap.add_argument("--p-fork", type=float, default=0.25,
                    help="share of parallel examples shown as a forked path (path 2 alone after the goal)")
    ap.add_argument("--calib", default="L6,L7,L8,L9,L10,L7-known,L7-split-seq,L7-split-par,L8-p95",
                    help="calibration rows: L<level>[-known|-split-seq|-split-par|-p95]")
    ap.add_argument("--calib-deadline", type=float, default=0, help="skip calibration rows after this many s")
    ap.add_argument("--small", action="store_true", help="a smoke test: tiny model, few steps")
    ap.add_argument("--reuse", nargs=3, type=float, metavar=("PARAMS", "TRAIN_S", "FINAL_LOSS"),
                    help="skip training: use the directory in --model-dir (written by this script)")
    a = ap.parse_args()
    a.weights = [float(w) for w in a.level_weights.split(",")]
    a.reuse_info = (int(a.reuse[0]), a.reuse[1], [[a.steps - 1, a.reuse[2]]]) if a.reuse else None
    if a.small:
        a.hidden, a.layers, a.steps, a.calib_n = 128, 2, 60, 8

    import torch
    t_start = time.time()
    os.makedirs(a.out, exist_ok=True)
    random.seed(a.seed)
    torch.manual_seed(a.seed)
    torch.backends.cuda.matmul.allow_tf32 = True

    mdir = os.path.join(a.model_dir, "braid-arith")
    if a.reuse:     # a directory this script wrote before: reference and calibration only
        from tokenizers import Tokenizer
        tk = Tokenizer.from_file(os.path.join(mdir, "tokenizer.json"))
        nparam, train_s, curve = a.reuse_info
    else:
        tk = train_tokenizer(a.vocab, a.seed, a.weights, a.p_parallel)
        nparam, train_s, curve = train(a, tk, mdir)
    reference_and_calibrate(a, tk, mdir, nparam, train_s, curve, t_start)
    return 0


def train(a, tk, mdir):
    import shutil
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    t_start = time.time()
    dev = "cuda"
    V = tk.get_vocab_size()
    eos = tk.token_to_id("<|im_end|>")
    print(f"tokenizer: {V} tokens ({time.time() - t_start:.1f} s)", flush=True)

    heads = a.hidden // 64
    cfg = Qwen3Config(vocab_size=V, hidden_size=a.hidden, intermediate_size=3 * a.hidden,
                      num_hidden_layers=a.layers, num_attention_heads=heads,
                      num_key_value_heads=max(1, heads // 3), head_dim=64,
                      max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=True,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                      bos_token_id=None, eos_token_id=eos, pad_token_id=tk.token_to_id("<|endoftext|>"),
                      initializer_range=0.02, attn_implementation="sdpa")
    model = Qwen3ForCausalLM(cfg).to(dev)
    nparam = sum(p.numel() for p in model.parameters())
    print(f"model: {nparam / 1e6:.2f} M parameters, hidden {a.hidden}, layers {a.layers}", flush=True)

    dl = torch.utils.data.DataLoader(make_stream(tk, a.seed, a.max_len, a.batch, a.weights, a.p_parallel, a.p_fork,
                                                 a.p_known),
                                     batch_size=None,
                                     num_workers=a.workers, prefetch_factor=4, persistent_workers=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0}],
                            lr=a.lr, betas=(0.9, 0.98), eps=1e-8, fused=True)
    warm = max(1, a.steps // 20)

    def lr_at(s):
        if s < warm:
            return a.lr * (s + 1) / warm
        return a.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (s - warm) / (a.steps - warm))))

    model.train()
    t_train = time.time()
    it = iter(dl)
    curve = []
    for step in range(a.steps):
        x, y = next(it)
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, V), y.view(-1), ignore_index=-100,
                                                 label_smoothing=a.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == a.steps - 1:
            lv = loss.item()
            curve.append([step, round(lv, 4)])
            if step % 200 == 0 or step == a.steps - 1:
                print(f"step {step:5d} loss {lv:.4f} lr {lr_at(step):.2e} "
                      f"{time.time() - t_train:6.1f} s", flush=True)
    train_s = time.time() - t_train
    print(f"trained {a.steps} steps in {train_s:.1f} s, final loss {curve[-1][1]}", flush=True)

    shutil.rmtree(mdir, ignore_errors=True)
    os.makedirs(mdir)
    model.eval()
    model.to(torch.bfloat16).save_pretrained(mdir, max_shard_size="15MB")
    tk.save(os.path.join(mdir, "tokenizer.json"))
    tcfg = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
            "chat_template": CHAT_TEMPLATE, "model_max_length": 2048,
            "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
    with open(os.path.join(mdir, "tokenizer_config.json"), "w") as f:
        json.dump(tcfg, f, indent=1)
    print("saved:", {n: os.path.getsize(os.path.join(mdir, n)) for n in sorted(os.listdir(mdir))}, flush=True)
    return nparam, train_s, curve


def reference_and_calibrate(a, tk, mdir, nparam, train_s, curve, t_start):
    import torch
    import transformers
    from transformers import Qwen3ForCausalLM
    dev = "cuda"

    # the reference for braid's engine: HF in float32 on the stored (bf16) weights, on the CPU
    ref = Qwen3ForCausalLM.from_pretrained(mdir, dtype=torch.float32).eval()
    nparam = nparam or sum(p.numel() for p in ref.parameters())
    from transformers import PreTrainedTokenizerFast
    htk = PreTrainedTokenizerFast(tokenizer_file=os.path.join(mdir, "tokenizer.json"),
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>")
    htk.chat_template = CHAT_TEMPLATE
    rendered = htk.apply_chat_template([{"role": "user", "content": REF_QUESTION}], tokenize=False,
                                       add_generation_prompt=True)
    assert rendered == chat_prompt(REF_QUESTION), rendered
    prompt = tk.encode(rendered).ids
    seq, margins = list(prompt), []
    with torch.no_grad():
        last = ref(torch.tensor([prompt])).logits[0, -1].float()
        top = torch.topk(last, 10)
        for _ in range(48):
            lg = ref(torch.tensor([seq])).logits[0, -1].float()
            t2 = torch.topk(lg, 2)
            margins.append(float(t2.values[0] - t2.values[1]))
            seq.append(int(t2.indices[0]))
    greedy = seq[len(prompt):]
    tok_cases = []
    rng = random.Random(99)
    for text in [rendered, A.solve_parallel(A.parse("(37+12)*(45-8)+6*7")),
                 A.make_problem(rng, 5, "sequential", known=True)["question"],
                 A.make_problem(rng, 3, check=True)["question"], "Answer: -1234567890 <Path>1: x</Path>"]:
        tok_cases.append({"text": text, "ids": tk.encode(text).ids})
    refj = {"model": "braid-arith", "question": REF_QUESTION, "prompt_text": rendered, "prompt": prompt,
            "top_logits": [[int(i), float(v)] for v, i in zip(top.values, top.indices)],
            "last_logits": [round(float(v), 6) for v in last],
            "greedy": greedy, "greedy_text": tk.decode(greedy), "greedy_margins": margins,
            "torch_version": torch.__version__, "transformers_version": transformers.__version__,
            "tokenizer_cases": tok_cases}
    with open(os.path.join(a.out, "braid-arith.json"), "w") as f:
        json.dump(refj, f, indent=1)
    print("reference greedy:", repr(refj["greedy_text"]), "min margin", round(min(margins), 4), flush=True)

    # calibration with the stored weights (bf16 upcast to f32, as braid computes)
    gm = Qwen3ForCausalLM.from_pretrained(mdir, dtype=torch.float32).to(dev).eval()
    levels = []
    for name in a.calib.split(","):
        lv, _, kind = name[1:].partition("-")
        levels.append((name, int(lv), "parallel" if kind == "split-par" else "sequential", kind == "known",
                       kind.startswith("split"), 0.95 if kind == "p95" else 1.0))
    cal = calibrate(gm, tk, dev, levels, a.calib_n, 16, a.seed, 1000,
                    t_start + a.calib_deadline if a.calib_deadline else None)
    with open(os.path.join(a.out, "calibration.json"), "w") as f:
        json.dump({"calibration": cal, "train_seconds": train_s, "steps": a.steps, "final_loss": curve[-1][1],
                   "loss_curve": curve, "params": nparam, "gpu": torch.cuda.get_device_name(0),
                   "args": vars(a), "total_seconds": time.time() - t_start}, f, indent=1)
    print(f"total wall time {time.time() - t_start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
