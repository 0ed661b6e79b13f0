"""Every example config validates for its intended layout and builds its model on the meta device."""

import glob
import math
import os

import pytest

from megatron_dllm.arguments import parse_args
from megatron_dllm.train.preflight import check_run
from tests.distributed.example_workers import build_examples_worker
from tests.distributed.harness import run_ranks

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "examples", "configs", "*.yaml")))


def test_there_are_examples():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"tiny_moe_cpu.yaml", "llada2_mini.yaml", "llada2_flash.yaml", "llada_moe_7b.yaml",
            "llada2_mini_32k.yaml", "llada2_flash_32k.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_validates_for_its_layout(path, tmp_path):
    # data and checkpoint paths come from the launch script, as in examples/slurm
    run = parse_args(["--config", path, "--mock-data", "--save", str(tmp_path)])
    p = run.parallel
    tp, cp = p.tensor_model_parallel_size, p.context_parallel_size
    experts = p.expert_model_parallel_size * (p.expert_tensor_parallel_size or tp)
    dp = experts // math.gcd(experts, tp * cp)  # the smallest DP over which the experts spread
    check_run(run, tp * p.pipeline_model_parallel_size * cp * dp)  # raises ConfigError on any inconsistency (block sizes, batch split, ...)


def test_every_example_builds_on_the_meta_device():
    built = run_ranks(build_examples_worker, 1, args=(CONFIGS,), timeout=600)[0]
    sizes = {os.path.basename(k): v for k, v in built.items()}
    assert abs(sizes["llada2_mini.yaml"][0] - 16.26e9) / 16.26e9 < 0.01
    assert abs(sizes["llada2_flash.yaml"][1] - 6.15e9) / 6.15e9 < 0.01
    assert abs(sizes["llada_moe_7b.yaml"][1] - 1.4e9) / 1.4e9 < 0.01
    assert sizes["tiny_moe_cpu.yaml"][0] < 1e6
