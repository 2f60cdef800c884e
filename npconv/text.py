"""Lines for people to read: the width every line fits in, counts with the right plural, shortening.

Every line npconv prints fits in :data:`WIDTH` columns (a terminal's 100),
says ``1 epoch`` and ``2 epochs``, and, when a part of it can be arbitrarily
long (a path, an error from elsewhere), shortens that part rather than
spilling onto the next line.
"""

#: Every line npconv prints fits in this many columns.
WIDTH = 100


def plural(n, noun, nouns=None):
    """``"1 run"``, ``"3 runs"``, ``"0 runs"``; ``nouns`` for a noun that does not take an ``s``."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def shorten(text, width=WIDTH):
    """``text`` cut to ``width`` characters, ending in ``...`` when cut."""
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


def shorten_start(text, width):
    """``text`` cut to ``width`` characters from its start (a path keeps its file name): ``...ts/seven.png``."""
    return text if len(text) <= width else "..." + text[len(text) - max(width - 3, 0):]


def shorten_middle(text, width):
    """``text`` cut to ``width`` characters in its middle, so that a path keeps both ends: ``/tmp/sw...s/cnn-3f2a``."""
    if len(text) <= width:
        return text
    keep = max(width - 3, 0)
    head = keep // 2
    return text[:head] + "..." + text[len(text) - (keep - head):]
