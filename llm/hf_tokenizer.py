"""Our tokenizers as Hugging Face fast tokenizers, for the exports transformers loads.

`hf_tokenizer_files` writes what `AutoTokenizer.from_pretrained` reads: a `tokenizers`
pipeline (tokenizer.json) that gives the ids our tokenizer gives, and transformers'
settings beside it. Each kind is expressed with what `tokenizers` has:

    bpe        a BPE model over SentencePiece's pieces; a merge ranks by the score of the
               piece it makes, as SentencePiece merges the best-scoring pair first
    wordpiece  our WordPiece model as it is, with a decoder that undoes it
    char       a BPE model without merges: each character is a token, an unknown one
               the unknown id
    byte       GPT-2's byte-to-character map (ByteLevel, no regex) and a BPE model
               without merges: each byte is a token

SentencePiece spells a space U+2581 and encodes a literal U+2581 as its three bytes; here
the pieces are spelled with real spaces, so the text is matched as it stands, and a
literal U+2581, in no piece, falls back to its bytes as ours does. SentencePiece matches
its user symbols (newline, tab) before anything else; here they are added tokens, which
`tokenizers` also splits off first.

bos, eos and pad are special tokens that transformers knows by name, so `generate` stops
at eos and `decode(..., skip_special_tokens=True)` drops them as our decode does;
`split_special_tokens` makes text that spells one encode as text, as ours does, and no
kind adds bos or eos to an encoding. The unknown id is an ordinary token that decodes to
U+FFFD, as ours. Every conversion is checked against our tokenizer on probe texts; one
that cannot be exact is refused with a ConfigError.

`unigram` is refused (REFUSED says why). Decoding differs in one case: ids that spell
invalid UTF-8 in SentencePiece's byte pieces, which SentencePiece replaces byte by byte
and `tokenizers` run by run; text that our encode made always decodes alike.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from llm.errors import ConfigError
from llm.tokenizer import (
    CHAR_SPECIALS,
    SPACE_SYMBOL,
    UNKNOWN_TEXT,
    ByteTokenizer,
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    WordPieceTokenizer,
)

HF_TOKENIZER_FILE = "tokenizer.json"
HF_TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
HF_SPECIAL_TOKENS_FILE = "special_tokens_map.json"
HF_TOKENIZER_FILES = (HF_TOKENIZER_FILE, HF_TOKENIZER_CONFIG_FILE, HF_SPECIAL_TOKENS_FILE)

# The names the special ids get in the export (ours have none but SentencePiece's).
SPECIAL_NAMES = {"bos": "<|bos|>", "eos": "<|eos|>", "pad": "<|pad|>"}
UNK_NAME = "<|unk|>"
# The kinds `tokenizers` cannot reproduce exactly, and why.
REFUSED = {
    "unigram": (
        "SentencePiece adds up segmentation scores in single precision and Hugging Face's "
        "Unigram in double, so where two segmentations score alike (a run of spaces longer "
        "than any space piece, as in 'x     y') each picks its own; train with tokenizer: "
        "bpe for a model to export"
    ),
}
PROBE_TEXT = (
    "  Leading, trailing  and double  spaces;\n\tindented\n\n\t\tcode(x)  \n"
    "Naïve café déjà vu — 東京 😀 \u2581 a\u2581\u2581b \u2581x\u2581 \r\n"
    "<0x41> <s> </s> <pad> <unk> [UNK] <|bos|> <|eos|> <|pad|> <|unk|> ## ###a \ufffd\x00"
)


def hf_tokenizer_files(tokenizer: Tokenizer, model_max_length: int) -> dict[str, str]:
    """File name -> content of the Hugging Face tokenizer equal to `tokenizer`.

    Raises a ConfigError naming the kind and the reason when no exact one can be built."""
    backend = convert(tokenizer)
    check_same_ids(tokenizer, backend)
    tokens = {f"{role}_token": name for role, name in SPECIAL_NAMES.items()}
    config = {
        # The generic class loads tokenizer.json as it stands; Llama's own would rebuild
        # a SentencePiece pipeline around our vocabulary.
        "tokenizer_class": "PreTrainedTokenizerFast",
        **tokens,
        "add_bos_token": False,
        "add_eos_token": False,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        # Llama takes no token_type_ids, which transformers 4's generic class would send.
        "model_input_names": ["input_ids", "attention_mask"],
    }
    return {
        HF_TOKENIZER_FILE: backend.to_str(pretty=True) + "\n",
        HF_TOKENIZER_CONFIG_FILE: _json(config),
        HF_SPECIAL_TOKENS_FILE: _json(tokens),
    }


def convert(tokenizer: Tokenizer) -> HFTokenizer:
    """A `tokenizers` pipeline meant to equal `tokenizer`, its special ids named as
    SPECIAL_NAMES and UNK_NAME say."""
    if tokenizer.kind in REFUSED:
        raise ConfigError(
            f"cannot export a {tokenizer.kind} tokenizer to Hugging Face exactly: "
            + REFUSED[tokenizer.kind]
        )
    return CONVERTERS[tokenizer.kind](tokenizer)


def check_same_ids(tokenizer: Tokenizer, backend: HFTokenizer) -> None:
    """Raise a ConfigError unless `backend` encodes each probe text to our ids and
    decodes them back to our text: every token's own text, all of them in a row, the
    names of the special and byte pieces, and a text of spaces, tabs and Unicode."""
    pieces = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
    shuffled = random.Random(0).sample(pieces, len(pieces))
    names = [UNK_NAME, *SPECIAL_NAMES.values(), *(f"<0x{b:02X}>" for b in range(256))]
    probes = [PROBE_TEXT, "".join(pieces), " ".join(shuffled), " ".join(names), *pieces]
    backend.encode_special_tokens = True
    theirs = [e.ids for e in backend.encode_batch(probes, add_special_tokens=False)]
    for probe, ours_ids, their_ids in zip(
        probes, tokenizer.encode_batch(probes), theirs, strict=True
    ):
        if ours_ids != their_ids:
            raise ConfigError(
                f"cannot export the {tokenizer.kind} tokenizer to Hugging Face exactly: "
                f"{_clip(probe)!r} encodes to {_clip(ours_ids)} here and to "
                f"{_clip(their_ids)} there"
            )
        if backend.decode(their_ids, skip_special_tokens=False) != tokenizer.decode(ours_ids):
            raise ConfigError(
                f"cannot export the {tokenizer.kind} tokenizer to Hugging Face exactly: "
                f"the ids of {_clip(probe)!r} decode differently there"
            )


def _clip(value: Any, limit: int = 80) -> Any:
    return value[:limit] if len(value) > limit else value


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _special_vocab(tokenizer: Tokenizer) -> dict[str, int]:
    """The names of the special ids, and the ids."""
    return {
        SPECIAL_NAMES["bos"]: tokenizer.bos_id,
        SPECIAL_NAMES["eos"]: tokenizer.eos_id,
        SPECIAL_NAMES["pad"]: tokenizer.pad_id,
    }


def _add_specials(backend: HFTokenizer) -> None:
    backend.add_special_tokens(
        [AddedToken(name, special=True, normalized=False) for name in SPECIAL_NAMES.values()]
    )


def _unknown_as_ours() -> decoders.Decoder:
    """The decoder step that writes the unknown token as our decode does."""
    return decoders.Replace(UNK_NAME, UNKNOWN_TEXT)


# --- SentencePiece's bpe ----------------------------------------------------------------


@dataclass(frozen=True)
class SPPiece:
    text: str  # as the export spells it
    score: float
    kind: str  # "normal", "user", "byte" or "special"


def sp_pieces(tokenizer: SentencePieceTokenizer) -> list[SPPiece]:
    """The pieces of a SentencePiece model, spelled for the export. Raises a ConfigError
    for a model our trainer does not make."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto.FromString(tokenizer.model_proto)
    types = pb.ModelProto.SentencePiece
    kinds = {types.NORMAL: "normal", types.USER_DEFINED: "user", types.BYTE: "byte"}
    names = {i: name for name, i in _special_vocab(tokenizer).items()}
    names[tokenizer.unk_id] = UNK_NAME
    pieces = []
    for i, piece in enumerate(proto.pieces):
        if i in names:
            pieces.append(SPPiece(names[i], piece.score, "special"))
        elif piece.type in kinds:
            text = piece.piece.replace(SPACE_SYMBOL, " ")
            pieces.append(SPPiece(text, piece.score, kinds[piece.type]))
        else:
            raise ConfigError(
                f"piece {i} ({piece.piece!r}) of the {tokenizer.kind} tokenizer has a "
                "SentencePiece type with no Hugging Face equivalent"
            )
    _check_sp_pieces(tokenizer.kind, pieces)
    return pieces


def _check_sp_pieces(kind: str, pieces: list[SPPiece]) -> None:
    seen: dict[str, int] = {}
    user = [p.text for p in pieces if p.kind == "user"]
    for i, piece in enumerate(pieces):
        if piece.text in seen:
            raise ConfigError(
                f"cannot export the {kind} tokenizer: pieces {seen[piece.text]} and {i} "
                f"are both spelled {piece.text!r} in Hugging Face's vocabulary"
            )
        seen[piece.text] = i
        # SentencePiece matches a user symbol before any piece; so do added tokens, but
        # a piece holding one would then never be matched.
        if piece.kind == "normal" and any(symbol in piece.text for symbol in user):
            raise ConfigError(
                f"cannot export the {kind} tokenizer: its piece {piece.text!r} holds one "
                "of its user symbols"
            )


def _sp_backend(model: models.Model, pieces: list[SPPiece]) -> HFTokenizer:
    backend = HFTokenizer(model)
    user = [p.text for p in pieces if p.kind == "user"]
    backend.add_tokens([AddedToken(text, normalized=False) for text in user])
    _add_specials(backend)
    backend.decoder = decoders.Sequence(
        [_unknown_as_ours(), decoders.ByteFallback(), decoders.Fuse()]
    )
    return backend


def convert_sp_bpe(tokenizer: Tokenizer) -> HFTokenizer:
    assert isinstance(tokenizer, SentencePieceTokenizer)
    pieces = sp_pieces(tokenizer)
    vocab = {p.text: i for i, p in enumerate(pieces)}
    model = models.BPE(
        vocab,
        bpe_merges(pieces, tokenizer.kind),
        unk_token=UNK_NAME,
        byte_fallback=True,
    )
    return _sp_backend(model, pieces)


def bpe_merges(pieces: list[SPPiece], kind: str) -> list[tuple[str, str]]:
    """The merges that rebuild SentencePiece's BPE: every split of a normal piece into
    two normal pieces, ranked by the score of the piece made (best first). SentencePiece
    merges any adjacent pair whose join is a piece, so every split is a merge."""
    normal = {p.text: i for i, p in enumerate(pieces) if p.kind == "normal"}
    ranked = []
    for text, i in normal.items():
        missing = [c for c in text if c not in normal]
        if missing:
            # SentencePiece starts from characters, in the vocabulary or not; BPE here
            # starts from pieces, and a character outside them falls back to bytes.
            raise ConfigError(
                f"cannot export the {kind} tokenizer: its piece {text!r} holds "
                f"{missing[0]!r}, which is not a piece of its own"
            )
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in normal and right in normal:
                ranked.append((-pieces[i].score, i, normal[left], normal[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


# --- wordpiece, char, byte --------------------------------------------------------------


def convert_wordpiece(tokenizer: Tokenizer) -> HFTokenizer:
    assert isinstance(tokenizer, WordPieceTokenizer)
    pipeline = json.loads(tokenizer.model_json)
    model = pipeline["model"]
    by_id = {i: piece for piece, i in model["vocab"].items()}
    by_id[tokenizer.unk_id] = UNK_NAME
    by_id.update({i: name for name, i in _special_vocab(tokenizer).items()})
    model["vocab"] = {piece: i for i, piece in sorted(by_id.items())}
    model["unk_token"] = UNK_NAME
    backend = HFTokenizer.from_str(json.dumps(pipeline))
    _add_specials(backend)
    # Our decode strips the continuation prefix from every piece, then undoes the bytes
    # (U+FFFD, in no byte-level piece, passes as itself).
    prefix = Regex("^" + re.escape(tokenizer.continuation))
    backend.decoder = decoders.Sequence(
        [decoders.Replace(prefix, ""), _unknown_as_ours(), decoders.ByteLevel()]
    )
    return backend


def convert_char(tokenizer: Tokenizer) -> HFTokenizer:
    assert isinstance(tokenizer, CharTokenizer)
    vocab = {UNK_NAME: tokenizer.unk_id, **_special_vocab(tokenizer)}
    vocab.update({c: i + CHAR_SPECIALS for i, c in enumerate(tokenizer.alphabet)})
    backend = HFTokenizer(models.BPE(vocab, [], unk_token=UNK_NAME, fuse_unk=False))
    _add_specials(backend)
    backend.decoder = decoders.Sequence([_unknown_as_ours(), decoders.Fuse()])
    return backend


def convert_byte(tokenizer: Tokenizer) -> HFTokenizer:
    assert isinstance(tokenizer, ByteTokenizer)
    vocab = {symbol: b for b, symbol in enumerate(byte_symbols())}
    vocab.update(_special_vocab(tokenizer))
    backend = HFTokenizer(models.BPE(vocab, []))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    _add_specials(backend)
    backend.decoder = decoders.ByteLevel()
    return backend


def byte_symbols() -> list[str]:
    """GPT-2's character for each byte value, the alphabet of `tokenizers`' ByteLevel:
    printable Latin-1 bytes stand for themselves, the rest for U+0100 onwards."""
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0x100)}
    others = iter(range(0x100, 0x200))
    return [chr(b) if b in printable else chr(next(others)) for b in range(256)]


CONVERTERS: dict[str, Callable[[Tokenizer], HFTokenizer]] = {
    "bpe": convert_sp_bpe,
    "wordpiece": convert_wordpiece,
    "char": convert_char,
    "byte": convert_byte,
}
