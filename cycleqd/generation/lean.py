"""A lean greedy decoder for plain Llama models: the embedded stage's hot path.

``transformers``' forward costs far more than its arithmetic on a tiny model: a 1.2 M-parameter
Llama spends about 20 ms a step on a 240-prompt batch whose matrix products take 2 ms. This
module runs the same arithmetic with none of the framework around it: the model's own parameter
tensors (read in place, so a child materialised into the model is decoded as is), a static KV
cache allocated once per batch, rotary tables computed once, and rows that have finished dropped
from the batch as they finish, so that the batch's cost follows the sequences still running.

The operations mirror ``transformers``' Llama (float32 RMSNorm, rotate-half rotary embedding,
scaled dot-product attention, SiLU-gated MLP). Stacked and packed products change the shapes
of the matrix products, so the logits are equal to rounding, not bit for bit: the greedy tokens
were equal in every test and benchmark here (a near-tie could differ on another BLAS or a GPU;
``engine="transformers"`` is the reference path). :func:`supports` says which models qualify:
``LlamaForCausalLM`` with the default rotary embedding, no biases, SiLU and one tensor-parallel
slice. Anything else decodes through ``transformers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["LeanLlama", "supports"]


def supports(model: Any) -> bool:
    """Whether :class:`LeanLlama` decodes ``model`` (a plain float32 Llama) as transformers does."""
    config = getattr(model, "config", None)
    if type(model).__name__ != "LlamaForCausalLM" or config is None:
        return False
    rope = getattr(config, "rope_parameters", None) or {}
    return (
        getattr(config, "model_type", None) == "llama"
        and rope.get("rope_type", "default") == "default"
        and not getattr(config, "attention_bias", False)
        and not getattr(config, "mlp_bias", False)
        and getattr(config, "hidden_act", None) == "silu"
        and getattr(config, "pretraining_tp", 1) == 1
        and next(model.parameters()).dtype == torch.float32
    )


@dataclass
class _Layer:
    norm1: torch.Tensor
    qkv: torch.Tensor  # q, k and v projections stacked: one product instead of three
    o: torch.Tensor
    norm2: torch.Tensor
    gate_up: torch.Tensor  # gate and up projections stacked
    down: torch.Tensor


class LeanLlama:
    """Greedy steps of a ``LlamaForCausalLM`` through a static KV cache.

    Reads the model's parameters when built (the stacked projections are copies: build one
    per set of weights, as :func:`~cycleqd.generation.decode.greedy_decode` does per call).
    One :meth:`start` per batch, then :meth:`step` per token.
    """

    def __init__(self, model: Any) -> None:
        if not supports(model):
            raise ValueError(f"LeanLlama does not decode {type(model).__name__}")
        config = model.config
        inner = model.model
        self.eps = float(config.rms_norm_eps)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        self.embed = inner.embed_tokens.weight
        self.norm = inner.norm.weight
        self.head = model.lm_head.weight
        self.layers = [
            _Layer(
                layer.input_layernorm.weight,
                torch.cat([a.weight for a in (attn.q_proj, attn.k_proj, attn.v_proj)]).T,
                attn.o_proj.weight.T,
                layer.post_attention_layernorm.weight,
                torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]).T,
                layer.mlp.down_proj.weight.T,
            )
            for layer in inner.layers
            for attn in [layer.self_attn]
        ]
        self.inner = int(config.intermediate_size)
        theta = float((getattr(config, "rope_parameters", None) or {}).get("rope_theta", 1e4))
        self.inv_freq = 1.0 / (
            theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float) / self.head_dim)
        )
        self.device = self.embed.device
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.length = 0
        # work done, for a roofline: floating-point operations, and bytes of weights and cache
        # read, summed over forward calls
        self.flops = self.bytes_read = 0
        self.calls: list[tuple[int, int]] = []  # (flops, bytes) per forward call

    # -- the arithmetic, as transformers' Llama does it -------------------------------------
    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # torch's fused RMSNorm: the same float32 arithmetic as weight * (x * rsqrt(mean + eps))
        return F.rms_norm(x, (x.shape[-1],), weight, self.eps)

    def _tables(self, capacity: int) -> None:
        """The cosine and sine of every position below ``capacity``, as transformers has them.

        The sine's first half is negated: ``cat(x2, x1) * sin'`` equals transformers'
        ``cat(-x2, x1) * sin`` exactly (a sign flip rounds the same), one kernel fewer.
        """
        freqs = torch.arange(capacity, device=self.device).float()[:, None] * self.inv_freq.to(
            self.device
        )
        emb = torch.cat((freqs, freqs), dim=-1)
        half = self.head_dim // 2
        sin = emb.sin()
        self.cos_table = emb.cos()
        self.sin_table = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos_table[positions][:, None], self.sin_table[positions][:, None]

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        # x * cos + rotated * sin, the same two products and sum, in place on fresh tensors
        return (x * cos).add_(torch.cat((x[..., half:], x[..., :half]), dim=-1).mul_(sin))

    @torch.no_grad()  # decoding only (the in-place products need it too)
    def start(self, ids: torch.Tensor, mask: torch.Tensor, capacity: int) -> torch.Tensor:
        """Run the prompts (``[B, T]``, left-padded, ``mask`` 1 on tokens); last logits ``[B, V]``.

        ``capacity``: the most tokens (prompt and completion) a row will hold.
        """
        batch, length = ids.shape
        self._tables(capacity)
        shape = (batch, self.kv_heads, capacity, self.head_dim)
        self.keys = [torch.empty(shape, device=self.device) for _ in self.layers]
        self.values = [torch.empty(shape, device=self.device) for _ in self.layers]
        self.length = 0
        self.key_mask = torch.zeros(batch, capacity, dtype=torch.bool, device=self.device)
        self.key_mask[:, :length] = mask.bool()
        self.positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        causal = torch.ones(length, length, dtype=torch.bool, device=self.device).tril()
        # a pad query sees itself: no row of the mask is empty (an empty one would give NaN)
        allowed = (causal & self.key_mask[:, None, :length]) | torch.eye(
            length, dtype=torch.bool, device=self.device
        )
        real = mask.bool()
        # only the real tokens go through the projections and the MLP (left padding is a fifth
        # of a batch of prompts of mixed length); attention sees them padded
        packed = None if real.all() else real
        logits = self._forward(ids, self.positions, allowed[:, None], packed)
        self.positions = self.positions[:, -1:]
        return logits

    @torch.no_grad()  # decoding only (the in-place products need it too)
    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (``[B]``); the next logits ``[B, V]``."""
        self.positions = self.positions + 1
        self.key_mask[:, self.length] = True
        allowed = self.key_mask[:, None, None, : self.length + 1]
        return self._forward(token[:, None], self.positions, allowed)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (indices into the current batch) in the cache."""

        def select(cache: torch.Tensor) -> torch.Tensor:
            kept = cache.new_empty((len(rows), *cache.shape[1:]))
            kept[:, :, : self.length] = cache[rows, :, : self.length]
            return kept

        self.keys = [select(k) for k in self.keys]
        self.values = [select(v) for v in self.values]
        self.key_mask = self.key_mask.index_select(0, rows)
        self.positions = self.positions.index_select(0, rows)

    def _forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        allowed: torch.Tensor,
        real: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of each row's last token, ``[B, V]``.

        ``real``: ``[B, T]``, the tokens that are not pads (left padding only); these alone are
        projected (the hidden states are packed, ``[N, H]``).
        """
        batch, length = ids.shape
        at, end = self.length, self.length + length
        x = F.embedding(ids if real is None else ids[real], self.embed)
        cos, sin = self._rotary(positions)
        groups = self.heads // self.kv_heads
        for i, layer in enumerate(self.layers):
            h = self._rms(x, layer.norm1)
            projected = h @ layer.qkv
            if real is not None:  # pads: zero queries, keys and values (masked out anyway)
                padded = projected.new_zeros(batch, length, projected.shape[-1])
                padded[real] = projected
                projected = padded
            heads = projected.view(batch, length, -1, self.head_dim).transpose(1, 2)
            # q and k rotated together (the same elementwise products, half the calls)
            qk = self._rotate(heads[:, : self.heads + self.kv_heads], cos, sin)
            q, k = qk[:, : self.heads], qk[:, self.heads :]
            v = heads[:, self.heads + self.kv_heads :]
            self.keys[i][:, :, at:end] = k
            self.values[i][:, :, at:end] = v
            keys, values = self.keys[i][:, :, :end], self.values[i][:, :, :end]
            # grouped heads share their key and value heads inside the kernel (no copies)
            a = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=allowed, enable_gqa=groups > 1
            )
            a = a.transpose(1, 2).reshape(batch, length, -1)
            x += (a if real is None else a[real]) @ layer.o
            h = self._rms(x, layer.norm2)
            gate, up = (h @ layer.gate_up).split(self.inner, dim=-1)
            x += F.silu(gate, inplace=True).mul_(up) @ layer.down  # silu(gate) * up, in place
        self.length = end
        self._count(batch, length, at, None if real is None else int(real.sum()))
        # each row's last token (left padding: every row's last column is a real token)
        last = x[:, -1] if real is None else x[real.sum(-1).cumsum(0) - 1]
        return self._rms(last, self.norm) @ self.head.T

    def _count(self, batch: int, length: int, at: int, tokens: int | None = None) -> None:
        """Add one forward call's work: ``batch`` rows of ``length`` tokens after ``at``.

        ``tokens``: how many of them are projected (default: all).
        """
        weights = sum(w.numel() for w in vars(self.layers[0]).values() if w.dim() == 2)
        keys = length * at + length * (length + 1) // 2  # causal: token i sees at + i + 1 keys
        attention = 2 * self.heads * self.head_dim * keys  # q·k and p·v
        projected = batch * length if tokens is None else tokens
        layers = len(self.layers) * (weights * projected + batch * attention)
        macs = layers + batch * self.head.numel()
        # weights read once per call; each row's cache read once per layer (keys and values)
        cache = 2 * batch * self.kv_heads * (at + length) * self.head_dim * len(self.layers)
        params = len(self.layers) * weights + self.head.numel()
        flops, read = 2 * macs, 4 * (params + cache)
        self.flops += flops
        self.bytes_read += read
        self.calls.append((flops, read))
