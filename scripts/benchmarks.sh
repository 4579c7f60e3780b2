#!/usr/bin/env bash
# Re-measures the tables of docs/benchmarks.md on this machine (CPU; pass --device cuda via BENCH_DEVICE on a GPU).
# Run it on a quiet machine: anything else using the cores skews the numbers. Takes ~20 min on 2 CPU cores.
#   bash scripts/benchmarks.sh [OUT_DIR]        (default docs/bench)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-docs/bench}"
DEVICE="${BENCH_DEVICE:-cpu}"
POWERSAM="${POWERSAM:-powersam}"

# 1. The edge comparison (issue 4's command): PowerSAM vs EdgeSAM vs SAM-B and the decoupled design, on PyTorch,
#    ONNX Runtime FP32 and ONNX Runtime static INT8, one thread (an edge CPU core; stable on shared machines).
"$POWERSAM" bench --models powersam_s,powersam_b,edgesam,sam_vit_b,powersam_s_decoupled \
    --runtime torch,onnx,onnx-int8 --size 1024 --threads 1 --repeats 6 --warmup 1 --device "$DEVICE" \
    --out "$OUT/edge_1024"

# 2. The seven rows of the paper's Table 1 on PyTorch (SAM-H and SAM2-L take tens of seconds a frame on a CPU,
#    hence two threads and few repeats).
"$POWERSAM" bench --models table1 --runtime torch --size 1024 --threads 2 --repeats 3 --warmup 1 \
    --device "$DEVICE" --out "$OUT/table1_1024"
