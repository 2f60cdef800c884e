"""Files, written safely and read without trust.

- :mod:`npconv.io.atomic` -- atomic writes (a crash never leaves a torn file),
  JSON in and out, an exclusive lock on a folder;
- :mod:`npconv.io.npz` -- the untrusting npz reader and writer of model files
  and checkpoints.
"""

from .atomic import atomic_write, lock_dir, locked_by, read_json, write_json
from .npz import json_entry, parse_json_entry, read_npz, write_npz

__all__ = ["atomic_write", "json_entry", "lock_dir", "locked_by", "parse_json_entry", "read_json", "read_npz",
           "write_json", "write_npz"]
