"""What the synthetic world's customers write (``churnformer-synthetic --text``): support tickets, complaints
and reviews whose tone follows the writer's hidden state.

Customers turn unhappy some weeks (:data:`UNHAPPY_WEEKS`) before their decline starts, and stay so: dissatisfaction
comes first, and behaviour shows nothing of it until the decline begins (and little early in the decline:
the purchase rate falls by 85% only by its end). An unhappy customer writes upset texts with probability
:data:`UPSET_IF_UNHAPPY`, a content one with :data:`UPSET_IF_CONTENT` (a complaint after a bad purchase:
:data:`UPSET_IF_COMPLAINT`). Texts are the only early view of that state: that is what text should add.
Calm and upset sentences share their words on purpose ("not a single problem" is calm, "I used to be happy"
is upset; "recommend", "happy", "never" and "not" appear in both), so counting keywords is not enough.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

# Per event type: what the text is about (the tone comes after it).
OPENINGS = {
    "support_ticket": (
        "I need help changing my delivery address.",
        "How do I update the card on my account?",
        "Can you tell me where my parcel is?",
        "I cannot log in to the app since yesterday.",
        "Please explain the extra charge on my last bill.",
        "Where do I find the invoice for my order?",
    ),
    "complaint": (
        "My last order arrived damaged.",
        "The item I received was the wrong size.",
        "Half of my order was missing from the box.",
        "The parcel came three days late.",
        "The product stopped working after a week.",
        "I was charged twice for a single order.",
    ),
    "purchase": (
        "Bought the usual items for the family.",
        "Picked this up while it was on offer.",
        "Tried a new brand this time.",
        "Restocked my regular order.",
        "Got a gift for a friend's birthday.",
        "Ordered a few things for the weekend.",
    ),
}
# Visits: the answer to the survey that follows some of them.
OPENINGS["visit"] = (
    "Survey answer: browsed the new arrivals.",
    "Survey answer: checked the status of an order.",
    "Survey answer: compared a few prices.",
    "Survey answer: looked for a discount code.",
    "Survey answer: read the product reviews.",
    "Survey answer: just had a quick look around.",
)
MIDDLES = ("", "It is the second time this month.", "I have been a customer for years.", "Sent from my phone.")
CALM = (
    "Not a big deal, thanks in advance.",
    "No rush, I am sure you will sort it out.",
    "Never had a problem before, so I am not worried.",
    "You have always been great, I cannot complain.",
    "Not a single issue otherwise, I would recommend you to anyone.",
    "Happy to wait for a fix.",
    "I could not be happier with the service overall.",
    "Nothing else to report, keep it up.",
)
UPSET = (
    "I am not happy and I am thinking of leaving.",
    "I used to be happy with you, not anymore.",
    "I would not recommend you to anyone now.",
    "Never again, I am moving to another shop.",
    "This keeps happening and I am done.",
    "Cancel my account if this is how it goes.",
    "Honestly I cannot see a reason to stay.",
    "Not the service I used to recommend to my friends.",
)
REVIEW_SHARE = 0.4  # purchases that come with a review
SURVEY_SHARE = 0.2  # visits followed by a survey answer
UNHAPPY_WEEKS = (2, 8)  # inclusive range of weeks between turning unhappy and the decline's start
UPSET_IF_UNHAPPY = 0.8
UPSET_IF_CONTENT = 0.1
UPSET_IF_COMPLAINT = 0.3


def event_texts(
    rng: np.random.Generator, event_types: np.ndarray, names: tuple[str, ...], unhappy: np.ndarray
) -> pd.api.extensions.ExtensionArray:
    """A text per event (missing for events without one): ``event_types`` are codes into ``names``;
    ``unhappy`` is the writer's state when the event happened. Returns a pandas string array."""
    n = len(event_types)
    kind = np.full(n, -1)
    for k, name in enumerate(OPENINGS):
        kind[event_types == names.index(name)] = k
    share = np.ones(len(OPENINGS))
    share[[list(OPENINGS).index("purchase"), list(OPENINGS).index("visit")]] = (REVIEW_SHARE, SURVEY_SHARE)
    writes = (kind >= 0) & (rng.random(n) < share[kind])
    complaint = kind == list(OPENINGS).index("complaint")
    upset_share = np.where(unhappy, UPSET_IF_UNHAPPY, np.where(complaint, UPSET_IF_COMPLAINT, UPSET_IF_CONTENT))
    upset = rng.random(n) < upset_share
    opening = rng.integers(0, len(OPENINGS["purchase"]), size=n)
    middle = rng.integers(0, len(MIDDLES), size=n)
    tone = rng.integers(0, len(CALM), size=n)
    # Every combination once as a Python string; events take theirs by code.
    code = (((kind * len(OPENINGS["purchase"]) + opening) * len(MIDDLES) + middle) * 2 + upset) * len(CALM) + tone
    codes, inverse = np.unique(np.where(writes, code, -1), return_inverse=True)
    texts = pa.array([_text(int(c)) if c >= 0 else "" for c in codes], type=pa.string())
    return pd.array(texts.take(pa.array(inverse, mask=~writes)), dtype="string[pyarrow]")


def _text(code: int) -> str:
    code, tone = divmod(code, len(CALM))
    code, upset = divmod(code, 2)
    code, middle = divmod(code, len(MIDDLES))
    kind, opening = divmod(code, len(OPENINGS["purchase"]))
    parts = (list(OPENINGS.values())[kind][opening], MIDDLES[middle], (UPSET if upset else CALM)[tone])
    return " ".join(part for part in parts if part)
