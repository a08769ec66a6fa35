"""The heads a network predicts with, one module each (:mod:`churnformer.modeling.heads.base` says what a
head implements); ``model.heads`` in the config chooses them by ``_target_``."""
