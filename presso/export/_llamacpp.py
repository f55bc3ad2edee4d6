"""llama.cpp: the ``llama-quantize`` command that gives every tensor the plan's bit width.

The file is a shell script: a comment header, then one ``llama-quantize`` command with one
``--tensor-type REGEX=TYPE`` per block Linear (continued over lines), the input GGUF, the output
GGUF and a base file type. Run it as ``sh FILE in-f16.gguf out.gguf``; the input must be an
F16/F32 GGUF of the dense model (``convert_hf_to_gguf.py --outtype f16``).

How bits become ggml types (``llama-quantize`` falls back, with only a warning, to a *wider*
type when a tensor's row length is not a multiple of the type's block, so the type is chosen
here from the layer's ``in_features`` instead):

* 8 bits: ``q8_0`` (blocks of 32, symmetric);
* 4/5 bits: ``q4_1``/``q5_1`` (asymmetric) or ``q4_0``/``q5_0`` (symmetric), blocks of 32,
  when the group size is 32 or the row is not a multiple of 256; else ``q4_k``/``q5_k``;
* 2/3/6 bits: ``q2_k``/``q3_k``/``q6_k``, which need rows that are multiples of 256 (refused
  otherwise, naming the layers: llama.cpp has no 32-block type of that width);
* dense layers, token embeddings and the output head: ``f16``.

Patterns are anchored, escaped regexes (``llama-quantize`` uses ``std::regex_search`` and the
first pattern that matches wins). Whole dropped blocks become ``--prune-layers`` (llama.cpp
renumbers the later blocks before matching, so patterns use the new numbers); dropped
attention/MLP sublayers and sparsity cannot be expressed and are refused, naming the layers.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from presso.errors import PressoError, layer_list
from presso.export._base import Exporter, Source, register
from presso.paths import atomic_write_text
from presso.plan import Plan

#: presso (Hugging Face Llama) module suffix -> GGUF tensor name inside ``blk.N``.
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_UNIT = re.compile(r"model\.layers\.(\d+)\.(.+)")
_BLOCK = re.compile(r"model\.layers\.(\d+)")

#: The tensor type that names each ``llama-quantize`` file type (its positional TYPE).
FILE_TYPES = {
    "q2_k": "Q2_K",
    "q3_k": "Q3_K_M",
    "q4_0": "Q4_0",
    "q4_1": "Q4_1",
    "q4_k": "Q4_K_M",
    "q5_0": "Q5_0",
    "q5_1": "Q5_1",
    "q5_k": "Q5_K_M",
    "q6_k": "Q6_K",
    "q8_0": "Q8_0",
}
DENSE_TYPE = "f16"


def gguf_tensor(unit: str, pruned: Sequence[int] = ()) -> str:
    """The GGUF tensor name of presso unit ``unit`` (``model.layers.3.mlp.down_proj`` ->
    ``blk.3.ffn_down.weight``), numbered as after ``--prune-layers pruned``."""
    match = _UNIT.fullmatch(unit)
    if match is None or match.group(2) not in GGUF_NAMES:
        raise PressoError(
            f"--format llamacpp: no GGUF tensor name is known for {unit}; only Llama-style "
            f"models (model.layers.N.{{{','.join(GGUF_NAMES)}}}) are supported"
        )
    block = int(match.group(1))
    block -= sum(p < block for p in pruned)
    return f"blk.{block}.{GGUF_NAMES[match.group(2)]}.weight"


def ggml_type(bits: int, group_size: int | None, symmetric: bool, in_features: int) -> str | None:
    """The ggml type for a layer at ``bits`` with rows of ``in_features`` weights, or None
    when llama.cpp has no type of that width that fits the row length."""
    if bits == 8:
        candidates = ["q8_0"]
    elif bits in (4, 5):
        legacy = f"q{bits}_{0 if symmetric else 1}"
        candidates = [legacy] if group_size == 32 else [f"q{bits}_k", legacy]
    elif bits in (2, 3, 6):
        candidates = [f"q{bits}_k"]
    else:
        return None
    return next((t for t in candidates if in_features % block_size(t) == 0), None)


def block_size(type_name: str) -> int:
    """Weights per block of a ggml type, from gguf's own table."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    return GGML_QUANT_SIZES[GGMLQuantizationType[type_name.upper()]][0]


def pruned_blocks(plan: Plan) -> list[int]:
    """Indices of the whole blocks the plan drops (sublayer drops are refused by check)."""
    return sorted(int(_BLOCK.fullmatch(t).group(1)) for t in plan.dropped)  # type: ignore[union-attr]


@register
class LlamaCppExporter(Exporter):
    name = "llamacpp"
    help = "llama.cpp `llama-quantize --tensor-type` command (shell script)"
    kinds = ("bits", "depth")

    def check(self, plan: Plan) -> None:
        super().check(plan)
        sublayers = [t for t in plan.dropped if _BLOCK.fullmatch(t) is None]
        if sublayers:
            raise PressoError(
                f"--format {self.name}: llama.cpp can drop whole blocks (--prune-layers) but not "
                f"attention or MLP sublayers: {layer_list(sublayers)}; choose another candidate"
            )
        for name in plan.entries():
            gguf_tensor(name)
        no_type = [n for n, u in plan.entries().items() if u.get("bits") == 7]
        if no_type:
            raise PressoError(
                f"--format {self.name}: llama.cpp has no 7-bit type, for {layer_list(no_type)}; "
                "search without that level (compress.levels)"
            )

    def write(self, plan: Plan, out: Path, source: Source) -> None:
        from presso.models import load_model

        handle = load_model(plan.about["model"])
        in_features = {u.name: u.shape[1] for u in handle.units}
        atomic_write_text(out, render_script(plan, tensor_types(plan, in_features)))


def tensor_types(plan: Plan, in_features: dict[str, int]) -> dict[str, str]:
    """GGUF tensor name -> ggml type for every kept block Linear of ``plan``; ``in_features``
    gives each unit's row length. Raises PressoError naming layers no type fits."""
    pruned = pruned_blocks(plan)
    types, misfits = {}, []
    for name, unit in plan.entries().items():
        block = int(_UNIT.fullmatch(name).group(1))  # type: ignore[union-attr]
        if block in pruned:
            continue
        if "bits" not in unit:
            types[gguf_tensor(name, pruned)] = DENSE_TYPE
            continue
        t = ggml_type(unit["bits"], unit["group_size"], unit["symmetric"], in_features[name])
        if t is None:
            misfits.append(f"{name} ({unit['bits']} bits, rows of {in_features[name]})")
        types[gguf_tensor(name, pruned)] = t  # type: ignore[assignment]
    if misfits:
        raise PressoError(
            "--format llamacpp: llama.cpp's 2/3/6-bit types (q2_k, q3_k, q6_k) need rows that "
            f"are multiples of 256, and these layers' are not: {layer_list(misfits)}; "
            "llama-quantize would silently widen them, so search without those levels"
        )
    if all(t == DENSE_TYPE for t in types.values()):
        raise PressoError("--format llamacpp: this candidate quantizes no layer")
    return types


def render_script(plan: Plan, types: dict[str, str]) -> str:
    """The shell script: header comments and one ``llama-quantize`` command."""
    counts = Counter(t for t in types.values() if t != DENSE_TYPE)
    base = FILE_TYPES[counts.most_common(1)[0][0]]
    pruned = pruned_blocks(plan)
    lines = [
        "#!/bin/sh",
        f"# llama-quantize command written by presso: run {plan.about['run']!r}, candidate "
        f"{plan.about['candidate']!r}, model {plan.about['model']}",
        "# usage: sh THIS_FILE MODEL-F16.gguf OUT.gguf  (input: an F16/F32 GGUF of the dense "
        "model, from convert_hf_to_gguf.py --outtype f16)",
        "# tensor types: "
        + ", ".join(f"{t} x{n}" for t, n in sorted(counts.items()))
        + f"; dense layers, embeddings and output head: {DENSE_TYPE}",
    ]
    if pruned:
        lines.append(
            f"# drops blocks {pruned} (--prune-layers; later blocks are renumbered, and the "
            "patterns below use the new numbers)"
        )
    args = [f"--token-embedding-type {DENSE_TYPE}", f"--output-tensor-type {DENSE_TYPE}"]
    if pruned:
        args.append("--prune-layers " + ",".join(map(str, pruned)))
    args += [f"--tensor-type '^{re.escape(name)}$={t}'" for name, t in types.items()]
    args.append(f'"${{1:-MODEL-F16.gguf}}" "${{2:-MODEL-presso.gguf}}" {base}')
    lines.append("llama-quantize \\\n  " + " \\\n  ".join(args))
    return "\n".join(lines) + "\n"
