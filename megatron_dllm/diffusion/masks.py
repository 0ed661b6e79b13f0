"""Attention masks as index predicates (True = the query may attend to the key).

One predicate per mask kind, written with tensor ops only (no Python branching on tensor values),
so the same function serves as a FlexAttention ``mask_mod`` and builds dense boolean masks by
broadcasting. Kinds (METHOD.md 3.3, 5; b(k) = k // block_size on packed positions):

* ``"block_diffusion"``: input ``[xt ; x0]`` of length 2L (positions i < L are the noisy half).
  xt -> xt: same block; xt -> x0: strictly earlier block; x0 -> x0: same or earlier block;
  x0 -> xt: never. Block size L is the MDLM case (xt never sees x0).
* ``"block_diffusion_causal_clean"``: the same, but the clean half is strictly causal
  (x0 -> x0: key position <= query position), as in Efficient-DLM / I-DLM
  (``--dllm-clean-stream-causal``); a next-token loss on x0 then has no leak.
* ``"bidirectional"``: input of length L, every query sees every key (the MDLM layout).
* ``"block_causal"``: input of length L, b(key) <= b(query) (decoding; block size 1 = causal).

With ``document_ids`` ([L], or [B, L] for a packed batch whose rows differ) a pair must also lie in
the same document; position i of the 2L layout has document ``document_ids[i mod L]``. A block may
straddle a document boundary: the document restriction then splits it.

Materialisers: ``dense_mask`` (bool, any device) and ``flex_block_mask`` (FlexAttention
``BlockMask``, for CUDA), both LRU-cached on (kind, L, block size, documents, device). The cache key
holds the document ids' bytes, so pass CPU document ids (as the data pipeline makes them): a device
tensor costs a device-to-host copy. Cached masks are shared: do not modify them in place.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Union

import torch

KINDS = ("block_diffusion", "block_diffusion_causal_clean", "bidirectional", "block_causal")

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Predicates on (query index, key index)


def block_diffusion_predicate(q_idx: torch.Tensor, kv_idx: torch.Tensor, seq_len: int,
                              block_size: int, causal_clean: bool = False) -> torch.Tensor:
    """BD mask on the 2L layout [xt ; x0]; indices in [0, 2L), broadcastable int tensors.

    ``causal_clean`` makes x0 -> x0 strictly causal (key position <= query position) instead of
    block-causal; the noisy half is the same either way.
    """
    q_noisy = q_idx < seq_len
    kv_noisy = kv_idx < seq_len
    q_block = (q_idx % seq_len) // block_size
    kv_block = (kv_idx % seq_len) // block_size
    xt_xt = q_noisy & kv_noisy & (q_block == kv_block)
    xt_x0 = q_noisy & ~kv_noisy & (q_block > kv_block)
    clean_order = (kv_idx <= q_idx) if causal_clean else (q_block >= kv_block)
    x0_x0 = ~q_noisy & ~kv_noisy & clean_order
    return xt_xt | xt_x0 | x0_x0


def block_diffusion_causal_clean_predicate(q_idx: torch.Tensor, kv_idx: torch.Tensor, seq_len: int,
                                           block_size: int) -> torch.Tensor:
    """BD mask on [xt ; x0] whose clean half is strictly causal (x0 -> x0: key <= query)."""
    return block_diffusion_predicate(q_idx, kv_idx, seq_len, block_size, causal_clean=True)


def bidirectional_predicate(q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
    """Everything attends to everything (documents are added separately)."""
    return (q_idx >= 0) & (kv_idx >= 0)


def block_causal_predicate(q_idx: torch.Tensor, kv_idx: torch.Tensor, block_size: int) -> torch.Tensor:
    """Key block at or before the query block."""
    return (kv_idx // block_size) <= (q_idx // block_size)


def _check(kind: str, seq_len: int, block_size: Optional[int]) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {KINDS}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if kind != "bidirectional":
        if block_size is None or block_size < 1 or seq_len % block_size != 0:
            raise ValueError(
                f"{kind} mask: block_size must be a positive divisor of seq_len={seq_len}, "
                f"got {block_size}"
            )


def make_mask_mod(kind: str, seq_len: int, block_size: Optional[int] = None,
                  document_ids: Optional[torch.Tensor] = None) -> MaskMod:
    """The predicate of ``kind`` as a FlexAttention mask_mod ``(b, h, q_idx, kv_idx) -> bool``.

    Args:
        kind: one of KINDS.
        seq_len: L, the length of one half (the BD input has 2L positions).
        block_size: divides L; ignored for "bidirectional".
        document_ids: [L] or [B, L] integer ids (batch-first), or None. With [B, L] the mod
            indexes row ``b``; with [L] it ignores ``b``.
    """
    _check(kind, seq_len, block_size)
    if kind == "block_diffusion":
        def base(q, kv):
            return block_diffusion_predicate(q, kv, seq_len, block_size)
    elif kind == "block_diffusion_causal_clean":
        def base(q, kv):
            return block_diffusion_causal_clean_predicate(q, kv, seq_len, block_size)
    elif kind == "bidirectional":
        base = bidirectional_predicate
    else:
        def base(q, kv):
            return block_causal_predicate(q, kv, block_size)

    if document_ids is None:
        def mask_mod(b, h, q_idx, kv_idx):
            return base(q_idx, kv_idx)
        return mask_mod
    if document_ids.dim() not in (1, 2) or document_ids.shape[-1] != seq_len:
        raise ValueError(
            f"document_ids must be [L] or [B, L] with L={seq_len}, got {tuple(document_ids.shape)}"
        )
    docs = document_ids
    if docs.dim() == 1:
        def mask_mod(b, h, q_idx, kv_idx):
            same_doc = docs[q_idx % seq_len] == docs[kv_idx % seq_len]
            return base(q_idx, kv_idx) & same_doc
    else:
        def mask_mod(b, h, q_idx, kv_idx):
            same_doc = docs[b, q_idx % seq_len] == docs[b, kv_idx % seq_len]
            return base(q_idx, kv_idx) & same_doc
    return mask_mod


def mask_length(kind: str, seq_len: int) -> int:
    """Query / key length of a mask kind: 2L for the block-diffusion kinds, L otherwise."""
    return 2 * seq_len if kind.startswith("block_diffusion") else seq_len


# ---------------------------------------------------------------------------------------------
# Documents


def document_ids_from_eod(tokens: torch.Tensor, eod_id: int) -> torch.Tensor:
    """Document ids of a packed batch: tokens [B, L] -> [B, L] int64 (batch-first).

    The id increases by one after every EOD token, so an EOD belongs to the document it ends;
    each row starts at 0.
    """
    is_eod = (tokens == eod_id).to(torch.int64)
    return torch.cumsum(is_eod, dim=-1) - is_eod


def _docs_key(document_ids: Optional[torch.Tensor]):
    if document_ids is None:
        return None
    docs = document_ids.detach().to(device="cpu", dtype=torch.int64).contiguous()
    return tuple(docs.shape), docs.numpy().tobytes()


def _docs_from_key(key, device) -> Optional[torch.Tensor]:
    if key is None:
        return None
    shape, raw = key
    return torch.frombuffer(bytearray(raw), dtype=torch.int64).view(shape).to(device)


# ---------------------------------------------------------------------------------------------
# Materialisers


def _rows_key(query_rows: Optional[torch.Tensor], n: int):
    if query_rows is None:
        return None
    rows = query_rows.detach().to(device="cpu", dtype=torch.int64).reshape(-1).contiguous()
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n):
        raise ValueError(f"query_rows must index the {n} positions of the mask")
    return rows.numpy().tobytes()


def _rows_from_key(rows_key, n: int, device) -> torch.Tensor:
    if rows_key is None:
        return torch.arange(n, device=device)
    return torch.frombuffer(bytearray(rows_key), dtype=torch.int64).to(device)


@functools.lru_cache(maxsize=8)
def _dense_cached(kind: str, seq_len: int, block_size: Optional[int], docs_key, device: str, rows_key=None):
    docs = _docs_from_key(docs_key, device)
    mod = make_mask_mod(kind, seq_len, block_size, docs)
    n = mask_length(kind, seq_len)
    idx = torch.arange(n, device=device)
    rows = _rows_from_key(rows_key, n, device)
    if docs is not None and docs.dim() == 2:
        b = torch.arange(docs.shape[0], device=device).view(-1, 1, 1)
        return mod(b, None, rows.view(1, -1, 1), idx.view(1, 1, n))
    return mod(None, None, rows.view(-1, 1), idx.view(1, n))


def _norm_block_size(kind: str, block_size: Optional[int]) -> Optional[int]:
    return None if kind == "bidirectional" else block_size


def dense_mask(kind: str, seq_len: int, block_size: Optional[int] = None,
               document_ids: Optional[torch.Tensor] = None,
               device: Union[str, torch.device, None] = None,
               query_rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Dense bool mask of ``kind`` (cached): [N, N], or [B, N, N] for document_ids [B, L].

    N = 2L for "block_diffusion", L otherwise. ``device`` defaults to document_ids' device, else CPU.
    ``query_rows`` ([R] positions): only those query rows, [R, N] ([B, R, N]): a context-parallel
    rank's rows against all keys, without building the N x N mask.
    """
    if device is None:
        device = document_ids.device if document_ids is not None else "cpu"
    block_size = _norm_block_size(kind, block_size)
    _check(kind, seq_len, block_size)
    return _dense_cached(kind, seq_len, block_size, _docs_key(document_ids), str(torch.device(device)),
                         _rows_key(query_rows, mask_length(kind, seq_len)))


def block_diffusion_mask(seq_len: int, block_size: int, document_ids: Optional[torch.Tensor] = None,
                         device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """BD mask for the input [xt ; x0]: bool [2L, 2L] ([B, 2L, 2L] for document_ids [B, L])."""
    return dense_mask("block_diffusion", seq_len, block_size, document_ids, device)


def bidirectional_mask(seq_len: int, document_ids: Optional[torch.Tensor] = None,
                       device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """MDLM mask: bool [L, L] ([B, L, L] for document_ids [B, L]); True within a document."""
    return dense_mask("bidirectional", seq_len, None, document_ids, device)


def block_causal_mask(seq_len: int, block_size: int, document_ids: Optional[torch.Tensor] = None,
                      device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """Block-causal mask (decoding): bool [L, L] ([B, L, L] for document_ids [B, L])."""
    return dense_mask("block_causal", seq_len, block_size, document_ids, device)


@functools.lru_cache(maxsize=32)
def _flex_cached(kind: str, seq_len: int, block_size: Optional[int], docs_key, device: str,
                 tile_size: int, rows_key=None):
    from torch.nn.attention.flex_attention import create_block_mask  # lazy: CUDA path only

    docs = _docs_from_key(docs_key, device)
    mod = make_mask_mod(kind, seq_len, block_size, docs)
    n = mask_length(kind, seq_len)
    batch = docs.shape[0] if docs is not None and docs.dim() == 2 else None
    if rows_key is None:
        return create_block_mask(mod, batch, None, n, n, device=device, BLOCK_SIZE=tile_size)
    rows = _rows_from_key(rows_key, n, device)

    def rows_mod(b, h, q_idx, kv_idx):
        return mod(b, h, rows[q_idx], kv_idx)

    return create_block_mask(rows_mod, batch, None, rows.numel(), n, device=device, BLOCK_SIZE=tile_size)


def flex_block_mask(kind: str, seq_len: int, block_size: Optional[int] = None,
                    document_ids: Optional[torch.Tensor] = None,
                    device: Union[str, torch.device, None] = None, tile_size: int = 128,
                    query_rows: Optional[torch.Tensor] = None):
    """FlexAttention ``BlockMask`` of ``kind`` (cached), for q / k / v of length N (2L for BD).

    Batch dimension B for document_ids [B, L], else broadcast (1); heads broadcast. ``tile_size``
    is FlexAttention's sparse block size (128 on CUDA). ``query_rows`` ([R] positions): queries are
    only those rows (a context-parallel rank's), keys all N.
    """
    if device is None:
        device = document_ids.device if document_ids is not None else "cpu"
    block_size = _norm_block_size(kind, block_size)
    _check(kind, seq_len, block_size)
    return _flex_cached(kind, seq_len, block_size, _docs_key(document_ids),
                        str(torch.device(device)), tile_size, _rows_key(query_rows, mask_length(kind, seq_len)))


def clear_mask_cache() -> None:
    """Drop every cached dense and FlexAttention mask."""
    _dense_cached.cache_clear()
    _flex_cached.cache_clear()
