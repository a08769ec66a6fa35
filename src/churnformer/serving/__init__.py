"""Scoring with the exported model, torch-free: a model file and an event log in, one row per customer out.

:class:`churnformer.serving.predictor.Predictor` scores frames of events (the Python API's and every engine's
unit of work); :mod:`churnformer.serving.job` scores a log on disk within a memory budget
(``churnformer-predict``); :mod:`churnformer.serving.explain` says why a customer scores as it does.
"""
