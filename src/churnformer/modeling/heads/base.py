"""What a head is, and the set of heads a network carries.

A head predicts one label over the horizon grid (``churnformer.schema``'s label names: no_purchase, churn,
spend, purchases) and owns everything about it: its layer on the pooled customer vector, its loss, its
post-hoc calibration (the parameters, how they are fitted, and the arithmetic that applies them, which is
what the ONNX export computes), the columns it adds to a model file, and what its metrics are (by its kind:
a probability or an expectation). Training, calibration, export, serving, evaluation and TensorBoard loop
over the heads a model has; none of them names a head.

Heads run in order and a head may read what the heads before it predicted: the spend and purchases heads
are hurdle models whose zero mass is the survival head's P(no purchase) (``needs``).

Naming: a head of label ``x`` predicts ``x_probability`` (a probability) or ``expected_x`` (an expectation)
at every horizon (``x_probability_30d``, ...) and at the main horizon (``x_probability``). ``churn`` is the
product's headline: when no head predicts the churn label (churn means no purchase), ``churn_probability``
is the survival head's no_purchase_probability, under that name.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from churnformer.errors import ConfigError
from churnformer.schema import CHURN, CHURN_PROBABILITY, NO_PURCHASE, per_horizon, prediction_of

Raw = dict[str, torch.Tensor]  # one head's raw outputs by name, (B, K) each
Labels = Mapping[str, torch.Tensor]  # label name -> (B, K) at every horizon (observed: whether it is known)
Params = Mapping[str, Any]  # a head's calibration parameters: floats and per-horizon lists, or tensors
Predicted = dict[str, torch.Tensor]  # quantity -> (B, K), and a head's main-horizon extras -> (B,)
# Statistics of the training labels per label name: {"mean", "positive_mean", "log_positive_mean",
# "log_positive_std"} -> one value per horizon (see churnformer.data.training_set.TrainingSet.label_stats).
LabelStats = Mapping[str, Mapping[str, list[float]]]


@dataclass
class FitData:
    """What calibration is fitted on: every head's raw outputs and the labels of a set of customers, float64."""

    raw: dict[str, Raw]
    labels: dict[str, torch.Tensor]

    def concat(self, other: FitData) -> FitData:
        raw = {head: {k: torch.cat([v, other.raw[head][k]]) for k, v in out.items()} for head, out in self.raw.items()}
        return FitData(raw, {k: torch.cat([v, other.labels[k]]) for k, v in self.labels.items()})


@dataclass
class CalibrationFit:
    """One calibration being fitted, head by head in order (``fitted`` holds the heads done so far).

    ``validation``: the validation customers; ``everyone``: them and the training customers at the cutoff
    (None: validation only). The shapes of a calibration (temperatures, powers) are fitted on ``shaping``,
    its levels (biases, scales) on ``levels``. ``fallback`` collects why a head kept the identity.
    """

    heads: Heads
    validation: FitData
    everyone: FitData | None
    main: int
    shapes_from_all: bool = False
    shared_churn_bias: bool = False
    fitted: dict[str, dict[str, Any]] = field(default_factory=dict)
    fallback: list[str] = field(default_factory=list)

    @property
    def shaping(self) -> FitData:
        return self.everyone if self.shapes_from_all and self.everyone is not None else self.validation

    @property
    def levels(self) -> FitData:
        return self.everyone if self.everyone is not None else self.validation

    def predicted(self, data: FitData) -> Predicted:
        """The calibrated predictions of the heads fitted so far on ``data``."""
        return self.heads.predict(data.raw, self.fitted, self.main, only=list(self.fitted))


class Head(nn.Module, ABC):
    """One label over a grid of ``n_horizons`` horizons; ``weight``: its loss's weight in the joint loss."""

    label: ClassVar[str]  # the label it predicts (churnformer.schema)
    kind: ClassVar[str]  # schema.PROBABILITY or schema.EXPECTATION: what it predicts, so which metrics judge it
    needs: ClassVar[tuple[str, ...]] = ()  # labels of heads that must come before it (their predictions it reads)
    reads_wide_path: ClassVar[bool] = False  # reads the pooled vector plus the network's wide path
    main_extras: ClassVar[tuple[str, ...]] = ()  # columns it adds at the main horizon only

    def __init__(self, d_model: int, n_horizons: int, weight: float = 1.0) -> None:
        super().__init__()
        self.n_horizons = n_horizons
        self.weight = float(weight)
        self.name = ""  # set by Heads: the head's key in model.heads

    @property
    def quantity(self) -> str:
        """What it predicts at every horizon: ``<label>_probability`` or ``expected_<label>``."""
        return prediction_of(self.label, self.kind)

    @abstractmethod
    def forward(self, pooled: torch.Tensor) -> Raw:
        """Pooled customer vector (B, D) -> raw outputs, (B, K) each."""

    @abstractmethod
    def init_biases(self, stats: LabelStats) -> None:
        """Start at the training base rates of every horizon, so early epochs are not spent finding them."""

    @abstractmethod
    def loss(self, raw: Raw, labels: Labels, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Its loss, averaged over the batch (``losses``: those of the heads before it, by label)."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """Calibration parameters that change nothing."""

    @abstractmethod
    def predict(self, raw: Raw, params: Params | None, predicted: Predicted, main: int, extras: bool) -> Predicted:
        """Its quantity (B, K) from its raw outputs, calibrated with ``params`` (None: as the network gives it,
        what training reports), reading the heads before it in ``predicted``; with ``extras`` its main-horizon
        columns too. The ONNX export computes exactly this."""

    @abstractmethod
    def fit_calibration(self, fit: CalibrationFit) -> dict[str, Any]:
        """Its calibration parameters (the identity where a fit is not sane, the reason in ``fit.fallback``)."""

    @abstractmethod
    def describe(self, params: Params) -> str:
        """Its calibration in words, for the training log."""


def as_tensor(values: Any, like: torch.Tensor) -> torch.Tensor:
    """Calibration parameters as given (buffers, in the export) or as numbers and lists (when fitting), as a
    tensor beside ``like``."""
    return values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=like.dtype, device=like.device)


def head_class(target: str, where: str) -> type[Head]:
    """The :class:`Head` subclass a ``_target_`` names; anything else is refused (checkpoints name their heads,
    and a checkpoint must not be able to make churnformer import and call arbitrary code)."""
    module, _, name = str(target).rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError):
        found = None
    if not (isinstance(found, type) and issubclass(found, Head)):
        raise ConfigError(f"{where}: {target!r} is not a churnformer head (a subclass of {Head.__module__}.Head)")
    return found


class Heads(nn.ModuleDict):
    """The heads of a network, by name, in order. Built from ``model.heads`` (name -> ``_target_`` and the
    head's settings)."""

    def __init__(self, heads: Mapping[str, Head]) -> None:
        super().__init__(heads)
        seen: list[str] = []
        for name, head in heads.items():
            head.name = name  # its key in the raw outputs, the calibration and the config
            missing = [label for label in head.needs if label not in seen]
            if missing:
                raise ConfigError(f"model.heads.{name} needs a head of {missing} before it")
            seen.append(head.label)
        if len(set(seen)) != len(seen):
            raise ConfigError(f"model.heads: two heads predict the same label ({seen})")
        # Churn is no purchase unless a head predicts churn itself (a decline).
        self.churn_is_no_purchase = CHURN not in seen

    @classmethod
    def build(cls, config: Mapping[str, Mapping[str, Any]], d_model: int, n_horizons: int) -> Heads:
        heads = {}
        for name, settings in config.items():
            settings = dict(settings)
            head = head_class(settings.pop("_target_", ""), f"model.heads.{name}._target_")
            heads[name] = head(d_model, n_horizons, **settings)
        return cls(heads)

    def group(self, head: Head) -> str:
        """Where its metrics and loss are reported (``<group>/<metric>``): its label, ``churn`` for the survival
        head when churn means no purchase."""
        return CHURN if head.label == NO_PURCHASE and self.churn_is_no_purchase else head.label

    def column(self, head: Head) -> str:
        """Its quantity under the name the model file gives it."""
        return CHURN_PROBABILITY if self.group(head) == CHURN else head.quantity

    def kinds(self) -> dict[str, str]:
        """Metric group -> kind, in head order."""
        return {self.group(head): head.kind for head in self.values()}

    def forward(self, pooled: torch.Tensor, wide: torch.Tensor) -> dict[str, Raw]:
        """Each head's raw outputs by head name; heads that read the wide path get ``wide`` (pooled + it)."""
        return {name: head(wide if head.reads_wide_path else pooled) for name, head in self.items()}

    def init_biases(self, stats: LabelStats) -> None:
        for head in self.values():
            head.init_biases(stats)

    def loss(self, raw: Mapping[str, Raw], labels: Labels) -> dict[str, torch.Tensor]:
        """``joint`` (the weighted sum the network is trained on) and each head's loss by its group."""
        dtype = next(iter(next(iter(raw.values())).values())).dtype
        labels = {name: values.to(dtype) for name, values in labels.items()}
        by_label: dict[str, torch.Tensor] = {}
        reported: dict[str, torch.Tensor] = {}
        joint = None
        for name, head in self.items():
            value = head.loss(raw[name], labels, by_label)
            by_label[head.label] = value
            reported[self.group(head)] = value
            joint = head.weight * value if joint is None else joint + head.weight * value
        return {"joint": joint, **reported}

    def predict(
        self,
        raw: Mapping[str, Raw],
        params: Mapping[str, Params] | None,
        main: int,
        extras: bool = False,
        only: list[str] | None = None,
    ) -> Predicted:
        """Every head's quantity (B, K) by its name (``head.quantity``), calibrated with ``params`` by head name
        (None: uncalibrated), and with ``extras`` its main-horizon extras (B,); ``only``: these heads."""
        predicted: Predicted = {}
        for name, head in self.items():
            if only is None or name in only:
                given = None if params is None else params[name]
                predicted.update(head.predict(raw[name], given, predicted, main, extras))
        return predicted

    def _layout(self) -> tuple[list[tuple[str, str, bool]], list[tuple[str, str]]]:
        """Output order: at the main horizon (column, key in the predictions, whether the key is per horizon),
        and the (column, key) given at every horizon. churn_probability comes first, then each head's quantity
        (and at the main horizon its extras) in head order."""
        heads = sorted(self.values(), key=lambda head: self.column(head) != CHURN_PROBABILITY)  # stable
        main = []
        for head in heads:
            main += [(self.column(head), head.quantity, True), *[(extra, extra, False) for extra in head.main_extras]]
        return main, [(self.column(head), head.quantity) for head in heads]

    def output_columns(self, horizons: tuple[float, ...]) -> list[str]:
        """The outputs of a model file over ``horizons``, in order (see :meth:`_layout`)."""
        main, grid = self._layout()
        return [column for column, _, _ in main] + [
            per_horizon(column, days) for days in horizons for column, _ in grid
        ]

    def main_outputs(self, predicted: Predicted, main: int) -> dict[str, torch.Tensor]:
        """The main horizon's outputs by column, each (B,), from :meth:`predict`'s result with extras."""
        at_main, _ = self._layout()
        return {column: predicted[key][:, main] if grid else predicted[key] for column, key, grid in at_main}

    def outputs(self, predicted: Predicted, main: int) -> tuple[torch.Tensor, ...]:
        """The tensors of :meth:`output_columns`, each (B,), from :meth:`predict`'s result with extras."""
        _, grid = self._layout()
        k = next(iter(self.values())).n_horizons
        at_horizons = [predicted[key][:, index] for index in range(k) for _, key in grid]
        return (*self.main_outputs(predicted, main).values(), *at_horizons)

    def horizon_predictions(self, predicted: Predicted, labels: Labels) -> dict[str, tuple[torch.Tensor, ...]]:
        """Per metric group, (prediction, label) at every horizon, (B, K) each: what the epoch metrics judge."""
        return {self.group(head): (predicted[head.quantity], labels[self.group(head)]) for head in self.values()}
