"""tools/plan_memory.py with numbers that mean nothing: a one-line error naming the flag, exit 2
(before: -5 GiB GPUs, NaN, 0 or negative batch sizes and sequence lengths were planned for, and
--vpp 0 / -2 ended in a ZeroDivisionError / IndexError)."""

import os
import sys

import pytest

from tests.e2e.cli import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
try:
    import plan_memory
finally:
    sys.path.pop(0)


@pytest.mark.parametrize("flags,message", [
    (["--gpu-memory-gb", "-5"], "--gpu-memory-gb -5.0 must be a positive number of GiB, e.g. --gpu-memory-gb 80"),
    (["--gpu-memory-gb", "0"], "--gpu-memory-gb 0.0 must be a positive number of GiB, e.g. --gpu-memory-gb 80"),
    (["--gpu-memory-gb", "nan"], "--gpu-memory-gb nan must be a positive number of GiB, e.g. --gpu-memory-gb 80"),
    (["--gpu-memory-gb", "inf"], "--gpu-memory-gb inf must be a positive number of GiB, e.g. --gpu-memory-gb 80"),
    (["--reserved-gb", "-1"], "--reserved-gb -1.0 must be >= 0 and below --gpu-memory-gb 80, e.g. --reserved-gb 4"),
    (["--gpu-memory-gb", "16", "--reserved-gb", "16"],
     "--reserved-gb 16.0 must be >= 0 and below --gpu-memory-gb 16, e.g. --reserved-gb 4"),
    (["--global-batch-size", "0"], "--global-batch-size 0 must be >= 1"),
    (["--global-batch-size", "-8"], "--global-batch-size -8 must be >= 1"),
    (["--seq-length", "0"], "--seq-length 0 must be >= 1"),
    (["--vpp", "0"], "--virtual-pipeline-model-parallel-size 0 must be >= 1 (or left out)"),
    (["--vpp", "-2"], "--virtual-pipeline-model-parallel-size -2 must be >= 1 (or left out)"),
    (["--etp", "0"], "--expert-tensor-parallel-size 0 must be >= 1 (or left out)"),
    (["--dp", "0"], "--dp must be >= 1, got 0"),
    (["--tp", "0"], "--tensor-model-parallel-size must be >= 1"),
])
def test_plan_memory_refuses_meaningless_numbers(capsys, flags, message):
    assert plan_memory.main(["--preset", "tiny-moe", "--device", "cpu", *flags]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {message}\n"
    assert captured.out == ""
