"""The model's contract with everything around it, in one torch-free place.

Training, export, scoring, evaluation and the run-directory tools all read these names from here; none
spells them again. Changing a name here changes it everywhere, and a model file written before the change
is refused by scoring with a message rather than misread.
"""

from __future__ import annotations

# --- model inputs: the arrays of churnformer.data.sequences.Sequences.pad, by name --------------------------
EVENT_CAT = "event_cat"  # (B, T, Ce) int32: categorical ids per event
EVENT_NUM = "event_num"  # (B, T, Fe) float32: numeric features per event
LENGTHS = "lengths"  # (B,) int64: real events per row (padding after them)
CUSTOMER_CAT = "customer_cat"  # (B, Cc) int32: static categorical ids
CUSTOMER_NUM = "customer_num"  # (B, Fc) float32: history summary + static numerics
CUSTOMER_AGG = "customer_agg"  # (B, Fa) float32: engineered aggregates (data.features.aggregates), NaN undefined
# Models with text features (data.features.text) only: per event and text column, the row of its text in
# text_embeddings, 0 for none; and the batch's distinct texts embedded by the run's sentence encoder.
EVENT_TEXT = "event_text"  # (B, T, Ct) int32
TEXT_EMBEDDINGS = "text_embeddings"  # (M, E) float32, row 0 zeros
MODEL_INPUTS = (EVENT_CAT, EVENT_NUM, LENGTHS, CUSTOMER_CAT, CUSTOMER_NUM)  # a text model adds the two above
# Training batches of a model trained with campaigns (data.campaigns) only, never a model file's input: each
# example's arm (data.campaigns.contact_arm: with one offer 1 sent, 0 held out; -1 no contact) (B,) float32.
CONTACTED = "contacted"
# Inputs a model file must have (a model without static categorical features may lack customer_cat).
REQUIRED_MODEL_INPUTS = (EVENT_CAT, EVENT_NUM, LENGTHS, CUSTOMER_NUM)
# Dimensions that vary from batch to batch, per input besides the event inputs (those declare their own:
# churnformer.data.inputs); the rest are fixed by the fitted featurizer.
DYNAMIC_AXES = {LENGTHS: ("batch",), CUSTOMER_CAT: ("batch",), CUSTOMER_NUM: ("batch",), CUSTOMER_AGG: ("batch",)}

# --- model outputs: one value per customer, the first columns of every predictions file ---------------------
# A model's outputs are declared by its heads (churnformer.modeling.heads), each predicting one label over the
# horizon grid; what a head predicts is named after its label and kind, so that evaluation can pair any output
# with its label without knowing the head: a probability of label x is ``x_probability``, an expectation
# ``expected_x``; at every horizon with the horizon appended (``per_horizon``).
PROBABILITY, EXPECTATION = "probability", "expectation"


def prediction_of(label: str, kind: str) -> str:
    """The output that predicts ``label`` as a ``kind`` (PROBABILITY or EXPECTATION)."""
    return f"{label}_probability" if kind == PROBABILITY else f"expected_{label}"


def label_of(column: str) -> tuple[str, str] | None:
    """(label, kind) an output column predicts by its name (the inverse of :func:`prediction_of`), else None."""
    if column.endswith("_probability"):
        return column.removesuffix("_probability"), PROBABILITY
    if column.startswith("expected_"):
        return column.removeprefix("expected_"), EXPECTATION
    return None


CHURN_PROBABILITY = "churn_probability"  # P(churn in the horizon): no purchase, or a decline (churn_definition)
# E[spend over the horizon] = (1 - P(no purchase)) * SPEND_IF_RETAINED
EXPECTED_SPEND = "expected_spend"
SPEND_QUANTILES = (0.1, 0.5, 0.9)
SPEND_QUANTILE_COLUMNS = tuple(f"spend_p{round(q * 100)}" for q in SPEND_QUANTILES)
SPEND_IF_RETAINED = "spend_if_retained"  # E[spend | spend > 0]: what the customer is worth if retained
EXPECTED_PURCHASES = "expected_purchases"  # purchase days expected in the horizon (the purchases head; BG/NBD)
# What scoring reads of every model (its value columns and segments): the survival and spend heads' outputs.
MODEL_OUTPUTS = (CHURN_PROBABILITY, EXPECTED_SPEND, *SPEND_QUANTILE_COLUMNS, SPEND_IF_RETAINED)
# P(no purchase by the horizon), S(h) of the survival head: a model of the decline churn definition outputs it
# beside churn_probability (for one of the purchase definition it is churn_probability itself).
NO_PURCHASE_PROBABILITY = "no_purchase_probability"

# --- per-horizon outputs: the same quantities over every horizon of the grid -------------------------------


def horizon_name(days: float) -> str:
    """``30d`` for 30 days: how a horizon is named in column names and tags."""
    return f"{days:g}d"


def per_horizon(column: str, days: float) -> str:
    """``churn_probability_30d``: a column at one horizon of the grid."""
    return f"{column}_{horizon_name(days)}"


# Outputs of a model trained with campaigns (data.campaigns; churnformer.modeling.contact): the same customer if
# contacted now, at the main horizon, and what contacting changes at every horizon (per_horizon).
CHURN_PROBABILITY_IF_CONTACTED = "churn_probability_if_contacted"
CHURN_UPLIFT = "churn_uplift"  # churn_probability - churn_probability_if_contacted: the drop in churn
SPEND_UPLIFT = "spend_uplift"  # expected spend if contacted - expected_spend: the spend contacting adds
# A model trained on several offers has these columns per offer (per_offer), and the ones above for each
# customer's best offer (BEST_OFFER: the highest contact_value; without a spend head, the largest churn uplift).
BEST_OFFER = "best_offer"


def per_offer(column: str, offer: str) -> str:
    """``contact_value__coupon``: a column of one offer, for a model trained on several."""
    return f"{column}__{offer}"


# --- what scoring derives from the outputs ------------------------------------------------------------------
CLV = "clv"  # discounted expected spend over the horizon grid
EXPECTED_DAYS_TO_NEXT_PURCHASE = "expected_days_to_next_purchase"  # restricted mean within the longest horizon
VALUE_AT_RISK = "value_at_risk"  # churn_probability * spend_if_retained: the spend lost if the customer churns

# --- predictions file: model outputs, then what scoring adds ------------------------------------------------
N_EVENTS = "n_events"  # events up to the cutoff, before truncation to max_len
CHURN_RISK_DECILE = "churn_risk_decile"  # 1 = highest churn probability, relative to the reference population
VALUE_DECILE = "value_decile"  # 1 = highest value (the segments' value basis)
SEGMENT = "segment"  # {high,low} value {at risk,loyal}
SEGMENTS = ("high value at risk", "high value loyal", "low value at risk", "low value loyal")
CONTACT_VALUE = "contact_value"  # spend_uplift at the main horizon minus the offer's cost (models with campaigns)
RESPONSE_SEGMENT = "response_segment"  # how the customer responds to a contact (RESPONSE_SEGMENTS)
RESPONSE_SEGMENTS = ("persuadable", "sure thing", "lost cause", "do not disturb")

# --- labels (what happened in the horizon) ------------------------------------------------------------------
CHURN = "churn"  # 1: churned in the horizon (no purchase by default; a decline with churn_definition=decline)
NO_PURCHASE = "no_purchase"  # 1: no purchase in the horizon (churn of the default definition)
SPEND = "spend"  # net spend in the horizon, floored at 0
PURCHASES = "purchases"  # days with a purchase in the horizon (same-day purchases count once, as in BG/NBD)
OBSERVED = "observed"  # 1: the horizon's window ends within the log (else its labels are unknown: censored)
LABEL_COLUMNS = (CHURN, SPEND)
# What a label file or frame has at every horizon (observed: whether the horizon's labels are known).
LABELS_BY_HORIZON = (CHURN, NO_PURCHASE, SPEND, PURCHASES, OBSERVED)


def by_horizon(label: str) -> str:
    """A training batch's key for ``label`` at every horizon of the grid, (B, K): ``churn_by_horizon``."""
    return f"{label}_by_horizon"


CHURN_BY_HORIZON = by_horizon(CHURN)
NO_PURCHASE_BY_HORIZON = by_horizon(NO_PURCHASE)
SPEND_BY_HORIZON = by_horizon(SPEND)
OBSERVED_BY_HORIZON = by_horizon(OBSERVED)

# --- ONNX metadata: JSON strings under this prefix in the model file's metadata_props -------------------------
# The model file's last output, (B, D): the customer representation the heads read (churnformer-predict
# embeddings=true writes it as EMBEDDING_PREFIX + i columns). Files exported before it lack it. Not "embedding":
# the exporter names the values of torch's embedding lookups so, and an ONNX graph names each value once.
EMBEDDING = "customer_embedding"
EMBEDDING_PREFIX = "embedding_"
METADATA_PREFIX = "churnformer."
META_FEATURIZER = "featurizer"  # fitted featurization state (churnformer.data.featurizer.Featurizer)
META_VERSION = "version"  # churnformer version that exported the file
META_OUTPUTS = "outputs"  # the model's output names in order (its heads' columns)
META_CALIBRATION = "calibration"  # churnformer.calibration.Calibration, with the reference percentiles
META_HORIZON_DAYS = "horizon_days"  # the main horizon
META_HORIZONS = "horizons_days"  # the horizon grid the model predicts on
META_TRAINED_CUTOFF = "trained_cutoff"
META_COLUMNS = "columns"  # the column mapping of the training log (scoring's default)
META_QUANTIZED = "quantized"  # "int8" for a dynamically quantized copy
META_MODEL_CARD = "model_card"  # churnformer.model_card: the training run's card (JSON)
META_CHURN_DEFINITION = "churn_definition"  # churnformer.data.labels.ChurnDefinition; absent: no purchase
META_CAMPAIGNS = "campaigns"  # models trained with campaigns: the contacts learned from and the offers' cost
REQUIRED_METADATA = (META_FEATURIZER, META_OUTPUTS, META_HORIZON_DAYS, META_HORIZONS)

# --- reference percentiles: levels 1..99 % ------------------------------------------------------------------
PERCENTILE_LEVELS = tuple(level / 100 for level in range(1, 100))

# --- a training run directory -------------------------------------------------------------------------------
RUN_MODEL = "model.onnx"
RUN_METRICS = "metrics.json"  # validation metrics of the best checkpoint
RUN_CONFIG = "config.yaml"  # the resolved config
RUN_INFO = "run_info.json"  # versions, git commit, data fingerprints
RUN_CALIBRATION = "calibration.json"
RUN_PREDICTIONS = "predictions.parquet"
RUN_EVALUATION = "evaluation"
RUN_MODEL_CARD = "model_card.md"
RUN_LOG = "cli.log"
RUN_TEXT_ENCODER = "text_encoder.onnx"  # the sentence encoder scoring runs (models with text features)
RUN_TEXT_EMBEDDINGS = "text_embeddings.npz"  # the embedded training texts by content hash (never the texts)
