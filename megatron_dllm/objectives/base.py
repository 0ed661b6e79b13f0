"""What every objective shares: the per-step context, the model inputs, the forward step and the loss.

An objective (``objectives/ar.py``, ``mdlm.py``, ``bd.py``) is one frozen object built once from the run
(``objectives.objective_for``). It owns the input layout and model sequence length, the micro-batch
size, the attention mask, noise and labels, the loss weighting and normalisation, the report keys, the
evaluation t points and whether the model is built causal. Subclasses provide ``prepare_inputs`` and
``loss_terms``; this base turns them into Megatron-Core's ``forward_step_func`` and loss function.

The loss function follows Megatron's per-token contract: it returns ``(loss_sum, num_tokens, report)``
and Megatron-Core normalises over micro-batches and data-parallel ranks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar, Dict, List, NamedTuple, Optional, Tuple

import torch

from megatron_dllm.diffusion import losses, masks
from megatron_dllm.diffusion.noising import NoiseResult

BASE_REPORT_KEYS = ("loss_sum", "num_tokens", "num_noised", "correct")


@dataclass(frozen=True)
class StepContext:
    """What changes from step to step (everything else lives on the objective)."""

    iteration: int
    block_size: int                  # L for mdlm; 1..L for bd; 1 for ar
    eval_t: Optional[float] = None   # evaluation: every row noised at this t (no complementary copies,
                                     # no embedding noise, the ELBO weighting)

    @property
    def training(self) -> bool:
        return self.eval_t is None


@dataclass
class ModelInputs:
    tokens: torch.Tensor             # [B, S] S = 2L (bd) or L
    position_ids: torch.Tensor       # [B, S]
    attention_mask: object           # bool [B, S, S] or BlockMask
    targets: torch.Tensor            # [B, L] labels of the positions that carry loss
    noise: NoiseResult               # noise_mask / t_per_token [B, L] (ar: all ones)
    loss_mask: torch.Tensor          # [B, L] bool
    logits_index: Optional[torch.Tensor]  # [L] or [2L] long: rows projected to logits (None: all)
    sample_index: torch.Tensor       # [B] global sample index of each row (repeated by complementary)
    ar_targets: Optional[torch.Tensor] = None  # [B, L] next-token targets of the clean stream
    ar_mask: Optional[torch.Tensor] = None     # [B, L] bool, where they carry loss
    cp_split: Optional[object] = None          # context parallelism: the ContextParallelSplit of the rows


class LossTerms(NamedTuple):
    """How one step's loss is weighted, normalised and reported."""

    weighting: str          # "inv_t" | "none" (diffusion/losses.py)
    normalization: str      # "all_tokens" | "masked_tokens" | "sequence"
    num_buckets: int        # t buckets reported (0: none)
    ar_weight: float = 0.0  # weight of the clean stream's next-token loss (0: not computed)


@dataclass(frozen=True)
class Objective:
    """One training objective, fixed for the run. Subclasses set the class attributes and provide
    ``prepare_inputs(batch, step) -> ModelInputs`` and ``loss_terms(step) -> LossTerms``."""

    seq_length: int                  # L (clean tokens per sample)
    micro_batch_size: int = 1        # samples per micro-batch (before complementary copies)
    attention_backend: str = "sdpa"  # resolved: sdpa | flex | te
    device: str = "cpu"
    context_parallel: int = 1        # --context-parallel-size (objectives/context_parallel.py)

    name: ClassVar[str] = ""         # the --dllm-objective value
    layout: ClassVar[str] = ""       # what logs call the step's input layout
    streams: ClassVar[int] = 1       # model input length in units of L ([xt ; x0] is 2)
    causal: ClassVar[bool] = False   # the model is built with a causal attention mask type
    uses_mask_token: ClassVar[bool] = True

    @classmethod
    def training_rows_per_sample(cls, d) -> int:
        """Model rows per data sample of a training step, from the DiffusionConfig ``d`` (what the
        memory planner multiplies a micro-batch's activations by): 1 here."""
        return 1

    @classmethod
    def micro_batch_size_of(cls, micro_batch_size: int, bd_micro_batch_size: Optional[int]) -> int:
        """The micro-batch size of this objective's steps (--micro-batch-size / --dllm-bd-micro-batch-size)."""
        return micro_batch_size

    @property
    def model_seq_length(self) -> int:
        """Tokens per row of the model input (Megatron-Core's schedules divide it by the CP size)."""
        return self.streams * self.seq_length

    def rows_per_sample(self, step: StepContext) -> int:
        """Model rows per data sample in ``step`` (2 with complementary copies)."""
        return 1

    def report_keys(self, step: StepContext) -> Tuple[str, ...]:
        """The report entries a training step sums over micro-batches and ranks."""
        terms = self.loss_terms(step)
        keys = list(BASE_REPORT_KEYS)
        keys += [f"bucket{k}_{kind}" for k in range(terms.num_buckets) for kind in ("loss_sum", "count")]
        if terms.ar_weight > 0:
            keys += ["ar_loss_sum", "ar_tokens"]
        return tuple(keys)

    def logged_metrics(self, totals: Dict[str, float]) -> Dict[str, float]:
        """Metrics of the objective's own, logged beside the loss from a step's summed reports (none)."""
        return {}

    def eval_points(self) -> List[Optional[float]]:
        """The t values every validation batch is scored at (None: no noise)."""
        return [None]

    def at_block(self, block_size: int) -> "Objective":
        """The objective of a step at ``block_size`` (block diffusion at L is MDLM)."""
        return self

    def phase_at(self, consumed_tokens: int) -> Tuple["Objective", int, str]:
        """(objective of the step, block size, curriculum phase) after ``consumed_tokens`` tokens."""
        raise NotImplementedError

    def attach(self, chunks) -> None:
        """Register the objective's model hooks (none by default)."""

    def prepare_inputs(self, batch: Dict, step: StepContext) -> ModelInputs:
        raise NotImplementedError

    def loss_terms(self, step: StepContext) -> LossTerms:
        raise NotImplementedError

    def embedding_noise(self, inputs: ModelInputs, step: StepContext):
        """Context of the model call (the embedding-noise hook while it is on); none by default."""
        return contextlib.nullcontext()

    # -- shared pieces of prepare_inputs ------------------------------------------------------------

    def check_length(self, batch: Dict) -> int:
        L = batch["tokens"].shape[1]
        if L != self.seq_length:
            raise ValueError(f"batch has {L} tokens per sample, the run expects --seq-length {self.seq_length}")
        return L

    def attention_mask(self, kind: str, block_size, docs: torch.Tensor):
        if self.context_parallel > 1:  # each CP rank builds its rows only (objectives/context_parallel.py)
            from megatron_dllm.objectives.context_parallel import MaskSpec

            return MaskSpec(kind, self.seq_length, block_size, docs)
        if self.attention_backend == "flex":
            return masks.flex_block_mask(kind, self.seq_length, block_size, docs, device=self.device)
        return masks.dense_mask(kind, self.seq_length, block_size, docs, device=self.device)

    def model_inputs(self, batch: Dict, tokens, attention, targets, noise: NoiseResult, loss_mask, rows,
                     ar_targets=None, ar_mask=None) -> ModelInputs:
        """ModelInputs on the device; ``rows`` None when every row is projected in order."""
        L = self.seq_length
        if len(rows) == tokens.shape[1] and torch.equal(rows, torch.arange(len(rows))):
            rows = None  # every row, in order: the stock output layer
        positions = torch.arange(L).expand(tokens.shape[0], L)
        if tokens.shape[1] == 2 * L:
            positions = positions.repeat(1, 2)
        dev = self.device
        move = (lambda x: None if x is None else x.to(dev))  # noqa: E731
        return ModelInputs(tokens=tokens.to(dev), position_ids=positions.to(dev), attention_mask=attention,
                           targets=targets.to(dev),
                           noise=NoiseResult(noise.xt.to(dev), noise.noise_mask.to(dev), noise.t_per_token.to(dev)),
                           loss_mask=loss_mask.to(dev), logits_index=rows, sample_index=batch["sample_index"],
                           ar_targets=move(ar_targets), ar_mask=move(ar_mask))

    # -- Megatron-Core's contract -------------------------------------------------------------------

    def loss_func(self, inputs: ModelInputs, step: StepContext):
        """Megatron loss function: logits [B, S, V/tp] -> (loss_sum, num_tokens, report)."""
        from megatron_dllm.train.vocab_parallel import ce_and_correct

        main = inputs.targets.shape[1]  # L, or this context-parallel rank's share of the L targets
        terms = self.loss_terms(step)

        def loss_func(logits: torch.Tensor):
            ce, correct = ce_and_correct(logits[:, :main], inputs.targets)  # rows = inputs.logits_index
            out = losses.diffusion_loss(ce, inputs.noise.noise_mask, inputs.noise.t_per_token, inputs.loss_mask,
                                        weighting=terms.weighting, normalization=terms.normalization,
                                        num_buckets=terms.num_buckets)
            sel = inputs.noise.noise_mask & inputs.loss_mask
            loss_sum = out.loss_sum
            report = {}
            if inputs.ar_targets is not None:  # next-token loss of the causal clean stream
                ar_ce, _ = ce_and_correct(logits[:, main:], inputs.ar_targets)
                ar_sum = torch.where(inputs.ar_mask, ar_ce, torch.zeros_like(ar_ce)).sum()
                loss_sum = loss_sum + terms.ar_weight * ar_sum
                report["ar_loss_sum"] = ar_sum.detach().float()
                report["ar_tokens"] = inputs.ar_mask.sum().float()
            report.update({
                "loss_sum": loss_sum.detach().float(),
                "num_tokens": out.num_tokens.detach().float(),
                "num_noised": out.num_noised.detach().float(),
                "correct": (correct & sel).sum().float(),
            })
            if out.bucket_loss_sum is not None:
                for k in range(terms.num_buckets):
                    report[f"bucket{k}_loss_sum"] = out.bucket_loss_sum[k].float()
                    report[f"bucket{k}_count"] = out.bucket_count[k].float()
            return loss_sum, out.num_tokens.to(torch.int), report

        return loss_func

    def forward_step(self, step: StepContext):
        """forward_step_func(data_iterator, model) for Megatron-Core's schedules."""

        def forward_step(data_iterator, model):
            inputs = self.prepare_inputs(next(data_iterator), step)
            if self.context_parallel > 1:
                inputs = self._context_parallel_rows(inputs)
            extra = {} if inputs.cp_split is None else {"cp_split": inputs.cp_split}
            # the rows with a loss only: the clean half of [xt ; x0] is not projected unless it has one
            with self.embedding_noise(inputs, step):
                logits = model(inputs.tokens, inputs.position_ids, inputs.attention_mask,
                               logits_index=inputs.logits_index, **extra)
            return logits, self.loss_func(inputs, step)

        return forward_step

    def _context_parallel_rows(self, inputs: ModelInputs) -> ModelInputs:
        from megatron.core import parallel_state

        from megatron_dllm.objectives.context_parallel import shard

        return shard(inputs, self.context_parallel, parallel_state.get_context_parallel_rank(),
                     self.attention_backend, self.device)
