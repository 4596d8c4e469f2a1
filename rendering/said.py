"""Words for the reader that are translated where they are shown, not where they are made.

An error a reader is told about is often made far from the reader: in a render worker (another
process, maybe another host, with no reader and no language, often without Django set up), or
before the same words go into the audit trail and the log, which stay English. So such an error
keeps its English template, a gettext msgid marked with ``gettext_noop`` where it is raised,
and its named values: ``str()`` is the English (logs, audit details, tests), :func:`said` the
words in the language active where they are shown (the consumer's reader, the request's), and
the template and values cross between processes as plain data (:meth:`Said.wire`).

    raise RenderError(gettext_noop("the box reaches 1 to %(most)g mm from its centre"), most=MAX_BOX_MM)

A value may itself be said (another error's words): it is translated with the template around it.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from django.utils.translation import gettext

Value = str | int | float | bool | None


@dataclass(frozen=True)
class Said:
    """A template (English, a msgid) and its named values (plain data, or words said)."""

    template: str
    params: Mapping[str, Value | Said] = field(default_factory=dict)

    @classmethod
    def of(cls, value: object) -> Said:
        """Words from anything a reader may be told: a :class:`SaidError`'s own, else its text."""
        if isinstance(value, Said):
            return value
        if isinstance(value, SaidError):
            return value.said
        return cls(str(value))

    @classmethod
    def made(cls, template: str, params: Mapping[str, object]) -> Said:
        return cls(template, {name: _plain(value) for name, value in params.items()})

    @classmethod
    def joined(cls, separator: str, items: Iterable[object]) -> Said:
        """Several words said one after another (each translated on its own), ``separator`` between."""
        values = [_plain(item) for item in items]
        return cls(separator.join(f"%({n})s" for n in range(len(values))),
                   {str(n): value for n, value in enumerate(values)})

    def __hash__(self) -> int:
        return hash((self.template, tuple(sorted(self.params.items()))))

    def __str__(self) -> str:
        return _formatted(self.template, {name: str(value) if isinstance(value, Said) else value
                                          for name, value in self.params.items()})

    def translated(self) -> str:
        """The words in the active language; the English where a translation does not fit its values."""
        values = {name: value.translated() if isinstance(value, Said) else value
                  for name, value in self.params.items()}
        try:  # gettext("") would be the catalogue's header
            return _formatted(gettext(self.template) if self.template else "", values)
        except (KeyError, ValueError, TypeError):
            return _formatted(self.template, values)

    def wire(self) -> dict[str, Any]:
        """Plain data (pickle, msgpack and JSON carry it) that :meth:`from_wire` turns back."""
        return {"template": self.template,
                "params": {name: value.wire() if isinstance(value, Said) else value
                           for name, value in self.params.items()}}

    @classmethod
    def from_wire(cls, wire: Mapping[str, Any]) -> Said:
        params = wire.get("params") or {}
        return cls(str(wire.get("template", "")),
                   {str(name): cls.from_wire(value) if isinstance(value, Mapping) else _plain(value)
                    for name, value in params.items()})


class SaidError(Exception):
    """An error whose words are meant for the reader; ``str()`` is the English.

    ``SaidError(gettext_noop("... %(name)s ..."), name=value)``; with no values the template is
    the text as it stands (no ``%`` formatting).
    """

    def __init__(self, message: str | Said = "", /, **params: Any) -> None:
        self.said = message if isinstance(message, Said) else Said.made(str(message), params)
        super().__init__(str(self.said))

    @classmethod
    def from_error(cls, error: BaseException) -> Self:
        """This kind of error with another's words (a wrapped error keeps them translatable)."""
        return cls(Said.of(error))

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuilt, (type(self), self.said.wire(), self.__dict__)


def said(error: BaseException | Said | str) -> str:
    """What the reader is told, in the active language (another error: its text as it stands)."""
    if isinstance(error, Said):
        return error.translated()
    if isinstance(error, SaidError):
        return error.said.translated()
    return str(error)


def _rebuilt(kind: type[SaidError], wire: Mapping[str, Any], state: dict[str, Any]) -> SaidError:
    error = kind.__new__(kind)
    SaidError.__init__(error, Said.from_wire(wire))
    error.__dict__.update({**state, "said": error.said})
    return error


def _plain(value: object) -> Value | Said:
    if value is None or isinstance(value, str | bool | Said):
        return value
    if isinstance(value, BaseException):
        return Said.of(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return str(value)


def _formatted(template: str, values: Mapping[str, object]) -> str:
    return template % values if values else template
