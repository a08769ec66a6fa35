"""``churnformer-backtest``: rolling-origin evaluation over many cutoffs of one log. Does the model hold up
over time, how fast does it decay, and does it stay ahead of the baselines month after month?

At each backtest cutoff ``c`` (``backtest.cutoffs``, or ``backtest.count`` cutoffs ``backtest.step_days``
apart back from the last cutoff whose main horizon the log covers), the model is asked what a team scoring on
that day would ask it, and judged on what the customers then did:

- ``backtest.retrain=true``: a model trained on the log as it stood at ``c`` (events before the end of that
  day only), at the training cutoff ``c - horizon_days`` (the latest whose labels were known by ``c``), as a
  team retraining every month would; ``false``: one model trained so at the first cutoff, scored at every
  later one (how fast it decays).
- ``backtest.baselines``: RFM + LightGBM trained the same way (at ``c - horizon_days`` on the log as of ``c``)
  and BG/NBD + Gamma-Gamma fitted on the history before ``c``.
- Every customer with an event before ``c`` is scored and evaluated at each horizon the log covers after ``c``.

Writes into ``backtest.output`` (default: the run directory): ``backtest.csv`` and ``backtest.parquet`` (one
row per model, cutoff and horizon), ``backtest.md`` with ``backtest.png``, and TensorBoard runs under
``tensorboard/<model>`` (the cutoff as the step, in days after the first; the cutoff date as wall time). Each
finished (cutoff, model) is kept under ``cutoffs/``, so a backtest run again with the same ``backtest.output``
continues from the cutoffs it finished.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm

from churnformer.data.events import CUSTOMER_ID, TIMESTAMP
from churnformer.data.labels import horizon_labels
from churnformer.data.window import HorizonGrid, Window
from churnformer.errors import ConfigError
from churnformer.evaluation.metrics import HEADLINE_METRICS
from churnformer.evaluation.report import align, compute_metrics
from churnformer.files import write_atomically
from churnformer.schema import RUN_MODEL
from churnformer.serving.predictor import AS_LOADED, Predictor
from churnformer.serving.settings import ScoringSettings

CHURNFORMER, LIGHTGBM, BTYD = "churnformer", "lightgbm", "btyd"
BASELINES = (LIGHTGBM, BTYD)
# Per model, cutoff and horizon (the horizon's own metrics; PR-AUC at the main horizon only; the C-index of
# the whole grid on every row of its cutoff).
METRICS = HEADLINE_METRICS
ROW_COLUMNS = ("model", "retrain", "cutoff", "trained_cutoff", "horizon_days", "n_customers", *METRICS, "seconds")
FIGURE_METRICS = ("churn_auc", "churn_ece", "spend_gini", "spend_aggregate_error")
TABLE, REPORT, FIGURE = "backtest.csv", "backtest.md", "backtest.png"


@dataclass(frozen=True)
class BacktestSettings:
    """``backtest.*`` in ``conf/backtest.yaml``."""

    cutoffs: list[str] | None
    count: int
    step_days: float
    retrain: bool
    baselines: list[str]
    output: str | None
    progress: bool

    def __post_init__(self) -> None:
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise ConfigError(f"backtest.baselines: unknown {unknown}; choose among {list(BASELINES)}")
        if not self.cutoffs and (self.count < 1 or self.step_days <= 0):
            raise ConfigError(
                f"backtest.count must be >= 1 and backtest.step_days > 0, got {self.count} and {self.step_days}"
            )


def day(timestamp: pd.Timestamp) -> str:
    return str(timestamp.date())


def backtest_cutoffs(settings: BacktestSettings, events: pd.DataFrame, horizon_days: float) -> list[str]:
    """The cutoffs, oldest first: as given, or ``count`` of them ``step_days`` apart, the last one the latest
    whose main horizon the log covers. Each needs a training cutoff (``horizon_days`` earlier) with history."""
    first, last = events[TIMESTAMP].min(), events[TIMESTAMP].max()
    if settings.cutoffs:
        cutoffs = sorted(pd.Timestamp(str(c)) for c in settings.cutoffs)
    else:
        latest = (last - pd.Timedelta(days=horizon_days)).normalize() - pd.Timedelta(days=1)
        cutoffs = [latest - pd.Timedelta(days=k * settings.step_days) for k in reversed(range(settings.count))]
    for cutoff in cutoffs:
        trained = cutoff - pd.Timedelta(days=horizon_days)
        if trained <= first:
            raise ConfigError(
                f"backtest cutoff {day(cutoff)}: its training cutoff {day(trained)} ({horizon_days:g} days earlier) "
                f"is before the log starts ({day(first)}); use fewer or later cutoffs"
            )
        if cutoff + pd.Timedelta(days=1) > last:
            raise ConfigError(f"backtest cutoff {day(cutoff)}: the log ends {day(last)}, nothing happens after it")
    return [day(c) for c in cutoffs]


class Backtest:
    """The job: the log loaded once, each (cutoff, model) evaluated and kept, the outputs from all of them."""

    def __init__(self, cfg: DictConfig) -> None:
        import hydra

        self.cfg = cfg
        self.settings = BacktestSettings(**OmegaConf.to_container(cfg.backtest, resolve=True))
        self.output = Path(self.settings.output or cfg.paths.output_dir)
        source = hydra.utils.instantiate(cfg.data.source)
        source.prepare()
        self.events, self.customers = source.load()
        self.horizon_days = float(cfg.data.horizon_days)
        self.grid = HorizonGrid.of(list(cfg.data.horizons_days), self.horizon_days)
        self.cutoffs = backtest_cutoffs(self.settings, self.events, self.horizon_days)
        self.models = [CHURNFORMER, *self.settings.baselines]

    def run(self) -> pd.DataFrame:
        rows = []
        bar = tqdm(self.cutoffs, desc="backtest", unit="cutoff", disable=not self.settings.progress)
        for cutoff in bar:
            for model in self.models:
                rows += self.evaluated(cutoff, model)
        table = pd.DataFrame(rows, columns=list(ROW_COLUMNS))
        write_outputs(table, self.output, self.horizon_days)
        return table

    def evaluated(self, cutoff: str, model: str) -> list[dict[str, Any]]:
        """The rows of ``model`` at ``cutoff``: kept from an earlier run of the backtest, or computed now."""
        kept = self.output / "cutoffs" / cutoff / f"{model}.json"
        if kept.is_file():
            return json.loads(kept.read_text())
        started = time.perf_counter()
        trained_cutoff = self.training_cutoff(cutoff)
        predictions = self.predictions(model, cutoff, trained_cutoff)
        rows = self.rows(model, cutoff, trained_cutoff, predictions, time.perf_counter() - started)
        write_atomically(kept, lambda p: p.write_text(json.dumps(rows, indent=2, allow_nan=True)))
        return rows

    def training_cutoff(self, cutoff: str) -> str:
        scored_at = self.cutoffs[0] if not self.settings.retrain else cutoff
        return day(pd.Timestamp(scored_at) - pd.Timedelta(days=self.horizon_days))

    def known_at(self, cutoff: str) -> pd.DataFrame:
        """The log as it stood at the end of the ``cutoff`` day."""
        end = Window.from_cutoff(cutoff, self.horizon_days).feature_end_ns
        stamps = self.events[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64)
        return self.events.loc[stamps < end]

    def predictions(self, model: str, cutoff: str, trained_cutoff: str) -> pd.DataFrame:
        known_at = self.cutoffs[0] if not self.settings.retrain else cutoff
        known = self.known_at(known_at)
        seed = int(self.cfg.seed)
        if model == CHURNFORMER:
            run_dir = self.train(known, trained_cutoff, known_at)
            settings = ScoringSettings.defaults(progress=False)
            return Predictor(run_dir, settings).score(self.events, cutoff, self.customers, AS_LOADED).predictions
        score_window = Window.from_cutoff(cutoff, self.horizon_days)
        if model == LIGHTGBM:
            from churnformer.baselines.gbm import fit_predict_gbm_forward

            trained = [d for d in self.grid.days if d <= self.horizon_days]  # labels known by the cutoff
            return fit_predict_gbm_forward(
                self.known_at(cutoff),
                Window.from_cutoff(self.training_cutoff(cutoff), self.horizon_days),
                score_window,
                seed=seed,
                horizons=trained,
                group_by=self.cfg.data.features.group_by,
            )
        from churnformer.baselines.btyd import fit_predict_btyd

        history = self.known_at(cutoff)
        ids = history[CUSTOMER_ID].unique()
        return fit_predict_btyd(history, score_window, ids, ids, horizons=list(self.grid.days))

    def train(self, known: pd.DataFrame, trained_cutoff: str, known_at: str) -> Path:
        """A churnformer model trained at ``trained_cutoff`` on ``known``; reused when it exists (retrain=false
        trains once; a run interrupted before its model file was written is trained again from scratch)."""
        from churnformer.training.job import train

        run_dir = self.output / "runs" / f"known-{known_at}"
        if (run_dir / RUN_MODEL).is_file():
            return run_dir
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = copy.deepcopy(self.cfg)
        with open_dict(cfg):
            cfg.data.cutoff = trained_cutoff
            cfg.data.columns = {}  # the frames below are in the standard contract already
            cfg.paths.output_dir = str(run_dir)
            cfg.predict_after_training = False
            cfg.explain_validation = False
            cfg.trainer.enable_progress_bar = False
        train(cfg, events=known, customers=self.customers)
        return run_dir

    def rows(
        self, model: str, cutoff: str, trained_cutoff: str, predictions: pd.DataFrame, seconds: float
    ) -> list[dict[str, Any]]:
        window = Window.from_cutoff(cutoff, self.horizon_days)
        population = np.sort(predictions[CUSTOMER_ID].to_numpy())
        labels = horizon_labels(self.events, window, self.grid, population)
        metrics = compute_metrics(align(predictions, labels, names=(f"{model} at {cutoff}", "labels")))
        rows = []
        for days in self.grid.days:
            suffix = f"_{days:g}d"
            if f"churn_auc{suffix}" not in metrics and days != self.horizon_days:
                continue  # the model does not predict it, or the log does not cover it
            at = {name: metrics.get(f"{name}{suffix}", np.nan) for name in METRICS}
            if days == self.horizon_days:
                at |= {name: metrics[name] for name in METRICS if name in metrics and name != "survival_c_index"}
            at["survival_c_index"] = metrics.get("survival_c_index", np.nan)
            rows.append(
                {
                    "model": model,
                    "retrain": self.settings.retrain if model == CHURNFORMER else True,
                    "cutoff": cutoff,
                    "trained_cutoff": trained_cutoff if model != BTYD else cutoff,
                    "horizon_days": days,
                    "n_customers": len(predictions),
                    **{name: float(value) for name, value in at.items()},
                    "seconds": round(seconds, 1),
                }
            )
        return rows


def write_outputs(table: pd.DataFrame, output: Path, horizon_days: float) -> None:
    """The table (CSV and Parquet), the markdown report with its figure, and TensorBoard."""
    write_atomically(output / TABLE, lambda p: table.to_csv(p, index=False))
    write_atomically(output / "backtest.parquet", lambda p: table.to_parquet(p, index=False))
    write_atomically(output / FIGURE, lambda p: backtest_figure(table).savefig(p, format="png", dpi=100))
    write_atomically(output / REPORT, lambda p: p.write_text(report_markdown(table, horizon_days)))
    write_tensorboard(table, output / "tensorboard")


def report_markdown(table: pd.DataFrame, horizon_days: float) -> str:
    """The main horizon's metrics per cutoff, models side by side, then where the full table is."""
    main = table[table["horizon_days"] == horizon_days]
    lines = [f"# Backtest: {table['cutoff'].nunique()} cutoffs, main horizon {horizon_days:g} days", ""]
    for metric in ("churn_auc", "churn_pr_auc", "churn_ece", "spend_gini", "spend_spearman"):
        wide = main.pivot_table(index="cutoff", columns="model", values=metric, aggfunc="first", dropna=False)
        if wide.empty:
            continue
        models = list(wide.columns)
        lines += [f"## {metric}", "", "| cutoff | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        for cutoff, values in wide.iterrows():
            cells = ["n/a" if pd.isna(v) else f"{v:.4f}" for v in values]
            lines.append(f"| {cutoff} | " + " | ".join(cells) + " |")
        means = ["n/a" if pd.isna(v) else f"**{v:.4f}**" for v in wide.mean()]
        lines += ["| mean | " + " | ".join(means) + " |", ""]
    lines += [f"Every horizon: `{TABLE}` (one row per model, cutoff and horizon).", "", f"![backtest]({FIGURE})", ""]
    return "\n".join(lines)


def backtest_figure(table: pd.DataFrame) -> Figure:
    """Each metric over the cutoffs, one panel per horizon, one line per model."""
    horizons = sorted(table["horizon_days"].unique())
    figure = Figure(figsize=(3.2 * len(horizons) + 1, 2.6 * len(FIGURE_METRICS)), layout="constrained")
    axes = np.atleast_2d(figure.subplots(len(FIGURE_METRICS), len(horizons), squeeze=False))
    for i, metric in enumerate(FIGURE_METRICS):
        for j, days in enumerate(horizons):
            axis = axes[i, j]
            for model, rows in table[table["horizon_days"] == days].groupby("model"):
                axis.plot(pd.to_datetime(rows["cutoff"]), rows[metric], marker="o", label=model)
            axis.set_title(f"{metric}, {days:g} days", fontsize=9)
            axis.tick_params(axis="x", rotation=45, labelsize=7)
    axes[0, 0].legend(fontsize=7)
    figure.suptitle("Backtest: metric by cutoff")
    return figure


def write_tensorboard(table: pd.DataFrame, directory: Path) -> None:
    """One run per model; ``backtest/<metric>/<h>d`` at step = days after the first cutoff, wall time = the
    cutoff, so the dates read on TensorBoard's wall-time axis."""
    from torch.utils.tensorboard import SummaryWriter

    shutil.rmtree(directory, ignore_errors=True)  # rewritten whole: a resumed backtest logs each cutoff once
    first = pd.Timestamp(table["cutoff"].min())
    for model, rows in table.groupby("model"):
        with SummaryWriter(str(directory / str(model))) as writer:
            for row in rows.to_dict("records"):
                cutoff = pd.Timestamp(row["cutoff"])
                step, wall = int((cutoff - first).days), cutoff.timestamp()
                for metric in METRICS:
                    if np.isfinite(row[metric]):
                        writer.add_scalar(f"backtest/{metric}/{row['horizon_days']:g}d", row[metric], step, wall)


def run_backtest(cfg: DictConfig) -> pd.DataFrame:
    """``churnformer-backtest`` from its composed config; prints where the outputs are."""
    started = time.perf_counter()
    job = Backtest(cfg)
    table = job.run()
    print(report_markdown(table, job.horizon_days).split("Every horizon")[0].rstrip())
    print(
        f"backtest: {len(job.cutoffs)} cutoffs x {len(job.models)} models in {time.perf_counter() - started:.0f} s; "
        f"{job.output / REPORT}, {job.output / TABLE}; TensorBoard: tensorboard --logdir {job.output / 'tensorboard'}"
    )
    return table
