"""Lines for people to read: the width every line fits in, counts with the right plural, shortening, durations.

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


def format_seconds(seconds):
    """A duration as people say it: ``"1 h 05 min"``, ``"12 min 30 s"``, ``"45 s"``."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def shorten_middle(text, width):
    """``text`` cut to ``width`` characters in its middle, so that a path keeps both ends: ``/tmp/sw...s/cnn-3f2a``."""
    if len(text) <= width:
        return text
    keep = max(width - 3, 0)
    head = keep // 2
    return text[:head] + "..." + text[len(text) - (keep - head):]
