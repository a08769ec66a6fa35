"""Customers' own words as event features: a frozen sentence encoder turns each distinct text into one
vector (:mod:`churnformer.text.embeddings`, torch-free, what scoring runs), exported once per training run
from the packaged model (:mod:`churnformer.text.export`, needs the ``text`` extra)."""
