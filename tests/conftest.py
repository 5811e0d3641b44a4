"""Shared fixtures: a tokenizer trained at test time and tiny OPT / Llama models built from config.

Everything runs offline on CPU in seconds; the hub is never contacted.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every hub name would otherwise cost 20–45 s of retries
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SST2_SAMPLE = ROOT / "zoft" / "tasks" / "data" / "sst2"


def _corpus() -> list[str]:
    lines = (SST2_SAMPLE / "train.tsv").read_text().splitlines()[1:600]
    extra = ["It was terrible", "It was great", "Yes", "No", "Maybe", "Does this mean that", "is true? Yes or No?"]
    return [line.split("\t")[0] for line in lines] + extra * 20


def build_tokenizer():
    """A byte-level BPE tokenizer (vocab 400) trained on SST-2 sentences, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    # prepend BOS like OPT and Llama tokenizers do, so BOS handling is exercised
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def build_model(kind: str, vocab_size: int):
    """A 2-layer, hidden-32 OPT or Llama with deterministic weights; "llama64": hidden 64, as bitsandbytes' CPU 4-bit
    layers need (rows of at least one 64-element block)."""
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    hidden = 64 if kind == "llama64" else 32
    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if kind == "opt":
        model = OPTForCausalLM(OPTConfig(ffn_dim=64, word_embed_proj_dim=32, dropout=0.1, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(intermediate_size=2 * hidden, num_key_value_heads=2, **common))
    return model.eval()


def forwards_to_target(opt, f, target: float, max_steps: int) -> float:
    """Forward passes `opt` spends stepping on the loss closure `f` until f() ≤ target (∞ if not within max_steps)."""
    for _ in range(max_steps):
        opt.step(f)
        if f() <= target:
            return opt.forwards
    return math.inf


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """{'opt': dir, 'llama': dir, 'llama64': dir}: HF model dirs (safetensors + tokenizer) of the tiny models."""
    dirs = {}
    for kind in ("opt", "llama", "llama64"):
        path = tmp_path_factory.mktemp(f"tiny-{kind}")
        build_model(kind, len(tokenizer)).save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[kind] = path
    return dirs


@pytest.fixture(scope="session")
def tiny_llama_64(tiny_model_dirs) -> Path:
    """Hidden 64: bitsandbytes' CPU 4-bit kernels need rows of at least one 64-element block."""
    return tiny_model_dirs["llama64"]


#: what a run of an algorithm restricted to some tuning modes (its `modes`) adds to its flags, and the tiny model it
#: needs: registry-driven tests run every algorithm through this
MODE_RUNS = {"scales": (("--mode", "scales", "--load-in-4bit"), "tiny_llama_64")}


def mode_run(algo: str, request) -> tuple[tuple[str, ...], Path | None]:
    """(extra flags, model dir or None for the test's own) of `algo`'s first mode, if it is restricted to some
    (`algo` may name a test's variant, "hizoo+centred")."""
    from zoft.algos import ALGORITHMS

    modes = ALGORITHMS[algo.partition("+")[0]].modes
    if not modes:
        return (), None
    flags, fixture = MODE_RUNS[modes[0]]
    return flags, request.getfixturevalue(fixture)


def trained_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint dir holds: the model's, or the adapter's when the run trained one."""
    from safetensors.torch import load_file

    for name in ("model.safetensors", "zoft_adapter.safetensors", "adapter_model.safetensors"):
        if (directory / name).is_file():
            return load_file(directory / name)
    raise FileNotFoundError(f"no weights in {directory}")


@pytest.fixture(params=["opt", "llama"])
def tiny_model_dir(request, tiny_model_dirs) -> Path:
    return tiny_model_dirs[request.param]
