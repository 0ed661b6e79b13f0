"""DPO on ELBO estimates with VRPO (``--dllm-objective dpo --ref-load DIR``; LLaDA 1.5, METHOD.md 7.2-7.3).

A micro-batch holds P whole preference pairs (``data/dpo_batches.py``): the loss is non-linear in the
ELBOs, so both responses of a pair and all n noise draws of each reach the loss together. The model
input is P x 2 x n rows (row (p, side, d): the pair's chosen or rejected conversation with draw d's
noise; the prompt is never noised), in the MDLM layout (xt, L tokens, attention bidirectional within
the conversation, the EOS tail of the window a document of its own) or, with ``--dpo-block-size B``,
the block-diffusion layout of SFT (``[xt ; x0]``, 2L tokens, the block-diffusion mask at B within the
conversation, logits of the xt half only). The noise comes from
``diffusion.vrpo.preference_noise`` (a function of (seed, pair index, iteration): identical on every
TP / EP rank), applied with ``noised_draws``.

One forward step runs the frozen reference (``train/reference_model.py``, loaded by ``attach``) on
its rows without grad, then the policy; the loss function turns the policy's vocabulary-parallel
logits into per-token log-probs, the ELBOs (``diffusion.likelihood.elbo``) and the DPO loss
(``diffusion.preference.dpo_loss``), and returns the loss summed over pairs with the pair count
(Megatron divides by the pairs of the global batch). Under VRPO the reference scores the policy's
rows, so the noise cancels in B_pi - B_ref. Reference ELBOs are computed every step (not cached).
``diffusion.dpo_estimate.dpo_estimate`` is the same computation over scoring callables.

Pipeline and context parallelism are refused: the reference's activations would have to flow
through the stages (or the CP ranks) alongside the policy's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch

from megatron_dllm.config import ConfigError, DiffusionConfig
from megatron_dllm.diffusion import masks
from megatron_dllm.diffusion.likelihood import elbo
from megatron_dllm.diffusion.preference import dpo_loss
from megatron_dllm.diffusion.vrpo import ElboSampling, naive, noised_draws, preference_noise, vrpo
from megatron_dllm.objectives.base import Objective, StepContext
from megatron_dllm.objectives.sft import SFT_BLOCK_SIZE

SIDES = ("chosen", "rejected")
REPORT_KEYS = ("loss_sum", "num_tokens", "num_noised", "correct", "margin_sum", "correct_pairs", "kl_sum",
               "reward_chosen_sum", "reward_rejected_sum")


def check_dpo_flags(d) -> None:
    """ConfigError for a DPO-only flag given to another objective (``d``: the DiffusionConfig)."""
    if d.objective == DpoObjective.name:
        return
    defaults = DiffusionConfig()
    given = [flag for flag, field_name in (("--ref-load", "ref_load"), ("--dpo-beta", "dpo_beta"),
                                           ("--dpo-elbo-samples", "dpo_elbo_samples"),
                                           ("--dpo-sampling", "dpo_sampling"), ("--dpo-block-size", "dpo_block_size"))
             if getattr(d, field_name) != getattr(defaults, field_name)]
    if given:
        raise ConfigError(f"{' / '.join(given)} {'is a DPO option' if len(given) == 1 else 'are DPO options'}: "
                          f"use with --dllm-objective dpo")


def elbo_sampling(name: str, n: int) -> ElboSampling:
    """``--dpo-sampling`` / ``--dpo-elbo-samples`` as an ElboSampling."""
    return {"vrpo": vrpo, "naive": naive}[name](n)


@dataclass
class PairInputs:
    """One micro-batch of P pairs, laid out as R = P * 2 * n rows (p, side, draw) of L tokens."""

    tokens: torch.Tensor          # [R, S] the policy's rows: xt (S = L), or [xt ; x0] (S = 2L)
    ref_tokens: torch.Tensor      # [R, S] the reference's (the same tensor under VRPO)
    position_ids: torch.Tensor    # [R, S]
    attention_mask: object        # [R, S, S] bool (or BlockMask)
    targets: torch.Tensor         # [R, L] the clean tokens
    noise_mask: torch.Tensor      # [P, 2, n, L] bool, the policy's noised response positions
    ref_noise_mask: torch.Tensor  # [P, 2, n, L]
    t: torch.Tensor               # [P, 2, n] (CPU)
    ref_t: torch.Tensor           # [P, 2, n] (CPU)
    response: torch.Tensor        # [P, 2, L] bool, the positions scored (reply, EOD, EOS padding)
    logits_index: Optional[torch.Tensor] = None  # [L]: the xt half of [xt ; x0]; None: every row (MDLM)


@dataclass(frozen=True)
class DpoObjective(Objective):
    """DPO with ELBO estimates of policy and frozen reference (module docstring)."""

    seed: int = 0
    mask_token_id: int = 0
    beta: float = 0.1
    sampling: ElboSampling = field(default_factory=lambda: vrpo(4))
    block_size: Optional[int] = None           # --dpo-block-size: the [xt ; x0] layout; None: MDLM
    reference_source: Optional[object] = None  # train.reference_model.ReferenceSource, loaded by attach
    frozen: Dict = field(default_factory=dict, compare=False, repr=False)  # "reference": its chunks

    name = "dpo"
    layout = "dpo"

    @classmethod
    def check_config(cls, d) -> None:
        """ConfigError without --ref-load or for a pretraining-only option (the ranges of --dpo-beta,
        --dpo-elbo-samples and --dpo-block-size are checked with every number: ``config_ranges``)."""
        if not d.ref_load:
            raise ConfigError("--dllm-objective dpo needs --ref-load DIR: the frozen reference checkpoint "
                              "(usually the SFT model the policy starts from)")
        if d.block_schedule:
            raise ConfigError("--dllm-block-schedule is only used with --dllm-objective bd")
        used = [flag for flag, on in (("--dllm-token-shift", d.token_shift), ("--dllm-label-shift", d.label_shift),
                                      ("--dllm-clean-stream-causal", d.clean_stream_causal),
                                      ("--dllm-complementary-masking", d.complementary_masking),
                                      ("--dllm-embedding-noise-std", d.embedding_noise_std > 0),
                                      ("--dllm-bd-micro-batch-size", d.bd_micro_batch_size is not None)) if on]
        if used:
            raise ConfigError(f"{' / '.join(used)} is not used by --dllm-objective dpo (its noise is VRPO's, "
                              f"--dpo-sampling; a micro-batch is --micro-batch-size pairs): leave it out")

    @classmethod
    def dataset_options(cls, run) -> dict:
        """Preference pairs (``data/dpo_batches.py``), each reply padded with supervised EOS to a multiple
        of SFT's block size (32), as the SFT model the policy starts from saw its replies."""
        return {"chat_format": "dpo", "block_size": SFT_BLOCK_SIZE}

    @classmethod
    def memory_lines(cls, run, plan) -> list:
        """What ``--dry-run`` adds to the memory plan (``model/memory.py`` MemoryPlan): the MDLM (or BD)
        activations scaled from its micro-batch of P rows to the P x 2 x n rows of a DPO micro-batch
        (activations are linear in the rows), and the frozen reference's weights (no grads, no
        optimizer state; its forward keeps no activations)."""
        gib = 2.0 ** 30
        P, n = run.training.micro_batch_size, run.diffusion.dpo_elbo_samples
        layout = "bd" if run.diffusion.dpo_block_size else "mdlm"
        lines = [f"DPO (GiB per GPU): a micro-batch is {P} pair(s) x 2 replies x {n} draws = {2 * P * n} rows; "
                 f"the {layout.upper()} activations scaled to them, plus the frozen reference's weights:",
                 f"  {'stage':>5} {'act DPO':>8} {'reference':>9} {'total DPO':>9}"]
        for s in plan.stages:
            act = s.activation_bytes[layout] * 2 * n
            lines.append(f"  {s.stage:>5} {act / gib:>8.2f} {s.param_bytes / gib:>9.2f} "
                         f"{(s.static_bytes + s.param_bytes + act) / gib:>9.2f}")
        return lines

    @classmethod
    def block_schedule(cls, run):
        """DPO has no block-size curriculum."""
        return None

    @classmethod
    def from_run(cls, run, mask_token_id: int, device: str, backend: str) -> "DpoObjective":
        from megatron_dllm.train.reference_model import ReferenceSource

        p, d = run.parallel, run.diffusion
        if p.pipeline_model_parallel_size != 1 or getattr(p, "context_parallel_size", 1) != 1:
            raise ConfigError("--dllm-objective dpo supports --pipeline-model-parallel-size 1 and "
                              "--context-parallel-size 1 only (the frozen reference would have to run through "
                              "the same stages): use tensor / expert / data parallelism")
        if d.dpo_block_size and run.model.seq_length % d.dpo_block_size:
            raise ConfigError(f"--dpo-block-size {d.dpo_block_size} must divide --seq-length {run.model.seq_length}")
        if run.training.eval_interval:
            raise ConfigError("--eval-interval is not supported with --dllm-objective dpo (validation scores "
                              "the pretraining ELBO): leave it out")
        return cls(seq_length=run.model.seq_length, micro_batch_size=run.training.micro_batch_size,
                   attention_backend=backend, device=device, seed=run.training.seed, mask_token_id=mask_token_id,
                   beta=d.dpo_beta, sampling=elbo_sampling(d.dpo_sampling, d.dpo_elbo_samples),
                   block_size=d.dpo_block_size,
                   reference_source=ReferenceSource.from_run(run, device))

    @property
    def model_seq_length(self) -> int:
        """Tokens per model row: L (MDLM layout) or 2L ([xt ; x0])."""
        return (2 if self.block_size else 1) * self.seq_length

    def phase_at(self, consumed_tokens: int) -> Tuple[Objective, int, str]:
        return self, self.block_size or self.seq_length, "dpo"

    def rows_per_sample(self, step: StepContext) -> int:
        """Model rows per pair: 2 responses x n draws."""
        return 2 * self.sampling.num_draws

    def report_keys(self, step: StepContext) -> Tuple[str, ...]:
        return REPORT_KEYS

    def logged_metrics(self, totals: Dict[str, float]) -> Dict[str, float]:
        """Per-pair means of the summed reports: DPO loss, reward margin, preference accuracy, KL (k2)."""
        pairs = max(totals["num_tokens"], 1.0)
        return {"dpo_loss": totals["loss_sum"] / pairs, "reward_margin": totals["margin_sum"] / pairs,
                "preference_accuracy": totals["correct_pairs"] / pairs, "kl": totals["kl_sum"] / pairs,
                "reward_chosen": totals["reward_chosen_sum"] / pairs,
                "reward_rejected": totals["reward_rejected_sum"] / pairs}

    def attach(self, chunks) -> None:
        """Load the frozen reference model (``--ref-load``) beside the policy's ``chunks``."""
        if self.reference_source is not None and "reference" not in self.frozen:
            from megatron_dllm.train.reference_model import load_reference

            self.frozen["reference"] = load_reference(self.reference_source)

    def with_reference(self, reference) -> "DpoObjective":
        """This objective scoring with ``reference`` (a model, or a list of one chunk), e.g. in tests."""
        chunks = list(reference) if isinstance(reference, (list, tuple)) else [reference]
        return dataclasses.replace(self, frozen={"reference": chunks})

    # -- the step -----------------------------------------------------------------------------------

    def prepare_inputs(self, batch: Dict, step: StepContext) -> PairInputs:
        """Noise the P pairs of ``batch`` (``PairDataset.collate``) into R = P * 2 * n model rows."""
        L = self.seq_length
        for side in SIDES:
            if batch[side]["tokens"].shape[1] != L:
                raise ValueError(f"batch has {batch[side]['tokens'].shape[1]} tokens per response, the run "
                                 f"expects --seq-length {L}")
        noise = preference_noise(batch["sample_index"], L, self.sampling, self.seed, step.iteration)
        draws = {}
        for model in ("policy", "reference"):
            draws[model] = [noised_draws(batch[side]["tokens"], batch[side]["loss_mask"].to(torch.bool),
                                        getattr(noise, f"{model}_{side}"), self.mask_token_id) for side in SIDES]
        P, n = batch["sample_index"].shape[0], self.sampling.num_draws
        R = P * 2 * n

        def stacked(model, what):  # [P, 2, n, ...]
            return torch.stack([getattr(r, what) for r in draws[model]], dim=1)

        shared = self.sampling.share_reference
        x0 = torch.stack([batch[side]["tokens"] for side in SIDES], dim=1)          # [P, 2, L]
        docs = torch.stack([batch[side]["document_ids"] for side in SIDES], dim=1)  # [P, 2, L]
        response = torch.stack([batch[side]["loss_mask"].to(torch.bool) for side in SIDES], dim=1)

        def each_draw(x):  # [P, 2, L] -> [R, L]
            return x[:, :, None, :].expand(P, 2, n, L).reshape(R, L)

        dev = self.device
        targets = each_draw(x0)
        tokens = stacked("policy", "xt").reshape(R, L)
        ref_tokens = tokens if shared else stacked("reference", "xt").reshape(R, L)
        positions, rows, kind = torch.arange(L).expand(R, L), None, "bidirectional"
        if self.block_size:  # [xt ; x0] at positions 0..L-1 twice; logits of the xt half
            tokens, positions, rows, kind = torch.cat([tokens, targets], 1), positions.repeat(1, 2), \
                torch.arange(L), "block_diffusion"
            ref_tokens = tokens if shared else torch.cat([ref_tokens, targets], 1)
        build = masks.flex_block_mask if self.attention_backend == "flex" else masks.dense_mask
        attention = build(kind, L, self.block_size, each_draw(docs), device=dev)
        return PairInputs(tokens=tokens.to(dev), ref_tokens=ref_tokens.to(dev), position_ids=positions.to(dev),
                          attention_mask=attention, targets=targets.to(dev),
                          noise_mask=stacked("policy", "noise_mask").to(dev),
                          ref_noise_mask=stacked("reference", "noise_mask").to(dev), t=stacked("policy", "t"),
                          ref_t=stacked("reference", "t"), response=response.to(dev), logits_index=rows)

    def _elbos(self, logits: torch.Tensor, inputs: PairInputs, reference: bool):
        """(ELBO of the chosen [P], of the rejected [P], ce [R, L], correct [R, L]) from vocab-parallel logits."""
        from megatron_dllm.train.vocab_parallel import ce_and_correct

        ce, correct = ce_and_correct(logits, inputs.targets)
        P, _, n, L = inputs.noise_mask.shape
        logp = (-ce).view(P, 2, n, L)
        noise_mask = inputs.ref_noise_mask if reference else inputs.noise_mask
        t = inputs.ref_t if reference else inputs.t
        return (*[elbo(logp[:, s], noise_mask[:, s], t[:, s], inputs.response[:, s]) for s in range(2)],
                ce, correct)

    def scored_elbos(self, model, inputs: PairInputs, reference: bool):
        """(B(chosen), B(rejected)), [P] each, of ``model`` without grad on the reference's rows and noise
        (``reference``) or the policy's: the frozen reference in training, any model in evaluation."""
        tokens = inputs.ref_tokens if reference else inputs.tokens
        with torch.no_grad():
            logits = model(tokens, inputs.position_ids, inputs.attention_mask, logits_index=inputs.logits_index)
            chosen, rejected, _, _ = self._elbos(logits, inputs, reference=reference)
        return chosen, rejected

    def reference_elbos(self, inputs: PairInputs):
        """(B_ref(chosen), B_ref(rejected)), [P] each, from the frozen reference without grad."""
        chunks = self.frozen.get("reference")
        if not chunks:
            raise ValueError("the DPO objective has no reference model: build it with objective_for(run, ...) "
                             "and attach(chunks), or with_reference(model)")
        return self.scored_elbos(chunks[0], inputs, reference=True)

    def loss_func(self, inputs: PairInputs, step: StepContext, reference_elbos=None):
        """Megatron loss function: policy logits [R, L, V/tp] -> (DPO loss summed over pairs, pairs, report)."""
        ref_chosen, ref_rejected = reference_elbos if reference_elbos is not None else self.reference_elbos(inputs)

        def loss_func(logits: torch.Tensor):
            chosen, rejected, _, correct = self._elbos(logits, inputs, reference=False)
            out = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta)
            P = out.loss.shape[0]
            scored = inputs.noise_mask & inputs.response[:, :, None, :]
            report = {
                "loss_sum": out.loss_sum.detach().float(), "num_tokens": torch.tensor(float(P)),
                "num_noised": scored.sum().float(),
                "correct": (correct.view(scored.shape) & scored).sum().float(),
                "margin_sum": out.margin.sum(), "correct_pairs": out.correct.sum(), "kl_sum": out.kl.sum(),
                "reward_chosen_sum": out.reward_chosen.sum(), "reward_rejected_sum": out.reward_rejected.sum(),
            }
            return out.loss_sum, torch.tensor(P, dtype=torch.int, device=out.loss.device), report

        return loss_func

    def forward_step(self, step: StepContext):
        """forward_step_func(data_iterator, model): the reference's ELBOs first (no grad), then the policy."""

        def forward_step(data_iterator, model):
            inputs = self.prepare_inputs(next(data_iterator), step)
            reference = self.reference_elbos(inputs)
            logits = model(inputs.tokens, inputs.position_ids, inputs.attention_mask,
                           logits_index=inputs.logits_index)
            return logits, self.loss_func(inputs, step, reference)

        return forward_step
