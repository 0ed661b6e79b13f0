"""Block-size curriculum: value tables, phases, transitions, round trip, and clear errors."""

import pytest

from megatron_dllm.diffusion.curriculum import BlockSchedule, Segment, Transition, uses_bd_layout

M, B = 10**6, 10**9

LLADA2 = "warmup:1->4->32->64->L@1B; stable:L@100B; decay:2048->1024->512->256->128->64->32@1B"


def test_llada2_schedule_value_table_on_4096():
    s = BlockSchedule.parse(LLADA2, seq_len=4096)
    table = [  # (consumed tokens, block size, phase, BD layout)
        (0, 1, "warmup", True),
        (1 * B - 1, 1, "warmup", True),
        (1 * B, 4, "warmup", True),
        (2 * B, 32, "warmup", True),
        (3 * B + 5, 64, "warmup", True),
        (4 * B, 4096, "warmup", False),
        (5 * B - 1, 4096, "warmup", False),
        (5 * B, 4096, "stable", False),
        (60 * B, 4096, "stable", False),
        (105 * B - 1, 4096, "stable", False),
        (105 * B, 2048, "decay", True),
        (106 * B, 1024, "decay", True),
        (107 * B, 512, "decay", True),
        (108 * B, 256, "decay", True),
        (109 * B, 128, "decay", True),
        (110 * B, 64, "decay", True),
        (111 * B - 1, 64, "decay", True),
        (111 * B, 32, "decay", True),
        (10**15, 32, "decay", True),   # the last segment lasts forever
    ]
    for tokens, size, phase, bd in table:
        got = (s.block_size_at(tokens), s.phase_at(tokens), s.uses_bd_layout_at(tokens))
        assert got == (size, phase, bd), tokens
    assert len(s.segments) == 13
    assert s.segments[0] == Segment("warmup", 1, 0, 1 * B)
    assert s.segments[-1] == Segment("decay", 32, 111 * B, None)


def test_transitions_and_round_trip():
    s = BlockSchedule.parse("warmup:4@1M,32@2M;stable:L@3M;decay:32@500K", seq_len=64)
    assert s.transitions() == [
        Transition(1 * M, "warmup", 4, "warmup", 32),
        Transition(3 * M, "warmup", 32, "stable", 64),
        Transition(6 * M, "stable", 64, "decay", 32),
    ]
    assert s.to_spec() == "warmup:4@1M,32@2M;stable:L@3M;decay:32@inf"
    assert BlockSchedule.parse(s.to_spec(), 64) == s
    llada2 = BlockSchedule.parse(LLADA2, 4096)
    assert BlockSchedule.parse(llada2.to_spec(), 4096) == llada2


def test_small_value_table_with_suffixes_and_inf():
    s = BlockSchedule.parse("warmup: 1 -> 8 @ 1.5k ; decay: 4@2500, 2@inf", seq_len=8)
    table = {0: 1, 1499: 1, 1500: 8, 2999: 8, 3000: 4, 5499: 4, 5500: 2, 10**12: 2}
    assert {k: s.block_size_at(k) for k in table} == table
    assert [s.phase_at(k) for k in (0, 3000, 5500)] == ["warmup", "decay", "decay"]


def test_constant_schedule_and_layout():
    s = BlockSchedule.constant(32, seq_len=2048)
    assert s.block_size_at(0) == 32 and s.block_size_at(10**13) == 32 and s.phase_at(7) == "stable"
    assert uses_bd_layout(32, 2048) is True
    assert uses_bd_layout(2048, 2048) is False
    with pytest.raises(ValueError, match="block size 48 must be a positive divisor of seq_len 2048"):
        uses_bd_layout(48, 2048)


def test_describe_mentions_layouts():
    text = BlockSchedule.parse("warmup:4@1K;stable:L@2K", 16).describe()
    assert "BD [xt;x0]" in text and "MDLM [xt]" in text and "[1,000, inf)" in text


@pytest.mark.parametrize("spec, message", [
    ("", "empty block-size schedule; expected e.g. 'warmup:1->4->32->64->L@1B;"),
    ("warmup:48@1M", "phase 'warmup', segment '48@1M': block size 48 does not divide seq_len 4096; "
                     "use a divisor of 4096 (nearest: 32 or 64)"),
    ("stable:8192@1M", "phase 'stable', segment '8192@1M': block size 8192 exceeds seq_len 4096; "
                       "use at most 'L'"),
    ("warmup:0@1M", "phase 'warmup', segment '0@1M': block size '0' is not a positive integer or 'L'"),
    ("warmup:x@1M", "block size 'x' is not a positive integer or 'L'"),
    ("warmup:4@1M,1@1M", "phase 'warmup': block sizes must not decrease, but 4 is followed by 1; "
                         "move the smaller sizes to a 'decay' phase"),
    ("decay:32->64@1M", "phase 'decay': block sizes must not increase, but 32 is followed by 64; "
                        "move the larger sizes to a 'warmup' phase"),
    ("stable:L@1M,64@1M", "phase 'stable': holds one block size, got 4096 and 64"),
    ("warmup:L@1M;stable:64@1M", "warmup ends at block size 4096 but stable holds 64; "
                                 "warmup must end at or below the stable size"),
    ("stable:64@1M;decay:L@1M", "decay starts at block size 4096, above the preceding size 64"),
    ("warmup:64@1M;decay:128@1M", "decay starts at block size 128, above the preceding size 64"),
    ("stable:L@1M;warmup:1@1M", "phase 'warmup' after 'stable'; phases must come in the order"),
    ("stable:L@1M;stable:L@1M", "phase 'stable' appears twice; list its segments once, comma-separated"),
    ("cooldown:32@1M", "unknown phase 'cooldown'; phases are ('warmup', 'stable', 'decay')"),
    ("32@1M", "phase '32@1M' has no ':'; write NAME:SIZE@TOKENS"),
    ("warmup:32", "phase 'warmup', segment '32': expected SIZE@TOKENS (e.g. 32@1B or 1->4@500M)"),
    ("warmup:32@1.5", "token count '1.5' is not a whole number of tokens"),
    ("warmup:32@0", "token count must be positive, got '0'"),
    ("warmup:32@1X", "token count '1X' is not a number with an optional K/M/B/T suffix"),
    ("warmup:32@inf;stable:L@1M",
     "phase 'warmup': block size 32 has 'inf' tokens but is not the last segment; give it a token count"),
    ("decay:64->32@inf", "phase 'decay': block size 64 has 'inf' tokens but is not the last segment"),
])
def test_invalid_specs_raise_clear_errors(spec, message):
    with pytest.raises(ValueError) as err:
        BlockSchedule.parse(spec, seq_len=4096)
    assert message in str(err.value)


def test_negative_tokens_rejected():
    s = BlockSchedule.constant(4, 8)
    with pytest.raises(ValueError, match="consumed_tokens must be >= 0, got -1"):
        s.block_size_at(-1)
