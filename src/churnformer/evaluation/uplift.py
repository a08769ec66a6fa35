"""Uplift metrics on randomized contacts, in numpy: how well a ranking by predicted effect finds the customers a
contact changes, judged only by what a randomized holdout can show (no customer is seen both ways).

- :func:`qini_curve`: Q(k), the incremental outcome of contacting the k customers ranked first: their sent
  customers' total outcome minus their held-out customers' total scaled to as many customers as were sent
  (Radcliffe 2007). The outcome is what contacting should raise: retention (1 - churn) or spend.
- :func:`qini_auuc`: the area between that curve and random targeting's straight line, per customer and per
  customer targeted: the mean over k of (Q(k) - k/n Q(n)) / n. 0 for a random ranking; higher is better; in the
  outcome's units (a share of customers retained, or spend). Comparable between rankings of the same contacts.
- :func:`uplift_by_decile`: the observed effect (sent minus held-out mean outcome, with a 95% interval) in each
  decile of predicted uplift, beside the mean prediction.

Tied scores count as one group: the curve runs straight across it, as a random order within it would on
average.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

Z_95 = 1.959964


def qini_curve(score: np.ndarray, outcome: np.ndarray, treated: np.ndarray) -> np.ndarray:
    """Q(0) = 0, Q(1), ..., Q(n) for the contacts ranked by ``score`` (highest first); ``treated`` 1 or 0."""
    score, outcome, sent = (np.asarray(a, dtype=np.float64) for a in (score, outcome, treated))
    order = np.argsort(-score, kind="stable")
    y, t = outcome[order], sent[order]
    sent_total, held_total = np.cumsum(y * t), np.cumsum(y * (1 - t))
    sent_count, held_count = np.cumsum(t), np.cumsum(1 - t)
    scaled = np.divide(held_total * sent_count, held_count, out=np.zeros_like(held_total), where=held_count > 0)
    curve = np.concatenate([[0.0], sent_total - scaled])
    ends = np.flatnonzero(np.r_[score[order][1:] != score[order][:-1], True]) + 1  # k at the end of each tie group
    return np.interp(np.arange(len(curve)), np.r_[0, ends], curve[np.r_[0, ends]])


def qini_auuc(score: np.ndarray, outcome: np.ndarray, treated: np.ndarray) -> float:
    """The mean over k of (Q(k) - k/n Q(n)) / n (see the module); NaN for no contacts."""
    curve = qini_curve(score, outcome, treated)
    n = len(curve) - 1
    if n == 0:
        return float("nan")
    random = np.arange(n + 1) / n * curve[-1]
    return float(np.mean(curve - random) / n)


def observed_effect(outcome: np.ndarray, treated: np.ndarray) -> tuple[float, float]:
    """Sent minus held-out mean outcome, and its standard error (NaN where an arm is empty)."""
    outcome, sent = np.asarray(outcome, dtype=np.float64), np.asarray(treated) == 1
    if sent.sum() == 0 or (~sent).sum() == 0:
        return float("nan"), float("nan")
    a, b = outcome[sent], outcome[~sent]
    variance = (a.var(ddof=1) if len(a) > 1 else 0.0) / len(a) + (b.var(ddof=1) if len(b) > 1 else 0.0) / len(b)
    return float(a.mean() - b.mean()), float(np.sqrt(variance))


def uplift_by_decile(score: np.ndarray, outcome: np.ndarray, treated: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Per decile of ``score`` (1 = the highest predicted uplift): contacts, sent, held out, mean predicted uplift,
    observed effect (sent minus held-out mean outcome) and its 95% interval."""
    score, outcome, treated = (np.asarray(a) for a in (score, outcome, treated))
    order = np.argsort(-score, kind="stable")
    rows = []
    for decile, part in enumerate(np.array_split(order, bins), start=1):
        effect, error = observed_effect(outcome[part], treated[part])
        rows.append(
            {
                "decile": decile,
                "contacts": len(part),
                "sent": int((treated[part] == 1).sum()),
                "held_out": int((treated[part] == 0).sum()),
                "predicted": float(score[part].mean()) if len(part) else float("nan"),
                "observed": effect,
                "low": effect - Z_95 * error,
                "high": effect + Z_95 * error,
            }
        )
    return pd.DataFrame(rows)


def top_share_value(score: np.ndarray, value: np.ndarray, share: float) -> float:
    """The total ``value`` of the ``share`` of customers ranked first by ``score``: what a policy that contacts
    them gains when ``value`` is each one's (true) incremental value."""
    count = round(share * len(score))
    return float(np.asarray(value, dtype=np.float64)[np.argsort(-np.asarray(score), kind="stable")[:count]].sum())


def judge_effects(
    effects: Mapping[str, tuple[np.ndarray, np.ndarray]], treated: np.ndarray
) -> tuple[dict[str, float], pd.DataFrame]:
    """For each outcome (name -> what contacting should raise, and its predicted rise per contact): its Qini AUUC,
    the observed effect and its standard error, and the mean predicted effect (``<name>_qini_auuc``,
    ``<name>_observed``, ``<name>_observed_se``, ``<name>_predicted``); and the deciles of every outcome, with an
    ``outcome`` column."""
    metrics: dict[str, float] = {}
    deciles = []
    for name, (outcome, predicted) in effects.items():
        outcome, predicted = np.asarray(outcome, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
        effect, error = observed_effect(outcome, treated)
        metrics[f"{name}_qini_auuc"] = qini_auuc(predicted, outcome, treated)
        metrics[f"{name}_observed"] = effect
        metrics[f"{name}_observed_se"] = error
        metrics[f"{name}_predicted"] = float(predicted.mean())
        deciles.append(uplift_by_decile(predicted, outcome, treated).assign(outcome=name))
    return metrics, pd.concat(deciles, ignore_index=True)
