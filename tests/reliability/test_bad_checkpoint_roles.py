"""Checkpoints used in the wrong role, and meaningless numbers for the checkpoint tools: one ``error:``
line naming the fix, exit 2, no output folder (issue 13 items 4 and 5).

Before: converting a dLLM checkpoint added a second mask token; verify with --ar / --dllm swapped
ended in an IndexError; merging an AR and a dLLM checkpoint averaged them and labelled the result
by the first; --tolerance -1 ran and reported FAILED, --pad-token-id -5 was written to config.json,
a checkpoint given twice was "averaged" with itself.
The tools' main functions run in this process (the refusals come before any process group).
"""

import json
import os
import shutil
import sys

import pytest

from tests.e2e.cli import ROOT

pytestmark = pytest.mark.slow

sys.path.insert(0, os.path.join(ROOT, "tools"))
try:
    import convert_ar_to_dllm
    import export_hf
    import merge_checkpoints
    import verify_conversion
finally:
    sys.path.pop(0)


def _refused(capsys, main, *argv):
    """The one stderr line of ``main(argv)``, which must return 2."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    return lines[0][len("error: "):]


def _copy_with_meta(src_save, dst, **changes):
    """A copy of the latest iteration folder of ``src_save`` whose dllm_meta.json gets ``changes``."""
    with open(os.path.join(src_save, "latest_checkpointed_iteration.txt")) as handle:
        src = os.path.join(src_save, f"iter_{int(handle.read()):07d}")
    shutil.copytree(src, dst)
    path = os.path.join(dst, "dllm_meta.json")
    with open(path) as handle:
        meta = json.load(handle)
    meta.update(changes)
    with open(path, "w") as handle:
        json.dump(meta, handle)
    return str(dst)


def test_converting_a_dllm_checkpoint_is_refused(clean, tmp_path, capsys):
    _, _, dllm = clean
    out = tmp_path / "again"
    message = _refused(capsys, convert_ar_to_dllm.main, "--load", dllm, "--save", str(out), "--quiet")
    assert message == (
        f"{dllm} is already a dLLM checkpoint (objective mdlm, mask token 255): converting it again would "
        f"add a second mask token; continue training it with python -m megatron_dllm.pretrain --load {dllm}, "
        f"or convert the AR checkpoint it came from")
    assert not out.exists()


@pytest.mark.parametrize("flag,value,message", [
    ("--max-file-gb", "0", "--max-file-gb 0.0 must be a positive number of GiB (the size of each output data "
                           "file), e.g. --max-file-gb 8"),
    ("--max-file-gb", "nan", "--max-file-gb nan must be a positive number of GiB (the size of each output "
                             "data file), e.g. --max-file-gb 8"),
    ("--target-tensor-model-parallel-size", "0", "target parallel sizes must be >= 1"),
])
def test_convert_numbers(clean, tmp_path, capsys, flag, value, message):
    _, ar, _ = clean
    out = tmp_path / "out"
    assert _refused(capsys, convert_ar_to_dllm.main, "--load", ar, "--save", str(out), "--quiet",
                    flag, value) == message
    assert not out.exists()


def test_verify_with_roles_swapped_or_wrong(clean, capsys):
    _, ar, dllm = clean
    assert _refused(capsys, verify_conversion.main, "--ar", dllm, "--dllm", ar) == (
        f"--ar and --dllm are swapped: {dllm} is a dLLM checkpoint (objective mdlm) and {ar} an AR one: "
        f"pass --ar {ar} --dllm {dllm}")
    assert _refused(capsys, verify_conversion.main, "--ar", ar, "--dllm", ar) == (
        f"--dllm {ar} is an AR checkpoint (objective ar): pass the output of "
        f"tools/convert_ar_to_dllm.py --load {ar}")
    assert _refused(capsys, verify_conversion.main, "--ar", dllm, "--dllm", dllm) == (
        f"--ar {dllm} is a dLLM checkpoint (objective mdlm): pass the AR checkpoint that "
        f"tools/convert_ar_to_dllm.py converted")


@pytest.mark.parametrize("flag,value,message", [
    ("--tolerance", "-1", "--tolerance -1.0 must be a finite number >= 0 (largest allowed |dlogits|), "
                          "e.g. --tolerance 1e-5"),
    ("--tolerance", "nan", "--tolerance nan must be a finite number >= 0 (largest allowed |dlogits|), "
                           "e.g. --tolerance 1e-5"),
    ("--batch", "0", "--batch 0 must be >= 1"),
    ("--seq-length", "1", "--seq-length 1 must be >= 2 (the next-token loss needs two tokens)"),
])
def test_verify_numbers(clean, capsys, flag, value, message):
    _, ar, dllm = clean
    assert _refused(capsys, verify_conversion.main, "--ar", ar, "--dllm", dllm, flag, value) == message


def test_merging_checkpoints_of_different_runs_is_refused(clean, tmp_path, capsys):
    _, ar, dllm = clean
    out = tmp_path / "merged"
    ar_dir, dllm_dir = os.path.join(ar, "iter_0000002"), os.path.join(dllm, "iter_0000000")
    assert _refused(capsys, merge_checkpoints.main, "--inputs", ar, dllm, "--save", str(out)) == (
        f"{dllm_dir} has objective mdlm but {ar_dir} has ar: merge only checkpoints of one run (same "
        f"objective, mask token id and label alignment)")
    other_mask = _copy_with_meta(dllm, tmp_path / "mask7", mask_token_id=7)
    assert _refused(capsys, merge_checkpoints.main, "--inputs", dllm, other_mask, "--save", str(out)) == (
        f"{other_mask} has mask token id 7 but {dllm_dir} has 255: merge only checkpoints of one run (same "
        f"objective, mask token id and label alignment)")
    shifted = _copy_with_meta(dllm, tmp_path / "shifted", label_shift=True)
    assert _refused(capsys, merge_checkpoints.main, "--inputs", dllm, shifted, "--save", str(out)) == (
        f"{shifted} has label_shift True but {dllm_dir} has False: merge only checkpoints of one run (same "
        f"objective, mask token id and label alignment)")
    assert _refused(capsys, merge_checkpoints.main, "--inputs", dllm, dllm_dir, "--save", str(out)) == (
        f"{dllm_dir} is given twice ({dllm_dir}): averaging a checkpoint with itself changes nothing; pass "
        f"each checkpoint once")
    assert not out.exists()


def test_merge_numbers_and_metrics(clean, tmp_path, capsys):
    _, _, dllm = clean
    out = tmp_path / "merged"
    assert _refused(capsys, merge_checkpoints.main, "--load", dllm, "--top-k", "1", "--save", str(out)) == (
        "--top-k 1 must be >= 2 (averaging needs at least two checkpoints)")
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"kind": "valid", "iteration": 0, "nelbo": 1.0}\nnot json\n')
    assert _refused(capsys, merge_checkpoints.main, "--load", dllm, "--top-k", "2", "--metrics-path",
                    str(metrics), "--save", str(out)) == (
        f"{metrics}:2 is not a JSON record: pass --metrics-path of an intact metrics.jsonl, or the "
        f"checkpoints with --inputs")
    assert not out.exists()


@pytest.mark.parametrize("flags,message", [
    (["--pad-token-id", "-5"], "--pad-token-id -5 is outside the vocabulary [0, 256): pass the tokenizer's pad "
                               "id, or leave it out"),
    (["--max-shard-size", "0GB"], "--max-shard-size '0GB' is zero bytes: give a size like 5GB or 500MB"),
    (["--check", "--tolerance", "-1"], "--tolerance -1.0 must be a finite number >= 0 (largest allowed "
                                       "|dlogits| of --check), e.g. --tolerance 1e-4"),
])
def test_export_numbers(clean, tmp_path, capsys, flags, message):
    _, _, dllm = clean
    out = tmp_path / "hf"
    assert _refused(capsys, export_hf.main, "--load", dllm, "--save", str(out), "--quiet", *flags) == message
    assert not out.exists()
