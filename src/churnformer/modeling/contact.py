"""What a retention contact changes in a customer (models trained with campaigns, ``data.campaigns``).

The network's customer representation r (what every head reads) is moved by the contact:
r -> r + g(r), with g a two-layer MLP. The heads are the same for both arms, so with the contact or without
it every head predicts its label over the horizon grid the same way (the TARNet idea: one representation,
per-arm outcomes; Shalit et al. 2017, with the treated arm as a residual of the control one). Only sent
contacts train g; held-out contacts and every other example train what the heads see without it, so the
difference between the arms is learned from the randomized contrast. g's last layer starts at zero: a
contact changes nothing until the campaigns say otherwise.
"""

from __future__ import annotations

import torch
from torch import nn


class ContactEffect(nn.Module):
    """r (B, D) and whether each customer is contacted (B,) -> the representation the heads read."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.effect = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, d_model))

    def start_at_no_effect(self) -> None:
        """Zero the last layer (after the network's weight initialization, which would overwrite it)."""
        nn.init.zeros_(self.effect[-1].weight)
        nn.init.zeros_(self.effect[-1].bias)

    def forward(self, representation: torch.Tensor, contacted: torch.Tensor) -> torch.Tensor:
        return representation + contacted.to(representation.dtype).unsqueeze(-1) * self.effect(representation)
