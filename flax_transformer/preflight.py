"""Checks of a decode.py request that need no model: done before the slow restore.

Kept apart from decode_command.py so that decode.py fails in a second, not after loading a
model and translating a whole file, when an output cannot be written or a flag is wrong.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from collections.abc import Sequence

from flax_transformer import checkpoint, config_fields


class PreflightError(ValueError):
    """A decode.py request that cannot succeed; the message says what to do."""


def check_request(workdir: str, decode_overrides: dict, input_file: str | None,
                  output_file: str | None, attention_plot: str | None) -> None:
    """Validates the search flags against the run's config, and the files' folders."""
    if os.path.isfile(checkpoint.config_path(workdir)):  # else the restore says what is wrong
        config = checkpoint.load_config(workdir)
        dotted = {f"decode.{name}": str(value) for name, value in decode_overrides.items()
                  if value is not None}
        config_fields.override(config, dotted)  # ConfigError naming the flag
    for flag, path in (("--output_file", output_file), ("--attention_plot", attention_plot)):
        if path is not None:
            _check_writable_folder(flag, path)
    if input_file and input_file != "-" and os.path.exists(input_file):
        mode = os.stat(input_file).st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            raise PreflightError(
                f"--input_file {input_file} is a device, not a file of sentences; give a "
                "file, or '-' (or no flag) to read stdin.")


def _check_writable_folder(flag: str, path: str) -> None:
    if not path or path.endswith(("/", os.sep)) or os.path.isdir(path):
        raise PreflightError(f"{flag} {path!r} is {'empty' if not path else 'a folder'}; "
                             "give a file name.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise PreflightError(f"{flag} {path}: the folder {folder} does not exist; create it "
                             "or choose another path.")
    if not os.access(folder, os.W_OK):
        raise PreflightError(f"{flag} {path}: the folder {folder} is not writable; choose "
                             "another path.")


def is_meaningless(line: str) -> bool:
    """Not empty but no letter or digit (only emoji, symbols, control characters or NUL):
    the model has nothing to translate in it."""
    return bool(line.strip()) and not any(unicodedata.category(char)[0] in "LN"
                                          for char in line)


def meaningless_lines(lines: Sequence[str]) -> int:
    """How many of ``lines`` are meaningless (``is_meaningless``)."""
    return sum(map(is_meaningless, lines))
