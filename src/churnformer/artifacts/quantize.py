"""Optional int8 dynamic quantization of an exported model, kept only if validation churn AUC holds.

onnxruntime's dynamic quantization stores MatMul weights as int8 and quantizes activations on the
fly: a smaller file and faster CPU matmuls, at some cost in accuracy. The cost is measured on the
validation customers and printed; a model that loses more than ``MAX_AUC_DROP`` churn ROC-AUC is
refused (deleted), so a degraded model cannot be shipped by accident.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx
import pandas as pd

from churnformer.data.events import CUSTOMER_ID
from churnformer.data.labels import ChurnDefinition, LabelSpec
from churnformer.data.training_set import validation_labels
from churnformer.data.window import Window
from churnformer.errors import ConfigError
from churnformer.evaluation.metrics import roc_auc
from churnformer.evaluation.report import align
from churnformer.files import write_atomically
from churnformer.schema import META_QUANTIZED, METADATA_PREFIX, RUN_CONFIG
from churnformer.serving.predictor import AS_LOADED, Predictor
from churnformer.serving.settings import ScoringSettings

MAX_AUC_DROP = 0.002
INT8_SUFFIX = ".int8.onnx"


def int8_path(fp32: Path) -> Path:
    return fp32.with_name(fp32.name.removesuffix(".onnx") + INT8_SUFFIX)


@contextmanager
def quiet_root_logger() -> Iterator[None]:
    """onnxruntime's quantizer logs, on the root logger, a suggestion to pre-process shapes that matters for
    static quantization only: silenced while it runs, and the process's logging left as it was."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_model(fp32: str | Path, output: str | Path) -> Path:
    """Dynamic int8 quantization of the MatMul weights; churnformer metadata is carried over."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32, output = Path(fp32), Path(output)

    def write(partial: Path) -> None:
        with quiet_root_logger():
            quantize_dynamic(fp32, partial, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
        quantized = onnx.load(partial)
        source = {p.key: p.value for p in onnx.load(fp32).metadata_props}
        onnx.helper.set_model_props(quantized, {**source, METADATA_PREFIX + META_QUANTIZED: "int8"})
        onnx.save(quantized, partial)

    return write_atomically(output, write)


@dataclass(frozen=True)
class QuantizationCheck:
    customers: int
    auc_fp32: float
    auc_int8: float
    max_abs_churn_change: float

    @property
    def auc_drop(self) -> float:
        return self.auc_fp32 - self.auc_int8

    @property
    def accepted(self) -> bool:
        return self.auc_drop <= MAX_AUC_DROP

    def __str__(self) -> str:
        verdict = "kept" if self.accepted else f"REFUSED (drop > {MAX_AUC_DROP})"
        return (
            f"int8 quantization on {self.customers:,} validation customers: churn AUC {self.auc_fp32:.4f} (fp32) -> "
            f"{self.auc_int8:.4f} (int8), drop {self.auc_drop:+.4f}; largest change in churn probability "
            f"{self.max_abs_churn_change:.4f}: {verdict}"
        )


def check_quantized(
    fp32: Path,
    int8: Path,
    events: pd.DataFrame,
    customers: pd.DataFrame | None,
    cutoff: str,
    labels: pd.DataFrame,
) -> QuantizationCheck:
    """Churn AUC of both models on the customers in ``labels`` (columns customer_id, churn, spend)."""
    ids = labels[CUSTOMER_ID]
    scored = []
    for path in (fp32, int8):
        predictions = (
            Predictor(path, ScoringSettings.defaults(progress=False))
            .score(events, cutoff, customers, AS_LOADED)
            .predictions
        )
        scored.append(align(predictions[predictions[CUSTOMER_ID].isin(ids)], labels))
    fp32_frame, int8_frame = scored
    churn = fp32_frame["churn"].to_numpy()
    return QuantizationCheck(
        customers=len(fp32_frame),
        auc_fp32=roc_auc(churn, fp32_frame["churn_probability"].to_numpy()),
        auc_int8=roc_auc(churn, int8_frame["churn_probability"].to_numpy()),
        max_abs_churn_change=float((fp32_frame["churn_probability"] - int8_frame["churn_probability"]).abs().max()),
    )


def quantize_checked(
    fp32: Path, events: pd.DataFrame, customers: pd.DataFrame | None, cutoff: str, labels: pd.DataFrame
) -> tuple[Path | None, QuantizationCheck]:
    """Write ``<model>.int8.onnx`` beside ``fp32`` if it passes the AUC check; delete it otherwise, and also
    when the check itself cannot run (an unchecked int8 model must never be left where it could be shipped).

    ``events`` and ``customers`` are standard frames (the training run's, already column-mapped).
    """
    output = quantize_model(fp32, int8_path(fp32))
    try:
        check = check_quantized(fp32, output, events, customers, cutoff, labels)
    except BaseException:
        output.unlink(missing_ok=True)
        raise
    if check.accepted:
        print(check)
        return output, check
    output.unlink()
    print(f"WARNING: {check}. {output} was deleted; keep scoring with {fp32}.", file=sys.stderr)
    return None, check


def run_validation_data(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame | None, str, pd.DataFrame]:
    """Events, customers, cutoff and validation labels of a training run, rebuilt from its config.yaml (the
    source is instantiated alone: no Lightning, no features)."""
    import hydra
    from omegaconf import OmegaConf

    config = run_dir / RUN_CONFIG
    if not config.is_file():
        raise ConfigError(f"{config} not found: quantize=true measures accuracy on the run's validation customers")
    data = OmegaConf.load(config).data
    events, customers = hydra.utils.instantiate(data.source).load()
    window = Window.from_cutoff(data.cutoff, data.horizon_days)
    # Runs of releases before churn_definition existed predict no purchase.
    default = ChurnDefinition()
    spec = LabelSpec.of(
        data.purchase_types,
        data.event_type_column,
        data.get("churn_definition", default.name),
        data.get("decline_threshold", default.decline_threshold),
    )
    labels = validation_labels(events, window, data.val_fraction, spec)
    return events, customers, str(data.cutoff), labels
