"""``churnformer-featurize``: a log featurized once into a training set on disk (:mod:`churnformer.data.store`),
with the same ``data.*`` settings ``churnformer-train`` takes; ``churnformer-train data=dataset data.path=DIR``
then trains from it."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from churnformer.data.parts import PartitionedBuild
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
    build = PartitionedBuild(cfg.memory_budget_mb, cfg.partitions)
    if cfg.engine not in ("local", "spark"):
        raise ConfigError(f"engine={cfg.engine}: local (this process) or spark")
    spark = OmegaConf.to_container(cfg.spark, resolve=True) if cfg.engine == "spark" else None
    datamodule.write_dataset(output, int(cfg.shard_examples), build=build, spill_dir=cfg.spill_dir, spark=spark)
    manifest = read_manifest(output)
    print(
        f"featurized {manifest['examples']:,} examples ({manifest['training_examples']:,} training, "
        f"{manifest['validation_examples']:,} validation) and {manifest['events']:,} events into "
        f"{len(manifest['shards'])} shard(s){partitioned(manifest)} in {time.perf_counter() - started:.1f} s: "
        f"{output}\n"
        f"train from it: churnformer-train data=dataset data.path={output}"
    )
    return output


def partitioned(manifest: dict) -> str:
    """How a partitioned featurization went, for the summary line ('' in memory)."""
    if "partitions" not in manifest:
        return ""
    share = manifest["featurizer_fit_share"]
    fitted = "every customer" if share == 1 else f"a sample of {share:.1%} of the customers"
    return f" from {manifest['partitions']} partition(s) or bucket(s), the featurizer fitted on {fitted},"
