"""Built-in text models, called as ``model(tokens, mask)`` on token ids ``[B, L]`` padded with
0 and a bool mask (True on real tokens); each factory receives a ``TextSpec``.

- ``fasttext``: Joulin et al.'s fastText classifier, the SVP paper's text proxy: the mean of the
  embeddings of a text's tokens and of its hashed token bigrams, then one linear layer.
- ``transformer``: a small pre-norm Transformer encoder with learned positions, masked mean
  pooling and a linear head (the target: far costlier per example).
- ``textcnn``: a 1-D CNN (Kim 2014 style, two layers), masked max pooling, linear head.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from selectkit.models import register

_BIGRAM_PRIME = 1_000_003


class FastText(nn.Module):
    """EmbeddingBag (mean) over token ids and ``buckets`` hashed bigram ids, then a linear layer.

    The bigram of tokens (a, b) has id ``vocab_size + (a * 1000003 + b) mod buckets``; padding
    (id 0) is left out of every mean.
    """

    def __init__(self, vocab_size: int, num_classes: int, dim: int = 32, buckets: int = 1 << 14):
        super().__init__()
        self.vocab_size, self.buckets = vocab_size, buckets
        self.embed = nn.EmbeddingBag(vocab_size + buckets, dim, mode="mean", padding_idx=0)
        nn.init.uniform_(self.embed.weight, -1.0 / dim, 1.0 / dim)
        with torch.no_grad():
            self.embed.weight[0].zero_()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ids = tokens
        if self.buckets and tokens.shape[1] > 1:
            a, b = tokens[:, :-1], tokens[:, 1:]
            bigram = self.vocab_size + (a * _BIGRAM_PRIME + b) % self.buckets
            ids = torch.cat([tokens, torch.where(mask[:, 1:], bigram, torch.zeros_like(bigram))], dim=1)
        return self.fc(self.embed(ids))


class TextTransformer(nn.Module):
    """Token embeddings + learned positions -> pre-norm Transformer encoder layers ->
    LayerNorm -> masked mean over tokens -> linear head."""

    def __init__(self, vocab_size: int, max_length: int, num_classes: int, dim: int = 64, heads: int = 4,
                 layers: int = 2, ff: int = 128, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be a multiple of heads={heads}")
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        x = self.embed(tokens) * math.sqrt(self.embed.embedding_dim) + self.pos[:n]
        x = self.norm(self.encoder(x, src_key_padding_mask=~mask))
        m = mask.unsqueeze(-1).to(x.dtype)
        return self.fc((x * m).sum(1) / m.sum(1).clamp_min(1.0))


class TextCNN(nn.Module):
    """Token embeddings -> two 1-D convolutions (ReLU) -> max over real tokens -> linear head."""

    def __init__(self, vocab_size: int, num_classes: int, dim: int = 64, channels: int = 128, kernel: int = 3):
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel={kernel} must be odd (3, 5, ...) so each position sees as many tokens on both sides")
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.conv1 = nn.Conv1d(dim, channels, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv1d(channels, channels, kernel, padding=kernel // 2)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask.unsqueeze(1).to(self.embed.weight.dtype)  # [B, 1, L]
        x = self.embed(tokens).transpose(1, 2) * keep  # [B, dim, L]
        # zero every padded position between layers, so padding reads like the convolutions' own
        # zero padding and a row's logits never depend on how long its batch is padded
        x = torch.relu(self.conv1(x)) * keep
        x = torch.relu(self.conv2(x))
        x = x.masked_fill(~mask.unsqueeze(1), float("-inf")).amax(dim=2)
        return self.fc(x)


def _text_spec(spec, model: str):
    if not hasattr(spec, "vocab_size"):
        raise ValueError(f"model {model!r} is a text model but the store holds {type(spec).__name__} examples: "
                         f"use an image model (cnn, mlp, ...) for an image store")
    return spec


@register("fasttext")
def fasttext(spec, num_classes, dim: int = 32, buckets: int = 1 << 14) -> nn.Module:
    """fastText: mean of word and hashed-bigram embeddings, linear (the SVP text proxy)."""
    return FastText(_text_spec(spec, "fasttext").vocab_size, num_classes, dim, buckets)


@register("transformer")
def transformer(spec, num_classes, dim: int = 64, heads: int = 4, layers: int = 2, ff: int = 128,
                dropout: float = 0.0) -> nn.Module:
    """A small Transformer encoder classifier (the text target)."""
    s = _text_spec(spec, "transformer")
    return TextTransformer(s.vocab_size, s.max_length, num_classes, dim, heads, layers, ff, dropout)


@register("textcnn")
def textcnn(spec, num_classes, dim: int = 64, channels: int = 128, kernel: int = 3) -> nn.Module:
    """A two-layer 1-D CNN text classifier."""
    return TextCNN(_text_spec(spec, "textcnn").vocab_size, num_classes, dim, channels, kernel)
