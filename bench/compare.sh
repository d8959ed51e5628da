#!/usr/bin/env bash
# Flower and flower-rs side by side, in one session on this machine: builds a Python virtual
# environment with Flower and PyTorch from PyPI (gigabytes: not part of CI), runs our aggregation
# and training benches, Flower's FedAvg.aggregate_train and PyTorch's training step on the same
# shapes, and the seed run end to end on both systems (bench/e2e.py), and prints one table:
# workload, ours, theirs, ratio.
#
#   bench/compare.sh            # FLOWER_VERSION=1.42.* by default; COMPARE_VENV to reuse a venv
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${COMPARE_VENV:-target/compare-venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# flwr[simulation] brings Ray, on which bench/simulation.py runs Flower's simulations.
"$venv/bin/pip" install --quiet "flwr[simulation]==${FLOWER_VERSION:-1.42.*}" torch numpy

quick=(--warm-up-time 1 --measurement-time 3)
cargo bench -p bench --bench aggregation -- "${quick[@]}" '(62k|10M)x(2|10)/fedavg'
cargo bench -p bench --bench training -- "${quick[@]}" 'CPU'
cargo build --release --bins --locked
"$venv/bin/python" bench/e2e.py --flower-bin "$(cd "$venv/bin" && pwd)" --json > target/e2e.json
"$venv/bin/python" bench/compare.py --criterion target/criterion --e2e target/e2e.json "$@"
