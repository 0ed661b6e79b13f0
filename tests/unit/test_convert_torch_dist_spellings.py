"""torch_dist sources written by other Megatron-Core setups: every known spelling resolves to our keys."""

import torch

from megatron_dllm.config import ModelConfig
from megatron_dllm.checkpoint.dcp_io import DcpReader, DcpWriter
from megatron_dllm.convert.readers import TorchDistSource


def _source(path, tensors):
    writer = DcpWriter(path)
    for key, value in tensors.items():
        writer.add_tensor(key, value.shape, (0,) * value.dim(), value)
    writer.finish()
    return TorchDistSource(DcpReader(path), root=path, path=path, format="torch_dist", iteration=1,
                           config=ModelConfig(), config_origin="test", layout=None)


def test_te_norm_names_stacked_layers_and_singleton_experts(tmp_path):
    gen = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    w = {e: r(4, 6) for e in range(3)}
    v = {e: r(4, 6) for e in range(3)}
    fc2 = {e: r(6, 4) for e in range(3)}
    stacked_proj = r(2, 6, 6)
    tensors = {
        "decoder.layers.1.pre_mlp_layernorm.weight": r(6),                  # TE MoE layer: unfused norm
        "decoder.layers.self_attention.linear_proj.weight": stacked_proj,   # pre-0.10 stacked layers
        **{f"decoder.layers.1.mlp.experts.experts.{e}.linear_fc1.weight_w": w[e] for e in range(3)},  # singleton
        **{f"decoder.layers.1.mlp.experts.experts.{e}.linear_fc1.weight_v": v[e] for e in range(3)},
        **{f"decoder.layers.1.mlp.experts.experts.{e}.linear_fc2.weight": fc2[e] for e in range(3)},
        "optimizer.state.exp_avg.x": r(2),
    }
    src = _source(str(tmp_path / "ckpt"), tensors)
    norm = src.tensor("decoder.layers.1.mlp.linear_fc1.layer_norm_weight")
    assert torch.equal(norm.read_box((0,), (6,)), tensors["decoder.layers.1.pre_mlp_layernorm.weight"])
    proj = src.tensor("decoder.layers.1.self_attention.linear_proj.weight")
    assert proj.shape == (6, 6) and torch.equal(proj.read_box((0, 0), (6, 6)), stacked_proj[1])
    fc1 = src.tensor("decoder.layers.1.mlp.experts.experts.linear_fc1.weight", (3, 8, 6))
    assert fc1.shape == (3, 8, 6)
    assert torch.equal(fc1.read_box((2, 0, 0), (1, 8, 6))[0], torch.cat([w[2], v[2]]))
    assert torch.equal(fc1.read_box((0, 4, 0), (3, 4, 6)), torch.stack([v[e] for e in range(3)]))
    down = src.tensor("decoder.layers.1.mlp.experts.experts.linear_fc2.weight", (3, 6, 4))
    assert torch.equal(down.read_box((1, 0, 0), (2, 6, 4)), torch.stack([fc2[1], fc2[2]]))
    assert set(src.tensor_keys()) - src.used_keys() == set()  # optimizer state is ignored, all else used
