"""Pure parts of the memory planner: DDP buffer padding, layer placement, in-flight micro-batches."""

from megatron_dllm.model.activations import inflight_units
from megatron_dllm.model.memory import ParamEntry, buffer_layout, layer_ranks


def _entries(*sizes, shared=()):
    return [ParamEntry(f"p{i}", n, shared_embedding=i in shared) for i, n in enumerate(sizes)]


def test_buffer_without_distributed_optimizer_is_unpadded():
    assert buffer_layout(_entries(10, 100), dp=4, distributed=False, bucket_size=None) == (110, [110, 0, 0, 0])


def test_buffer_with_distributed_optimizer_pads_and_shards():
    # reverse order: p1 (100) at 0..100, p0 starts at 128 (64-aligned) .. 138, bucket padded to lcm(2, 128)
    numel, shards = buffer_layout(_entries(10, 100), dp=2, distributed=True, bucket_size=None)
    assert numel == 256 and shards == [100, 10]


def test_shared_embedding_gets_its_own_bucket():
    # p1 (shared, 100) closes a bucket of its own at 128; p0 starts the next bucket at 128
    numel, shards = buffer_layout(_entries(10, 100, shared=(1,)), dp=2, distributed=True, bucket_size=None)
    assert numel == 256 and shards == [64 + 10, 36]


def test_layer_ranks_follow_megatron_interleaving():
    assert layer_ranks(4, 2, None) == [(0, 0), (0, 0), (1, 0), (1, 0)]
    assert layer_ranks(4, 2, 2) == [(0, 0), (1, 0), (0, 1), (1, 1)]


def test_inflight_units_value_table():
    # 1F1B: PP - rank micro-batches, capped by the number of micro-batches
    assert [inflight_units(r, 4, 1, None) for r in range(4)] == [4, 3, 2, 1]
    assert [inflight_units(r, 4, 1, 2) for r in range(4)] == [2, 2, 2, 1]
    # interleaved (2 chunks per rank): 2 (PP - rank - 1) + (vpp - 1) PP + 1 chunk passes
    assert [inflight_units(r, 4, 2, None) for r in range(4)] == [11, 9, 7, 5]
    assert inflight_units(0, 1, 1, None) == 1


def test_complementary_copies_count_as_rows_in_the_activations():
    """A sample trained with its complementary copy (SFT always, --dllm-complementary-masking) puts
    2 x micro-batch rows through the model: the planner counts them (before, SFT plans were ~2x low)."""
    import dataclasses

    from megatron_dllm.arguments import parse_args
    from megatron_dllm.config import ParallelConfig
    from megatron_dllm.model.memory import PlanOptions, _activation_bytes
    from megatron_dllm.model.presets import get_preset
    from megatron_dllm.train.dry_run import plan_options

    model = get_preset("tiny-moe")
    layers = model.moe_layer_pattern() or [0] * model.num_layers
    one = PlanOptions(micro_batch_size=2, device="cpu")
    for layout in ("bd", "mdlm"):
        copies = _activation_bytes(model, ParallelConfig(), dataclasses.replace(one, rows_per_sample=2), layers, 0, layout)
        doubled = _activation_bytes(model, ParallelConfig(), dataclasses.replace(one, micro_batch_size=4), layers, 0,
                                    layout)
        assert copies == doubled and copies[0] > _activation_bytes(model, ParallelConfig(), one, layers, 0, layout)[0]
    base = ["--preset", "tiny-moe", "--mock-data"]
    assert plan_options(parse_args(base + ["--dllm-objective", "sft"]), 1).rows_per_sample == 2
    assert plan_options(parse_args(base + ["--dllm-complementary-masking"]), 1).rows_per_sample == 2
    assert plan_options(parse_args(base), 1).rows_per_sample == 1
    assert plan_options(parse_args(base + ["--dllm-objective", "ar"]), 1).rows_per_sample == 1
