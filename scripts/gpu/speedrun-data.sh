#!/usr/bin/env bash
# What `kiln speedrun --preset gpt2-small --device cuda` needs on a GPU machine that has no network
# and a 64 MiB carry (issue 20), into dist/gpu/ (run after prepare.sh, which empties dist/gpu):
#   dist/gpu/speedrun-run.tar.xz   the run folder after `--data-only` here: plan (sizes; the step
#                                  counts are measured on the GPU), web text, tokenizer, token shards
#   dist/gpu/speedrun-data.tar.xz  the data folder's sources the later stages read: chitchat (SFT),
#                                  gsm8k (eval), python-wasm (the code tool), and evals cut to what
#                                  is read: the first `per_file` (6) lines of every task file (the
#                                  SFT mix reads no further, mix.rs `load_evals`) and the MMLU file
#                                  whole. Each with its `.kiln-ok` marker, so the run reads them as
#                                  fetched; the web sources are not needed once the web stage ran.
# On the device: unpack both under /tmp, KILN_DATA_DIR=<data>, and the same speedrun command
# resumes the run folder (scripts/gpu/device-check.sh, stage 6).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA="${KILN_DATA_DIR:-$PWD/data}"
K="${KILN_BIN:-target/release/kiln}"
S=$(mktemp -d)
trap 'rm -rf "$S"' EXIT

mkdir -p "$S/runs"
(cd "$S" && KILN_DATA_DIR="$DATA" "$OLDPWD/$K" speedrun --preset gpt2-small --data-only --runs "$S/runs" --no-progress)
tar -C "$S/runs" -cJf dist/gpu/speedrun-run.tar.xz gpt2-small

D="$S/data/raw"
mkdir -p "$D"
for src in chitchat gsm8k python-wasm; do
  cp -r "$DATA/raw/$src" "$D/"
done
E="$DATA/raw/evals"
mkdir -p "$D/evals"
cp "$E/.kiln-ok" "$D/evals/"
(cd "$E" && find evals/registry/data -name '*.jsonl') | while read -r f; do
  mkdir -p "$D/evals/$(dirname "$f")"
  case "$f" in
    */sandbagging/samples-all-large.jsonl) cp "$E/$f" "$D/evals/$f" ;;
    *) head -n 6 "$E/$f" >"$D/evals/$f" ;;
  esac
done
tar -C "$S/data" -cJf dist/gpu/speedrun-data.tar.xz raw
du -sh dist/gpu/speedrun-*.tar.xz
