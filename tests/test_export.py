from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import peaked_model
from safetensors import safe_open

import llm.hf_tokenizer
from llm.checkpoint import load_model_dir, save_model_dir
from llm.cli import main as llm_cli
from llm.config import ModelConfig
from llm.errors import CheckpointError, ConfigError, UserError
from llm.export import export_hf
from llm.generate import SamplingParams, generate
from llm.model import NORMS, Transformer
from llm.tokenizer import (
    ByteTokenizer,
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    train_tokenizer,
)

# GQA (4 query heads over 2 key/value heads), and a norm eps and rope theta far from the
# defaults, so that a mistake in where eps goes or which theta is read shows in the logits.
CONFIG = ModelConfig(
    vocab_size=259,
    n_layers=2,
    d_model=32,
    n_heads=4,
    n_kv_heads=2,
    d_ff=48,
    max_seq_len=32,
    norm_eps=0.1,
    rope_theta=500.0,
)


def save_random_model(path: Path, config: ModelConfig = CONFIG, *, tokenizer: bool = True) -> Path:
    """A model directory whose every weight, the norms' included, is random and far from
    its initial value."""
    torch.manual_seed(0)
    model = Transformer(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    save_model_dir(path, model, ByteTokenizer() if tokenizer else None)
    return path


@pytest.mark.parametrize(
    "changes",
    [{"tie_embeddings": True}, {"tie_embeddings": False}, {"bias": True, "n_kv_heads": 1}],
    ids=["tied", "untied", "bias-mqa"],
)
def test_transformers_llama_gives_the_same_logits(tmp_path: Path, changes: dict) -> None:
    transformers = pytest.importorskip("transformers")
    source = save_random_model(tmp_path / "model", dataclasses.replace(CONFIG, **changes))
    out = export_hf(source, tmp_path / "hf")
    theirs, info = transformers.LlamaForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mis-shaped weights
    ours, _, _ = load_model_dir(source)
    tokens = torch.randint(0, CONFIG.vocab_size, (2, CONFIG.max_seq_len))
    with torch.no_grad():
        torch.testing.assert_close(theirs(tokens).logits, ours(tokens), atol=1e-4, rtol=0)


def test_rms_norm_matches_llamas() -> None:
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    config = dataclasses.replace(CONFIG, d_model=16, norm_eps=0.5)
    ours = NORMS[config.norm](config)
    theirs = llama.LlamaRMSNorm(16, eps=0.5)
    weight = torch.randn(16)
    with torch.no_grad():
        ours.weight.copy_(weight)
        theirs.weight.copy_(weight)
    x = torch.randn(3, 5, 16) * 0.3  # small activations: where eps goes matters
    torch.testing.assert_close(ours(x), theirs(x))


def test_export_writes_config_weights_and_tokenizer(tmp_path: Path) -> None:
    out = export_hf(save_random_model(tmp_path / "model"), tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["num_key_value_heads"] == 2
    assert config["head_dim"] == 8
    assert config["rms_norm_eps"] == 0.1
    assert config["rope_parameters"]["rope_theta"] == 500.0
    assert config["tie_word_embeddings"] is True
    tokenizer = ByteTokenizer()
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (
        tokenizer.bos_id,
        tokenizer.eos_id,
        tokenizer.pad_id,
    )
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_id
    # Hugging Face's tokenizer files, not our own tokenizer folder
    assert json.loads((out / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    settings = json.loads((out / "tokenizer_config.json").read_text())
    assert settings["model_max_length"] == CONFIG.max_seq_len
    assert (settings["add_bos_token"], settings["add_eos_token"]) == (False, False)
    assert json.loads((out / "special_tokens_map.json").read_text())["eos_token"] == "<|eos|>"
    assert not (out / "tokenizer").exists()
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        k_proj = f.get_tensor("model.layers.1.self_attn.k_proj.weight")
    assert "lm_head.weight" not in names  # tied: stored once, as the embedding
    assert k_proj.shape == (2 * 8, 32)
    ours, _, _ = load_model_dir(tmp_path / "model")
    assert torch.equal(k_proj, ours.blocks[1].attn.qkv.weight[32:48])


def test_export_without_tokenizer_leaves_special_ids_unset(tmp_path: Path) -> None:
    out = export_hf(save_random_model(tmp_path / "model", tokenizer=False), tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["bos_token_id"] is None and config["eos_token_id"] is None
    assert not (out / "generation_config.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize(
    ("field", "value", "needed"),
    [
        ("pos_encoding", "alibi", "rope"),
        ("pos_encoding", "learned", "rope"),
        ("norm", "layernorm", "rmsnorm"),
        ("mlp", "gelu", "swiglu"),
    ],
)
def test_refuses_what_llama_cannot_express(
    tmp_path: Path, field: str, value: str, needed: str
) -> None:
    source = save_random_model(tmp_path / "model", dataclasses.replace(CONFIG, **{field: value}))
    expected = re.escape(f"{field} is '{value}' (Llama needs '{needed}')")
    with pytest.raises(ConfigError, match=expected):
        export_hf(source, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_refusal_names_every_mismatch(tmp_path: Path) -> None:
    config = dataclasses.replace(CONFIG, norm="layernorm", mlp="gelu")
    with pytest.raises(ConfigError, match=r"norm is 'layernorm'.*mlp is 'gelu'"):
        export_hf(save_random_model(tmp_path / "model", config), tmp_path / "hf")


def test_missing_model_dir_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such model directory"):
        export_hf(tmp_path / "absent", tmp_path / "hf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"model\.json: missing"):
        export_hf(tmp_path / "empty", tmp_path / "hf")


def test_corrupt_weights_are_a_checkpoint_error(tmp_path: Path) -> None:
    source = save_random_model(tmp_path / "model")
    (source / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        export_hf(source, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_corrupt_config_is_a_checkpoint_error(tmp_path: Path) -> None:
    source = save_random_model(tmp_path / "model")
    (source / "model.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="malformed JSON"):
        export_hf(source, tmp_path / "hf")


def test_replaces_an_earlier_export_but_not_other_folders(tmp_path: Path) -> None:
    source = save_random_model(tmp_path / "model")
    out = tmp_path / "hf"
    export_hf(source, out)
    (out / "config.json").write_text("{}")
    export_hf(source, out)
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an earlier export"):
        export_hf(source, keep)
    assert (keep / "notes.txt").read_text() == "mine"
    with pytest.raises(UserError, match="not an earlier export"):
        export_hf(source, source)  # the model directory itself


# --- the tokenizer, through transformers alone ------------------------------------------

# Prose and code with tabs, indentation, accents, CJK and emoji, to train every kind on.
CORPUS = [
    "The quick brown fox jumps over the lazy dog; the dog sleeps on.  Two spaces here.\n"
    "Naïve café déjà vu — 東京 and 😀 now and then.\n" * 4,
    "def add(a, b):\n    return a + b\n\n\tif x:\n\t\tpass\n" * 4,
]
TEXTS = [
    "  leading spaces, double  spaces, trailing ones  ",
    "line one\nline two\n\n\tone tab\n\t\ttwo tabs\r\n",
    "accents: naïve café déjà; CJK: 東京と大阪; emoji: 😀🚀",
    "\u2581 the block itself, \u2581\u2581 twice, a\u2581b and \u2581 x",
    "unknown to char: Ωμέγα ≠ ∞ ~ ^",
    "names spelled out: <|bos|> <|eos|> <s> </s> <0x41> [UNK] ##",
    "",
    " ",
]
KINDS = {"bpe": 400, "wordpiece": 600, "char": 40, "byte": 259}
PROMPT, NEW_TOKENS = "The quick brown fox", 24

# Runs in a fresh interpreter without this project: an import of llm or evo fails there.
TRANSFORMERS_SCRIPT = """
import importlib.abc, json, sys

class NotThisProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("llm", "evo"):
            raise ImportError(name + " imported while loading an export")

sys.meta_path.insert(0, NotThisProject())
from transformers import AutoModelForCausalLM, AutoTokenizer

request = json.loads(sys.argv[1])
out = {}
for kind, folder in request["exports"].items():
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = [tokenizer(text)["input_ids"] for text in request["texts"]]
    out[kind] = {
        "model": type(model).__name__,
        "ids": ids,
        "decoded": [tokenizer.decode(row) for row in ids],
        "bos_eos_pad": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id],
    }
    prompt = tokenizer(request["prompt"], return_tensors="pt")
    start = prompt["input_ids"].shape[1]
    until_eos = model.generate(**prompt, do_sample=False, max_new_tokens=request["new_tokens"])
    model.generation_config.eos_token_id = None  # then every one of the new tokens
    full = model.generate(**prompt, do_sample=False, max_new_tokens=request["new_tokens"])
    out[kind]["until_eos"] = until_eos[0, start:].tolist()
    out[kind]["full"] = full[0, start:].tolist()
    out[kind]["full_text"] = tokenizer.decode(out[kind]["full"], skip_special_tokens=True)
print(json.dumps(out))
"""


def export_with_tokenizer(folder: Path, tokenizer: Tokenizer) -> Path:
    model = peaked_model(tokenizer.vocab_size, max_seq_len=64)
    save_model_dir(folder / "model", model, tokenizer)
    return export_hf(folder / "model", folder / "hf")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Tokenizer, Path]]:
    """Each kind's tokenizer and the export of a small random model that uses it."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for kind, vocab_size in KINDS.items():
        tokenizer = train_tokenizer(kind, CORPUS, vocab_size)
        out[kind] = tokenizer, export_with_tokenizer(root / kind, tokenizer)
    return out


@pytest.fixture(scope="module")
def through_transformers(exported: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What transformers, alone in a fresh interpreter, makes of every export."""
    pytest.importorskip("transformers")
    request = {
        "exports": {kind: str(folder) for kind, (_, folder) in exported.items()},
        "texts": TEXTS,
        "prompt": PROMPT,
        "new_tokens": NEW_TOKENS,
    }
    run = subprocess.run(
        [sys.executable, "-I", "-c", TRANSFORMERS_SCRIPT, json.dumps(request)],
        cwd=tmp_path_factory.mktemp("elsewhere"),
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.splitlines()[-1])


@pytest.mark.parametrize("kind", list(KINDS))
def test_transformers_tokenizer_gives_our_ids(
    exported: dict, through_transformers: dict, kind: str
) -> None:
    ours, _ = exported[kind]
    theirs = through_transformers[kind]
    assert theirs["model"] == "LlamaForCausalLM"
    assert theirs["ids"] == [ours.encode(text) for text in TEXTS]
    assert theirs["decoded"] == [ours.decode(ours.encode(text)) for text in TEXTS]
    assert theirs["bos_eos_pad"] == [ours.bos_id, ours.eos_id, ours.pad_id]


def test_char_export_keeps_unknown_characters_unknown(
    exported: dict, through_transformers: dict
) -> None:
    ours, _ = exported["char"]
    row = TEXTS.index("unknown to char: Ωμέγα ≠ ∞ ~ ^")
    assert ours.unk_id in through_transformers["char"]["ids"][row]
    assert "\ufffd" in through_transformers["char"]["decoded"][row]


def our_greedy_ids(tokenizer: Tokenizer, folder: Path, eos_id: int | None) -> list[int]:
    model, _, _ = load_model_dir(folder.parent / "model")
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.0, eos_id=eos_id)
    return generate(model, tokenizer.encode(PROMPT), params)


@pytest.mark.parametrize("kind", list(KINDS))
def test_transformers_generates_our_tokens(
    exported: dict, through_transformers: dict, kind: str
) -> None:
    tokenizer, folder = exported[kind]
    theirs = through_transformers[kind]
    assert theirs["until_eos"] == our_greedy_ids(tokenizer, folder, tokenizer.eos_id)
    assert theirs["full"] == our_greedy_ids(tokenizer, folder, None)


# Not bpe: a random model's bytes are rarely valid UTF-8, and SentencePiece writes U+FFFD
# for each bad byte where tokenizers' ByteFallback writes it for the whole run of bytes.
@pytest.mark.parametrize("kind", ["wordpiece", "char", "byte"])
def test_transformers_generates_our_text(
    exported: dict, through_transformers: dict, kind: str
) -> None:
    tokenizer, folder = exported[kind]
    ours = tokenizer.decode(our_greedy_ids(tokenizer, folder, None))
    assert len(ours) >= 10
    assert through_transformers[kind]["full_text"] == ours


def test_unigram_tokenizer_is_refused(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    tokenizer = train_tokenizer("unigram", CORPUS, 400)
    with pytest.raises(ConfigError, match=r"tokenizer: cannot export a unigram tokenizer"):
        export_with_tokenizer(tmp_path, tokenizer)
    assert not (tmp_path / "hf").exists()
    command = ["export", str(tmp_path / "model"), "--format", "hf", "--out", str(tmp_path / "hf")]
    assert llm_cli(command) == 2
    assert "single precision" in capfd.readouterr().err
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
    ("piece", "reason"),
    [("Ωx", "holds 'Ω', which is not a piece of its own"), ("\t\t", "holds one of its user")],
)
def test_sentencepiece_model_it_cannot_express_is_refused(
    tmp_path: Path, piece: str, reason: str
) -> None:
    from sentencepiece import sentencepiece_model_pb2 as pb

    trained = train_tokenizer("bpe", CORPUS, KINDS["bpe"])
    proto = pb.ModelProto.FromString(trained.model_proto)
    proto.pieces.add(piece=piece, score=-1000.0, type=pb.ModelProto.SentencePiece.NORMAL)
    tokenizer = SentencePieceTokenizer("bpe", proto.SerializeToString())
    with pytest.raises(ConfigError, match=re.escape(reason)):
        export_with_tokenizer(tmp_path, tokenizer)
    assert not (tmp_path / "hf").exists()


def test_a_conversion_that_differs_from_ours_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer = train_tokenizer("char", CORPUS, KINDS["char"])
    alphabet = tokenizer.alphabet
    swapped = CharTokenizer(alphabet[1] + alphabet[0] + alphabet[2:])  # two ids exchanged
    convert_char = llm.hf_tokenizer.CONVERTERS["char"]
    monkeypatch.setitem(llm.hf_tokenizer.CONVERTERS, "char", lambda _: convert_char(swapped))
    with pytest.raises(ConfigError, match="cannot export the char tokenizer"):
        export_with_tokenizer(tmp_path, tokenizer)
    assert not (tmp_path / "hf").exists()
