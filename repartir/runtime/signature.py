"""Checking a call's arguments at ``.remote()``, as a local call would.

A call with missing, extra or doubled arguments raises ``TypeError`` where the user made it
-- at ``f.remote(...)``, ``Cls.remote(...)`` or ``handle.m.remote(...)`` -- instead of in the
worker, later, at ``get`` (or as an actor whose constructor failed).  Ray does the same with
``inspect.Signature.bind``.

``bind`` costs ~2 us (measured on the development VM), a sizeable part of submitting a tiny
task (~10 us), so an :class:`ArgCheck` decides from tables made once: a call without keyword
arguments needs two comparisons (~0.1 us), one with keywords a look-up per keyword and per
required parameter (~0.5 us).  Only a call found wrong is bound, to raise ``bind``'s own
message.

An :class:`ArgCheck` holds the signature as plain data (names, kinds, whether a default
exists) so that it travels with an actor handle to other processes; the ``Signature`` that
binds is rebuilt there, once.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

__all__ = ["ArgCheck", "arg_check", "method_arg_check"]

_P = inspect.Parameter
_POSITIONAL = (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)
_NO_LIMIT = 1 << 62


class _Default:
    """Stands for a parameter's default value: only its presence matters to ``bind``."""

    def __repr__(self) -> str:
        return "..."


_DEFAULT = _Default()


class ArgCheck:
    """The argument rules of one callable: ``check(args, kwargs)`` raises ``TypeError``
    where calling it with them would.

    Attributes:
        min_pos, max_pos: a call without keyword arguments and with ``min_pos <= len(args)
            <= max_pos`` positional ones is fine without binding (``max_pos`` is -1 when a
            keyword-only parameter is required, so such calls are always bound).
    """

    __slots__ = ("label", "params", "min_pos", "max_pos", "_most_positional",
                 "_least_positional", "_by_keyword", "_any_keyword", "_required", "_signature")

    def __init__(self, label: str, params: tuple[tuple[str, int, bool], ...]) -> None:
        self.label = label
        #: ``(name, inspect.Parameter kind as int, has a default)`` per parameter
        self.params = params
        positional = [p for p in params if p[1] in _POSITIONAL]
        self.min_pos = sum(1 for p in positional if not p[2])
        self.max_pos = self._most_positional = _NO_LIMIT \
            if any(p[1] == _P.VAR_POSITIONAL for p in params) else len(positional)
        if any(p[1] == _P.KEYWORD_ONLY and not p[2] for p in params):
            self.max_pos = -1
        #: positional-only parameters without default: never given by keyword
        self._least_positional = sum(1 for p in params if p[1] == _P.POSITIONAL_ONLY
                                     and not p[2])
        #: name -> position (kw-only: beyond every position) of what a keyword may name
        self._by_keyword = {p[0]: (i if p[1] != _P.KEYWORD_ONLY else _NO_LIMIT)
                            for i, p in enumerate(params)
                            if p[1] in (_P.POSITIONAL_OR_KEYWORD, _P.KEYWORD_ONLY)}
        self._any_keyword = any(p[1] == _P.VAR_KEYWORD for p in params)
        #: (position, name) of the parameters without default that a keyword may name
        self._required = tuple((self._by_keyword[p[0]], p[0]) for p in params
                               if not p[2] and p[0] in self._by_keyword)
        self._signature: inspect.Signature | None = None

    def check(self, args: tuple, kwargs: dict) -> None:
        """Raises:
            TypeError: the arguments do not fit the signature (the message names the
                callable, its signature and what is wrong, in ``bind``'s words).
        """
        n = len(args)
        if not kwargs:
            if not self.min_pos <= n <= self.max_pos:
                self.bind(args, kwargs)
            return
        if not self._least_positional <= n <= self._most_positional:
            self.bind(args, kwargs)
            return
        by_keyword = self._by_keyword
        for name in kwargs:
            i = by_keyword.get(name)
            if (i is None and not self._any_keyword) or (i is not None and i < n):
                self.bind(args, kwargs)  # unknown, or also given by position
                return
        for i, name in self._required:
            if i >= n and name not in kwargs:
                self.bind(args, kwargs)
                return

    def bind(self, args: tuple, kwargs: dict) -> None:
        sig = self._signature
        if sig is None:
            sig = self._signature = inspect.Signature(
                [_P(name, kind, default=_DEFAULT if has_default else _P.empty)
                 for name, kind, has_default in self.params])
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.label}.remote(): {exc}; the signature is "
                            f"{self.label}{sig}") from None

    def __reduce__(self):
        return ArgCheck, (self.label, self.params)

    def __repr__(self) -> str:
        return f"<ArgCheck {self.label}>"


class _AcceptsAll(ArgCheck):
    """The check of a callable whose signature cannot be read: the call is not checked."""

    __slots__ = ()

    def check(self, args: tuple, kwargs: dict) -> None:
        return None

    def __reduce__(self):
        return _accepts_all, ()


def _accepts_all() -> ArgCheck:
    return _ANYTHING


_ANYTHING = _AcceptsAll("", (("args", int(_P.VAR_POSITIONAL), False),
                             ("kwargs", int(_P.VAR_KEYWORD), False)))


def _from_signature(label: str, sig: inspect.Signature, drop_first: bool) -> ArgCheck:
    params = list(sig.parameters.values())
    if drop_first and params and params[0].kind in _POSITIONAL:
        params = params[1:]  # self (or cls); a first *args takes it instead
    return ArgCheck(label, tuple((p.name, int(p.kind), p.default is not _P.empty)
                                 for p in params))


def arg_check(fn: Callable, label: str) -> ArgCheck:
    """The :class:`ArgCheck` of a function, callable object or class (its constructor).
    Wrappers are taken as they are (``__wrapped__`` is not followed: a decorator may change
    what a function accepts).  A callable without a readable signature (some builtins)
    gets a check that accepts everything."""
    try:
        sig = inspect.signature(fn, follow_wrapped=False)
    except (TypeError, ValueError):
        return _ANYTHING
    return _from_signature(label, sig, drop_first=False)


def method_arg_check(cls: type, name: str, label: str) -> ArgCheck:
    """The :class:`ArgCheck` of method ``name`` of ``cls`` called on an instance: ``self``
    (or ``cls`` of a classmethod) is not counted, nor anything of a staticmethod."""
    attr: Any = inspect.getattr_static(cls, name, None)
    if isinstance(attr, staticmethod):
        return arg_check(attr.__func__, label)
    if isinstance(attr, classmethod) or inspect.isfunction(attr):
        fn = attr.__func__ if isinstance(attr, classmethod) else attr
        try:
            sig = inspect.signature(fn, follow_wrapped=False)
        except (TypeError, ValueError):
            return _ANYTHING
        return _from_signature(label, sig, drop_first=True)
    return _ANYTHING  # another descriptor: what it returns on an instance is unknown here
