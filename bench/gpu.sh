#!/usr/bin/env bash
# GPU benchmarks in one command, under 8 minutes on one H100:
#   BD attention table (ours = compiled FlexAttention + BlockMask, vs megatron-core local attention and
#   dense-mask SDPA, 2L = 1024..8192), Flex vs dense SDPA at 2L = 8192, and the step time / MFU of a
#   ~1B-active MoE dLLM (MDLM and BD) against the AR step, the same on TE layers when TE is installed,
#   and per-rank attention under context parallelism (CP 2 / 4). Writes bench/results/gpu_latest.json.
#
#   bash bench/gpu.sh              # on a CUDA machine
#   bash bench/gpu.sh --dry-run    # anywhere: checks the plan and the FLOP count, no GPU needed
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONWARNINGS=ignore
# Hard stop at 8 minutes (GPU_TIMEOUT_S) whatever happens; gpu.py itself budgets 7.5 minutes across its
# stages (--budget-s) and reports a stage that ran out of time as skipped.
exec timeout --signal=TERM --kill-after=10 "${GPU_TIMEOUT_S:-480}" "${PYTHON}" bench/gpu.py "$@"
