"""The data of the quickstart (``make demo``), built from what every machine has.

Two corpora, each preprocessed into its own Megatron ``.bin/.idx`` pair for a weighted blend:
  * ``text``: docstrings of the Python standard library (``stdlib_corpus.py``), real English prose;
  * ``addition``: fixed-width addition problems (``addition.py``) with a held-out test set.
A sentencepiece unigram tokenizer (digits split, ``<|mask|>`` as a user-defined symbol, EOS = EOD)
is trained on the text plus a sample of the problems.

    data = build_quickstart_data("runs/demo/data")
    data.data_path        # ["0.5", ".../text_text_document", "0.5", ".../addition_text_document"]
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional

from megatron_dllm.data.addition import AdditionTask
from megatron_dllm.data.preprocess import output_prefix_for, preprocess_jsonl
from megatron_dllm.data.stdlib_corpus import stdlib_docstrings
from megatron_dllm.data.synthetic import train_sentencepiece, write_jsonl


@dataclass
class QuickstartData:
    tokenizer_model: str
    text_prefix: str
    addition_prefix: str
    text_weight: float
    task: dict                              # AdditionTask settings (for tools/eval_addition.py)
    stats: dict = field(default_factory=dict)

    @property
    def data_path(self) -> List[str]:
        return [str(self.text_weight), self.text_prefix, str(round(1 - self.text_weight, 6)),
                self.addition_prefix]


def build_quickstart_data(out_dir: str, *, text_chars: int = 1_000_000, addition_docs: int = 40_000,
                          vocab_size: int = 1024, text_weight: float = 0.5, max_digits: int = 2,
                          num_test: int = 200, seed: int = 0,
                          log: Optional[Callable[[str], None]] = print) -> QuickstartData:
    """Write the corpora (jsonl), the tokenizer and the indexed datasets under ``out_dir``."""
    log = log or (lambda _msg: None)
    os.makedirs(out_dir, exist_ok=True)
    docs = stdlib_docstrings(max_chars=text_chars)
    task = AdditionTask(max_digits=max_digits, num_test=num_test, seed=seed)
    problems = task.training_documents(addition_docs, seed=seed + 1)
    log(f"corpus: {len(docs)} standard-library docstrings ({sum(map(len, docs)) / 1e6:.2f} M chars), "
        f"{len(problems)} addition problems ({len(task.test_problems())} held out, e.g. "
        f"{problems[0]!r})")
    text_jsonl = os.path.join(out_dir, "text.jsonl")
    addition_jsonl = os.path.join(out_dir, "addition.jsonl")
    write_jsonl(text_jsonl, docs)
    write_jsonl(addition_jsonl, problems)
    tokenizer = train_sentencepiece(docs + problems[:2000], os.path.join(out_dir, "tokenizer"),
                                    vocab_size=vocab_size, split_digits=True)
    log(f"tokenizer: {tokenizer} ({vocab_size} pieces, digits split, <|mask|> added)")
    stats = {}
    for name, path in (("text", text_jsonl), ("addition", addition_jsonl)):
        result = preprocess_jsonl(path, tokenizer, os.path.join(out_dir, name), log_interval=0)
        stats[name] = {"documents": result.documents, "tokens": result.tokens}
    log(f"indexed datasets: {stats['text']['tokens']} text tokens, {stats['addition']['tokens']} "
        "addition tokens")
    return QuickstartData(
        tokenizer_model=tokenizer, text_prefix=output_prefix_for(os.path.join(out_dir, "text")),
        addition_prefix=output_prefix_for(os.path.join(out_dir, "addition")), text_weight=text_weight,
        task=asdict(task), stats=stats)
