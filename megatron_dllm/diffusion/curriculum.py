"""Block-size curriculum: the warmup-stable-decay (WSD) schedule of the block size (METHOD.md 4).

A schedule is a stateless function of the number of training tokens consumed before a step, so a
resumed run needs nothing but that count. It is written as a compact spec string:

    spec     := phase (';' phase)*
    phase    := name ':' segment (',' segment)*
    name     := 'warmup' | 'stable' | 'decay'   (each at most once, in this order)
    segment  := sizes '@' tokens                (each size in the chain lasts `tokens` tokens)
    sizes    := size ('->' size)*
    size     := positive integer | 'L'          ('L' = the sequence length)
    tokens   := number [suffix] | 'inf'
    number   := digits ['.' digits]             (must give a whole number of tokens)
    suffix   := 'K' (1e3) | 'M' (1e6) | 'B' (1e9) | 'T' (1e12), case-insensitive

Whitespace is ignored. The last segment of the schedule lasts forever (its token count only
documents intent; 'inf' is allowed there and nowhere else). Example, LLaDA2.0 on L = 4096 (token
budgets are not published; these are placeholders):

    warmup:1->4->32->64->L@1B; stable:L@100B; decay:2048->1024->512->256->128->64->32@1B

Checks (ValueError naming the problem and the fix): every size divides L; warmup sizes never
decrease; the stable phase holds one size; decay sizes never increase; across phases the sizes rise
then fall (warmup <= stable >= decay). Block size L means the MDLM layout (input xt only); a smaller
block means the BD layout (input [xt ; x0]); see ``uses_bd_layout``.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple, Optional

PHASES = ("warmup", "stable", "decay")
_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
_TOKENS_RE = re.compile(r"^(\d+(?:\.\d+)?)([KMBT]?)$", re.IGNORECASE)
EXAMPLE = "warmup:1->4->32->64->L@1B;stable:L@100B;decay:2048->1024->512->256->128->64->32@1B"


class Segment(NamedTuple):
    """One constant-block-size stretch: tokens in [start_token, end_token); end None = forever."""

    phase: str
    block_size: int
    start_token: int
    end_token: Optional[int]


class Transition(NamedTuple):
    """A change of (phase, block size) at ``token`` consumed tokens."""

    token: int
    from_phase: str
    from_block_size: int
    to_phase: str
    to_block_size: int


def uses_bd_layout(block_size: int, seq_len: int) -> bool:
    """True for the block-diffusion layout [xt ; x0] (block < L), False for MDLM (block == L)."""
    if block_size < 1 or seq_len % block_size != 0:
        raise ValueError(f"block size {block_size} must be a positive divisor of seq_len {seq_len}")
    return block_size < seq_len


def _divisor_hint(size: int, seq_len: int) -> str:
    divisors = [d for d in range(1, seq_len + 1) if seq_len % d == 0]
    below = max([d for d in divisors if d < size], default=None)
    above = min([d for d in divisors if d > size], default=None)
    near = " or ".join(str(d) for d in (below, above) if d is not None)
    return f"use a divisor of {seq_len}" + (f" (nearest: {near})" if near else "")


def _parse_size(text: str, seq_len: int, where: str) -> int:
    if text == "L":
        return seq_len
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{where}: block size {text!r} is not a positive integer or 'L'")
    size = int(text)
    if size > seq_len:
        raise ValueError(f"{where}: block size {size} exceeds seq_len {seq_len}; use at most 'L'")
    if seq_len % size != 0:
        raise ValueError(
            f"{where}: block size {size} does not divide seq_len {seq_len}; {_divisor_hint(size, seq_len)}"
        )
    return size


def _parse_tokens(text: str, where: str) -> Optional[int]:
    if text.lower() == "inf":
        return None
    m = _TOKENS_RE.match(text)
    if m is None:
        raise ValueError(
            f"{where}: token count {text!r} is not a number with an optional K/M/B/T suffix "
            f"(e.g. 500M, 1.5B) or 'inf'"
        )
    value = Fraction(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if value.denominator != 1:
        raise ValueError(f"{where}: token count {text!r} is not a whole number of tokens")
    if value == 0:
        raise ValueError(f"{where}: token count must be positive, got {text!r}")
    return int(value)


def _format_tokens(tokens: Optional[int]) -> str:
    if tokens is None:
        return "inf"
    for suffix in ("T", "B", "M", "K"):
        if tokens % _SUFFIX[suffix] == 0:
            return f"{tokens // _SUFFIX[suffix]}{suffix}"
    return str(tokens)


def _check_order(phase: str, sizes: list[int]) -> None:
    for a, b in zip(sizes, sizes[1:]):
        if phase == "warmup" and b < a:
            raise ValueError(
                f"phase 'warmup': block sizes must not decrease, but {a} is followed by {b}; "
                f"move the smaller sizes to a 'decay' phase"
            )
        if phase == "decay" and b > a:
            raise ValueError(
                f"phase 'decay': block sizes must not increase, but {a} is followed by {b}; "
                f"move the larger sizes to a 'warmup' phase"
            )
        if phase == "stable" and b != a:
            raise ValueError(
                f"phase 'stable': holds one block size, got {a} and {b}; "
                f"put changing sizes in 'warmup' or 'decay'"
            )


@dataclass(frozen=True)
class BlockSchedule:
    """A validated block-size schedule over consumed tokens (build it with ``parse``)."""

    seq_len: int
    segments: tuple[Segment, ...]

    @classmethod
    def parse(cls, spec: str, seq_len: int) -> "BlockSchedule":
        """Parse and validate ``spec`` (grammar in the module docstring) for sequence length L."""
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        text = re.sub(r"\s+", "", spec or "")
        if not text:
            raise ValueError(f"empty block-size schedule; expected e.g. {EXAMPLE!r}")
        raw: list[tuple[str, int, Optional[int]]] = []  # (phase, size, tokens)
        seen: list[str] = []
        for part in text.split(";"):
            name, sep, body = part.partition(":")
            if not sep:
                raise ValueError(
                    f"phase {part!r} has no ':'; write NAME:SIZE@TOKENS with NAME in {PHASES}"
                )
            if name not in PHASES:
                raise ValueError(f"unknown phase {name!r}; phases are {PHASES}, in this order")
            if name in seen:
                raise ValueError(f"phase {name!r} appears twice; list its segments once, comma-separated")
            if seen and PHASES.index(name) < PHASES.index(seen[-1]):
                raise ValueError(f"phase {name!r} after {seen[-1]!r}; phases must come in the order {PHASES}")
            seen.append(name)
            sizes_in_phase = []
            for seg in body.split(","):
                where = f"phase {name!r}, segment {seg!r}"
                chain, at, tok = seg.partition("@")
                if not at or not chain:
                    raise ValueError(f"{where}: expected SIZE@TOKENS (e.g. 32@1B or 1->4@500M)")
                tokens = _parse_tokens(tok, where)
                for size_text in chain.split("->"):
                    size = _parse_size(size_text, seq_len, where)
                    sizes_in_phase.append(size)
                    raw.append((name, size, tokens))
            _check_order(name, sizes_in_phase)
        for name, size, tokens in raw[:-1]:
            if tokens is None:
                raise ValueError(
                    f"phase {name!r}: block size {size} has 'inf' tokens but is not the last segment; "
                    f"give it a token count"
                )
        cls._check_across_phases(raw)
        segments, start = [], 0
        for i, (name, size, tokens) in enumerate(raw):
            end = None if i == len(raw) - 1 else start + tokens
            segments.append(Segment(name, size, start, end))
            start = end if end is not None else start
        return cls(seq_len=seq_len, segments=tuple(segments))

    @staticmethod
    def _check_across_phases(raw: list[tuple[str, int, Optional[int]]]) -> None:
        by_phase = {p: [s for n, s, _ in raw if n == p] for p in PHASES}
        stable = by_phase["stable"]
        peak = stable[0] if stable else None
        warm, decay = by_phase["warmup"], by_phase["decay"]
        if peak is not None and warm and warm[-1] > peak:
            raise ValueError(
                f"warmup ends at block size {warm[-1]} but stable holds {peak}; "
                f"warmup must end at or below the stable size"
            )
        top = peak if peak is not None else (warm[-1] if warm else None)
        if top is not None and decay and decay[0] > top:
            raise ValueError(
                f"decay starts at block size {decay[0]}, above the preceding size {top}; "
                f"decay must start at or below it"
            )

    @classmethod
    def constant(cls, block_size: int, seq_len: int) -> "BlockSchedule":
        """A single stable block size for ever (e.g. SFT at block size 32)."""
        return cls.parse(f"stable:{block_size}@inf", seq_len)

    def _segment_at(self, consumed_tokens: int) -> Segment:
        consumed_tokens = int(consumed_tokens)
        if consumed_tokens < 0:
            raise ValueError(f"consumed_tokens must be >= 0, got {consumed_tokens}")
        starts = [s.start_token for s in self.segments]
        return self.segments[bisect.bisect_right(starts, consumed_tokens) - 1]

    def block_size_at(self, consumed_tokens: int) -> int:
        """Block size for a step taken after ``consumed_tokens`` training tokens."""
        return self._segment_at(consumed_tokens).block_size

    def phase_at(self, consumed_tokens: int) -> str:
        """'warmup', 'stable' or 'decay' for a step after ``consumed_tokens`` tokens."""
        return self._segment_at(consumed_tokens).phase

    def uses_bd_layout_at(self, consumed_tokens: int) -> bool:
        """Whether the step after ``consumed_tokens`` tokens uses the BD layout [xt ; x0]."""
        return uses_bd_layout(self.block_size_at(consumed_tokens), self.seq_len)

    def transitions(self) -> list[Transition]:
        """Every boundary where the phase or the block size changes, in token order."""
        out = []
        for a, b in zip(self.segments, self.segments[1:]):
            if (a.phase, a.block_size) != (b.phase, b.block_size):
                out.append(Transition(b.start_token, a.phase, a.block_size, b.phase, b.block_size))
        return out

    def to_spec(self) -> str:
        """Canonical spec string (one SIZE@TOKENS per segment); ``parse`` of it gives this schedule."""
        phases: dict[str, list[str]] = {}
        for seg in self.segments:
            size = "L" if seg.block_size == self.seq_len else str(seg.block_size)
            tokens = None if seg.end_token is None else seg.end_token - seg.start_token
            phases.setdefault(seg.phase, []).append(f"{size}@{_format_tokens(tokens)}")
        return ";".join(f"{p}:{','.join(segs)}" for p, segs in phases.items())

    def describe(self) -> str:
        """A human-readable table of the segments, for logs."""
        lines = [f"block-size schedule (L={self.seq_len}):"]
        for seg in self.segments:
            end = "inf" if seg.end_token is None else f"{seg.end_token:,}"
            layout = "BD [xt;x0]" if seg.block_size < self.seq_len else "MDLM [xt]"
            lines.append(f"  {seg.phase:<7} block {seg.block_size:>6}  "
                         f"tokens [{seg.start_token:,}, {end})  {layout}")
        return "\n".join(lines)
