"""Configs of churnformer-export and churnformer-predict (apart from training: no `model` group here)."""
