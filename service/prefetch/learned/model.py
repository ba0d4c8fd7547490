"""The ranking network: a GRU over recent key deltas plus a hashed key embedding gives the context; an MLP
scores each candidate (its delta, sources and statistics) in that context. One logit per candidate slot.

In the spirit of Hashemi et al. 2018 (deltas as a vocabulary, an LSTM over them) and Voyager (key identity
next to deltas), but ranking a handful of candidates instead of a softmax over all keys: it stays tiny,
trains online in milliseconds, and can always choose what a simple prefetcher would have chosen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from service.prefetch.learned.features import KEY_BUCKETS, N_FEATURES, N_SOURCES, N_TOKENS


@dataclass(frozen=True, slots=True)
class ModelConfig:
    token_dim: int = 16
    key_dim: int = 16
    hidden: int = 32
    mlp: int = 64

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class PrefetchNet(nn.Module):
    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ModelConfig()
        self.tokens = nn.Embedding(N_TOKENS, config.token_dim, padding_idx=0)
        self.keys = nn.Embedding(KEY_BUCKETS, config.key_dim)
        self.gru = nn.GRU(config.token_dim, config.hidden, batch_first=True)
        context_dim = config.hidden + config.key_dim + N_SOURCES
        self.score = nn.Sequential(
            nn.Linear(context_dim + config.token_dim + N_FEATURES, config.mlp),
            nn.ReLU(),
            nn.Linear(config.mlp, config.mlp),
            nn.ReLU(),
            nn.Linear(config.mlp, 1),
        )

    def forward(
        self,
        context: torch.Tensor,  # [B, HISTORY] delta tokens
        key_bucket: torch.Tensor,  # [B]
        source_accuracy: torch.Tensor,  # [B, N_SOURCES]
        cand_token: torch.Tensor,  # [B, C]
        cand_features: torch.Tensor,  # [B, C, N_FEATURES]
    ) -> torch.Tensor:
        """Logits [B, C]; padded slots score whatever, the caller masks them."""
        _, h = self.gru(self.tokens(context))
        ctx = torch.cat([h[-1], self.keys(key_bucket), source_accuracy], dim=-1)
        slots = cand_token.shape[1]
        ctx = ctx.unsqueeze(1).expand(-1, slots, -1)
        x = torch.cat([ctx, self.tokens(cand_token), cand_features], dim=-1)
        return self.score(x).squeeze(-1)
