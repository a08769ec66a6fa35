"""Scoring on Apache Spark (extra ``spark``): the same model and the same scores, on a cluster's tables.

``score_table(events, "model.onnx", "2024-06-30")`` scores every customer of a Spark DataFrame of events and
returns the job's parts (``.predictions``, with exactly the columns ``churnformer-predict`` writes, ``.rejects``
and with explanations ``.effects``); ``summarize(job)`` gives its counts. Customers are grouped into buckets by
the stable customer hash and each bucket is scored by one Python call with the single-machine code, so the
rows equal ``churnformer-predict``'s bit for bit. ``churnformer-predict engine=spark`` runs the same job from
the command line; both take their settings as :class:`churnformer.serving.settings.ScoringSettings`.
"""

from churnformer.spark.buckets import TableReading
from churnformer.spark.scoring import SparkScoring, TableOrigin, score_table, summarize

__all__ = ["SparkScoring", "TableOrigin", "TableReading", "score_table", "summarize"]
