#!/usr/bin/env bash
# Greedy continuations of 20 prompts from kiln and llama.cpp's llama-completion on the same
# GGUF (issue 13's correctness check: text compared, not yet token ids / logits, so where they
# part is not yet classified as a near-tie or not).
# usage: dev/gguf/vs-llama-cpp.sh LLAMA_COMPLETION_BINARY [MODEL_NAME_OR_PATH] [N_TOKENS]
# Build llama.cpp from `kiln data fetch --set llama-cpp` (vendor/llama.cpp) as the data README says.
set -uo pipefail
bin=$1
model=${2:-smollm2-135m}
n=${3:-64}
kiln=${KILN:-target/release/kiln}
path=$("$kiln" models list | awk -F'\t' -v m="$model" '$1==m {print $4}')
path=${path:-$model}
prompts=(
  "The capital of France is"
  "Once upon a time, there was a little"
  "def fibonacci(n):"
  "The three primary colors are"
  "Water boils at a temperature of"
  "The largest planet in our solar system is"
  "To make a cup of tea, first"
  "The main ingredients of bread are"
  "In 1492, Christopher Columbus"
  "The quick brown fox"
  "Photosynthesis is the process by which"
  "The best way to learn a new language is"
  "import numpy as np"
  "Dear Sir or Madam,"
  "The theory of relativity was developed by"
  "A healthy breakfast usually includes"
  "The Great Wall of China is"
  "My favorite season of the year is"
  "The opposite of hot is"
  "Shakespeare wrote many plays, including"
)
same=0
for p in "${prompts[@]}"; do
  k=$("$kiln" sample --model "$path" --prompt "$p" --temperature 0 --max-tokens "$n" --threads 2 2>/dev/null)
  k=${k#"$p"}
  l=$("$bin" -m "$path" -p "$p" -n "$n" --temp 0 -t 2 --no-display-prompt -no-cnv 2>/dev/null </dev/null)
  # kiln prints a newline after the sample; llama.cpp may print one too.
  k=${k%$'\n'}; l=${l%$'\n'}
  if [ "$k" == "$l" ]; then
    same=$((same + 1)); echo "SAME  $p"
  else
    # Length of the common prefix, to show where they part.
    i=0; while [ $i -lt ${#k} ] && [ "${k:$i:1}" == "${l:$i:1}" ]; do i=$((i + 1)); done
    echo "DIFF  $p  (equal for $i chars)"; echo "  kiln:      ${k:0:300}"; echo "  llama.cpp: ${l:0:300}"
  fi
done
echo "$same of ${#prompts[@]} prompts give the same $n-token greedy continuation"
