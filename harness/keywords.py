"""``-k`` expressions as pytest reads them (``ds3 and not (kwarg or auto)``): names match as case-insensitive substrings
of a scenario id, combined with ``and``, ``or``, ``not`` and parentheses. Written here rather than imported from
pytest's private ``_pytest.mark.expression``, so the CLI, the worker and the pytest face select alike without reaching
into pytest's internals (which change between releases). Data only: no torch, no accelerate."""
from __future__ import annotations

import re
from typing import Callable

_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")
Matcher = Callable[[str], bool]


class ExpressionError(ValueError):
    """A ``-k`` expression that cannot be read; the message says where."""


def compile_expression(text: str) -> Matcher:
    """A function of a scenario id (lowercase comparison) that says whether ``text`` selects it."""
    tokens = [match.group(1) for match in _TOKEN.finditer(text)]
    position = 0

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> str:
        nonlocal position
        if position >= len(tokens):
            raise ExpressionError(f"-k {text!r}: the expression ends too early")
        position += 1
        return tokens[position - 1]

    def disjunction() -> Matcher:
        left = conjunction()
        while peek() == "or":
            take()
            left = (lambda a, b: lambda s: a(s) or b(s))(left, conjunction())
        return left

    def conjunction() -> Matcher:
        left = negation()
        while peek() == "and":
            take()
            left = (lambda a, b: lambda s: a(s) and b(s))(left, negation())
        return left

    def negation() -> Matcher:
        if peek() == "not":
            take()
            inner = negation()
            return lambda s: not inner(s)
        return atom()

    def atom() -> Matcher:
        token = take()
        if token == "(":
            inner = disjunction()
            if take() != ")":
                raise ExpressionError(f"-k {text!r}: a '(' is not closed")
            return inner
        if token in (")", "and", "or", "not"):
            raise ExpressionError(f"-k {text!r}: expected a name, got {token!r}")
        name = token.lower()
        return lambda s: name in s.lower()

    if not tokens:
        raise ExpressionError("-k: an empty expression")
    matcher = disjunction()
    if position != len(tokens):
        raise ExpressionError(f"-k {text!r}: unexpected {tokens[position]!r}")
    return matcher
