"""Distinct texts -> rows of one growing table of sentence embeddings, each text embedded once per job.

Events refer to texts by row (0: no text, a zero vector), so the ragged sequences carry one int32 per event
and text column, never a 384-float vector; batches gather the rows they use (``Sequences.pad``).

A saved table (``save``: content hashes, vectors, truncation flags and the encoder's SHA-256, never a text)
is a cache for the next job with the same encoder (``load``): its texts are taken from it instead of being
embedded again, with the same vectors bit for bit, since a text's vector depends on that text alone.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from churnformer.errors import ModelFileError
from churnformer.files import write_atomically
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
    cached: int = 0  # taken from a saved table (``TextEmbeddings.load``) instead of embedded again

    def minus(self, before: TextStats) -> TextStats:
        return TextStats(**{f.name: getattr(self, f.name) - getattr(before, f.name) for f in fields(self)})

    def copy(self) -> TextStats:
        return TextStats(**{f.name: getattr(self, f.name) for f in fields(self)})


class TextEmbeddings:
    """The embedding table of one job (training or scoring): ``rows_of(values, rows)`` gives each selected
    value its row, embedding texts it has not seen yet; ``table`` holds row 0 (zeros) and every text so far.
    Rows never move, so sequences built at different times index the same table, and a text gets the same
    row whether its vector came from the encoder or from a loaded cache."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder
        self.dimension = encoder.identity.dimension
        self._row_of: dict[bytes, int] = {}
        self._blocks = [np.zeros((1, self.dimension), dtype=np.float32)]
        self._table: np.ndarray | None = None
        self._truncated: list[bool] = []  # per row after 0, for the saved table
        self._cache = SavedTable.empty(self.dimension)
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
            self._add(new, column)
        return np.array([self._row_of.get(key, 0) if text else 0 for key, text in zip(keys, texts, strict=True)])

    def _add(self, new: dict[bytes, str], column: str) -> None:
        """Rows for ``new`` texts in their order: vectors from the cache where it has them, else embedded."""
        self._check_looks_like_text(list(new.values()), column)
        cached = np.array([self._cache.row_of.get(key, -1) for key in new], dtype=np.int64)
        hit = cached >= 0
        embeddings = np.empty((len(new), self.dimension), dtype=np.float32)
        truncated = np.empty(len(new), dtype=bool)
        embeddings[hit], truncated[hit] = self._cache.table[cached[hit]], self._cache.truncated[cached[hit]]
        if not hit.all():
            texts = list(new.values())
            embeddings[~hit], truncated[~hit] = self.encoder.embed([texts[k] for k in np.flatnonzero(~hit)])
        first = len(self)
        self._row_of.update({key: first + k for k, key in enumerate(new)})
        self._blocks.append(embeddings)
        self._truncated.extend(truncated.tolist())
        self.stats.distinct += len(new)
        self.stats.truncated += int(truncated.sum())
        self.stats.replaced_bytes += sum(REPLACEMENT_CHARACTER in text for text in new.values())
        self.stats.cached += int(hit.sum())

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
        """This job's table with each row's content hash (never the texts), truncation flag and the encoder's
        SHA-256: a resumed run, or the next scoring job, embeds none of these texts again."""
        keys = np.frombuffer(b"".join(sorted(self._row_of, key=self._row_of.__getitem__)), dtype=np.uint8)

        def write(partial: Path) -> None:
            with partial.open("wb") as file:
                np.savez(
                    file,
                    keys=keys.reshape(-1, 16),
                    table=self.table[1:],
                    truncated=np.array(self._truncated, dtype=bool),
                    encoder_sha256=np.array(self.encoder.identity.sha256),
                )

        write_atomically(Path(path), write)

    def load(self, path: str | Path) -> None:
        """Take texts from a saved table from now on (made by this same encoder, or refused in one line)."""
        self._cache = SavedTable.read(Path(path), self.encoder.identity.sha256, self.dimension)


@dataclass
class SavedTable:
    """A saved table as a cache: content hash -> its row, and the rows' vectors and truncation flags."""

    row_of: dict[bytes, int]
    table: np.ndarray
    truncated: np.ndarray

    @classmethod
    def empty(cls, dimension: int) -> SavedTable:
        return cls({}, np.zeros((0, dimension), dtype=np.float32), np.zeros(0, dtype=bool))

    @classmethod
    def read(cls, path: Path, encoder_sha256: str, dimension: int) -> SavedTable:
        try:
            with np.load(path) as saved:
                keys, table, truncated = saved["keys"], saved["table"], saved["truncated"]
                made_by = str(saved["encoder_sha256"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise ModelFileError(
                f"{path}: not a table of text embeddings saved by churnformer ({error}); delete it and it is made again"
            ) from error
        if made_by != encoder_sha256:
            raise ModelFileError(
                f"{path}: text embeddings of another encoder (SHA-256 {made_by[:12]}..., this model's is "
                f"{encoder_sha256[:12]}...); use another file, or delete it and it is made again"
            )
        if table.shape != (len(keys), dimension) or keys.shape[1:] != (16,) or truncated.shape != (len(keys),):
            raise ModelFileError(f"{path}: a damaged table of text embeddings; delete it and it is made again")
        row_of = {row.tobytes(): k for k, row in enumerate(keys)}
        return cls(row_of, table.astype(np.float32, copy=False), truncated.astype(bool, copy=False))
