"""Fixtures and the test session's set-up; the helpers tests import are in helpers.py."""

import os

# Ray reads this when first imported: keep every Ray process a test starts on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import secrets  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path

import pytest
from filelock import FileLock
from helpers import write_fake_split_files  # noqa: E402
# The real runs several tests read, each started once per session when first asked for (runs.py).
from runs import comparison, folder_sweep, quick_sweep  # noqa: E402, F401


def one_ray_token() -> None:
    """Ray 2.60 writes ~/.ray/auth_token when a new local cluster starts and finds none. Two test
    processes starting their first clusters at once (two test runs side by side, or pytest -n)
    would each write one, and one cluster could then check a token the other replaced: write it
    once, under a lock, first."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    path = Path.home() / ".ray" / "auth_token"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(os.path.join(tempfile.gettempdir(), "tuner-tests-ray-token.lock")):
        if not path.exists():
            fresh = path.with_name(f"auth_token.{os.getpid()}")
            fresh.write_text(secrets.token_hex(32))
            fresh.chmod(0o600)
            os.replace(fresh, path)


one_ray_token()


@pytest.fixture
def tiny_mirror(tmp_path):
    folder = tmp_path / "mirror"
    write_fake_split_files(folder, 200, 50, fill=7, gz=True)
    return folder



# --- nothing left behind ------------------------------------------------------------------------

# Every process this session starts inherits this variable (the CLI, its embedded Ray, a test
# cluster's nodes and their workers): what carries it at the end was left behind by a test here,
# not by another test run or Ray on the same machine.
SESSION_MARK = f"TUNER_TEST_SESSION={os.getpid()}-{secrets.token_hex(4)}"
os.environ["TUNER_TEST_SESSION"] = SESSION_MARK.split("=", 1)[1]


def leftovers() -> dict[int, str]:
    """Live processes, other than this one, that this test session started (SESSION_MARK)."""
    found, mark = {}, SESSION_MARK.encode()
    for entry in Path("/proc").glob("[0-9]*"):
        if int(entry.name) == os.getpid():
            continue
        try:
            if mark not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # ended meanwhile
        if state != "Z":  # a zombie is gone but for its parent's wait
            found[int(entry.name)] = cmd.strip()[:200]
    return found


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if a process a test started outlives the session (after a grace period for
    Ray's own shutdown), and end those processes: a test must end all it starts."""
    if not Path("/proc/self/environ").exists():
        return
    import signal
    import time

    deadline = time.monotonic() + 20
    while (left := leftovers()) and time.monotonic() < deadline:
        time.sleep(0.5)
    if not left:
        return
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    lines = "\n".join(f"  {pid}: {cmd}" for pid, cmd in left.items())
    session.config.pluginmanager.get_plugin("terminalreporter").write_line(
        f"\nprocesses a test started outlived the session (ended now):\n{lines}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
