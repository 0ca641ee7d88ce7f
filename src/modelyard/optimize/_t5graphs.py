"""The three graphs of a T5 seq2seq model as plain ``nn.Module`` wrappers with flat tensor inputs and outputs,
ready for ``torch.onnx.export``.

Why not trace ``T5ForConditionalGeneration`` itself: transformers 5 passes the KV cache as ``Cache`` objects
(``EncoderDecoderCache`` of two ``DynamicCache``), builds masks through ``masking_utils`` (which picks
different code for tracing, SDPA and eager) and keeps renaming the cache arguments (``past_key_values`` ->
``cache``). Tracing through that ties the export to one transformers release. These wrappers reuse the
model's own submodules and weights (embeddings, q/k/v/o projections, layer norms, feed-forward blocks, the
relative-position embedding and its bucketing function, the LM head) and write out only the attention
arithmetic that T5 defines: scores = q k^T (no 1/sqrt(d) scaling) + relative position bias + mask, softmax,
times v. ``export_onnx`` checks every export against the transformers model's own logits, so a transformers
release that changed T5's arithmetic fails the export instead of producing a different model.

Masks are additive: 0 where attention is allowed, the float32 minimum where it is not (as transformers does),
so a masked position gets exactly zero weight after the softmax.

Imported only inside :func:`modelyard.optimize.export_onnx` (it imports torch).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

_MIN = torch.finfo(torch.float32).min


def _bucket(relative: Tensor, *, bidirectional: bool, num_buckets: int, max_distance: int) -> Tensor:
    """T5's relative position bucket, the model class's own static function."""
    from transformers.models.t5.modeling_t5 import T5Attention

    fn: Any = T5Attention._relative_position_bucket
    out: Tensor = fn(
        relative, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    )
    return out


class _Common(nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        config = model.config
        self.num_heads = int(config.num_heads)
        self.d_kv = int(config.d_kv)
        self.num_buckets = int(config.relative_attention_num_buckets)
        self.max_distance = int(config.relative_attention_max_distance)

    def split(self, x: Tensor) -> Tensor:
        """(batch, length, heads * d_kv) -> (batch, heads, length, d_kv)"""
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.d_kv).transpose(1, 2)

    def attend(self, attention: Any, x: Tensor, key: Tensor, value: Tensor, bias: Tensor) -> Tensor:
        query = self.split(attention.q(x))
        scores = torch.matmul(query, key.transpose(2, 3)) + bias
        weights = torch.softmax(scores, dim=-1)
        out = torch.matmul(weights, value).transpose(1, 2)
        out = out.reshape(out.shape[0], out.shape[1], self.num_heads * self.d_kv)
        result: Tensor = attention.o(out)
        return result

    def position_bias(
        self, attention: Any, query_positions: Tensor, key_positions: Tensor, *, bidirectional: bool
    ) -> Tensor:
        """(1, heads, queries, keys): the relative position bias of ``attention`` (the first layer's)."""
        relative = key_positions[None, :] - query_positions[:, None]
        buckets = _bucket(
            relative,
            bidirectional=bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        values: Tensor = attention.relative_attention_bias(buckets)  # (queries, keys, heads)
        return values.permute(2, 0, 1).unsqueeze(0)


def _padding_bias(mask: Tensor) -> Tensor:
    """(batch, keys) 1/0 -> (batch, 1, 1, keys) additive: 0 where 1, the float32 minimum where 0."""
    return (1.0 - mask[:, None, None, :].to(torch.float32)) * _MIN


def _causal_bias(query_positions: Tensor, key_positions: Tensor) -> Tensor:
    """(1, 1, queries, keys): 0 where the key is at or before the query, the float32 minimum after it."""
    later = key_positions[None, :] > query_positions[:, None]
    return (later.to(torch.float32) * _MIN)[None, None, :, :]


class EncoderGraph(_Common):
    """input_ids (batch, source), attention_mask (batch, source) -> last_hidden_state (batch, source,
    d_model)"""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.stack = model.encoder

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        stack = self.stack
        hidden: Tensor = stack.embed_tokens(input_ids)
        positions = torch.arange(input_ids.shape[1], dtype=torch.long, device=input_ids.device)
        first = stack.block[0].layer[0].SelfAttention
        bias = self.position_bias(first, positions, positions, bidirectional=True)
        bias = bias + _padding_bias(attention_mask)
        for block in stack.block:
            layer = block.layer[0]
            x = layer.layer_norm(hidden)
            att = layer.SelfAttention
            hidden = hidden + self.attend(att, x, self.split(att.k(x)), self.split(att.v(x)), bias)
            hidden = block.layer[-1](hidden)  # T5LayerFF: norm, feed-forward, residual
        out: Tensor = stack.final_layer_norm(hidden)
        return out


class _DecoderBase(_Common):
    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.stack = model.decoder
        self.lm_head = model.lm_head
        config = model.config
        scale = getattr(config, "scale_decoder_outputs", None)
        if scale is None:  # transformers 4: a tied head implies the scaling
            scale = bool(getattr(config, "tie_word_embeddings", True))
        self.scale = float(config.d_model) ** -0.5 if scale else None

    def head(self, hidden: Tensor) -> Tensor:
        hidden = self.stack.final_layer_norm(hidden)
        if self.scale is not None:
            hidden = hidden * self.scale
        logits: Tensor = self.lm_head(hidden)
        return logits

    def self_bias(self, input_ids: Tensor, past_length: Any) -> Tensor:
        """Relative position bias plus the causal mask of ``input_ids`` placed after ``past_length`` cached
        positions: (1, heads, new, past + new)."""
        new = input_ids.shape[1]
        keys = torch.arange(past_length + new, dtype=torch.long, device=input_ids.device)
        queries = keys[past_length:]
        first = self.stack.block[0].layer[0].SelfAttention
        bias = self.position_bias(first, queries, keys, bidirectional=False)
        return bias + _causal_bias(queries, keys)

    def block(
        self, block: Any, hidden: Tensor, self_kv: tuple[Tensor, Tensor], self_bias: Tensor, cross: Any
    ) -> Tensor:
        """One decoder block; ``self_kv`` are the full self-attention keys and values (past and new),
        ``cross`` the cross-attention keys, values and padding bias."""
        layer = block.layer[0]
        x = layer.layer_norm(hidden)
        hidden = hidden + self.attend(layer.SelfAttention, x, self_kv[0], self_kv[1], self_bias)
        cross_layer = block.layer[1]
        x = cross_layer.layer_norm(hidden)
        hidden = hidden + self.attend(cross_layer.EncDecAttention, x, cross[0], cross[1], cross[2])
        out: Tensor = block.layer[-1](hidden)
        return out


class DecoderGraph(_DecoderBase):
    """The first decoding step (no cache).

    input_ids (batch, target), encoder_hidden_states (batch, source, d_model), encoder_attention_mask
    (batch, source) -> logits (batch, target, vocab), then per layer the self-attention key and value
    (batch, heads, target, d_kv) and the cross-attention key and value (batch, heads, source, d_kv)."""

    def forward(
        self, input_ids: Tensor, encoder_hidden_states: Tensor, encoder_attention_mask: Tensor
    ) -> tuple[Tensor, ...]:
        hidden: Tensor = self.stack.embed_tokens(input_ids)
        self_bias = self.self_bias(input_ids, 0)
        cross_bias = _padding_bias(encoder_attention_mask)
        presents: list[Tensor] = []
        for block in self.stack.block:
            x = block.layer[0].layer_norm(hidden)
            att = block.layer[0].SelfAttention
            key, value = self.split(att.k(x)), self.split(att.v(x))
            cross_att = block.layer[1].EncDecAttention
            cross_key = self.split(cross_att.k(encoder_hidden_states))
            cross_value = self.split(cross_att.v(encoder_hidden_states))
            hidden = self.block(block, hidden, (key, value), self_bias, (cross_key, cross_value, cross_bias))
            presents += [key, value, cross_key, cross_value]
        return (self.head(hidden), *presents)


class DecoderWithPastGraph(_DecoderBase):
    """A decoding step with the cache.

    input_ids (batch, new), encoder_attention_mask (batch, source), then per layer the past self-attention
    key and value (batch, heads, past, d_kv) and the cross-attention key and value (batch, heads, source,
    d_kv) -> logits (batch, new, vocab), then per layer the self-attention key and value (batch, heads,
    past + new, d_kv)."""

    def forward(self, input_ids: Tensor, encoder_attention_mask: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        hidden: Tensor = self.stack.embed_tokens(input_ids)
        self_bias = self.self_bias(input_ids, past[0].shape[2])
        cross_bias = _padding_bias(encoder_attention_mask)
        presents: list[Tensor] = []
        for i, block in enumerate(self.stack.block):
            past_key, past_value, cross_key, cross_value = past[4 * i : 4 * i + 4]
            x = block.layer[0].layer_norm(hidden)
            att = block.layer[0].SelfAttention
            key = torch.cat([past_key, self.split(att.k(x))], dim=2)
            value = torch.cat([past_value, self.split(att.v(x))], dim=2)
            hidden = self.block(block, hidden, (key, value), self_bias, (cross_key, cross_value, cross_bias))
            presents += [key, value]
        return (self.head(hidden), *presents)
