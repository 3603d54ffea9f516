"""Command-line parsing shared by train.py and decode.py: presets and dotted overrides.

    --config tiny                      a preset by name
    --config.train.num_steps=300       any field, by its dotted name (see --help)
"""

from __future__ import annotations

import argparse
import os
import sys
import threading

from flax_transformer import config as config_lib
from flax_transformer import config_fields, presets


def add_config_arguments(parser: argparse.ArgumentParser, default_preset: str) -> None:
    """Adds --config PRESET and one --config.SECTION.FIELD flag per field, with its doc."""
    parser.add_argument("--config", default=default_preset, choices=sorted(presets.PRESETS),
                        help=f"preset to start from (default: {default_preset})")
    defaults = presets.get_config(default_preset)
    group = parser.add_argument_group(
        "config fields", "override any field of the preset: --config.SECTION.FIELD=VALUE "
        f"(defaults shown are the {default_preset!r} preset's)")
    for dotted, kind, default, doc in config_fields.iter_fields(defaults):
        metavar = config_fields.type_name(kind).replace("list of ints", "INT,INT,...")
        group.add_argument(f"--config.{dotted}", dest=f"override:{dotted}", default=None,
                           metavar=metavar.upper(),   # argparse %-formats help texts
                           help=f"{doc} (default: {default!r})".replace("%", "%%"))


def section_fields(section: str) -> dict[str, tuple[type, str]]:
    """{field: (type, help)} of one config section ("decode"), from its field docs."""
    return {dotted.split(".", 1)[1]: (kind, doc)
            for dotted, kind, _, doc in config_fields.iter_fields(config_lib.Config())
            if dotted.split(".", 1)[0] == section}


def config_from_args(args: argparse.Namespace) -> config_lib.Config:
    """The preset named by --config with every --config.X.Y override applied."""
    overrides = {key.split(":", 1)[1]: value for key, value in vars(args).items()
                 if key.startswith("override:") and value is not None}
    return config_fields.override(presets.get_config(args.config), overrides)


def add_compilation_cache_flag(parser: argparse.ArgumentParser) -> None:
    """Adds --no_compilation_cache (the cache itself is parallel.use_compilation_cache)."""
    parser.add_argument(
        "--no_compilation_cache", action="store_true",
        help="do not read or write JAX's persistent compilation cache (default: on, in "
             "$XDG_CACHE_HOME/flax_transformer/jax, i.e. ~/.cache/...; "
             "FLAX_TRANSFORMER_COMPILATION_CACHE=off|DIR also turns it off or moves it)")


def use_compilation_cache(args: argparse.Namespace) -> None:
    """Turns the persistent compilation cache on unless --no_compilation_cache was given."""
    from flax_transformer import parallel  # imports JAX: not before parsing (fast --help)

    parallel.use_compilation_cache(enabled=not args.no_compilation_cache)


def fail(message: str) -> None:
    """Prints one clear line and exits with status 2 (a user error, not a crash)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def exit_within(seconds: float) -> None:
    """Makes sure the process ends ``seconds`` from now even if a library thread hangs.

    Python waits for every non-daemon thread at exit; after a failed checkpoint save,
    some of Orbax's background threads wait forever for signals that never come.
    """
    def end() -> None:
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(2)
    timer = threading.Timer(seconds, end)
    timer.daemon = True
    timer.start()
