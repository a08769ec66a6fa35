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
    """Per contact: whether it was sent, its observed churn and spend at the main horizon (only contacts whose
    main horizon the log observes), and the network's churn probability and expected spend without and with it."""
    heads = network.heads
    churn = next(head.quantity for head in heads.values() if heads.column(head) == CHURN_PROBABILITY)
    spend = spend_quantity(heads)
    parts = []
    network.eval()
    for batch in batches:
        inputs = {name: values for name, values in batch.items() if name != CONTACTED}
        representation = network.represent(inputs)
        without, with_contact = (
            heads.predict(raw, None, main) for raw in network.heads_in_campaign(representation, inputs)
        )
        part = {
            "treated": batch[CONTACTED].numpy(),
            "observed": batch[OBSERVED_BY_HORIZON][:, main].numpy(),
            "churn": batch[CHURN_BY_HORIZON][:, main].numpy(),
            "spend": batch[SPEND_BY_HORIZON][:, main].numpy(),
            "churn_without": without[churn][:, main].float().numpy(),
            "churn_with": with_contact[churn][:, main].float().numpy(),
        }
        if spend:
            part["spend_without"] = without[spend][:, main].float().numpy()
            part["spend_with"] = with_contact[spend][:, main].float().numpy()
        parts.append(pd.DataFrame(part))
    frame = pd.concat(parts, ignore_index=True)
    return frame.loc[frame["observed"] > 0].reset_index(drop=True)


def evaluate_contacts(network: ChurnFormer, datamodule: ChurnDataModule, directory: Path) -> dict[str, float]:
    """``uplift/<metric>/val`` metrics of the validation contacts, and their deciles in ``directory``
    (``uplift_deciles.csv``); {} for a model trained without campaigns."""
    loader = datamodule.uplift_loader()
    if network.contact is None or loader is None:
        return {}
    frame = contact_predictions(network, loader, datamodule.data.grid.main_index)
    effects = {"churn": (1.0 - frame["churn"].to_numpy(), frame["churn_without"] - frame["churn_with"])}
    if "spend_without" in frame:
        effects["spend"] = (frame["spend"].to_numpy(), frame["spend_with"] - frame["spend_without"])
    judged, deciles = judge_effects(effects, frame["treated"].to_numpy().astype(np.int8))
    metrics = {"uplift/contacts/val": float(len(frame)), **{f"uplift/{k}/val": v for k, v in judged.items()}}
    directory.mkdir(parents=True, exist_ok=True)
    deciles.to_csv(directory / UPLIFT_DECILES, index=False)
    return metrics
