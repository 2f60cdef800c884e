"""``python -m npconv`` is the ``npconv`` command."""

from .cli import entry_point

entry_point()
