"""The benchmarks' model factory: the benchmark logs on disk, a default-architecture model with random weights
(speed does not depend on them) exported to ONNX, the same with reference percentiles, and the FLOP accounting
(the useful FLOPs of a batch of real lengths, and the machine's matmul peak to read them against).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from churnformer.artifacts.export import export_onnx
from churnformer.calibration import Calibration
from churnformer.data.featurizer import FeaturizerConfig, fit_featurizer
from churnformer.defaults import model_heads, yaml_defaults
from churnformer.modeling.network import ChurnFormer
from churnformer.schema import PERCENTILE_LEVELS, RUN_TEXT_ENCODER
from churnformer.serving.predictor import Predictor
from churnformer.text.encoder import TextEncoder
from scripts.common.logs import SPAN_SECONDS, START, generate_crm_events, generate_events

HORIZONS = tuple(yaml_defaults("data/settings/default")["horizons_days"])  # the default grid, main horizon 90


LOGS = {"int": generate_events, "crm": generate_crm_events}


def cutoff_date() -> str:
    return str((START + np.timedelta64(SPAN_SECONDS - 1, "s")).astype("datetime64[D]"))


def make_log(workdir: Path, n_events: int, n_customers: int, kind: str = "int") -> Path:
    """The ``kind`` benchmark log (``scripts.common.logs``) in ``workdir``, generated on first use."""
    path = workdir / f"events-{n_events}-{n_customers}{'' if kind == 'int' else '-' + kind}.parquet"
    if not path.exists():
        frame = LOGS[kind](n_events, n_customers)
        frame.to_parquet(path.with_suffix(".partial"), index=False, row_group_size=1_000_000)
        os.replace(path.with_suffix(".partial"), path)
    return path


def small_network() -> dict:
    return yaml_defaults("model/small")["network"]


def make_model(workdir: Path, log: Path, text: bool = False) -> Path:
    """The default small architecture with random weights, featurizer fitted on the first 1 M events; with
    ``text``, reading the log's ``text`` column too, the run's sentence encoder exported beside it."""
    path = workdir / f"model-{log.stem}.onnx"
    encoder = workdir / RUN_TEXT_ENCODER
    if text and not encoder.exists():
        from churnformer.text.export import export_text_encoder

        export_text_encoder(encoder)
    if not path.exists():
        sample = pd.read_parquet(log).head(1_000_000)
        config = FeaturizerConfig.with_defaults(max_len=128, text=["text"] if text else [])
        featurizer = fit_featurizer(sample, config=config)
        if text:
            featurizer.text_encoder = asdict(TextEncoder(encoder).identity)
        torch.manual_seed(0)
        network = ChurnFormer.build(small_network(), featurizer, len(HORIZONS), model_heads()).eval()
        torch.save(network.state_dict(), path.with_suffix(".pt"))
        metadata = {"horizon_days": 90, "horizons_days": list(HORIZONS)}
        export_onnx(network, featurizer.to_json(), path, metadata, fused_attention=True)
        export_onnx(network, featurizer.to_json(), portable_path(path), metadata, fused_attention=False)
    return path


def portable_path(model: Path) -> Path:
    """The same network exported with attention as standard ONNX ops (``fused_attention=False``)."""
    return model.with_name(model.stem + ".portable.onnx")


def load_network(model: Path) -> torch.nn.Module:
    """The benchmark network with the weights exported to ``model`` (saved beside it as plain tensors)."""
    predictor = Predictor(model)
    network = ChurnFormer.build(small_network(), predictor.featurizer, len(HORIZONS), model_heads())
    network.load_state_dict(torch.load(model.with_suffix(".pt"), weights_only=True))
    return network.eval()


def reference_model(model: Path, log: Path) -> Path:
    """The benchmark model again, with reference percentiles of its own scores on a random tenth of the
    log's customers, all their events (what training stores from the validation customers), so deciles and
    ``explain.only`` work: the top risk decile is then about a tenth of the log."""
    path = model.with_name(model.stem + ".reference.onnx")
    if not path.exists():
        predictor = Predictor(model)
        ids = pq.read_table(log, columns=["customer_id"])["customer_id"].unique()
        sample = np.random.default_rng(0).choice(ids.to_numpy(), size=len(ids) // 10, replace=False)
        events = pq.read_table(log, filters=[("customer_id", "in", sample.tolist())]).to_pandas()
        scores = predictor.score(events, cutoff_date()).predictions
        levels = list(PERCENTILE_LEVELS)
        columns = ("churn_probability", "expected_spend", "spend_if_retained")
        calibration = Calibration(percentiles={c: scores[c].quantile(levels).tolist() for c in columns})
        network = ChurnFormer.build(small_network(), predictor.featurizer, len(HORIZONS), model_heads()).eval()
        network.load_state_dict(torch.load(model.with_suffix(".pt"), weights_only=True))
        metadata = {"horizon_days": 90, "horizons_days": list(HORIZONS)}
        export_onnx(network, predictor.featurizer.to_json(), path, metadata, calibration, fused_attention=True)
    return path


def useful_flops(lengths: np.ndarray, d_model: int, ff: int, layers: int) -> float:
    tokens = lengths.astype(np.float64) + 1
    per_layer = 2 * tokens * (4 * d_model**2 + 2 * d_model * ff) + 4 * tokens**2 * d_model
    return float(per_layer.sum() * layers)


def matmul_peak(size: int = 2048, repeats: int = 20, device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of the fastest of ``repeats`` square matmuls on ``device`` in ``dtype``."""
    if device == "cuda":
        size *= 4  # a GPU needs far more work per call to reach its peak
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9
