"""Scoring without torch, and the retention outputs (deciles and segments) users act on."""

from __future__ import annotations

import numpy as np
import pandas as pd

from churnformer.scoring import SegmentRules, add_retention_columns, descending_decile


def test_deciles_rank_highest_first_in_equal_groups() -> None:
    values = np.arange(100, dtype=float)
    decile = descending_decile(values)
    assert decile[99] == 1 and decile[0] == 10
    assert np.bincount(decile)[1:].tolist() == [10] * 10
    assert (np.diff(decile[np.argsort(-values)]) >= 0).all()


def test_segments_follow_the_configured_thresholds() -> None:
    predictions = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d"],
            "churn_probability": [0.9, 0.1, 0.6, 0.2],
            "expected_spend": [500.0, 400.0, 5.0, 1.0],
        }
    )
    out = add_retention_columns(predictions, SegmentRules(risk_threshold=0.5, high_value_quantile=0.5))
    assert out["segment"].tolist() == ["high value at risk", "high value loyal", "low value at risk", "low value loyal"]
    absolute = add_retention_columns(predictions, SegmentRules(risk_threshold=0.95, high_value_min_spend=450.0))
    assert absolute["segment"].tolist() == ["high value loyal", "low value loyal", "low value loyal", "low value loyal"]
    assert out["churn_risk_decile"].tolist() == [1, 8, 3, 6]  # ranks 0..3 of 4 spread over 1..10


def test_scoring_and_evaluation_never_import_torch() -> None:
    """A batch scoring job needs onnxruntime, numpy, pandas and pyarrow only."""
    import subprocess
    import sys

    code = (
        "import sys, churnformer.scoring, churnformer.evaluation, churnformer.cli; "
        "print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )
