"""Marking a string for the catalogues without translating it, importable with no settings.

Django's own ``gettext_noop`` reads the settings (whether translation is on) the first time it
runs, so a module that marks strings when it is imported (an error table, a menu) could not be
imported by a process that has no Django settings: a benchmark, a render worker on another
host. The catalogues find the marks by the function's name, whichever module it comes from.
"""

from __future__ import annotations


def gettext_noop(message: str) -> str:
    """``message`` unchanged; ``manage.py translations`` extracts it for translation elsewhere."""
    return message
