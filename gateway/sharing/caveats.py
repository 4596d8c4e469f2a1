"""The caveat language of a share, and one typed checker per caveat key.

A caveat is one ASCII line ``<key> <operator> <value>``; the grammar is
exactly this table and nothing else:

==============  =========================================  ==================
key             form                                       holds when
==============  =========================================  ==================
``patient``     ``patient = <pseudonym, 64 hex>``          the resource's patient is it
``study``       ``study = <study UID>``                    the resource is that study
``action``      ``action in view[,measure]``               the action asked is listed
``expires``     ``expires < YYYY-MM-DDTHH:MM:SSZ``         now is before it
``not-before``  ``not-before YYYY-MM-DDTHH:MM:SSZ``        now is at or after it
``client-ip``   ``client-ip in <CIDR>``                    the client address is inside
``delegate``    ``delegate = <share id, 24 hex>``          checked by the chain (services)
==============  =========================================  ==================

Each caveat is parsed by the checker of its own key and is satisfied only by
that checker: there is no general callback that could accept a caveat it does
not understand (pymacaroons 0.13 ORs its general callbacks, so one lenient
callback satisfies every caveat). A key not in the table, or a value that does
not parse, makes the whole token malformed. Caveats conjoin: two ``expires``
caveats mean the earlier one, two different ``study`` caveats match nothing.
"""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

MAX_CAVEAT_BYTES = 128
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class TokenMalformed(ValueError):
    """Raised for every token that is not a well-formed share token.

    ``reason`` is a short code for the audit log; the message never quotes
    the token (it is a bearer secret).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ShareAction(StrEnum):
    VIEW = "view"
    MEASURE = "measure"


@dataclass(frozen=True)
class Context:
    """What a caveat is checked against. ``None`` never satisfies a caveat that needs it."""

    now: dt.datetime
    client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    action: ShareAction | None = None
    patient: str | None = None
    study: str | None = None


def _equal(left: str, right: str | None) -> bool:
    if right is None:
        return False
    return hmac.compare_digest(left.encode(), right.encode())


def time_format(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime(TIME_FORMAT)


def _time_parse(text: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text).astimezone(dt.UTC)
    except ValueError as exc:
        raise TokenMalformed("caveat syntax") from exc


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_FAR_FUTURE = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
_NOWHERE = ipaddress.IPv4Network("0.0.0.0/32")


@dataclass(frozen=True)
class Caveat:
    """A parsed caveat. ``session`` caveats must hold on every request, whatever the resource."""

    key: str
    session: bool = False

    def holds(self, context: Context) -> bool:  # pragma: no cover - every subclass overrides
        return False

    def text(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


@dataclass(frozen=True)
class PatientIs(Caveat):
    pseudonym: str = ""

    def holds(self, context: Context) -> bool:
        return _equal(self.pseudonym, context.patient)

    def text(self) -> str:
        return f"patient = {self.pseudonym}"


@dataclass(frozen=True)
class StudyIs(Caveat):
    uid: str = ""

    def holds(self, context: Context) -> bool:
        return _equal(self.uid, context.study)

    def text(self) -> str:
        return f"study = {self.uid}"


@dataclass(frozen=True)
class ActionIn(Caveat):
    actions: frozenset[ShareAction] = frozenset()

    def holds(self, context: Context) -> bool:
        return context.action is not None and context.action in self.actions

    def text(self) -> str:
        return "action in " + ",".join(a.value for a in ShareAction if a in self.actions)


@dataclass(frozen=True)
class ExpiresBefore(Caveat):
    moment: dt.datetime = _EPOCH

    def holds(self, context: Context) -> bool:
        return context.now < self.moment

    def text(self) -> str:
        return f"expires < {time_format(self.moment)}"


@dataclass(frozen=True)
class NotBefore(Caveat):
    moment: dt.datetime = _FAR_FUTURE

    def holds(self, context: Context) -> bool:
        return context.now >= self.moment

    def text(self) -> str:
        return f"not-before {time_format(self.moment)}"


@dataclass(frozen=True)
class ClientIn(Caveat):
    network: ipaddress.IPv4Network | ipaddress.IPv6Network = _NOWHERE

    def holds(self, context: Context) -> bool:
        address = context.client_ip
        return (address is not None and address.version == self.network.version
                and address in self.network)

    def text(self) -> str:
        return f"client-ip in {self.network}"


@dataclass(frozen=True)
class Delegate(Caveat):
    """Names the forwarded share this token was derived for; the chain check enforces it."""

    share_id: str = ""

    def holds(self, context: Context) -> bool:
        return True

    def text(self) -> str:
        return f"delegate = {self.share_id}"


_UID = r"[0-9]{1,64}(?:\.[0-9]{1,64}){0,32}"
_SHARE_ID = r"[0-9a-f]{24}"
_TIME = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z"


def _patient(value: str) -> Caveat:
    return PatientIs("patient", pseudonym=value)


def _study(value: str) -> Caveat:
    if len(value) > 64:
        raise TokenMalformed("caveat syntax")
    return StudyIs("study", uid=value)


def _action(value: str) -> Caveat:
    names = value.split(",")
    if len(set(names)) != len(names):
        raise TokenMalformed("caveat syntax")
    return ActionIn("action", actions=frozenset(ShareAction(name) for name in names))


def _expires(value: str) -> Caveat:
    return ExpiresBefore("expires", session=True, moment=_time_parse(value))


def _not_before(value: str) -> Caveat:
    return NotBefore("not-before", session=True, moment=_time_parse(value))


def _client(value: str) -> Caveat:
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise TokenMalformed("caveat syntax") from exc
    return ClientIn("client-ip", session=True, network=network)


def _delegate(value: str) -> Caveat:
    return Delegate("delegate", session=True, share_id=value)


# key -> (whole-line pattern, parser of the captured value)
CHECKERS: dict[str, tuple[re.Pattern[str], Callable[[str], Caveat]]] = {
    "patient": (re.compile(r"patient = ([0-9a-f]{64})"), _patient),
    "study": (re.compile(rf"study = ({_UID})"), _study),
    "action": (re.compile(r"action in ((?:view|measure)(?:,(?:view|measure))?)"), _action),
    "expires": (re.compile(rf"expires < ({_TIME})"), _expires),
    "not-before": (re.compile(rf"not-before ({_TIME})"), _not_before),
    "client-ip": (re.compile(r"client-ip in ([0-9A-Fa-f:.]{2,43}/[0-9]{1,3})"), _client),
    "delegate": (re.compile(rf"delegate = ({_SHARE_ID})"), _delegate),
}


def caveat_parse(raw: bytes) -> Caveat:
    """Parse one first-party caveat; raises :class:`TokenMalformed` for anything else."""
    if len(raw) > MAX_CAVEAT_BYTES:
        raise TokenMalformed("caveat too long")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise TokenMalformed("caveat syntax") from exc
    key = text.split(" ", 1)[0]
    checker = CHECKERS.get(key)
    if checker is None:
        raise TokenMalformed("unknown caveat")
    pattern, parse = checker
    match = pattern.fullmatch(text)
    if match is None:
        raise TokenMalformed("caveat syntax")
    return parse(match.group(1))
