"""Read a training checkpoint back into the network, without Lightning and without unpickling code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from churnformer.artifacts.stacked_trees import STACKED_COLUMNS
from churnformer.data.featurizer import Featurizer
from churnformer.data.labels import ChurnDefinition
from churnformer.errors import ModelFileError
from churnformer.modeling.network import ChurnFormer
from churnformer.schema import META_HORIZONS

# Where the LightningModule keeps its parts in a checkpoint (churnformer.training.module).
HYPERPARAMETERS = "hyper_parameters"
NETWORK_PREFIX = "network."
# Checkpoints written before heads were components (``model.loss`` weights, one module of fixed heads).
LEGACY_HEADS = {
    "survival": (
        "churnformer.modeling.heads.survival.SurvivalHead",
        "churn",
        "heads.hazard.",
        "heads.survival.hazard.",
    ),
    "spend": ("churnformer.modeling.heads.spend.SpendHead", "spend", "heads.spend.", "heads.spend.amount."),
    "decline": ("churnformer.modeling.heads.decline.DeclineHead", "decline", "heads.decline.", "heads.decline.logit."),
}


def load_checkpoint(path: str | Path) -> tuple[ChurnFormer, dict[str, Any]]:
    """The trained network (in eval mode) and the checkpoint's hyperparameters (``featurizer_json``,
    ``network``, ``export_metadata``, ...). ``weights_only=True``: tensors and plain data only."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: checkpoint file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        hparams = checkpoint[HYPERPARAMETERS]
        state = checkpoint["state_dict"]
    except Exception as error:  # torch's unpickler raises many kinds (IndexError, ValueError, ...) for foreign files
        first_line = str(error).splitlines()[0] if str(error) else ""  # torch's own messages run over many lines
        raise ModelFileError(
            f"{path}: not a churnformer training checkpoint ({type(error).__name__}: {first_line})"
        ) from error
    if "heads" not in hparams:
        hparams, state = from_before_head_components(hparams, state)
    metadata = hparams["export_metadata"]
    featurizer = Featurizer.from_json(hparams["featurizer_json"])
    stacked = len(STACKED_COLUMNS) if hparams.get("stacked_trees") else 0
    network = ChurnFormer.build(
        hparams["network"], featurizer, len(metadata[META_HORIZONS]), hparams["heads"], extra_aggregates=stacked
    )
    network.load_state_dict(
        {k.removeprefix(NETWORK_PREFIX): v for k, v in state.items() if k.startswith(NETWORK_PREFIX)}
    )
    return network.eval(), hparams


def from_before_head_components(
    hparams: dict[str, Any], state: dict[str, torch.Tensor]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A checkpoint of a release before heads were components, as this release writes one: its heads (the
    decline head for a decline model) with the weights of ``model.loss``, and its head weights renamed."""
    decline = ChurnDefinition.of_metadata(hparams["export_metadata"]).is_decline
    chosen = {name: legacy for name, legacy in LEGACY_HEADS.items() if name != "decline" or decline}
    heads = {
        name: {"_target_": target, "weight": hparams["loss"][weight]} for name, (target, weight, _, _) in chosen.items()
    }
    renamed = {}
    for key, value in state.items():
        for _, _, old, new in chosen.values():
            if key.startswith(NETWORK_PREFIX + old):
                key = NETWORK_PREFIX + new + key.removeprefix(NETWORK_PREFIX + old)
                break
        renamed[key] = value
    return {**hparams, "heads": heads}, renamed
