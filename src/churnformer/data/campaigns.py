"""Past retention contacts with a random holdout (``data.campaigns``): the table a CRM system logs, read and
checked against the event log.

One row per contact: ``customer_id``, ``contacted_at`` (when the offer went out, or would have), ``treated``
(1: sent; 0: held out at random) and optionally ``offer`` (its type) and ``cost`` (of sending it to this
customer), mapped with ``data.columns.*`` like the event log. A campaign is the contacts of one offer on one
day: it must hold both sent and held-out customers, or its effect cannot be told from who was picked.

Each campaign's day is a cutoff (:func:`campaign_window`): features from the events before that day, outcomes
(churn and spend per horizon) from it on. The contact itself is never an event a model reads.

A table of several offers teaches one effect per offer (:func:`contact_arm` says how a training example carries
its offer), or one offer's alone with ``data.offer``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from churnformer.data.events import (
    CUSTOMER_ID,
    ColumnMapping,
    check_customer_ids,
    first_rows,
    parse_timestamps,
    read_table,
)
from churnformer.data.window import Window
from churnformer.errors import InputError

CONTACTED_AT = "contacted_at"
TREATED = "treated"
OFFER = "offer"
COST = "cost"
DEFAULT_OFFER = "offer"  # the offer of a table without an offer column
NO_CONTACT = -1  # the arm of an example that is no contact (a rolling cutoff's)


def contact_arm(treated: np.ndarray, offer_index: np.ndarray) -> np.ndarray:
    """A contact's arm, one number per training example (the network's ``schema.CONTACTED`` input, the arm
    column of a featurized dataset): ``2 * offer_index + treated``, so with one offer 1 is sent and 0 held out;
    :data:`NO_CONTACT` is no contact. Every held-out contact is the same arm to the network (no offer reached
    them); the offer they were held out of says which sent contacts they are compared with when judged."""
    return (2 * np.asarray(offer_index, dtype=np.int64) + np.asarray(treated, dtype=np.int64)).astype(np.int8)


def arm_sent(arm: np.ndarray) -> np.ndarray:
    """Whether each arm of :func:`contact_arm` was sent its offer (numpy arrays or torch tensors alike)."""
    return (arm >= 0) & (arm % 2 == 1)


def arm_offer(arm: np.ndarray) -> np.ndarray:
    """The offer index of each contact's arm (:func:`contact_arm`); 0 for :data:`NO_CONTACT`."""
    return (arm * (arm >= 0)) // 2


@dataclass(frozen=True)
class Campaigns:
    """Checked contacts, sorted by day and customer: ``customer_id``, ``contacted_at`` (datetime64[ns]),
    ``treated`` (int8, 0 or 1), ``offer`` (str), ``cost`` (float64, >= 0), and ``day`` (the campaign's day).
    ``days`` and ``offers`` are those of every contact checked, also in :meth:`among`'s part of them: a
    campaign's cutoff index and an offer's index in an arm are the same in every part of the log."""

    table: pd.DataFrame
    log_end_ns: int  # where the event log they were checked against ends
    days: tuple[pd.Timestamp, ...]
    offers: tuple[str, ...]  # sorted: an offer's index in a contact's arm (contact_arm) is its place here

    @classmethod
    def of(cls, table: pd.DataFrame, log_end_ns: int) -> Campaigns:
        days = tuple(pd.Timestamp(day) for day in sorted(pd.unique(table["day"])))
        return cls(table, log_end_ns, days, tuple(sorted(pd.unique(table[OFFER]).tolist())))

    def among(self, customer_ids: np.ndarray | pd.Series) -> Campaigns:
        """The contacts of these customers (a partition of the log's), with every contact's days and offers."""
        return replace(self, table=self.table.loc[self.table[CUSTOMER_ID].isin(customer_ids).to_numpy()])

    def on(self, day: pd.Timestamp) -> pd.DataFrame:
        """The contacts of the campaign of ``day``."""
        return self.table.loc[self.table["day"].to_numpy() == np.datetime64(day)]

    def arms(self, contacts: pd.DataFrame) -> np.ndarray:
        """The arm (:func:`contact_arm`) of each of ``contacts`` (rows of :attr:`table`)."""
        index = pd.Index(self.offers).get_indexer(contacts[OFFER])
        return contact_arm(contacts[TREATED].to_numpy(), index)

    def summary(self) -> dict[str, object]:
        """What a model trained on them records (``schema.META_CAMPAIGNS``): counts, days, offers and the mean
        cost of sending one, overall and per offer (what ``contact_value`` subtracts unless scoring is told
        another)."""
        sent = self.table["treated"].to_numpy() == 1
        costs = self.table.groupby(OFFER)[COST].mean()
        return {
            "contacts": len(self.table),
            "sent": int(sent.sum()),
            "held_out": int((~sent).sum()),
            "campaigns": len(self.days),
            "first": str(self.days[0].date()),
            "last": str(self.days[-1].date()),
            "offers": list(self.offers),
            "cost": float(self.table["cost"].mean()),
            "costs": {offer: float(costs[offer]) for offer in self.offers},
        }


def load_campaigns(source: str | Path | pd.DataFrame, columns: ColumnMapping, name: str | None = None) -> pd.DataFrame:
    """The campaign table in standard names and types (not yet checked against the log: :func:`check_campaigns`)."""
    if isinstance(source, pd.DataFrame):
        frame, where = source, name or "campaigns DataFrame"
    else:
        frame, where = read_table(source, columns.customer_id), name or str(source)
    required = {columns.customer_id: CUSTOMER_ID, columns.contacted_at: CONTACTED_AT, columns.treated: TREATED}
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise InputError(
            f"{where}: campaign column(s) {missing} not found; columns present: {list(frame.columns)}. Map your "
            "names with data.columns.customer_id=... / contacted_at / treated (and offer, cost if you have them)"
        )
    if len(frame) == 0:
        raise InputError(f"{where}: no contacts (the table is empty)")
    table = pd.DataFrame(
        {
            CUSTOMER_ID: check_customer_ids(frame[columns.customer_id], f"{where}, column {columns.customer_id!r}"),
            CONTACTED_AT: parse_timestamps(frame[columns.contacted_at], f"{where}, column {columns.contacted_at!r}"),
            TREATED: _treated(frame[columns.treated], f"{where}, column {columns.treated!r}"),
            OFFER: _offers(frame[columns.offer] if columns.offer in frame.columns else None, len(frame)),
            COST: _costs(frame[columns.cost], f"{where}, column {columns.cost!r}")
            if columns.cost in frame.columns
            else np.zeros(len(frame)),
        }
    )
    repeated = table.duplicated([CUSTOMER_ID, CONTACTED_AT]).to_numpy()
    if repeated.any():
        raise InputError(f"{where}: the same customer contacted at the same time twice in {first_rows(repeated)}")
    table.attrs["source"] = where
    return table


def _treated(values: pd.Series, where: str) -> np.ndarray:
    """1 (sent) or 0 (held out): integers, whole floats or booleans; anything else is named."""
    numbers = pd.to_numeric(values, errors="coerce") if not pd.api.types.is_bool_dtype(values.dtype) else values
    bad = ~np.isin(np.asarray(numbers, dtype=np.float64), (0.0, 1.0))
    if bad.any():
        example = _as_python(values[bad].iloc[0])
        raise InputError(
            f"{where}: treated must be 1 (sent the offer) or 0 (held out), got {example!r} in {first_rows(bad)}"
        )
    return np.asarray(numbers, dtype=np.int8)


def _as_python(value: object) -> object:
    """A numpy scalar as the Python number it holds (its repr in a message reads ``7``, not ``np.int64(7)``)."""
    return value.item() if isinstance(value, np.generic) else value


def _offers(values: pd.Series | None, rows: int) -> pd.arrays.StringArray:
    if values is None:
        return pd.array([DEFAULT_OFFER] * rows, dtype="str")
    return pd.array(values.astype("str").where(values.notna(), DEFAULT_OFFER), dtype="str")


def _costs(values: pd.Series, where: str) -> np.ndarray:
    costs = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(costs) | (costs < 0)
    if bad.any():
        example = _as_python(values[bad].iloc[0])
        raise InputError(f"{where}: a cost must be a number >= 0, got {example!r} in {first_rows(bad)}")
    return costs


def one_offer(table: pd.DataFrame | None, offer: object) -> pd.DataFrame | None:
    """The contacts of ``offer`` (``data.offer``), sent and held out; with none chosen, every contact (a table
    of several offers then teaches one effect per offer)."""
    if table is None or offer is None:
        return table
    where = table.attrs.get("source", "the campaign table")
    offers = sorted(pd.unique(table[OFFER]).tolist())
    if str(offer) not in offers:
        raise InputError(f"{where}: no contacts of offer {str(offer)!r} (data.offer); its offers: {offers}")
    chosen = table.loc[table[OFFER].to_numpy() == str(offer)].reset_index(drop=True)
    chosen.attrs = dict(table.attrs)
    return chosen


def check_campaigns(table: pd.DataFrame, events: pd.DataFrame, log_end_ns: int) -> Campaigns:
    """The contacts of ``table`` that a model can learn from, given the log (``events``, standard frame, ending at
    ``log_end_ns``): contacts after the log's end are an error (their outcomes are not in it); contacts of
    customers the log does not hold are left out with a warning; a campaign without sent or without held-out
    customers is an error."""
    where = table.attrs.get("source", "the campaign table")
    end = pd.Timestamp(log_end_ns)
    late = table[CONTACTED_AT].to_numpy() >= np.datetime64(end)
    if late.any():
        raise InputError(
            f"{where}: contacts at or after the end of the event log ({end}) in {first_rows(late)} "
            f"(e.g. {table.loc[late, CONTACTED_AT].iloc[0]}): what followed them is not in the log"
        )
    known = table[CUSTOMER_ID].isin(pd.unique(events[CUSTOMER_ID])).to_numpy()
    if not known.all():
        logging.getLogger(__name__).warning(
            "%s: %d contact(s) of customers with no event in the log left out (e.g. %r)",
            where,
            int((~known).sum()),
            table.loc[~known, CUSTOMER_ID].iloc[0],
        )
    table = table.loc[known].assign(day=lambda frame: frame[CONTACTED_AT].dt.normalize())
    if table.empty:
        raise InputError(f"{where}: none of its customers is in the event log")
    twice = table.duplicated([CUSTOMER_ID, "day"]).to_numpy()
    if twice.any():
        raise InputError(
            f"{where}: customer {table.loc[twice, CUSTOMER_ID].iloc[0]!r} contacted twice on "
            f"{table.loc[twice, 'day'].iloc[0].date()} (in {first_rows(twice)}): a campaign's day is one cutoff, "
            "with one contact per customer"
        )
    arms = table.groupby(["day", OFFER])[TREATED].agg(["min", "max"])
    one_armed = arms.loc[arms["min"] == arms["max"]]
    if len(one_armed):
        (day, offer), arm = one_armed.index[0], int(one_armed["min"].iloc[0])
        lacking = "held-out (treated=0)" if arm == 1 else "sent (treated=1)"
        raise InputError(
            f"{where}: the campaign of {day.date()} (offer {offer!r}) has no {lacking} customers "
            f"({len(one_armed)} campaign(s) like it): its effect cannot be told from who was picked; keep a random "
            "holdout in every campaign, or leave such campaigns out"
        )
    return Campaigns.of(table.sort_values(["day", CUSTOMER_ID], kind="stable").reset_index(drop=True), log_end_ns)


def campaign_window(day: pd.Timestamp, horizon_days: float) -> Window:
    """The cutoff of a campaign: features from the events before its day, outcomes from the day on (so nothing
    of the contact day, before or after the contact, is a feature)."""
    return Window(pd.Timestamp(day).as_unit("ns"), horizon_days, f"campaign of {pd.Timestamp(day).date()}")
