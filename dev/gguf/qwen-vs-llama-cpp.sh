#!/usr/bin/env bash
# Issue 13's qwen2/qwen3 check with no Qwen weights: tiny random-weight F32 models of both
# architectures with the real Qwen2 vocabulary (dev/gguf/tiny-model.py), run by kiln (the
# kiln-engine example gguf_logits), llama.cpp (dev/gguf/logits_dump.cpp) and the numpy float64
# reference on the same ids (a sentence as llama-tokenize splits it). Prints, per architecture,
# the largest |logit difference| of each pair over every position and token, and whether the
# argmax agrees at every position.
# usage: dev/gguf/qwen-vs-llama-cpp.sh [THREADS=2]   (heavy: run under the shared lock)
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-2}
py=$(bash scripts/gguf-py.sh)
cargo build --release -q -p kiln -p kiln-engine --example gguf_logits
bin=$(scripts/llama-cpp.sh)
src=${KILN_DATA_DIR:-data}/raw/llama-cpp/llama_cpp_python-0.3.36/vendor/llama.cpp
peer=$bin/../logits_dump
if [ ! -x "$peer" ] || [ dev/gguf/logits_dump.cpp -nt "$peer" ]; then
  g++ -O2 -std=c++17 dev/gguf/logits_dump.cpp -I"$src/include" -I"$src/ggml/include" \
    -L"$bin" -lllama -lggml -lggml-base -Wl,-rpath,"$bin" -o "$peer"
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
text="The quick brown fox jumps over the lazy dog. 東京は日本の首都です。 def f(x): return x**2  # 42"
for arch in qwen2 qwen3; do
  m=$tmp/$arch.gguf
  "$py" dev/gguf/tiny-model.py write "$arch" "$m" --vocab qwen2 --type f32 --seed 7 >/dev/null
  ids=$("$bin/llama-tokenize" -m "$m" -p "$text" --ids --log-disable | tail -1 | tr -d '[] ')
  target/release/examples/gguf_logits "$m" "$ids" "$tmp/kiln.f32"
  "$peer" "$m" "$threads" "$ids" "$tmp/llama.f32"
  "$py" dev/gguf/tiny-model.py reference "$m" "$ids" "$tmp/ref.json" >/dev/null
  "$py" - "$arch" "$tmp" <<'PY'
import json, sys
import numpy as np
arch, tmp = sys.argv[1:3]
ref = json.load(open(f"{tmp}/ref.json"))
want = np.array(ref["logits"], dtype=np.float64)
n, v = want.shape
kiln = np.fromfile(f"{tmp}/kiln.f32", dtype=np.float32).reshape(n, v).astype(np.float64)
llama = np.fromfile(f"{tmp}/llama.f32", dtype=np.float32).reshape(n, v).astype(np.float64)
rng = np.abs(want).max()
print(f"{arch}: {n} positions x {v} tokens, max |logit| {rng:.3f}")
for a, b, an, bn in [(kiln, llama, "kiln", "llama.cpp"), (kiln, want, "kiln", "numpy"), (llama, want, "llama.cpp", "numpy")]:
    d = np.abs(a - b).max()
    same = int((a.argmax(1) == b.argmax(1)).sum())
    print(f"  {an:9} vs {bn:9}: max |diff| {d:.2e} ({d / rng:.1e} of the range), argmax equal at {same}/{n} positions")
PY
done
