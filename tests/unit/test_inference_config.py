"""Loading a checkpoint for generation: experts trained as TE grouped GEMMs load into the local layers."""

import dataclasses
import json
import os

from megatron_dllm.config import ParallelConfig
from megatron_dllm.generate.loading import inference_config
from megatron_dllm.model.presets import get_preset


def test_grouped_gemm_checkpoint_builds_local_experts(tmp_path):
    os.makedirs(tmp_path / "iter_0000002")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("2")
    trained = dataclasses.replace(get_preset("tiny-moe"), moe_grouped_gemm=True)  # a --transformer-impl TE run
    (tmp_path / "iter_0000002" / "dllm_meta.json").write_text(
        json.dumps({"iteration": 2, "run": {"model": dataclasses.asdict(trained)}}))
    meta, model_cfg, _ = inference_config(str(tmp_path), ParallelConfig(), 1)
    assert meta["run"]["model"]["moe_grouped_gemm"] is True
    assert model_cfg.moe_grouped_gemm is False  # per-expert local layers, the same checkpoint keys
    assert dataclasses.replace(model_cfg, moe_grouped_gemm=True) == trained  # nothing else changed
