"""Predictive-quality experiments: the protocols against the baselines, learning curves, levers, ceilings."""
