"""Deterministic synthetic customer world with real (but noisy) churn and spend signals.

The generator exists so that the whole pipeline can be trained, tested and benchmarked without private
data, and so that we know the ground truth: who declines, why (static attributes, complaints) and when.
Customers move through a weekly state machine healthy -> declining -> churned; everything is vectorized
over customers and only the weeks are looped over, so half a million customers take well under a minute.
With ``campaigns``, randomized retention contacts change the weeks after them
(:mod:`churnformer.data.synthetic_campaigns`), and each contact's true effect is known: the expected churn and
spend after it with and without the offer, from the customer's hidden state at the contact.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from churnformer.data.synthetic_campaigns import (
    AVERSE_HAZARD,
    COMPLAINT_RELIEF,
    COUPON_LIFT,
    COUPON_PROTECTION,
    OFFER_WEEKS,
    OFFERS,
    RESCUE_COMPLAINTS,
    RESCUE_PROBABILITY,
    TRUTH_HORIZONS_DAYS,
    TRUTH_REPLICAS,
    CampaignLog,
    Offer,
    Responsiveness,
    campaign_weeks,
    draw_contacts,
    too_short_for_campaigns,
    truth_columns,
)
from churnformer.data.synthetic_text import UNHAPPY_WEEKS, event_texts
from churnformer.errors import ConfigError
from churnformer.schema import per_offer

WEEK_SECONDS = 7 * 24 * 3600
DAY_SECONDS = 24 * 3600

EVENT_TYPES = ("purchase", "visit", "support_ticket", "complaint", "refund")
PURCHASE, VISIT, SUPPORT_TICKET, COMPLAINT, REFUND = range(len(EVENT_TYPES))
CHANNELS = ("web", "app", "store")
CHANNEL_PREFERENCE = (2.0, 1.5, 1.0)

# Static attributes and their multiplicative effect on the weekly hazard of starting to decline.
REGIONS = ("north", "south", "east", "west")
REGION_WEIGHTS = (0.25, 0.3, 0.25, 0.2)
REGION_HAZARD = (0.5, 1.0, 1.0, 1.1)
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55+")
AGE_WEIGHTS = (0.15, 0.25, 0.25, 0.2, 0.15)
AGE_HAZARD = (2.0, 1.1, 0.9, 0.8, 0.8)
SIGNUP_CHANNELS = ("organic", "paid_social", "referral")
SIGNUP_WEIGHTS = (0.45, 0.35, 0.2)
SIGNUP_HAZARD = (0.8, 2.2, 0.6)

HEALTHY, DECLINING, CHURNED = 0, 1, 2
BASE_HAZARD = 0.0024  # weekly probability of starting to decline for an average customer
EARLY_HAZARD = 48.0  # extra hazard multiplier for brand-new customers, fading with tenure
EARLY_WEEKS = 4.0  # e-folding time of the early-life extra hazard
COMPLAINT_HAZARD = 0.2  # weekly hazard added per unit of decayed complaint count
COMPLAINT_DECAY = 0.75  # weekly decay of the complaint count: complaints matter for a few weeks
DECLINE_WEEKS = (3, 10)  # inclusive range of the declining phase's length
SIGNUP_SPAN = 0.6  # customers sign up during the first 60% of the log
EXTRA_ITEMS = 1.2  # a basket holds 1 + Poisson(EXTRA_ITEMS) items
PRICE_NOISE = 0.25  # a basket's unit price: the customer's times lognormal(0, PRICE_NOISE)
COMPLAINT_SHARE = 0.6  # of bad purchases, complained about
REFUND_SHARE = 0.3  # of bad purchases, (partly) refunded


@dataclass(frozen=True)
class SyntheticWorldConfig:
    """Size and seed of the simulated world (``data.synthetic`` in ``conf/data/synthetic.yaml``, which holds
    the defaults); equal configs give identical frames."""

    n_customers: int
    start: str
    n_weeks: int
    seed: int
    text: bool = False  # add a free-text column (churnformer.data.synthetic_text); the other columns stay equal
    campaigns: bool = False  # randomized retention contacts and their true effects (synthetic_campaigns)
    campaign_offers: int = 1  # the offers they send: 1 (a coupon) or 2 (a call and a coupon; OFFERS)

    @classmethod
    def with_defaults(cls, **changes: Any) -> SyntheticWorldConfig:
        """The default world of ``conf/data/synthetic.yaml`` with ``changes``."""
        from churnformer.defaults import yaml_defaults

        return cls(**{**yaml_defaults("data/synthetic")["synthetic"], **changes})


@dataclass(frozen=True)
class _Customers:
    """Per-customer latent traits, drawn once; arrays are indexed by customer number."""

    signup_week: np.ndarray
    signup_offset: np.ndarray
    purchase_rate: np.ndarray
    visit_ratio: np.ndarray
    unit_price: np.ndarray
    bad_purchase_prob: np.ndarray
    channel_cdf: np.ndarray
    hazard: np.ndarray
    decline_weeks: np.ndarray
    region: np.ndarray
    age_band: np.ndarray
    signup_channel: np.ndarray
    price_sensitivity: np.ndarray  # how a coupon moves the customer (zeros without campaigns)
    contact_averse: np.ndarray

    def take(self, rows: np.ndarray) -> _Customers:
        """The customers at ``rows`` (repeats allowed: replicas of one customer)."""
        return _Customers(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


@dataclass
class _State:
    """Mutable per-customer simulation state, advanced in place once per week."""

    phase: np.ndarray  # HEALTHY, DECLINING or CHURNED
    decline_start: np.ndarray  # first declining week (valid while DECLINING)
    complaints: np.ndarray  # decayed count of recent complaints
    contact_until: np.ndarray  # the first week the last contact no longer works (0: none sent)
    coupon_until: np.ndarray  # the first week the last coupon sent no longer works (0: none sent)

    @classmethod
    def initial(cls, n_customers: int) -> _State:
        """Everyone starts healthy with no complaints; signup week decides when they become active."""
        return cls(
            phase=np.full(n_customers, HEALTHY, dtype=np.int8),
            decline_start=np.zeros(n_customers, dtype=np.int64),
            complaints=np.zeros(n_customers),
            contact_until=np.zeros(n_customers, dtype=np.int64),
            coupon_until=np.zeros(n_customers, dtype=np.int64),
        )

    def take(self, rows: np.ndarray) -> _State:
        """A copy of the state of the customers at ``rows``."""
        return _State(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


@dataclass
class _EventColumns:
    """Columns of the events generated so far; lists of per-week arrays concatenated once at the end."""

    customer: list[np.ndarray]
    seconds: list[np.ndarray]
    event_type: list[np.ndarray]
    channel: list[np.ndarray]
    amount: list[np.ndarray]
    n_items: list[np.ndarray]

    def add(
        self,
        customer: np.ndarray,
        seconds: np.ndarray,
        event_type: int,
        channel: np.ndarray,
        amount: np.ndarray | None = None,
        n_items: np.ndarray | None = None,
    ) -> None:
        """Append one batch; non-monetary events get amount 0 and no item count."""
        size = len(customer)
        self.customer.append(customer.astype(np.int32))
        self.seconds.append(seconds.astype(np.int64))
        self.event_type.append(np.full(size, event_type, dtype=np.int8))
        self.channel.append(channel.astype(np.int8))
        self.amount.append(np.zeros(size) if amount is None else amount)
        self.n_items.append(np.full(size, np.nan) if n_items is None else n_items.astype(np.float64))


def _draw_customers(rng: np.random.Generator, config: SyntheticWorldConfig) -> _Customers:
    """Draw static attributes and latent behaviour; the hazard combines the attribute effects."""
    n = config.n_customers
    region = rng.choice(len(REGIONS), size=n, p=REGION_WEIGHTS)
    age_band = rng.choice(len(AGE_BANDS), size=n, p=AGE_WEIGHTS)
    signup_channel = rng.choice(len(SIGNUP_CHANNELS), size=n, p=SIGNUP_WEIGHTS)
    hazard = (
        BASE_HAZARD
        * np.asarray(REGION_HAZARD)[region]
        * np.asarray(AGE_HAZARD)[age_band]
        * np.asarray(SIGNUP_HAZARD)[signup_channel]
        * rng.gamma(2.0, 0.5, size=n)  # unobserved frailty keeps the attributes from being the whole story
    )
    # Acquisition grows over time (density rising towards the end of the signup span).
    signup_span = max(1, int(SIGNUP_SPAN * config.n_weeks))
    signup_week = np.minimum((signup_span * rng.random(n) ** (1 / 3)).astype(np.int64), signup_span - 1)
    return _Customers(
        signup_week=signup_week,
        signup_offset=rng.integers(0, WEEK_SECONDS, size=n),
        purchase_rate=rng.gamma(4.0, 0.0675, size=n),
        visit_ratio=rng.uniform(1.5, 2.3, size=n),
        unit_price=rng.lognormal(np.log(20.0), 0.6, size=n),
        bad_purchase_prob=rng.beta(1.0, 11.5, size=n),
        channel_cdf=np.cumsum(rng.dirichlet(CHANNEL_PREFERENCE, size=n), axis=1),
        hazard=hazard,
        decline_weeks=rng.integers(DECLINE_WEEKS[0], DECLINE_WEEKS[1] + 1, size=n),
        region=region,
        age_band=age_band,
        signup_channel=signup_channel,
        **vars(Responsiveness.none(n)),
    )


def _seasonality(start: pd.Timestamp, n_weeks: int) -> np.ndarray:
    """Yearly purchase-rate multiplier per week, peaking around early December (holiday shopping)."""
    mid_week = start + pd.to_timedelta(np.arange(n_weeks) * 7 + 3.5, unit="D")
    day_of_year = np.asarray(mid_week.day_of_year, dtype=np.float64)
    return 1.0 + 0.25 * np.cos(2.0 * np.pi * (day_of_year - 340.0) / 365.25)


def _channels(rng: np.random.Generator, world: _Customers, customer: np.ndarray) -> np.ndarray:
    """Sample each event's channel from its customer's channel preference."""
    u = rng.random(len(customer))[:, None]
    return (u > world.channel_cdf[customer, :-1]).sum(axis=1)


def _offsets(rng: np.random.Generator, world: _Customers, customer: np.ndarray, week: int) -> np.ndarray:
    """Seconds since the log start, uniform within the week but never before the customer's signup."""
    low = np.where(world.signup_week[customer] == week, world.signup_offset[customer], 0)
    within = low + np.floor(rng.random(len(customer)) * (WEEK_SECONDS - low)).astype(np.int64)
    return week * WEEK_SECONDS + within


def _purchases(
    rng: np.random.Generator,
    world: _Customers,
    customer: np.ndarray,
    basket_scale: np.ndarray,
    week: int,
    out: _EventColumns,
) -> np.ndarray:
    """Emit purchases plus the complaints and refunds of bad ones; return who complained (per event)."""
    seconds = _offsets(rng, world, customer, week)
    channel = _channels(rng, world, customer)
    n_items = 1 + rng.poisson(EXTRA_ITEMS, size=len(customer))
    price = world.unit_price[customer] * rng.lognormal(0.0, PRICE_NOISE, size=len(customer)) * basket_scale
    amount = np.round(n_items * price, 2)
    out.add(customer, seconds, PURCHASE, channel, amount, n_items)

    bad = rng.random(len(customer)) < world.bad_purchase_prob[customer]
    complaint = bad & (rng.random(len(customer)) < COMPLAINT_SHARE)
    refund = bad & (rng.random(len(customer)) < REFUND_SHARE)
    delay = rng.integers(DAY_SECONDS // 4, 5 * DAY_SECONDS, size=int(complaint.sum()))
    out.add(customer[complaint], seconds[complaint] + delay, COMPLAINT, channel[complaint])

    refunded_items = rng.integers(1, n_items[refund] + 1)
    refund_amount = -np.round(amount[refund] * refunded_items / n_items[refund], 2)
    delay = rng.integers(DAY_SECONDS, 14 * DAY_SECONDS, size=int(refund.sum()))
    out.add(customer[refund], seconds[refund] + delay, REFUND, channel[refund], refund_amount, refunded_items)
    return customer[complaint]


def _simple_events(
    rng: np.random.Generator, world: _Customers, customer: np.ndarray, kind: int, week: int, out: _EventColumns
) -> None:
    """Emit non-monetary events (visits, support tickets) for the given customer repetitions."""
    out.add(customer, _offsets(rng, world, customer, week), kind, _channels(rng, world, customer))


@dataclass(frozen=True)
class _Week:
    """Where the active customers stand this week: how far into their decline (0 when healthy), their
    engagement, their expected purchases, and whether their decline ends this week."""

    progress: np.ndarray
    engagement: np.ndarray
    purchases: np.ndarray
    ending: np.ndarray


def _this_week(world: _Customers, state: _State, active: np.ndarray, week: int, season: float) -> _Week:
    declining = state.phase[active] == DECLINING
    weeks_declining = week - state.decline_start[active] + 1
    progress = np.where(declining, weeks_declining / (world.decline_weeks[active] + 1), 0.0)
    engagement = 1.0 - 0.85 * progress
    lift = 1.0 + COUPON_LIFT * world.price_sensitivity[active] * (state.coupon_until[active] > week)
    return _Week(
        progress=progress,
        engagement=engagement,
        purchases=world.purchase_rate[active] * season * engagement * lift,
        ending=declining & (weeks_declining >= world.decline_weeks[active]),
    )


def _simulate_week(
    rng: np.random.Generator, world: _Customers, state: _State, week: int, season: float, out: _EventColumns
) -> None:
    """Generate one week's events for active customers, then advance their states in place."""
    signups = np.flatnonzero(world.signup_week == week)
    out.add(signups, week * WEEK_SECONDS + world.signup_offset[signups], VISIT, _channels(rng, world, signups))

    active = np.flatnonzero((world.signup_week <= week) & (state.phase != CHURNED))
    now = _this_week(world, state, active, week, season)

    purchase_counts = rng.poisson(now.purchases)
    buyers = np.repeat(active, purchase_counts)
    basket_scale = np.repeat(1.0 - 0.5 * now.progress, purchase_counts)
    complainers = _purchases(rng, world, buyers, basket_scale, week, out)
    visit_rate = world.purchase_rate[active] * world.visit_ratio[active] * now.engagement
    _simple_events(rng, world, np.repeat(active, rng.poisson(visit_rate)), VISIT, week, out)
    ticket_counts = rng.poisson(0.01 + 0.25 * now.progress)
    _simple_events(rng, world, np.repeat(active, ticket_counts), SUPPORT_TICKET, week, out)

    state.complaints *= COMPLAINT_DECAY
    state.complaints += np.bincount(complainers, minlength=len(state.complaints))
    _advance(rng, world, state, active, now.ending, week)


def _advance(
    rng: np.random.Generator, world: _Customers, state: _State, active: np.ndarray, ending: np.ndarray, week: int
) -> None:
    """Move healthy customers into decline by their hazard and customers whose decline is over to churned."""
    tenure = week - world.signup_week[active]
    early = 1.0 + EARLY_HAZARD * np.exp(-tenure / EARLY_WEEKS)
    coupon = state.coupon_until[active] > week
    protection = 1.0 - COUPON_PROTECTION * world.price_sensitivity[active] * coupon
    hazard = (
        world.hazard[active] * early * protection
        + COMPLAINT_HAZARD * state.complaints[active]
        + AVERSE_HAZARD * (world.contact_averse[active] & (state.contact_until[active] > week))
    )
    starts = active[(state.phase[active] == HEALTHY) & (rng.random(len(active)) < hazard)]
    state.phase[starts] = DECLINING
    state.decline_start[starts] = week + 1
    state.phase[active[ending]] = CHURNED


def _labels(names: tuple[str, ...], codes: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """Map integer codes to a pandas string array via Arrow (fast for tens of millions of rows)."""
    return pd.array(pa.array(names).take(pa.array(codes)), dtype="str")


def _customer_ids(n_customers: int) -> tuple[str, ...]:
    """Zero-padded ids ("C000123") so that string order equals numeric order."""
    width = max(6, len(str(max(n_customers - 1, 0))))
    return tuple(f"C{i:0{width}d}" for i in range(n_customers))


def _events_frame(
    out: _EventColumns,
    ids: tuple[str, ...],
    start: pd.Timestamp,
    n_weeks: int,
    texts: tuple[np.random.Generator, np.ndarray] | None,
) -> pd.DataFrame:
    """Concatenate the weekly batches, drop follow-ups past the log end and sort by (timestamp, customer);
    with ``texts`` (their random stream, and the week each customer turns unhappy), add the ``text`` column."""
    seconds = np.concatenate(out.seconds)
    customer = np.concatenate(out.customer)
    keep = seconds < n_weeks * WEEK_SECONDS
    order = np.flatnonzero(keep)[np.lexsort((customer[keep], seconds[keep]))]
    timestamp = np.datetime64(start.to_datetime64(), "s") + seconds[order].astype("timedelta64[s]")
    event_type = np.concatenate(out.event_type)[order]
    frame = pd.DataFrame(
        {
            "customer_id": _labels(ids, customer[order]),
            "timestamp": timestamp.astype("datetime64[ns]"),
            "amount": np.concatenate(out.amount)[order],
            "event_type": _labels(EVENT_TYPES, event_type),
            "channel": _labels(CHANNELS, np.concatenate(out.channel)[order]),
            "n_items": np.concatenate(out.n_items)[order],
        }
    )
    if texts is not None:
        rng, unhappy_since = texts
        unhappy = seconds[order] // WEEK_SECONDS >= unhappy_since[customer[order]]
        frame["text"] = event_texts(rng, event_type, EVENT_TYPES, unhappy)
    return frame


@dataclass(frozen=True)
class SyntheticFrames:
    """What the world writes: the event log and customer table, and with ``campaigns`` the contacts a CRM
    system logs and each contact's true effect (what no real log has: for benchmarks)."""

    events: pd.DataFrame
    customers: pd.DataFrame
    campaigns: pd.DataFrame | None = None
    true_uplift: pd.DataFrame | None = None

    def by_name(self) -> dict[str, pd.DataFrame]:
        """The frames to write, by file name (without the extension)."""
        names = ("events", "customers", "campaigns", "true_uplift")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def generate_world(config: SyntheticWorldConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (events, customers) for the configured world (:func:`simulate_world` has its campaigns too)."""
    frames = simulate_world(config)
    return frames.events, frames.customers


def simulate_world(config: SyntheticWorldConfig) -> SyntheticFrames:
    """Every frame of the configured world.

    Every customer has a signup visit inside the log, so the customers table lists exactly the
    customers that appear in the events. Timestamps are whole seconds stored as datetime64[ns], the
    resolution the event-log contract normalizes to. A complaint or refund follows its purchase by up to
    two weeks, so it can land shortly after the customer's last purchase (even once churned); no other
    event does. A campaign's contacts happen at the start of its week (midnight), before any event of it.
    """
    rng = np.random.default_rng(config.seed)
    start = pd.Timestamp(config.start).normalize()
    world = _draw_customers(rng, config)
    state = _State.initial(config.n_customers)
    out = _EventColumns([], [], [], [], [], [])
    seasons = _seasonality(start, config.n_weeks)
    contacts = _Contacts.of(config, world) if config.campaigns else None
    if contacts is not None:
        world = contacts.world
    for week, season in enumerate(seasons):
        if contacts is not None and week in contacts.weeks:
            contacts.send(state, week, seasons)
        _simulate_week(rng, world, state, week, float(season), out)
    ids = _customer_ids(config.n_customers)
    customers = pd.DataFrame(
        {
            "customer_id": pd.array(ids, dtype="str"),
            "region": _labels(REGIONS, world.region),
            "age_band": _labels(AGE_BANDS, world.age_band),
            "signup_channel": _labels(SIGNUP_CHANNELS, world.signup_channel),
        }
    )
    texts = _unhappiness(config.seed, state) if config.text else None
    events = _events_frame(out, ids, start, config.n_weeks, texts)
    if contacts is None:
        return SyntheticFrames(events, customers)
    return SyntheticFrames(events, customers, *contacts.log.frames(ids, start))


@dataclass
class _Contacts:
    """The campaigns of a world: their own random stream, the weeks they go out, the customers' responsiveness
    (``world``: the customers with it drawn) and what was sent so far."""

    seed: int
    rng: np.random.Generator
    weeks: set[int]
    world: _Customers
    offers: tuple[Offer, ...]
    log: CampaignLog

    @classmethod
    def of(cls, config: SyntheticWorldConfig, world: _Customers) -> _Contacts:
        weeks = set(campaign_weeks(config.n_weeks))
        if not weeks:
            raise ConfigError(too_short_for_campaigns(config.n_weeks))
        if config.campaign_offers not in OFFERS:
            raise ConfigError(
                f"campaign_offers must be one of {sorted(OFFERS)} (the offers the synthetic world can send), "
                f"got {config.campaign_offers!r}"
            )
        rng = np.random.default_rng([config.seed, 2])
        traits = Responsiveness.draw(rng, world.unit_price, world.signup_channel)
        offers = OFFERS[config.campaign_offers]
        return cls(config.seed, rng, weeks, replace(world, **vars(traits)), offers, CampaignLog.empty(offers))

    def send(self, state: _State, week: int, seasons: np.ndarray) -> None:
        """Pick this week's contacts, their offers and holdout, record each contact's true effect (of its own
        offer, and with several offers of each), and send the offers."""
        active = state.phase != CHURNED
        contacted, treated, offer = draw_contacts(self.rng, self.world.signup_week, active, week, len(self.offers))
        without = _expected_outcomes(self.world, state, contacted, week, seasons, None, self.seed, 0)
        sent = [
            _expected_outcomes(self.world, state, contacted, week, seasons, each, self.seed, k + 1)
            for k, each in enumerate(self.offers)
        ]
        rows = np.arange(len(contacted))
        own = tuple(np.stack([outcome[i] for outcome in sent])[offer, rows] for i in (0, 1))
        truth = _truth(without, own)
        for each, outcome in zip(self.offers if len(self.offers) > 1 else (), sent, strict=False):
            per_offer_truth = _truth(without, outcome).items()
            truth |= {
                per_offer(name, each.name): v for name, v in per_offer_truth if "contacted" in name or "uplift" in name
            }
        hidden = {  # what decides the effect, which the log shows only indirectly
            "hidden_price_sensitivity": self.world.price_sensitivity[contacted],
            "hidden_contact_averse": self.world.contact_averse[contacted].astype(np.int8),
            "hidden_declining": (state.phase[contacted] == DECLINING).astype(np.int8),
            "hidden_recent_complaints": state.complaints[contacted].copy(),
        }
        self.log.add(week, contacted, treated, offer, truth | hidden)
        for k, each in enumerate(self.offers):
            _contact(self.rng, self.world, state, contacted[treated & (offer == k)], week, each)


def _truth(without: tuple[np.ndarray, np.ndarray], sent: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """The true-effect columns (:func:`truth_columns`) from the expected (churn, spend) without and with an
    offer."""
    return truth_columns({False: without[0], True: sent[0]}, {False: without[1], True: sent[1]}, TRUTH_HORIZONS_DAYS)


def _contact(
    rng: np.random.Generator, world: _Customers, state: _State, sent: np.ndarray, week: int, offer: Offer
) -> None:
    """``offer`` reaches ``sent`` at the start of ``week`` and works for :data:`OFFER_WEEKS` weeks: a coupon
    while it runs, and an offer that resolves complaints at once (recent complaints mostly resolved, declining
    customers with recent complaints maybe won back)."""
    state.contact_until[sent] = week + OFFER_WEEKS
    if offer.coupon:
        state.coupon_until[sent] = week + OFFER_WEEKS
    if offer.resolves_complaints:
        complained = state.complaints[sent] >= RESCUE_COMPLAINTS
        rescued = (state.phase[sent] == DECLINING) & complained & (rng.random(len(sent)) < RESCUE_PROBABILITY)
        state.phase[sent[rescued]] = HEALTHY
        state.complaints[sent] *= COMPLAINT_RELIEF


def _expected_outcomes(
    world: _Customers,
    state: _State,
    customers: np.ndarray,
    week: int,
    seasons: np.ndarray,
    sent: Offer | None,
    seed: int,
    arm: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The churn probability and expected net spend (customers, :data:`TRUTH_HORIZONS_DAYS`) of ``customers``
    over the days from the start of ``week``, without an offer or with ``sent``, from their state now (``arm``:
    0 without, k with the world's k-th offer).

    The weeks after are simulated :data:`TRUTH_REPLICAS` times by the world's own rules (who starts declining,
    who complains), and in each replica churn and spend are taken as expected values given its path: no purchase
    with probability exp(-expected purchases), spend the expected purchases times the expected net basket. Both
    arms draw from the same stream, so the difference between them is mostly the offer's."""
    replicas = np.tile(customers, TRUTH_REPLICAS)
    world, state = world.take(replicas), state.take(replicas)
    if sent is not None:  # the first offer's stream is the one-offer world's
        contact_rng = np.random.default_rng([seed, 4, week, *([arm] if arm > 1 else [])])
        _contact(contact_rng, world, state, np.arange(len(replicas)), week, sent)
    rng = np.random.default_rng([seed, 3, week])
    horizons = np.asarray(TRUTH_HORIZONS_DAYS, dtype=np.float64)
    purchases = np.zeros((len(replicas), len(horizons)))
    spend = np.zeros_like(purchases)
    everyone = np.arange(len(replicas))
    for offset in range(int(np.ceil(horizons.max() / 7))):
        active = everyone[state.phase != CHURNED]
        now = _this_week(world, state, active, week + offset, float(seasons[week + offset]))
        share = np.clip((horizons - 7 * offset) / 7, 0.0, 1.0)  # of this week inside each horizon
        purchases[active] += now.purchases[:, None] * share
        basket = _expected_net_basket(world, active, 1.0 - 0.5 * now.progress)
        spend[active] += (now.purchases * basket)[:, None] * share
        state.complaints *= COMPLAINT_DECAY
        state.complaints[active] += rng.poisson(now.purchases * world.bad_purchase_prob[active] * COMPLAINT_SHARE)
        _advance(rng, world, state, active, now.ending, week + offset)
    shape = (TRUTH_REPLICAS, len(customers), len(horizons))
    return np.exp(-purchases).reshape(shape).mean(axis=0), spend.reshape(shape).mean(axis=0)


def _expected_net_basket(world: _Customers, customers: np.ndarray, basket_scale: np.ndarray) -> np.ndarray:
    """A purchase's expected amount less its expected refund (:func:`_purchases`' draws): 1 + EXTRA_ITEMS items
    at the customer's unit price times the basket noise's mean; a refund returns 1 to all of its items, on
    average (2 + EXTRA_ITEMS) / 2 of them."""
    price = world.unit_price[customers] * basket_scale * np.exp(PRICE_NOISE**2 / 2)
    refunded_items = REFUND_SHARE * world.bad_purchase_prob[customers] * (2 + EXTRA_ITEMS) / 2
    return price * (1 + EXTRA_ITEMS - refunded_items)


def _unhappiness(seed: int, state: _State) -> tuple[np.random.Generator, np.ndarray]:
    """The texts' own random stream (the events never depend on it), and per customer the week from which
    their texts come from an unhappy customer: :data:`UNHAPPY_WEEKS` before their decline starts (never for
    a customer who never declines)."""
    rng = np.random.default_rng([seed, 1])
    lead = rng.integers(UNHAPPY_WEEKS[0], UNHAPPY_WEEKS[1] + 1, size=len(state.phase))
    declined = state.phase != HEALTHY
    return rng, np.where(declined, state.decline_start - lead, np.iinfo(np.int64).max)


def _write_frames(frames: dict[str, pd.DataFrame], out_dir: Path, fmt: str) -> tuple[Path, ...]:
    """Write each frame as <name>.<fmt> (parquet, else csv) into out_dir (created); return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, frame in frames.items():
        path = out_dir / f"{name}.{fmt}"
        if fmt == "parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
        paths.append(path)
    return tuple(paths)


def write_world(config: SyntheticWorldConfig, out_dir: Path, fmt: str = "parquet") -> tuple[Path, Path]:
    """Write events.<fmt> and customers.<fmt> (fmt in {"parquet", "csv"}) into out_dir (created), and with
    campaigns campaigns.<fmt> and true_uplift.<fmt>.

    Returns (events_path, customers_path). The format is checked before the (possibly long) generation.
    """
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"unknown format {fmt!r}; use 'parquet' or 'csv'")
    events_path, customers_path, *_ = _write_frames(simulate_world(config).by_name(), out_dir, fmt)
    return events_path, customers_path


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = SyntheticWorldConfig.with_defaults()
    parser = argparse.ArgumentParser(
        prog="churnformer-synthetic", description="Write a synthetic customer event log and customer table."
    )
    parser.add_argument("--customers", type=int, default=defaults.n_customers, help="number of customers")
    parser.add_argument("--weeks", type=int, default=defaults.n_weeks, help="length of the log in weeks")
    parser.add_argument("--start", default=defaults.start, help="first day of the log (YYYY-MM-DD)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    parser.add_argument("--out", type=Path, default=Path("data/synthetic"), help="output directory")
    parser.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="file format")
    parser.add_argument(
        "--text", action="store_true", help="add a free-text column: tickets, complaints and reviews (README)"
    )
    parser.add_argument(
        "--campaigns",
        action="store_true",
        help="randomized retention contacts with a holdout: campaigns.<format> and each contact's true effect, "
        "true_uplift.<format>",
    )
    parser.add_argument(
        "--offers",
        type=int,
        choices=sorted(OFFERS),
        default=defaults.campaign_offers,
        help="with --campaigns, the offers sent: 1 (a coupon) or 2 (a call and a coupon, given at random)",
    )
    args = parser.parse_args(argv)
    if args.campaigns and not campaign_weeks(args.weeks):
        parser.error(too_short_for_campaigns(args.weeks))
    if args.offers != defaults.campaign_offers and not args.campaigns:
        parser.error("--offers is for a world with --campaigns")
    return args


def main(argv: list[str] | None = None) -> int:
    """Console script `churnformer-synthetic`: write the world and print what was written."""
    args = _parse_args(argv)
    config = SyntheticWorldConfig(
        n_customers=args.customers,
        start=args.start,
        n_weeks=args.weeks,
        seed=args.seed,
        text=args.text,
        campaigns=args.campaigns,
        campaign_offers=args.offers,
    )
    started = time.perf_counter()
    frames = simulate_world(config)
    paths = _write_frames(frames.by_name(), args.out, args.format)
    for path in paths:
        print(path)
    contacts = "" if frames.campaigns is None else f", {len(frames.campaigns)} contacts"
    print(
        f"{len(frames.events)} events, {len(frames.customers)} customers{contacts} in "
        f"{time.perf_counter() - started:.1f}s"
    )
    return 0
