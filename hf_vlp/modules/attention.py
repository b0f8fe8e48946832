"""Multi-head attention used by every tower of every architecture.

One module covers self-attention (one fused ``qkv`` projection, a single GEMM) and cross-attention
(a ``q`` projection plus a fused ``kv`` projection over another sequence). Options cover the details the
originals differ in: full, q/v-only (BEiT/VLMo) or no projection bias, key/value width different from the
query width (attention pooling), output width different from the model width (CLIP's ``attnpool``),
causal and padding masks, an additive bias (relative positions), and an incremental key/value cache.

Cross-attention can read an :class:`AttentionMemory` instead of a tensor: the memory tokens (e.g. the image tokens a
caption decoder attends to at every step) whose keys/values each module projects once and then reuses, and whose
rows may each serve several consecutive query rows (the beams or sampled sequences of one source) without copies.

The kernel is chosen at call time from ``config._attn_implementation`` so that transformers'
``attn_implementation=`` / ``set_attn_implementation()`` work: ``"sdpa"`` (default) and ``"eager"`` are
implemented here and give the same numbers; any other name is looked up in transformers'
``ALL_ATTENTION_FUNCTIONS`` (e.g. flash attention on a GPU).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

QKV_BIAS_MODES = ("all", "qv", "none")


def causal_mask(query_length: int, key_length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive mask ``[1, 1, Lq, Lk]``: query ``i`` sees keys ``<= i + (Lk - Lq)`` (cache-aware)."""
    offset = key_length - query_length
    rows = torch.arange(query_length, device=device)[:, None] + offset
    cols = torch.arange(key_length, device=device)[None, :]
    mask = torch.zeros(query_length, key_length, dtype=dtype, device=device)
    mask.masked_fill_(cols > rows, torch.finfo(dtype).min)
    return mask[None, None]


def padding_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Turn a ``[B, Lk]`` 1/0 keep-mask into an additive ``[B, 1, 1, Lk]`` mask of ``dtype`` (``None``: no mask)."""
    if attention_mask is None:
        return None
    keep = attention_mask[:, None, None, :].to(torch.bool)
    return torch.zeros(keep.shape, dtype=dtype, device=attention_mask.device).masked_fill_(~keep, torch.finfo(dtype).min)


class AttentionMemory:
    """Memory tokens ``[M, L, kv_size]`` that many cross-attention calls read, with each module's keys/values
    computed on its first call and reused afterwards (:meth:`key_value`).

    A decoder generating text over image tokens calls every cross-attention once per step; with a memory the key/value
    projection runs once per module and generation instead of once per step. The queries may have ``r * M`` rows:
    memory row ``m`` serves query rows ``m * r .. m * r + r - 1`` (``torch.repeat_interleave``'s layout, as
    ``generate`` expands beams and sampled sequences), so the rows of one source share one copy of its keys/values.

    Meant for inference: the keys/values are computed once, so a memory must not outlive a change of the weights, and
    with gradients enabled the graph of its keys/values serves a single backward pass.
    """

    def __init__(self, states: torch.Tensor) -> None:
        if not isinstance(states, torch.Tensor) or states.ndim != 3:
            raise ValueError(f"AttentionMemory takes memory states [batch, length, width], got {_describe(states)}")
        self.states = states
        self._key_values: dict[int, tuple[nn.Module, torch.Tensor, torch.Tensor]] = {}
        self._transformed: dict[int, tuple[nn.Module, AttentionMemory]] = {}

    @property
    def shape(self) -> torch.Size:
        return self.states.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.states.dtype

    @property
    def device(self) -> torch.device:
        return self.states.device

    def __len__(self) -> int:
        return self.states.shape[0]

    def key_value(self, attention: "Attention") -> tuple[torch.Tensor, torch.Tensor]:
        """``attention``'s keys and values of the memory, ``[M, heads, L, head_dim]`` each, projected on first use."""
        entry = self._key_values.get(id(attention))
        if entry is None or entry[0] is not attention:
            key, value = attention.project_key_value(self.states)
            entry = (attention, key, value)
            self._key_values[id(attention)] = entry
        return entry[1], entry[2]

    def transformed(self, module: nn.Module) -> "AttentionMemory":
        """The memory of ``module(states)`` (e.g. a LayerNorm over the memory tokens that a cross-attention block
        applies before projecting them), computed on first use and reused afterwards like the keys/values."""
        entry = self._transformed.get(id(module))
        if entry is None or entry[0] is not module:
            entry = (module, AttentionMemory(module(self.states)))
            self._transformed[id(module)] = entry
        return entry[1]

    def __repr__(self) -> str:
        return f"AttentionMemory(shape={tuple(self.states.shape)}, modules_projected={len(self._key_values)})"


def _describe(value: Any) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


def grouped_rows(query_rows: int, memory_rows: int) -> int:
    """How many consecutive query rows each memory row serves; an error unless it is a whole number."""
    if memory_rows < 1 or query_rows % memory_rows:
        raise ValueError(
            f"cross-attention over {memory_rows} memory rows cannot serve {query_rows} query rows: each memory row "
            "serves the same number of consecutive query rows (e.g. the beams of one image); repeat the memory to "
            "match the queries, or pass a multiple of its rows"
        )
    return query_rows // memory_rows


def eager_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    dropout: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention on ``[B, H, L, D]`` tensors; returns the output and the probabilities."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout:
        probs = F.dropout(probs, p=dropout)
    return torch.matmul(probs, value), probs


class Attention(nn.Module):
    """Multi-head self- or cross-attention with fused projections.

    Args:
        hidden_size: width of the queries (and of keys/values for self-attention).
        num_heads: number of heads; ``hidden_size`` must be divisible by it.
        config: any object with ``_attn_implementation`` (a ``PretrainedConfig``); read at every call.
        cross_attention: keys and values come from ``encoder_hidden_states`` (``q`` + fused ``kv``).
        kv_size: width of ``encoder_hidden_states`` (cross-attention only; defaults to ``hidden_size``).
        out_size: width of the output projection (defaults to ``hidden_size``).
        qkv_bias: ``"all"``, ``"qv"`` (learned q and v biases, none on k) or ``"none"``.
        out_bias: bias on the output projection.
        dropout: attention-probability dropout (training only).
        layer_idx: index of this layer in a key/value cache.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        config: Any = None,
        cross_attention: bool = False,
        kv_size: int | None = None,
        out_size: int | None = None,
        qkv_bias: str = "all",
        out_bias: bool = True,
        dropout: float = 0.0,
        layer_idx: int | None = None,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if qkv_bias not in QKV_BIAS_MODES:
            raise ValueError(f"qkv_bias must be one of {QKV_BIAS_MODES}, got {qkv_bias!r}")
        if kv_size is not None and not cross_attention:
            raise ValueError("kv_size only applies to cross-attention")
        self.config = config
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scale = self.head_dim**-0.5
        self.cross_attention = cross_attention
        self.qkv_bias_mode = qkv_bias
        self.dropout = dropout
        self.layer_idx = layer_idx
        linear_bias = qkv_bias == "all"
        if cross_attention:
            self.q = nn.Linear(hidden_size, hidden_size, bias=linear_bias)
            self.kv = nn.Linear(kv_size or hidden_size, 2 * hidden_size, bias=linear_bias)
        else:
            self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=linear_bias)
        if qkv_bias == "qv":
            self.q_bias = nn.Parameter(torch.zeros(hidden_size))
            self.v_bias = nn.Parameter(torch.zeros(hidden_size))
        self.out_proj = nn.Linear(hidden_size, out_size or hidden_size, bias=out_bias)

    @property
    def attn_implementation(self) -> str:
        return getattr(self.config, "_attn_implementation", None) or "sdpa"

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, -1, self.head_dim).transpose(1, 2)

    def project_key_value(self, encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values ``[B, heads, L, head_dim]`` of memory tokens ``[B, L, kv_size]``."""
        if not self.cross_attention:
            raise ValueError("project_key_value is for cross-attention; self-attention projects q, k, v together")
        kv_bias = self.kv.bias
        if self.qkv_bias_mode == "qv":
            kv_bias = torch.cat([torch.zeros_like(self.v_bias), self.v_bias])
        key, value = F.linear(encoder_hidden_states, self.kv.weight, kv_bias).chunk(2, dim=-1)
        return self._split_heads(key), self._split_heads(value)

    def _project(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | AttentionMemory | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        zeros = None
        if self.qkv_bias_mode == "qv":
            zeros = torch.zeros_like(self.v_bias)
        if self.cross_attention:
            if encoder_hidden_states is None:
                raise ValueError("cross-attention needs encoder_hidden_states")
            q_bias = self.q_bias if zeros is not None else self.q.bias
            query = self._split_heads(F.linear(hidden_states, self.q.weight, q_bias))
            if isinstance(encoder_hidden_states, AttentionMemory):
                key, value = encoder_hidden_states.key_value(self)
            else:
                key, value = self.project_key_value(encoder_hidden_states)
            return query, key, value
        bias = torch.cat([self.q_bias, zeros, self.v_bias]) if zeros is not None else self.qkv.bias
        query, key, value = F.linear(hidden_states, self.qkv.weight, bias).chunk(3, dim=-1)
        return self._split_heads(query), self._split_heads(key), self._split_heads(value)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | AttentionMemory | None = None,
        attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        position_bias: torch.Tensor | None = None,
        cache: Any = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend and project.

        ``attention_mask`` is additive and broadcastable to ``[B, H, Lq, Lk]`` (see :func:`padding_mask`);
        ``position_bias`` is added to it. ``cache`` is a transformers ``Cache`` (self-attention only):
        new keys/values are appended under ``layer_idx`` and attention runs over all cached positions.
        Cross-attention reads ``encoder_hidden_states`` (a tensor, or an :class:`AttentionMemory` whose keys/values
        are projected once); memory with ``M`` rows serves ``r * M`` query rows in groups of ``r`` consecutive rows
        (its mask then has ``M`` rows or one).
        Returns ``(output [B, Lq, out_size], probabilities or None)``; probabilities are only available
        with the eager kernel.
        """
        query, key, value = self._project(hidden_states, encoder_hidden_states)
        if cache is not None and not self.cross_attention:
            key, value = cache.update(key, value, self.layer_idx)
        mask = attention_mask
        if position_bias is not None:
            mask = position_bias if mask is None else mask + position_bias
        batch, q_len, k_len = query.shape[0], query.shape[-2], key.shape[-2]
        impl = self.attn_implementation
        # returning probabilities needs the eager kernel, which takes causality only as an explicit mask: asking for
        # attentions must never change the output
        use_eager = impl == "eager" or output_attentions
        if is_causal and q_len == 1:  # the last position (cache-aware causality) sees every key
            is_causal = False
        if is_causal and (mask is not None or q_len != k_len or use_eager):
            causal = causal_mask(q_len, k_len, query.dtype, query.device)
            mask = causal if mask is None else mask + causal
            is_causal = False
        if mask is not None:
            mask = mask.to(query.dtype)
        groups = 1
        if key.shape[0] != batch:
            groups = grouped_rows(batch, key.shape[0])
            if impl not in ("eager", "sdpa") or (mask is not None and mask.shape[0] not in (1, key.shape[0])):
                key, value = key.repeat_interleave(groups, dim=0), value.repeat_interleave(groups, dim=0)
                groups = 1
            else:  # fold each group's queries into one row that attends the group's shared keys/values
                query = query.unflatten(0, (-1, groups)).transpose(1, 2).flatten(2, 3)
                if mask is not None and mask.shape[-2] > 1:
                    mask = mask.repeat(1, 1, groups, 1)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if use_eager:
            out, weights = eager_attention(query, key, value, mask, self.scale, dropout)
        elif impl == "sdpa":
            out = F.scaled_dot_product_attention(
                query, key, value, attn_mask=mask, dropout_p=dropout, is_causal=is_causal, scale=self.scale
            )
        else:
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            if is_causal:
                mask = causal_mask(q_len, k_len, query.dtype, query.device)
            out, _ = ALL_ATTENTION_FUNCTIONS[impl](
                self, query, key, value, mask, dropout=dropout, scaling=self.scale, is_causal=False
            )
            out = out.reshape(batch, q_len, self.hidden_size)
            return self.out_proj(out), weights
        if groups > 1:
            out = out.unflatten(2, (groups, q_len)).transpose(1, 2).flatten(0, 1)
            if weights is not None:
                weights = weights.unflatten(2, (groups, q_len)).transpose(1, 2).flatten(0, 1)
        out = out.transpose(1, 2).reshape(batch, q_len, self.hidden_size)
        return self.out_proj(out), weights
