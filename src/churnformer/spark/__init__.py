"""Scoring on Apache Spark (extra ``spark``): the same model and the same scores, on a cluster's tables.

``score(events, "model.onnx", "2024-06-30")`` returns the predictions of every customer of a Spark
DataFrame of events, with exactly the columns ``churnformer-predict`` writes; ``score_job`` returns the
whole job (predictions, rejects, explanation effects) and ``summarize(job)`` its counts. Customers are
grouped into buckets by the stable customer hash and each bucket is scored by one Python call with the
single-machine code, so the rows equal ``churnformer-predict``'s bit for bit. ``churnformer-predict
engine=spark`` runs the same job from the command line.
"""

from churnformer.spark.buckets import TableReading
from churnformer.spark.scoring import SparkScoring, score, score_job, summarize

__all__ = ["SparkScoring", "TableReading", "score", "score_job", "summarize"]
