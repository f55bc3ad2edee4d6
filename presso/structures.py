"""Which Linears of a model form the structures structured pruning removes: attention heads
(whole KV groups under grouped-query attention) and FFN intermediate channels.

A :class:`Structure` is one attention or one FFN of one block. Its *consumer* is the unit whose
input columns are the structures (``o_proj`` / ``down_proj``; BERT: ``attention.output.dense`` /
``output.dense``): the OBS operator prunes and updates that unit
(:mod:`presso.compress._structured`). Its *producers* are the units whose output rows line up
with those columns (``q_proj`` / ``gate_proj``, ``up_proj``; BERT: ``query``, ``key``,
``value`` / ``intermediate.dense``), and, under GQA, ``k_proj``/``v_proj`` lose one KV head's
rows (``head_dim``) per structure. A runtime that builds a really smaller model slices them all.

A level is the percent of structures kept, the same grid for every attention and FFN, so that
"the same fraction everywhere" is one level: :meth:`Structure.kept` rounds it to whole
structures (SmolLM2's 3 KV groups at 75 % keep 2, at 25 % keep 1), never fewer than one
(removing a whole attention or FFN is the depth kind's job).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from presso.errors import PressoError

#: What a structure is: the heads of an attention, or the channels of an FFN.
HEADS, FFN = "heads", "ffn"


@dataclass(frozen=True)
class Structure:
    """One attention's heads or one FFN's channels.

    what: ``heads`` or ``ffn``. block: the block index. consumer: the unit pruned by input
    structures. producers: units sliced by the consumer's kept columns (as rows). kv: units
    sliced by ``kv_rows`` rows per kept structure (k/v under GQA; empty otherwise).
    count: structures (KV groups, heads without GQA, or channels). group_size: consumer columns
    per structure. heads_per: query heads per structure (1 for channels). params: weights of
    all its Linears (what keeping everything keeps).
    """

    what: str
    block: int
    consumer: str
    producers: tuple[str, ...]
    kv: tuple[str, ...]
    count: int
    group_size: int
    kv_rows: int
    heads_per: int
    params: int

    def kept(self, percent: float) -> int:
        """Structures kept at level ``percent`` (see :func:`kept_structures`)."""
        return kept_structures(percent, self.count)

    def kept_params(self, percent: float) -> int:
        """Weights left at level ``percent`` (exact: every structure holds as many)."""
        return self.kept(percent) * (self.params // self.count)

    def describe(self, percent: float) -> str:
        """``6/9 heads (2/3 KV)`` or ``1152/1536``: what a level keeps."""
        n = self.kept(percent)
        if self.what == FFN:
            return f"{n}/{self.count}"
        heads = f"{n * self.heads_per}/{self.count * self.heads_per}"
        return f"{heads} ({n}/{self.count} KV)" if self.kv else heads


def kept_structures(percent: float, count: int) -> int:
    """Of ``count`` structures, those a level of ``percent`` keeps: rounded half up, at least
    one."""
    return max(1, min(count, int(percent * count / 100 + 0.5)))


def model_structures(handle: Any) -> list[Structure]:
    """Every block's attention and FFN of ``handle``'s model, in block order (attention first);
    a PressoError for an architecture presso cannot prune structurally (not Llama or BERT)."""
    config = handle.model.config
    model_type = getattr(config, "model_type", None)
    if model_type == "llama":
        return [s for i in range(len(handle.blocks)) for s in _llama(handle, i)]
    if model_type == "bert":
        return [s for i in range(len(handle.blocks)) for s in _bert(handle, i)]
    raise PressoError(
        f"structured pruning: {handle.name} is a {model_type or type(handle.model).__name__} "
        "model; presso prunes heads and FFN channels of Llama-family and BERT models only"
    )


def consumers(handle: Any) -> dict[str, Structure]:
    """The structures of ``handle`` (a ModelHandle) by their consumer unit."""
    return {s.consumer: s for s in model_structures(handle)}


def _params(handle: Any, units: tuple[str, ...]) -> int:
    return sum(handle.linear(u).weight.numel() for u in units)


def _llama(handle: Any, i: int) -> list[Structure]:
    config, block = handle.model.config, f"{handle.blocks_prefix}.{i}"
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = handle.blocks[i].self_attn.head_dim
    attn, mlp = f"{block}.self_attn", f"{block}.mlp"
    gqa = kv_heads < heads
    q, k, v, o = (f"{attn}.{n}_proj" for n in "qkvo")
    kv = (k, v) if gqa else ()
    producers = (q,) if gqa else (q, k, v)
    per = heads // kv_heads if gqa else 1
    count = kv_heads if gqa else heads
    gate, up, down = (f"{mlp}.{n}_proj" for n in ("gate", "up", "down"))
    attention = Structure(
        HEADS,
        i,
        o,
        producers,
        kv,
        count,
        group_size=per * head_dim,
        kv_rows=head_dim,
        heads_per=per,
        params=_params(handle, (q, k, v, o)),
    )
    ffn = Structure(
        FFN,
        i,
        down,
        (gate, up),
        (),
        config.intermediate_size,
        group_size=1,
        kv_rows=0,
        heads_per=1,
        params=_params(handle, (gate, up, down)),
    )
    return [attention, ffn]


def _bert(handle: Any, i: int) -> list[Structure]:
    config, block = handle.model.config, f"{handle.blocks_prefix}.{i}"
    heads = config.num_attention_heads
    head_dim = config.hidden_size // heads
    qkv = tuple(f"{block}.attention.self.{n}" for n in ("query", "key", "value"))
    o = f"{block}.attention.output.dense"
    inter, out = f"{block}.intermediate.dense", f"{block}.output.dense"
    attention = Structure(
        HEADS,
        i,
        o,
        qkv,
        (),
        heads,
        group_size=head_dim,
        kv_rows=head_dim,
        heads_per=1,
        params=_params(handle, (*qkv, o)),
    )
    ffn = Structure(
        FFN,
        i,
        out,
        (inter,),
        (),
        config.intermediate_size,
        group_size=1,
        kv_rows=0,
        heads_per=1,
        params=_params(handle, (inter, out)),
    )
    return [attention, ffn]
