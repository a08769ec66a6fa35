"""churnformer's benchmarks and experiments, run from the repository root as ``python -m scripts.<group>.<name>``.

- ``scripts.benchmarks``: speed and memory (scoring, featurization, training, Spark, monitoring, the horizon
  grid's cost), each side by side with a reference measured in the same run.
- ``scripts.experiments``: predictive quality (protocols A and C, the learning curve, the levers and ceilings).
- ``scripts.common``: what they share: the benchmark logs, the model factory, the measurement of wall time and
  peak memory, and the JSON record every run writes (``--record``). The docs' benchmark tables are rendered
  from the records committed under ``docs/results/``.
"""
