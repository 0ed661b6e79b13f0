"""Launch scripts under examples/ parse (bash -n) and follow the template (strict mode, one srun line)."""

import glob
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "examples", "**", "*.sbatch"), recursive=True))


def test_there_are_scripts():
    assert len(SCRIPTS) >= 2


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_script_parses_and_follows_the_template(path):
    proc = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = open(path).read()
    assert "set -euo pipefail" in text
    assert text.count("\nsrun ") == 1
    assert "CONTAINER_IMAGE=" in text
