"""What a retention contact changes in a customer (models trained with campaigns, ``data.campaigns``).

The network's customer representation r (what every head reads) is moved twice for a campaign's customers:

- r -> r_c = r + p(r): who a campaign reaches. Campaign lists are drawn on more than the event log shows (a
  CRM system knows who unsubscribed, who consented, who is still a customer), so the customers a campaign
  contacts differ from the log's other customers with the same history. Every contact, sent or held out, is
  in this context; the held-out ones teach it what the heads should predict for that population without a
  contact. Without it the arm without a contact was learned from every other example, and the difference
  between the campaign's population and those examples was read as the contact's effect (on the synthetic
  world, where campaigns reach customers who have not silently churned, the predicted effect ran at twice
  the observed one).
- r_c -> r_c + g(r_c): the contact itself, for sent contacts only.

p and g are two-layer MLPs. The heads are the same for every arm, so with the contact or without it every head
predicts its label over the horizon grid the same way (the TARNet idea: one representation, per-arm outcomes;
Shalit et al. 2017, with the treated arm as a residual of the control one). The effect of a contact is the
difference between the heads at r_c + g(r_c) and at r_c: learned from the randomized contrast alone. Both last
layers start at zero: a campaign changes nothing until the contacts say otherwise.
"""

from __future__ import annotations

import torch
from torch import nn

SENT = 1  # the arm of a contact sent the offer; 0: held out; NO_CONTACT: an example of no campaign
NO_CONTACT = -1


def _residual_mlp(d_model: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, d_model))


class ContactEffect(nn.Module):
    """r (B, D) and each example's arm (B,): ``SENT``, 0 (held out) or ``NO_CONTACT`` -> the representation
    the heads read."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.population = _residual_mlp(d_model)
        self.effect = _residual_mlp(d_model)

    def start_at_no_effect(self) -> None:
        """Zero both last layers (after the network's weight initialization, which would overwrite them)."""
        for mlp in (self.population, self.effect):
            nn.init.zeros_(mlp[-1].weight)
            nn.init.zeros_(mlp[-1].bias)

    def forward(self, representation: torch.Tensor, arm: torch.Tensor) -> torch.Tensor:
        in_campaign = (arm != NO_CONTACT).to(representation.dtype).unsqueeze(-1)
        sent = (arm == SENT).to(representation.dtype).unsqueeze(-1)
        reached = representation + in_campaign * self.population(representation)
        return reached + sent * self.effect(reached)

    def arms(self, representation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every customer as one a campaign reaches: (held out, sent the offer)."""
        reached = representation + self.population(representation)
        return reached, reached + self.effect(reached)
