"""A Config field by field: dotted overrides, JSON, and what changed between two configs.

    config = override(presets.get_config("tiny"), {"train.num_steps": "300"})  # flags
    from_json(to_json(config)) == config                                     # config.json
    accepted, refused = train_changes(saved, config)                         # on resume

Values from the command line or a JSON file are checked as strictly as the dataclasses
check themselves: of the field's type, and valid (``ConfigError`` otherwise).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from flax_transformer.config import Config, ConfigError


def _sections(config: Config) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if dataclasses.is_dataclass(getattr(config, f.name))}


def iter_fields(config: Config):
    """Yields (dotted_name, type, default, help) for every leaf field."""
    for section_name, section in _sections(config).items():
        hints = typing.get_type_hints(type(section))
        for f in dataclasses.fields(section):
            yield (f"{section_name}.{f.name}", hints[f.name], getattr(section, f.name),
                   f.metadata.get("help", ""))


def type_name(kind: Any) -> str:
    """A field type in words: "int", "float", "bool", "str" or "list of ints"."""
    return "list of ints" if typing.get_origin(kind) is tuple else kind.__name__


# What a valid value looks like, on the command line and in config.json.
_FLAG_FORMS = {"bool": "true or false (or yes/no, 1/0)", "int": "a whole number, e.g. 300",
               "float": "a number, e.g. 0.1 or 1e-9",
               "list of ints": "whole numbers separated by commas, e.g. 8,16,32"}
_JSON_FORMS = {"bool": "true or false", "int": "a whole number, e.g. 300",
               "float": "a number, e.g. 0.1", "str": "a string in double quotes",
               "list of ints": "a list of whole numbers, e.g. [8, 16, 32]"}


def _parse_value(dotted: str, kind: Any, text: str) -> Any:
    """Parses ``text`` as a value of ``kind`` or raises ConfigError naming the field."""
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        if kind in (int, float, str):
            return kind(text)
        if typing.get_origin(kind) is tuple:
            parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
            return tuple(int(p) for p in parts)
    except ValueError:
        pass
    name = type_name(kind)
    raise ConfigError(f"--config.{dotted}={text!r} is not a valid {name}; give "
                      f"{_FLAG_FORMS[name]}.")


def override(config: Config, assignments: dict[str, str]) -> Config:
    """Applies ``{"train.num_steps": "300"}``-style string overrides and validates."""
    known = {name: kind for name, kind, _, _ in iter_fields(config)}
    sections = _sections(config)
    for dotted, text in assignments.items():
        if dotted not in known:
            raise ConfigError(
                f"unknown config key {dotted!r}; see --help for the list of fields."
            )
        section_name, field_name = dotted.split(".", 1)
        value = _parse_value(dotted, known[dotted], text)
        sections[section_name] = dataclasses.replace(
            sections[section_name], **{field_name: value}
        )
    return dataclasses.replace(config, **sections).validate()


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


# Fields whose default changed after runs were saved without them: a config.json that lacks
# one describes checkpoints written the old way.
_LEGACY_DEFAULTS = {"model": {"kernel_layout": "in_out"}}


def from_dict(values: dict[str, Any]) -> Config:
    """Rebuilds a Config from ``to_dict`` output (e.g. a run's config.json).

    Values are checked as strictly as the command line checks them: of the field's type,
    and valid.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"a config is a JSON object of sections, not {type(values).__name__}.")
    names = [f.name for f in dataclasses.fields(Config)]
    unknown = sorted(set(values) - set(names))
    if unknown:  # a misspelt section would otherwise load as that section's defaults
        raise ConfigError(f"unknown config sections {unknown}; a config has {names}.")
    if not isinstance(values.get("name", ""), str):
        raise ConfigError(f"config name={json.dumps(values['name'])} is not a string.")
    sections = {}
    for f in dataclasses.fields(Config):
        if f.name == "name":
            continue
        section_type = typing.get_type_hints(Config)[f.name]
        hints = typing.get_type_hints(section_type)
        raw = values.get(f.name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"config section {f.name!r} is {json.dumps(raw)}, not an object "
                              "of fields.")
        raw = {**_LEGACY_DEFAULTS.get(f.name, {}), **raw}
        unknown = set(raw) - set(hints)
        if unknown:
            raise ConfigError(f"unknown keys in config section {f.name!r}: {sorted(unknown)}")
        for key in raw:
            raw[key] = _typed(f"{f.name}.{key}", hints[key], raw[key])
        sections[f.name] = section_type(**raw)
    return Config(name=str(values.get("name", "custom")), **sections).validate()


def _typed(dotted: str, kind: Any, value: Any) -> Any:
    """``value`` from JSON as a value of ``kind``, or a ConfigError naming the field."""
    if typing.get_origin(kind) is tuple:
        if isinstance(value, (list, tuple)) and all(_is_int(item) for item in value):
            return tuple(value)
    elif kind is float and (_is_int(value) or isinstance(value, float)):
        return float(value)
    elif (kind is int and _is_int(value)) or (kind in (bool, str) and type(value) is kind):
        return value
    name = type_name(kind)
    raise ConfigError(f"{dotted}={json.dumps(value)} is not a valid {name}; write "
                      f"{_JSON_FORMS[name]}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def to_json(config: Config) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


def from_json(text: str) -> Config:
    return from_dict(json.loads(text))


def config_differences(saved: Config, new: Config) -> list[str]:
    """Fields (model and data) whose change makes old checkpoints unusable for ``new``."""
    differences = []
    for section in ("model", "data"):
        old_values = to_dict(saved)[section]
        new_values = to_dict(new)[section]
        for key in sorted(old_values):
            # scan_layers and kernel_layout are layouts of the same parameters: a run keeps
            # its own. transposed_weight_gradients changes how gradients are computed.
            if key in ("num_workers", "eval_examples", "scan_layers", "kernel_layout",
                       "transposed_weight_gradients"):
                continue
            if old_values[key] != new_values.get(key):
                differences.append(
                    f"{section}.{key}: {old_values[key]!r} -> {new_values.get(key)!r}")
    return differences


# Train fields whose switching on or off changes the saved state's tree (value = "off").
_STRUCTURAL = {"weight_decay": 0.0, "gradient_clip_norm": 0.0, "gradient_accumulation": 1}


def train_changes(saved: Config, new: Config) -> tuple[list[str], list[str]]:
    """Section-train changes on resume: (accepted ones, ones the saved state cannot take).

    Schedule-like fields only change what happens from now on. Switching EMA on or off is
    accepted (the loop migrates the state); switching weight decay, clipping or gradient
    accumulation on or off changes the optimizer state's structure and is refused.
    """
    old, now = to_dict(saved)["train"], to_dict(new)["train"]
    accepted, refused = [], []
    for key in sorted(old):
        if old[key] == now.get(key):
            continue
        change = f"train.{key}: {old[key]!r} -> {now.get(key)!r}"
        off = _STRUCTURAL.get(key)
        if off is not None and (old[key] == off) != (now.get(key) == off):
            refused.append(change)
        elif key == "ema_decay" and (old[key] > 0) != (now[key] > 0):
            accepted.append(change + (" (EMA starts from the current parameters)"
                                      if now[key] > 0 else " (the saved EMA is dropped)"))
        else:
            accepted.append(change)
    return accepted, refused
