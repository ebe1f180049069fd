"""Command-line flags and the README's configuration tables, generated from the pydantic
settings models, so each setting is declared once (its type, default and description).

Flag names: the field name with ``-`` for ``_``; a seconds field drops its ``_s``
(``round_timeout_s`` -> ``--round-timeout``, but ``rate_limit_per_s`` keeps it); a map
field is given one ``NAME=NUMBER`` per flag, named in the singular (``strategy_params`` ->
``--strategy-param``); a list field is repeated; a bool field has ``--no-...``. A flag
that is not given leaves the setting to the environment, the TOML file or the default.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the command line imports this module for every command: keep it light
    from pydantic.fields import FieldInfo
    from pydantic_settings import BaseSettings


def flag_name(name: str, annotation: Any) -> str:
    """``--flag`` of the setting ``name``."""
    if _origin(annotation) is dict and name.endswith("s"):
        name = name[:-1]
    elif name.endswith("_s") and not name.endswith("_per_s"):
        name = name[:-2]
    return "--" + name.replace("_", "-")


def name_value(text: str) -> tuple[str, float]:
    """``NAME=NUMBER`` of a map setting's flag."""
    name, _, value = text.partition("=")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER, got {text!r}") from None


def _bare(annotation: Any) -> Any:
    """``X`` of ``X | None`` (and of ``Annotated[X, ...]``)."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _bare(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _bare(args[0])
    return annotation


def _origin(annotation: Any) -> Any:
    bare = _bare(annotation)
    return typing.get_origin(bare) or bare


def _argument(name: str, field: FieldInfo) -> dict[str, Any]:
    """``add_argument`` keywords of a field."""
    bare, origin = _bare(field.annotation), _origin(field.annotation)
    kw: dict[str, Any] = {
        "dest": name,
        "default": argparse.SUPPRESS,
        "help": (field.description or "").replace("%", "%%") or None,
    }
    if origin is Literal:
        kw["choices"] = [str(c) for c in typing.get_args(bare)]
    elif origin is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif origin is dict:
        kw.update(action="append", type=name_value, metavar="NAME=NUMBER")
    elif origin is list:
        kw.update(action="append", type=typing.get_args(bare)[0])
    elif origin is tuple:
        kw.update(nargs="+", type=typing.get_args(bare)[0])
    elif origin in (int, float, Path):
        kw["type"] = origin
    return kw


def add_settings_arguments(parser: argparse.ArgumentParser, model: type[BaseSettings]) -> None:
    """One flag per field of ``model``, help text from its description."""
    for name, field in model.model_fields.items():
        flag = flag_name(name, field.annotation)
        kw = _argument(name, field)
        if "choices" not in kw and kw.get("action") is not argparse.BooleanOptionalAction:
            kw.setdefault("metavar", flag[2:].upper().replace("-", "_"))
        parser.add_argument(flag, **kw)


def settings_given(args: argparse.Namespace, model: type[BaseSettings]) -> dict[str, Any]:
    """The fields of ``model`` the command line gave, as the model takes them."""
    given = {k: v for k, v in vars(args).items() if k in model.model_fields}
    for name, value in given.items():
        if _origin(model.model_fields[name].annotation) is dict:
            given[name] = dict(value)
    return given


def _default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None or value in ({}, [], ()):
        return "none"
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def settings_table(model: type[BaseSettings]) -> str:
    """The README's table of ``model``: TOML key, flag, environment variable, default,
    meaning."""
    prefix = model.model_config.get("env_prefix", "")
    rows = [
        "| setting (TOML key) | flag | environment | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for name, field in model.model_fields.items():
        rows.append(
            f"| `{name}` | `{flag_name(name, field.annotation)}` | "
            f"`{prefix}{name.upper()}` | {_default(field)} | "
            f"{(field.description or '').replace('|', '/')} |"
        )
    return "\n".join(rows) + "\n"


def readme_with_tables(text: str, models: dict[str, type[BaseSettings]]) -> str:
    """``text`` (the README) with each ``<!-- settings:KEY -->`` ... ``<!-- /settings:KEY
    -->`` block replaced by the table of ``models[KEY]``; a missing block raises."""
    for key, model in models.items():
        start, end = f"<!-- settings:{key} -->\n", f"<!-- /settings:{key} -->"
        head, found, rest = text.partition(start)
        _, found_end, tail = rest.partition(end)
        if not found or not found_end:
            raise ValueError(f"no {start.strip()} ... {end} block")
        text = head + start + settings_table(model) + end + tail
    return text


def main() -> None:
    """Rewrite the README's settings tables from the models."""
    from alchimia.agent.settings import AgentSettings
    from alchimia.coordinator.settings import CoordinatorSettings

    readme = Path(__file__).resolve().parents[1] / "README.md"
    readme.write_text(
        readme_with_tables(
            readme.read_text(), {"coordinator": CoordinatorSettings, "agent": AgentSettings}
        )
    )


if __name__ == "__main__":
    main()
