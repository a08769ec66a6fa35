"""Protocol C: The Complete Journey's line-item log, every model of protocol A plus churnformer per line item.

Usage::

    python -m scripts.experiments.completejourney [--seeds 0 1 2] [--record PATH]
                                                [any other option of scripts/experiments/compare.py]

Extras ``baselines`` and ``completejourney``. Cutoff 2017-09-30, horizon 92 days (grid 30/60/92), the
2,469 households split 50/50 at random by seed, every model trained on the training half and scored on the
test half (``scripts/experiments/compare.py``'s protocol and tables). Rows: churnformer with the data config's
defaults (one event per basket, ``data.features.group_by=basket_id``), the same per line item
(``churnformer_ungrouped``), the GRU, LightGBM on protocol A's RFM recipe plus the same recipe over baskets,
and BG/NBD + Gamma-Gamma. Options given here come after these and win.
"""

from __future__ import annotations

import sys

from scripts.experiments.compare import main

PROTOCOL_C = [
    "--dataset",
    "completejourney",
    "--models",
    "churnformer",
    "churnformer_ungrouped",
    "gru",
    "lightgbm",
    "btyd",
]

if __name__ == "__main__":
    sys.argv[1:1] = PROTOCOL_C
    main()
