"""One registry helper for every extension point: objectives, selection policies, datasets,
encoders and strategies each keep a :class:`Registry` of their entries (no torch, no flwr here).

Every extension point registers in one style: ``register_<kind>(name, **facts)`` applied to what it
registers, as a decorator (``@register_objective("mnl")``, ``@register_dataset("hapt", description=...)``)
or called on a lazy reference (a built-in strategy's ``"module:Class"``); :func:`registered_name`
checks the name. An entry is whatever the extension point needs (a class, or a small dataclass that carries the
entry's facts, such as a dataset's loader and whether the user owns its files). Names are unique per
registry; registering the same object again (a module imported twice) is allowed.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind, by name.

    Parameters
    ----------
    kind:
        What the entries are, for messages (``"objective"``, ``"selection policy"``, ``"dataset"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` as ``name`` and return it.

        Raises ``ValueError`` when ``name`` is empty or another entry already has it (the same
        object, or a class of the same qualified name after a module reload, may register again).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty string name, got {name!r}")
        previous = self._entries.get(name)
        if previous is not None and not _same(previous, entry):
            raise ValueError(f"{self.kind} name {name!r} is already registered by {_qualified(previous)}")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """``@registry.decorator(name)``: :meth:`add` the decorated object under ``name``."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> T:
        """The entry registered as ``name``; raises ``ValueError`` naming the nearest name and all of them."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(
                f"unknown {self.kind} {name!r}{did_you_mean(str(name), self.names())} Valid: {', '.join(self.names())}"
            ) from None

    def remove(self, name: str) -> T:
        """Unregister ``name`` and return its entry (a test that registered an extension cleans up
        with it); raises ``ValueError`` as :meth:`get` does for an unknown name."""
        entry = self.get(name)
        del self._entries[name]
        return entry

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` pairs, sorted by name."""
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def registered_name(decorator: str, name: object) -> str:
    """The ``name`` that ``register_<kind>(name, **facts)`` got, checked (fedmm's one registration
    style: the name first, the facts as keywords, applied to what it registers).

    Parameters
    ----------
    decorator:
        The registering function's name, for messages (``"register_objective"``).
    name:
        What it got first. A class or function there is the old bare ``@register_<kind>`` form,
        refused naming the new one.
    """
    if callable(name):
        raise TypeError(
            f'{decorator} takes the registered name first: write @{decorator}("<name>") above '
            f"{getattr(name, '__qualname__', name)} (every extension registers as register_<kind>(name, **facts))"
        )
    if not isinstance(name, str) or not name:
        raise ValueError(f"{decorator} needs a non-empty string name, got {name!r}")
    return name


def did_you_mean(word: str, candidates: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``candidates``, else ``"."`` (ends a message's clause)."""
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else "."


def _same(a: object, b: object) -> bool:
    """Equal entries, or classes/functions of one qualified name (a module imported again)."""
    if a is b or (not callable(a) and a == b):
        return True
    return callable(a) and callable(b) and _qualified(a) == _qualified(b)


def _qualified(entry: object) -> str:
    return f"{getattr(entry, '__module__', '')}.{getattr(entry, '__qualname__', repr(entry))}"
