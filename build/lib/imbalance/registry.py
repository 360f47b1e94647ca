"""Name -> constructor registries (one per kind of component).

    LOSSES = Registry("loss")

    @LOSSES.register("CrossEntropy")
    class CrossEntropy(nn.Module): ...

    LOSSES.get("CrossEntropy")      # the class
    LOSSES.build("CrossEntropy", **kwargs)

An unknown name raises :class:`imbalance.errors.UnknownNameError` (a ValueError) whose message
lists every valid name.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional

from .errors import UnknownNameError


class Registry:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, Callable[..., Any]] = {}
        self._aliases: Dict[str, str] = {}

    def register(self, name: Optional[str] = None, *, aliases: tuple = ()) -> Callable:
        """Decorator: register ``obj`` under ``name`` (default: its ``__name__``)."""

        def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
            key = name or obj.__name__
            if key in self._items or key in self._aliases:
                raise KeyError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = obj
            for alias in aliases:
                self._aliases[alias] = key
            return obj

        return deco

    def add(self, name: str, obj: Callable[..., Any], *, aliases: tuple = ()) -> None:
        self.register(name, aliases=aliases)(obj)

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases."""
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}; valid {self.kind} names: {', '.join(self.names(True))}"
        )

    def get(self, name: str) -> Callable[..., Any]:
        return self._items[self.canonical(name)]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)

    def names(self, with_aliases: bool = False) -> List[str]:
        out = list(self._items)
        if with_aliases:
            out += list(self._aliases)
        return out

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
