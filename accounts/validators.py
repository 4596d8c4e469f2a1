"""Password rules beyond Django's own (NIST SP 800-63B 5.1.1.2): no composition rules."""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

PRODUCT_WORDS = ("fusiongateway", "fusion", "gateway")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t",
                       "@": "a", "$": "s", "!": "i"})


class MaximumLengthValidator:
    """Refuse absurd lengths (request size), never truncate: Argon2id hashes every character."""

    def __init__(self, max_length: int = 256) -> None:
        if max_length < 128:
            raise ValueError("the maximum password length must be at least 128")
        self.max_length = max_length

    def validate(self, password: str, user: Any = None) -> None:
        if len(password) > self.max_length:
            raise ValidationError(
                ngettext("This password is longer than %(max_length)d character.",
                         "This password is longer than %(max_length)d characters.", self.max_length),
                code="password_too_long", params={"max_length": self.max_length})

    def get_help_text(self) -> str:
        return ngettext("Your password can be up to %(max_length)d character long.",
                        "Your password can be up to %(max_length)d characters long.",
                        self.max_length) % {"max_length": self.max_length}


def _letters(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower().translate(_LEET))


class ContextWordsValidator:
    """Refuse passwords built from the user name, the person's names or the product name.

    Those words (and their parts of three or more letters) are removed from
    the password, with digits, symbols and common letter-for-digit swaps; if
    fewer than ``min_remaining`` letters are left, the password is refused.
    """

    def __init__(self, min_remaining: int = 6, extra_words: tuple[str, ...] = ()) -> None:
        self.min_remaining = min_remaining
        self.extra_words = extra_words

    def _words(self, user: Any) -> list[str]:
        words = [*PRODUCT_WORDS, *self.extra_words]
        for attribute in ("username", "first_name", "last_name", "email"):
            value = str(getattr(user, attribute, "") or "")
            if attribute == "email":
                value = value.partition("@")[0]
            words.append(_letters(value))
            words.extend(_letters(part) for part in re.split(r"[^A-Za-z0-9]+", value))
        return sorted({word for word in words if len(word) >= 3}, key=len, reverse=True)

    def validate(self, password: str, user: Any = None) -> None:
        remaining = _letters(password)
        for word in self._words(user):
            remaining = remaining.replace(word, "")
        if len(remaining) < self.min_remaining:
            raise ValidationError(
                _("This password is built from your user name, your name or the product name."),
                code="password_context_words")

    def get_help_text(self) -> str:
        return _("Your password can't be built from your user name, your name or the product name.")
