"""Corpora, splits, prepared token arrays and batches.

A corpus is named by a string: `builtin:python-docs` (Python's help topics),
`builtin:python-code` (the standard library's source), a text file, a folder of text
files, a `.jsonl` file or a `.parquet` file (`path#field` picks the field or column;
`text` by default). `prepare` splits a corpus into train and validation documents,
trains a tokenizer on the train split and stores both splits as token arrays in a
folder keyed by everything they depend on, so preparing the same inputs again is free.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import sysconfig
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import Progress

from llm.atomic import atomic_dir, write_json
from llm.config import DataConfig
from llm.errors import ConfigError, DataError, UserError
from llm.loss import IGNORE
from llm.tokenizer import Tokenizer, load_tokenizer, train_tokenizer

log = logging.getLogger(__name__)

FORMAT = 1  # part of the cache key: bump it when the stored layout or tokenization changes
TEXT_SUFFIXES = frozenset(
    {
        ".txt", ".md", ".markdown", ".rst", ".tex", ".html", ".htm", ".xml", ".csv", ".tsv",
        ".json", ".yaml", ".yml", ".toml", ".ini", ".cfg", ".py", ".pyi", ".c", ".h", ".cc",
        ".cpp", ".hpp", ".rs", ".go", ".java", ".js", ".ts", ".sh",
    }
)  # fmt: skip
STDLIB_EXCLUDED = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages"})
# Below this much text, starting worker processes costs more than it saves.
PARALLEL_MIN_CHARS = 2_000_000
CHUNK_CHARS = 256_000  # the unit of work (and of progress) when encoding
# A NUL byte this early means a binary file, as git and grep decide (text never holds one).
BINARY_PROBE_BYTES = 8192
NAMED_FILES = 5  # the most files a warning names
# A corpus of one document is cut into at least this many pieces (of MIN_PIECE_CHARS or
# more), so that a validation split of 10% or less holds a share near what was asked for.
SINGLE_DOCUMENT_PIECES = 20
MIN_PIECE_CHARS = 1024


@dataclass
class TokenSplits:
    """A tokenized corpus in memory: what training and evaluation read."""

    train: np.ndarray  # 1-D token ids (uint16 or uint32)
    val: np.ndarray
    val_bytes: int  # UTF-8 bytes of the validation text (of its scored part), for bits per byte
    # Which tokens are scored as targets (bool, one per token); None: all of them.
    # Instruction tuning scores the responses only.
    train_scored: np.ndarray | None = None
    val_scored: np.ndarray | None = None


@dataclass(frozen=True)
class Document:
    name: str
    text: str


class _Decoder:
    """UTF-8 decoding that replaces undecodable bytes and counts the replacements of
    each file."""

    def __init__(self) -> None:
        self.replaced: Counter[str] = Counter()

    def __call__(self, raw: bytes, file: Path) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="replace")
            self.replaced[str(file)] += text.count("\ufffd") - raw.count("\ufffd".encode())
            return text

    def clean(self, text: str, file: Path) -> str:
        """Replace lone surrogates (JSON escapes allow them) so the text encodes as UTF-8."""
        return self(text.encode("utf-8", errors="surrogatepass"), file)

    def summary(self) -> str:
        """How many characters were replaced, and in which files."""
        named = [f"{file} ({count})" for file, count in self.replaced.most_common(NAMED_FILES)]
        more = len(self.replaced) - len(named)
        files = ", ".join(named) + (f" and {more} more files" if more > 0 else "")
        return f"replaced {self.replaced.total()} undecodable characters with U+FFFD in {files}"


# ---------------------------------------------------------------------------- corpora


def read_corpus(spec: str) -> list[Document]:
    """The non-empty documents of the corpus `spec`, in a fixed order."""
    decode = _Decoder()
    docs = [doc for doc in _read(spec, decode) if doc.text.strip()]
    if decode.replaced:
        log.warning("corpus %r: %s", spec, decode.summary())
    if not docs:
        raise DataError(f"corpus {spec!r}: no non-empty documents")
    return docs


def _read(spec: str, decode: _Decoder) -> list[Document]:
    if spec.startswith("builtin:"):
        name = spec[len("builtin:") :]
        if name == "python-docs":
            return _python_docs()
        if name == "python-code":
            return _python_code(decode)
        raise DataError(
            f"corpus {spec!r}: unknown builtin {name!r}; expected python-docs or python-code"
        )
    path, field = Path(spec), None
    if "#" in spec and not path.exists():
        location, _, field = spec.rpartition("#")
        path = Path(location)
    if not path.exists():
        raise DataError(f"corpus {spec!r}: no such file or directory")
    suffix = path.suffix.lower()
    if field is not None and (path.is_dir() or suffix not in (".jsonl", ".parquet")):
        raise DataError(f"corpus {spec!r}: '#field' applies only to .jsonl and .parquet files")
    if path.is_dir():
        return _read_dir(path, decode)
    if suffix == ".jsonl":
        return _read_jsonl(path, field or "text", decode)
    if suffix == ".parquet":
        return _read_parquet(path, field or "text", decode)
    if suffix in TEXT_SUFFIXES:
        raw = _read_bytes(path)
        if _is_binary(raw):
            raise DataError(
                f"corpus {spec!r}: a binary file (it holds NUL bytes), not text; "
                "inside a folder it would be skipped"
            )
        return [Document(path.name, decode(raw, path))]
    raise DataError(
        f"corpus {spec!r}: unsupported file type {suffix or '(none)'!r}; expected a text file "
        "(.txt, .md, ...), .jsonl, .parquet or a directory"
    )


def _python_docs() -> list[Document]:
    from pydoc_data.topics import topics

    return [Document(name, topics[name]) for name in sorted(topics)]


def _python_code(decode: _Decoder) -> list[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = _find_files(root, {".py"}, lambda folder: folder in STDLIB_EXCLUDED)
    return _read_text_files(files, decode, "builtin:python-code")


def _read_dir(root: Path, decode: _Decoder) -> list[Document]:
    files = _find_files(root, TEXT_SUFFIXES, lambda folder: folder.startswith("."))
    if not files:
        raise DataError(f"corpus {str(root)!r}: no text files ({', '.join(sorted(TEXT_SUFFIXES))})")
    return _read_text_files(files, decode, str(root))


def _read_text_files(files: list[tuple[str, Path]], decode: _Decoder, spec: str) -> list[Document]:
    """A document for each file of a folder, skipping binary files (an image or an
    archive named .txt) with a warning: decoded, they would be noise to train on."""
    docs = []
    for name, path in files:
        raw = _read_bytes(path)
        if _is_binary(raw):
            log.warning("corpus %r: skipping %s: a binary file (it holds NUL bytes)", spec, path)
            continue
        docs.append(Document(name, decode(raw, path)))
    return docs


def _is_binary(raw: bytes) -> bool:
    return b"\0" in raw[:BINARY_PROBE_BYTES]


def _find_files(
    root: Path, suffixes: Iterable[str], skip_folder: Callable[[str], bool]
) -> list[tuple[str, Path]]:
    """(path relative to root, path) of the files with those suffixes, sorted; skipped
    folders are not entered at all (site-packages can be huge)."""
    suffixes = set(suffixes)
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if not skip_folder(name)]
        for name in names:
            path = Path(folder, name)
            if path.suffix.lower() in suffixes and not name.startswith("."):
                files.append((path.relative_to(root).as_posix(), path))
    return sorted(files)


def jsonl_records(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed record) for each non-blank line of the JSON-lines `text` read
    from `path`; a DataError naming the line for one that is not JSON."""
    # Split on "\n" only: JSON strings may hold other line separators such as U+2028.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: malformed JSON: {err.msg}") from None


def read_jsonl_file(path: Path) -> Iterator[tuple[int, Any]]:
    """`jsonl_records` of the UTF-8 file `path`; a DataError when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read: {err}") from None
    return jsonl_records(text, path)


def _read_jsonl(path: Path, field: str, decode: _Decoder) -> list[Document]:
    docs = []
    for number, record in jsonl_records(decode(_read_bytes(path), path), path):
        text = record.get(field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise DataError(f"{path}, line {number}: no string field {field!r}")
        docs.append(Document(f"{path.name}:{number}", decode.clean(text, path)))
    return docs


def _read_parquet(path: Path, column: str, decode: _Decoder) -> list[Document]:
    try:
        values = pd.read_parquet(path, columns=[column])[column].tolist()
    except (OSError, ValueError, KeyError) as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: cannot read column {column!r}: {first_line}") from None
    docs = []
    for row, value in enumerate(values):
        if isinstance(value, str):
            docs.append(Document(f"{path.name}:{row}", decode.clean(value, path)))
        elif not _is_missing(value):
            raise DataError(f"{path}: row {row} of column {column!r} is not text")
    return docs


def _is_missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror or err}") from None


def chunk_documents(docs: list[Document], chunk_chars: int) -> list[Document]:
    """The documents with every one longer than `chunk_chars` cut into consecutive pieces
    of at most that many characters, each ending at a line break where the piece has
    one (`name#1`, `name#2`, …; joined, the pieces are the document again). A corpus of
    one document is cut into SINGLE_DOCUMENT_PIECES pieces or more where it is long
    enough. Deterministic: the pieces depend only on the text."""
    if chunk_chars < 1:
        raise ConfigError(f"chunk_chars must be at least 1 (got {chunk_chars})")
    if len(docs) == 1:
        piece = max(-(-len(docs[0].text) // SINGLE_DOCUMENT_PIECES), MIN_PIECE_CHARS)
        chunk_chars = min(chunk_chars, piece)
    out = []
    for doc in docs:
        if len(doc.text) <= chunk_chars:
            out.append(doc)
            continue
        start, number = 0, 1
        while start < len(doc.text):
            end = min(start + chunk_chars, len(doc.text))
            if end < len(doc.text):
                line_end = doc.text.rfind("\n", start, end)
                end = line_end + 1 if line_end >= start else end
            out.append(Document(f"{doc.name}#{number}", doc.text[start:end]))
            start, number = end, number + 1
    return out


def corpus_fingerprint(docs: list[Document]) -> str:
    digest = hashlib.sha256()
    for doc in docs:
        for part in (doc.name.encode("utf-8"), doc.text.encode("utf-8")):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
    return digest.hexdigest()


def check_val_fraction(val_fraction: float) -> None:
    """A share held out for validation must leave text on both sides (NaN fails too)."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1 (got {val_fraction})")


def split_documents(
    docs: list[Document], val_fraction: float, seed: int
) -> tuple[list[Document], list[Document]]:
    """Hold out ceil(val_fraction * n) documents (at least one when there are two) for
    validation, chosen by a hash of the seed and each name, so that the split is the
    same on every machine and a document stays on its side when others are added."""
    check_val_fraction(val_fraction)
    n = len(docs)
    # The tolerance keeps float noise (0.1 * 30 = 3.0000000000000004) from adding one.
    n_val = min(n - 1, max(1, math.ceil(val_fraction * n - 1e-9))) if n >= 2 else 0

    def rank(i: int) -> tuple[bytes, int]:
        return hashlib.sha256(f"{seed}:{docs[i].name}".encode()).digest(), i

    val = set(sorted(range(n), key=rank)[:n_val])
    return [d for i, d in enumerate(docs) if i not in val], [
        d for i, d in enumerate(docs) if i in val
    ]


# ---------------------------------------------------------------------- prepared data


@dataclass(frozen=True)
class PreparedData:
    """A prepared dataset on disk: `train.npy`, `val.npy`, `tokenizer/` and `meta.json`.

    `meta` holds the corpus spec and fingerprint, the tokenizer kind and fingerprint,
    vocab_size, dtype, val_fraction, split_seed and, under `splits.train` and
    `splits.val`, the documents, tokens and UTF-8 bytes of each split, and how many of
    its tokens are the tokenizer's unknown id (`unknown`).
    """

    directory: Path
    meta: dict[str, Any]
    tokenizer: Tokenizer

    def splits(self) -> TokenSplits:
        return TokenSplits(
            train=_load_tokens(self.directory, "train", self.meta),
            val=_load_tokens(self.directory, "val", self.meta),
            val_bytes=self.meta["splits"]["val"]["bytes"],
        )


def prepare(
    config: DataConfig,
    *,
    tokenizer: Tokenizer | None = None,
    out: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
    scratch: Path | None = None,
) -> PreparedData:
    """Tokenize `config.corpus` into `out` (default: a folder under `config.cache_dir`
    named by a hash of the inputs), reusing what is there when the inputs match; with
    `scratch`, what is not there yet is tokenized into `scratch` instead, and nothing is
    written where it would be kept (a look that must leave no trace: `evo run --dry-run`).

    The tokenizer is trained on the train split unless one is given.
    """
    docs = chunk_documents(read_corpus(config.corpus), config.chunk_chars)
    train_docs, val_docs = split_documents(docs, config.val_fraction, config.split_seed)
    if not val_docs:
        raise DataError(
            f"corpus {config.corpus!r}: {len(docs)} document of {len(docs[0].text)} characters,"
            " too short to hold out a validation part; use a longer text, a corpus of several"
            " documents (a directory of files or a .jsonl file) or a different val_fraction"
        )
    corpus_fp = corpus_fingerprint(docs)
    key = _cache_key(config, corpus_fp, tokenizer)
    directory = Path(config.cache_dir) / key if out is None else Path(out)
    existing = _reusable(directory, key)
    if existing is not None:
        if tokenizer is None:
            _check_vocab_size(config, existing.tokenizer)
        return existing
    directory = directory if scratch is None else scratch / key

    if tokenizer is None:
        tokenizer = train_tokenizer(
            config.tokenizer, (doc.text for doc in train_docs), config.vocab_size
        )
        _check_vocab_size(config, tokenizer)
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    meta: dict[str, Any] = {
        "format": FORMAT,
        "key": key,
        "corpus": config.corpus,
        "corpus_fingerprint": corpus_fp,
        "tokenizer": tokenizer.kind,
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "vocab_size": tokenizer.vocab_size,
        "dtype": np.dtype(dtype).name,
        "val_fraction": config.val_fraction,
        "split_seed": config.split_seed,
        "splits": {},
    }
    with atomic_dir(directory) as tmp:
        tokenizer.save(tmp / "tokenizer")
        for name, split in (("train", train_docs), ("val", val_docs)):
            tokens = _encode_split(tokenizer, split, name, workers, progress)
            np.save(tmp / f"{name}.npy", tokens.astype(dtype))
            unknown = 0 if tokenizer.unk_id is None else int((tokens == tokenizer.unk_id).sum())
            if unknown:
                log.warning(
                    "corpus %r: %d tokens of the %s split stand for text the %s tokenizer "
                    "cannot represent (they decode to U+FFFD)",
                    config.corpus, unknown, name, tokenizer.kind,
                )  # fmt: skip
            meta["splits"][name] = {
                "documents": len(split),
                "tokens": len(tokens),
                "bytes": sum(len(doc.text.encode("utf-8")) for doc in split),
                "unknown": unknown,
            }
        write_json(tmp / "meta.json", meta)
    return load_prepared(directory)


def _cache_key(config: DataConfig, corpus_fp: str, tokenizer: Tokenizer | None) -> str:
    """What names a prepared corpus: the text, the tokenizer (a given one by its
    fingerprint, one to train by its kind and size) and the split."""
    if tokenizer is not None:
        tokenizer_key: dict[str, Any] = {"fingerprint": tokenizer.fingerprint()}
    else:
        tokenizer_key = {"kind": config.tokenizer, "vocab_size": config.vocab_size}
    return _hash_json(
        {
            "format": FORMAT,
            "corpus": corpus_fp,
            "tokenizer": tokenizer_key,
            "val_fraction": config.val_fraction,
            "split_seed": config.split_seed,
        }
    )


def _check_vocab_size(config: DataConfig, tokenizer: Tokenizer) -> None:
    """Warn when a trained tokenizer has fewer tokens than asked for: a small corpus has
    fewer characters (char) or pieces (bpe, unigram) than that. A byte tokenizer's size
    is fixed, and vocab_size only a minimum for it."""
    if config.tokenizer != "byte" and tokenizer.vocab_size < config.vocab_size:
        log.warning(
            "corpus %r: the %s tokenizer has %d tokens, not the %d asked for (vocab_size): "
            "the corpus supports no more",
            config.corpus,
            config.tokenizer,
            tokenizer.vocab_size,
            config.vocab_size,
        )


def load_prepared(directory: str | Path) -> PreparedData:
    directory = Path(directory)
    path = directory / "meta.json"
    if not path.is_file():
        raise DataError(f"{directory}: not a prepared dataset (no meta.json)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        sizes = [
            meta["splits"][name][field]
            for name in ("train", "val")
            for field in ("tokens", "bytes")
        ]
        fingerprint = meta["tokenizer_fingerprint"]
        if meta["format"] != FORMAT or not all(isinstance(n, int) for n in sizes):
            raise ValueError("unexpected format")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: corrupt metadata: {err}") from None
    tokenizer = load_tokenizer(directory / "tokenizer")
    if tokenizer.fingerprint() != fingerprint:
        raise DataError(f"{directory}: the tokenizer does not match the one in meta.json")
    prepared = PreparedData(directory, meta, tokenizer)
    prepared.splits()  # checks that both arrays are there with the recorded sizes
    return prepared


def _reusable(directory: Path, key: str) -> PreparedData | None:
    """The prepared data in `directory` if it was made from the same inputs."""
    if not directory.exists():
        return None
    if not (directory / "meta.json").exists():
        if directory.is_dir() and not any(directory.iterdir()):
            return None
        # Preparing replaces the folder whole; never do that to something else.
        raise DataError(f"{directory}: exists and is not a prepared dataset; not overwriting it")
    try:
        prepared = load_prepared(directory)
    except UserError as err:
        log.warning("rebuilding %s: %s", directory, err)
        return None
    return prepared if prepared.meta.get("key") == key else None


def _load_tokens(directory: Path, name: str, meta: dict[str, Any]) -> np.ndarray:
    path = directory / f"{name}.npy"
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: unreadable token array: {err}") from None
    expected = meta["splits"][name]["tokens"]
    if tokens.ndim != 1 or tokens.dtype.name != meta["dtype"] or len(tokens) != expected:
        raise DataError(
            f"{path}: expected {expected} {meta['dtype']} tokens, found shape {tokens.shape} "
            f"of {tokens.dtype}"
        )
    return tokens


def _hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------- encoding


def encode_corpus(spec: str, tokenizer: Tokenizer, progress: bool = False) -> TokenSplits:
    """All of corpus `spec`, not split, as the `val` of a TokenSplits (train empty): what
    a model is scored on when the corpus is held-out text."""
    docs = read_corpus(spec)
    tokens = _encode_split(tokenizer, docs, "corpus", None, progress)
    size = sum(len(doc.text.encode("utf-8")) for doc in docs)
    return TokenSplits(train=np.zeros(0, dtype=tokens.dtype), val=tokens, val_bytes=size)


def encode_validation(config: DataConfig, tokenizer: Tokenizer) -> TokenSplits:
    """The validation split of `config.corpus` alone, tokenized with `tokenizer`, as the
    `val` of a TokenSplits (train empty): the documents `prepare` would hold out."""
    docs = chunk_documents(read_corpus(config.corpus), config.chunk_chars)
    _, val_docs = split_documents(docs, config.val_fraction, config.split_seed)
    if not val_docs:
        raise DataError(f"corpus {config.corpus!r}: too short to hold out a validation part")
    tokens = _encode_split(tokenizer, val_docs, "validation", None, False)
    size = sum(len(doc.text.encode("utf-8")) for doc in val_docs)
    return TokenSplits(train=np.zeros(0, dtype=tokens.dtype), val=tokens, val_bytes=size)


_worker_tokenizer: Tokenizer | None = None


def _encode_split(
    tokenizer: Tokenizer,
    docs: list[Document],
    name: str,
    workers: int | None,
    progress: bool,
) -> np.ndarray:
    """The documents' tokens, with eos between documents."""
    chunks = _chunks([doc.text for doc in docs])
    total = sum(size for _, size in chunks)
    workers = workers or min(4, os.cpu_count() or 1)
    groups = [group for group, _ in chunks]
    with _progress_bar(progress, f"encoding {name}", total) as advance:
        if workers > 1 and total >= PARALLEL_MIN_CHARS:
            with concurrent.futures.ProcessPoolExecutor(
                workers, initializer=_init_worker, initargs=(tokenizer,)
            ) as pool:
                parts = _collect(pool.map(_encode_in_worker, groups), chunks, advance)
        else:
            encoded = (_encode_chunk(tokenizer, group) for group in groups)
            parts = _collect(encoded, chunks, advance)
    # Each chunk ends every document with eos; the corpus's last one is not needed.
    return np.concatenate(parts)[:-1]


def _chunks(texts: list[str]) -> list[tuple[list[str], int]]:
    """Consecutive groups of about CHUNK_CHARS of text, each with its size."""
    chunks: list[tuple[list[str], int]] = []
    group: list[str] = []
    size = 0
    for text in texts:
        group.append(text)
        size += len(text)
        if size >= CHUNK_CHARS:
            chunks.append((group, size))
            group, size = [], 0
    if group:
        chunks.append((group, size))
    return chunks


def _collect(
    encoded: Iterable[np.ndarray],
    chunks: list[tuple[list[str], int]],
    advance: Callable[[int], None],
) -> list[np.ndarray]:
    parts = []
    for part, (_, size) in zip(encoded, chunks, strict=True):
        parts.append(part)
        advance(size)
    return parts


def _encode_chunk(tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
    flat: list[int] = []
    for ids in tokenizer.encode_batch(texts):
        flat += ids
        flat.append(tokenizer.eos_id)
    return np.array(flat, dtype=np.uint32)


def _init_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_in_worker(texts: list[str]) -> np.ndarray:
    assert _worker_tokenizer is not None
    return _encode_chunk(_worker_tokenizer, texts)


@contextlib.contextmanager
def _progress_bar(enabled: bool, description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield a function that advances a rich progress bar on stderr when it is a
    terminal, and does nothing otherwise."""
    if not (enabled and sys.stderr.isatty()):
        yield lambda size: None
        return
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda size: bar.advance(task, size)


# ----------------------------------------------------------------------------- batches


def require_windows(tokens: np.ndarray, seq_len: int, what: str) -> None:
    if len(tokens) < seq_len + 1:
        raise DataError(
            f"{what}: {len(tokens)} tokens, fewer than one context window of seq_len+1 "
            f"= {seq_len + 1}"
        )


def train_batch(
    tokens: np.ndarray,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator,
    scored: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` random windows: inputs and next-token targets, int64, (batch, seq_len);
    a target that `scored` leaves out is IGNORE.

    The starts come from `generator` alone, so restoring its state replays the stream.
    """
    require_windows(tokens, seq_len, "training split")
    starts = torch.randint(len(tokens) - seq_len, (batch_size,), generator=generator)
    return _windows(tokens, starts.numpy(), seq_len, scored)


def eval_batches(
    tokens: np.ndarray, seq_len: int, batch_size: int, scored: np.ndarray | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The whole split in consecutive windows that predict every token but the first
    exactly once; the shorter window at the end comes as a batch of its own."""
    predicted = max(len(tokens) - 1, 0)
    full = predicted // seq_len
    for first in range(0, full, batch_size):
        starts = np.arange(first, min(first + batch_size, full)) * seq_len
        yield _windows(tokens, starts, seq_len, scored)
    rest = predicted - full * seq_len
    if rest > 0:
        yield _windows(tokens, np.array([full * seq_len]), rest, scored)


def _windows(
    tokens: np.ndarray, starts: np.ndarray, length: int, scored: np.ndarray | None
) -> tuple[torch.Tensor, torch.Tensor]:
    index = starts[:, None] + np.arange(length + 1)
    windows = torch.from_numpy(tokens[index].astype(np.int64))
    inputs, targets = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
    if scored is not None:
        # A copy: a single row's slice is contiguous already, and shares the inputs' memory.
        targets = targets.masked_fill(~torch.from_numpy(scored[index[:, 1:]]), IGNORE)
    return inputs, targets
