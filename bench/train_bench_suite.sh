#!/usr/bin/env bash
# The single-GPU training-speed methods and the two-GPU offload run, side by side on one 4-GPU host
# (each run has its own GPUs and cores; they share only the saved 40-layer model):
#   GPU 0: the upstream LoRA baseline, compiled LoRA and compiled P-Tuning v2 (the 90% ratio)
#   GPU 1: packed and compiled 2-4k chats, upstream P-Tuning v2 and P-Tuning v2 under 22 GB
#   GPUs 2-3: ZeRO-3 with the optimizer on CPU, one packed row per CPU Adam step
# Usage: OUT=<dir> bash bench/train_bench_suite.sh [seconds per run, default 540]
set -u
budget=${1:-540}
out=${OUT:-bench/results}
common=(--max-steps 30 --logging-steps 3 --warmup-windows 2 --method-timeout 300 --out "$out")
mkdir -p /tmp/tbA /tmp/tbB /tmp/tbC
CUDA_VISIBLE_DEVICES=0 taskset -c 0-7 python bench/train_bench.py "${common[@]}" --deadline "$budget" --work /tmp/tbA \
    --methods lora,lora_compile,ptuning_compile --profile-step 0 --tag suite-a >"$out/suite-a.log" 2>&1 &
first=$!
# the others reuse the model that run A saves
until [ -f /tmp/tbA/model-L40/bench_model.json ]; do
    kill -0 "$first" 2>/dev/null || { echo "run A ended before saving the model"; break; }
    sleep 5
done
ln -sfn /tmp/tbA/model-L40 /tmp/tbB/model-L40
ln -sfn /tmp/tbA/model-L40 /tmp/tbC/model-L40
left=$((budget - SECONDS))
CUDA_VISIBLE_DEVICES=1 taskset -c 8-15 python bench/train_bench.py "${common[@]}" --deadline "$left" --work /tmp/tbB \
    --methods chat_fast,chat_compile,ptuning_v2,ptuning_lean --profile chat_compile --profile-step 24 \
    --tag suite-b >"$out/suite-b.log" 2>&1 &
CUDA_VISIBLE_DEVICES=2,3 taskset -c 16-63 python bench/train_bench.py "${common[@]}" --deadline "$left" --work /tmp/tbC \
    --gpus 2 --sft-layers 40 --methods sft_offload_fast --offload-steps 6 --warmup-windows 1 \
    --logging-steps 1 --sft-budget-gib 92 --tag offload-x2-onerow >"$out/suite-c.log" 2>&1 &
wait
for f in "$out"/suite-*.log; do echo "== $f"; grep -E '^\| |target|wrote|Error|Killed' "$f" | tail -25; done
