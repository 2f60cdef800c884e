"""The ``npconv`` command.

==================  ==========================================================
``main.py``         the parser, the commands' table, exit statuses, ``main()``
``options.py``      options derived from the settings schema; errors in the CLI's words
``train.py``        ``train``, ``evaluate``, ``predict``
``experiments.py``  ``sweep``, ``study``, ``compare``
==================  ==========================================================
"""

from .main import entry_point, main

__all__ = ["entry_point", "main"]
