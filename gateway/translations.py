"""The translation catalogues under ``locale/``: extracted from the code, complete, compiled.

Every string a reader sees is marked for translation (templates, Python, the page
scripts). ``manage.py translations`` re-extracts them into the catalogues
(``makemessages``, both domains) and compiles them; ``manage.py translations --check``
(and the test suite) says what a change left behind: a string marked but missing
from a catalogue, an entry whose string is gone, an entry untranslated or fuzzy, a
translation that drops or invents a placeholder, a compiled catalogue older than its
source. The compiled ``.mo`` files are committed, so a fresh machine serves the
translations without gettext installed.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import polib
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings

DOMAINS = ("django", "djangojs")
SOURCE_DIRS = ("accounts", "gateway", "imaging", "rendering", "templates")
IGNORE = ["*/migrations/*", "*/management/*", "*/tests/*"]
_PLACEHOLDER = re.compile(r"%(?:\([A-Za-z_][A-Za-z0-9_]*\))?[-#0 +]*\d*(?:\.\d+)?[sdifr%]"
                          r"|\{[A-Za-z_][A-Za-z0-9_]*\}")


@dataclass(frozen=True)
class Problem:
    language: str
    domain: str
    kind: str
    msgid: str

    def __str__(self) -> str:
        return f"{self.language}/{self.domain}: {self.kind}: {self.msgid!r}"


def translated_languages() -> list[str]:
    return [code for code, _ in settings.LANGUAGES if code != settings.LANGUAGE_CODE]


def locale_dir() -> Path:
    return Path(settings.LOCALE_PATHS[0])


def catalogue_path(language: str, domain: str, suffix: str = "po", root: Path | None = None) -> Path:
    return (root or locale_dir()) / language / "LC_MESSAGES" / f"{domain}.{suffix}"


def catalogue_write() -> None:
    """Re-extract every marked string into the catalogues, then compile them."""
    _extract(cwd=Path(settings.BASE_DIR), symlinks=False)
    for language in translated_languages():
        for domain in DOMAINS:
            _header_set(catalogue_path(language, domain), language)
    call_command("compilemessages", locale=translated_languages(), verbosity=0)


def _header_set(path: Path, language: str) -> None:
    if not path.exists():
        return
    catalogue = polib.pofile(str(path), wrapwidth=79)
    catalogue.header = "Fusion Gateway's strings. The English text in the code is the source."
    catalogue.metadata_is_fuzzy = False
    catalogue.metadata.update({
        "Project-Id-Version": "Fusion Gateway", "Language": language,
        "Language-Team": dict(settings.LANGUAGES)[language], "Last-Translator": "Fusion Gateway",
        "Report-Msgid-Bugs-To": "", "PO-Revision-Date": catalogue.metadata.get("POT-Creation-Date", "")})
    catalogue.save()


def catalogue_problems() -> list[Problem]:
    """What keeps the catalogues from being complete and current; empty when they are."""
    with _extracted() as fresh_root:
        problems: list[Problem] = []
        for language in translated_languages():
            for domain in DOMAINS:
                problems += _domain_problems(language, domain, fresh_root)
        return problems


def _domain_problems(language: str, domain: str, fresh_root: Path) -> list[Problem]:
    source = catalogue_path(language, domain)
    if not source.exists():
        return [Problem(language, domain, "catalogue missing", str(source))]
    kept = polib.pofile(str(source))
    fresh = polib.pofile(str(catalogue_path(language, domain, root=fresh_root)))
    kept_ids = {_key(entry) for entry in kept if not entry.obsolete}
    fresh_ids = {_key(entry) for entry in fresh if not entry.obsolete}
    problems = [Problem(language, domain, "marked but not in the catalogue", msgid)
                for msgid in sorted(fresh_ids - kept_ids)]
    problems += [Problem(language, domain, "in the catalogue but no longer marked", msgid)
                 for msgid in sorted(kept_ids - fresh_ids)]
    for entry in kept:
        if entry.obsolete:
            continue
        if "fuzzy" in entry.flags or not entry.translated():
            problems.append(Problem(language, domain, "untranslated or fuzzy", entry.msgid))
        elif not _placeholders_kept(entry):
            problems.append(Problem(language, domain, "placeholders differ", entry.msgid))
    problems += _compiled_problems(language, domain, kept)
    return problems


def _key(entry: polib.POEntry) -> str:
    return f"{entry.msgctxt}\x04{entry.msgid}" if entry.msgctxt else entry.msgid


def _placeholders(text: str) -> list[str]:
    return sorted(found for found in _PLACEHOLDER.findall(text) if found != "%%")


def _placeholders_kept(entry: polib.POEntry) -> bool:
    if entry.msgid_plural:
        wanted = _placeholders(entry.msgid_plural)
        forms = [_placeholders(text) for _, text in sorted(entry.msgstr_plural.items())]
        # A singular form may leave the count out ("one finding"); the plural forms keep all.
        return set(forms[0]) <= set(wanted) and all(form == wanted for form in forms[1:])
    return _placeholders(entry.msgstr) == _placeholders(entry.msgid)


def _translation(entry: polib.POEntry | polib.MOEntry) -> tuple[str, dict[int, str]]:
    return entry.msgstr, {int(form): text for form, text in entry.msgstr_plural.items()}


def _compiled_problems(language: str, domain: str, kept: polib.POFile) -> list[Problem]:
    compiled_path = catalogue_path(language, domain, "mo")
    if not compiled_path.exists():
        return [Problem(language, domain, "not compiled", str(compiled_path))]
    compiled = {_key(entry): _translation(entry) for entry in polib.mofile(str(compiled_path))
                if entry.msgid}
    wanted = {_key(entry): _translation(entry) for entry in kept
              if not entry.obsolete and entry.translated() and "fuzzy" not in entry.flags}
    stale = sorted(key for key in wanted.keys() | compiled.keys() if wanted.get(key) != compiled.get(key))
    return [Problem(language, domain, "compiled catalogue differs from its source", key) for key in stale]


@contextmanager
def _extracted() -> Iterator[Path]:
    """A scratch tree that links the sources, with a copy of the catalogues extracted afresh."""
    base = Path(settings.BASE_DIR)
    with tempfile.TemporaryDirectory(prefix="catalogue-") as scratch:
        root = Path(scratch)
        for name in SOURCE_DIRS:
            (root / name).symlink_to(base / name, target_is_directory=True)
        if locale_dir().exists():
            shutil.copytree(locale_dir(), root / "locale")
        with override_settings(LOCALE_PATHS=[root / "locale"]):
            _extract(cwd=root, symlinks=True)
        yield root / "locale"


def _extract(*, cwd: Path, symlinks: bool) -> None:
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        for domain in DOMAINS:
            call_command("makemessages", locale=translated_languages(), domain=domain,
                         ignore_patterns=IGNORE + _ignored_top_level(cwd), no_obsolete=True,
                         add_location="file", symlinks=symlinks, verbosity=0)
    finally:
        os.chdir(previous)


def _ignored_top_level(cwd: Path) -> list[str]:
    return [f"{entry.name}/*" for entry in cwd.iterdir()
            if entry.is_dir() and entry.name not in (*SOURCE_DIRS, "locale")]
