"""Tiny corpora and tokenizers made on the spot, for tests and smoke runs (no downloads).

    lines = synthetic_lines(300, seed=0)
    write_jsonl(path, lines)
    model = train_sentencepiece(lines, os.path.join(tmp, "tok"))   # -> tmp/tok.model
    # ids: 0 <unk>, 1 </s> (EOS = EOD), 2 <pad>, 3 <|mask|>, then learned pieces

Training a ~100-piece sentencepiece model on a few hundred lines takes well under a second.
"""

from __future__ import annotations

import json
import random
from typing import Iterable, List, Optional, Sequence

WORDS_A = ("bad", "cab", "dig", "egg", "fig", "jam", "kid", "lime", "made", "ache", "bike", "mile",
           "hide", "face", "head", "deal", "game", "black", "magic", "image")
"""Words spelled with the letters a-m only."""

WORDS_B = ("nor", "opus", "prost", "quo", "rust", "sun", "tory", "pony", "sorry", "wry", "zorn",
           "troy", "snow", "vows", "onus", "puns", "story", "trout", "worn", "worst")
"""Words spelled with the letters n-z only (disjoint from WORDS_A)."""


def synthetic_lines(num_lines: int, seed: int = 0, words: Sequence[str] = WORDS_A + WORDS_B,
                    min_words: int = 1, max_words: int = 40) -> List[str]:
    """``num_lines`` texts of ``min_words``..``max_words`` words drawn from ``words``."""
    rng = random.Random(seed)
    lines = []
    for _ in range(num_lines):
        n = rng.randint(min_words, max_words)
        text = " ".join(rng.choice(words) for _ in range(n))
        if rng.random() < 0.2:
            text = text.capitalize() + "."
        lines.append(text)
    return lines


def write_jsonl(path: str, texts: Iterable[str], key: str = "text") -> None:
    """One JSON object ``{"id": i, key: text}`` per line."""
    with open(path, "w", encoding="utf-8") as handle:
        for i, text in enumerate(texts):
            handle.write(json.dumps({"id": i, key: text}) + "\n")


def train_sentencepiece(lines: Sequence[str], model_prefix: str, vocab_size: int = 100,
                        user_defined_symbols: Optional[Sequence[str]] = ("<|mask|>",),
                        eos_id: int = 1, split_digits: bool = False) -> str:
    """Train a small unigram sentencepiece model on ``lines``; returns the ``.model`` path.

    Special ids: unk 0, eos ``eos_id`` (-1: none), pad 2, no BOS; user-defined symbols follow.
    ``split_digits`` makes every digit its own piece (what arithmetic wants).
    """
    import sentencepiece

    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(list(lines)), model_prefix=model_prefix, vocab_size=vocab_size,
        user_defined_symbols=list(user_defined_symbols or []), model_type="unigram",
        unk_id=0, eos_id=eos_id, pad_id=2, bos_id=-1, hard_vocab_limit=False,
        character_coverage=1.0, minloglevel=2, num_threads=1, split_digits=split_digits)
    return model_prefix + ".model"
