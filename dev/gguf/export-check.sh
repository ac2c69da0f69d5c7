#!/usr/bin/env bash
# A kiln-exported GGUF in llama.cpp against `kiln sample` (issue 13): exports a run's checkpoint
# as f32, f16 and q8_0, then for 20 prompts compares kiln's greedy N-token continuation (on the
# f32 checkpoint) with llama-completion's at temperature 0 on each file. Text is compared (kiln
# sample prints text). The two stop differently: kiln sample at <|bos|> (llama.cpp prints it with
# --special and goes on), llama.cpp at <|assistant_end|> (kiln sample goes on); text equal up to
# either stop counts as a match.
# Also checks llama-tokenize's ids against `kiln tok encode` on a mixed text.
#
# usage: dev/gguf/export-check.sh RUN_OR_CHECKPOINT [N_TOKENS] [OUT_DIR]
#   e.g. dev/gguf/export-check.sh runs/speedrun/base 64
# env:   KILN (default target/release/kiln), LLAMA_BIN (default: scripts/llama-cpp.sh's folder)
# Run it under the shared lock on a busy machine: flock /tmp/kiln-heavy.lock dev/gguf/export-check.sh …
set -uo pipefail
ckpt=$1
n=${2:-64}
out=${3:-$(mktemp -d)}
kiln=${KILN:-target/release/kiln}
bin=${LLAMA_BIN:-$(bash "$(dirname "$0")/../../scripts/llama-cpp.sh")}
mkdir -p "$out"
prompts=(
  "The capital of France is"
  "Once upon a time, there was a little"
  "The three primary colors are"
  "Water boils at a temperature of"
  "The largest planet in our solar system is"
  "To make a cup of tea, first"
  "The main ingredients of bread are"
  "In 1492, Christopher Columbus"
  "The quick brown fox"
  "Photosynthesis is the process by which"
  "The best way to learn a new language is"
  "Dear Sir or Madam,"
  "The theory of relativity was developed by"
  "A healthy breakfast usually includes"
  "The history of the Roman Empire"
  "How to change a flat tire:"
  "The weather today is"
  "My favorite book is"
  "Scientists have discovered that"
  "The city council voted on"
)
for ty in f32 f16 q8_0; do
  line=$("$kiln" export gguf --ckpt "$ckpt" --out "$out/model-$ty.gguf" --type "$ty") || exit 1
  echo "$line"
done
# the tokenizer the run recorded (kiln.json of the checkpoint the export names)
dir=$(printf '%s' "$line" | sed -n 's/.* from \(.*\), vocab.*/\1/p')
tok=${TOKENIZER:-$(sed -n 's/.*"tokenizer": "\(.*\)".*/\1/p' "$dir/kiln.json" | head -1)}
text=$'The city council voted on Tuesday.\nNaïve café, 東京 2026-12-03; it\'s "quoted" — ok?\n\n  indented\tTAB'
want=$(printf '%s' "$text" | "$kiln" tok encode --tokenizer "$tok" --ids 2>/dev/null)
got=$("$bin/llama-tokenize" -m "$out/model-f32.gguf" -p "$text" --ids --no-bos --log-disable 2>/dev/null | tr -d '[],')
if [ "$want" = "$got" ]; then echo "tokenize: llama-tokenize gives kiln's $(echo $got | wc -w) ids"; else echo "tokenize: DIFFER"; echo " kiln:  $want"; echo " llama: $got"; fi
declare -A same
for p in "${prompts[@]}"; do
  k=$("$kiln" sample --model "$ckpt" --prompt "$p" --max-tokens "$n" --temperature 0 --threads 2 2>/dev/null)
  k=${k#"$p"}
  for ty in f32 f16 q8_0; do
    # llama-completion sometimes exits after a stop token before its last text reaches stdout
    # (same command, same file: " a small" one run, " a small<|assistant_end|> [end of text]" the
    # next): the longest of 3 runs is its output.
    l=""
    for try in 1 2 3; do
      o=$("$bin/llama-completion" -m "$out/model-$ty.gguf" -p "$p" -n "$n" --temp 0 -t 2 -no-cnv \
          --no-warmup --special --no-display-prompt 2>"$out/llama.err") ||
        { echo "$ty: llama-completion failed on \"$p\": $(tail -1 "$out/llama.err")"; continue 2; }
      [ ${#o} -gt ${#l} ] && l=$o
    done
    # $(...) drops trailing newlines on both sides alike
    # llama.cpp stops at <|assistant_end|> (the file's EOS) and prints " [end of text]"; kiln
    # sample stops only at <|bos|> (and llama.cpp prints that one and goes on).
    e=${l%" [end of text]"}
    if [ "$l" = "$k" ] || [[ "$l" == "$k<|bos|>"* ]] ||
       { [[ "$e" == *"<|assistant_end|>" ]] && [[ "$k" == "$e"* ]]; }; then
      same[$ty]=$(( ${same[$ty]:-0} + 1 ))
    else
      i=0; while [ "${l:$i:1}" = "${k:$i:1}" ]; do i=$((i+1)); done
      echo "$ty differs on \"$p\" after ${i} chars: kiln \"${k:$i:40}\" vs llama.cpp \"${l:$i:40}\""
    fi
  done
done
for ty in f32 f16 q8_0; do
  echo "$ty: ${same[$ty]:-0}/${#prompts[@]} greedy $n-token continuations equal kiln sample's"
done
