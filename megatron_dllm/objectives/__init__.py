"""Training objectives, one object each, chosen in one place: ``objective_for(run, ...)``.

A new objective (say ``sft`` or ``dpo``) is one module here with one class, registered in
``OBJECTIVES`` and named in ``DiffusionConfig.objective``'s choices (a test checks the two agree).
The class provides, on top of ``objectives.base.Objective``:

* ``name`` / ``layout`` / ``streams`` / ``causal`` / ``uses_mask_token`` (class attributes),
* ``check_config(diffusion_config)``: ConfigError for options it cannot honour (run by preflight),
* ``block_schedule(run)``: its block-size schedule (None without one),
* ``from_run(run, mask_token_id, device, backend)``: the object, with everything it needs from the run,
* ``phase_at(consumed_tokens)``: (objective of the step, block size, phase),
* ``prepare_inputs(batch, step)`` and ``loss_terms(step)`` (``DiffusionObjective`` provides
  both for masked diffusion; its subclasses provide ``input_layout``),
* optionally ``report_keys``, ``eval_points``, ``rows_per_sample``, ``attach`` (model hooks).

The loop, evaluation, set-up and preflight call only these.
"""

from __future__ import annotations

from typing import Dict, Type

from megatron_dllm.config import ConfigError
from megatron_dllm.objectives.ar import ArObjective
from megatron_dllm.objectives.base import LossTerms, ModelInputs, Objective, StepContext
from megatron_dllm.objectives.bd import BlockDiffusionObjective
from megatron_dllm.objectives.dpo import DpoObjective
from megatron_dllm.objectives.mdlm import MdlmObjective
from megatron_dllm.objectives.sft import SftObjective

OBJECTIVES: Dict[str, Type[Objective]] = {cls.name: cls for cls in (ArObjective, MdlmObjective,
                                                                     BlockDiffusionObjective, SftObjective,
                                                                     DpoObjective)}

__all__ = ["OBJECTIVES", "LossTerms", "ModelInputs", "Objective", "StepContext", "dataset_options",
           "memory_lines", "objective_for", "objective_type"]


def objective_type(name: str) -> Type[Objective]:
    """The class registered as ``name``; ConfigError naming the choices otherwise."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ConfigError(f"--dllm-objective {name!r} is not an objective: choose one of "
                          f"{', '.join(sorted(OBJECTIVES))}") from None


def objective_for(run, mask_token_id: int, device: str) -> Objective:
    """The run's objective (``--dllm-objective``), built from its config for ``device``."""
    from megatron_dllm.model.core_attention import resolve_backend

    d = run.diffusion
    return objective_type(d.objective).from_run(run, mask_token_id, device,
                                                resolve_backend(d.attention_backend, device))


def dataset_options(run) -> dict:
    """The ``build_datasets`` options of the run's objective: ``{}`` (pretraining text windows), or
    an objective's ``dataset_options(run)`` (``sft``: the SFT format and its block size)."""
    options = getattr(objective_type(run.diffusion.objective), "dataset_options", None)
    return {} if options is None else options(run)


def memory_lines(run, plan) -> list:
    """Lines ``--dry-run`` adds below the memory plan for the run's objective (``dpo``: its rows and
    the frozen reference; none for the others)."""
    lines = getattr(objective_type(run.diffusion.objective), "memory_lines", None)
    return [] if lines is None else lines(run, plan)
