"""GlobalBatchSampler: consecutive global sample indices, DP slices, micro-batches, resume."""

import itertools

import pytest

from megatron_dllm.data.errors import DataError
from megatron_dllm.data.sampler import GlobalBatchSampler


def test_value_table_two_dp_ranks():
    # G = 8, mbs = 2, DP = 2: each rank reads 4 samples per step as 2 micro-batches.
    r0 = GlobalBatchSampler(100, 0, 8, 2, 0, 2)
    r1 = GlobalBatchSampler(100, 0, 8, 2, 1, 2)
    assert (r0.samples_per_rank, r0.num_micro_batches) == (4, 2)
    assert r0.micro_batches_for_step(0) == [[0, 1], [2, 3]]
    assert r1.micro_batches_for_step(0) == [[4, 5], [6, 7]]
    assert r0.micro_batches_for_step(1) == [[8, 9], [10, 11]]
    assert r1.micro_batches_for_step(3) == [[28, 29], [30, 31]]
    assert r0.consumed_after(0) == 8 and r0.consumed_after(2) == 24


def test_value_table_with_consumed_samples_and_wrap():
    s = GlobalBatchSampler(10, 6, 6, 3, 1, 2)  # G = 6, DP = 2 -> rank 1 reads samples 9..11
    assert s.micro_batches_for_step(0) == [[9, 10, 11]]
    assert s.micro_batches_for_step(1) == [[15, 16, 17]]
    # global indices keep increasing; the dataset index wraps
    assert [s.dataset_index(g) for g in (9, 10, 11, 15, 16, 17)] == [9, 0, 1, 5, 6, 7]


@pytest.mark.parametrize("dp,mbs", [(1, 1), (1, 4), (2, 2), (4, 1), (4, 3)])
def test_dp_slices_are_disjoint_and_cover_the_global_batch(dp, mbs):
    G, consumed = 24, 5  # divisible by every dp x mbs above
    for step in range(3):
        per_rank = [GlobalBatchSampler(50, consumed, G, mbs, r, dp).micro_batches_for_step(step)
                    for r in range(dp)]
        flat = [i for mb_list in per_rank for mb in mb_list for i in mb]
        assert all(len(mb) == mbs for mbl in per_rank for mb in mbl)
        assert len(flat) == len(set(flat)) == G
        assert sorted(flat) == list(range(consumed + step * G, consumed + (step + 1) * G))
        # rank r holds the r-th contiguous slice, in order
        for r, mbl in enumerate(per_rank):
            ids = [i for mb in mbl for i in mb]
            start = consumed + step * G + r * (G // dp)
            assert ids == list(range(start, start + G // dp))


def test_resume_from_consumed_samples_gives_the_same_indices():
    G, steps_done = 8, 3
    full = list(itertools.islice(iter(GlobalBatchSampler(40, 4, G, 2, 1, 2)), 7))
    resumed = list(itertools.islice(iter(GlobalBatchSampler(40, 4 + steps_done * G, G, 2, 1, 2)), 4))
    assert resumed == full[steps_done:]
    # iteration is micro_batches_for_step in order
    s = GlobalBatchSampler(40, 4, G, 2, 1, 2)
    assert full == [s.micro_batches_for_step(k) for k in range(7)]


def test_non_divisible_global_batch_is_refused():
    with pytest.raises(DataError) as err:
        GlobalBatchSampler(100, 0, 6, 4, 0, 1)
    assert str(err.value) == ("--global-batch-size 6 is not divisible by --micro-batch-size 4 x "
                              "data-parallel size 1")
    with pytest.raises(DataError, match="--global-batch-size 8 is not divisible by --micro-batch-size 2 x data-parallel size 3"):
        GlobalBatchSampler(100, 0, 8, 2, 0, 3)


def test_other_bad_arguments():
    with pytest.raises(DataError, match=r"data-parallel rank 2 is outside \[0, 2\)"):
        GlobalBatchSampler(10, 0, 4, 1, 2, 2)
    with pytest.raises(DataError, match="consumed samples must be an integer >= 0"):
        GlobalBatchSampler(10, -1, 4, 1, 0, 1)
    with pytest.raises(DataError, match="total samples must be an integer >= 1"):
        GlobalBatchSampler(0, 0, 4, 1, 0, 1)
    with pytest.raises(DataError, match="step index must be >= 0"):
        GlobalBatchSampler(10, 0, 4, 1, 0, 1).micro_batches_for_step(-1)
