"""Loader for the CDNOW master log, a small real purchase log used to check the model on real data.

The file ships inside the ``lifetimes`` distribution. We only need the data file, so it is located
through the installed distribution's metadata instead of importing ``lifetimes`` (slow, and it pulls in
scipy and autograd).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pandas as pd

from churnformer.errors import InputError

DISTRIBUTION = "lifetimes"
MASTER_FILE = "lifetimes/datasets/CDNOW_master.txt"
FILE_COLUMNS = ("customer_id", "date", "number_of_cds", "dollar_value")


def cdnow_master_path() -> Path:
    """Locate CDNOW_master.txt among the installed `lifetimes` distribution's files."""
    hint = f"install it with pip install 'churnformer[cdnow]' or pass the path to {Path(MASTER_FILE).name}"
    try:
        distribution = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError as error:
        raise InputError(f"the CDNOW master log comes with the {DISTRIBUTION!r} package; {hint}") from error
    for file in distribution.files or ():
        if file.as_posix() == MASTER_FILE:
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                return path
    raise InputError(f"{MASTER_FILE} is missing from the installed {DISTRIBUTION!r} package; {hint}")


def load_cdnow(path: str | Path | None = None) -> pd.DataFrame:
    """Read the CDNOW master log into the standard event-log contract.

    Returns customer_id (string exactly as in the file, leading zeros kept so ids match the literature),
    timestamp (datetime64[ns] from YYYYMMDD), amount (float64 dollars) and quantity (float64 number of
    CDs, a numeric attribute), in file order.
    """
    path = Path(path) if path is not None else cdnow_master_path()
    if not path.is_file():
        raise InputError(f"{path}: file not found (the CDNOW master log, CDNOW_master.txt)")
    raw = pd.read_csv(path, sep=r"\s+", dtype={"customer_id": str, "date": str})
    missing = [column for column in FILE_COLUMNS if column not in raw.columns]
    if missing:
        raise InputError(f"{path}: not a CDNOW master log, columns {missing} missing from {list(raw.columns)}")
    return pd.DataFrame(
        {
            "customer_id": raw["customer_id"],
            "timestamp": pd.to_datetime(raw["date"], format="%Y%m%d").astype("datetime64[ns]"),
            "amount": raw["dollar_value"].astype("float64"),
            "quantity": raw["number_of_cds"].astype("float64"),
        }
    )
