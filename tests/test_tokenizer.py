import json
import os
import subprocess
import sys

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from llm.errors import CheckpointError, ConfigError
from llm.tokenizer import (
    SP_MIN_VOCAB,
    CharTokenizer,
    Tokenizer,
    WordPieceTokenizer,
    load_tokenizer,
    train_tokenizer,
)

# A few KB of prose and code, with tabs, indentation, blank lines and some non-ASCII.
PROSE = (
    "The quick brown fox jumps over the lazy dog. A tokenizer maps text to ids and back; "
    "the round trip must give back exactly the text it was given, spaces and all.\n\n"
    "Naïve café déjà vu — 東京 and 😀 appear now and then.\n"
)
CODE = (
    "def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n"
    "        self.x = x\n        self.y = y\n\n\tif x:\n\t\tpass\n"
)
CORPUS = [PROSE * 3, CODE * 4, (PROSE + CODE) * 2, "numbers 0123456789 and symbols {}[]()<>=+-*/"]

SPECIAL_TEXT = st.text(alphabet=st.sampled_from(list(" \t\n\r\u2581ab😀東\x00")))


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Tokenizer]:
    kinds = ("bpe", "unigram", "byte", "char")
    return {
        **{kind: train_tokenizer(kind, CORPUS, 400) for kind in kinds},
        "wordpiece": train_tokenizer("wordpiece", CORPUS, 600),
    }


@pytest.mark.parametrize("kind", ["bpe", "unigram", "wordpiece", "byte"])
@settings(max_examples=150, deadline=None)
@given(text=st.text() | SPECIAL_TEXT)
@example(text="\u2581")
@example(text=" \u2581 a\u2581\u2581b ")
@example(text="  leading and trailing  ")
@example(text="\n\n\t\tindented\r\n")
def test_round_trip_of_any_text(tokenizers, kind, text):
    tokenizer = tokenizers[kind]
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_char_round_trip_of_text_from_the_corpus_alphabet(tokenizers, data):
    tokenizer = tokenizers["char"]
    text = data.draw(st.text(alphabet=st.sampled_from(tokenizer.alphabet)))
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_char_vocabulary_is_most_frequent_first_and_capped():
    tokenizer = train_tokenizer("char", ["aaab", "bc", "cdd"], 4 + 3)
    # counts: a 3, b 2, c 2, d 2 -> ties broken by the character
    assert tokenizer.alphabet == "abc"
    assert tokenizer.vocab_size == 7


def test_unknown_character_maps_to_the_unknown_id():
    tokenizer = train_tokenizer("char", ["abc"], 100)
    ids = tokenizer.encode("aZc")
    assert ids[1] == CharTokenizer.unk_id
    assert ids[0] != ids[1] != ids[2]
    assert tokenizer.decode(ids) == "a\ufffdc"


@pytest.mark.parametrize("kind", ["bpe", "unigram", "wordpiece", "byte", "char"])
def test_decode_skips_special_ids(tokenizers, kind):
    tokenizer = tokenizers[kind]
    ids = tokenizer.encode("def add")
    wrapped = [tokenizer.bos_id, *ids, tokenizer.pad_id, tokenizer.eos_id]
    assert len({tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id}) == 3
    assert tokenizer.decode(wrapped) == "def add"


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_a_sentencepiece_model_trained_or_grown_has_the_special_ids_its_class_names(
    tokenizers, kind
):
    for tokenizer in (tokenizers[kind], tokenizers[kind].grow([CODE], 8)):
        model = tokenizer._sp
        ids = (model.unk_id(), model.bos_id(), model.eos_id(), model.pad_id())
        assert ids == (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)


def test_the_wordpiece_special_ids_are_the_pieces_unk_bos_eos_and_pad(tokenizers):
    tokenizer = tokenizers["wordpiece"]
    pieces = [
        tokenizer._pieces[i]
        for i in (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
    ]
    assert pieces == ["[UNK]", "<s>", "</s>", "<pad>"]


@pytest.mark.parametrize("kind", ["bpe", "unigram", "wordpiece", "byte", "char"])
def test_decode_rejects_ids_outside_the_vocabulary(tokenizers, kind):
    tokenizer = tokenizers[kind]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([tokenizer.vocab_size])


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_small_corpus_reports_its_real_vocabulary_size(kind):
    tokenizer = train_tokenizer(kind, ["tiny tiny corpus\n"], 5000)
    assert SP_MIN_VOCAB <= tokenizer.vocab_size < 5000
    # the largest id is a real piece, the next one is not
    assert tokenizer.decode([tokenizer.vocab_size - 1]) is not None
    with pytest.raises(ValueError):
        tokenizer.decode([tokenizer.vocab_size])


def test_sentencepiece_learns_pieces_that_compress_the_corpus(tokenizers):
    text = CORPUS[2]
    for kind in ("bpe", "unigram", "wordpiece"):
        assert len(tokenizers[kind].encode(text)) < len(text.encode("utf-8")) * 2 / 3


def test_encode_batch_matches_encode(tokenizers):
    texts = ["a\u2581b", "", "def f():\n\treturn 1\n", "東京 😀"]
    for tokenizer in tokenizers.values():
        assert tokenizer.encode_batch(texts) == [tokenizer.encode(t) for t in texts]


@pytest.mark.parametrize("kind", ["bpe", "unigram", "wordpiece", "byte", "char"])
def test_save_and_load_give_identical_encodings_and_fingerprint(tokenizers, kind, tmp_path):
    tokenizer = tokenizers[kind]
    tokenizer.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert type(loaded) is type(tokenizer)
    assert loaded.kind == kind
    assert loaded.vocab_size == tokenizer.vocab_size
    assert loaded.fingerprint() == tokenizer.fingerprint()
    for text in [*CORPUS, "unseen: Ωμέγα 🚀\t\n"]:
        assert loaded.encode(text) == tokenizer.encode(text)
    manifest = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert manifest["kind"] == kind
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]  # no temporary folders left


@pytest.mark.parametrize("kind", ["bpe", "unigram", "wordpiece", "char"])
def test_training_is_deterministic(tokenizers, kind):
    again = train_tokenizer(kind, CORPUS, 600 if kind == "wordpiece" else 400)
    assert again.fingerprint() == tokenizers[kind].fingerprint()


def test_fingerprint_is_the_same_in_another_process(tokenizers):
    script = (
        "import json, sys\n"
        "from llm.tokenizer import train_tokenizer\n"
        "corpus = json.load(sys.stdin)\n"
        "print(train_tokenizer('bpe', corpus, 400).fingerprint())\n"
        "print(train_tokenizer('char', corpus, 400).fingerprint())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(CORPUS),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    ).stdout.split()
    assert out == [tokenizers["bpe"].fingerprint(), tokenizers["char"].fingerprint()]


def test_fingerprint_tells_tokenizers_apart(tokenizers):
    fingerprints = {t.fingerprint() for t in tokenizers.values()}
    assert len(fingerprints) == len(tokenizers)
    assert len(next(iter(fingerprints))) == 64


@pytest.mark.parametrize(
    ("kind", "vocab_size", "minimum"),
    [
        ("bpe", 100, SP_MIN_VOCAB),
        ("unigram", 262, SP_MIN_VOCAB),
        ("byte", 258, 259),
        ("char", 4, 5),
        ("wordpiece", 515, 516),
    ],
)
def test_too_small_vocabulary_names_the_minimum(kind, vocab_size, minimum):
    with pytest.raises(ConfigError, match=f"minimum is {minimum}"):
        train_tokenizer(kind, CORPUS, vocab_size)


def test_corpus_with_many_characters_needs_a_larger_vocabulary():
    # 200 distinct characters each seen many times: each needs its own piece.
    text = "".join(chr(0x4E00 + i) for i in range(200)) * 20
    with pytest.raises(ConfigError, match=r"minimum is \d+") as info:
        train_tokenizer("bpe", [text], SP_MIN_VOCAB)
    minimum = int(info.value.args[0].split("minimum is ")[1].split()[0])
    assert minimum > SP_MIN_VOCAB + 150
    assert train_tokenizer("bpe", [text], minimum).vocab_size >= minimum


def test_unknown_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown tokenizer kind 'bbpe'"):
        train_tokenizer("bbpe", CORPUS, 1000)


def test_wordpiece_has_every_byte_and_fills_the_vocabulary(tokenizers):
    tokenizer = tokenizers["wordpiece"]
    assert tokenizer.vocab_size == 600
    unseen = "Ωμέγα 🚀 ᚠᛇᚻ\x7f"  # characters absent from the training text
    assert tokenizer.unk_id not in tokenizer.encode(unseen)
    assert tokenizer.decode(tokenizer.encode(unseen)) == unseen
    # Only a word longer than WP_MAX_WORD_CHARS is unknown, and it says so on decoding.
    long = "ab " + "=" * 1500 + " cd"
    ids = tokenizer.encode(long)
    assert ids.count(tokenizer.unk_id) == 1
    assert tokenizer.decode(ids) == "ab\ufffd cd"  # the word " ===…" with its space


def test_wordpiece_keeps_markdown_headings_it_learned_as_pieces():
    markdown = ["## Heading\nsome text here\n### Sub\n" * 50, "plain words and more " * 100]
    tokenizer = train_tokenizer("wordpiece", markdown, 700)
    for text in ("## Heading", "### Sub", "##", "a ## b", "\u21aax \u21aa"):
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_a_wordpiece_saved_with_berts_mark_decodes_and_grows_with_it(tokenizers, tmp_path):
    model = json.loads(tokenizers["wordpiece"].model_json)
    mark = model["model"]["continuing_subword_prefix"]
    vocab = model["model"]["vocab"]
    model["model"]["vocab"] = {
        ("##" + p.removeprefix(mark) if p.startswith(mark) else p): i for p, i in vocab.items()
    }
    model["model"]["continuing_subword_prefix"] = "##"
    old = WordPieceTokenizer(json.dumps(model))  # as an older version trained it
    text = "the model reads tokens"
    assert old.encode(text) == tokenizers["wordpiece"].encode(text)
    assert old.decode(old.encode(text)) == text
    grown = old.grow([CORPUS[0] + " quokka quokkas"] * 20, 8)
    assert grown.continuation == "##" and grown.decode(grown.encode(text)) == text
    assert not any(p.startswith(mark) for p in grown._pieces)


def test_missing_directory_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        load_tokenizer(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "unreadable tokenizer manifest"),
        ('{"kind": "bbpe"}', "unknown tokenizer kind 'bbpe'"),
        ('{"kind": "wordpiece"}', "wordpiece.json: unreadable WordPiece model"),
        ("[1, 2]", "unknown tokenizer kind None"),
        ('{"kind": "char", "alphabet": "aab"}', "distinct characters"),
    ],
)
def test_corrupt_manifest_is_a_checkpoint_error(tmp_path, content, problem):
    (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(CheckpointError, match=problem) as info:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("damage", ["delete", "garble"])
@pytest.mark.parametrize(
    ("kind", "file"), [("bpe", "tokenizer.model"), ("wordpiece", "wordpiece.json")]
)
def test_missing_or_corrupt_model_file_is_a_checkpoint_error(
    tokenizers, tmp_path, damage, kind, file
):
    tokenizers[kind].save(tmp_path)
    model = tmp_path / file
    if damage == "delete":
        model.unlink()
    else:
        model.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match=file.replace(".", r"\.")):
        load_tokenizer(tmp_path)
