"""Seeds for deterministic noise: a generator per (seed, sample index, iteration).

DESIGN.md decision 7: every rank that holds a sequence must draw the same noise for it without
communication, and a resumed run must draw what it would have drawn. So the noise of a sample is
a function of three integers only, mixed into one 63-bit seed with SplitMix64 (Steele, Lea and
Flood 2014), which is stable across Python versions and platforms (Python's ``hash()`` is not).
"""

from __future__ import annotations

from typing import Union

import torch

STREAM_SAMPLE = 0  # generator stream for one sample's own draws
STREAM_GROUP = 1  # generator stream for what a stratification group shares (rotation, jitter)

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """The SplitMix64 output function of state x + golden gamma: a bijective 64-bit mixer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(seed: int, sample_index: int, iteration: int, stream: int = STREAM_SAMPLE) -> int:
    """Combine four integers in [0, 2**64) into a 63-bit seed.

    h = splitmix64(splitmix64(splitmix64(splitmix64(stream) ^ seed) ^ sample_index) ^ iteration),
    then the lowest bit is dropped (h >> 1). Changing this changes the noise of every run.
    """
    h = 0
    for name, value in (("stream", stream), ("seed", seed), ("sample_index", sample_index),
                        ("iteration", iteration)):
        value = int(value)
        if not 0 <= value <= _MASK64:
            raise ValueError(f"mix_seed: {name} must be an integer in [0, 2**64), got {value}")
        h = _splitmix64(h ^ value)
    return h >> 1


def noise_generator(seed: int, sample_index: int, iteration: int, stream: int = STREAM_SAMPLE,
                    device: Union[str, torch.device] = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded with ``mix_seed(seed, sample_index, iteration, stream)``.

    Keep the default CPU generator: CPU draws are the same on every machine, so a sample's noise
    does not depend on the device type; the few uniforms are then copied to the device.
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(mix_seed(seed, sample_index, iteration, stream))
    return gen
