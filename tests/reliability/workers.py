"""Rank functions for the reliability tests (run through tests/distributed/harness.py)."""

from __future__ import annotations

import os

DLLM_FLAGS = ["--preset", "tiny-moe", "--mock-data", "--device", "cpu", "--seq-length", "32",
              "--micro-batch-size", "2", "--global-batch-size", "2", "--train-iters", "2"]


def _outcome(call, marker: str) -> dict:
    try:
        call()
        result = {"error": None, "message": ""}
    except Exception as exc:  # noqa: BLE001 - the test checks the type and text
        result = {"error": type(exc).__name__, "message": str(exc),
                  "is_config_error": _is_one_line_error(exc)}
    result["marker"] = os.path.exists(marker)
    return result


def _is_one_line_error(exc) -> bool:
    from megatron_dllm.config import ConfigError
    from megatron_dllm.convert.errors import ConversionError
    from megatron_dllm.data.errors import DataError

    return isinstance(exc, (ConfigError, ConversionError, DataError)) and "\n" not in str(exc)


def loaders_worker(rank, world_size, cases):
    """For each (tool, path, marker): run the package function that tool runs on ``path``."""
    import dataclasses

    from megatron_dllm.arguments import parse_args
    from megatron_dllm.config import ParallelConfig
    from megatron_dllm.generate.loading import load_for_inference
    from megatron_dllm.train.setup import setup_run

    def pretrain(path):
        run = parse_args(DLLM_FLAGS + ["--load", path])
        setup_run(run, "cpu").logger.close()

    def evaluate(path):  # tools/evaluate.py: the pretraining set-up, weights only, no --save
        run = parse_args(DLLM_FLAGS + ["--load", path])
        run.checkpoint = dataclasses.replace(run.checkpoint, no_load_optim=True, save=None)
        setup_run(run, "cpu").logger.close()

    def generate(path):
        load_for_inference(path, ParallelConfig(), "cpu")

    tools = {"pretrain": pretrain, "evaluate": evaluate, "generate": generate}
    return [_outcome(lambda: tools[tool](path), marker) for tool, path, marker in cases]


def converter_worker(rank, world_size, cases, clean_ar, clean_dllm, out_root):
    """For each (tool, path, marker): convert / verify / export_hf / merge with ``path`` as the input."""
    from megatron_dllm.convert.convert import ConvertRequest, prepare, run
    from megatron_dllm.convert.hf_export import export_hf
    from megatron_dllm.convert.merge import merge_checkpoints
    from megatron_dllm.convert.verify import verify

    def convert(path, out):
        run(prepare(ConvertRequest(load=path, save=out, mask_token_id=255)), progress=False)

    tools = {
        "convert": convert,
        "verify": lambda path, out: verify(clean_ar, path),
        "verify_ar": lambda path, out: verify(path, clean_dllm),
        "export_hf": lambda path, out: export_hf(path, out, progress=False),
        "merge": lambda path, out: merge_checkpoints([path, clean_dllm], out, log=lambda m: None),
    }
    results = []
    for i, (tool, path, marker) in enumerate(cases):
        out = os.path.join(out_root, f"out{i}")
        result = _outcome(lambda: tools[tool](path, out), marker)
        result["wrote_output"] = os.path.exists(out)
        results.append(result)
    return results
