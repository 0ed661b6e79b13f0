"""Accuracy on the synthetic addition task (``data/addition.py``) of a loaded model, decoded either
with block-wise diffusion decoding (a dLLM) or greedily left to right (an AR model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from megatron_dllm.data.addition import AdditionTask
from megatron_dllm.generate.ar_decoding import greedy_ar
from megatron_dllm.generate.decoding import DecodeConfig, decode
from megatron_dllm.generate.kv_cache import DecodeCache, attach


@dataclass
class TaskResult:
    correct: int
    total: int
    tokens_per_forward: float            # generated tokens / decoding forwards, over all problems
    examples: List[dict] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.total, 1)

    def as_dict(self) -> dict:
        return {"accuracy": round(self.accuracy, 4), "correct": self.correct, "total": self.total,
                "tokens_per_forward": round(self.tokens_per_forward, 3), "examples": self.examples}


def addition_accuracy(model, forward: Callable, tokenizer, task: AdditionTask,
                      problems: Optional[List[Tuple[int, int]]] = None, *, decoder: str = "diffusion",
                      decode_cfg: Optional[DecodeConfig] = None, max_new_tokens: int = 8,
                      device="cpu", num_examples: int = 5) -> TaskResult:
    """Score ``problems`` (default: the task's held-out test set). ``decoder`` is ``"diffusion"``
    (``decode_cfg`` required) or ``"ar"`` (greedy next-token decoding, ``max_new_tokens``)."""
    if decoder not in ("diffusion", "ar"):
        raise ValueError(f"decoder must be 'diffusion' or 'ar', got {decoder!r}")
    if decoder == "diffusion" and decode_cfg is None:
        raise ValueError("diffusion decoding needs a DecodeConfig")
    problems = task.test_problems() if problems is None else problems
    correct = tokens = forwards = 0
    examples = []
    for a, b in problems:
        prompt = tokenizer.encode(task.prompt(a, b))
        cache = DecodeCache()
        attach(model, cache)
        try:
            if decoder == "diffusion":
                out = decode(prompt, forward, decode_cfg, device=device, cache=cache)
            else:
                out = greedy_ar(prompt, forward, max_new_tokens, eos_id=tokenizer.eod_id,
                                device=device, cache=cache)
        finally:
            attach(model, None)
        text = tokenizer.decode(out.tokens)
        ok = task.is_correct(a, b, text)
        correct += ok
        tokens += sum(out.per_step_accepted)
        forwards += out.num_forward_passes
        if len(examples) < num_examples:
            examples.append({"prompt": task.prompt(a, b), "completion": text, "correct": ok})
    return TaskResult(correct, len(problems), tokens / max(forwards, 1), examples)
