"""The model card of a training run (Mitchell et al., "Model Cards for Model Reporting", 2019): what the model
was trained on and for, how well it did on customers it did not see, where it is weak, and what it must not
be used for. ``model_card.md`` in the run directory, its JSON twin in the model file's metadata
(``schema.META_MODEL_CARD``), and one summary line that ``churnformer-predict`` prints when it starts.

Torch-free: the training job builds the card from plain values, scoring reads it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from churnformer.data.events import CUSTOMER_ID, TIMESTAMP
from churnformer.evaluation.metrics import HEADLINE_METRICS

# The validation metrics the card shows, from the exported model's evaluation (evaluation/metrics.json).
CARD_METRICS = HEADLINE_METRICS
# The knobs a reader of the card needs first (config keys).
CARD_KNOBS = (
    "model.network.backbone._target_",
    "model.network.d_model",
    "model.network.n_layers",
    "model.heads",
    "data.features.max_len",
    "data.features.group_by",
    "data.features.aggregates.enabled",
    "data.stacking.enabled",
    "pretrain.enabled",
    "data.rolling_cutoffs.count",
    "trainer.max_epochs",
    "model.optimizer.lr",
)
# A slice whose churn AUC is this far below the whole validation population's is named a weakness.
WEAK_SLICE_AUC_GAP = 0.05
INTENDED_USE = (
    "Rank customers by the risk that they make no purchase (or decline) within the horizons below, and by the "
    "spend expected over them, as of a cutoff like the one trained at; choose whom a retention team contacts "
    "and what each customer is worth over time (CLV).",
    "Batch scoring with churnformer-predict over a log with the columns and meaning of the training log.",
)
OUT_OF_SCOPE = (
    "Causal decisions: the drivers are associations in the data, not effects of actions; what an offer "
    "changes needs an experiment with a holdout.",
    "Decisions about individuals with legal or similarly significant effects (credit, employment, insurance, "
    "pricing by protected attributes): the model was not designed or evaluated for them.",
    "Logs of another business, or of this one after its products, prices or channels changed, without "
    "retraining and a check with churnformer-evaluate and churnformer-monitor.",
)


def log_facts(events: pd.DataFrame, customers: pd.DataFrame | None) -> dict[str, Any]:
    """What the training log held: events, customers, the period, and the customers table's attributes."""
    stamps = events[TIMESTAMP]
    return {
        "events": len(events),
        "customers": int(events[CUSTOMER_ID].nunique()),
        "first_event": str(stamps.min()) if len(events) else None,
        "last_event": str(stamps.max()) if len(events) else None,
        "static_attributes": [c for c in customers.columns if c != CUSTOMER_ID] if customers is not None else [],
    }


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def build_card(
    *,
    version: str,
    run: Mapping[str, Any],
    task: Mapping[str, Any],
    data: Mapping[str, Any],
    knobs: Mapping[str, Any],
    validation: Mapping[str, float],
    calibration: str | None,
    slices: pd.DataFrame | None,
) -> dict[str, Any]:
    """The card as plain JSON values. ``run``: seed, commit, epochs; ``task``: churn definition, cutoff,
    horizons (and those dropped); ``data``: :func:`log_facts` and the training and validation counts;
    ``validation``: the exported model's metrics on the validation customers."""
    shown = {name: _finite(float(validation[name])) for name in CARD_METRICS if name in validation}
    rows = [] if slices is None else [{k: _finite(v) for k, v in row.items()} for row in slices.to_dict("records")]
    return {
        "churnformer": version,
        "run": dict(run),
        "task": dict(task),
        "data": dict(data),
        "training": dict(knobs),
        "validation": shown,
        "calibration": calibration,
        "slices": rows,
        "intended_use": list(INTENDED_USE),
        "out_of_scope": list(OUT_OF_SCOPE),
        "limits": limits(task, shown, rows),
    }


def limits(task: Mapping[str, Any], validation: Mapping[str, Any], slices: Sequence[Mapping[str, Any]]) -> list[str]:
    """Known limits, from what the run measured: horizons the log could not observe, weak slices, small ones."""
    found = []
    dropped = task.get("horizons_dropped") or []
    if dropped:
        found.append(
            f"No prediction beyond {max(task['horizons_days']):g} days: the horizons {dropped} were dropped, the "
            "training log ends before any window that long."
        )
    overall = validation.get("churn_auc")
    if overall is not None:
        weak = [
            s
            for s in slices
            if not s["small"] and s["churn_auc"] is not None and s["churn_auc"] < overall - WEAK_SLICE_AUC_GAP
        ]
        for s in weak:
            found.append(
                f"Weaker for {s['attribute']}={s['value']}: churn AUC {s['churn_auc']:.3f} against {overall:.3f} "
                f"overall ({s['n_customers']:,} validation customers)."
            )
    small = [s for s in slices if s["small"]]
    if small:
        names = ", ".join(f"{s['attribute']}={s['value']}" for s in small[:5])
        found.append(
            f"Too few validation customers to judge {len(small)} slice(s) ({names}{', ...' if len(small) > 5 else ''})."
        )
    found.append(
        "Calibrated on the validation customers at the training cutoff: scores at later cutoffs can drift; compare "
        "each scoring run with churnformer-monitor and check past runs with churnformer-evaluate."
    )
    return found


def summary_line(card: Mapping[str, Any]) -> str:
    """One line: the task, what the model was trained on, and how well it did."""
    task, data, validation = card["task"], card["data"], card["validation"]
    grid = "/".join(f"{h:g}" for h in task["horizons_days"])
    scores = ", ".join(
        f"{label} {validation[name]:.3f}"
        for name, label in (("churn_auc", "churn AUC"), ("spend_gini", "spend Gini"))
        if validation.get(name) is not None
    )
    return (
        f"model: churn = {task['churn_definition']}, main horizon {task['horizon_days']:g} days (grid {grid}), "
        f"trained at cutoff {task['cutoff']} on {data['training_customers']:,} customers of "
        f"{data['log']['customers']:,}; "
        f"validation {scores or 'not measured'} (seed {card['run']['seed']}, churnformer {card['churnformer']})"
    )


def card_markdown(card: Mapping[str, Any]) -> str:
    """``model_card.md``."""
    task, data, run = card["task"], card["data"], card["run"]
    log = data["log"]
    dropped = task.get("horizons_dropped")
    period = f"{log['first_event']} to {log['last_event']}"
    lines = [
        "# Model card",
        "",
        summary_line(card),
        "",
        "## Task",
        "",
        f"- Churn: {task['churn_definition']}; main horizon {task['horizon_days']:g} days; horizons "
        f"{', '.join(f'{h:g}' for h in task['horizons_days'])} days"
        + (f" (dropped, not observable in the log: {dropped})" if dropped else ""),
        f"- Cutoff: {task['cutoff']} (features from events up to the end of that day)",
        "",
        "## Data",
        "",
        f"- Log: {log['events']:,} events of {log['customers']:,} customers, {period}",
        f"- Events file: {data.get('events_file') or 'a DataFrame'}",
        f"- Static attributes: {', '.join(log['static_attributes']) or 'none'}",
        f"- Training: {data['training_customers']:,} customers, {data['training_examples']:,} examples "
        f"(with {data['rolling_cutoffs']} earlier cutoffs); validation: {data['validation_customers']:,} customers "
        "(a stable hash of the id)",
        *_campaign_lines(data.get("campaigns")),
        "",
        "## Training",
        "",
        f"- Seed {run['seed']}, commit {run.get('git_commit') or 'unknown'}, {run['epochs']} epochs (best: "
        f"{run['best_epoch']})",
        *(f"- `{key}`: {value}" for key, value in card["training"].items()),
        "",
        "## Validation (the exported model, calibrated, on the validation customers)",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {name} | {'n/a' if v is None else f'{v:.4f}'} |" for name, v in card["validation"].items()),
        "",
        f"Calibration: {card['calibration'] or 'none (calibrate=false)'}. It was fitted on these customers, so "
        "their calibration metrics are optimistic.",
        "",
    ]
    if card["slices"]:
        lines += ["## Slices", "", *_slice_rows(card["slices"]), ""]
    lines += ["## Intended use", "", *(f"- {text}" for text in card["intended_use"]), ""]
    lines += ["## Out of scope", "", *(f"- {text}" for text in card["out_of_scope"]), ""]
    lines += ["## Known limits", "", *(f"- {text}" for text in card["limits"]), ""]
    return "\n".join(lines)


def _campaign_lines(campaigns: Mapping[str, Any] | None) -> list[str]:
    """What a model trained with campaigns learned its contact effects from, and where they hold."""
    if not campaigns:
        return []
    costs = campaigns.get("costs") or dict.fromkeys(campaigns["offers"], campaigns["cost"])
    offers = ", ".join(f"{offer} (mean cost {cost:g})" for offer, cost in costs.items())
    several = len(costs) > 1
    return [
        f"- Campaigns: {campaigns['contacts']:,} contacts ({campaigns['sent']:,} sent, {campaigns['held_out']:,} held "
        f"out at random) in {campaigns['campaigns']} campaign(s) from {campaigns['first']} to {campaigns['last']}; "
        f"offers: {offers}{'; an effect learned per offer, best_offer the one of most value' if several else ''}. "
        "The contact effects (churn_uplift, spend_uplift, contact_value) hold where contacts were randomized, for "
        "offers like these"
    ]


def _slice_rows(slices: Sequence[Mapping[str, Any]]) -> list[str]:
    def cell(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    rows = ["| attribute | value | customers | churn AUC | churn ECE | spend Gini |", "|---|---|---|---|---|---|"]
    for s in slices:
        count = f"{s['n_customers']:,}{'*' if s['small'] else ''}"
        cells = [cell(s[name]) for name in ("churn_auc", "churn_ece", "spend_gini")]
        rows.append(f"| {s['attribute']} | {s['value']} | {count} | " + " | ".join(cells) + " |")
    rows.append("\n\\* too few customers to judge")
    return rows
