"""Hydra configuration tree (a package so Hydra can find it in an installed churnformer)."""
