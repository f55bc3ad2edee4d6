"""Bytes of a compressed linear layer's weights, from the packed formats (no measurement needed).

On disk (the format presso writes, and the size budgets price): ``bits`` per kept weight,
a 16-bit scale and a 16-bit zero point per group, and a 1-bit mask per weight of a sparse
layer; a dense layer is 16 bits per weight. In memory on a backend the codes sit in the
kernel's container (a 3-bit layer runs as 4-bit on most runtimes) and unstructured zeros
are stored unless the backend has a sparse kernel.
"""

from __future__ import annotations

from presso.profilers._base import DENSE_BITS, LinearOp
from presso.spaces._size import packed_bytes


def disk_bytes(op: LinearOp) -> float:
    """Bytes of ``op``'s weight in presso's packed format."""
    return packed_bytes(op.out_features, op.in_features, op.bits, op.sparsity, op.group_size)


def memory_bytes(op: LinearOp, *, carrier_bits: int | None = None, sparse: bool = False) -> float:
    """Bytes resident while a backend runs ``op``: codes in ``carrier_bits`` containers (default
    the op's bits), zeros stored unless ``sparse`` (a CSR kernel: values + 32-bit column indices)."""
    params = op.out_features * op.in_features
    bits = min(carrier_bits or op.bits, DENSE_BITS)
    if sparse and op.sparsity > 0:
        kept = params * (1 - op.sparsity / 100)
        total = kept * (bits + 32) + (op.out_features + 1) * 32
    else:
        total = params * bits
    if op.bits < DENSE_BITS:
        total += params / (op.group_size or op.in_features) * 32
    return total / 8
