"""Read a training checkpoint back into the network, without Lightning and without unpickling code."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from churnformer.data.featurizer import Featurizer
from churnformer.data.labels import ChurnDefinition
from churnformer.errors import ModelFileError
from churnformer.modeling.network import ChurnFormer
from churnformer.schema import META_HORIZONS

# Where the LightningModule keeps its parts in a checkpoint (churnformer.training.module).
HYPERPARAMETERS = "hyper_parameters"
NETWORK_PREFIX = "network."


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
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, TypeError) as error:
        first_line = str(error).splitlines()[0] if str(error) else ""  # torch's own messages run over many lines
        raise ModelFileError(
            f"{path}: not a churnformer training checkpoint ({type(error).__name__}: {first_line})"
        ) from error
    metadata = hparams["export_metadata"]
    featurizer = Featurizer.from_json(hparams["featurizer_json"])
    decline = ChurnDefinition.of_metadata(metadata).is_decline
    network = ChurnFormer.build(hparams["network"], featurizer, len(metadata[META_HORIZONS]), decline)
    network.load_state_dict(
        {k.removeprefix(NETWORK_PREFIX): v for k, v in state.items() if k.startswith(NETWORK_PREFIX)}
    )
    return network.eval(), hparams
