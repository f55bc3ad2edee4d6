"""Calibration Hessians ``H = (2/n) Σ x xᵀ`` of Linear layers' inputs, collected by forward hooks.

For a Linear layer ``y = x Wᵀ`` the squared output error of a perturbed weight is
``tr(ΔW H ΔWᵀ) / 2`` with this ``H``: it is what GPTQ and :func:`relative_output_error` need.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch


class HessianAccumulator:
    """Running ``H = (2/n) Σ_t x_t x_tᵀ`` over ``n`` input vectors (tokens) of ``in_features``.

    Kept as a running mean (as GPTQ does), so its scale does not depend on how the calibration
    data was split into batches and float32 accumulation does not grow with ``n``.
    """

    def __init__(self, in_features: int, *, device: torch.device | str | None = None) -> None:
        if in_features < 1:
            raise ValueError(f"in_features must be positive, got {in_features}")
        self.in_features = in_features
        self._h = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self._count = 0

    @property
    def count(self) -> int:
        """Input vectors (tokens) seen so far."""
        return self._count

    @property
    def hessian(self) -> torch.Tensor:
        """``[in, in]`` float32 (zeros before any input); shared, do not modify in place."""
        return self._h

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        """Fold in inputs ``x`` ``[..., in_features]``; every leading index is one token."""
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"input has {x.shape[-1]} features, the accumulator expects {self.in_features}"
            )
        x = x.detach().reshape(-1, self.in_features).to(self._h.device, torch.float32)
        n_new = x.shape[0]
        if n_new == 0:
            return
        total = self._count + n_new
        # H_total = (n_old/total) H_old + (2/total) Σ_new x xᵀ
        self._h.mul_(self._count / total)
        self._h.addmm_(x.T, x, alpha=2.0 / total)
        self._count = total


def hessian_hooks(
    modules: dict[str, torch.nn.Linear],
) -> tuple[dict[str, HessianAccumulator], Callable[[], None]]:
    """Accumulate each module's input Hessian during forwards; returns ``(accumulators, remove)``.

    The dict fills in as modules are first called; call ``remove()`` to detach the hooks.
    Modules called one after another on the *same* input tensor (q/k/v projections, gate/up)
    share one accumulator, bound on their first call: ``accumulators["q"] is accumulators["k"]``.
    If such a module later gets a different input, the hook raises rather than mix inputs.
    """
    accumulators: dict[str, HessianAccumulator] = {}
    owner: dict[str, str] = {}  # module name -> name of the module whose accumulator it uses
    # The last input folded in: a weak ref because an id can be reused once a tensor is freed,
    # and its version counter because an in-place edit changes the values behind the same object.
    last_ref: weakref.ref[torch.Tensor] | None = None
    last_version = -1
    last_owner = ""

    def same_as_last(x: torch.Tensor) -> bool:
        return last_ref is not None and last_ref() is x and last_version == x._version

    def hook(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        nonlocal last_ref, last_version, last_owner
        x = args[0] if args else kwargs["input"]
        if name not in owner:
            if same_as_last(x):
                owner[name] = last_owner
                accumulators[name] = accumulators[last_owner]
                return
            owner[name] = name
            accumulators[name] = HessianAccumulator(modules[name].in_features, device=x.device)
        if owner[name] != name:
            if not (same_as_last(x) and last_owner == owner[name]):
                raise RuntimeError(
                    f"module {name!r} shared its input with {owner[name]!r} on its first call "
                    "but got a different input now; hessian_hooks cannot split their Hessian"
                )
            return
        accumulators[name].add(x)
        last_ref, last_version, last_owner = weakref.ref(x), x._version, name

    handles = [
        module.register_forward_pre_hook(
            lambda _module, args, kwargs, name=name: hook(name, args, kwargs), with_kwargs=True
        )
        for name, module in modules.items()
    ]

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return accumulators, remove
