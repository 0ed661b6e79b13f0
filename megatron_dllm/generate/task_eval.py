"""Accuracy on the synthetic addition task (``data/addition.py``) of a loaded model, decoded either
with block-wise diffusion decoding (a dLLM) or greedily left to right (an AR model, or a dLLM
trained with a causal clean stream).

A problem is put to the model as the pretraining documents write it (``task_prompts``: ``"47+08="``)
or as a chat turn (``chat_prompts``: ``"What is 47+08?"`` rendered by the chat template the SFT data
was preprocessed with, up to the assistant's reply, as ``data/chat_template.encode_prompt`` cuts it).
Either way the completion must start with the sum.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, NamedTuple, Optional, Tuple

from megatron_dllm.data.addition import AdditionTask
from megatron_dllm.generate.ar_decoding import greedy_ar
from megatron_dllm.generate.decoding import DecodeConfig, decode
from megatron_dllm.generate.kv_cache import DecodeCache, attach


@dataclass
class TaskResult:
    correct: int
    total: int
    answer_tokens: int                   # generated tokens, each problem's EOS included
    decoding_forwards: int               # forwards that decoded tokens
    model_calls: int                     # every forward: decoding + cache-only (prefill / commit)
    decode_seconds: float                # sum over problems of the decode call (no model loading)
    examples: List[dict] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.total, 1)

    @property
    def tokens_per_forward(self) -> float:
        """Answer tokens (EOS included) per decoding forward, over all problems."""
        return self.answer_tokens / max(self.decoding_forwards, 1)

    def as_dict(self) -> dict:
        return {"accuracy": round(self.accuracy, 4), "correct": self.correct, "total": self.total,
                "tokens_per_forward": round(self.tokens_per_forward, 3),
                "model_calls_per_problem": round(self.model_calls / max(self.total, 1), 3),
                "decode_seconds": round(self.decode_seconds, 3), "examples": self.examples}


class ProblemPrompt(NamedTuple):
    """What the model is given for one problem: ``ids``, and ``text`` to show in examples."""

    ids: List[int]
    text: str


def task_prompts(tokenizer, task: AdditionTask) -> Callable[[int, int], ProblemPrompt]:
    """Problems as the pretraining documents write them: ``"47+08="``."""
    return lambda a, b: ProblemPrompt(tokenizer.encode(task.prompt(a, b)), task.prompt(a, b))


def chat_prompts(tokenizer, task: AdditionTask, template) -> Callable[[int, int], ProblemPrompt]:
    """Problems as one user turn, ``"What is 47+08?"`` (``data/addition_chat.chat_question``),
    rendered with ``template`` (``data/chat_template.load_chat_template``) up to the reply."""
    from megatron_dllm.data.addition_chat import chat_question
    from megatron_dllm.data.chat_template import encode_prompt

    def prompt(a: int, b: int) -> ProblemPrompt:
        question = chat_question(task, a, b)
        return ProblemPrompt(encode_prompt(tokenizer, template, [{"role": "user", "content": question}]),
                             question + " ")

    return prompt


def addition_accuracy(model, forward: Callable, tokenizer, task: AdditionTask,
                      problems: Optional[List[Tuple[int, int]]] = None, *, decoder: str = "diffusion",
                      decode_cfg: Optional[DecodeConfig] = None, max_new_tokens: int = 8,
                      device="cpu", num_examples: int = 5, use_cache: bool = True,
                      prompts: Optional[Callable[[int, int], ProblemPrompt]] = None) -> TaskResult:
    """Score ``problems`` (default: the task's held-out test set). ``decoder`` is ``"diffusion"``
    (``decode_cfg`` required; its ``use_cache`` applies) or ``"ar"`` (greedy next-token decoding,
    ``max_new_tokens``, KV cache unless ``use_cache`` is False). ``prompts`` (default
    ``task_prompts``) says how a problem is put to the model."""
    if decoder not in ("diffusion", "ar"):
        raise ValueError(f"decoder must be 'diffusion' or 'ar', got {decoder!r}")
    if decoder == "diffusion" and decode_cfg is None:
        raise ValueError("diffusion decoding needs a DecodeConfig")
    problems = task.test_problems() if problems is None else problems
    prompts = prompts or task_prompts(tokenizer, task)
    result = TaskResult(0, len(problems), 0, 0, 0, 0.0)
    for a, b in problems:
        prompt = prompts(a, b)
        cached = decode_cfg.use_cache if decoder == "diffusion" else use_cache
        cache = DecodeCache() if cached else None
        attach(model, cache)
        try:
            if decoder == "diffusion":
                out = decode(prompt.ids, forward, decode_cfg, device=device, cache=cache)
            else:
                out = greedy_ar(prompt.ids, forward, max_new_tokens, eos_id=tokenizer.eod_id,
                                device=device, cache=cache)
        finally:
            attach(model, None)
        text = tokenizer.decode(out.tokens)
        ok = task.is_correct(a, b, text)
        result.correct += ok
        result.answer_tokens += len(out.tokens) + int(out.stopped_at_eos)
        result.decoding_forwards += out.num_forward_passes
        result.model_calls += out.model_calls
        result.decode_seconds += out.seconds
        if len(result.examples) < num_examples:
            result.examples.append({"prompt": prompt.text, "completion": text, "correct": ok})
    return result


def addition_task(max_digits: int, num_test: int, seed: int) -> AdditionTask:
    """The AdditionTask tools/eval_addition.py scores; ValueError naming --max-digits / --num-test
    when they are out of range."""
    if max_digits < 1:
        raise ValueError(f"--max-digits {max_digits} must be >= 1")
    most = (10 ** max_digits) ** 2 // 2
    if not 0 < num_test < most:
        raise ValueError(f"--num-test {num_test} must be in [1, {most}) for --max-digits {max_digits}")
    return AdditionTask(max_digits=max_digits, num_test=num_test, seed=seed)


def check_task_prompts(tokenizer, task: AdditionTask, problems, gen_length: int, vocab_size: int,
                       positions: int, prompts: Optional[Callable[[int, int], ProblemPrompt]] = None) -> None:
    """ValueError when a problem's prompt cannot be decoded by the model (``variants.check_prompt``)."""
    from megatron_dllm.generate.variants import check_prompt

    prompts = prompts or task_prompts(tokenizer, task)
    for a, b in problems:
        prompt = prompts(a, b)
        check_prompt(prompt.ids, gen_length, vocab_size, positions, label=prompt.text.strip())
