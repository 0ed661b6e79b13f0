"""Checkpoints shared by the reliability tests: built once per session (tiny models, CPU)."""

import os
import subprocess
import sys

import pytest

from tests.e2e.cli import ROOT, env, pretrain
from tests.reliability.poison import KINDS, poison

AR_FLAGS = ["--preset", "tiny-moe", "--mock-data", "--device", "cpu", "--seq-length", "32",
            "--micro-batch-size", "2", "--global-batch-size", "2", "--log-interval", "1"]


def tool(script, *args, timeout=300):
    """Run ``tools/<script>`` as a CLI; the CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", script), *args], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def clean(tmp_path_factory):
    """(root, AR save folder, converted dLLM save folder), both complete and trusted."""
    root = tmp_path_factory.mktemp("reliability")
    ar = root / "ar"
    pretrain(AR_FLAGS + ["--dllm-objective", "ar", "--train-iters", "2", "--save", str(ar)])
    dllm = root / "dllm"
    proc = tool("convert_ar_to_dllm.py", "--load", str(ar), "--save", str(dllm), "--mask-token-id", "255",
                "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, str(ar), str(dllm)


@pytest.fixture(scope="session")
def poisoned(clean, tmp_path_factory):
    """{(model, kind): (path, marker)}: copies of the AR and dLLM checkpoints with one pickle poisoned."""
    _, ar, dllm = clean
    root = tmp_path_factory.mktemp("poisoned")
    out = {}
    for model, src in (("ar", ar), ("dllm", dllm)):
        for kind in KINDS:
            marker = str(root / f"PWNED_{model}_{kind}")
            out[(model, kind)] = (poison(src, str(root / f"{model}_{kind}"), kind, marker), marker)
    return out
