"""The variants of the AR -> dLLM quality ablation (bench/quality.py): one table, edit it here.

Every variant is a list of `python -m megatron_dllm.pretrain` flags added to the common dLLM run
(same converted checkpoint, data, dLLM iterations and learning-rate schedule shape: cosine with a
warm-up of iterations / 30 down to --min-lr). Later flags win, so a variant is written as the default
variant's flags plus what it changes. A flag value may be a schedule object below instead of a string:
it is turned into a `--dllm-block-schedule` spec from the run's token budget when the run starts.

``eval_flags`` go to tools/evaluate.py as well: the flags that change what the model predicts from
what (token shift, causal clean stream), so the NELBO is measured with the rule the model was trained
with. evaluate.py takes them from its flags, not from the checkpoint: a shift left out there changes
the NELBO (a no-shift model evaluated with --dllm-token-shift: 5.23 instead of 3.03 nats). ``init`` is ``"converted"`` (start from
the converted AR checkpoint) or ``"scratch"`` (random weights, trained for the AR + dLLM iterations of
the converted run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union


@dataclass(frozen=True)
class Budget:
    """What a schedule is sized against: the dLLM tokens of a converted run."""

    dllm_tokens: int
    dllm_iters: int
    tokens_per_step: int
    decode_block: int


@dataclass(frozen=True)
class Warmup:
    """Block sizes ``sizes`` (e.g. 1 -> 4), each for an equal part of ``share`` of the dLLM tokens,
    then ``then`` for the rest of the run; no sizes: ``then`` from the first step (abrupt switch)."""

    sizes: Tuple[int, ...]
    share: float
    then: int

    def spec(self, budget: Budget) -> str:
        if not self.sizes:
            return f"stable:{self.then}@inf"
        per_size = max(1, int(budget.dllm_tokens * self.share / len(self.sizes)))
        chain = "->".join(str(s) for s in self.sizes)
        return f"warmup:{chain}@{per_size}; stable:{self.then}@inf"


@dataclass(frozen=True)
class DemoSchedule:
    """The quickstart's schedule before issue 12: ``Plan.legacy_block_schedule`` of megatron_dllm/demo.py."""

    def spec(self, budget: Budget) -> str:
        from megatron_dllm.demo import Plan

        plan = Plan(dllm_iters=budget.dllm_iters, decode_block=budget.decode_block)
        return plan.legacy_block_schedule(budget.tokens_per_step)


FlagValue = Union[str, Warmup, DemoSchedule]


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    llada2_compatible: bool
    flags: Tuple[FlagValue, ...]
    eval_flags: Tuple[str, ...] = ()
    init: str = "converted"

    def resolved_flags(self, budget: Budget) -> List[str]:
        """The pretrain flags as strings, later duplicates overriding earlier ones."""
        return merge_flags([f if isinstance(f, str) else f.spec(budget) for f in self.flags])


# The default: LLaDA2.0 as released (no shift, same-position logits), warm-up 1 -> 4 over the first
# third of the dLLM tokens then block 8, and the dLLM learning rate that worked best in the probes
# (../shared/docs/FINDINGS.md section 6).
LLADA2_LR = ("--lr", "1.5e-3", "--min-lr", "1.5e-4")
LLADA2 = ("--dllm-block-schedule", Warmup((1, 4), 1 / 3, 8), *LLADA2_LR)

# The AR baseline continues the AR checkpoint as AR with the default variant's learning rates.
AR_BASELINE_FLAGS = LLADA2_LR

VARIANTS: Tuple[Variant, ...] = (
    Variant("llada2", "LLaDA2.0 as released: no shift, warm-up 1->4 over 1/3 of the tokens, then block 8",
            True, LLADA2),
    Variant("token_shift", "token shift inside block diffusion (position i predicted from i-1)", False,
            (*LLADA2, "--dllm-token-shift"), eval_flags=("--dllm-token-shift",)),
    Variant("causal_clean_ar", "causal clean stream + AR loss on it (weight 0.3)", False,
            (*LLADA2, "--dllm-clean-stream-causal", "--dllm-ar-loss-weight", "0.3"),
            eval_flags=("--dllm-clean-stream-causal",)),
    Variant("embedding_noise", "embedding noise at [MASK] positions, std 0.1, first 50 iterations", True,
            (*LLADA2, "--dllm-embedding-noise-std", "0.1", "--dllm-embedding-noise-iters", "50")),
    Variant("complementary", "complementary masking (each sequence also with the complement mask)", True,
            (*LLADA2, "--dllm-complementary-masking")),
    Variant("warmup_none", "abrupt switch: block 8 from the first step", True,
            (*LLADA2, "--dllm-block-schedule", Warmup((), 0.0, 8))),
    Variant("warmup_long", "long warm-up 1->2->4 over 2/3 of the tokens, then block 8", True,
            (*LLADA2, "--dllm-block-schedule", Warmup((1, 2, 4), 2 / 3, 8))),
    Variant("lr_low", "dLLM learning rate 5e-4 -> 5e-5", True, (*LLADA2, "--lr", "5e-4", "--min-lr", "5e-5")),
    Variant("lr_high", "dLLM learning rate 3e-3 -> 3e-4", True, (*LLADA2, "--lr", "3e-3", "--min-lr", "3e-4")),
    Variant("demo_schedule_old", "the demo's old schedule: warm-up 1->4->16->32, stable L, decay 32->8", True,
            (*LLADA2, "--dllm-block-schedule", DemoSchedule())),
    Variant("scratch", "from scratch: the default flags for the AR + dLLM iterations of the converted run", True,
            LLADA2, init="scratch"),
)

# Training flags that change the prediction rule; a variant using one must pass it to evaluate.py too.
PREDICTION_RULE_FLAGS = ("--dllm-token-shift", "--dllm-clean-stream-causal", "--dllm-label-shift")

# --quick: enough variants for both claims.
QUICK_VARIANTS = ("llada2", "warmup_none", "scratch")

# The paper's claims compare these variants (a claim whose variants did not run says so).
CLAIM_AR_INIT, CLAIM_SCRATCH = "llada2", "scratch"
CLAIM_GRADUAL, CLAIM_ABRUPT = "llada2", "warmup_none"


def by_name(names: Sequence[str]) -> List[Variant]:
    """The variants called ``names``, in table order; ValueError naming the unknown ones."""
    known = {v.name: v for v in VARIANTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return [v for v in VARIANTS if v.name in set(names)]


def merge_flags(flags: Sequence[str]) -> List[str]:
    """``--flag value`` pairs and bare ``--switch`` flags, each flag kept once at its first position
    with its last value (argparse semantics, written out without the overridden copies)."""
    items: List[Tuple[str, Tuple[str, ...]]] = []
    i = 0
    while i < len(flags):
        flag = flags[i]
        if not flag.startswith("--"):
            raise ValueError(f"expected a --flag, got {flag!r} in {list(flags)}")
        j = i + 1
        while j < len(flags) and not flags[j].startswith("--"):
            j += 1
        items.append((flag, tuple(flags[i + 1:j])))
        i = j
    last = {flag: values for flag, values in items}
    out: List[str] = []
    seen = set()
    for flag, _ in items:
        if flag not in seen:
            seen.add(flag)
            out += [flag, *last[flag]]
    return out


def flag_names(flags: Sequence[str]) -> List[str]:
    """The ``--flag`` tokens of a flag list (values left out)."""
    return [f for f in flags if f.startswith("--")]

