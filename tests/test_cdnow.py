"""Tests for the CDNOW master-log loader, on a hand-written file and on the installed real one."""

from __future__ import annotations

from importlib import metadata

import pandas as pd
import pytest

from churnformer.data import cdnow
from churnformer.data.cdnow import cdnow_master_path, load_cdnow
from churnformer.errors import InputError

SAMPLE = (
    " customer_id  date number_of_cds  dollar_value\r\n"
    " 00001 19970101  1   11.77\r\n"
    " 00042 19970112  5   77.00\r\n"
    " 00042 19980630  2   20.76\r\n"
    " 23570 19971225 12  150.05\r\n"
)


def test_parses_small_file(tmp_path):
    path = tmp_path / "CDNOW_master.txt"
    path.write_bytes(SAMPLE.encode())
    frame = load_cdnow(path)
    assert list(frame.columns) == ["customer_id", "timestamp", "amount", "quantity"]
    assert frame["customer_id"].tolist() == ["00001", "00042", "00042", "23570"]
    assert pd.api.types.is_string_dtype(frame["customer_id"])
    assert frame["timestamp"].dtype == "datetime64[ns]"
    assert frame["timestamp"].tolist() == [
        pd.Timestamp("1997-01-01"),
        pd.Timestamp("1997-01-12"),
        pd.Timestamp("1998-06-30"),
        pd.Timestamp("1997-12-25"),
    ]
    assert frame["amount"].dtype == "float64" and frame["quantity"].dtype == "float64"
    assert frame["amount"].tolist() == [11.77, 77.0, 20.76, 150.05]
    assert frame["quantity"].tolist() == [1.0, 5.0, 2.0, 12.0]


def test_rejects_file_without_cdnow_columns(tmp_path):
    path = tmp_path / "other.txt"
    path.write_text("customer_id date amount\n00001 19970101 1.0\n")
    with pytest.raises(InputError, match="number_of_cds"):
        load_cdnow(path)


def test_missing_distribution_explains_how_to_get_the_file(monkeypatch):
    def not_installed(name: str) -> metadata.Distribution:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(cdnow.metadata, "distribution", not_installed)
    with pytest.raises(InputError, match=r"pip install 'churnformer\[cdnow\]'"):
        cdnow_master_path()


def test_real_master_log():
    try:
        path = cdnow_master_path()
    except InputError as error:
        pytest.skip(str(error))
    frame = load_cdnow(path)
    assert len(frame) == 69_659
    assert frame["customer_id"].nunique() == 23_570
    assert frame["customer_id"].iloc[0] == "00001"
    assert frame["timestamp"].min() == pd.Timestamp("1997-01-01")
    assert frame["timestamp"].max() == pd.Timestamp("1998-06-30")
    assert frame.equals(load_cdnow())
