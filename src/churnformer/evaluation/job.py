"""``churnformer-evaluate``: one scoring run against what happened (:mod:`churnformer.evaluation.report`), or
several past runs as one table over time (:mod:`churnformer.evaluation.outcomes`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from churnformer.data.events import ColumnMapping
from churnformer.data.labels import LabelSpec
from churnformer.defaults import serving_defaults
from churnformer.errors import InputError
from churnformer.evaluation.outcomes import is_runs_directory, track_outcomes
from churnformer.evaluation.report import evaluate_files


def run_evaluation(config: dict[str, Any]) -> dict[str, Path]:
    """The ``churnformer-evaluate`` job from a plain config dict (see ``conf/serving/evaluate.yaml``)."""
    config = {**serving_defaults("evaluate"), **config}
    columns = ColumnMapping().overridden(config["columns"])
    spec = LabelSpec.of(
        config["purchase_types"], config["event_type_column"], config["churn_definition"], config["decline_threshold"]
    )
    if is_runs_directory(config["predictions"]):
        if config["labels"] is not None or config["cutoff"] is not None:
            raise InputError(
                "several past runs are evaluated against events=PATH, each at the cutoff its summary records: "
                "drop labels= and cutoff="
            )
        return track_outcomes(
            config["predictions"],
            config["events"],
            horizon_days=config["horizon_days"],
            columns=columns,
            spec=spec,
            output_dir=config["output"],
            customers=config["customers"],
        )
    return evaluate_files(
        config["predictions"],
        config["labels"],
        events=config["events"],
        cutoff=config["cutoff"],
        horizon_days=config["horizon_days"],
        columns=columns,
        spec=spec,
        output_dir=config["output"],
        customers=config["customers"],
        campaigns=config["campaigns"],
        offer=config["offer"],
    )
