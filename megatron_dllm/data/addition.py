"""A checkable synthetic task: multi-digit addition written as text, ``"47+08=055"``.

Operands are written with ``max_digits`` digits and the sum with one more, zero-padded, so every
document of the task has the same length: a model trained with document masks sees exactly as many
answer slots at decoding time (``answer_tokens``) as in training.

The problems are split once, by a seeded shuffle of all ordered pairs, into a training set and a
held-out test set that no training document contains, so accuracy measures addition and not recall.

    task = AdditionTask(max_digits=2, num_test=200, seed=0)
    task.training_documents(20_000)      # ["47+38=85", ...], drawn from the training pairs
    task.test_problems()                 # [(a, b), ...] never seen in training
    task.prompt(3, 4) -> "03+04="; task.is_correct(3, 4, "007") -> True
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

_LEADING_INT = re.compile(r"\s*(\d+)")


@dataclass
class AdditionTask:
    max_digits: int = 2      # operands are 0 .. 10**max_digits - 1
    num_test: int = 200      # held-out ordered pairs
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_digits < 1:
            raise ValueError("max_digits must be >= 1")
        n = 10 ** self.max_digits
        if not 0 < self.num_test < n * n // 2:
            raise ValueError(f"num_test must be in [1, {n * n // 2}) for {self.max_digits}-digit operands")
        pairs = [(a, b) for a in range(n) for b in range(n)]
        random.Random(self.seed).shuffle(pairs)
        self._test = sorted(pairs[: self.num_test])
        self._train = pairs[self.num_test:]

    def prompt(self, a: int, b: int) -> str:
        d = self.max_digits
        return f"{a:0{d}d}+{b:0{d}d}="

    def answer(self, a: int, b: int) -> str:
        return f"{a + b:0{self.max_digits + 1}d}"

    def document(self, a: int, b: int) -> str:
        return self.prompt(a, b) + self.answer(a, b)

    @property
    def answer_tokens(self) -> int:
        """Tokens after the prompt with a digit-splitting tokenizer: the digits and the EOD."""
        return self.max_digits + 2

    @staticmethod
    def parse_answer(completion: str) -> Optional[int]:
        """The integer the completion starts with (leading spaces allowed), or None."""
        match = _LEADING_INT.match(completion)
        return int(match.group(1)) if match else None

    def is_correct(self, a: int, b: int, completion: str) -> bool:
        return self.parse_answer(completion) == a + b

    def training_documents(self, count: int, seed: int = 1) -> List[str]:
        """``count`` documents drawn with replacement from the training pairs."""
        rng = random.Random(seed)
        return [self.document(*rng.choice(self._train)) for _ in range(count)]

    def test_problems(self) -> List[Tuple[int, int]]:
        return list(self._test)

    @property
    def train_pairs(self) -> List[Tuple[int, int]]:
        return list(self._train)
