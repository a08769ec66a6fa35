"""Property-based tests: random event logs with random junk mixed in, through loader -> builder -> scorer.

Whatever the input, the outcome is either a clean error (a :class:`ChurnformerError`, whose message the
CLI prints alone) or a complete, accounted result: every distinct customer is scored or rejected, once.
The examples are the same on every run (CI failures reproduce); for a deeper, random search run
``FUZZ_EXAMPLES=5000 FUZZ_RANDOM=1 pytest tests/test_fuzz.py --hypothesis-show-statistics``.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from churnformer.artifacts.export import export_onnx
from churnformer.data.events import AMOUNT, CUSTOMER_ID, TIMESTAMP, load_events
from churnformer.data.featurizer import FeaturizerConfig, fit_featurizer
from churnformer.data.window import Window
from churnformer.defaults import model_heads
from churnformer.errors import ChurnformerError
from churnformer.modeling.config import FeatureSizes
from churnformer.modeling.network import ChurnFormer
from churnformer.serving.predictor import Predictor
from churnformer.serving.settings import ScoringSettings
from tests.conftest import network_config

CUTOFF = "2024-06-30"
FEATURE_END = Window.from_cutoff(CUTOFF).feature_end  # events before it are features
CHANNELS = ["web", "store", "app"]  # the categorical attribute the model was fitted with
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "120")),
    deadline=None,
    derandomize=not os.environ.get("FUZZ_RANDOM"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    """An untrained network (weights do not matter here) over a featurizer fitted on a clean log with one
    categorical (``channel``) and one numeric (``score``) attribute."""
    rng = np.random.default_rng(0)
    n = 200
    clean = pd.DataFrame(
        {
            CUSTOMER_ID: [f"c{i % 40}" for i in range(n)],
            TIMESTAMP: FEATURE_END - pd.to_timedelta(rng.integers(1, 300 * 86_400, n), unit="s"),
            AMOUNT: rng.normal(20, 10, n).round(2),
            "channel": rng.choice(CHANNELS, n),
            "score": rng.normal(0, 1, n),
        }
    )
    featurizer = fit_featurizer(
        load_events(clean), None, FeaturizerConfig.with_defaults(max_len=8, min_category_count=1)
    )
    config = network_config(d_model=8, n_layers=1, n_heads=2, time_frequencies=4)
    network = ChurnFormer(config, FeatureSizes.of(featurizer), 2, model_heads()).eval()
    output = tmp_path_factory.mktemp("fuzz") / "model.onnx"
    metadata = {"horizon_days": 30, "horizons_days": [30, 90]}
    path = export_onnx(network, featurizer.to_json(), output, metadata, fused_attention=True)
    return Predictor(path, ScoringSettings.defaults(providers=["CPUExecutionProvider"], threads=1, progress=False))


# --- values: clean ones, and the junk real logs contain ---------------------------------------------

STRING_IDS = st.text(alphabet="abcXYZ0129_-. ", min_size=1, max_size=6)
INT_IDS = st.integers(-(2**62), 2**62)
ID_JUNK = st.sampled_from([None, math.nan, True, 3.5, "", b"bytes"]) | INT_IDS | STRING_IDS

CLEAN_TIMES = st.integers(-400 * 86_400, 120 * 86_400).map(lambda s: FEATURE_END + pd.Timedelta(seconds=s)) | (
    st.sampled_from([FEATURE_END, FEATURE_END - pd.Timedelta(1, "ns"), FEATURE_END - pd.Timedelta(days=1)])
)
TIME_JUNK = st.sampled_from(
    [
        None,
        pd.NaT,
        math.nan,
        math.inf,
        "",
        "not a date",
        "2024-13-45",
        "0001-01-01",
        "9999-12-31T23:59:59",
        "2024-06-30T23:30:00+05:00",
        "2024-06-30 12:00",
        dt.date(2024, 1, 1),
        1_700_000_000,
        1.7e18,
        True,
    ]
) | CLEAN_TIMES.map(lambda t: t.isoformat())

CLEAN_AMOUNTS = st.floats(-1e4, 1e4, allow_nan=False) | st.integers(-1000, 1000) | st.just(0.0)
AMOUNT_JUNK = st.sampled_from(
    [None, math.nan, math.inf, -math.inf, 1e300, -1e300, 1e12, 2**63, "", "12.5", "abc", "1e400", True]
)

CLEAN_CHANNELS = st.sampled_from(CHANNELS)
CHANNEL_JUNK = st.sampled_from([None, math.nan, "never seen", "", 42, 3.5, True, "x" * 500, "WEB"])
CLEAN_SCORES = st.floats(-100, 100, allow_nan=False)
SCORE_JUNK = st.sampled_from([None, math.nan, math.inf, -math.inf, 1e308, "x", "", True, 7])
EXTRA_VALUES = st.sampled_from([None, math.nan, "a", "", 1, 2.5, True]) | st.text(max_size=4)

COLUMNS = (CUSTOMER_ID, TIMESTAMP, AMOUNT, "channel", "score")


def _as_type(column: str, dtype: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def convert(frame: pd.DataFrame) -> pd.DataFrame:
        try:
            return frame.assign(**{column: frame[column].astype(dtype)})
        except (TypeError, ValueError):  # junk that cannot take the dtype: the frame as it was
            return frame

    return convert


def _time_zone(frame: pd.DataFrame) -> pd.DataFrame:
    if not pd.api.types.is_datetime64_dtype(frame[TIMESTAMP].dtype):
        return frame
    return frame.assign(**{TIMESTAMP: frame[TIMESTAMP].dt.tz_localize("UTC").dt.tz_convert("Asia/Kolkata")})


# Column types pandas users end up with: categoricals, nullable and Arrow dtypes, time-zone-aware stamps.
RETYPES: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "category ids": _as_type(CUSTOMER_ID, "category"),
    "nullable int ids": _as_type(CUSTOMER_ID, "Int64"),
    "arrow string ids": _as_type(CUSTOMER_ID, "string[pyarrow]"),
    "category channel": _as_type("channel", "category"),
    "nullable float amounts": _as_type(AMOUNT, "Float64"),
    "object amounts": _as_type(AMOUNT, "object"),
    "time-zone-aware stamps": _time_zone,
}


@st.composite
def event_logs(draw: Callable) -> pd.DataFrame:
    """A log of 1..40 events of up to 8 customers (ids all str or all int), timestamps around the
    cutoff (some after it), duplicated rows, and junk in a random subset of the columns; sometimes a
    column missing or an extra, unknown attribute column."""
    ids = draw(st.lists(draw(st.sampled_from([STRING_IDS, INT_IDS])), min_size=1, max_size=8, unique=True))
    junky = draw(st.sets(st.sampled_from(COLUMNS), max_size=3))
    clean = {
        CUSTOMER_ID: st.sampled_from(ids),
        TIMESTAMP: CLEAN_TIMES,
        AMOUNT: CLEAN_AMOUNTS,
        "channel": CLEAN_CHANNELS,
        "score": CLEAN_SCORES,
    }
    junk = {
        CUSTOMER_ID: ID_JUNK,
        TIMESTAMP: TIME_JUNK,
        AMOUNT: AMOUNT_JUNK,
        "channel": CHANNEL_JUNK,
        "score": SCORE_JUNK,
    }
    cells = {c: clean[c] | junk[c] if c in junky else clean[c] for c in COLUMNS}
    rows = draw(st.lists(st.fixed_dictionaries(cells), min_size=1, max_size=40))
    copies = draw(st.lists(st.sampled_from(range(len(rows))), max_size=5))
    rows += [dict(rows[i]) for i in copies]  # a log written twice, in part
    frame = pd.DataFrame(draw(st.permutations(rows)), columns=list(COLUMNS))
    retype = draw(st.sampled_from([None, None, None, *RETYPES]))
    if retype is not None:
        frame = RETYPES[retype](frame)
    if draw(st.integers(0, 9)) == 0:
        frame = frame.drop(columns=draw(st.sampled_from(COLUMNS)))
    if draw(st.integers(0, 4)) == 0:
        frame["extra"] = draw(st.lists(EXTRA_VALUES, min_size=len(frame), max_size=len(frame)))
    return frame


def check_scoring(predictor: Predictor, events: pd.DataFrame) -> str:
    """The property: a clean error, or every distinct customer scored (with sane outputs) or rejected, once.
    Returns the outcome, for hypothesis' statistics."""
    try:
        result = predictor.score(events, CUTOFF)
    except ChurnformerError as error:
        assert str(error)  # a message the user can act on
        return f"clean error: {type(error).__name__}"
    predictions, rejects, summary = result.predictions, result.rejects, result.summary
    seen = set(pd.unique(events[CUSTOMER_ID].to_numpy()))
    assert summary.customers_seen == len(seen) and summary.rows_read == len(events)
    assert summary.customers_scored + sum(summary.customers_not_scored.values()) == len(seen)
    assert summary.customers_scored == len(predictions)

    scored = predictions[CUSTOMER_ID].tolist()
    assert len(set(scored)) == len(scored) and rejects[CUSTOMER_ID].is_unique
    assert set(scored) <= seen and set(rejects[CUSTOMER_ID]) == seen - set(scored)
    # Exactly the customers with an event up to the cutoff are scored (the log loaded, so it is valid).
    loaded = load_events(events)
    assert set(scored) == set(loaded.loc[loaded[TIMESTAMP] < FEATURE_END, CUSTOMER_ID])

    churn = predictions["churn_probability"].to_numpy(dtype="float64")
    spend = predictions["expected_spend"].to_numpy(dtype="float64")
    assert np.isfinite(churn).all() and ((churn >= 0) & (churn <= 1)).all()
    assert np.isfinite(spend).all() and (spend >= 0).all()
    assert (predictions["n_events"] >= 1).all()
    return "scored"


@pytest.mark.slow  # its model's ONNX export and the examples take about 8 s
@FUZZ
@given(events=event_logs())
def test_scoring_any_log_is_a_clean_error_or_fully_accounted(predictor: Predictor, events: pd.DataFrame) -> None:
    event(check_scoring(predictor, events))


# --- the loader alone, on CSV text -------------------------------------------------------------------

CSV_IDS = st.text(alphabet="abcXYZ0129_", min_size=1, max_size=6)
CSV_CELLS = st.sampled_from(
    [
        "",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "1e400",
        "abc",
        '"quoted, comma"',
        "2024-02-30",
        "2024-06-30T12:00:00Z",
        "2024-06-30T12:00:00+02:00",
        "1719700000",
        "12.5",
        "-3",
        "1e12",
        "NULL",
        "ü€",
    ]
)
CLEAN_CSV_ROWS = st.tuples(
    CSV_IDS,
    CLEAN_TIMES.map(lambda t: t.isoformat()),
    CLEAN_AMOUNTS.map(str),
    CLEAN_CHANNELS,
)
JUNK_CSV_ROWS = st.tuples(CSV_IDS | CSV_CELLS, CSV_CELLS, CSV_CELLS, CSV_CELLS) | st.sampled_from(
    ["only,three,cells", "a,b,c,d,e,f", '"unterminated,quote', ",,,", "#comment", "\t"]
)


@st.composite
def csv_logs(draw: Callable) -> tuple[str, int]:
    """CSV text with a header, clean rows and some junk rows; and how many lines follow the header."""
    rows = draw(st.lists(CLEAN_CSV_ROWS, min_size=1, max_size=20)) + draw(st.lists(JUNK_CSV_ROWS, max_size=3))
    lines = [row if isinstance(row, str) else ",".join(row) for row in draw(st.permutations(rows))]
    header = draw(st.sampled_from(["customer_id,timestamp,amount,channel", "customer_id,timestamp,amount,channel,"]))
    return "\n".join([header, *lines]) + "\n", len(lines)


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file that every example overwrites (hypothesis refuses function-scoped fixtures such as tmp_path)."""
    return tmp_path_factory.mktemp("fuzz-csv") / "events.csv"


def check_loading(path: Path, n_lines: int) -> str:
    """The property: a clean error that names the file, or a standard frame with valid columns."""
    try:
        frame = load_events(path)
    except ChurnformerError as error:
        assert str(path) in str(error)
        return f"clean error: {type(error).__name__}"
    assert list(frame.columns[:3]) == [CUSTOMER_ID, TIMESTAMP, AMOUNT]
    assert 0 < len(frame) <= n_lines
    assert frame[CUSTOMER_ID].notna().all()
    assert frame[CUSTOMER_ID].map(type).eq(str).all()  # CSV ids are read as strings, kept as given
    assert frame[TIMESTAMP].dtype == "datetime64[ns]" and frame[TIMESTAMP].notna().all()
    assert frame[AMOUNT].dtype == "float64" and np.isfinite(frame[AMOUNT].to_numpy()).all()
    return "loaded"


@FUZZ
@given(log=csv_logs())
def test_loading_any_csv_is_a_clean_error_or_a_valid_standard_frame(csv_path: Path, log: tuple[str, int]) -> None:
    text, n_lines = log
    csv_path.write_text(text, encoding="utf-8")
    event(check_loading(csv_path, n_lines))
