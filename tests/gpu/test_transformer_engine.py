"""The Transformer Engine path (``--transformer-impl transformer_engine``) on a GPU with TE installed.

TE's fused norm + linear layers and grouped-GEMM experts with our core attention compute what the local
path computes (same weights: our initialisation is keyed by the checkpoint names, which the two paths
share), and a training step with FP8 runs. Skipped without CUDA or without TE: run on a GPU machine,
``pytest -q tests/gpu``.
"""

import os

import pytest
import torch

from megatron_dllm.model.transformer_config import transformer_engine_installed

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run tests/gpu on a GPU machine)"),
    pytest.mark.skipif(not transformer_engine_installed(), reason="needs Transformer Engine (GPU image)"),
]

L, BLOCK, B = 64, 8, 2


@pytest.fixture(scope="module")
def parallel():
    import torch.distributed as dist

    from megatron_dllm.config import ParallelConfig
    from megatron_dllm.platform.device import setup_device
    from megatron_dllm.platform.distributed import free_port, init_model_parallel, teardown

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    setup_device("cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl", rank=0, world_size=1)
    init_model_parallel(ParallelConfig(), seed=3)
    yield ParallelConfig()
    teardown()


def _model(preset, parallel, te: bool):
    import dataclasses

    from megatron_dllm.model.builder import build_model
    from megatron_dllm.model.presets import get_preset
    from megatron_dllm.model.transformer_config import Execution

    cfg = get_preset(preset)
    if te and cfg.is_moe:
        cfg = dataclasses.replace(cfg, moe_grouped_gemm=True)
    execution = Execution(transformer_impl="transformer_engine" if te else "local")
    return build_model(cfg, parallel, init_seed=11, execution=execution).cuda().eval(), cfg


@pytest.mark.parametrize("preset", ["tiny-dense", "tiny-moe"])
def test_te_layers_compute_what_the_local_layers_compute(parallel, preset):
    from megatron_dllm.diffusion import masks

    torch.backends.cuda.matmul.allow_tf32 = False
    local, cfg = _model(preset, parallel, te=False)
    te, _ = _model(preset, parallel, te=True)
    assert any("TE" in type(m).__name__ for m in te.modules())  # TE modules were built
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size - 1, (B, 2 * L), generator=gen).cuda()
    positions = torch.arange(L).repeat(2).expand(B, -1).cuda()
    mask = masks.block_diffusion_mask(L, BLOCK, torch.zeros(1, L, dtype=torch.long)).cuda()
    with torch.no_grad():
        want, got = local(tokens, positions, mask), te(tokens, positions, mask)
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= 2e-2 * scale, (got - want).abs().max().item()


def test_fp8_training_step_runs(parallel, tmp_path):
    """Two optimizer steps of a small dense model with TE, bf16 and FP8 (hybrid, delayed scaling)."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9 or newer (Ada, Hopper)")
    from megatron_dllm.arguments import parse_args
    from megatron_dllm.train.loop import run_step
    from megatron_dllm.train.preflight import check_run
    from megatron_dllm.train.setup import setup_run

    run = parse_args(["--preset", "tiny-dense", "--hidden-size", "128", "--ffn-hidden-size", "256",
                      "--num-attention-heads", "4", "--kv-channels", "32", "--mock-data", "--device", "cuda",
                      "--bf16", "--transformer-impl", "transformer_engine", "--fp8-format", "hybrid",
                      "--seq-length", str(L), "--micro-batch-size", "2", "--global-batch-size", "2",
                      "--train-iters", "4", "--dllm-objective", "bd", "--dllm-block-schedule", "stable:8@inf"])
    check_run(run, 1)
    setup = setup_run(run, "cuda")
    assert setup.model[0].config.fp8 == "hybrid"
    losses = []
    for _ in range(2):
        objective, block, _ = setup.objective.phase_at(setup.state.consumed_tokens)
        step = run_step(setup, objective, block)
        assert step["updated"] and step["problem"] is None, step
        losses.append(float(step["totals"]["loss_sum"]))
        setup.state.consumed_tokens += run.training.global_batch_size * L
    assert all(torch.isfinite(torch.tensor(losses)))
