#!/bin/sh
# cli.sh - braid tokenize / generate / bench as a user runs them: the real
# binary on the real tokenizer files and the HF reference models; JSON
# contracts, reference agreement, and clear errors for bad input.  TAP.
set -u
. "$BRAID_SRCDIR/tests/integration/tap.sh"
B=$BRAID_BIN
D=$BRAID_TEST_DATA

tap_plan 44

# ---- the reference data is what tools/make_refs.py wrote (tests/data/ref/README.md) ----
check "reference data matches ref/SHA256SUMS" sh -c "cd '$D' && sha256sum --quiet -c ref/SHA256SUMS"

# ---- the command table ----------------------------------------------------------
run "$B" --help
check "braid --help lists the commands" sh -c "[ $rc -eq 0 ] && grep -q generate '$T/out' && grep -q tokenize '$T/out'"
fails_clearly "unknown command is an error" 2 "unknown command" "$B" frobnicate
fails_clearly "unknown option is an error" 2 "unknown option '--frob'" "$B" tokenize --frob

# ---- tokenize against HF tokenizers' ids --------------------------------------------
for name in qwen3 llama3 deepseek_v3; do
	ref=$D/ref/tok_$name.json
	n=$(jq '.cases | length' "$ref")
	bad=0
	i=0
	while [ $i -lt "$n" ]; do
		jq -j ".cases[$i].text" "$ref" >"$T/text"
		jq -c ".cases[$i].ids" "$ref" >"$T/want"
		"$B" tokenize --model "$D/tokenizers/$name" <"$T/text" >"$T/got" 2>"$T/err" || bad=$((bad + 1))
		jq -e --slurpfile w "$T/want" '. == $w[0]' "$T/got" >/dev/null 2>&1 || bad=$((bad + 1))
		i=$((i + 1))
	done
	check "tokenize: $n corpus strings equal HF ids ($name)" [ $bad -eq 0 ]
done

# encode then decode (stdin JSON -> text) equals HF's decode of its own ids
# (NFC composes the decomposed marks, so that is not always the input)
bad=0
for i in 19 29 30 40 56; do
	jq -j ".cases[$i].text" "$D/ref/tok_qwen3.json" >"$T/text"
	jq -j ".cases[$i].decoded" "$D/ref/tok_qwen3.json" >"$T/want"
	"$B" tokenize --model "$D/tokenizers/qwen3" <"$T/text" | "$B" tokenize --model "$D/tokenizers/qwen3" --decode >"$T/back" 2>"$T/err" || bad=1
	cmp -s "$T/want" "$T/back" || bad=1
done
check "tokenize | tokenize --decode equals HF decode on CJK, emoji ZWJ, combining marks, LaTeX" [ $bad -eq 0 ]

mkdir "$T/only" && cp "$D/tokenizers/llama3/tokenizer.json" "$T/only/"
run sh -c "printf 'Hello world' | '$B' tokenize --model '$T/only'"
check "tokenize needs nothing but tokenizer.json" [ "$rc" -eq 0 -a "$(cat "$T/out")" = "[9906,1917]" ]

printf 'bad \377\376 bytes' >"$T/bad"
fails_clearly "tokenize: invalid UTF-8 is a clear error" 1 "not valid UTF-8" sh -c "'$B' tokenize --model '$D/tokenizers/qwen3' <'$T/bad'"
fails_clearly "tokenize --decode: malformed JSON is a clear error" 1 "stdin" sh -c "echo '[1,2' | '$B' tokenize --model '$D/tokenizers/qwen3' --decode"
fails_clearly "tokenize --decode: out-of-range id is a clear error" 1 "not a token id" sh -c "echo '[1,999999999]' | '$B' tokenize --model '$D/tokenizers/qwen3' --decode"
fails_clearly "tokenize: a missing directory is named" 1 "$T/nowhere" sh -c "echo hi | '$B' tokenize --model '$T/nowhere'"

# ---- generate against HF greedy continuations ------------------------------------------
for m in qwen3-f32 llama-bf16 qwen2-f16; do
	ref=$D/ref/$m.json
	prompt=$(jq -c '.prompts[1]' "$ref")
	run "$B" generate --model "$D/models/$m" --prompt-ids "$prompt" --max-tokens 24 --ignore-eos --top-logits 5
	check "generate: greedy ids equal HF generate ($m)" sh -c "[ $rc -eq 0 ] && jq -e --argjson w '$(jq -c '.greedy[1]' "$ref")' '.ids == \$w' '$T/out' >/dev/null"
done
check "generate: output is exactly {ids, text, top_logits}" jq -e '(keys == ["ids","text","top_logits"]) and (.text|type=="string") and (.ids|all(type=="number"))' "$T/out"
check "generate: top_logits are 5 [id, logit] pairs, largest first, led by the greedy token" \
	jq -e '(.top_logits|map(.[1])) as $v | (.top_logits|length==5) and ($v == ($v|sort|reverse)) and (.top_logits[0][0] == .ids[0])' "$T/out"

M=$D/models/qwen3-f32
"$B" generate --model "$M" --prompt "Compute 12*7." --max-tokens 16 --temperature 1 --seed 5 --ignore-eos >"$T/s5a" 2>"$T/err"
"$B" generate --model "$M" --prompt "Compute 12*7." --max-tokens 16 --temperature 1 --seed 5 --ignore-eos >"$T/s5b" 2>>"$T/err"
"$B" generate --model "$M" --prompt "Compute 12*7." --max-tokens 16 --temperature 1 --seed 6 --ignore-eos >"$T/s6" 2>>"$T/err"
check "generate: the same seed reproduces the same text" sh -c "[ -s '$T/s5a' ] && cmp -s '$T/s5a' '$T/s5b'"
check "generate: another seed gives another sample" sh -c "[ -s '$T/s6' ] && ! cmp -s '$T/s5a' '$T/s6'"
run "$B" generate --model "$M" --prompt "Compute 12*7." --n 4 --max-tokens 12 --temperature 1 --seed 5 --ignore-eos
check "generate --n 4: four forked samples, one contract object per line, all different" \
	sh -c "[ $rc -eq 0 ] && [ \$(jq -s 'length' '$T/out') -eq 4 ] && jq -s -e 'all(keys == [\"ids\",\"text\",\"top_logits\"]) and (map(.ids)|unique|length == 4) and all(.ids|length == 12)' '$T/out' >/dev/null"
run "$B" generate --model "$M" --prompt "What is 2+2?" --chat --max-tokens 8
check "generate --chat with the model's ChatML template" sh -c "[ $rc -eq 0 ] && jq -e '.ids|length > 0' '$T/out' >/dev/null"

fails_clearly "generate: --prompt and --prompt-ids together" 2 "exactly one" "$B" generate --model "$M" --prompt x --prompt-ids "[1]"
fails_clearly "generate: a token id outside the vocabulary" 1 "not a token id" "$B" generate --model "$M" --prompt-ids "[1,99999]"
fails_clearly "generate: malformed --prompt-ids" 1 "prompt-ids" "$B" generate --model "$M" --prompt-ids "[1,"
fails_clearly "generate: a non-number temperature" 2 "temperature" "$B" generate --model "$M" --prompt x --temperature warm
fails_clearly "generate: a negative max-tokens" 2 "max-tokens" "$B" generate --model "$M" --prompt x --max-tokens -3
fails_clearly "generate: an unknown device" 2 "device" "$B" generate --model "$M" --prompt x --device tpu
fails_clearly "generate: a KV size of 0 MiB" 2 "kv-mb" "$B" generate --model "$M" --prompt x --kv-mb 0
run "$B" generate --model "$M" --prompt "Compute 12*7." --max-tokens 4 --kv-mb 1 --device cpu
check "generate --kv-mb 1: a 1 MiB KV cache is enough for a short prompt" sh -c "[ $rc -eq 0 ] && jq -e '.ids|length == 4' '$T/out' >/dev/null"
if [ -z "$(ls /dev/nvidia0 2>/dev/null)" ]; then
	fails_clearly "generate --device cuda without a GPU says so" 1 "CUDA" "$B" generate --model "$M" --prompt x --device cuda
else
	ok "generate --device cuda without a GPU says so # SKIP a GPU is present"
fi

cp -r "$M" "$T/trunc" && head -c 5000 "$M/model.safetensors" >"$T/trunc/model.safetensors"
fails_clearly "generate: a truncated safetensors file is named" 1 "model.safetensors" "$B" generate --model "$T/trunc" --prompt x
cp -r "$M" "$T/badcfg" && printf '{"architectures": ["Qwen3ForCausalLM"], "hidden_size": ' >"$T/badcfg/config.json"
fails_clearly "generate: a malformed config.json is named" 1 "config.json" "$B" generate --model "$T/badcfg" --prompt x
fails_clearly "generate: a missing model directory is named" 1 "$T/none" "$B" generate --model "$T/none" --prompt x

# ---- bench (a smoke run of the command, not a timing) ---------------------------------
run "$B" bench --model "$M" --n 1,4 --prompt-len 8 --gen 2 --json "$T/bench.json"
check "bench runs and writes its JSON" sh -c "[ $rc -eq 0 ] && jq -e '(.rows|length==2 and (.[1].n==4) and (.[1].decode_tok_s > 0)) and .engine_start_s > 0' '$T/bench.json' >/dev/null && grep -q '^engine start: ' '$T/out'"

run "$B" bench --model "$M" --n 1,4 --prompt-len 8 --gen 2 --kv-mb 1 --json "$T/bench.json"
check "bench --kv-mb 1: the pool is at most 1 MiB and the run fits" sh -c "[ $rc -eq 0 ] && jq -e '.kv_blocks_total >= 1 and .kv_blocks_total * .kv_block_bytes <= 1048576 and (.rows|length==2)' '$T/bench.json' >/dev/null"
fails_clearly "bench: a KV pool too small for the run names --kv-mb" 1 "give a larger --kv-mb" "$B" bench --model "$M" --n 1,64 --prompt-len 100 --gen 100 --kv-mb 1
fails_clearly "bench: a prompt past the model's context is a clear error" 2 "context of 256 positions" "$B" bench --model "$M" --prompt-len 400
fails_clearly "bench: a KV size of 0 MiB" 2 "kv-mb" "$B" bench --model "$M" --kv-mb 0
run "$B" bench --device cpu --shape tiny --scratch "$T/scratch/a/b" --n 1 --prompt-len 8 --gen 2
check "bench --shape writes its model under a --scratch directory it makes (parents too)" \
	sh -c "[ $rc -eq 0 ] && [ -s '$T/scratch/a/b/braid-bench-tiny/model.safetensors' ]"
fails_clearly "bench: a --scratch that cannot be made is a clear error" 1 "Not a directory" \
	"$B" bench --device cpu --shape tiny --scratch "$T/out/x" --n 1 --prompt-len 8 --gen 2

# ---- bench --server-path (a smoke run: fields and bookkeeping, not timings) -----------------
run "$B" bench --server-path --model "$M" --jobs 1,2 --n 2 --gen 4 --clients 3 --json "$T/sbench.json"
check "bench --server-path runs, prints its table and writes one JSON row per N" \
	sh -c "[ $rc -eq 0 ] && grep -q '| engine alone ms/step |' '$T/out' && jq -e '.clients == 3 and (.rows|length == 2) and (.rows|map(.N) == [1,2])' '$T/sbench.json' >/dev/null"
check "bench --server-path rows have every field, and no event was lost or reordered" \
	jq -e '.rows|all(has("N","n","steps","engine_ms_per_step","sched_ms_per_step","overhead_ms_per_step","overhead_pct",
		"events_published_per_s","events_delivered_per_s","gaps") and .engine_ms_per_step > 0 and .sched_ms_per_step > 0
		and .lost == 0 and .out_of_order == 0 and .jobs_failed == 0 and .tokens_sched == .tokens_server
		and (.gaps > 0 or (.clients_complete == .clients and .events_delivered == .clients * .events_published)))' "$T/sbench.json"
fails_clearly "bench --server-path: a bad --jobs list is a clear error" 2 "jobs" "$B" bench --server-path --model "$M" --jobs 0
