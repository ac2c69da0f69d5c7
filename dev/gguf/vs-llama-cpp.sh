#!/usr/bin/env bash
# Issue 13's correctness check: greedy continuations of 20 prompts from kiln (the kiln-chat
# example gguf_greedy) and llama.cpp (dev/gguf/greedy_top2.cpp: the library's argmax, which is
# what llama-completion does at temperature 0) on the same GGUF, compared token by token.
# A prompt passes when the continuations are equal, or when they part at a near-tie: on at least
# one side the two engines' picks are that side's top two, with a gap below the measured noise
# between the engines — the largest |kiln - llama.cpp| difference of the chosen token's logit
# over all steps where they agree (printed). Also checks that both tokenize the prompts alike.
# usage: dev/gguf/vs-llama-cpp.sh [MODEL_NAME_OR_PATH=smollm2-135m] [N_TOKENS=64] [THREADS=2]
# Builds kiln's example and, once, greedy_top2 against llama.cpp's library (scripts/llama-cpp.sh).
# Heavy: run under the shared lock on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:-smollm2-135m}
n=${2:-64}
threads=${3:-2}
cargo build --release -q -p kiln -p kiln-chat --example gguf_greedy
bin=$(scripts/llama-cpp.sh)
src=${KILN_DATA_DIR:-data}/raw/llama-cpp/llama_cpp_python-0.3.36/vendor/llama.cpp
peer=$bin/../greedy_top2
if [ ! -x "$peer" ] || [ dev/gguf/greedy_top2.cpp -nt "$peer" ]; then
  g++ -O2 -std=c++17 dev/gguf/greedy_top2.cpp -I"$src/include" -I"$src/ggml/include" \
    -L"$bin" -lllama -lggml -lggml-base -Wl,-rpath,"$bin" -o "$peer"
fi
path=$(target/release/kiln models list | awk -F'\t' -v m="$model" '$1==m {print $4}')
path=${path:-$model}
[ -f "$path" ] || { echo "no model file for $model (kiln models fetch $model)" >&2; exit 1; }
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
runs=$(mktemp)
for p in "${prompts[@]}"; do
  k=$(RAYON_NUM_THREADS=$threads target/release/examples/gguf_greedy "$path" "$n" "$p" 2>/dev/null)
  l=$("$peer" "$path" "$n" "$threads" "$p")
  python3 -c 'import json,sys; print(json.dumps({"prompt": sys.argv[1], "kiln": json.loads(sys.argv[2]), "llama": json.loads(sys.argv[3])}))' "$p" "$k" "$l" >>"$runs"
done
echo "model: $path, $n tokens, $threads threads"
python3 - "$runs" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
# The engines' noise: |kiln - llama.cpp| logit of the shared choice where they agree.
noise = []
for r in runs:
    for a, b in zip(r["kiln"]["steps"], r["llama"]["steps"]):
        if a[0] != b[0]:
            break
        noise.append(abs(a[1] - b[1]))
tau = max(noise)
noise.sort()
print(f"logit noise over {len(noise)} agreeing steps: median {noise[len(noise)//2]:.3f}, max {tau:.3f} (the near-tie bound)")
same = tie = 0
for r in runs:
    k, l = r["kiln"], r["llama"]
    if k["prompt"] != l["prompt"]:
        print(f"TOKENS DIFFER  {r['prompt']!r}: kiln {k['prompt']} llama.cpp {l['prompt']}")
        continue
    ks, ls = k["steps"], l["steps"]
    i = next((i for i, (a, b) in enumerate(zip(ks, ls)) if a[0] != b[0]), None)
    if i is None and len(ks) == len(ls):
        same += 1
        print(f"SAME      {r['prompt']!r}")
        continue
    if i is None:
        print(f"LENGTH    {r['prompt']!r}: kiln {len(ks)} steps, llama.cpp {len(ls)}")
        continue
    a, b = ks[i], ls[i]
    gk, gl = a[1] - a[3], b[1] - b[3]
    near = (a[2] == b[0] and gk < tau) or (b[2] == a[0] and gl < tau)
    tie += near
    print(f"{'NEAR-TIE' if near else 'DIFF    '}  {r['prompt']!r} parts at token {i}: kiln {a[0]} (gap {gk:.3f} to {a[2]}),"
          f" llama.cpp {b[0]} (gap {gl:.3f} to {b[2]})")
print(f"{same} of {len(runs)} continuations identical, {tie} part at a near-tie, {len(runs) - same - tie} fail")
PY
rm -f "$runs"
