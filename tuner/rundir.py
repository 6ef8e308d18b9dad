"""The run folder's files, named once: what a sweep writes in results/<name>/<run id>/ and reads
back to resume, add trials, report, predict and export; and the run folder read back to be resumed
(`load_resumable`), its experiments' locations as status.json keeps them (`stored`, `located`) and
the live driver's lock (`driver_lock`). Light (no pandas, no Ray), so that every entry point can
name them before its heavy imports."""

from __future__ import annotations

import json
import shlex
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.errors import InputError

if TYPE_CHECKING:
    from tuner.spec import Spec


STATUS_FILE = "status.json"  # {"state": running | partial | finished, "experiment": path relative to
#                              the run folder when inside it, or a URI, ...};
#                              a comparison's progress is its "compare" key
LOCK_FILE = ".driver.lock"  # held (flock) by the live driver of a run; the kernel frees it on death
TEST_LEDGER = "test_set.jsonl"  # one line per look at the test set, written before the look
SPEC_FILE = "spec.yaml"  # the resolved spec and its provenance
BEST_FILE = "best.json"  # the chosen trial, its test score, and how it was chosen
SESSIONS = "more"  # status.json's key for the sessions of added trials (tuner resume --more N):
#                    [{"experiment": path, "trials": n}, ...] in order


def read_json(path: Path) -> dict:
    """A JSON file of a run (status.json, best.json). Raises InputError naming the file if it is
    damaged (truncated by a crash or a full disk, edited by hand) or not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except UnicodeDecodeError as e:
        problem = f"not text ({e.reason})"
    except json.JSONDecodeError as e:
        problem = f"not valid JSON ({e.msg}: line {e.lineno} column {e.colno})"
    else:
        if isinstance(data, dict):
            return data
        problem = f"not a JSON object (a {type(data).__name__})"
    raise InputError(f"{path}: damaged, {problem}; restore it from a copy of the run folder, "
                     "or start the sweep again in a new run")


def read_json_if_any(path: Path):
    """A JSON file of a run as it is, or None if it is missing or unreadable (for a reader that
    goes on without it: `tuner ls`, the resume's sessions, the earlier choice)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def driver_lock(run_dir: Path):
    """Hold the run directory's lock while this driver lives: a second driver (a `--resume` of a
    live run) is bad input. The lock is an OS file lock, so a driver that died, however it died,
    leaves nothing stale behind and the next `--resume` takes the run over."""
    from filelock import FileLock, Timeout

    lock = FileLock(run_dir / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            who = json.loads((run_dir / STATUS_FILE).read_text())["driver"]
            holder = f"pid {who['pid']} on {who['host']}"
        except (OSError, ValueError, KeyError):
            holder = "another process"
        raise InputError(f"--resume {run_dir}: the sweep is still running ({holder}); stop that "
                         "driver first (Ctrl-C or kill PID), or wait for it") from None
    try:
        yield
    finally:
        lock.release()


def load_resumable(run_dir: Path, finished_ok: bool = False) -> tuple[Spec, dict]:
    """The spec and status (with the run's provenance) of a run directory that can be resumed
    (or, with finished_ok, given more trials: tuner.resume). Raises InputError."""
    status_file = run_dir / STATUS_FILE
    if not (run_dir / SPEC_FILE).is_file() or not status_file.is_file():
        raise InputError(f"--resume {run_dir}: not a tuner run directory (no spec.yaml and "
                         f"{STATUS_FILE}); give a folder such as results/<name>/<run id>")
    import yaml

    from tuner.specfile import load_spec

    status = read_json(status_file)
    if status.get(SESSIONS) and not finished_ok:  # tuner.resume's sessions: it resumes them itself
        raise InputError(f"--resume {run_dir}: trials were added to this sweep; continue it with "
                         f"tuner resume {shlex.quote(str(run_dir))}")
    if status["state"] == "finished" and not finished_ok:
        raise InputError(f"--resume {run_dir}: this sweep finished already; its results are in "
                         f"{run_dir}. Add trials with tuner resume {shlex.quote(str(run_dir))} "
                         "--more N, or start a new run")
    status["provenance"] = yaml.safe_load((run_dir / SPEC_FILE).read_text())["provenance"]
    spec = load_spec(run_dir / SPEC_FILE)
    status["experiment"] = located(status["experiment"], run_dir, spec)
    for session in status.get(SESSIONS, []):  # each session an experiment of its own
        session["experiment"] = located(session["experiment"], run_dir, spec)
    return spec, status


def stored(location: str, run_dir: Path) -> str:
    """A Ray Tune experiment's location as status.json keeps it: relative to the run folder when
    inside it, so a copied or moved run folder names its own trials, not the original's; else as it
    is (a --storage folder or URI), without credentials (redact)."""
    if "://" in location:
        from tuner.specfile import redact

        return redact(location)
    try:
        return Path(location).resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return location


def located(location: str, run_dir: Path, spec: Spec) -> str:
    """An experiment's location from status.json (see `stored`), as a path from where the run
    folder is now. Raises InputError for one that leads outside the run folder where the trials
    must be inside it (no run.storage): a run folder copied from one that kept absolute paths, or
    a status.json edited by hand; resuming it would write into another run."""
    if "://" in location:
        return location
    path = Path(location)
    if path.is_absolute() and spec.run.storage:  # a --storage folder: its own place
        return location
    full = (run_dir / path).resolve()  # an absolute path stays as it is
    if not full.is_relative_to(run_dir.resolve()):
        raise InputError(f"{run_dir / STATUS_FILE}: the trials it names, {location}, are outside "
                         f"this run folder (was it copied?); resuming would write into another run."
                         f" Resume the run that holds them, or start a new run")
    return str(full)
