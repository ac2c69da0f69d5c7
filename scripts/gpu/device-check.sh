#!/usr/bin/env bash
# The cuda backend's device check, in one call (issue 6). Needs dist/gpu from scripts/gpu/prepare.sh
# (carry it). Writes JSON lines (packed into $OUT at the end, see below): parity.jsonl, bench.jsonl,
# decode.jsonl, train.jsonl, stages.jsonl, summary.json, plus pretrain/ (the runs' metrics with the
# live samples, curves.svg, sample texts). Each stage has its own time limit so a slow stage cannot
# eat the others, and all of them share one budget (KILN_CHECK_BUDGET, 360 s; 120 s of it kept for
# torch.compile at the end), so the script ends within ≈ 6 min even if stages hang; expected total
# ≈ 3–4 min. Order:
#   (1) parity with the cpu backend (the test binary tests/cuda_parity.rs, run with --ignored)
#   (2) `kiln bench train --preset gpu-gpt2-124m --device cuda` (+ cuda_check's per-op profile),
#       the PyTorch peer eager (torch.compile last: slowest to start); peak GPU memory both sides
#   (3) decode tokens/s at batch 1 and 32 on the 124M shape (cuda_check decode); RL rollouts
#       (`kiln bench decode`, 64 ragged rows) on the GPU and its CPU twin; with
#       dist/gpu/kiln-base.xz (a previous build) also the train bench with both, alternating
#   (4) learning parity: kiln-cuda and PyTorch on the same batches of real text, GPT-2-124M shape,
#       300 steps; PyTorch from kiln's initial parameters and from two seeds of its own (the
#       noise); learning.jsonl + learning/curves.svg (scripts/gpu/parity_report.py)
#   (5) `kiln pretrain --device cuda`: 300 steps on the fetched Shakespeare (BPE 1024, gpt2 6×384,
#       ctx 256, batch 32), checkpoint at 150; a second run SIGKILLed after its step-150 checkpoint
#       and resumed; losses compared (GPU atomics: not bitwise); the cuda checkpoint resumed on the
#       cpu and that cpu checkpoint resumed on cuda (interchangeable formats); `kiln sample
#       --device cuda` at 1 and 32 samples (tokens/s) and greedy f32 cuda vs cpu text.
#   (6) `kiln speedrun --preset gpt2-small --device cuda` from the run folder and data that
#       scripts/gpu/speedrun-data.sh prepared (report card, eval.json, plan into speedrun/)
#   (7) `kiln rl --device cuda` for KILN_CHECK_RL_MINUTES (2) from that run's SFT model
# Env: KILN_CHECK_DEVICE=cpu runs stage (5) on the cpu (a dry run of the script's logic without a
# GPU, with e.g. KILN_CHECK_STEPS=20 KILN_CHECK_BATCH=2); KILN_CHECK_NO_PREFLIGHT=1 skips the GPU
# preflight (then every GPU stage fails on its own, fast). A rerun inside what is left of a lease:
# KILN_CHECK_SKIP=name,name skips those stages (`pretrain` skips all of (5)), KILN_CHECK_AB_ROUNDS
# (2) sets the A/B rounds, KILN_CHECK_SPEEDRUN_MINUTES (3) the GPU speedrun's budget.
set -u
cd "$(dirname "$0")/../.."
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
export CUDA_PATH=/usr/local/cuda
export PYTHONUNBUFFERED=1
# Results are written to a work folder and packed into $OUT at the end (the device tool returns at
# most 8 files): $OUT/summary.json, $OUT/stages.jsonl and everything in $OUT/kiln-gpu-out.tgz.
# Unpack with `tar -xzf kiln-gpu-out.tgz -C scripts/gpu/results/<date>-<device>-<run>/`.
PACK="${OUT:-/tmp/kiln-gpu-pack}"
OUT=/tmp/kiln-gpu-out
rm -rf "$OUT"
mkdir -p "$OUT" "$PACK"
pack() {
  cp "$OUT/stages.jsonl" "$PACK/" 2>/dev/null
  cp "$OUT/summary.json" "$PACK/" 2>/dev/null
  tar -czf "$PACK/kiln-gpu-out.tgz" -C "$OUT" .
}
trap pack EXIT
D=dist/gpu
DEV="${KILN_CHECK_DEVICE:-cuda}"
STEPS="${KILN_CHECK_STEPS:-300}"
BATCH="${KILN_CHECK_BATCH:-32}"
HALF=$((STEPS / 2))
export KILN_CUDA_CACHE="${KILN_CUDA_CACHE:-/tmp/kiln-ptx-cache}"
mkdir -p "$KILN_CUDA_CACHE"
[ -d "$D/ptx-cache" ] && cp "$D"/ptx-cache/*.ptx "$KILN_CUDA_CACHE"/ 2>/dev/null
SUM="python3 scripts/gpu/summarize.py"
fail() { echo "{\"stage\": \"preflight\", \"ok\": false, \"error\": \"$1\"}" | tee -a "$OUT/stages.jsonl"; exit 2; }

# ---- preflight: the prepared files, then the GPU (fail at once instead of per stage) ----------
for f in kiln.xz cuda_check.xz cuda_parity.xz parity_batches.xz torch_ref.py tok/tokenizer.tiktoken tokens/train.parquet parity/tokens/train.parquet; do
  [ -e "$D/$f" ] || fail "missing $D/$f: run scripts/gpu/prepare.sh and carry dist/gpu"
done
for b in kiln cuda_check cuda_parity parity_batches; do
  python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
    "$D/$b.xz" "/tmp/$b" && chmod +x "/tmp/$b" || fail "cannot unpack $D/$b.xz"
done
K=/tmp/kiln
# (not CC: the machine exports CC=gcc, and torch.compile's triton build calls $CC)
CHECK=/tmp/cuda_check
if [ -z "${KILN_CHECK_NO_PREFLIGHT:-}" ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/gpu.txt" 2>&1 ||
    fail "no NVIDIA GPU here (nvidia-smi: $(head -c 200 "$OUT/gpu.txt" | tr -d '\"\n'))"
  cat "$OUT/gpu.txt"
fi

START=$(date +%s)
BUDGET="${KILN_CHECK_BUDGET:-540}"
skip() { [[ ",${KILN_CHECK_SKIP:-}," == *",$1,"* ]]; }
RESERVE=120 # seconds kept for the last stage (torch.compile)
skip bench_torch_compile && RESERVE=0
left() { echo $((BUDGET - ($(date +%s) - START) - RESERVE)); }
stage() { # name limit_s outfile cmd...   (limit cut to the budget left; skipped under 5 s)
  local name=$1 lim=$2 out=$3; shift 3
  local t0=$(date +%s.%N) l=$(left)
  if skip "$name"; then
    echo "{\"stage\": \"$name\", \"skipped\": \"KILN_CHECK_SKIP\"}" | tee -a "$OUT/stages.jsonl"
    return 0
  fi
  [ "$lim" -gt "$l" ] && lim=$l
  if [ "$lim" -lt 5 ]; then
    echo "{\"stage\": \"$name\", \"rc\": 124, \"skipped\": \"out of time budget\", \"seconds\": 0}" | tee -a "$OUT/stages.jsonl"
    return 124
  fi
  timeout -k 5 "$lim" "$@" 2>>"$OUT/stderr.log" | tee -a "$OUT/$out"
  local rc=${PIPESTATUS[0]}
  echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $(awk "BEGIN{print $(date +%s.%N) - $t0}")}" | tee -a "$OUT/stages.jsonl"
  return $rc
}

# ---- (1) parity, (2) training throughput next to PyTorch, (3) decode --------------------------
if [ "$DEV" = cuda ]; then
  stage parity 75 parity.jsonl /tmp/cuda_parity --ignored --nocapture --test-threads=1
  stage bench_kiln 90 bench.jsonl "$K" bench train --preset gpu-gpt2-124m --device cuda --precision bf16
  stage bench_kiln_profile 40 bench.jsonl "$CHECK" bench 16 1024 10 bf16
  stage bench_torch 75 bench.jsonl python3 scripts/gpu/torch_peak.py "$D/torch_ref.py" gpu
  stage decode 30 decode.jsonl "$CHECK" decode 1,32 128
  # RL rollouts (64 rows: 8 ragged prompts x 8 samples, 96 tokens each) against batch 1, on the
  # GPU and on its CPU twin (2 threads, as the CPU speedrun), the speedrun's default shape
  stage rollouts_cuda 40 rollouts.jsonl "$K" bench decode --device cuda --rows 64 --group 8 --tokens 96 --rounds 3
  stage rollouts_cpu 40 rollouts.jsonl "$K" bench decode --device cpu --rows 64 --group 8 --tokens 96 --rounds 3 --threads 2
  # A/B of one change, when prepare.sh's caller left the previous build as dist/gpu/kiln-base.xz:
  # the same bench with both binaries, alternating (new, base, new, base)
  if [ -e "$D/kiln-base.xz" ]; then
    python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
      "$D/kiln-base.xz" /tmp/kiln-base && chmod +x /tmp/kiln-base
    for round in $(seq 1 "${KILN_CHECK_AB_ROUNDS:-2}"); do
      for which in new base; do
        bin=$K; [ $which = base ] && bin=/tmp/kiln-base
        echo "{\"ab\": \"$which\", \"round\": $round}" >>"$OUT/bench_ab.jsonl"
        stage bench_ab_$which 45 bench_ab.jsonl "$bin" bench train --preset gpu-gpt2-124m --device cuda --precision bf16
      done
    done
  fi
fi

# ---- (4) learning parity: kiln-cuda (default precision) and PyTorch on the same batches -------
# GPT-2-124M shape on real text (GPT-2 tokenizer, vocab padded to 50304), 300 steps of 16 × 1024,
# AdamW lr 6e-4, 30 warm-up steps, kiln's default warm-down; eval every 25 steps on 8 held-out
# batches. parity_batches writes the windows kiln's loader hands out (same seed) and kiln's initial
# parameters; PyTorch trains from those (only the arithmetic differs) and from two seeds of its
# own (their gap is the run-to-run noise). parity_report.py: pass when kiln's gap to the same-init
# PyTorch run stays within that noise over the second half of the evals.
if [ "$DEV" = cuda ]; then
  PR=/tmp/kiln-parity
  rm -rf "$PR" && mkdir -p "$PR" "$OUT/learning"
  L=12 H=12 C=768 T=1024 B=16 N=300 SEED=1 VF=0.03 EB=8 V=50304
  KARGS=(pretrain --data "$D/parity/tokens" --tokenizer gpt2 --vocab-size $V --arch gpt2 --layers $L
    --heads $H --dim $C --context $T --batch $B --steps $N --warmup 30 --lr 6e-4 --eval-every 25
    --eval-batches $EB --val-frac $VF --seed $SEED --sample-every 0 --ckpt-every $N --keep 1 --no-progress)
  stage parity_batches 30 learning.log /tmp/parity_batches "$D/parity/tokens" "$PR/batches" $V $L $H $C $T $B $N $SEED $VF $EB
  stage parity_kiln 90 learning.log "$K" "${KARGS[@]}" --device cuda --out "$PR/kiln"
  TP=(python3 scripts/gpu/torch_parity.py --batches "$PR/batches" --kiln-metrics "$PR/kiln/metrics.jsonl")
  stage parity_torch_kiln_init 75 learning.log "${TP[@]}" --init kiln --out "$PR/torch-kiln-init.jsonl"
  stage parity_torch_seed_a 75 learning.log "${TP[@]}" --init torch --seed 11 --out "$PR/torch-seed-a.jsonl"
  stage parity_torch_seed_b 75 learning.log "${TP[@]}" --init torch --seed 12 --out "$PR/torch-seed-b.jsonl"
  python3 scripts/gpu/parity_report.py --kiln "$PR/kiln/metrics.jsonl" --same "$PR/torch-kiln-init.jsonl" \
    --seeds "$PR/torch-seed-a.jsonl" "$PR/torch-seed-b.jsonl" --svg "$OUT/learning/curves.svg" |
    tee -a "$OUT/learning.jsonl"
  cp "$PR/kiln/metrics.jsonl" "$OUT/learning/kiln-metrics.json-lines" 2>/dev/null
  for r in kiln-init seed-a seed-b; do cp "$PR/torch-$r.jsonl" "$OUT/learning/torch-$r.json-lines" 2>/dev/null; done
fi

# ---- (5) pretrain with checkpoints, SIGKILL + resume, cross-device resume, sampling -----------
if ! skip pretrain; then
P=/tmp/kiln-pretrain
rm -rf "$P" && mkdir -p "$P" "$OUT/pretrain"
# model, data and schedule (shared by every run); eval/sample/checkpoint cadence per run
run_args=(pretrain --data "$D/tokens" --tokenizer "$D/tok" --arch gpt2 --layers 6 --heads 6 --dim 384
  --context 256 --batch "$BATCH" --steps "$STEPS" --warmup $((STEPS / 10)) --lr 2e-3 --eval-batches 4
  --val-frac 0.05 --sample-tokens 48 --sample-prompt "ROMEO:" --keep 3 --seed 1 --no-progress)
live=(--eval-every $((STEPS / 6)) --sample-every "$HALF" --ckpt-every "$HALF")
stage pretrain_full 90 train.jsonl "$K" "${run_args[@]}" "${live[@]}" --device "$DEV" --out "$P/full"

# the same run, SIGKILLed once its step-HALF checkpoint is in place, then resumed
t0=$(date +%s.%N)
"$K" "${run_args[@]}" "${live[@]}" --device "$DEV" --out "$P/part" 2>>"$OUT/stderr.log" >/dev/null &
pid=$!
killed=false
n=$(left); [ "$n" -gt 60 ] && n=60
for _ in $(seq 1 $((20 * n))); do
  if [ "$(cat "$P/part/ckpt/latest" 2>/dev/null)" = "$(printf 'step_%06d' "$HALF")" ]; then
    kill -9 "$pid" 2>/dev/null && killed=true
    break
  fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.05
done
kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null # out of time before the checkpoint
wait "$pid" 2>/dev/null
echo "{\"stage\": \"pretrain_killed\", \"killed\": $killed, \"latest\": \"$(cat "$P/part/ckpt/latest" 2>/dev/null)\", \"seconds\": $(awk "BEGIN{print $(date +%s.%N) - $t0}")}" | tee -a "$OUT/stages.jsonl"
stage pretrain_resume 75 train.jsonl "$K" "${run_args[@]}" "${live[@]}" --device "$DEV" --out "$P/part" --resume "$P/part"
$SUM compare "$P/full" "$P/part" "$HALF" | tee -a "$OUT/train.jsonl"

# checkpoints are host-side: the cuda step-HALF checkpoint resumes on the cpu for 2 steps (writing
# a cpu checkpoint), which resumes on cuda for 2 more; losses against the uninterrupted run
CK="$P/full/ckpt/$(printf 'step_%06d' "$HALF")"
stage resume_on_cpu 60 train.jsonl "$K" "${run_args[@]}" --device cpu --out "$P/cpu" --resume "$CK" --ckpt-every $((HALF + 2)) --stop-after 2 --eval-every 0 --sample-every 0
stage resume_on_device 45 train.jsonl "$K" "${run_args[@]}" --device "$DEV" --out "$P/cpu" --resume "$P/cpu" --ckpt-every $((HALF + 2)) --stop-after 2 --eval-every 0 --sample-every 0
$SUM compare "$P/full" "$P/cpu" "$HALF" cross_device | tee -a "$OUT/train.jsonl"

# sampling from the trained checkpoint: tokens/s at 1 and 32 samples; greedy text cuda (f32) vs cpu
S=(sample --ckpt "$P/full" --prompt "ROMEO:" --max-tokens 200 --seed 1 --stats)
stage sample_1 45 pretrain/sample-1.txt "$K" "${S[@]}" --device "$DEV" --num-samples 1
stage sample_32 45 pretrain/sample-32.txt "$K" "${S[@]}" --device "$DEV" --num-samples 32
grep -h '^{"device"' "$OUT"/pretrain/sample-*.txt >>"$OUT/decode.jsonl"
G=(sample --ckpt "$P/full" --prompt "ROMEO:" --max-tokens 48 --temperature 0)
stage greedy_f32_$DEV 45 pretrain/greedy-$DEV.txt "$K" "${G[@]}" --device "$DEV" --precision f32 >/dev/null
stage greedy_cpu 45 pretrain/greedy-cpu.txt "$K" "${G[@]}" --device cpu >/dev/null
$SUM same-text "$OUT/pretrain/greedy-$DEV.txt" "$OUT/pretrain/greedy-cpu.txt" | tee -a "$OUT/train.jsonl"
for r in full part cpu; do
  cp "$P/$r/metrics.jsonl" "$OUT/pretrain/$r-metrics.json-lines" 2>/dev/null
done
cp "$P/full/curves.svg" "$OUT/pretrain/" 2>/dev/null
fi

# ---- (6) the GPU speedrun: every stage of `kiln speedrun` with a GPT-2-124M-class model --------
# The run folder after `--data-only` and the data the later stages read come from
# scripts/gpu/speedrun-data.sh (the raw web sources do not fit the carry); 3 minutes of budget
# (pretraining stops at 4 passes over the ~1.5 M-token web text anyway).
if [ "$DEV" = cuda ] && [ -e "$D/speedrun-run.tar.xz" ]; then
  SR=/tmp/kiln-speedrun
  rm -rf "$SR" && mkdir -p "$SR/runs" "$SR/data" "$OUT/speedrun"
  untar() { python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$1" "$2"; }
  untar "$D/speedrun-run.tar.xz" "$SR/runs" && untar "$D/speedrun-data.tar.xz" "$SR/data"
  (cd "$SR" && KILN_DATA_DIR="$SR/data" stage speedrun_gpu 240 speedrun.log \
    "$K" speedrun --preset gpt2-small --device cuda --minutes "${KILN_CHECK_SPEEDRUN_MINUTES:-3}" --runs "$SR/runs" --no-progress)
  G="$SR/runs/gpt2-small"
  for f in report.md eval.json plan.json timings.json; do cp "$G/$f" "$OUT/speedrun/" 2>/dev/null; done
  cp "$G/base/metrics.jsonl" "$OUT/speedrun/base-metrics.json-lines" 2>/dev/null
  cp "$G/rl/metrics.jsonl" "$OUT/speedrun/rl-metrics.json-lines" 2>/dev/null

  # (7) a short RL round on that larger model (issue 16): GRPO on arith-easy from the GPU
  # speedrun's SFT checkpoint, 32 prompts x 8 samples per step, for KILN_CHECK_RL_MINUTES (2);
  # the stage's lr (3e-4 x the preset's 0.2), correctness reward only, 300 held-out problems.
  # Its CPU twin is the CPU speedrun's RL stage (docs/benchmarks.md).
  if [ -d "$G/sft" ]; then
    RM="${KILN_CHECK_RL_MINUTES:-2}"
    stage rl_gpu $(awk "BEGIN{print int($RM * 60 + 60)}") rl.log "$K" rl --model "$G/sft" --task arith-easy \
      --device cuda --prompts-per-step 32 --group 8 --max-new 48 --lr 6e-5 --format-reward 0 \
      --eval-every 15 --eval-problems 300 --minutes "$RM" --steps 10000 --seed 1 --no-progress \
      --out "$SR/rl-round"
    cp "$SR/rl-round/metrics.jsonl" "$OUT/speedrun/rl-round-metrics.json-lines" 2>/dev/null
    cp "$SR/rl-round/rl.svg" "$OUT/speedrun/rl-round.svg" 2>/dev/null
  fi
fi

# ---- the peer with torch.compile (slowest to start), then the summary --------------------------
RESERVE=0
[ "$DEV" = cuda ] && stage bench_torch_compile 150 bench.jsonl python3 scripts/gpu/torch_peak.py "$D/torch_ref.py" gpu --compile
cat "$OUT"/*.jsonl | $SUM | tee "$OUT/summary.json"
tail -20 "$OUT/stderr.log"
