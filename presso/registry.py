"""One registry of named plug-ins (strategies, profilers, cost models, export formats,
compression operators, knob kinds): register by name, refusing duplicates; list; make, with an
error that names the choices."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Plug-ins of one role, by name.

    what: the role as a user reads it in an error (``strategy``, ``backend``, ``export format``).
    error: the exception an unknown name raises (``PressoError`` where a user typed the name).
    ordered: ``available()`` in registration order instead of sorted.
    choices: how the available names are listed in an unknown name's error (default: joined).
    """

    def __init__(
        self,
        what: str,
        *,
        error: type[Exception] = ValueError,
        ordered: bool = False,
        choices: Callable[[], str] | None = None,
    ) -> None:
        self.what = what
        self.error = error
        self.ordered = ordered
        self._choices = choices
        self._items: dict[str, T] = {}

    def register(self, item: T, name: str | None = None) -> T:
        """Add ``item`` under ``name`` (default: its ``name`` attribute); usable as a class
        decorator. Refuses a name given twice."""
        name = name if name is not None else getattr(item, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"{_label(item)} needs a non-empty class attribute `name`")
        if name in self._items:
            raise ValueError(
                f"a {self.what} named {name!r} is already registered ({_label(self._items[name])})"
            )
        self._items[name] = item
        return item

    def available(self) -> list[str]:
        """The registered names (sorted, or in registration order when ``ordered``)."""
        return list(self._items) if self.ordered else sorted(self._items)

    def get(self, name: str) -> T:
        """The item registered as ``name``; an unknown name's error lists the choices."""
        if name not in self._items:
            choices = self._choices() if self._choices else ", ".join(self.available())
            raise self.error(f"unknown {self.what} {name!r}; available: {choices}")
        return self._items[name]

    def make(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``get(name)(*args, **kwargs)``: an instance of the registered class."""
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def values(self) -> list[T]:
        """The registered items, in the order of :meth:`available`."""
        return [self._items[n] for n in self.available()]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.available())

    def __len__(self) -> int:
        return len(self._items)


def _label(item: object) -> str:
    return getattr(item, "__qualname__", None) or type(item).__qualname__
