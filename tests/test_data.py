import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import llm.data
from llm.config import DataConfig
from llm.data import (
    Document,
    chunk_documents,
    corpus_fingerprint,
    eval_batches,
    load_prepared,
    prepare,
    read_corpus,
    require_windows,
    split_documents,
    train_batch,
)
from llm.errors import ConfigError, DataError
from llm.tokenizer import train_tokenizer


def make_docs(n: int) -> list[Document]:
    return [
        Document(f"doc{i:03d}.txt", f"document {i}: " + "some text here. " * (i % 5 + 1))
        for i in range(n)
    ]


@pytest.fixture
def corpus_dir(tmp_path):
    root = tmp_path / "corpus"
    for doc in make_docs(20):
        (root / doc.name[:5]).mkdir(parents=True, exist_ok=True)
        (root / doc.name[:5] / doc.name).write_text(doc.text, encoding="utf-8")
    return root


def config(corpus, tmp_path, **overrides) -> DataConfig:
    fields = {
        "corpus": str(corpus),
        "tokenizer": "byte",
        "vocab_size": 512,
        "cache_dir": str(tmp_path / "cache"),
    }
    return DataConfig(**{**fields, **overrides})


def forbid(*_args, **_kwargs):
    raise AssertionError("must not be called")


def split_on(tokens: np.ndarray, separator: int) -> list[list[int]]:
    docs, current = [], []
    for token in tokens.tolist():
        if token == separator:
            docs.append(current)
            current = []
        else:
            current.append(token)
    return [*docs, current]


# ---------------------------------------------------------------------------- corpora


def test_text_file_is_one_document(tmp_path):
    path = tmp_path / "notes.md"
    path.write_text("# Title\n\nbody text\n", encoding="utf-8")
    assert read_corpus(str(path)) == [Document("notes.md", "# Title\n\nbody text\n")]


def test_directory_reads_text_files_recursively_in_sorted_order(tmp_path):
    root = tmp_path / "d"
    (root / "b" / "c").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "z.txt").write_text("zed")
    (root / "b" / "c" / "deep.py").write_text("x = 1\n")
    (root / "b" / "a.rst").write_text("rst")
    (root / "b" / "empty.txt").write_text("  \n")
    (root / "image.png").write_bytes(b"\x89PNG")
    (root / ".git" / "config.txt").write_text("hidden")
    docs = read_corpus(str(root))
    assert [d.name for d in docs] == ["b/a.rst", "b/c/deep.py", "z.txt"]
    assert docs[1].text == "x = 1\n"


def test_jsonl_default_field_and_named_field(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [{"text": "first", "body": "one"}, {"text": "second\u2028line", "body": "two"}]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n\n", encoding="utf-8")
    docs = read_corpus(str(path))
    assert [(d.name, d.text) for d in docs] == [
        ("data.jsonl:1", "first"),
        ("data.jsonl:2", "second\u2028line"),
    ]
    assert [d.text for d in read_corpus(f"{path}#body")] == ["one", "two"]


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"data\.jsonl, line 2: malformed JSON"):
        read_corpus(str(path))


def test_jsonl_missing_field_is_an_error(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "ok"}\n{"other": 1}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2: no string field 'text'"):
        read_corpus(str(path))


def test_parquet_default_and_named_column(tmp_path):
    path = tmp_path / "data.parquet"
    pd.DataFrame({"text": ["alpha", None, "gamma"], "content": ["x", "y", "z"]}).to_parquet(path)
    docs = read_corpus(str(path))
    assert [(d.name, d.text) for d in docs] == [
        ("data.parquet:0", "alpha"),
        ("data.parquet:2", "gamma"),
    ]
    assert [d.text for d in read_corpus(f"{path}#content")] == ["x", "y", "z"]
    with pytest.raises(DataError, match="cannot read column 'nope'"):
        read_corpus(f"{path}#nope")


def test_builtin_python_docs():
    docs = read_corpus("builtin:python-docs")
    assert len(docs) > 50
    assert len({d.name for d in docs}) == len(docs)
    assert "assert" in {d.name for d in docs}


def test_builtin_python_code_is_the_stdlib_without_tests():
    docs = read_corpus("builtin:python-code")
    names = [d.name for d in docs]
    assert len(docs) > 300
    assert names == sorted(names)
    assert "json/decoder.py" in names
    excluded = {"test", "tests", "idle_test", "site-packages"}
    assert not any(excluded.intersection(name.split("/")) for name in names)
    assert all(name.endswith(".py") and not name.startswith("/") for name in names)


def test_undecodable_bytes_are_replaced_with_one_warning(tmp_path, caplog):
    root = tmp_path / "latin"
    root.mkdir()
    (root / "a.txt").write_bytes(b"caf\xe9 and na\xefve")
    (root / "b.txt").write_bytes(
        b"ok \xff text \xef\xbf\xbd literal"
    )  # one real U+FFFD stays uncounted
    with caplog.at_level(logging.WARNING, logger="llm.data"):
        docs = read_corpus(str(root))
    assert docs[0].text == "caf\ufffd and na\ufffdve"
    assert docs[1].text == "ok \ufffd text \ufffd literal"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage() == (
        f"corpus {str(root)!r}: replaced 3 undecodable characters with U+FFFD in "
        f"{root / 'a.txt'} (2), {root / 'b.txt'} (1)"
    )


def test_binary_files_in_a_folder_are_skipped_with_a_warning_each(tmp_path, caplog):
    root = tmp_path / "mixed"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("plain text", encoding="utf-8")
    (root / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (root / "sub" / "data.csv").write_bytes(b"PK\x03\x04" + b"\x00" * 20)
    with caplog.at_level(logging.WARNING, logger="llm.data"):
        docs = read_corpus(str(root))
    assert [doc.name for doc in docs] == ["a.txt"]
    assert [r.getMessage() for r in caplog.records] == [
        f"corpus {str(root)!r}: skipping {root / name}: a binary file (it holds NUL bytes)"
        for name in ("image.txt", "sub/data.csv")
    ]


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: str(p / "missing.txt"), "no such file or directory"),
        (lambda p: "builtin:nope", "unknown builtin 'nope'"),
        (
            lambda p: (p / "x.bin").write_bytes(b"1") and str(p / "x.bin"),
            "unsupported file type '.bin'",
        ),
        (
            lambda p: (p / "e.txt").write_text(" \n\n") and str(p / "e.txt"),
            "no non-empty documents",
        ),
        (lambda p: (p / "sub").mkdir() or str(p / "sub"), "no text files"),
        (
            lambda p: (p / "t.txt").write_text("a") and f"{p / 't.txt'}#col",
            "only to .jsonl and .parquet",
        ),
    ],
)
def test_bad_corpus_is_one_data_error(tmp_path, make, problem):
    spec = make(tmp_path)
    with pytest.raises(DataError, match=problem):
        read_corpus(spec)


def test_corpus_fingerprint_depends_on_names_and_texts():
    docs = make_docs(3)
    assert corpus_fingerprint(docs) == corpus_fingerprint(list(docs))
    renamed = [Document("other", docs[0].text), *docs[1:]]
    edited = [Document(docs[0].name, docs[0].text + "!"), *docs[1:]]
    fingerprints = {corpus_fingerprint(d) for d in (docs, renamed, edited, docs[:2])}
    assert len(fingerprints) == 4


# ----------------------------------------------------------------------------- splits


@pytest.mark.parametrize(
    ("n", "fraction", "n_val"),
    [(2, 0.1, 1), (10, 0.1, 1), (30, 0.1, 3), (30, 0.25, 8), (7, 0.99, 6)],
)
def test_split_is_deterministic_disjoint_and_in_corpus_order(n, fraction, n_val):
    docs = make_docs(n)
    train, val = split_documents(docs, fraction, seed=0)
    assert (train, val) == split_documents(docs, fraction, seed=0)
    assert len(val) == n_val
    assert not {d.name for d in train} & {d.name for d in val}
    assert sorted(train + val, key=docs.index) == docs
    assert train == sorted(train, key=docs.index)
    assert val == sorted(val, key=docs.index)


def test_split_depends_on_names_and_seed_not_on_order():
    docs = make_docs(40)
    _, val = split_documents(docs, 0.2, seed=0)
    _, val_reversed = split_documents(docs[::-1], 0.2, seed=0)
    _, val_other_seed = split_documents(docs, 0.2, seed=1)
    assert {d.name for d in val} == {d.name for d in val_reversed}
    assert {d.name for d in val} != {d.name for d in val_other_seed}


def test_single_document_has_no_validation_split():
    assert split_documents(make_docs(1), 0.5, seed=0) == (make_docs(1), [])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_val_fraction_outside_zero_one_is_a_config_error(fraction):
    with pytest.raises(ConfigError, match="val_fraction"):
        split_documents(make_docs(5), fraction, seed=0)


# ---------------------------------------------------------------------------- prepare


def test_prepare_stores_splits_tokenizer_and_meta(corpus_dir, tmp_path):
    cfg = config(corpus_dir, tmp_path, val_fraction=0.2)
    prepared = prepare(cfg, progress=False)
    assert prepared.directory.parent == tmp_path / "cache"
    meta = prepared.meta
    assert meta["corpus"] == str(corpus_dir)
    assert meta["dtype"] == "uint16"
    assert meta["tokenizer"] == "byte"
    assert meta["tokenizer_fingerprint"] == prepared.tokenizer.fingerprint()
    assert meta["vocab_size"] == 259

    docs = read_corpus(str(corpus_dir))
    train_docs, val_docs = split_documents(docs, 0.2, 0)
    splits = prepared.splits()
    eos = prepared.tokenizer.eos_id
    for name, split_docs, tokens in (
        ("train", train_docs, splits.train),
        ("val", val_docs, splits.val),
    ):
        assert tokens.dtype == np.uint16
        assert meta["splits"][name]["documents"] == len(split_docs)
        assert meta["splits"][name]["tokens"] == len(tokens)
        assert meta["splits"][name]["bytes"] == sum(len(d.text.encode("utf-8")) for d in split_docs)
        decoded = [prepared.tokenizer.decode(ids) for ids in split_on(tokens, eos)]
        assert decoded == [d.text for d in split_docs]  # eos between documents, none at the end
    assert splits.val_bytes == meta["splits"]["val"]["bytes"]
    assert load_prepared(prepared.directory).meta == meta


def test_a_smaller_vocabulary_than_asked_for_is_a_warning(corpus_dir, tmp_path, caplog):
    wanted = config(corpus_dir, tmp_path, tokenizer="char", vocab_size=1_000_000)
    with caplog.at_level(logging.WARNING, logger="llm.data"):
        prepared = prepare(wanted, progress=False)
        prepare(wanted, progress=False)  # the cached preparation says so too
    actual = prepared.tokenizer.vocab_size
    assert actual < 100
    message = (
        f"corpus {str(corpus_dir)!r}: the char tokenizer has {actual} tokens, not the 1000000 "
        "asked for (vocab_size): the corpus supports no more"
    )
    assert [r.getMessage() for r in caplog.records] == [message, message]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llm.data"):
        prepare(config(corpus_dir, tmp_path, tokenizer="char", vocab_size=actual), progress=False)
    assert caplog.records == []


def test_prepare_again_trains_and_encodes_nothing(corpus_dir, tmp_path, monkeypatch):
    cfg = config(corpus_dir, tmp_path, tokenizer="char", vocab_size=40)
    first = prepare(cfg, progress=False)
    mtime = (first.directory / "train.npy").stat().st_mtime_ns
    monkeypatch.setattr(llm.data, "train_tokenizer", forbid)
    monkeypatch.setattr(llm.data, "_encode_split", forbid)
    second = prepare(cfg, progress=False)
    assert second.directory == first.directory
    assert second.meta == first.meta
    assert (second.directory / "train.npy").stat().st_mtime_ns == mtime
    assert np.array_equal(second.splits().train, first.splits().train)


def test_cache_key_changes_with_the_inputs(corpus_dir, tmp_path):
    base = prepare(config(corpus_dir, tmp_path), progress=False).directory
    other_seed = prepare(config(corpus_dir, tmp_path, split_seed=1), progress=False).directory
    other_kind = prepare(config(corpus_dir, tmp_path, tokenizer="char"), progress=False).directory
    (corpus_dir / "doc00" / "doc000.txt").write_text("changed", encoding="utf-8")
    other_text = prepare(config(corpus_dir, tmp_path), progress=False).directory
    assert len({base, other_seed, other_kind, other_text}) == 4


def test_interrupted_prepare_leaves_nothing_behind(corpus_dir, tmp_path, monkeypatch):
    def fail(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(llm.data, "_encode_split", fail)
    with pytest.raises(KeyboardInterrupt):
        prepare(config(corpus_dir, tmp_path), progress=False)
    cache = tmp_path / "cache"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_given_tokenizer_is_used_as_is(corpus_dir, tmp_path, monkeypatch):
    tokenizer = train_tokenizer("char", ["document some text"], 100)
    monkeypatch.setattr(llm.data, "train_tokenizer", forbid)
    prepared = prepare(
        config(corpus_dir, tmp_path, tokenizer="bpe"), tokenizer=tokenizer, progress=False
    )
    assert prepared.tokenizer.fingerprint() == tokenizer.fingerprint()
    assert prepared.meta["tokenizer"] == "char"
    assert prepared.splits().train.tolist()[:8] == tokenizer.encode("document")


def test_prepare_into_an_explicit_folder(corpus_dir, tmp_path):
    out = tmp_path / "prepared"
    prepared = prepare(config(corpus_dir, tmp_path), out=out, progress=False)
    assert prepared.directory == out
    assert sorted(p.name for p in out.iterdir()) == [
        "meta.json",
        "tokenizer",
        "train.npy",
        "val.npy",
    ]
    assert not (tmp_path / "cache").exists()
    assert prepare(config(corpus_dir, tmp_path), out=out, progress=False).meta == prepared.meta


def test_prepare_never_overwrites_a_folder_that_is_not_a_dataset(corpus_dir, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("do not delete")
    with pytest.raises(DataError, match="not a prepared dataset"):
        prepare(config(corpus_dir, tmp_path), out=out, progress=False)
    assert (out / "thesis.txt").read_text() == "do not delete"


def test_parallel_encoding_matches_a_single_process(corpus_dir, tmp_path, monkeypatch):
    cfg = config(corpus_dir, tmp_path, tokenizer="char", vocab_size=40)
    single = prepare(cfg, out=tmp_path / "single", workers=1, progress=False)
    monkeypatch.setattr(llm.data, "PARALLEL_MIN_CHARS", 0)
    monkeypatch.setattr(llm.data, "CHUNK_CHARS", 100)
    parallel = prepare(
        cfg, tokenizer=single.tokenizer, out=tmp_path / "parallel", workers=2, progress=False
    )
    assert np.array_equal(parallel.splits().train, single.splits().train)
    assert np.array_equal(parallel.splits().val, single.splits().val)


def test_large_vocabulary_is_stored_as_uint32(tmp_path):
    alphabet = "".join(chr(0x10000 + i) for i in range(66_000))
    path = tmp_path / "wide.jsonl"
    path.write_text(f'{{"text": "{alphabet}"}}\n{{"text": "{alphabet[:10]}"}}\n', encoding="utf-8")
    prepared = prepare(config(path, tmp_path, tokenizer="char", vocab_size=70_000), progress=False)
    assert prepared.meta["dtype"] == "uint32"
    assert prepared.tokenizer.vocab_size == 66_004
    assert prepared.splits().train.dtype == np.uint32
    assert prepared.splits().train.max() > 65_535


def test_a_corpus_too_short_to_split_is_a_data_error(tmp_path):
    path = tmp_path / "single.txt"
    path.write_text("just one document")
    with pytest.raises(DataError, match="1 document of 17 characters, too short to hold out"):
        prepare(config(path, tmp_path), progress=False)


WORDS = ["the", "model", "reads", "tokens", "and", "predicts", "the", "next", "one"]


def long_text(lines: int) -> str:
    return "".join(f"line {i}: {' '.join(WORDS[i % 7 :])}\n" for i in range(lines))


def test_one_text_file_is_cut_into_pieces_at_line_breaks_and_split(tmp_path):
    path = tmp_path / "input.txt"
    text = long_text(2000)
    path.write_text(text, encoding="utf-8")
    prepared = prepare(config(path, tmp_path, tokenizer="char", vocab_size=64), progress=False)
    splits = prepared.meta["splits"]
    pieces = splits["train"]["documents"] + splits["val"]["documents"]
    assert pieces >= 20
    assert splits["val"]["documents"] == math.ceil(0.1 * pieces)
    assert splits["train"]["bytes"] + splits["val"]["bytes"] == len(text.encode())
    assert 0.05 < splits["val"]["bytes"] / len(text.encode()) < 0.15
    docs = chunk_documents(read_corpus(str(path)), 65_536)
    assert "".join(doc.text for doc in docs) == text
    assert all(doc.text.endswith("\n") for doc in docs)
    assert [doc.name for doc in docs[:2]] == ["input.txt#1", "input.txt#2"]
    # The same split on another run (and machine): it depends only on the text.
    again = prepare(config(path, tmp_path / "other", tokenizer="char", vocab_size=64))
    assert np.array_equal(again.splits().val, prepared.splits().val)


def test_only_documents_longer_than_the_chunk_size_are_cut():
    short, long = Document("a", "x\n" * 10), Document("b", "y" * 2500 + "\n" + "z" * 10)
    docs = chunk_documents([short, long], 1000)
    assert docs[0] is short
    assert [len(doc.text) for doc in docs[1:]] == [1000, 1000, 511]  # no line break to cut at
    assert "".join(doc.text for doc in docs[1:]) == long.text
    assert chunk_documents([short, long], 100_000) == [short, long]
    with pytest.raises(ConfigError, match="chunk_chars"):
        chunk_documents([short], 0)


def test_prepare_python_docs_with_bpe(tmp_path):
    cfg = DataConfig(
        corpus="builtin:python-docs", tokenizer="bpe", vocab_size=512, cache_dir=str(tmp_path)
    )
    prepared = prepare(cfg, progress=False)
    assert prepared.meta["vocab_size"] == 512
    splits = prepared.splits()
    # subword pieces: clearly fewer tokens than bytes
    assert len(splits.val) < splits.val_bytes / 2
    _, val_docs = split_documents(
        read_corpus("builtin:python-docs"), cfg.val_fraction, cfg.split_seed
    )
    decoded = [
        prepared.tokenizer.decode(ids) for ids in split_on(splits.val, prepared.tokenizer.eos_id)
    ]
    assert decoded == [d.text for d in val_docs]


@pytest.mark.parametrize("damage", ["meta", "json", "npy", "tokenizer"])
def test_damaged_prepared_data_is_reported(corpus_dir, tmp_path, damage):
    directory = prepare(config(corpus_dir, tmp_path), progress=False).directory
    if damage == "meta":
        (directory / "meta.json").unlink()
    elif damage == "json":
        (directory / "meta.json").write_text("{")
    elif damage == "npy":
        (directory / "val.npy").write_bytes((directory / "val.npy").read_bytes()[:-10])
    else:
        (directory / "tokenizer" / "tokenizer.json").write_text(
            '{"kind": "char", "alphabet": "xyz"}'
        )
    with pytest.raises(Exception) as info:
        load_prepared(directory)
    assert isinstance(info.value, llm.errors.UserError)
    assert str(directory) in str(info.value)


def test_damaged_cache_is_rebuilt(corpus_dir, tmp_path):
    cfg = config(corpus_dir, tmp_path)
    first = prepare(cfg, progress=False)
    (first.directory / "train.npy").write_bytes(b"")
    again = prepare(cfg, progress=False)
    assert again.directory == first.directory
    assert len(again.splits().train) == first.meta["splits"]["train"]["tokens"]


# ---------------------------------------------------------------------------- batches


def test_train_batch_windows_are_contiguous_and_shifted():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = train_batch(tokens, batch_size=8, seq_len=16, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)
    assert int(y.max()) <= 999


def test_train_batch_reproduces_after_restoring_the_generator_state():
    tokens = np.random.default_rng(0).integers(0, 500, 5000).astype(np.uint16)
    generator = torch.Generator().manual_seed(3)
    train_batch(tokens, 4, 32, generator)
    state = generator.get_state()
    stream = [train_batch(tokens, 4, 32, generator) for _ in range(3)]
    generator.set_state(state)
    replay = [train_batch(tokens, 4, 32, generator) for _ in range(3)]
    for (x1, y1), (x2, y2) in zip(stream, replay, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(stream[0][0], stream[1][0])


def test_train_batch_reaches_the_last_window():
    tokens = np.arange(10, dtype=np.uint16)
    generator = torch.Generator().manual_seed(0)
    starts = {int(train_batch(tokens, 64, 8, generator)[0][i, 0]) for i in range(64)}
    assert starts == {0, 1}


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 200), seq_len=st.integers(1, 20), batch_size=st.integers(1, 6))
def test_eval_batches_predict_every_token_but_the_first_once(n, seq_len, batch_size):
    tokens = np.arange(n, dtype=np.uint32)
    batches = list(eval_batches(tokens, seq_len, batch_size))
    predicted = torch.cat([y.reshape(-1) for _, y in batches]) if batches else torch.zeros(0)
    assert predicted.tolist() == list(range(1, n))
    for x, y in batches:
        assert x.dtype == torch.int64
        assert torch.equal(y, x + 1)
        assert x.shape[0] <= batch_size and x.shape[1] <= seq_len
    full = max(n - 1, 0) // seq_len
    assert len(batches) == math.ceil(full / batch_size) + (max(n - 1, 0) % seq_len > 0)


def test_require_windows():
    require_windows(np.zeros(17), 16, "validation split")
    with pytest.raises(
        DataError, match=r"validation split: 16 tokens, fewer than one context window of seq_len\+1"
    ):
        require_windows(np.zeros(16), 16, "validation split")
    with pytest.raises(DataError, match="training split: 5 tokens"):
        train_batch(np.zeros(5, dtype=np.uint16), 2, 8, torch.Generator())


def test_meta_counts_the_tokens_a_tokenizer_cannot_represent(tmp_path, caplog):
    path = tmp_path / "mixed.jsonl"
    docs = [f"doc {i}: plain words, then rare ones: {chr(0x3B1 + i)}" for i in range(12)]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        small = prepare(config(path, tmp_path, tokenizer="char", vocab_size=24), progress=False)
    unknown = small.meta["splits"]["train"]["unknown"] + small.meta["splits"]["val"]["unknown"]
    assert unknown > 0 and "cannot represent" in caplog.text
    whole = prepare(config(path, tmp_path, tokenizer="wordpiece", vocab_size=600), progress=False)
    assert whole.meta["tokenizer"] == "wordpiece"
    assert whole.meta["splits"]["train"]["unknown"] == whole.meta["splits"]["val"]["unknown"] == 0
