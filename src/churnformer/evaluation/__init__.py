"""Judging predictions after the horizon has passed: metrics, figures and the ``churnformer-evaluate`` report."""
