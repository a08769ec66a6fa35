"""Elementwise functions the heads' exported arithmetic is written in, chosen so that a customer's score does not
depend on the batch it is scored in (onnxruntime's kernels round some elementwise ops differently in a block's
scalar tail, so a row's result could change with the rows around it)."""

from __future__ import annotations

import math

import torch


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x), written as a log-softmax over (0, x). The same function as ``F.softplus``, but it
    exports as onnxruntime's row-wise LogSoftmax, whose result for a row does not depend on the rows around
    it; the elementwise Softplus (and Log) kernels split a large batch between threads and round an element
    in a block's scalar tail differently, so a customer's score would change by one ulp with the batch it
    lands in, and shards, spill partitions and one big job would disagree."""
    return -torch.log_softmax(torch.stack([torch.zeros_like(x), x], dim=-1), dim=-1)[..., 0]


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """1 / (1 + e^-x) written as exp(-softplus(-x)), from the ops whose result for a row does not depend on its
    batch (see :func:`softplus`)."""
    return torch.exp(-softplus(-x))


def cumulative_max(values: torch.Tensor) -> torch.Tensor:
    """Running maximum along the last axis (a Max per step: exports to standard ONNX ops)."""
    columns = [values[..., 0]]
    for k in range(1, values.shape[-1]):
        columns.append(torch.maximum(columns[-1], values[..., k]))
    return torch.stack(columns, dim=-1)


def normal_quantile(p: torch.Tensor) -> torch.Tensor:
    """Standard normal inverse CDF from basic ops (ONNX has no erfinv), via Giles' erfinv approximation.

    Within 3e-4 of the exact value in float32 for p in [1e-5, 1 - 1e-5], plenty for spend quantiles.
    """
    x = (2 * p - 1).clamp(-1 + 1e-7, 1 - 1e-7)
    w = -torch.log((1 - x) * (1 + x))
    central = w - 2.5
    central_poly = torch.full_like(x, 2.81022636e-08)
    for c in (
        3.43273939e-07,
        -3.5233877e-06,
        -4.39150654e-06,
        0.00021858087,
        -0.00125372503,
        -0.00417768164,
        0.246640727,
        1.50140941,
    ):
        central_poly = c + central_poly * central
    tail = torch.sqrt(w.clamp(min=5.0)) - 3
    tail_poly = torch.full_like(x, -0.000200214257)
    for c in (
        0.000100950558,
        0.00134934322,
        -0.00367342844,
        0.00573950773,
        -0.0076224613,
        0.00943887047,
        1.00167406,
        2.83297682,
    ):
        tail_poly = c + tail_poly * tail
    erfinv = torch.where(w < 5.0, central_poly, tail_poly) * x
    return math.sqrt(2.0) * erfinv


def minimize(parameters: torch.Tensor, loss) -> None:
    """``parameters`` (requires_grad) moved to a minimum of ``loss()`` by L-BFGS with a strong Wolfe line
    search: the few parameters of a post-hoc calibration, fitted in float64 on whole populations."""
    optimizer = torch.optim.LBFGS([parameters], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    optimizer.step(closure)
