#!/usr/bin/env bash
# Every CUDA path on one GPU within 10 minutes: the tests marked `cuda` (cuSPARSE CSR kernels,
# half/bfloat16, autocast, structures moved between devices) and the dense-format benchmark on
# the device (SparseLinear vs nn.Linear, auto vs dense, WRN-28-2 and MLP training steps), whose
# section lands in benchmarks/RESULTS.md as "dense-format-cuda". No GPU path has run yet: run
# this on the first task that is lent a device and commit RESULTS.md and the CSV. It also times
# structured DSR after slimming against the dense model on the device ("slim_cuda").
#
#   bash benchmarks/gpu_check.sh          # on a machine with a CUDA GPU
#
# Without hydra-core/omegaconf installed, wheels in .whl/ are installed to /tmp/site first (see
# the device tool's README); OUT (if set) receives the logs.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/_gpu_env.sh
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA GPU visible')"
LOG=${OUT:-/tmp}
status=0
timeout 240 "$PY" -m pytest -q -m cuda tests 2>&1 | tee "$LOG/gpu_tests.log" || status=1
timeout 200 "$PY" benchmarks/bench_dense_format.py --device cuda --repeats 7 2>&1 \
  | tee "$LOG/gpu_bench.log" || status=1
timeout 120 "$PY" benchmarks/bench_slim.py --device cuda --repeats 10 2>&1 \
  | tee "$LOG/gpu_slim.log" || status=1
exit $status
