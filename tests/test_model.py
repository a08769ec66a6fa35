"""The network: masking, padding invariance, head consistency over the horizon grid, monotonicity, loss."""

from __future__ import annotations

import pytest
import torch

from churnformer.calibration import Calibration
from churnformer.defaults import model_heads
from churnformer.modeling.config import FeatureSizes
from churnformer.modeling.heads.survival import survival_nll
from churnformer.modeling.network import ChurnFormer
from churnformer.modeling.ops import normal_quantile
from churnformer.modeling.scoring_model import ScoringModel
from churnformer.schema import (
    CUSTOMER_CAT,
    CUSTOMER_NUM,
    EVENT_CAT,
    EVENT_NUM,
    LENGTHS,
    MODEL_INPUTS,
    per_horizon,
)
from tests.conftest import network_config

HORIZONS = (30.0, 90.0, 180.0, 365.0)
MAIN = 1  # 90 days


def make_model(
    seed: int = 0, n_customer_cat: int = 1, encoder: str = "transformer", calibration: Calibration | None = None
) -> ScoringModel:
    torch.manual_seed(seed)
    sizes = FeatureSizes(
        event_cat_cardinalities=[6, 9, 14],
        n_event_num=5,
        time_feature_index=[1, 3],
        customer_cat_cardinalities=[5] * n_customer_cat,
        n_customer_num=2,
    )
    network = ChurnFormer(
        network_config(encoder, d_model=32, n_layers=2, n_heads=4), sizes, len(HORIZONS), model_heads()
    )
    # Non-trivial weights everywhere (init leaves biases at zero and embeddings tiny).
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return ScoringModel(network, list(MODEL_INPUTS), MAIN, calibration).eval()


def random_batch(batch: int, length: int, n_customer_cat: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0] = length
    event_cat = torch.randint(1, 6, (batch, length, 3), generator=generator).int()
    event_num = torch.randn(batch, length, 5, generator=generator)
    positions = torch.arange(length)[None, :, None]
    event_cat = torch.where(positions < lengths[:, None, None], event_cat, 0)
    event_num = torch.where(positions < lengths[:, None, None], event_num, 0.0)
    customer_cat = torch.randint(1, 5, (batch, n_customer_cat), generator=generator).int()
    return event_cat, event_num, lengths, customer_cat, torch.randn(batch, 2, generator=generator)


@pytest.mark.parametrize("encoder", ["transformer", "gru"])
def test_padding_invariance(encoder: str) -> None:
    """A customer scored alone or next to much longer sequences gets the same scores."""
    model = make_model(encoder=encoder)
    event_cat, event_num, lengths, customer_cat, customer_num = random_batch(8, 60)
    with torch.no_grad():
        together = model(event_cat, event_num, lengths, customer_cat, customer_num)
        for row in range(8):
            n = int(lengths[row])
            alone = model(
                event_cat[row : row + 1, :n],
                event_num[row : row + 1, :n],
                lengths[row : row + 1],
                customer_cat[row : row + 1],
                customer_num[row : row + 1],
            )
            for a, b in zip(alone, together, strict=True):
                torch.testing.assert_close(a[0], b[row], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("encoder", ["transformer", "gru"])
def test_padding_content_is_ignored(encoder: str) -> None:
    """Garbage in padded positions must not change anything (the mask really masks)."""
    model = make_model(encoder=encoder)
    event_cat, event_num, lengths, customer_cat, customer_num = random_batch(6, 20)
    positions = torch.arange(20)[None, :, None]
    junk_num = torch.where(positions < lengths[:, None, None], event_num, 1e3)
    junk_cat = torch.where(positions < lengths[:, None, None], event_cat, 4)
    with torch.no_grad():
        clean = model(event_cat, event_num, lengths, customer_cat, customer_num)
        dirty = model(junk_cat, junk_num, lengths, customer_cat, customer_num)
    for a, b in zip(clean, dirty, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_single_event_and_no_static_columns_give_finite_outputs() -> None:
    model = make_model(n_customer_cat=0)
    batch = random_batch(4, 1, n_customer_cat=0)
    with torch.no_grad():
        outputs = model(*batch)
    assert all(torch.isfinite(o).all() for o in outputs)


@pytest.mark.parametrize("wide", [True, False])
def test_customer_numbers_reach_the_churn_logits_through_the_wide_path(wide: bool) -> None:
    """With the deep path's output held at zero, the customer numbers still move the hazard and decline logits
    (Wide & Deep) and leave the spend head alone; without ``wide`` (checkpoints from before it) every head
    sees the deep path only."""
    sizes = FeatureSizes(
        event_cat_cardinalities=[6, 9, 14],
        n_event_num=5,
        time_feature_index=[1, 3],
        customer_cat_cardinalities=[5],
        n_customer_num=2,
    )
    torch.manual_seed(0)
    heads = model_heads(names=("survival", "spend", "decline"))
    network = ChurnFormer(network_config(d_model=32, wide=wide), sizes, len(HORIZONS), heads)
    assert (network.wide is not None) == wide
    with torch.no_grad():
        network.pool[0].weight.zero_()
        network.pool[0].bias.zero_()
    event_cat, event_num, lengths, customer_cat, customer_num = random_batch(4, 10)
    inputs = {EVENT_CAT: event_cat, EVENT_NUM: event_num, LENGTHS: lengths, CUSTOMER_CAT: customer_cat}
    with torch.no_grad():
        first = network({**inputs, CUSTOMER_NUM: customer_num})
        second = network({**inputs, CUSTOMER_NUM: customer_num + 1.0})
        other_events = network({**inputs, EVENT_NUM: event_num + 1.0, CUSTOMER_NUM: customer_num})
    for head, name, through_wide in [
        ("survival", "hazard_logits", wide),
        ("decline", "decline_logits", wide),
        ("spend", "log_spend_mean", False),
        ("spend", "spend_sigma", False),
    ]:
        moved = (second[head][name] - first[head][name]).abs().amax().item()
        assert (moved > 1e-4) == through_wide, name
        torch.testing.assert_close(other_events[head][name], first[head][name])


def outputs_by_name(model: ScoringModel, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return dict(zip(model.network.heads.output_columns(HORIZONS), model(*batch), strict=True))


def test_heads_are_consistent() -> None:
    """At every horizon expected spend and the main horizon's quantiles follow from one zero-inflated
    log-normal whose zero mass is S(t) = P(no purchase by t)."""
    model = make_model()
    batch = random_batch(64, 30)
    out = outputs_by_name(model, batch)
    with torch.no_grad():
        raw = model.network(dict(zip(MODEL_INPUTS, batch, strict=True)))
    s = torch.exp(-torch.cumsum(torch.nn.functional.softplus(raw["survival"]["hazard_logits"]), dim=1))
    mean_if_buying = torch.exp(raw["spend"]["log_spend_mean"])
    for k, days in enumerate(HORIZONS):
        torch.testing.assert_close(out[per_horizon("churn_probability", days)], s[:, k])
        torch.testing.assert_close(out[per_horizon("expected_spend", days)], (1 - s[:, k]) * mean_if_buying[:, k])
    p_churn = out["churn_probability"]
    assert torch.equal(p_churn, out[per_horizon("churn_probability", HORIZONS[MAIN])])
    assert ((p_churn > 0) & (p_churn < 1)).all()
    torch.testing.assert_close(out["spend_if_retained"], mean_if_buying[:, MAIN])
    p10, p50, p90 = out["spend_p10"], out["spend_p50"], out["spend_p90"]
    assert (p10 <= p50).all() and (p50 <= p90).all()
    assert torch.equal(p50 == 0, p_churn >= 0.5)
    # Where buying is likely, the median is the log-normal quantile at the renormalized level.
    sigma = raw["spend"]["spend_sigma"][:, MAIN]
    mu = raw["spend"]["log_spend_mean"][:, MAIN] - sigma**2 / 2
    level = (0.5 - p_churn) / (1 - p_churn)
    exact = torch.exp(mu + sigma * torch.special.ndtri(level.double()).float())
    buying = p_churn < 0.4
    torch.testing.assert_close(p50[buying], exact[buying], rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize(
    "calibration",
    [
        None,
        Calibration(
            {
                "survival": {"temperature": 0.2, "bias": [4.0, -9.0, 3.0, -7.0]},
                "spend": {"log_scale": [3.0, -8.0, 5.0, -9.0]},
            }
        ),
        Calibration(
            {
                "survival": {"temperature": 5.0, "bias": [-9.0, 9.0, -9.0, 9.0]},
                "spend": {"log_scale": [-5.0, 5.0, -5.0, 5.0]},
            }
        ),
    ],
    ids=["identity", "extreme", "extreme-reversed"],
)
def test_survival_never_rises_and_spend_never_falls_over_the_grid(calibration) -> None:
    """Whatever the network and whatever the calibration (extreme values included), S(t) is non-increasing
    and expected spend non-decreasing over the horizons, for every customer."""
    model = make_model(seed=3, calibration=calibration)
    with torch.no_grad():
        for parameter in model.network.parameters():
            parameter.mul_(5)  # far from the trained regime too
    out = outputs_by_name(model, random_batch(256, 20, seed=7))
    s = torch.stack([out[per_horizon("churn_probability", d)] for d in HORIZONS], dim=1)
    e = torch.stack([out[per_horizon("expected_spend", d)] for d in HORIZONS], dim=1)
    assert (s.diff(dim=1) <= 0).all() and (e.diff(dim=1) >= 0).all()
    assert torch.isfinite(s).all() and torch.isfinite(e).all()


def test_survival_loss_with_one_horizon_is_the_churn_cross_entropy() -> None:
    logits = torch.randn(50, 1)
    churn = (torch.rand(50, 1) < 0.4).float()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(-logits[:, 0], churn[:, 0], reduction="none")
    torch.testing.assert_close(survival_nll(logits, churn, torch.ones_like(churn)), expected)


def test_unobserved_horizons_are_left_out_of_the_loss() -> None:
    """A horizon whose window runs past the end of the log teaches nothing and is never counted as churn."""
    logits, churn = torch.randn(20, 3), torch.ones(20, 3)
    observed = torch.tensor([1.0, 1.0, 0.0]).expand(20, 3)
    changed = logits.clone()
    changed[:, 2] += 5.0  # the unobserved interval's logit cannot matter
    torch.testing.assert_close(survival_nll(logits, churn, observed), survival_nll(changed, churn, observed))


def test_normal_quantile_matches_exact() -> None:
    p = torch.linspace(1e-4, 1 - 1e-4, 20001)
    exact = torch.special.ndtri(p.double()).float()
    assert (normal_quantile(p) - exact).abs().max() < 1e-4


@pytest.mark.slow  # hundreds of optimizer steps: the fast tier keeps the heads' exact-value tests
def test_joint_loss_learns_a_separable_signal() -> None:
    """A few optimizer steps on a learnable signal must lower both parts of the loss."""
    model = make_model(seed=1).network.train()
    batch = random_batch(128, 10, seed=5)
    inputs = dict(zip(MODEL_INPUTS, batch, strict=True))
    customer_num = inputs["customer_num"]
    churn = (customer_num[:, :1] > 0).float().expand(128, len(HORIZONS))
    spend = torch.where(churn > 0, 0.0, torch.exp(2 + customer_num[:, 1:2]) * torch.tensor([1.0, 2.0, 3.0, 4.0]))
    labels = {"churn": churn, "no_purchase": churn, "spend": spend, "observed": torch.ones_like(churn)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        losses = model.heads.loss(model(inputs), labels)
        first = first or {k: float(v.detach()) for k, v in losses.items()}
        optimizer.zero_grad()
        losses["joint"].backward()
        optimizer.step()
    assert float(losses["churn"].detach()) < 0.5 * first["churn"]
    assert float(losses["spend"].detach()) < first["spend"] - 0.5


@pytest.mark.parametrize("zero_spend", [True, False])
def test_joint_loss_is_finite_for_all_zero_or_all_positive_batches(zero_spend: bool) -> None:
    network = make_model().network
    raw = network(dict(zip(MODEL_INPUTS, random_batch(8, 5), strict=True)))
    k = len(HORIZONS)
    spend = torch.zeros(8, k) if zero_spend else torch.full((8, k), 12.5)
    churn = torch.ones(8, k) if zero_spend else torch.zeros(8, k)
    labels = {"churn": churn, "no_purchase": churn, "spend": spend, "observed": torch.ones(8, k)}
    losses = network.heads.loss(raw, labels)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["joint"].backward()


def test_static_attributes_are_hidden_as_the_featurizer_encodes_a_missing_one() -> None:
    """Summary columns untouched; a hidden categorical is the unknown id, a hidden numeric is 0 with its
    missing indicator set; nothing hidden at rate 0, everything at rate 1, about the rate in between."""
    from churnformer.data.featurizer import BASE_CUSTOMER_NUMERIC
    from churnformer.data.values import UNKNOWN_ID
    from churnformer.schema import CUSTOMER_CAT, CUSTOMER_NUM
    from churnformer.training.augment import hide_static_attributes

    n, summary = 4000, len(BASE_CUSTOMER_NUMERIC)
    batch = {
        CUSTOMER_CAT: torch.randint(2, 7, (n, 3)),
        CUSTOMER_NUM: torch.cat([torch.randn(n, summary), torch.randn(n, 2), torch.zeros(n, 2)], dim=1),
    }
    assert hide_static_attributes(batch, 0.0, 2) is batch
    everything = hide_static_attributes(batch, 1.0, 2)
    assert (everything[CUSTOMER_CAT] == UNKNOWN_ID).all()
    assert torch.equal(everything[CUSTOMER_NUM][:, :summary], batch[CUSTOMER_NUM][:, :summary])
    assert (everything[CUSTOMER_NUM][:, summary:] == torch.tensor([0.0, 0.0, 1.0, 1.0])).all()
    torch.manual_seed(0)
    some = hide_static_attributes(batch, 0.1, 2)
    assert 0.08 < float((some[CUSTOMER_CAT] == UNKNOWN_ID).float().mean()) < 0.12
    hidden = some[CUSTOMER_NUM][:, summary + 2 :] == 1.0
    assert 0.08 < float(hidden.float().mean()) < 0.12
    assert (some[CUSTOMER_NUM][:, summary : summary + 2][hidden] == 0).all()
    assert torch.equal(batch[CUSTOMER_NUM][:, summary + 2 :], torch.zeros(n, 2))  # the input is not modified
