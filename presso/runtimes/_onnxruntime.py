"""The ONNX Runtime runtime: the candidate written as one ONNX graph
(:func:`presso.onnx_model.build_onnx`, a BERT encoder :func:`presso.onnx_bert.build_bert_onnx`:
MatMulNBits for quantized units, dropped modules not in
the graph at all, pruned heads and FFN channels as smaller MatMuls and fewer KV heads) and run by an ``InferenceSession``. The KV cache is graph inputs and outputs
(``past_*`` / ``present_*``), one pair per attention layer that runs."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from presso.errors import PressoError
from presso.runtimes._base import Levels, structured_weights
from presso.runtimes._skip import dropped_modules

if TYPE_CHECKING:
    import torch

    from presso.models import ModelHandle
    from presso.plan import Plan


class OrtRuntime:
    """A session over a built graph; the KV cache is kept as numpy arrays between steps."""

    backend = "onnxruntime"

    def __init__(self, session: Any, kind: str, **detail: Any) -> None:
        self.session = session
        self.kind = kind
        self.detail: dict[str, Any] = detail
        self._pasts = [a for a in session.get_inputs() if a.name.startswith("past_")]
        # logits (a causal LM) or last_hidden_state (an encoder): the graph's first output.
        self._output = session.get_outputs()[0].name
        self._outputs = [self._output] + [a.name.replace("past_", "present_") for a in self._pasts]
        self._state: dict[str, Any] | None = None

    def _empty(self, batch: int) -> dict[str, Any]:
        import numpy as np

        return {
            a.name: np.zeros((batch, a.shape[1], 0, a.shape[3]), dtype=np.float32)
            for a in self._pasts
        }

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        import torch

        feed = {"input_ids": ids.cpu().numpy().astype("int64"), **self._empty(ids.shape[0])}
        return torch.from_numpy(self.session.run([self._output], feed)[0])

    def start(self, ids: torch.Tensor) -> torch.Tensor:
        if not self._pasts:
            raise PressoError("this graph was built without a KV cache (kv_cache=False)")
        self._state = self._empty(ids.shape[0])
        return self.step(ids)

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        import torch

        if self._state is None:
            raise PressoError("step() before start(): prefill a prompt first")
        feed = {"input_ids": ids.cpu().numpy().astype("int64"), **self._state}
        logits, *presents = self.session.run(self._outputs, feed)
        for a, value in zip(self._pasts, presents):
            self._state[a.name] = value
        return torch.from_numpy(logits[:, -1])

    def crop(self, length: int) -> None:
        assert self._state is not None
        for name, value in self._state.items():
            self._state[name] = value[:, :, :length]


def build(
    handle: ModelHandle,
    plan: Plan,
    levels: Levels,
    *,
    device: str = "cpu",
    threads: int | None = 1,
    kv_cache: bool = True,
    accuracy_level: int = 0,
    path: str | Path | None = None,
) -> OrtRuntime:
    """``plan`` written as an ONNX graph of ``handle``'s model (weights from ``levels``) and
    opened in a session on ``device`` with ``threads`` intra-op threads. ``path``: where the
    graph is written, to be opened again with :func:`load` (None: a temporary file)."""
    from presso.onnx_model import build_onnx

    dropped_modules(handle, plan)  # refuses a name that is no block or sublayer
    options: dict[str, Any] = {
        "weights": levels.quantized,
        "sparse": levels.sparse,
        "accuracy_level": accuracy_level,
        "structures": structured_weights(handle, plan, levels),
    }
    with tempfile.TemporaryDirectory(prefix="presso-runtime-") as tmp:
        out = Path(path) if path is not None else Path(tmp) / "model.onnx"
        if getattr(handle.model.config, "model_type", None) == "bert" and handle.kind == "encoder":
            from presso.onnx_bert import build_bert_onnx

            written = build_bert_onnx(handle, plan, out, **options)
        else:
            written = build_onnx(
                handle, plan, out, kv_cache=kv_cache and handle.kind == "causal-lm", **options
            )
        return load(written, handle.kind, device=device, threads=threads)


def load(
    path: str | Path, kind: str, *, device: str = "cpu", threads: int | None = 1
) -> OrtRuntime:
    """The runtime of a graph :func:`build` wrote (its facts from the graph's metadata)."""
    import json

    import onnx

    from presso.onnx_model import make_session

    meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    session = make_session(path, threads=threads, device=device)
    return OrtRuntime(
        session,
        kind,
        dropped=json.loads(meta.get("presso.dropped", "[]")),
        units=json.loads(meta.get("presso.units", "{}")),
    )
