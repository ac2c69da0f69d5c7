#!/usr/bin/env bash
# The cuda backend's device check, in one call (issue 6). Needs dist/gpu from scripts/gpu/prepare.sh
# (carry it). Writes JSON lines to $OUT (default /tmp/kiln-gpu-out): parity.jsonl, bench.jsonl,
# decode.jsonl, train.jsonl, summary.json; each stage has its own time limit so a slow stage
# cannot eat the others. Order: correctness, our throughput, the peer, decode, train+resume,
# then the peer with torch.compile (slowest to start).
set -u
cd "$(dirname "$0")/../.."
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
export CUDA_PATH=/usr/local/cuda
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/kiln-gpu-out}"
mkdir -p "$OUT"
D=dist/gpu
export KILN_CUDA_CACHE="${KILN_CUDA_CACHE:-/tmp/kiln-ptx-cache}"
mkdir -p "$KILN_CUDA_CACHE"
[ -d "$D/ptx-cache" ] && cp "$D"/ptx-cache/*.ptx "$KILN_CUDA_CACHE"/ 2>/dev/null
stage() { # name limit_s outfile cmd...
  local name=$1 lim=$2 out=$3; shift 3
  local t0=$(date +%s.%N)
  timeout "$lim" "$@" 2>>"$OUT/stderr.log" | tee -a "$OUT/$out"
  local rc=${PIPESTATUS[0]}
  echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $(awk "BEGIN{print $(date +%s.%N) - $t0}")}" | tee -a "$OUT/stages.jsonl"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
stage parity 60 parity.jsonl "$D/cuda_check" parity
stage bench_kiln_bf16 60 bench.jsonl "$D/cuda_check" bench 16 1024 20 bf16
stage bench_kiln_bf16_attn_v1 45 bench.jsonl env KILN_CUDA_ATTN=v1 "$D/cuda_check" bench 16 1024 10 bf16
stage bench_kiln_tf32 30 bench.jsonl "$D/cuda_check" bench 16 1024 10 tf32
stage bench_torch 75 bench.jsonl python3 scripts/gpu/torch_peak.py "$D/torch_ref.py" gpu
stage decode 30 decode.jsonl "$D/cuda_check" decode 1,32 128
stage train_resume 45 train.jsonl "$D/cuda_check" train "$D/corpus.txt" /tmp/kiln-ckpt 300
stage bench_torch_compile 100 bench.jsonl python3 scripts/gpu/torch_peak.py "$D/torch_ref.py" gpu --compile
cat "$OUT"/*.jsonl | python3 scripts/gpu/summarize.py | tee "$OUT/summary.json"
tail -20 "$OUT/stderr.log"
