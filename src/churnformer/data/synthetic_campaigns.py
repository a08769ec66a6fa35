"""Randomized retention campaigns in the synthetic world (``churnformer-synthetic --campaigns``): who is
contacted when, who is held out, how each customer responds, and the frames written beside the log.

Every ``CAMPAIGN_EVERY_WEEKS`` weeks a random share of the active customers (signed up for at least
``MIN_TENURE_WEEKS``, not churned: a CRM system's active list) is picked; of those, a random ``HOLDOUT_SHARE``
is held out (``treated`` 0) and the rest are sent the offer (``treated`` 1). An offer's effect depends on
hidden traits the log shows only indirectly:

- **complaint-driven risk** responds to an offer that resolves complaints: the customer's recent complaints are
  mostly resolved (their weight on the hazard of starting to decline falls), and a customer already declining
  with recent complaints is won back with probability ``RESCUE_PROBABILITY``;
- **price-sensitive** customers (``price_sensitivity``, higher for customers with cheaper baskets) buy more
  while a coupon runs and are less likely to start declining;
- **contact-averse** customers ("sleeping dogs", more often among paid-social sign-ups) are more likely to
  start declining while any contact is recent.

A world has one offer (a coupon that does all of the above) or two (``campaign_offers=2``: a call that resolves
complaints, and a coupon that moves the price-sensitive): each contacted customer is given one of them at random,
and the best offer differs from customer to customer (:data:`OFFERS`).

The draws come from their own random stream, so a world without campaigns is the world it always was; with
them, the weeks after the first campaign differ (treated customers behave differently).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

CAMPAIGN_EVERY_WEEKS = 8
FIRST_CAMPAIGN_WEEK = 26
MIN_TENURE_WEEKS = 4
CONTACT_SHARE = 0.3  # of the eligible customers, contacted at each campaign (treated or held out)
HOLDOUT_SHARE = 0.5  # of the contacted, held out at random
OFFER_WEEKS = 4  # weeks an offer's effects last, from the contact week on

# Effects of the coupon while it runs.
COUPON_LIFT = 1.2  # purchase-rate multiplier: 1 + COUPON_LIFT * price_sensitivity
COUPON_PROTECTION = 0.8  # hazard multiplier: 1 - COUPON_PROTECTION * price_sensitivity
AVERSE_HAZARD = 0.15  # weekly hazard added for contact-averse customers
# Effects at the contact.
COMPLAINT_RELIEF = 0.2  # the recent-complaint count is multiplied by this
RESCUE_COMPLAINTS = 0.5  # a declining customer with at least this recent-complaint count ...
RESCUE_PROBABILITY = 0.6  # ... is won back (healthy again) with this probability

# Contact-averse share by signup channel (organic, paid_social, referral).
AVERSE_SHARE = (0.05, 0.3, 0.03)

# The horizons (days after the contact) the true effects are computed for, and the replicas of the weeks after
# each contact they are averaged over (churn and spend are expected values given each replica's path).
TRUTH_HORIZONS_DAYS = (30, 90, 180)
TRUTH_REPLICAS = 32


@dataclass(frozen=True)
class Offer:
    """One kind of contact, what sending it to one customer costs (in the log's currency) and what it does."""

    name: str
    cost: float
    coupon: bool  # the price-sensitive buy more and decline less while it runs
    resolves_complaints: bool  # recent complaints mostly resolved; declining complainers may be won back


# The offers of a world, by how many it has (sorted by name: a model's order of offers). With two, the call is
# cheap and worth it for the few whose risk is their complaints; the coupon's discount costs more, and pays
# where the customer is price-sensitive.
OFFERS = {
    1: (Offer("coupon", 5.0, coupon=True, resolves_complaints=True),),
    2: (
        Offer("call", 2.0, coupon=False, resolves_complaints=True),
        Offer("coupon", 12.0, coupon=True, resolves_complaints=False),
    ),
}


@dataclass(frozen=True)
class Responsiveness:
    """Per-customer hidden traits that decide the coupon's effect."""

    price_sensitivity: np.ndarray  # in [0, 1]
    contact_averse: np.ndarray  # bool

    @classmethod
    def none(cls, n_customers: int) -> Responsiveness:
        """No response at all: the world without campaigns."""
        return cls(np.zeros(n_customers), np.zeros(n_customers, dtype=bool))

    @classmethod
    def draw(cls, rng: np.random.Generator, unit_price: np.ndarray, signup_channel: np.ndarray) -> Responsiveness:
        """Price sensitivity falls with the customer's usual unit price (noisily); contact aversion by channel."""
        z = -1.5 * (np.log(unit_price) - np.log(20.0)) / 0.6 + rng.normal(0.0, 1.0, size=len(unit_price))
        averse = rng.random(len(unit_price)) < np.asarray(AVERSE_SHARE)[signup_channel]
        return cls(1.0 / (1.0 + np.exp(-z)), averse)


def campaign_weeks(n_weeks: int) -> list[int]:
    """The weeks a campaign goes out: every :data:`CAMPAIGN_EVERY_WEEKS` from :data:`FIRST_CAMPAIGN_WEEK`, the
    last one early enough for the longest truth horizon to end inside the log."""
    last = n_weeks - int(np.ceil(max(TRUTH_HORIZONS_DAYS) / 7))
    return list(range(FIRST_CAMPAIGN_WEEK, last + 1, CAMPAIGN_EVERY_WEEKS))


def too_short_for_campaigns(n_weeks: int) -> str:
    after = int(np.ceil(max(TRUTH_HORIZONS_DAYS) / 7))
    return (
        f"a log of {n_weeks} weeks has no room for a campaign: the first goes out in week {FIRST_CAMPAIGN_WEEK} "
        f"and needs {after} weeks after it (its effects are followed for {max(TRUTH_HORIZONS_DAYS)} days); "
        f"make it at least {FIRST_CAMPAIGN_WEEK + after} weeks"
    )


def draw_contacts(
    rng: np.random.Generator, signup_week: np.ndarray, active: np.ndarray, week: int, offers: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The customers contacted at ``week`` (sorted numbers; ``active``: not churned), whether each was sent its
    offer, and which offer (an index of ``offers``, drawn at random when there are several)."""
    eligible = np.flatnonzero((signup_week <= week - MIN_TENURE_WEEKS) & active)
    contacted = eligible[rng.random(len(eligible)) < CONTACT_SHARE]
    treated = rng.random(len(contacted)) >= HOLDOUT_SHARE
    offer = rng.integers(offers, size=len(contacted)) if offers > 1 else np.zeros(len(contacted), dtype=np.int64)
    return contacted, treated, offer


@dataclass
class CampaignLog:
    """The contacts made so far and their true effects, per campaign; frames once the log is written."""

    offers: tuple[Offer, ...]
    weeks: list[int]
    customers: list[np.ndarray]
    treated: list[np.ndarray]
    offer: list[np.ndarray]  # per contact, its offer's index in ``offers``
    truth: list[dict[str, np.ndarray]]

    @classmethod
    def empty(cls, offers: tuple[Offer, ...]) -> CampaignLog:
        return cls(offers, [], [], [], [], [])

    def add(
        self, week: int, customers: np.ndarray, treated: np.ndarray, offer: np.ndarray, truth: dict[str, np.ndarray]
    ) -> None:
        self.weeks.append(week)
        self.customers.append(customers)
        self.treated.append(treated)
        self.offer.append(offer)
        self.truth.append(truth)

    def frames(self, ids: tuple[str, ...], start: pd.Timestamp) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``campaigns`` (``customer_id, contacted_at, treated, offer, cost``: what a CRM system logs) and
        ``true_uplift`` (per contact: the expected churn and spend per horizon without and with its offer, their
        differences, with several offers each offer's too (``schema.per_offer``), and the hidden state that
        decides them, ``hidden_*``; what no real log has)."""
        customer = np.concatenate(self.customers) if self.customers else np.zeros(0, dtype=np.int64)
        week = np.repeat(self.weeks, [len(c) for c in self.customers]).astype(np.int64)
        key = {
            "customer_id": pd.array(np.asarray(ids, dtype=object)[customer], dtype="str"),
            "contacted_at": (start + pd.to_timedelta(week * 7, unit="D")).astype("datetime64[ns]"),
        }
        treated = np.concatenate(self.treated) if self.treated else np.zeros(0, dtype=bool)
        offer = np.concatenate(self.offer) if self.offer else np.zeros(0, dtype=np.int64)
        names = np.asarray([o.name for o in self.offers], dtype=object)
        costs = np.asarray([o.cost for o in self.offers], dtype=np.float64)
        campaigns = pd.DataFrame(
            {**key, "treated": treated.astype(np.int8), "offer": pd.array(names[offer], dtype="str")}
        )
        campaigns["cost"] = costs[offer]
        truth = pd.DataFrame(key)
        for name in self.truth[0] if self.truth else ():
            truth[name] = np.concatenate([part[name] for part in self.truth])
        return campaigns, truth


def truth_columns(
    churn: dict[bool, np.ndarray], spend: dict[bool, np.ndarray], horizons: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """The true-effect columns from the expected churn and spend (customers, horizons) without (False) and with
    (True) the offer: ``churn_uplift`` is the drop in churn probability from contacting, ``spend_uplift`` the
    spend it adds."""
    columns: dict[str, np.ndarray] = {}
    for k, days in enumerate(horizons):
        columns[f"churn_probability_{days}d"] = churn[False][:, k]
        columns[f"churn_probability_if_contacted_{days}d"] = churn[True][:, k]
        columns[f"churn_uplift_{days}d"] = churn[False][:, k] - churn[True][:, k]
        columns[f"spend_{days}d"] = spend[False][:, k]
        columns[f"spend_if_contacted_{days}d"] = spend[True][:, k]
        columns[f"spend_uplift_{days}d"] = spend[True][:, k] - spend[False][:, k]
    return columns
