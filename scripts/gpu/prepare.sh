#!/usr/bin/env bash
# Build everything the device check needs, on the CPU machine (no CUDA needed), into dist/gpu/
# (git-ignored; name it in the device call's `carry`):
#   dist/gpu/cuda_check   stripped device-check binary (crates/kiln-engine/examples/cuda_check.rs)
#   dist/gpu/torch_ref.py the PyTorch peer (../shared/bench/torch_ref.py)
#   dist/gpu/corpus.txt   ~2 MB of fetched text (Shakespeare) for the train/resume check
#   dist/gpu/ptx-cache/   kernels precompiled to PTX (sm_90) when KILN_NVRTC_LIB_DIR names a libnvrtc
#                         folder (scripts/gpu/nvrtc-local.sh prints one); else the device compiles them
# Then on the device: `bash scripts/gpu/device-check.sh`.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/cuda}"
CUDARC_CUDA_VERSION=13000 cargo build --release -p kiln-engine --features cuda --example cuda_check
mkdir -p dist/gpu
cp "$CARGO_TARGET_DIR/release/examples/cuda_check" dist/gpu/cuda_check
strip dist/gpu/cuda_check
cp ../shared/bench/torch_ref.py dist/gpu/torch_ref.py
python3 -c "import glob,sys; fs=sorted(f for f in glob.glob('data/raw/shakespeare/**/texts/**', recursive=True) if not f.endswith('.py')); import os; b=b''.join(open(f,'rb').read() for f in fs if os.path.isfile(f)); sys.stdout.buffer.write(b[:2000000])" > dist/gpu/corpus.txt
if [ -n "${KILN_NVRTC_LIB_DIR:-}" ]; then
  LD_LIBRARY_PATH="$KILN_NVRTC_LIB_DIR" KILN_CUDA_CACHE=dist/gpu/ptx-cache dist/gpu/cuda_check ptx-cache 16,32,64  # the device-check head dims
else
  echo "KILN_NVRTC_LIB_DIR unset: no PTX cache (the device compiles the kernels itself; see scripts/gpu/nvrtc-local.sh)"
fi
du -sh dist/gpu/*
