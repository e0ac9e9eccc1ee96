#!/usr/bin/env bash
# The density-0.1 comparison matrix on one GPU (H100/H200) within 8 minutes: several runs share
# the device (--jobs), each with 2 CPU threads for data and Python. Records land in
# benchmarks/results/wrn28_2_subset/ with the same config hashes as CPU runs (the device is not
# part of the preset), so GPU and CPU records fill the same cells; commit them afterwards.
#
#   bash benchmarks/gpu_sweep.sh             # run (a GPU machine; ~31 runs, budget 7.5 min)
#   bash benchmarks/gpu_sweep.sh --dry-run   # the plan only (works on a CPU machine)
#
# Env: DATA (the subset; default ../shared/data/cifar10_subset.npz), JOBS (default 8),
# BUDGET (minutes, default 7.5). Without hydra-core/omegaconf installed, wheels in .whl/ are
# installed to /tmp/site first (see the device tool's README: pip download ... -d .whl).
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/_gpu_env.sh
exec "$PY" benchmarks/sweep.py --densities 0.1 --jobs "${JOBS:-8}" --threads 2 \
  --data-path "${DATA:-../shared/data/cifar10_subset.npz}" --set trainer.device=cuda \
  --budget-minutes "${BUDGET:-7.5}" --default-minutes 2 "$@"
