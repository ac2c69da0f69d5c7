#!/usr/bin/env bash
# Regenerate crates/kiln-engine/tests/fixtures/qwen: the tiny random-weight qwen2 and qwen3 GGUFs
# (F16, small vocab; dev/gguf/tiny-model.py) and their numpy reference logits for a fixed id
# sequence that crosses the byte tokens, the merges and the special tokens.
# usage: dev/gguf/qwen-fixtures.sh   (needs /tmp/kiln-gguf-venv: bash scripts/gguf-py.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
py=$(bash scripts/gguf-py.sh)
out=crates/kiln-engine/tests/fixtures/qwen
mkdir -p "$out"
# <|im_start|> "The quick" <|im_end|> "Ġthe" "Ġa" "\n!" <|endoftext|> (ids of the small vocab: bytes 0-255, merges
# 256-263, specials 264-266).
ids=265,84,104,101,32,113,117,105,99,107,266,258,262,10,33,264
for arch in qwen2 qwen3; do
  "$py" dev/gguf/tiny-model.py write "$arch" "$out/$arch-tiny.gguf" --seed 13
  "$py" dev/gguf/tiny-model.py reference "$out/$arch-tiny.gguf" "$ids" "$out/$arch-tiny.json"
done
