"""Tokenizers: text to token ids and back, for every kind the configs name.

`bpe` and `unigram` are SentencePiece models trained in-process. They are set up so
that `decode(encode(text)) == text` for any Unicode text: no normalization, no dummy
prefix, whitespace kept as written, and byte fallback so no character is ever unknown.
`wordpiece` is a WordPiece model of Hugging Face's `tokenizers` over the 256 UTF-8 byte
values (GPT-2's byte-level alphabet), every byte both as a word start and as a
continuation, so no word is unknown unless it is longer than WP_MAX_WORD_CHARS; it too
decodes back to the exact text. `char` maps the corpus's most frequent characters to ids
(the rest to an unknown id) and `byte` uses the 256 UTF-8 byte values.

A tokenizer is saved as a folder holding a JSON manifest `tokenizer.json` that names
its kind, plus the SentencePiece model bytes where there is one; its fingerprint hashes
exactly those files, so two tokenizers with the same fingerprint encode alike.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from llm.atomic import atomic_dir
from llm.errors import CheckpointError, ConfigError, DataError

log = logging.getLogger(__name__)

MANIFEST = "tokenizer.json"
FORMAT = 1
UNKNOWN_TEXT = "\ufffd"  # what an unknown id decodes to

# SentencePiece writes spaces as U+2581; a literal U+2581 in the input is spelled
# in bytes instead so that decoding can tell the two apart.
SPACE_SYMBOL = "\u2581"
# Pieces that are always single tokens: cheap newlines and tabs for code.
SP_USER_SYMBOLS = ("\n", "\t")
SP_SPECIALS = 4  # unk, bos, eos, pad
SP_MIN_VOCAB = 256 + SP_SPECIALS + len(SP_USER_SYMBOLS) + 1  # + the space piece
# Training reads at most this many characters, sampled evenly from the corpus: enough
# for a few thousand pieces, and it keeps unigram training to seconds.
SP_TRAIN_CHARS = 2_000_000
SP_SENTENCE_CHARS = 1024  # longer lines are cut; SentencePiece drops sentences > 4192 bytes
# Unigram training sums over threads; a fixed count gives the same model on any machine.
SP_TRAIN_THREADS = 4

CHAR_SPECIALS = 4  # pad, bos, eos, unk
WP_SPECIALS = ("[UNK]", "<s>", "</s>", "<pad>")  # ids 0-3
# The mark of a piece that continues a word: a character outside the byte-level alphabet,
# so no piece that starts a word can begin with it. With BERT's "##", a corpus of markdown
# learns "##" as a word start, which decoding took for a continuation and dropped.
WP_CONTINUATION = "\u21aa"
WP_MIN_VOCAB = len(WP_SPECIALS) + 2 * 256  # every byte as a start and as a continuation
WP_MAX_WORD_CHARS = 1000  # longer words (runs of one symbol) become the unknown id
BYTE_VOCAB = 256 + 3  # bytes, then pad, bos, eos
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class Tokenizer(ABC):
    """Text to token ids and back; special ids decode to nothing.

    A kind's special ids are fixed: each subclass sets them as class attributes."""

    kind: str
    pad_id: int
    bos_id: int
    eos_id: int
    unk_id: int | None = None  # the id of text the tokenizer cannot represent, if it has one

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    @abstractmethod
    def _manifest(self) -> dict[str, Any]:
        """The kind-specific fields of tokenizer.json."""

    def _extra_files(self) -> dict[str, bytes]:
        return {}

    def grow(self, texts: Sequence[str], n: int) -> Tokenizer:
        """This tokenizer with up to `n` tokens learned from `texts` appended after its
        own: every existing id keeps its piece, so a model's rows for them stay valid."""
        raise ConfigError(f"a {self.kind} tokenizer's vocabulary is fixed: it cannot grow")

    def files(self) -> dict[str, bytes]:
        """The saved form: file name to content."""
        manifest = {"format": FORMAT, "kind": self.kind, "vocab_size": self.vocab_size}
        manifest.update(self._manifest())
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        return {MANIFEST: text.encode("utf-8"), **self._extra_files()}

    def save(self, directory: str | Path) -> None:
        with atomic_dir(directory) as tmp:
            for name, content in self.files().items():
                (tmp / name).write_bytes(content)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name, content in sorted(self.files().items()):
            for part in (name.encode("utf-8"), content):
                digest.update(len(part).to_bytes(8, "little"))
                digest.update(part)
        return digest.hexdigest()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
    """Ids 0-255 are the UTF-8 bytes; 256, 257 and 258 are pad, bos and eos."""

    kind = "byte"
    pad_id, bos_id, eos_id = 256, 257, 258

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        _check_ids(ids, BYTE_VOCAB)
        # Generated ids need not form valid UTF-8.
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def _manifest(self) -> dict[str, Any]:
        return {}


class CharTokenizer(Tokenizer):
    """Ids 0-3 are pad, bos, eos and unknown; then the alphabet, most frequent first."""

    kind = "char"
    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __init__(self, alphabet: str) -> None:
        self.alphabet = alphabet
        self._ids = {c: i + CHAR_SPECIALS for i, c in enumerate(alphabet)}

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> CharTokenizer:
        if vocab_size < CHAR_SPECIALS + 1:
            raise ConfigError(
                f"vocab_size {vocab_size} is too small for a char tokenizer: the minimum is "
                f"{CHAR_SPECIALS + 1} ({CHAR_SPECIALS} special ids and one character)"
            )
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text)
        ranked = sorted(counts, key=lambda c: (-counts[c], c))
        return cls("".join(ranked[: vocab_size - CHAR_SPECIALS]))

    @property
    def vocab_size(self) -> int:
        return CHAR_SPECIALS + len(self.alphabet)

    def encode(self, text: str) -> list[int]:
        ids = self._ids
        return [ids.get(c, self.unk_id) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        _check_ids(ids, self.vocab_size)
        alphabet = self.alphabet
        return "".join(
            alphabet[i - CHAR_SPECIALS] if i >= CHAR_SPECIALS else UNKNOWN_TEXT
            for i in ids
            if i == self.unk_id or i >= CHAR_SPECIALS
        )

    def _manifest(self) -> dict[str, Any]:
        return {"alphabet": self.alphabet}

    def grow(self, texts: Sequence[str], n: int) -> CharTokenizer:
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text)
        known = set(self.alphabet)
        new = sorted((c for c in counts if c not in known), key=lambda c: (-counts[c], c))
        return CharTokenizer(self.alphabet + "".join(new[:n]))


class WordPieceTokenizer(Tokenizer):
    """A byte-level WordPiece model: ids 0-3 are unknown, bos, eos and pad, then the 256
    bytes as continuations (WP_CONTINUATION), then as word starts, then the learned
    pieces."""

    kind = "wordpiece"
    model_file = "wordpiece.json"
    unk_id, bos_id, eos_id, pad_id = 0, 1, 2, 3  # the order of WP_SPECIALS

    def __init__(self, model_json: str) -> None:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders

        self.model_json = model_json
        self._hf = HFTokenizer.from_str(model_json)
        self._bytes = decoders.ByteLevel()
        self._pieces = [self._hf.id_to_token(i) for i in range(self._hf.get_vocab_size())]
        # A tokenizer saved by an older version keeps the "##" it was trained with.
        self.continuation = json.loads(model_json)["model"]["continuing_subword_prefix"]

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> WordPieceTokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models, pre_tokenizers, trainers

        if vocab_size < WP_MIN_VOCAB:
            raise ConfigError(
                f"vocab_size {vocab_size} is too small for a wordpiece tokenizer: the minimum "
                f"is {WP_MIN_VOCAB} (every byte as a word start and as a continuation, and "
                f"{len(WP_SPECIALS)} special pieces)"
            )
        sentences = _training_sentences(texts)
        if not sentences:
            raise DataError("cannot train a wordpiece tokenizer: the training text is empty")
        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
        # Every byte as a continuation piece, given up front in a fixed order: the trainer
        # would otherwise create the ones it meets in hash-map order, which changes their
        # ids and so the merges that tie-break on them from run to run (tokenizers #1794).
        continuations = [WP_CONTINUATION + c for c in alphabet]
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            special_tokens=[*WP_SPECIALS, *continuations],
            initial_alphabet=alphabet,
            continuing_subword_prefix=WP_CONTINUATION,
            show_progress=False,
        )
        learner = HFTokenizer(models.WordPiece(unk_token=WP_SPECIALS[0]))
        learner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        learner.train_from_iterator(sentences, trainer)
        # A fresh tokenizer with the learned vocabulary: in the learner the continuation
        # pieces are special tokens, which text would match literally.
        model = HFTokenizer(
            models.WordPiece(
                learner.get_vocab(),
                unk_token=WP_SPECIALS[0],
                continuing_subword_prefix=WP_CONTINUATION,
                max_input_chars_per_word=WP_MAX_WORD_CHARS,
            )
        )
        model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        return cls(model.to_str())

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encodings = self._hf.encode_batch(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        _check_ids(ids, self.vocab_size)
        text, pieces = [], []
        for i in ids:
            if i == self.unk_id:
                text.append(self._bytes.decode(pieces) + UNKNOWN_TEXT)
                pieces = []
            elif i >= len(WP_SPECIALS):
                piece = self._pieces[i]
                pieces.append(piece.removeprefix(self.continuation))
        return "".join(text) + self._bytes.decode(pieces)

    def _manifest(self) -> dict[str, Any]:
        return {"model_file": self.model_file}

    def _extra_files(self) -> dict[str, bytes]:
        return {self.model_file: self.model_json.encode("utf-8")}

    def grow(self, texts: Sequence[str], n: int) -> WordPieceTokenizer:
        # WordPiece matches the longest piece in the vocabulary, so an appended piece is
        # used wherever it fits; the learned model lists its pieces in the order learned.
        learned = WordPieceTokenizer.train(texts, self.vocab_size + n)
        # Learned pieces spelled with this tokenizer's mark (an older one's is "##").
        spelled = [
            self.continuation + p.removeprefix(WP_CONTINUATION)
            if p.startswith(WP_CONTINUATION)
            else p
            for p in learned._pieces
        ]
        known = set(self._pieces)
        model = json.loads(self.model_json)
        vocab = model["model"]["vocab"]
        for piece in [p for p in spelled if p not in known][:n]:
            vocab[piece] = len(vocab)
        return WordPieceTokenizer(json.dumps(model, ensure_ascii=False))


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model: ids 0-3 are unknown, bos, eos and pad, then newline and
    tab, then the 256 byte-fallback pieces, then the learned pieces."""

    model_file = "tokenizer.model"
    # Given to SentencePiece's trainer, so every model of this class has them. unk: byte
    # fallback never produces it.
    unk_id, bos_id, eos_id, pad_id = 0, 1, 2, 3

    def __init__(self, kind: str, model_proto: bytes) -> None:
        self.kind = kind
        self.model_proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self._space_symbol_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in b"\xe2\x96\x81"]

    @classmethod
    def train(cls, kind: str, texts: Iterable[str], vocab_size: int) -> SentencePieceTokenizer:
        if vocab_size < SP_MIN_VOCAB:
            raise ConfigError(
                f"vocab_size {vocab_size} is too small for a {kind} tokenizer: the minimum is "
                f"{SP_MIN_VOCAB} (256 byte pieces, {SP_MIN_VOCAB - 256} special pieces) plus "
                "the characters of the corpus"
            )
        sentences = _training_sentences(texts)
        if not sentences:
            raise DataError(f"cannot train a {kind} tokenizer: the training text is empty")
        model = io.BytesIO()
        try:
            with open(os.devnull, "w") as quiet:
                spm.SentencePieceTrainer.train(
                    sentence_iterator=iter(sentences),
                    model_writer=model,
                    logstream=quiet,
                    model_type=kind,
                    vocab_size=vocab_size,
                    hard_vocab_limit=False,  # a small corpus may yield fewer pieces
                    byte_fallback=True,
                    normalization_rule_name="identity",
                    add_dummy_prefix=False,
                    remove_extra_whitespaces=False,
                    allow_whitespace_only_pieces=True,  # runs of indentation become one piece
                    user_defined_symbols=list(SP_USER_SYMBOLS),
                    required_chars=SPACE_SYMBOL,
                    unk_id=cls.unk_id,
                    bos_id=cls.bos_id,
                    eos_id=cls.eos_id,
                    pad_id=cls.pad_id,
                    unk_surface=UNKNOWN_TEXT,
                    shuffle_input_sentence=False,  # the sample is taken above, deterministically
                    input_sentence_size=0,
                    num_threads=SP_TRAIN_THREADS,
                )
        except RuntimeError as err:
            raise _training_error(kind, vocab_size, err) from None
        return cls(kind, model.getvalue())

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = list(texts)
        out = self._sp.encode(texts)
        for i, text in enumerate(texts):
            if SPACE_SYMBOL in text:
                parts = self._sp.encode(text.split(SPACE_SYMBOL))
                ids = parts[0]
                for part in parts[1:]:
                    ids += self._space_symbol_ids + part
                out[i] = ids
        return out

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        _check_ids(ids, self.vocab_size)
        return self._sp.decode(ids)

    def _manifest(self) -> dict[str, Any]:
        return {"model_file": self.model_file}

    def _extra_files(self) -> dict[str, bytes]:
        return {self.model_file: self.model_proto}

    def grow(self, texts: Sequence[str], n: int) -> SentencePieceTokenizer:
        """New pieces are those of a model of the same kind trained on `texts`, best
        first. A BPE piece scores below every existing one (its merge comes after theirs)
        and a unigram piece keeps its learned log-probability. A piece the grown model
        does not produce for its own text (BPE cannot reach it by merging pieces it has)
        is left out."""
        from sentencepiece import sentencepiece_model_pb2 as pb

        learned = pb.ModelProto.FromString(
            SentencePieceTokenizer.train(self.kind, texts, self.vocab_size + n).model_proto
        )
        proto = pb.ModelProto.FromString(self.model_proto)
        known = {p.piece for p in proto.pieces}
        normal = pb.ModelProto.SentencePiece.NORMAL
        candidates = [p for p in learned.pieces if p.type == normal and p.piece not in known]
        candidates.sort(key=lambda p: -p.score)  # stable: BPE ties keep the merge order
        floor = min(p.score for p in proto.pieces if p.type == normal)
        for rank, piece in enumerate(candidates[:n]):
            score = floor - 1 - rank if self.kind == "bpe" else piece.score
            proto.pieces.add(piece=piece.piece, score=score, type=normal)
        old_size = self.vocab_size
        while True:
            grown = SentencePieceTokenizer(self.kind, proto.SerializeToString())
            unreachable = [
                i
                for i in range(old_size, grown.vocab_size)
                if grown.encode(proto.pieces[i].piece.replace(SPACE_SYMBOL, " ")) != [i]
            ]
            if not unreachable:
                return grown
            for i in reversed(unreachable):
                del proto.pieces[i]


def replace_undecodable(text: str, where: str) -> str:
    """`text` with each lone surrogate replaced by U+FFFD, and a warning naming `where`
    when there was any. Python hands on the bytes of argv and stdin that are not UTF-8 as
    lone surrogates (surrogateescape), which no tokenizer can encode."""
    text, replaced = _SURROGATE.subn(UNKNOWN_TEXT, text)
    if replaced:
        unit = "byte" if replaced == 1 else "bytes"
        log.warning("%s: replaced %d undecodable %s with U+FFFD", where, replaced, unit)
    return text


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a tokenizer of `kind` on `texts`; its real `vocab_size` may be smaller."""
    if kind in ("bpe", "unigram"):
        return SentencePieceTokenizer.train(kind, texts, vocab_size)
    if kind == "char":
        return CharTokenizer.train(texts, vocab_size)
    if kind == "wordpiece":
        return WordPieceTokenizer.train(texts, vocab_size)
    if kind == "byte":
        if vocab_size < BYTE_VOCAB:
            raise ConfigError(
                f"vocab_size {vocab_size} is too small for a byte tokenizer: the minimum is "
                f"{BYTE_VOCAB} (256 bytes, pad, bos, eos)"
            )
        return ByteTokenizer()
    raise ConfigError(
        f"unknown tokenizer kind {kind!r}: expected bpe, unigram, wordpiece, char or byte"
    )


def load_tokenizer(directory: str | Path) -> Tokenizer:
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a saved tokenizer (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable tokenizer manifest: {err}") from None
    kind = manifest.get("kind") if isinstance(manifest, dict) else None
    if kind in ("bpe", "unigram"):
        model_path = directory / SentencePieceTokenizer.model_file
        try:
            return SentencePieceTokenizer(kind, model_path.read_bytes())
        except (OSError, RuntimeError) as err:
            raise CheckpointError(f"{model_path}: unreadable SentencePiece model: {err}") from None
    if kind == "wordpiece":
        model_path = directory / WordPieceTokenizer.model_file
        try:
            return WordPieceTokenizer(model_path.read_text(encoding="utf-8"))
        except Exception as err:  # tokenizers raises plain Exceptions for a bad file
            raise CheckpointError(f"{model_path}: unreadable WordPiece model: {err}") from None
    if kind == "char":
        alphabet = manifest.get("alphabet")
        if not isinstance(alphabet, str) or len(set(alphabet)) != len(alphabet):
            raise CheckpointError(f"{path}: 'alphabet' must be a string of distinct characters")
        return CharTokenizer(alphabet)
    if kind == "byte":
        return ByteTokenizer()
    raise CheckpointError(f"{path}: unknown tokenizer kind {kind!r}")


def _check_ids(ids: list[int], vocab_size: int) -> None:
    for i in ids:
        if not 0 <= i < vocab_size:
            raise ValueError(f"token id {i} is outside the vocabulary (0..{vocab_size - 1})")


def _training_sentences(texts: Iterable[str]) -> list[str]:
    """Lines of the texts, cut to a length SentencePiece accepts, sampled evenly down to
    SP_TRAIN_CHARS characters. Newlines are dropped: they are pieces of their own anyway."""
    sentences = [
        line[start : start + SP_SENTENCE_CHARS]
        for text in texts
        for line in text.split("\n")
        for start in range(0, len(line), SP_SENTENCE_CHARS)
    ]
    total = sum(map(len, sentences))
    step = -(-total // SP_TRAIN_CHARS)  # ceil
    return sentences[::step] if step > 1 else sentences


def _training_error(kind: str, vocab_size: int, err: RuntimeError) -> Exception:
    # SentencePiece needs a piece for every character it keeps; it names the count.
    needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(err))
    if needed:
        return ConfigError(
            f"vocab_size {vocab_size} is too small for a {kind} tokenizer of this corpus: "
            f"the minimum is {needed.group(1)} (256 byte pieces, special pieces and the "
            "corpus's characters)"
        )
    return DataError(f"training the {kind} tokenizer failed: {err}")
