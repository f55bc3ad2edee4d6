"""The ONNX graph of a BERT encoder (``BertModel``: MiniLM, tiny-bert) for ONNX Runtime, beside
:mod:`presso.onnx_model`'s Llama graph and with its linear layers (MatMulNBits at a unit's
bits, dense MatMul otherwise).

Input ``input_ids`` int64 ``[batch, seq]``, every position attended (what presso's runtimes
feed an encoder: an all-ones attention mask), token type 0; output ``last_hidden_state`` fp32
``[batch, seq, hidden]``. Dropped blocks are not in the graph; each attention runs the heads
its weights have (pruned heads make smaller MatMuls), so layers may differ. Tests compare the
output with transformers'.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from presso.errors import PressoError
from presso.onnx_model import (
    Graph,
    _check_format,
    _dropped,
    _np,
    linear,
    resolve_weights,
    write_graph,
)

if TYPE_CHECKING:
    from presso.compress import StructuredWeight
    from presso.models import ModelHandle
    from presso.plan import Plan
    from presso.structures import Structure


def check_bert(handle: ModelHandle) -> None:
    """Refuse a BERT this graph does not compute as transformers does."""
    config = handle.model.config
    if config.hidden_act != "gelu":
        raise PressoError(f"ONNX graph: {handle.name} uses {config.hidden_act}, not gelu")
    kind = getattr(config, "position_embedding_type", "absolute")
    if kind != "absolute":
        raise PressoError(f"ONNX graph: {handle.name} uses {kind} position embeddings")


class _Bert:
    def __init__(
        self,
        handle: ModelHandle,
        g: Graph,
        weights: dict[str, Any],
        biases: dict[str, Any],
        *,
        fmt: str,
        accuracy_level: int,
    ) -> None:
        self.handle, self.g, self.weights, self.biases = handle, g, weights, biases
        self.fmt, self.accuracy_level = fmt, accuracy_level
        config = handle.model.config
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.facts: dict[str, dict[str, int]] = {}

    def linear(self, x: str, name: str) -> str:
        weight = self.weights.get(name, self.handle.dense_weight(name))
        bias = self.biases.get(name, self.handle.linear(name).bias)
        out, facts = linear(
            self.g, x, weight, name, fmt=self.fmt, accuracy_level=self.accuracy_level, bias=bias
        )
        if facts:
            self.facts[name] = facts
        return out

    def norm(self, x: str, module: Any) -> str:
        return self.g.op(
            "LayerNormalization",
            x,
            self.g.const(_np(module.weight), "ln.weight"),
            self.g.const(_np(module.bias), "ln.bias"),
            axis=-1,
            epsilon=float(module.eps),
        )

    def embed(self, ids: str) -> str:
        g, emb = self.g, self.handle.model.embeddings
        words = g.op("Gather", g.const(_np(emb.word_embeddings.weight), "words"), ids)
        seq = g.op("Squeeze", g.op("Shape", ids, start=1, end=2), g.ints(0))
        zero = g.op("Squeeze", g.ints(0), g.ints(0))
        step = g.op("Squeeze", g.ints(1), g.ints(0))
        positions = g.op("Range", zero, seq, step)
        pos = g.op("Gather", g.const(_np(emb.position_embeddings.weight), "positions"), positions)
        token_type = g.const(_np(emb.token_type_embeddings.weight[0]), "token_type")
        return self.norm(g.op("Add", g.op("Add", words, pos), token_type), emb.LayerNorm)

    def attention(self, x: str, block: str) -> str:
        g, d = self.g, self.head_dim
        names = [f"{block}.attention.self.{n}" for n in ("query", "key", "value")]
        heads = self.weights.get(names[0], self.handle.dense_weight(names[0])).shape[0] // d
        q, k, v = (
            g.op("Reshape", self.linear(x, n), g.ints(0, 0, heads, d)) for n in names
        )  # [b, s, h, d]
        q = g.op("Transpose", q, perm=[0, 2, 1, 3])
        k = g.op("Transpose", k, perm=[0, 2, 3, 1])
        v = g.op("Transpose", v, perm=[0, 2, 1, 3])
        scale = g.const(np.array(1.0 / np.sqrt(d), np.float32), "scale")
        probs = g.op("Softmax", g.op("Mul", g.op("MatMul", q, k), scale), axis=-1)
        context = g.op("Transpose", g.op("MatMul", probs, v), perm=[0, 2, 1, 3])
        context = g.op("Reshape", context, g.ints(0, 0, heads * d))
        out = self.linear(context, f"{block}.attention.output.dense")
        module = self.handle.module(f"{block}.attention.output.LayerNorm")
        return self.norm(g.op("Add", out, x), module)

    def ffn(self, x: str, block: str) -> str:
        g = self.g
        inner = g.op("Gelu", self.linear(x, f"{block}.intermediate.dense"))
        out = self.linear(inner, f"{block}.output.dense")
        return self.norm(g.op("Add", out, x), self.handle.module(f"{block}.output.LayerNorm"))


def emit_bert(
    handle: ModelHandle,
    weights: dict[str, Any],
    biases: dict[str, Any],
    gone_blocks: set[int],
    *,
    fmt: str,
    accuracy_level: int,
) -> tuple[Graph, dict[str, dict[str, int]]]:
    """The graph of ``handle``'s encoder with ``weights`` (and sliced ``biases``) by unit, the
    blocks ``gone_blocks`` left out; and the layout facts of its quantized units."""
    from onnx import TensorProto, helper

    check_bert(handle)
    g = Graph()
    bert = _Bert(handle, g, weights, biases, fmt=fmt, accuracy_level=accuracy_level)
    g.inputs.append(helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]))
    hidden = bert.embed("input_ids")
    for i in range(len(handle.blocks)):
        if i not in gone_blocks:
            block = f"{handle.blocks_prefix}.{i}"
            hidden = bert.ffn(bert.attention(hidden, block), block)
    g.nodes.append(helper.make_node("Identity", [hidden], ["last_hidden_state"]))
    size = handle.model.config.hidden_size
    g.outputs.append(
        helper.make_tensor_value_info(
            "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", size]
        )
    )
    return g, bert.facts


def build_bert_onnx(
    handle: ModelHandle,
    plan: Plan,
    path: str | Path,
    *,
    weights: Any = None,
    sparse: Any = None,
    symmetric: bool = False,
    fmt: str = "matmulnbits",
    accuracy_level: int = 0,
    structures: Sequence[tuple[Structure, StructuredWeight]] = (),
) -> Path:
    """Write ``handle``'s encoder compressed as ``plan`` to ``path`` (as
    :func:`presso.onnx_model.build_onnx` writes a Llama) and return it."""
    _check_format(fmt)
    gone_blocks, sublayers = _dropped(handle, plan.dropped)
    if sublayers:  # BERT blocks have no self_attn / mlp modules to drop
        raise PressoError(f"ONNX graph: a BERT block is dropped whole, not {sorted(sublayers)[0]}")
    resolved, biases = resolve_weights(
        handle, plan, weights=weights, sparse=sparse, symmetric=symmetric, structures=structures
    )
    g, facts = emit_bert(
        handle, resolved, biases, gone_blocks, fmt=fmt, accuracy_level=accuracy_level
    )
    return write_graph(handle, plan, path, g, facts, fmt=fmt, kv_cache=False)
