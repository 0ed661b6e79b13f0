"""Source checkpoints, read one global tensor (or a box of it) at a time.

``open_source(path)`` finds the checkpoint under ``path`` (the ``--save`` root with its
``latest_checkpointed_iteration.txt``, or one ``iter_XXXXXXX`` / ``release`` directory) and returns a
:class:`Source` for either format:

* ``torch_dist`` (:class:`TorchDistSource`): keys are already global; read through
  :class:`~megatron_dllm.checkpoint.dcp_io.DcpReader`, with the spellings of other writers resolved
  (``keymap.torch_dist_aliases``, per-expert keys, ``_w`` / ``_v`` halves, layer-stacked keys).
* ``torch`` legacy (:class:`LegacySource`): ``mp_rank_TT[_PPP][_EEE]/model_optim_rng.pt`` per rank;
  every local tensor becomes a *piece* placed in its global tensor by the rules of ``keymap``
  (TP split dim, SwiGLU de-interleaving, PP layer offset, EP expert offset, grouped experts).

Both give ``source.tensor(key)`` -> an object with ``shape``, ``dtype`` and
``read_box(offsets, sizes, out=None)`` that reads only the bytes of the box; nothing else is kept
in memory. Sources are opened read-only and never modified.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from megatron_dllm.config import ModelConfig
from megatron_dllm.convert import keymap
from megatron_dllm.checkpoint.dcp_io import DcpReader, box_reads, narrow
from megatron_dllm.checkpoint.integrity import check_torch_dist
from megatron_dllm.convert.errors import ConversionError
from megatron_dllm.convert.keymap import Split
from megatron_dllm.checkpoint.layout import DLLM_META, detect_format, dllm_checkpoint_dir, find_checkpoint_dir
from megatron_dllm.checkpoint.layout import rank_dirs as _rank_dirs
from megatron_dllm.checkpoint.layout import read_meta_file
from megatron_dllm.checkpoint.safe_pickle import safe_torch_load
from megatron_dllm.convert.legacy_file import LegacyFile, LegacyTensor
from megatron_dllm.convert.source_config import (
    SourceLayout,
    layout_from_args,
    model_config_from_args,
    model_config_from_meta,
)



# --------------------------------------------------------------------------- tensors made of pieces
@dataclass
class Piece:
    """A box of a global tensor stored in one place; ``read(offsets, sizes)`` is relative to it.

    ``load_into(out)``, when given, reads the whole piece straight into ``out`` (no second copy).
    """

    offsets: Tuple[int, ...]
    sizes: Tuple[int, ...]
    read: Callable[[Tuple[int, ...], Tuple[int, ...]], torch.Tensor]
    load_into: Optional[Callable[[torch.Tensor], torch.Tensor]] = None


def _numel(sizes) -> int:
    n = 1
    for s in sizes:
        n *= s
    return n


class PieceTensor:
    """A global tensor assembled from non-overlapping pieces (shape, dtype, ``read_box``)."""

    def __init__(self, key: str, shape: Tuple[int, ...], dtype: torch.dtype, pieces: List[Piece]):
        self.key, self.shape, self.dtype, self.pieces = key, tuple(shape), dtype, pieces

    def read_box(self, offsets: Sequence[int], sizes: Sequence[int],
                 out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Elements ``[offsets, offsets + sizes)``; fills ``out`` when given. Shape ``sizes``."""
        offsets, sizes = tuple(offsets), tuple(sizes)
        if any(o < 0 or o + s > g for o, s, g in zip(offsets, sizes, self.shape)):
            raise ConversionError(f"{self.key}: box {offsets}+{sizes} outside {self.shape}")
        for piece in self.pieces:
            if piece.offsets == offsets and piece.sizes == sizes:
                if out is not None and piece.load_into is not None:
                    return piece.load_into(out)
                data = piece.read((0,) * len(sizes), sizes)
                return out.copy_(data) if out is not None else data
        result = out if out is not None else torch.empty(sizes, dtype=self.dtype)
        covered = 0
        for item in box_reads(self.key, self.shape, [(p.offsets, p.sizes) for p in self.pieces], offsets, sizes):
            part = self.pieces[item.storage_index.index].read(tuple(item.storage_offsets), tuple(item.lengths))
            narrow(result, item.dest_offsets, item.lengths).copy_(part)
            del part
            covered += _numel(item.lengths)
        if covered != _numel(sizes):
            raise ConversionError(
                f"{self.key}: the checkpoint stores {covered} of the {_numel(sizes)} elements of box "
                f"{offsets}+{sizes}: it is incomplete or its shards overlap")
        return result


def _slice_loader(load: Callable[[], torch.Tensor]):
    """A Piece.read over a tensor produced whole by ``load`` (slices the requested box)."""
    def read(offsets, sizes):
        data = load()
        if tuple(data.shape) == tuple(sizes):
            return data
        return data[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))]
    return read


class DcpTensor:
    """Global tensor ``key`` of a DcpReader, optionally one index of leading (stacked) axes."""

    def __init__(self, reader: DcpReader, key: str, prefix: Tuple[int, ...] = ()):
        info = reader.tensors[key]
        self.reader, self.key, self.prefix = reader, key, prefix
        self.shape = info.shape[len(prefix):]
        self.dtype = info.dtype

    def read_box(self, offsets, sizes, out=None):
        if not self.prefix:
            return self.reader.read_box(self.key, offsets, sizes, out=out)
        lead = (1,) * len(self.prefix)
        data = self.reader.read_box(self.key, self.prefix + tuple(offsets), lead + tuple(sizes),
                                    out=None if out is None else out.view(lead + tuple(sizes)))
        return data.view(tuple(sizes)) if out is None else out


def _box_piece(tensor, offsets: Tuple[int, ...], lead: int = 0) -> Piece:
    """A Piece at ``offsets`` wrapping a tensor-like; ``lead`` extra leading axes of size 1."""
    sizes = (1,) * lead + tuple(tensor.shape)

    def read(local_offsets, local_sizes):
        inner = tensor.read_box(local_offsets[lead:], local_sizes[lead:])
        return inner.view(local_sizes)
    return Piece(tuple(offsets), sizes, read)


# --------------------------------------------------------------------------- sources
@dataclass
class Source:
    """A checkpoint to convert: where it is, its format, configuration and tensors."""

    root: str
    path: str                      # the iteration directory
    format: str                    # "torch_dist" or "torch"
    iteration: Optional[int]
    config: ModelConfig
    config_origin: str             # "dllm_meta.json", "args", or "--model-config"
    layout: Optional[SourceLayout]
    meta: dict = field(default_factory=dict)

    def tensor(self, key: str, expected_shape: Optional[Tuple[int, ...]] = None):
        raise NotImplementedError

    def tensor_keys(self) -> List[str]:
        """Keys of every weight tensor the source holds (for the 'all consumed' check)."""
        raise NotImplementedError

    def used_keys(self) -> set:
        raise NotImplementedError


class TorchDistSource(Source):
    """A torch_dist (DCP) checkpoint directory."""

    def __init__(self, reader: DcpReader, **kwargs):
        super().__init__(**kwargs)
        self.reader = reader
        self._used: set = set()

    def tensor_keys(self) -> List[str]:
        return [k for k in self.reader.tensors if not keymap.IGNORED.match(k)]

    def used_keys(self) -> set:
        return set(self._used)

    def tensor(self, key: str, expected_shape: Optional[Tuple[int, ...]] = None):
        found = self._resolve(key, expected_shape)
        if found is None:
            raise ConversionError(
                f"{self.path} has no tensor {key!r} (nor any known spelling of it): the checkpoint does "
                f"not match its configuration ({self.config_origin})")
        return found

    def _resolve(self, key: str, expected_shape):
        reader = self.reader
        for candidate in [key] + keymap.torch_dist_aliases(key):
            if candidate in reader:
                self._used.add(candidate)
                return DcpTensor(reader, candidate)
        layer = keymap.split_layer_key(key)
        if layer is not None:  # layer-stacked keys of homogeneous decoders: decoder.layers.<rest> [L, ...]
            index, rest = layer
            for candidate in [key] + keymap.torch_dist_aliases(key):
                stacked = "decoder.layers." + keymap.split_layer_key(candidate)[1]
                if stacked in reader:
                    self._used.add(stacked)
                    return DcpTensor(reader, stacked, (index,))
        if keymap.EXPERT_PREFIX in key and expected_shape:  # per-expert (singleton) keys
            head, rest = key.split(keymap.EXPERT_PREFIX, 1)
            subs = []
            for expert in range(expected_shape[0]):
                sub = self._resolve(f"{head}{keymap.EXPERT_PREFIX}{expert}.{rest}", expected_shape[1:])
                if sub is None:
                    break
                subs.append(sub)
            if subs and len(subs) == expected_shape[0]:
                parts = [_box_piece(sub, (e,) + (0,) * len(sub.shape), lead=1) for e, sub in enumerate(subs)]
                return PieceTensor(key, (len(subs),) + tuple(subs[0].shape), subs[0].dtype, parts)
        if keymap.is_fc1(key):  # GLU halves stored separately: <key>_w, <key>_v
            half = tuple(expected_shape) if expected_shape else None
            if half:
                half = (half[0] // 2,) + half[1:]
            w = self._resolve(key + "_w", half)
            v = self._resolve(key + "_v", half)
            if w is not None and v is not None:
                pieces = [_box_piece(w, (0,) * len(w.shape)), _box_piece(v, (w.shape[0],) + (0,) * (len(v.shape) - 1))]
                return PieceTensor(key, (w.shape[0] + v.shape[0],) + tuple(w.shape[1:]), w.dtype, pieces)
        return None


class LegacySource(Source):
    """Megatron-LM ``--ckpt-format torch`` checkpoint: one ``model_optim_rng.pt`` per model-parallel rank."""

    def __init__(self, states: Dict[Tuple[int, int, int], LegacyFile], **kwargs):
        """``states``: the mapped file of each (TP, PP, EP) rank."""
        super().__init__(**kwargs)
        self._pieces: Dict[str, List[Piece]] = {}
        self._dtypes: Dict[str, torch.dtype] = {}
        self._used: set = set()
        self._index(states)

    def tensor_keys(self) -> List[str]:
        return list(self._pieces)

    def used_keys(self) -> set:
        return set(self._used)

    def tensor(self, key: str, expected_shape=None):
        pieces = self._pieces.get(key)
        if pieces is None:
            raise ConversionError(
                f"{self.path} has no tensor for {key!r}: the checkpoint does not match its configuration "
                f"({self.config_origin})")
        self._used.add(key)
        shape = tuple(max(p.offsets[d] + p.sizes[d] for p in pieces) for d in range(len(pieces[0].sizes)))
        return PieceTensor(key, shape, self._dtypes[key], pieces)

    # -- building the index of pieces
    def _add(self, key: str, piece: Piece, dtype: torch.dtype) -> None:
        self._pieces.setdefault(key, []).append(piece)
        self._dtypes[key] = dtype

    def _index(self, states) -> None:
        cfg, lay = self.config, self.layout
        tp, pp, ep = (lay.tensor_model_parallel_size, lay.pipeline_model_parallel_size,
                      lay.expert_model_parallel_size)
        vpp = lay.virtual_pipeline_model_parallel_size or 1
        if cfg.num_layers % (pp * vpp):
            raise ConversionError(f"{cfg.num_layers} layers do not split evenly over PP {pp} x VPP {vpp}")
        per_chunk = cfg.num_layers // (pp * vpp)
        experts_local = (cfg.num_experts or 0) // ep
        unknown = []
        for (t, p, e), file in sorted(states.items()):
            chunks = [("model",)] if "model" in file.state() else [(f"model{c}",) for c in range(vpp)]
            for chunk_index, prefix in enumerate(chunks):
                for local_key, ref in file.tensors(prefix):
                    if keymap.IGNORED.match(local_key):
                        continue
                    if keymap.DROPPED.match(local_key):
                        continue
                    layer = keymap.split_layer_key(local_key)
                    if layer is not None:
                        index, suffix = layer
                        mapped = keymap.map_layer_key(suffix)
                        if mapped is None:
                            unknown.append(local_key)
                            continue
                        rest, split, expert = mapped
                        global_layer = (chunk_index * pp + p) * per_chunk + index
                        key = f"decoder.layers.{global_layer}.{rest}"
                    else:
                        mapped = keymap.map_global_key(local_key)
                        if mapped is None:
                            unknown.append(local_key)
                            continue
                        key, split = mapped
                        expert = None
                        if key == "output_layer.weight" and not cfg.untie_embeddings_and_output_weights:
                            continue  # tied: the last stage's copy of the embedding
                    is_expert = keymap.EXPERT_PREFIX in key
                    if not is_expert and e != 0:
                        continue  # dense tensors are replicated over expert-parallel ranks
                    if split == Split.COLUMN and keymap.is_fc1(key) and cfg.swiglu:
                        split = Split.SWIGLU
                    for piece in _pieces(ref, split, t, tp, cfg.swiglu, experts_local):
                        if split in (Split.GROUPED_FC1, Split.GROUPED_FC2):
                            local_expert, piece = piece
                            expert = local_expert
                        if is_expert:
                            global_expert = e * experts_local + expert
                            piece = Piece((global_expert,) + piece.offsets, (1,) + piece.sizes,
                                          _unsqueeze_reader(piece.read))
                        self._add(key, piece, ref.dtype)
        if unknown:
            shown = ", ".join(unknown[:4]) + (" ..." if len(unknown) > 4 else "")
            raise ConversionError(f"{self.path} holds tensors this converter cannot place ({shown}): "
                                  "an architecture feature megatron_dllm does not support")


def _unsqueeze_reader(read):
    def inner(offsets, sizes):
        return read(offsets[1:], sizes[1:]).view(sizes)
    return inner


def _pieces(ref: LegacyTensor, split: Split, t: int, tp: int, gated: bool, experts_local: int):
    """Pieces of one rank's local tensor ``ref`` placed in its global tensor (TP rank t of tp)."""
    shape = ref.shape
    into = lambda out: ref.load(out=out)  # noqa: E731 - whole local tensor straight into a buffer
    if split == Split.REPLICATED:
        return [Piece((0,) * len(shape), shape, _slice_loader(ref.load), into)] if t == 0 else []
    if split == Split.COLUMN:
        return [Piece((t * shape[0],) + (0,) * (len(shape) - 1), shape, _slice_loader(ref.load), into)]
    if split == Split.ROW:
        return [Piece((0, t * shape[1]) + (0,) * (len(shape) - 2), shape, _slice_loader(ref.load), into)]
    if split == Split.SWIGLU:
        return _swiglu_pieces(ref.shape, lambda a, b: ref.load(rows=(a, b)), t, tp)
    if split == Split.GROUPED_FC1:  # [h, E_l * 2F/T]: memory is [E_l, h, 2F/T]; expert e = block[e].T
        hidden = shape[0]
        out = []
        for local_expert, sub in _grouped_blocks(ref, experts_local, weight1=True):
            cols = sub.shape[1]

            def load_t(a, b, sub=sub):
                return sub.load().t()[a:b]
            pieces = (_swiglu_pieces((cols, hidden), load_t, t, tp) if gated else
                      [Piece((t * cols, 0), (cols, hidden), _slice_loader(lambda sub=sub: sub.load().t()))])
            out.extend((local_expert, p) for p in pieces)
        return out
    if split == Split.GROUPED_FC2:  # [E_l * F/T, h]: expert e = rows block e, transposed -> [h, F/T]
        hidden = shape[1]
        out = []
        for local_expert, sub in _grouped_blocks(ref, experts_local, weight1=False):
            rows = sub.shape[0]
            out.append((local_expert, Piece((0, t * rows), (hidden, rows),
                                            _slice_loader(lambda sub=sub: sub.load().t()))))
        return out
    raise ConversionError(f"unknown split {split}")


def _grouped_blocks(ref: LegacyTensor, experts: int, weight1: bool):
    """(local expert, LegacyTensor of its block) of a legacy GroupedMLP weight1 / weight2.

    weight1 ``[h, E_l * 2F/T]`` is used as ``view(E_l, h, 2F/T)``: expert e is block e, ``[h, 2F/T]``.
    weight2 ``[E_l * F/T, h]`` is used as ``view(E_l, F/T, h)``: expert e is rows block e.
    """
    if experts <= 0 or ref.numel % experts:
        raise ConversionError(f"grouped expert tensor of shape {list(ref.shape)} does not split into {experts} experts")
    if weight1:
        hidden = ref.shape[0]
        block = (hidden, ref.numel // (experts * hidden))
    else:
        hidden = ref.shape[1]
        block = (ref.shape[0] // experts, hidden)
    for e in range(experts):
        yield e, ref.sub(block, e * block[0] * block[1])


def _swiglu_pieces(shape, load_rows, t: int, tp: int) -> List[Piece]:
    """A local ``[w_t ; v_t]`` (rows 2h) -> w at rows t*h and v at rows tp*h + t*h of ``[W ; V]``."""
    half = shape[0] // 2
    rest = tuple(shape[1:])
    zeros = (0,) * len(rest)

    def part(base):
        def read(offsets, sizes):
            data = load_rows(base + offsets[0], base + offsets[0] + sizes[0])
            if rest and tuple(data.shape[1:]) != tuple(sizes[1:]):
                data = data[(slice(None),) + tuple(slice(o, o + s) for o, s in zip(offsets[1:], sizes[1:]))]
            return data
        return read
    return [Piece((t * half,) + zeros, (half,) + rest, part(0)),
            Piece((tp * half + t * half,) + zeros, (half,) + rest, part(half))]


# --------------------------------------------------------------------------- finding and opening
def open_source(path: str, model_config: Optional[ModelConfig] = None) -> Source:
    """Open the checkpoint under ``path`` read-only. ``model_config`` overrides the recorded config."""
    directory, iteration = find_checkpoint_dir(path)
    fmt = detect_format(directory)
    if fmt == "torch_dist":
        return _open_torch_dist(path, directory, iteration, model_config)
    return _open_legacy(path, directory, iteration, model_config)


def _open_torch_dist(root, directory, iteration, model_config) -> TorchDistSource:
    check_torch_dist(directory, megatron_lm=True)  # every pickle and data file, before anything is used
    reader = DcpReader(directory)
    meta, origin, config = {}, None, model_config
    meta_file = os.path.join(directory, DLLM_META)
    if os.path.isfile(meta_file):
        meta = read_meta_file(directory)
        iteration = meta.get("iteration", iteration)
        if config is None:
            config, origin = model_config_from_meta(meta, meta_file), DLLM_META
    common = os.path.join(directory, "common.pt")
    if config is None and os.path.isfile(common):
        saved = safe_torch_load(common, common, megatron_lm=True)
        args = saved.get("args") if isinstance(saved, dict) else None
        if args is not None:
            config, origin = model_config_from_args(args, common), "args"
            if iteration is None and isinstance(saved.get("iteration"), int):
                iteration = saved["iteration"]
    if config is None:
        raise ConversionError(f"{directory} records no model configuration (no {DLLM_META}, no args in "
                              "common.pt): pass --model-config FILE.yaml")
    return TorchDistSource(reader, root=root, path=directory, format="torch_dist", iteration=iteration,
                           config=config, config_origin=origin or "--model-config", layout=None, meta=meta)


def _open_legacy(root, directory, iteration, model_config) -> LegacySource:
    names = _rank_dirs(directory)
    first = os.path.join(directory, names[0], "model_optim_rng.pt")
    if not os.path.isfile(first):
        raise ConversionError(f"{first} is missing: the checkpoint is partial")
    file0 = LegacyFile(first)
    state0 = file0.state()
    args = state0.get("args") if isinstance(state0, dict) else None
    if args is None:
        raise ConversionError(f"{first} holds no 'args': cannot tell its parallel layout")
    layout = layout_from_args(args)
    tp, pp, ep = (layout.tensor_model_parallel_size, layout.pipeline_model_parallel_size,
                  layout.expert_model_parallel_size)
    files = {}
    for t in range(tp):
        for p in range(pp):
            for e in range(ep):
                name = f"mp_rank_{t:02d}" + (f"_{p:03d}" if pp > 1 else "") + (f"_{e:03d}" if ep > 1 else "")
                files[(t, p, e)] = os.path.join(directory, name, "model_optim_rng.pt")
    missing = [os.path.relpath(f, directory) for f in files.values() if not os.path.isfile(f)]
    if missing:
        raise ConversionError(f"legacy checkpoint {directory} (TP {tp} x PP {pp} x EP {ep}) is partial: "
                              f"missing {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
    config = model_config or model_config_from_args(args, first)
    states = {}
    for rank, file in files.items():
        handle = file0 if file == first else LegacyFile(file)
        state = handle.state()
        if not isinstance(state, dict) or not any(k == "model" or k.startswith("model") for k in state):
            raise ConversionError(f"{file} holds no model state dict")
        states[rank] = handle
    if iteration is None and isinstance(state0.get("iteration"), int):
        iteration = state0["iteration"]
    return LegacySource(states, root=root, path=directory, format="torch", iteration=iteration,
                        config=config, config_origin="--model-config" if model_config else "args",
                        layout=layout, meta={"checkpoint_version": state0.get("checkpoint_version")})


def read_dllm_checkpoint(path: str):
    """(iteration dir, dllm_meta dict, ModelConfig) of a megatron_dllm checkpoint under ``path``."""
    directory = dllm_checkpoint_dir(path)
    meta = read_meta_file(directory)
    return directory, meta, model_config_from_meta(meta, os.path.join(directory, DLLM_META))
