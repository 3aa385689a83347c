"""Settings: one pydantic model per command is the schema of its YAML file, its CLI options and its errors.

- `validate(Model, raw, where)`: the one place a pydantic error becomes a user's error (`DataError`: one line
  per bad setting, naming the file and the dotted key);
- `apply_overrides(raw, ["lora.r=16"])`: dotted `key=value` overrides, values read as YAML;
- `schema_yaml(Model)`: the defaults as commented YAML (`--show-config`);
- `cli_options(Model)`: a typer command whose options are the model's fields (flag names, help and defaults
  come from the fields: no default is written twice).
"""

from __future__ import annotations

import functools
import inspect
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional

import typer
import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from camelid.core.io import CamelidError, DataError, Problem

M = typing.TypeVar("M", bound=BaseModel)


# ---------------------------------------------------------------------------------------------- errors


def problems(e: ValidationError, where: str | Path | None = None, prefix: str = "",
             hint: str | None = None) -> list[Problem]:
    """Each pydantic error as a located Problem: `FILE: field 'lora.r': message`."""
    out = []
    for err in e.errors(include_url=False):
        loc = prefix + ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting" + (f" ({hint})" if hint else "")
        out.append(Problem(str(where) if where is not None else "settings", None, loc or None, msg))
    return out


def validation_message(e: ValidationError, where: str | Path | None = None, prefix: str = "",
                       hint: str | None = None) -> str:
    return str(DataError(problems(e, where, prefix, hint)))


def validate(model: type[M], raw: dict, where: str | Path | None = None, prefix: str = "",
             hint: str | None = None) -> M:
    """`model(**raw)`, or a DataError naming `where` and every bad setting (`prefix` + its dotted key)."""
    try:
        return model(**raw)
    except ValidationError as e:
        raise DataError(problems(e, where, prefix, hint)) from None


# ---------------------------------------------------------------------------------------------- overrides


def parse_override(item: str) -> tuple[list[str], Any]:
    """`lora.r=16` -> (["lora", "r"], 16); values are YAML (`data=[a.json,b.json]`, `lr=1e-4`, `packing=false`)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise CamelidError(f"override {item!r}: expected key=value (e.g. lora.r=16)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _looks_float(raw.strip()):
        value = float(raw)  # YAML 1.1 reads 1e-4 (no dot) as a string
    return key.strip().split("."), value


def _looks_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    out = dict(raw)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for k in path[:-1]:
            child = node.get(k)
            node[k] = dict(child) if isinstance(child, dict) else {}
            node = node[k]
        node[path[-1]] = value
    return out


# ---------------------------------------------------------------------------------------------- YAML


def schema_yaml(model: type[BaseModel]) -> str:
    """The defaults as commented YAML: the schema a user edits (`--show-config`)."""
    lines: list[str] = []

    def emit(cls: type[BaseModel], obj: BaseModel, indent: str) -> None:
        for name, f in cls.model_fields.items():
            value = getattr(obj, name)
            if isinstance(value, BaseModel):
                lines.append(f"{indent}{name}:")
                emit(type(value), value, indent + "  ")
                continue
            text = yaml.safe_dump({name: value}, default_flow_style=True, width=1000).strip()[1:-1]
            comment = f"  # {f.description}" if f.description else ""
            lines.append(f"{indent}{text}{comment}")

    emit(model, model(), "")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- CLI


def _cli_type(annotation: Any) -> Any:
    """The type typer parses for a field: Optional[...] of the field's type (Literal -> str; pydantic checks it)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        annotation = args[0]
    if typing.get_origin(annotation) is Literal:
        annotation = type(typing.get_args(annotation)[0])
    elif typing.get_origin(annotation) is list and typing.get_origin(typing.get_args(annotation)[0]) is Literal:
        annotation = list[type(typing.get_args(typing.get_args(annotation)[0])[0])]  # a repeatable option
    return Optional[annotation]


def field_help(f, default_note: str | None = None) -> str:
    """A field's description plus its default, as `--help` shows it."""
    text = (f.description or "").rstrip(".")
    if default_note is None and f.default is not PydanticUndefined and f.default not in (None, [], ()):
        value = f.default
        if isinstance(value, bool):
            flags = (f.json_schema_extra or {}).get("flags") if isinstance(f.json_schema_extra, dict) else None
            default_note = (flags[0].split("/")[0 if value else 1] if flags and "/" in flags[0]
                            else "on" if value else "off")
        else:
            default_note = str(value)
    if default_note:
        text += f" (default: {default_note})" if text else f"(default: {default_note})"
    return text + ("." if text and not text.endswith((")", ".")) else "")


def cli_options(model: type[BaseModel], exclude: tuple[str, ...] = (), defaults: dict[str, str] | None = None,
                shared: dict[str, Any] | None = None, only: tuple[str, ...] | None = None
                ) -> Callable[[Callable], Callable]:
    """Give a typer command one option per field of `model`, after its own parameters.

    Each option defaults to None (not given); the command receives them as `settings`: the fields given on the
    command line only, so a YAML file can supply the rest and the model's own defaults apply last. Flag names
    come from a field's `json_schema_extra={"flags": (...)}` (default `--field-name`), help from its description
    and default; `defaults` words a default that depends on other settings; `shared` gives ready-made option
    annotations for some fields (e.g. core.cli.BaseUrlOpt); `only` limits the options to some fields (the rest are
    set in the YAML file or by key=value overrides)."""
    notes, shared = dict(defaults or {}), dict(shared or {})

    def wrap(fn: Callable) -> Callable:
        own = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in own.parameters.values()
                  if p.name != "settings"]
        names = []
        for name, f in model.model_fields.items():
            if name in exclude or (only is not None and name not in only):
                continue
            names.append(name)
            if name in shared:
                annotation = shared[name]
            else:
                extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
                flags = tuple(extra.get("flags") or ("--" + name.replace("_", "-"),))
                option = typer.Option(*flags, help=field_help(f, notes.get(name)), show_default=False)
                annotation = Annotated[_cli_type(f.annotation), option]
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=annotation))

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            settings = {k: kwargs.pop(k) for k in names}
            settings = {k: v for k, v in settings.items() if v is not None and v != []}
            return fn(settings=settings, **kwargs)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must read the new signature, not fn's
        return command

    return wrap
