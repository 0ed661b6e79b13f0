"""The addition task (``addition.py``) as chat data: SFT conversations and DPO preference pairs.

    task = AdditionTask(max_digits=2, num_test=200, seed=0)
    sft_records(task, 1000, seed=1)
    # [{"messages": [{"role": "user", "content": "What is 47+08?"},
    #                {"role": "assistant", "content": "055"}]}, ...]
    dpo_records(task, 1000, seed=2)
    # [{"prompt": "What is 47+08?", "chosen": "055", "rejected": "056"}, ...]
    write_jsonl_records("sft.jsonl", sft_records(task, 1000, seed=1))
    data = build_addition_chat_data("runs/demo/chat", "runs/demo/data/tokenizer.model", task)
    data.sft_prefix, data.dpo_prefix   # for SFTDataset / DPOPairDataset; *_test_jsonl held out
    data.dpo_test_prefix               # the held-out pairs, preprocessed (tools/eval_preference.py)

The answer is written as in the pretraining documents (``task.answer``: zero-padded, one digit
wider than the operands). A rejected answer is a near miss: the right answer with one digit moved
up or down by one (mod 10), at a position drawn uniformly. ``split="train"`` draws problems with
replacement from the task's training pairs; ``split="test"`` gives every held-out pair once, in the
order of ``task.test_problems()`` (``count`` is then ignored).
"""

from __future__ import annotations

import io
import json
import os
import random
from dataclasses import dataclass
from typing import Iterable, List, Tuple

from megatron_dllm.data.addition import AdditionTask
from megatron_dllm.data.preprocess import preprocess_jsonl


def chat_question(task: AdditionTask, a: int, b: int) -> str:
    """``"What is 47+08?"``: the operands written as in ``task.prompt``."""
    d = task.max_digits
    return f"What is {a:0{d}d}+{b:0{d}d}?"


def near_miss(answer: str, rng: random.Random) -> str:
    """``answer`` with the digit at one position (drawn with ``rng``) moved by +-1 modulo 10."""
    position = rng.randrange(len(answer))
    digit = (int(answer[position]) + rng.choice((-1, 1))) % 10
    return answer[:position] + str(digit) + answer[position + 1:]


def _problems(task: AdditionTask, count: int, rng: random.Random, split: str) -> List[Tuple[int, int]]:
    if split == "test":
        return task.test_problems()
    if split != "train":
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    pairs = task.train_pairs
    return [rng.choice(pairs) for _ in range(count)]


def sft_records(task: AdditionTask, count: int, seed: int = 1, split: str = "train") -> List[dict]:
    """``count`` SFT records ``{"messages": [user question, assistant answer]}``."""
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": chat_question(task, a, b)},
                          {"role": "assistant", "content": task.answer(a, b)}]}
            for a, b in _problems(task, count, rng, split)]


def dpo_records(task: AdditionTask, count: int, seed: int = 2, split: str = "train") -> List[dict]:
    """``count`` DPO records ``{"prompt", "chosen": right answer, "rejected": a near miss}``."""
    rng = random.Random(seed)
    out = []
    for a, b in _problems(task, count, rng, split):
        answer = task.answer(a, b)
        out.append({"prompt": chat_question(task, a, b), "chosen": answer,
                    "rejected": near_miss(answer, rng)})
    return out


def write_jsonl_records(path: str, records: Iterable[dict]) -> int:
    """Write one JSON object per line; returns the number of lines."""
    n = 0
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
            n += 1
    return n


@dataclass
class AdditionChatData:
    """What ``build_addition_chat_data`` wrote."""

    sft_prefix: str        # P_sft: SFT conversations of training problems
    dpo_prefix: str        # P_dpo: preference pairs of training problems
    sft_test_jsonl: str    # every held-out problem once, as an SFT record
    dpo_test_jsonl: str    # every held-out problem once, as a DPO record
    dpo_test_prefix: str   # dpo_test_jsonl preprocessed (P_dpo of out_dir/heldout)
    sft_conversations: int
    dpo_pairs: int


def build_addition_chat_data(out_dir: str, tokenizer_model: str, task: AdditionTask, *,
                             sft_count: int = 20_000, dpo_count: int = 5_000, seed: int = 0,
                             chat_template: str = "auto") -> AdditionChatData:
    """Write the task's SFT and DPO JSON lines under ``out_dir`` (training problems: ``sft.jsonl``,
    ``dpo.jsonl``; held-out: ``sft_test.jsonl``, ``dpo_test.jsonl``) and preprocess the training
    files into ``out_dir/addition_sft`` and ``out_dir/addition_dpo`` (seeds seed + 1, seed + 2)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, f"{name}.jsonl")
             for name in ("sft", "dpo", "sft_test", "dpo_test")}
    write_jsonl_records(paths["sft"], sft_records(task, sft_count, seed=seed + 1))
    write_jsonl_records(paths["dpo"], dpo_records(task, dpo_count, seed=seed + 2))
    write_jsonl_records(paths["sft_test"], sft_records(task, 0, split="test"))
    write_jsonl_records(paths["dpo_test"], dpo_records(task, 0, seed=seed + 3, split="test"))
    stats = {fmt: preprocess_jsonl(paths[fmt], tokenizer_model, os.path.join(out_dir, "addition"),
                                   format=fmt, chat_template=chat_template, log=io.StringIO())
             for fmt in ("sft", "dpo")}
    heldout = preprocess_jsonl(paths["dpo_test"], tokenizer_model, os.path.join(out_dir, "heldout"), format="dpo",
                               chat_template=chat_template, log=io.StringIO())
    return AdditionChatData(stats["sft"].output_prefix, stats["dpo"].output_prefix,
                            paths["sft_test"], paths["dpo_test"], heldout.output_prefix, stats["sft"].documents,
                            stats["dpo"].documents)
