"""Share tokens: macaroons built with pymacaroons, verified by this module alone.

pymacaroons 0.13 is used to build and (de)serialise macaroons; its
``Verifier`` is not used, because it ORs general caveat callbacks, answers an
unmet caveat with the same error as a forgery, accepts unused discharges,
recurses on discharge cycles and raises assorted exception types on bad
input. Instead:

- :func:`token_parse` accepts only the V2 binary format in unpadded
  base64url, at most :data:`MAX_TOKEN_CHARS` characters and
  :data:`MAX_CAVEATS` caveats, first-party caveats only, every caveat in the
  language of :mod:`gateway.sharing.caveats`; anything else raises
  :class:`TokenMalformed` and nothing else.
- A token has exactly one spelling: the unpadded base64url of exactly the
  bytes its macaroon serialises to, with our location. pymacaroons' decoder
  stops after the signature and ignores what follows, and base64 decoders
  ignore the unused low bits of the last character; so without this check
  ``T + "A"``, ``T + T`` or ``T`` with a flipped last character would be the
  same share under another name (a second session key, a second cache entry,
  a second string that is not the one that was issued).
- :func:`signature_valid` recomputes the HMAC-SHA256 chain from the share's
  root key and compares it in constant time.
- :meth:`ParsedToken.holds` asks every caveat's own checker; all must hold.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

from pymacaroons import Macaroon
from pymacaroons.macaroon import MACAROON_V2
from pymacaroons.serializers.binary_serializer import BinarySerializer

from gateway.sharing.caveats import (
    Caveat,
    Context,
    Delegate,
    ExpiresBefore,
    PatientIs,
    StudyIs,
    TokenMalformed,
    caveat_parse,
)

LOCATION = "fusion-gateway"
IDENTIFIER_PREFIX = b"fg1:"
MAX_TOKEN_CHARS = 2048
MAX_CAVEATS = 24
SIGNATURE_BYTES = 32
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_ROOT_ID = re.compile(rb"fg1:([0-9a-f]{24})")


@dataclass(frozen=True)
class ParsedToken:
    """A syntactically valid token; nothing about it is trusted until :func:`signature_valid`."""

    share_id: str
    identifier: bytes
    caveat_bytes: tuple[bytes, ...]
    caveats: tuple[Caveat, ...]
    signature: bytes

    @property
    def delegates(self) -> tuple[str, ...]:
        """The forwarded shares this token passed through, in order (root excluded)."""
        return tuple(c.share_id for c in self.caveats if isinstance(c, Delegate))

    @property
    def leaf_id(self) -> str:
        """The share whose PIN redeems this token: the last delegate, else the root."""
        return (self.delegates or (self.share_id,))[-1]

    @property
    def expires(self) -> list:
        return [c.moment for c in self.caveats if isinstance(c, ExpiresBefore)]

    @property
    def patients(self) -> set[str]:
        return {c.pseudonym for c in self.caveats if isinstance(c, PatientIs)}

    @property
    def studies(self) -> set[str]:
        return {c.uid for c in self.caveats if isinstance(c, StudyIs)}

    def holds(self, context: Context, *, session_only: bool = False) -> bool:
        """Every caveat holds for ``context`` (only the session caveats when asked)."""
        if not self.caveats:
            return False
        return all(caveat.holds(context) for caveat in self.caveats
                   if caveat.session or not session_only)


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(token: str) -> bytes:
    """Strict unpadded base64url: the alphabet only, and the one canonical spelling of its bytes."""
    if not _BASE64URL.fullmatch(token) or len(token) % 4 == 1:
        raise TokenMalformed("encoding")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenMalformed("encoding") from exc
    if _b64encode(raw) != token:  # non-zero unused bits in the last character
        raise TokenMalformed("non-canonical encoding")
    return raw


def token_parse(token: object) -> ParsedToken:
    """Parse a serialised share token strictly; raises only :class:`TokenMalformed`.

    Parsing is a pure function of the text, so a session's token is parsed
    once per process (a small LRU); its signature, caveats and share state
    are still checked on every request.
    """
    if not isinstance(token, str) or not token:
        raise TokenMalformed("empty")
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenMalformed("too large")
    return _token_parse(token)


@functools.lru_cache(maxsize=256)
def _token_parse(token: str) -> ParsedToken:
    raw = _b64decode(token)
    if not raw or raw[0] != MACAROON_V2:
        raise TokenMalformed("format")
    serializer = BinarySerializer()
    try:
        macaroon = serializer.deserialize_raw(raw)
        identifier = bytes(macaroon.identifier_bytes)
        signature = binascii.unhexlify(macaroon.signature_bytes)
        caveats = list(macaroon.caveats)
        canonical = serializer.serialize_raw(macaroon)
    except TokenMalformed:
        raise
    except Exception as exc:
        raise TokenMalformed("structure") from exc
    match = _ROOT_ID.fullmatch(identifier)
    if match is None:
        raise TokenMalformed("identifier")
    if macaroon.location != LOCATION:  # not covered by the signature: one value only
        raise TokenMalformed("location")
    if canonical != raw:  # the V2 parse must consume all input, in its one encoding
        raise TokenMalformed("trailing bytes" if raw.startswith(canonical) else "non-canonical")
    if len(signature) != SIGNATURE_BYTES:
        raise TokenMalformed("signature")
    if len(caveats) > MAX_CAVEATS:
        raise TokenMalformed("too many caveats")
    parsed: list[Caveat] = []
    caveat_bytes: list[bytes] = []
    for caveat in caveats:
        if caveat.verification_key_id is not None or caveat.location:
            raise TokenMalformed("third-party caveat")
        raw_caveat = bytes(caveat.caveat_id_bytes)
        parsed.append(caveat_parse(raw_caveat))
        caveat_bytes.append(raw_caveat)
    return ParsedToken(share_id=match.group(1).decode(), identifier=identifier,
                       caveat_bytes=tuple(caveat_bytes), caveats=tuple(parsed),
                       signature=signature)


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def signature_expected(root_key: bytes, identifier: bytes, caveats: Iterable[bytes]) -> bytes:
    """The macaroon HMAC chain (libmacaroons / pymacaroons compatible)."""
    signature = _hmac(_hmac(b"macaroons-key-generator", root_key), identifier)
    for caveat in caveats:
        signature = _hmac(signature, caveat)
    return signature


def signature_valid(token: ParsedToken, root_key: bytes) -> bool:
    expected = signature_expected(root_key, token.identifier, token.caveat_bytes)
    return hmac.compare_digest(expected, token.signature)


def _serialise(macaroon: Macaroon) -> str:
    return _b64encode(BinarySerializer().serialize_raw(macaroon))


def token_digest(token: str) -> str:
    """SHA-256 of a token as issued, kept with its share to recognise it after its key is gone.

    A revoked or burned root share loses its root key, so the signature of
    a token presented later can no longer be checked; comparing the token's
    digest with the one recorded when it was issued still tells the
    gateway's own token (whose share the audit may then name) from a
    forgery that merely claims the share's id. A digest cannot be turned
    back into a token, and access never consults it.
    """
    return hashlib.sha256(b"fusion-gateway share token\0" + token.encode("ascii")).hexdigest()


def token_mint(*, share_id: str, root_key: bytes, caveats: Iterable[Caveat]) -> str:
    """A new token for the root share ``share_id`` with ``caveats``."""
    macaroon = Macaroon(location=LOCATION, identifier=IDENTIFIER_PREFIX + share_id.encode(),
                        key=root_key, version=MACAROON_V2)
    for caveat in caveats:
        macaroon.add_first_party_caveat(caveat.text())
    token = _serialise(macaroon)
    token_parse(token)  # what we hand out must be what we accept
    return token


def token_attenuate(token: str, caveats: Iterable[Caveat]) -> str:
    """Add caveats to a token (no key needed): the result can only be narrower."""
    parsed = token_parse(token)
    macaroon = Macaroon(location=LOCATION, identifier=parsed.identifier, version=MACAROON_V2,
                        signature=binascii.hexlify(parsed.signature))
    for raw in parsed.caveat_bytes:
        macaroon.caveats.append(_caveat_v2(raw))
    for caveat in caveats:
        macaroon.add_first_party_caveat(caveat.text())
    attenuated = _serialise(macaroon)
    token_parse(attenuated)
    return attenuated


def _caveat_v2(raw: bytes):
    from pymacaroons import Caveat as PyCaveat

    return PyCaveat(caveat_id=raw, version=MACAROON_V2)
