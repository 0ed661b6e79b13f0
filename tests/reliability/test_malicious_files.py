"""Every loader on a checkpoint with os.system hidden in one pickle: a one-line refusal, nothing runs.

Poisoned: ``.metadata``, ``common.pt``, a ShardedObject item inside a ``.distcp`` file, and a legacy
``model_optim_rng.pt`` (tests/reliability/poison.py). The package functions behind each tool are
called in one spawned rank per side (the CLIs themselves: test_malicious_cli.py).
"""

import pytest

from tests.distributed.harness import run_ranks
from tests.reliability.poison import KINDS
from tests.reliability.workers import converter_worker, loaders_worker

pytestmark = pytest.mark.slow
TRAIN_TOOLS = ("pretrain", "evaluate", "generate")
CONVERT_TOOLS = ("convert", "verify_ar", "verify", "export_hf", "merge")
SOURCE = {"convert": "ar", "verify_ar": "ar"}  # the others read the converted dLLM checkpoint


@pytest.fixture(scope="module")
def train_side(poisoned):
    cases = [(t, *poisoned[("dllm", k)]) for t in TRAIN_TOOLS for k in KINDS]
    results = run_ranks(loaders_worker, 1, args=(cases,), timeout=600)[0]
    return {(t, k): r for (t, k), r in zip(((t, k) for t in TRAIN_TOOLS for k in KINDS), results)}


@pytest.fixture(scope="module")
def convert_side(clean, poisoned, tmp_path_factory):
    _, ar, dllm = clean
    keys = [(t, k) for t in CONVERT_TOOLS for k in KINDS]
    cases = [(t, *poisoned[(SOURCE.get(t, "dllm"), k)]) for t, k in keys]
    out = str(tmp_path_factory.mktemp("outputs"))
    results = run_ranks(converter_worker, 1, args=(cases, ar, dllm, out), timeout=600)[0]
    return dict(zip(keys, results))


def _check(result, kind):
    assert result["error"] is not None, "the poisoned checkpoint was accepted"
    assert result["is_config_error"], f"{result['error']}: {result['message']}"
    assert not result["marker"], "code from the checkpoint ran"
    if kind != "legacy":
        assert "refusing to load it" in result["message"], result["message"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tool", TRAIN_TOOLS)
def test_training_side_loaders_refuse(train_side, tool, kind):
    result = train_side[(tool, kind)]
    _check(result, kind)
    if kind == "legacy":  # no dllm_meta.json: not ours to resume or sample from
        assert "missing or incomplete" in result["message"], result["message"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tool", CONVERT_TOOLS)
def test_conversion_tools_refuse(convert_side, tool, kind):
    result = convert_side[(tool, kind)]
    _check(result, kind)
    assert not result["wrote_output"]
    if kind == "legacy" and SOURCE.get(tool) == "ar":  # the converters read legacy checkpoints
        assert "references posix.system" in result["message"], result["message"]


def test_clean_checkpoints_still_load(clean, tmp_path):
    """The same functions accept the unpoisoned checkpoints (the refusals above are not blanket ones)."""
    _, ar, dllm = clean
    marker = str(tmp_path / "never")
    train = run_ranks(loaders_worker, 1, args=([("generate", dllm, marker), ("evaluate", dllm, marker)],),
                      timeout=600)[0]
    assert [r["error"] for r in train] == [None, None], train
    conv = run_ranks(converter_worker, 1, args=([("convert", ar, marker), ("export_hf", dllm, marker)], ar, dllm,
                                                str(tmp_path)), timeout=600)[0]
    assert [r["error"] for r in conv] == [None, None], conv
