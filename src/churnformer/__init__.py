"""churnformer: churn probability and future spend per customer from raw event logs."""

__version__ = "0.3.0"
