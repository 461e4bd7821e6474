"""What attnx's commands share: config-flag checks before absl parses them, and short errors.

`run(main, argv)` is every command's entry point: before absl's flag parsing loads the config it
checks that the `--config=FILE[:arg]` file exists and that every `--config.a.b=value` override
names a field the config has (suggesting the nearest ones and listing the section's fields), and it
prints attnx's own `ValueError`s as one `error: ...` line, without a traceback unless
`--traceback` is given.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from typing import Callable, Sequence

import ml_collections

TRACEBACK_FLAG = "--traceback"


class UsageError(ValueError):
    """A command line that cannot run; its message is the whole explanation."""


def _config_flag(argv: Sequence[str], name: str) -> tuple[str | None, list[str]]:
    """(the value of `--name=...`, the override paths of `--name.a.b=...`) in `argv`."""
    value, overrides = None, []
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(f"--{name}."):
            overrides.append(arg[len(name) + 3:].split("=", 1)[0])
    return value, overrides


def load_config(flag_value: str) -> ml_collections.ConfigDict:
    """`get_config(arg)` of `FILE[:arg]`, as `config_flags` loads it; UsageError if no file."""
    path, _, arg = flag_value.partition(":")
    if not os.path.isfile(path):
        raise UsageError(f"--config={flag_value}: no config file {path!r} "
                         f"(configs are files such as configs/reformer_lm.py)")
    spec = importlib.util.spec_from_file_location("attnx_cli_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def check_override(config: ml_collections.ConfigDict, path: str) -> None:
    """UsageError unless `path` ('model.d_model') names a field of `config`."""
    node, walked = config, []
    for part in path.split("."):
        fields = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        if part not in fields:
            section = ".".join(["config"] + walked)
            nearest = difflib.get_close_matches(part, fields, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(n) for n in nearest)}?" if nearest else ""
            listing = f"\n{section} has fields: {', '.join(sorted(fields))}" if fields else (
                f"\n{section} is a value ({type(node).__name__}), not a section")
            raise UsageError(f"--config.{path}: {section} has no field {part!r}{hint}{listing}")
        node, walked = node[part], walked + [part]


def check_config_flags(argv: Sequence[str], name: str = "config") -> None:
    """Check `--config=...` and its overrides in `argv` before absl parses them."""
    value, overrides = _config_flag(argv, name)
    if value is None:
        return
    try:
        config = load_config(value)
    except UsageError:
        raise
    except ValueError as error:  # the config's own check of its argument
        raise UsageError(f"--config={value}: {error}") from None
    for path in overrides:
        check_override(config, path)


def run(main: Callable[[list[str]], None], argv: Sequence[str] | None = None,
        config_flag: str | None = "config") -> None:
    """Run an absl `main` with attnx's argument checks and error printing."""
    from absl import app

    argv = list(sys.argv if argv is None else argv)
    show_traceback = TRACEBACK_FLAG in argv
    argv = [a for a in argv if a != TRACEBACK_FLAG]

    def guarded(args: list[str]) -> None:
        try:
            main(args)
        except ValueError as error:
            if show_traceback:
                raise
            print(f"error: {error}\n(run again with {TRACEBACK_FLAG} for the traceback)",
                  file=sys.stderr)
            sys.exit(2)

    try:
        if config_flag is not None:
            check_config_flags(argv[1:], config_flag)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    app.run(guarded, argv=argv)
