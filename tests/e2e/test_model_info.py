"""tools/model_info.py on the presets: parameter counts from the meta-device model."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "model_info.py"), *args],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )


@pytest.mark.parametrize(
    "preset,total,active",
    [
        ("llada2.0-mini", 16.26e9, 1.43e9),      # METHOD.md 8.1, Ling-mini-2.0 README
        ("llada2.0-flash", 102.9e9, 6.15e9),
        ("llada-moe-7b-a1b", 7.0e9, 1.4e9),      # "7B total, 1.4B active" (LLaDA-MoE abstract)
    ],
)
def test_preset_parameter_counts(preset, total, active):
    proc = _run("--preset", preset)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout)
    assert abs(info["total_params"] - total) / total <= 0.01
    assert abs(info["active_params"] - active) / active <= 0.01
    assert info["layers"].count("dense") == (0 if preset.startswith("llada-moe") else 1)
    assert len(info["layers"]) == info["num_layers"]


def test_unknown_preset_fails_with_choices():
    proc = _run("--preset", "nope")
    assert proc.returncode == 2
    assert "unknown preset 'nope'; choose one of:" in proc.stderr
    assert proc.stdout == ""
