"""How well a model trained with campaigns ranks customers by the effect of contacting them, judged on the
validation customers' contacts (held apart from training): Qini AUUC and the observed effect by decile of
predicted uplift (:mod:`churnformer.evaluation.uplift`), for churn (as retention) and spend at the main horizon.

The network's predictions without and with the contact, uncalibrated (calibration rescales both arms alike).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from churnformer.data.campaigns import arm_offer, arm_sent
from churnformer.evaluation.uplift import judge_effects
from churnformer.modeling.network import ChurnFormer
from churnformer.modeling.scoring_model import spend_quantity
from churnformer.schema import (
    CHURN_BY_HORIZON,
    CHURN_PROBABILITY,
    CONTACTED,
    OBSERVED_BY_HORIZON,
    SPEND_BY_HORIZON,
)
from churnformer.training.datamodule import ChurnDataModule

UPLIFT_DECILES = "uplift_deciles.csv"


@torch.no_grad()
def contact_predictions(network: ChurnFormer, batches: Iterable[dict[str, torch.Tensor]], main: int) -> pd.DataFrame:
    """Per contact: its offer (index into ``network.contact.offers``), whether it was sent, its observed churn and
    spend at the main horizon (only contacts whose main horizon the log observes), and the network's churn
    probability and expected spend without and with its offer (a held-out contact: the offer it was held out
    of)."""
    heads = network.heads
    churn = next(head.quantity for head in heads.values() if heads.column(head) == CHURN_PROBABILITY)
    spend = spend_quantity(heads)
    parts = []
    network.eval()
    for batch in batches:
        inputs = {name: values for name, values in batch.items() if name != CONTACTED}
        representation = network.represent(inputs)
        held, sent = network.heads_in_campaign(representation, inputs)
        without = heads.predict(held, None, main)
        offers = [heads.predict(raw, None, main) for raw in sent]
        arm = batch[CONTACTED].numpy()
        offer = arm_offer(arm).astype(np.int64)
        rows = np.arange(len(arm))
        part = {
            "offer": offer,
            "treated": arm_sent(arm).astype(np.int8),
            "observed": batch[OBSERVED_BY_HORIZON][:, main].numpy(),
            "churn": batch[CHURN_BY_HORIZON][:, main].numpy(),
            "spend": batch[SPEND_BY_HORIZON][:, main].numpy(),
            "churn_without": without[churn][:, main].float().numpy(),
            "churn_with": _own_offer([o[churn][:, main] for o in offers], offer, rows),
        }
        if spend:
            part["spend_without"] = without[spend][:, main].float().numpy()
            part["spend_with"] = _own_offer([o[spend][:, main] for o in offers], offer, rows)
        parts.append(pd.DataFrame(part))
    frame = pd.concat(parts, ignore_index=True)
    return frame.loc[frame["observed"] > 0].reset_index(drop=True)


def _own_offer(per_offer: list[torch.Tensor], offer: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each contact's prediction under its own offer, from every offer's (B,) predictions."""
    return torch.stack(per_offer, dim=1).float().numpy()[rows, offer]


def evaluate_contacts(network: ChurnFormer, datamodule: ChurnDataModule, directory: Path) -> dict[str, float]:
    """``uplift/<metric>/val`` metrics of the validation contacts (each judged by its own offer's predicted
    effect; each arm's predicted and observed levels too), and with several offers each offer's,
    ``uplift/<offer>/<metric>/val``; the deciles of all of them in ``directory`` (``uplift_deciles.csv``); {} for
    a model trained without campaigns."""
    loader = datamodule.uplift_loader()
    if network.contact is None or loader is None:
        return {}
    frame = contact_predictions(network, loader, datamodule.data.grid.main_index)
    offers = network.contact.offers
    metrics, deciles = _judged(frame, "uplift")
    for index, offer in enumerate(offers if len(offers) > 1 else ()):
        own = frame.loc[frame["offer"].to_numpy() == index]
        if own["treated"].nunique() == 2:  # both arms of this offer among the validation contacts
            judged, offer_deciles = _judged(own, f"uplift/{offer}")
            metrics |= judged
            deciles = pd.concat([deciles, offer_deciles.assign(offer=offer)], ignore_index=True)
    directory.mkdir(parents=True, exist_ok=True)
    deciles.to_csv(directory / UPLIFT_DECILES, index=False)
    return metrics


def _judged(frame: pd.DataFrame, prefix: str) -> tuple[dict[str, float], pd.DataFrame]:
    """``<prefix>/<metric>/val`` of the contacts of ``frame`` (:func:`contact_predictions`) and their deciles."""
    effects = {"churn": (1.0 - frame["churn"].to_numpy(), frame["churn_without"] - frame["churn_with"])}
    if "spend_without" in frame:
        effects["spend"] = (frame["spend"].to_numpy(), frame["spend_with"] - frame["spend_without"])
    judged, deciles = judge_effects(effects, frame["treated"].to_numpy().astype(np.int8))
    metrics = {f"{prefix}/contacts/val": float(len(frame)), **{f"{prefix}/{k}/val": v for k, v in judged.items()}}
    return metrics | _arm_levels(frame, prefix), deciles


def _arm_levels(frame: pd.DataFrame, prefix: str) -> dict[str, float]:
    """Each arm's mean predicted and observed churn and spend (``<prefix>/churn_held_out_predicted/val``, ...):
    an effect that is off shows here which arm is (the held-out one, when campaigns reach customers unlike the
    log's others)."""
    levels = {}
    for arm, sent, column in (("held_out", 0, "without"), ("sent", 1, "with")):
        rows = frame["treated"].to_numpy() == sent
        for outcome in ("churn", "spend"):
            if f"{outcome}_{column}" in frame and rows.any():
                levels[f"{prefix}/{outcome}_{arm}_predicted/val"] = float(frame[f"{outcome}_{column}"][rows].mean())
                levels[f"{prefix}/{outcome}_{arm}_observed/val"] = float(frame[outcome][rows].mean())
    return levels
