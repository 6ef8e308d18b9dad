"""Every command the README, docs/ and the sweeps' headers show is one the code has: the subcommand
exists, each flag it uses is in that subcommand's parser, and each spec file it names exists."""

from __future__ import annotations

import importlib
import re

import pytest
from helpers import ROOT

from tuner.cli import COMMANDS
from tuner.errors import ArgumentParser

# `python -m tuner.X` is the module form of `tuner NAME`
MODULES = {c.module: name for name, c in COMMANDS.items()}
MODULES["bench"] = "bench"  # python -m tuner.bench: the package's __main__ runs bench.cli
COMMAND = re.compile(r"(?:python -m tuner\.(?P<module>[a-z_.]+)|\btuner (?P<name>[a-z]+))"
                     r"(?P<rest>[^`|#\n]*)")


def documented() -> list[tuple[str, str, bool, str]]:
    """(file, subcommand, whether in its module form, the rest of the line) for every command
    shown."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "sweeps").glob("*.yaml"))]
    found = []
    for path in files:
        for m in COMMAND.finditer(path.read_text()):
            name = MODULES.get(m["module"]) if m["module"] else m["name"]
            if m["module"] and name is None:
                found.append((path.name, f"python -m tuner.{m['module']}", True, ""))  # no such module
            elif name in COMMANDS:  # prose such as "tuner checks ..." is not a command
                found.append((path.name, name, bool(m["module"]), m["rest"]))
    return found


def help_text(name: str, module_form: bool, capsys) -> str:
    """The subcommand's --help, as `tuner NAME` or as `python -m tuner.X` shows it (`tuner run`
    hides --resume, which is `tuner resume`'s job; `python -m tuner.run --resume` still works)."""
    module = importlib.import_module(f"tuner.{COMMANDS[name].module}")
    ArgumentParser.command = None if module_form else f"tuner {name}"
    try:
        with pytest.raises(SystemExit):
            module.main(["--help"])
    finally:
        ArgumentParser.command = None
    return capsys.readouterr().out


def test_every_documented_command_and_flag_exists(capsys):
    shown = documented()
    assert len(shown) > 30  # the docs show many commands: the pattern still finds them
    unknown = [(f, name) for f, name, _, _ in shown if name not in COMMANDS]
    assert not unknown, unknown
    helps = {key: help_text(*key, capsys) for key in {(n, m) for _, n, m, _ in shown}}
    missing = []
    for f, name, module_form, rest in shown:
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest):
            if not re.search(rf"(?<![\w-]){flag}\b", helps[name, module_form]):
                missing.append((f, name, flag))
        for spec in re.findall(r"\bsweeps/[\w.-]+\.yaml\b", rest):
            if not (ROOT / spec).is_file():
                missing.append((f, name, spec))
    assert not missing, missing
