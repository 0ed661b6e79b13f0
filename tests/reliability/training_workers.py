"""In-process workers (one CPU rank, via tests/distributed/harness.py) for the training-state tests.

Each builds the tiny MoE run of examples/configs/tiny_moe_cpu.yaml with the package's own set-up and
returns plain values (names of what changed, flags, norms) for the test to assert on.
"""

from __future__ import annotations

from typing import Dict, List

import torch


def _setup(tiny: str, extra: List[str]):
    from megatron_dllm.arguments import parse_args
    from megatron_dllm.train.preflight import check_run
    from megatron_dllm.train.setup import setup_run

    run = parse_args(["--config", tiny, "--mock-data", "--device", "cpu", "--log-interval", "1000"] + extra)
    check_run(run, 1)
    return setup_run(run, "cpu")


def _train_steps(setup, n: int) -> None:
    from megatron_dllm.train.loop import run_step

    state, run = setup.state, setup.run
    for _ in range(n):
        objective, block, _ = setup.objective.phase_at(state.consumed_tokens)
        step = run_step(setup, objective, block)
        assert step["updated"], step
        state.iteration += 1
        state.consumed_samples += run.training.global_batch_size
        state.consumed_tokens += run.training.global_batch_size * run.model.seq_length


def _optimizer_tensors(optimizer) -> Dict[str, torch.Tensor]:
    out = {}
    for i, sub in enumerate(getattr(optimizer, "chained_optimizers", [optimizer])):
        inner = sub.optimizer
        for g, group in enumerate(inner.param_groups):
            out[f"opt{i}.group{g}.lr"] = torch.tensor(group["lr"])
            for p_index, param in enumerate(group["params"]):
                out[f"opt{i}.group{g}.param{p_index}"] = param.detach().clone()
                for key, value in inner.state.get(param, {}).items():
                    out[f"opt{i}.group{g}.param{p_index}.{key}"] = torch.as_tensor(value).clone()
    return out


def snapshot(setup) -> Dict[str, object]:
    """Every piece of training state evaluation could touch, copied."""
    from megatron.core import tensor_parallel

    state: Dict[str, object] = {}
    for c, chunk in enumerate(setup.model):
        for name, tensor in list(chunk.named_parameters()) + list(chunk.named_buffers()):
            state[f"chunk{c}.{name}"] = tensor.detach().clone()
        for name, module in chunk.named_modules():
            state[f"chunk{c}.{name}.training"] = module.training
    state.update(_optimizer_tensors(setup.optimizer))
    state["rng.torch"] = torch.get_rng_state()
    for name, value in tensor_parallel.get_cuda_rng_tracker().get_states().items():
        state[f"rng.tracker.{name}"] = value.clone()
    hook = getattr(setup.objective, "hook", None)
    if hook is not None:
        for name, value in vars(hook).items():
            state[f"hook.{name}"] = value
    state["scheduler"] = repr(setup.scheduler.state_dict())
    state["train_state"] = repr(setup.state)
    return state


def changed(before: Dict[str, object], after: Dict[str, object]) -> List[str]:
    """Keys whose values differ (tensors bit for bit)."""
    out = sorted(set(before) ^ set(after))
    for key in set(before) & set(after):
        a, b = before[key], after[key]
        same = (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b)
        if not same:
            out.append(key)
    return sorted(out)


def eval_leaves_state(rank, world_size, tiny: str, layout_steps: int) -> Dict[str, object]:
    """Train ``layout_steps`` steps, evaluate, and report what the evaluation changed."""
    from megatron_dllm.train.loop import evaluate

    setup = _setup(tiny, ["--train-iters", "40", "--eval-interval", "5", "--eval-iters", "2",
                          "--dllm-embedding-noise-std", "0.5", "--dllm-embedding-noise-iters", "100"])
    _train_steps(setup, layout_steps)
    objective, block, _ = setup.objective.phase_at(setup.state.consumed_tokens)
    before = snapshot(setup)
    result = evaluate(setup, objective, block)
    after = snapshot(setup)
    buffers = [k for k in before if "local_tokens_per_expert" in k or "expert_bias" in k]
    return {"changed": changed(before, after), "layout": objective.layout, "nelbo": result["nelbo"],
            "router_buffers": len(buffers), "hook": any(k.startswith("hook.") for k in before)}


def nan_gradient_skips_update(rank, world_size, tiny: str) -> Dict[str, object]:
    """One good step, then a step whose gradient holds a NaN: what ``optimizer_step`` did to each."""
    from megatron_dllm.data.microbatches import micro_batches
    from megatron_dllm.objectives import StepContext
    from megatron_dllm.train.engine import data_parallel, forward_backward, optimizer_step

    setup = _setup(tiny, ["--train-iters", "10"])
    _train_steps(setup, 1)
    run, state = setup.run, setup.state
    objective, block, _ = setup.objective.phase_at(state.consumed_tokens)
    batches = micro_batches(setup.datasets[0], state.consumed_samples, run.training.global_batch_size,
                            objective.micro_batch_size, *data_parallel())

    def backward():
        forward_backward(objective.forward_step(StepContext(iteration=state.iteration, block_size=block)),
                         batches, setup.model, setup.optimizer, num_microbatches=len(batches),
                         seq_length=objective.model_seq_length, micro_batch_size=objective.micro_batch_size)

    backward()
    param = next(p for p in setup.model[0].parameters() if p.requires_grad)
    param.main_grad.view(-1)[0] = float("nan")
    before = snapshot(setup)
    bad_norm, bad_applied = optimizer_step(setup.optimizer)
    after_bad = snapshot(setup)
    backward()
    good_norm, good_applied = optimizer_step(setup.optimizer)
    after_good = snapshot(setup)
    return {"bad_norm": bad_norm, "bad_applied": bad_applied, "changed_by_bad": changed(before, after_bad),
            "good_norm": good_norm, "good_applied": good_applied,
            "changed_by_good": len(changed(after_bad, after_good))}


def save_with_nan_weight(rank, world_size, tiny: str, load: str, save: str) -> str:
    """Load ``load``, put a NaN into the word embeddings and write it to ``save`` with the loop's own
    ``save`` (its finiteness check bypassed): a checkpoint as an older or foreign writer could leave."""
    from megatron_dllm.train import loop

    setup = _setup(tiny, ["--train-iters", "10", "--load", load, "--save", save])
    name, param = next((n, p) for n, p in setup.model[0].named_parameters() if "word_embeddings" in n)
    with torch.no_grad():
        param.view(-1)[0] = float("nan")
    loop.weights_finite = lambda model: True
    loop.save(setup)
    return name


def checkpoint_weights(rank, world_size, tiny: str, root: str, iterations: List[int]) -> List[List[str]]:
    """For each iteration after the first: names of model tensors that differ from the first one's."""
    from megatron_dllm.checkpoint import state as checkpointing

    setup = _setup(tiny, ["--train-iters", "10"])
    loaded = []
    for iteration in iterations:
        checkpointing.load_checkpoint(root, setup.model, iteration=iteration)
        loaded.append({n: p.detach().clone() for n, p in setup.model[0].named_parameters()})
    return [[n for n in loaded[0] if not torch.equal(loaded[0][n], other[n])] for other in loaded[1:]]
