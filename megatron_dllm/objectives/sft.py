"""SFT (METHOD.md 6; LLaDA2.0 post-training as in dFactory): block diffusion ``[xt ; x0]`` at one
block size over packed conversations, with complementary masking and an optional CAP term.

* Data (``data/sft_splits.py``): the ``tools/preprocess_data.py --format sft`` prefix; ``loss_mask``
  is 1 on the replies, their EOD and the EOS padding to a multiple of the block size, 0 on prompts;
  ``document_ids`` are the conversation boundaries of the dataset (never recomputed from EOD: a
  multi-turn conversation holds an EOD after every reply).
* Noise: only loss-mask positions are masked, so the prompt is never masked; t in a band (default
  [0.3, 0.8], ``--dllm-t-low`` / ``--dllm-t-high``); every sample appears twice in its micro-batch,
  with a mask and its complement (t -> 1 - t), so each response token is noised in exactly one row of
  the pair (``diffusion/sft.py``'s ``complementary_instances`` is the same noise).
* Layout and loss: those of block diffusion (``bd.py``) at ``--dllm-sft-block-size`` (default 32),
  weighted and normalised by ``--dllm-loss-weight`` / ``--dllm-loss-norm`` (dFactory: none /
  masked_tokens).
* CAP (METHOD.md 6.4, ``--dllm-cap-weight`` lambda, default 0 = off): lambda times the predictive
  entropy summed over the noised loss tokens whose argmax is the target, divided by the SFT loss's
  normaliser (Megatron's per-token contract has one normaliser per step), the gradient flowing
  through the entropy as in dFactory. The entropy is computed on vocabulary-parallel logits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Tuple

import torch

from megatron_dllm.config import ConfigError
from megatron_dllm.diffusion.curriculum import BlockSchedule
from megatron_dllm.objectives.base import Objective, StepContext
from megatron_dllm.objectives.bd import BlockDiffusionObjective
from megatron_dllm.objectives.diffusion import diffusion_settings

SFT_T_BAND = (0.3, 0.8)     # dFactory's noise_range_low / noise_range_high (METHOD.md 6.1)
SFT_BLOCK_SIZE = 32         # LLaDA2.0 SFT block size (METHOD.md 7.1)


def check_sft_flags(d) -> None:
    """ConfigError for an SFT-only flag given to another objective (``d``: the DiffusionConfig)."""
    if d.objective == SftObjective.name:
        return
    if d.sft_block_size is not None or d.cap_weight:
        raise ConfigError("--dllm-sft-block-size / --dllm-cap-weight are SFT options: use them with "
                          "--dllm-objective sft")


def sft_block_size(d) -> int:
    """--dllm-sft-block-size, default 32."""
    return SFT_BLOCK_SIZE if d.sft_block_size is None else int(d.sft_block_size)


def vocab_parallel_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Predictive entropy -sum_v p log p [b, s] (fp32) of vocabulary-parallel logits [b, s, V/tp].

    With a TP group the partial sums are all-reduced with Megatron's autograd-aware reduction
    (forward: all-reduce; backward: identity), so each rank's gradient is its slice's.
    """
    from megatron.core import parallel_state, tensor_parallel

    z = logits.float()
    top = z.detach().max(dim=-1, keepdim=True).values
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp > 1:
        torch.distributed.all_reduce(top, op=torch.distributed.ReduceOp.MAX,
                                     group=parallel_state.get_tensor_model_parallel_group())
    shifted = z - top
    e = shifted.exp()
    sums = torch.stack([e.sum(dim=-1), (e * shifted).sum(dim=-1)])
    if tp > 1:
        sums = tensor_parallel.reduce_from_tensor_model_parallel_region(sums)
    # H = log S - sum_v e_v (z_v - max) / S with S = sum_v e_v
    return torch.log(sums[0]) - sums[1] / sums[0]


@dataclass(frozen=True)
class SftObjective(BlockDiffusionObjective):
    """Supervised fine-tuning on conversations (see the module docstring)."""

    cap_weight: float = 0.0

    name = "sft"
    layout = "bd"
    streams = 2

    @classmethod
    def check_config(cls, d) -> None:
        """ConfigError for options SFT cannot honour (``d``: the DiffusionConfig)."""
        if d.block_schedule:
            raise ConfigError("--dllm-objective sft trains at one block size: drop --dllm-block-schedule "
                              "and give --dllm-sft-block-size (default 32)")
        if d.sft_block_size is not None and d.sft_block_size < 1:
            raise ConfigError(f"--dllm-sft-block-size {d.sft_block_size} must be an integer >= 1")
        if d.cap_weight < 0 or d.cap_weight != d.cap_weight:
            raise ConfigError(f"--dllm-cap-weight {d.cap_weight} must be a finite number >= 0 (0: no CAP term)")

    @classmethod
    def training_rows_per_sample(cls, d) -> int:
        """2: SFT always trains each sample with its complementary copy."""
        return 2

    @classmethod
    def block_schedule(cls, run) -> BlockSchedule:
        """One block size for the whole run; ConfigError unless it divides --seq-length."""
        block, L = sft_block_size(run.diffusion), run.model.seq_length
        if block < 1 or L % block:
            raise ConfigError(f"--seq-length {L} is not a multiple of the SFT block size {block}: "
                              f"change --dllm-sft-block-size or --seq-length")
        return BlockSchedule.constant(block, L)

    @classmethod
    def dataset_options(cls, run) -> Dict:
        """``build_datasets`` options: the SFT format, conversations padded to the block size."""
        return {"chat_format": "sft", "block_size": sft_block_size(run.diffusion)}

    @classmethod
    def from_run(cls, run, mask_token_id: int, device: str, backend: str) -> "SftObjective":
        d = run.diffusion
        settings = diffusion_settings(run, mask_token_id, device, backend)
        if d.t_low is None:  # the SFT band unless --dllm-t-low / --dllm-t-high give one
            settings["noise"] = dataclasses.replace(settings["noise"], t_low=SFT_T_BAND[0], t_high=SFT_T_BAND[1])
        settings["complementary"] = True
        settings["micro_batch_size"] = cls.micro_batch_size_of(run.training.micro_batch_size, d.bd_micro_batch_size)
        return cls(schedule=cls.block_schedule(run), clean_stream_causal=d.clean_stream_causal,
                   ar_loss_weight=d.ar_loss_weight, cap_weight=float(d.cap_weight), **settings)

    @property
    def block_size(self) -> int:
        return self.schedule.block_size_at(0)

    def at_block(self, block_size: int) -> Objective:
        return self  # one block size; a block of L is still the [xt ; x0] layout

    def phase_at(self, consumed_tokens: int) -> Tuple[Objective, int, str]:
        return self, self.block_size, "sft"

    def report_keys(self, step: StepContext) -> Tuple[str, ...]:
        keys = super().report_keys(step)
        return keys + ("cap_loss_sum", "cap_tokens") if self.cap_weight > 0 and step.training else keys

    def loss_func(self, inputs, step: StepContext):
        """The block-diffusion loss, plus the CAP term in training when ``cap_weight`` > 0."""
        base = super().loss_func(inputs, step)
        if self.cap_weight <= 0 or not step.training:
            return base
        from megatron_dllm.train.vocab_parallel import ce_and_correct

        def loss_func(logits: torch.Tensor):
            loss_sum, num_tokens, report = base(logits)
            main = logits[:, :inputs.targets.shape[1]]
            _, correct = ce_and_correct(main, inputs.targets)
            sel = inputs.noise.noise_mask & inputs.loss_mask & correct
            entropy = vocab_parallel_entropy(main)
            cap_sum = torch.where(sel, entropy, torch.zeros_like(entropy)).sum()
            report["cap_loss_sum"] = cap_sum.detach().float()
            report["cap_tokens"] = sel.sum().float()
            report["loss_sum"] = (loss_sum + self.cap_weight * cap_sum).detach().float()
            return loss_sum + self.cap_weight * cap_sum, num_tokens, report

        return loss_func
