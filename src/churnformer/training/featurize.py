"""``churnformer-featurize``: a log featurized once into a training set on disk (:mod:`churnformer.data.store`),
with the same ``data.*`` settings ``churnformer-train`` takes; ``churnformer-train data=dataset data.path=DIR``
then trains from it."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from churnformer.data.sources import TrainingSetDirectory
from churnformer.data.store import read_manifest
from churnformer.errors import ConfigError
from churnformer.training.job import build_datamodule


def featurize(cfg: DictConfig) -> Path:
    """Build the training set of ``cfg.data`` and write it to ``cfg.output``; prints what it wrote."""
    started = time.perf_counter()
    cfg.paths.output_dir = str(cfg.output)  # a text model's sentence encoder and embedded texts go with the dataset
    datamodule = build_datamodule(cfg, None, None, setup=False)
    if isinstance(datamodule.source, TrainingSetDirectory):
        raise ConfigError("data=dataset is a featurized dataset already: featurize the log it came from (data=csv ...)")
    output = Path(cfg.output)
    datamodule.write_dataset(output, int(cfg.shard_examples))
    manifest = read_manifest(output)
    print(
        f"featurized {manifest['examples']:,} examples ({manifest['training_examples']:,} training, "
        f"{manifest['validation_examples']:,} validation) and {manifest['events']:,} events into "
        f"{len(manifest['shards'])} shard(s) in {time.perf_counter() - started:.1f} s: {output}\n"
        f"train from it: churnformer-train data=dataset data.path={output}"
    )
    return output
