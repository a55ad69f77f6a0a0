"""A lean greedy decoder for plain Llama models: the embedded stage's hot path.

``transformers``' forward costs far more than its arithmetic on a tiny model: a 1.2 M-parameter
Llama spends about 20 ms a step on a 240-prompt batch whose matrix products take 2 ms. This
module runs the same arithmetic with none of the framework around it: the model's own weights
(copied into the layouts the products run fastest in when a decoder is built, one per call of
:func:`~cycleqd.generation.decode.greedy_decode`, so a child materialised into the model is
decoded as is), a static KV cache allocated once per batch, rotary tables computed once, and
less work where the answer cannot change:

* prompts that begin alike share their prefix's computation (:func:`prefix_nodes`: the
  quickstart's prompts are about half shared prefix, ``Q: Given a list xs, return the``...);
* a row leaves the batch the step it finishes (:meth:`LeanLlama.compact`), so the batch's cost
  follows the sequences still running;
* a step's attention (one query a row) is two batched products over the cache in place.

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

__all__ = ["LeanLlama", "prefix_nodes", "supports"]


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


def prefix_nodes(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct prompt prefixes of a left-padded batch: what the prompts' forward computes.

    A token's hidden states depend only on the tokens up to it (and its position, their count):
    prompts that begin alike (``Q: Given a list xs, return the``...) share them. Each distinct
    prefix is a node, numbered in order of first appearance (row by row).

    Returns:
        ``nodes``: ``[B * T]``, the node of each position (pads: the number of nodes, ``U``);
        ``reps``: ``[U]``, the flat position of each node's first appearance.
    """
    batch, length = ids.shape
    index: dict[tuple[int, int], int] = {}
    nodes: list[int] = []
    reps: list[int] = []
    for b, (row, real) in enumerate(zip(ids.tolist(), mask.tolist(), strict=True)):
        parent = -1
        for t, (token, on) in enumerate(zip(row, real, strict=True)):
            if not on:
                nodes.append(-1)
                continue
            node = index.setdefault((parent, token), len(reps))
            if node == len(reps):
                reps.append(b * length + t)
            nodes.append(node)
            parent = node
    out = torch.tensor(nodes, dtype=torch.long)
    out[out < 0] = len(reps)
    return out, torch.tensor(reps, dtype=torch.long)


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

    Reads the model's parameters when built (the projections and the head are copies: build one
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
        self.head = model.lm_head.weight.T.contiguous()  # [H, V]: the faster layout
        self.layers = [
            _Layer(
                layer.input_layernorm.weight,
                torch.cat(
                    [a.weight for a in (attn.q_proj, attn.k_proj, attn.v_proj)]
                ).T.contiguous(),
                attn.o_proj.weight.T.contiguous(),
                layer.post_attention_layernorm.weight,
                torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]).T.contiguous(),
                layer.mlp.down_proj.weight.T.contiguous(),
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
        self.length = self.rows = 0
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
    def start(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        capacity: int,
        prefixes: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Run the prompts (``[B, T]``, left-padded, ``mask`` 1 on tokens); last logits ``[B, V]``.

        ``capacity``: the most tokens (prompt and completion) a row will hold. ``prefixes``:
        :func:`prefix_nodes` of the batch (computed here if not given; callers that decode the
        same prompts again pass it cached).
        """
        batch, length = ids.shape
        self._tables(capacity)
        shape = (batch, self.kv_heads, capacity, self.head_dim)
        self.keys = [torch.empty(shape, device=self.device) for _ in self.layers]
        self.values = [torch.empty(shape, device=self.device) for _ in self.layers]
        self.length = 0
        self.rows = batch  # the running rows: the cache's first ``rows`` (see compact)
        self.key_mask = torch.zeros(batch, capacity, dtype=torch.bool, device=self.device)
        self.key_mask[:, :length] = mask.bool()
        self.positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        causal = torch.ones(length, length, dtype=torch.bool, device=self.device).tril()
        # a pad query sees itself: no row of the mask is empty (an empty one would give NaN)
        allowed = (causal & self.key_mask[:, None, :length]) | torch.eye(
            length, dtype=torch.bool, device=self.device
        )
        nodes, reps = prefixes if prefixes is not None else prefix_nodes(ids, mask)
        if nodes.shape != (batch * length,):
            raise ValueError(f"prefixes are of another batch: {nodes.shape} for ids {ids.shape}")
        packed = (nodes.to(self.device), reps.to(self.device))
        logits = self._forward(ids, self.positions, allowed[:, None], packed)
        self.positions = self.positions[:, -1:].clone()
        return logits

    @torch.no_grad()  # decoding only (the in-place products need it too)
    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Feed one token per running row (``[rows]``); the next logits ``[rows, V]``."""
        rows = self.rows
        if token.shape[0] != rows:
            raise ValueError(f"step takes one token per running row ({rows}), not {token.shape}")
        self.positions[:rows] += 1
        self.key_mask[:rows, self.length] = True
        # the mask as the additive bias attention adds to its scores (once per step, not layer)
        seen = self.key_mask[:rows, None, None, : self.length + 1]
        bias = torch.zeros(seen.shape, device=self.device).masked_fill_(~seen, float("-inf"))
        return self._forward(token[:, None], self.positions[:rows], bias)

    @torch.no_grad()
    def compact(self, drop: torch.Tensor) -> torch.Tensor:
        """Drop the running rows where ``drop`` (``[rows]``, bool) is true.

        The rows that stay are packed to the front of the cache by moving only the few behind
        the new end into the slots of dropped ones in front of it: a row's cost leaves the batch
        the step it finishes, and nothing else is copied (the batch's later steps read views).

        Returns:
            ``[kept]``: for each running row after the call, its index before it (the rows'
            order changes; the caller keeps its own bookkeeping in step with it).
        """
        rows = self.rows
        if drop.shape != (rows,) or drop.dtype != torch.bool:
            raise ValueError(f"compact takes a bool per running row ({rows}), not {drop.shape}")
        kept = rows - int(drop.sum())
        order = torch.arange(rows, device=drop.device)
        holes = drop[:kept].nonzero().squeeze(1)
        movers = (~drop[kept:]).nonzero().squeeze(1) + kept
        if len(holes):
            for held in (*self.keys, *self.values, self.key_mask, self.positions):
                held.index_copy_(0, holes, held.index_select(0, movers))
            order[holes] = movers
        self.rows = kept
        return order[:kept]

    def _forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        allowed: torch.Tensor,
        packed: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits of each row's last token, ``[B, V]``.

        ``packed``: :func:`prefix_nodes` ``(nodes, reps)``: only each distinct prefix's last
        token goes through the projections and the MLP (the hidden states are packed, ``[U, H]``);
        attention sees the rows padded, ``[B, T]``.
        """
        batch, length = ids.shape
        at, end = self.length, self.length + length
        if packed is None:
            x = F.embedding(ids, self.embed)
        else:
            nodes, reps = packed
            x = F.embedding(ids.reshape(-1)[reps], self.embed)
        cos, sin = self._rotary(positions)
        groups = self.heads // self.kv_heads
        for i, layer in enumerate(self.layers):
            h = self._rms(x, layer.norm1)
            projected = h @ layer.qkv
            if packed is not None:  # each position its prefix's row; pads: zeros (masked out)
                zero = projected.new_zeros(1, projected.shape[-1])
                projected = torch.cat((projected, zero))[nodes].view(batch, length, -1)
            heads = projected.view(batch, length, -1, self.head_dim).transpose(1, 2)
            # q and k rotated together (the same elementwise products, half the calls)
            qk = self._rotate(heads[:, : self.heads + self.kv_heads], cos, sin)
            q, k = qk[:, : self.heads], qk[:, self.heads :]
            v = heads[:, self.heads + self.kv_heads :]
            self.keys[i][:batch, :, at:end] = k
            self.values[i][:batch, :, at:end] = v
            keys, values = self.keys[i][:batch, :, :end], self.values[i][:batch, :, :end]
            if length == 1:
                a = self._attend_one(q, keys, values, allowed)
            else:  # grouped heads share their key and value heads inside the kernel
                a = F.scaled_dot_product_attention(
                    q, keys, values, attn_mask=allowed, enable_gqa=groups > 1
                )
                a = a.transpose(1, 2).reshape(batch, length, -1)
            x += (a if packed is None else a.view(batch * length, -1)[reps]) @ layer.o
            h = self._rms(x, layer.norm2)
            gate, up = (h @ layer.gate_up).split(self.inner, dim=-1)
            x += F.silu(gate, inplace=True).mul_(up) @ layer.down  # silu(gate) * up, in place
        self.length = end
        self._count(batch, length, at, None if packed is None else len(reps))
        # each row's last token (left padding: every row's last column is a real token)
        last = x[:, -1] if packed is None else x[nodes.view(batch, length)[:, -1]]
        return self._rms(last, self.norm) @ self.head

    def _attend_one(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """One query per row (a decoding step) over the cache, ``[B, 1, heads * head_dim]``.

        The arithmetic of SDPA's CPU kernel in its order (scores scaled, the mask's bias added,
        the row maximum subtracted, exponentials, their products with the values divided by
        their sum at the end), as two batched products over the cache in place (SDPA's kernel
        cost 1.4-1.7 times these on one query a row here). Grouped heads are the products' rows.
        """
        batch = q.shape[0]
        grouped = q.reshape(batch, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
        scores = torch.matmul(grouped, keys.transpose(-1, -2))
        scores.mul_(self.head_dim**-0.5).add_(bias)
        scores.sub_(scores.amax(-1, keepdim=True)).exp_()
        out = torch.matmul(scores, values).div_(scores.sum(-1, keepdim=True))
        return out.view(batch, 1, -1)

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
