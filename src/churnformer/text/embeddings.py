"""Distinct texts -> rows of one growing table of sentence embeddings, each text embedded once per job.

Events refer to texts by row (0: no text, a zero vector), so the ragged sequences carry one int32 per event
and text column, never a 384-float vector; batches gather the rows they use (``Sequences.pad``).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from churnformer.serving.output import write_atomically
from churnformer.text.encoder import TextEncoder

# U+FFFD: what bytes that are not UTF-8 become when a log is read with replacement (data.events.read_csv).
REPLACEMENT_CHARACTER = "\ufffd"
# A named text column whose distinct values are mostly one "word" of digits/punctuation holds ids or numbers.
ID_LIKE_PATTERN = r"^[\W\d_]*\w?[\W\d_]*$|^\S+$"
ID_LIKE_SHARE = 0.9


@dataclass
class TextStats:
    """Counts over the distinct texts embedded (each text once per job): no text itself is ever logged."""

    distinct: int = 0
    truncated: int = 0  # longer than the encoder's limit: cut to its first max_tokens tokens
    replaced_bytes: int = 0  # held bytes that were not UTF-8 (replaced by U+FFFD when read)

    def minus(self, before: TextStats) -> TextStats:
        return TextStats(**{f.name: getattr(self, f.name) - getattr(before, f.name) for f in fields(self)})

    def copy(self) -> TextStats:
        return TextStats(**{f.name: getattr(self, f.name) for f in fields(self)})


class TextEmbeddings:
    """The embedding table of one job (training or scoring): ``rows_of(values, rows)`` gives each selected
    value its row, embedding texts it has not seen yet; ``table`` holds row 0 (zeros) and every text so far.
    Rows never move, so sequences built at different times index the same table."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder
        self.dimension = encoder.identity.dimension
        self._row_of: dict[bytes, int] = {}
        self._blocks = [np.zeros((1, self.dimension), dtype=np.float32)]
        self._table: np.ndarray | None = None
        self.stats = TextStats()
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return 1 + len(self._row_of)

    @property
    def table(self) -> np.ndarray:
        """(rows, dimension) float32; row 0 is zeros."""
        if self._table is None or len(self._table) != len(self):
            self._table = np.concatenate(self._blocks) if len(self._blocks) > 1 else self._blocks[0]
            self._blocks = [self._table]
        return self._table

    def rows_of(self, values: pd.Series, rows: np.ndarray, column: str) -> np.ndarray:
        """The table row of ``values[rows]`` (int32; 0 where missing or blank). The column is factorized whole
        (Arrow strings stay in Arrow) and only the distinct texts of ``rows`` become Python strings."""
        codes, uniques = pd.factorize(values)
        codes = codes[rows]
        used = np.unique(codes[codes >= 0])
        texts = [str(uniques[i]) for i in used]
        lookup = np.zeros(len(uniques) + 1, dtype=np.int32)  # the extra last entry: code -1, missing
        lookup[used] = self._rows([text.strip() for text in texts], column)
        return lookup[codes]

    def _rows(self, texts: list[str], column: str) -> np.ndarray:
        keys = [hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest() for text in texts]
        new = {key: text for key, text in zip(keys, texts, strict=True) if text and key not in self._row_of}
        if new:
            self._check_looks_like_text(list(new.values()), column)
            embeddings, truncated = self.encoder.embed(list(new.values()))
            first = len(self)
            self._row_of.update({key: first + k for k, key in enumerate(new)})
            self._blocks.append(embeddings)
            self.stats.distinct += len(new)
            self.stats.truncated += int(truncated.sum())
            self.stats.replaced_bytes += sum(REPLACEMENT_CHARACTER in text for text in new.values())
        return np.array([self._row_of.get(key, 0) if text else 0 for key, text in zip(keys, texts, strict=True)])

    def _check_looks_like_text(self, texts: list[str], column: str) -> None:
        """Warn once per column whose texts are mostly single tokens (ids, numbers, codes): a sentence encoder
        learns nothing from them; a categorical or numeric column is what they are."""
        if column in self._warned or len(texts) < 20:
            return
        share = pd.Series(texts).str.fullmatch(ID_LIKE_PATTERN).mean()
        if share >= ID_LIKE_SHARE:
            self._warned.add(column)
            logging.getLogger(__name__).warning(
                "data.features.text: column %r looks like ids or numbers, not text (%.0f%% of its distinct values "
                "are a single token); list it in data.features.categorical or leave it out of data.features.text",
                column,
                100 * share,
            )

    def save(self, path: str | Path) -> None:
        """The table with each row's content hash (never the texts): a resumed run embeds nothing again."""
        keys = np.frombuffer(b"".join(sorted(self._row_of, key=self._row_of.__getitem__)), dtype=np.uint8)

        def write(partial: Path) -> None:
            with partial.open("wb") as file:
                np.savez(file, keys=keys.reshape(-1, 16), table=self.table[1:])

        write_atomically(Path(path), write)

    def load(self, path: str | Path) -> None:
        """Rows of a saved table, for texts not seen yet (an empty table takes them all in order)."""
        with np.load(Path(path)) as saved:
            keys, table = saved["keys"], saved["table"]
        if table.ndim != 2 or table.shape[1] != self.dimension or keys.shape != (len(table), 16):
            return
        digests = [row.tobytes() for row in keys]
        fresh = [k for k, key in enumerate(digests) if key not in self._row_of]
        first = len(self)
        self._row_of.update({digests[k]: first + j for j, k in enumerate(fresh)})
        self._blocks.append(table[fresh].astype(np.float32))
