"""The CLIs on crafted, partial and occupied checkpoint folders: exit 2, one line, nothing run or lost.

The first test is the reproduction of issue 13 (a crafted ``.metadata`` under ``tools/generate.py``).
"""

import hashlib
import os
import pickle

import pytest

from megatron_dllm.checkpoint.errors import CheckpointError
from megatron_dllm.checkpoint.integrity import check_torch_dist
from tests.e2e.cli import TINY, pretrain
from tests.reliability.conftest import tool
from tests.reliability.poison import Payload
from tests.reliability.workers import DLLM_FLAGS

pytestmark = pytest.mark.slow


def _one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _digest(path):
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(folder, name)
            digest.update(full.encode())
            with open(full, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


def test_issue_reproduction_generate_on_a_crafted_metadata(tmp_path):
    save = tmp_path / "X"
    pretrain(["--config", TINY, "--mock-data", "--device", "cpu", "--train-iters", "2", "--lr-warmup-iters", "0",
              "--save", str(save), "--save-interval", "2"])
    marker = save / "PWNED"
    with open(save / "iter_0000002" / ".metadata", "wb") as handle:
        pickle.dump(Payload(str(marker)), handle)
    proc = tool("generate.py", "--load", str(save), "--prompt-ids", "5 9 5", "--gen-length", "8",
                "--block-length", "8", "--device", "cpu")
    _one_line_error(proc, "unexpected object posix.system in checkpoint metadata: refusing to load it")
    assert not marker.exists()


@pytest.mark.parametrize("name,kind,model", [
    ("pretrain", "common", "dllm"), ("evaluate", "item", "dllm"), ("convert", "legacy", "ar"),
    ("verify", "metadata", "dllm"), ("export_hf", "item", "dllm"), ("merge", "common", "dllm"),
])
def test_every_tool_refuses_a_crafted_checkpoint(clean, poisoned, tmp_path, name, kind, model):
    _, ar, dllm = clean
    path, marker = poisoned[(model, kind)]
    out = str(tmp_path / "out")
    if name == "pretrain":
        proc = pretrain(DLLM_FLAGS + ["--load", path, "--save", out], check=False)
    elif name == "evaluate":
        proc = tool("evaluate.py", *DLLM_FLAGS, "--load", path)
    elif name == "convert":
        proc = tool("convert_ar_to_dllm.py", "--load", path, "--save", out, "--mask-token-id", "255")
    elif name == "verify":
        proc = tool("verify_conversion.py", "--ar", ar, "--dllm", path)
    elif name == "export_hf":
        proc = tool("export_hf.py", "--load", path, "--save", out)
    else:
        proc = tool("merge_checkpoints.py", "--inputs", path, dllm, "--save", out)
    _one_line_error(proc, "refusing to load it" if kind != "legacy" else "references posix.system")
    assert not os.path.exists(marker)
    # no checkpoint or export written (pretrain has opened its metrics.jsonl in --save by then)
    assert not os.path.exists(out) or os.listdir(out) == ["metrics.jsonl"]


def test_fresh_run_into_an_existing_save_is_refused_and_nothing_is_deleted(clean, tmp_path):
    _, _, dllm = clean
    before = _digest(dllm)
    proc = pretrain(DLLM_FLAGS + ["--save", dllm], check=False)            # forgot --load
    _one_line_error(proc, f"--save {dllm} already holds checkpoints (iterations 0)", f"--load {dllm}")
    proc = pretrain(DLLM_FLAGS + ["--load", dllm + "x", "--save", dllm], check=False)   # misspelt --load
    _one_line_error(proc, "already holds checkpoints")
    assert _digest(dllm) == before


def test_save_naming_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = pretrain(DLLM_FLAGS + ["--save", str(tmp_path / "file")], check=False)
    _one_line_error(proc, "is a file, not a folder")
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_damaged_shard_on_load_is_a_one_line_error(clean, tmp_path, damage):
    _, _, dllm = clean
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dllm, copy)
    shard = copy / "iter_0000000" / "__0_0.distcp"
    if damage == "truncated":
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 2])
    else:
        shard.unlink()
    with pytest.raises(CheckpointError, match=f"data file __0_0.distcp is {damage}"):
        check_torch_dist(str(copy / "iter_0000000"))
    proc = pretrain(DLLM_FLAGS + ["--load", str(copy), "--save", str(tmp_path / "new")], check=False)
    _one_line_error(proc, f"data file __0_0.distcp is {damage}", "resume from an earlier iteration")
    assert not list((tmp_path / "new").glob("iter_*"))
