"""Key maps and shard merging: legacy TP / EP / grouped-expert layouts onto global tensors."""

import torch

from megatron_dllm.convert import keymap, readers
from megatron_dllm.convert.keymap import Split
from megatron_dllm.convert.legacy_file import LegacyFile


def _refs(tmp_path, tensors):
    path = str(tmp_path / "shards.pt")
    torch.save(tensors, path)
    return dict(LegacyFile(path).tensors(()))


def _assemble(shape, pieces, dtype=torch.float32):
    return readers.PieceTensor("k", shape, dtype, pieces).read_box((0,) * len(shape), shape)


def test_swiglu_tp_merge_deinterleaves(tmp_path):
    # global fc1 = [W ; V] (2F rows); TP rank r holds [W_r ; V_r] (Megatron ColumnParallel + GLU)
    F, h, tp = 6, 4, 3
    W, V = torch.randn(F, h), torch.randn(F, h)
    rows = F // tp
    local = {f"r{r}": torch.cat([W[r * rows:(r + 1) * rows], V[r * rows:(r + 1) * rows]]) for r in range(tp)}
    refs = _refs(tmp_path, local)
    pieces = [p for r in range(tp) for p in readers._pieces(refs[f"r{r}"], Split.SWIGLU, r, tp, True, 0)]
    assert torch.equal(_assemble((2 * F, h), pieces), torch.cat([W, V]))
    # a naive concatenation of the rank shards would be wrong
    assert not torch.equal(torch.cat([local[f"r{r}"] for r in range(tp)]), torch.cat([W, V]))


def test_column_row_replicated_splits(tmp_path):
    full = torch.randn(8, 6)
    refs = _refs(tmp_path, {"c0": full[:4], "c1": full[4:], "r0": full[:, :3], "r1": full[:, 3:],
                            "n0": full[0], "n1": full[0] + 100})
    col = readers._pieces(refs["c0"], Split.COLUMN, 0, 2, True, 0) + readers._pieces(refs["c1"], Split.COLUMN, 1, 2, True, 0)
    row = readers._pieces(refs["r0"], Split.ROW, 0, 2, True, 0) + readers._pieces(refs["r1"], Split.ROW, 1, 2, True, 0)
    rep = readers._pieces(refs["n0"], Split.REPLICATED, 0, 2, True, 0) + readers._pieces(refs["n1"], Split.REPLICATED, 1, 2, True, 0)
    assert torch.equal(_assemble((8, 6), col), full)
    assert torch.equal(_assemble((8, 6), row), full)
    assert torch.equal(_assemble((6,), rep), full[0])  # rank 0's copy only


def test_grouped_mlp_weights_decode_per_expert(tmp_path):
    # legacy GroupedMLP on one TP rank: weight1 = view(E_l, h, 2F) of [fc1_e^T], weight2 = view(E_l, F, h) of [fc2_e^T]
    E, F, h = 3, 5, 4
    fc1 = [torch.randn(2 * F, h) for _ in range(E)]
    fc2 = [torch.randn(h, F) for _ in range(E)]
    weight1 = torch.stack([w.t() for w in fc1]).contiguous().view(h, -1)
    weight2 = torch.stack([w.t() for w in fc2]).contiguous().view(-1, h)
    refs = _refs(tmp_path, {"w1": weight1, "w2": weight2})
    for e in range(E):
        p1 = [p for le, p in readers._pieces(refs["w1"], Split.GROUPED_FC1, 0, 1, True, E) if le == e]
        p2 = [p for le, p in readers._pieces(refs["w2"], Split.GROUPED_FC2, 0, 1, True, E) if le == e]
        assert torch.equal(_assemble((2 * F, h), p1), fc1[e])
        assert torch.equal(_assemble((h, F), p2), fc2[e])


def test_layer_rules_cover_local_te_and_grouped_names():
    cases = {
        "input_layernorm.weight": ("self_attention.linear_qkv.layer_norm_weight", Split.REPLICATED, None),
        "self_attention.linear_qkv.layer_norm_weight": ("self_attention.linear_qkv.layer_norm_weight", Split.REPLICATED, None),
        "self_attention.linear_qkv.weight": ("self_attention.linear_qkv.weight", Split.COLUMN, None),
        "self_attention.linear_proj.weight": ("self_attention.linear_proj.weight", Split.ROW, None),
        "self_attention.q_layernorm.weight": ("self_attention.q_layernorm.weight", Split.REPLICATED, None),
        "pre_mlp_layernorm.weight": ("mlp.linear_fc1.layer_norm_weight", Split.REPLICATED, None),
        "mlp.router.expert_bias": ("mlp.router.expert_bias", Split.REPLICATED, None),
        "mlp.experts.local_experts.3.linear_fc1.weight": ("mlp.experts.experts.linear_fc1.weight", Split.COLUMN, 3),
        "mlp.experts.local_experts.3.linear_fc2.weight": ("mlp.experts.experts.linear_fc2.weight", Split.ROW, 3),
        "mlp.experts.linear_fc1.weight12": ("mlp.experts.experts.linear_fc1.weight", Split.COLUMN, 12),
        "mlp.experts.weight2": ("mlp.experts.experts.linear_fc2.weight", Split.GROUPED_FC2, None),
        "mlp.shared_experts.linear_fc2.weight": ("mlp.shared_experts.linear_fc2.weight", Split.ROW, None),
    }
    for local, expected in cases.items():
        assert keymap.map_layer_key(local) == expected, local
    assert keymap.map_layer_key("self_attention.linear_qkv._extra_state") is None
    assert keymap.IGNORED.match("decoder.layers.0.self_attention.linear_qkv._extra_state")
    assert keymap.map_global_key("output_layer.weight") == ("output_layer.weight", Split.COLUMN)


def test_stacked_layer_requests_and_aliases():
    assert keymap.per_layer_request("decoder.layers.mlp.linear_fc2.weight", (2, 64, 128), (1, 0, 0), (1, 64, 128)) == (
        "decoder.layers.1.mlp.linear_fc2.weight", (64, 128), (0, 0), (64, 128))
    same = ("decoder.layers.3.mlp.router.weight", (8, 64), (0, 0), (8, 64))
    assert keymap.per_layer_request(*same) == same
    assert keymap.torch_dist_aliases("decoder.layers.1.mlp.linear_fc1.layer_norm_weight") == [
        "decoder.layers.1.pre_mlp_layernorm.weight"]
    assert keymap.torch_dist_aliases("decoder.layers.1.self_attention.linear_qkv.layer_norm_weight") == [
        "decoder.layers.1.input_layernorm.weight"]
