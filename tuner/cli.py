"""The `tuner` command: one name for every tool, each subcommand a thin wrapper around the module
doing that job (its `main(argv)`), imported only when that subcommand runs, so `tuner --help`
stays fast (no torch, no Ray)."""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from tuner import __version__
from tuner.errors import ArgumentParser, InputError

EXIT_CODES = """exit codes:
  0    done
  1    the sweep ran but no trial finished (tuner run, tuner resume)
  2    bad input: one `error: ...` line on stderr, nothing written
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM): the tables so far are written, marked
       partial, and the resume command is printed"""
TOOL_EXIT_CODES = """exit codes:
  0    done
{one}  2    bad input: one `error: ...` line on stderr, nothing written"""
# A tool's exit 1, for those that have one: it ran, but could not do its job.
EXIT_ONE = {
    "predict": "no file could be read as an image, nothing classified (the CSV's rows say why)",
    "export": "the exported file failed its check against the model: nothing written",
}


@dataclass(frozen=True)
class Command:
    module: str  # tuner.<module>.main(argv) does the work (a dotted path inside tuner)
    summary: str
    examples: tuple[str, ...]


COMMANDS = {
    "run": Command("run", "run a sweep from a YAML spec", (
        "tuner run sweeps/fashion-quick.yaml",
        "tuner run sweeps/fashion.yaml --set model.freeze=head --dry-run > plan.txt",
        "tuner run sweeps/fashion.yaml --address head-node:6379 --storage s3://bucket/sweeps",
    )),
    "resume": Command("resume", "continue an interrupted sweep, or add trials to a finished one", (
        "tuner resume results/fashion-quick/20260101-120000-ab12",
        "tuner resume results/fashion-quick/20260101-120000-ab12 --more 10",
    )),
    "report": Command("report", "write the HTML report of one or more run directories", (
        "tuner report results/fashion-quick/20260101-120000-ab12",
        "tuner report results/a/RUN results/b/RUN --out both.html --csv both.csv",
    )),
    "predict": Command("predict", "classify images with a run's chosen model", (
        "tuner predict results/fashion-quick/20260101-120000-ab12 photos/",
    )),
    "export": Command("export", "export a run's chosen model for use outside tuner", (
        "tuner export results/fashion-quick/20260101-120000-ab12 --out model.pt",
    )),
    "ls": Command("ls", "list the runs under a results folder: state, best score, trials, age", (
        "tuner ls",
        "tuner ls results/ --limit 0",
    )),
    "bench": Command("bench.cli", "measure training throughput, a sweep's fixed cost (--overhead), a "
                     "trial-epoch's (--epoch-cost), or a plain grid (--grid-baseline)", (
        "tuner bench --steps 30 --repeats 3",
        "tuner bench --folder data/hotdog --steps 0 --repeats 5",
        "tuner bench --overhead --repeats 3",
        "tuner bench --epoch-cost --epochs 4",
    )),
    "cost": Command("bench.flops", "FLOPs and speed per image of the model's stem variants", (
        "tuner cost --no-timing",
        "tuner cost --device cuda --steps 20",
    )),
}


def _examples(name: str) -> str:
    return "examples:\n" + "\n".join(f"  {e}" for e in COMMANDS[name].examples)


def _top_parser() -> ArgumentParser:
    lines = [f"  {name:<8} {c.summary}" for name, c in COMMANDS.items()]
    examples = [c.examples[0] for c in (COMMANDS["run"], COMMANDS["resume"], COMMANDS["report"])]
    p = ArgumentParser(
        prog="tuner", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Hyperparameter sweeps for fine-tuning pretrained image models, on Ray Tune.",
        usage="tuner [--version] COMMAND [ARGS...]   (tuner COMMAND --help for its options)",
        epilog="commands:\n" + "\n".join(lines) + "\n\nexamples:\n"
               + "\n".join(f"  {e}" for e in examples) + "\n\n" + EXIT_CODES)
    p.add_argument("--version", action="version", version=f"tuner {__version__}")
    p.add_argument("command", nargs="?", metavar="COMMAND", help=", ".join(COMMANDS))
    return p


def _bad_input(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    argv_from_console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0].startswith("-"):  # no command: --help, --version, or a mistake
        try:
            args = top.parse_args(argv[:1])
        except InputError as e:
            _bad_input(f"{e}; tuner --help lists the commands")
        if args.command is None:
            top.print_help(sys.stderr)
            return 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        _bad_input(f"unknown command {name!r}; use one of {', '.join(COMMANDS)} "
                   "(tuner --help lists them)")
    command = COMMANDS[name]
    if name == "run" and "--resume" in rest:
        _bad_input("tuner run starts a sweep; to continue one use tuner resume RUN_DIR")
    module = importlib.import_module(f"tuner.{command.module}")  # only the command's own imports
    if argv_from_console:  # the module then sees its own arguments (spec.yaml records them)
        sys.argv[1:] = rest
    help_asked = name not in ("run", "resume") and any(a in ("-h", "--help") for a in rest)
    ArgumentParser.command = f"tuner {name}"  # its usage line: as typed
    try:
        code = module.main(rest)
    except SystemExit as e:  # argparse's --help and errors exit by themselves
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if help_asked and code == 0:  # the module's own help, then what every tuner command shows
        one = f"  1    {EXIT_ONE[name]}\n" if name in EXIT_ONE else ""
        print(f"\n{_examples(name)}\n\n{TOOL_EXIT_CODES.format(one=one)}")
    if argv_from_console and name in ("run", "resume"):  # a sweep's driver: skip the slow teardown
        from tuner.fastexit import exit_now

        exit_now(code or 0)
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
