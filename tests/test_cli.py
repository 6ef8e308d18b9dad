"""The CLI on bad input: exit 2, one `error: ...` line on stderr, nothing written. Most cases call
tuner.run's `main(argv)` in this process (the checks are the same code a subprocess runs, without
its torch import); test_bad_input_through_a_real_process, the GPU request, --help and the `tuner`
command run real subprocesses, for the exit codes and the console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from helpers import call_main  # noqa: E402

from tuner.errors import InputError  # noqa: E402

FASHION = "sweeps/fashion.yaml"


def cli_process(*args: str, results: Path, timeout: float = 120,
                **extra: str) -> subprocess.CompletedProcess:
    """`python -m tuner.run ARGS --results RESULTS` as a real subprocess."""
    env = {**os.environ, **extra}
    for var in ("RAY_ADDRESS", "RAY_AUTH_MODE"):  # the default environment of a user
        env.pop(var, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "tuner.run", *args, "--results", str(results)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """cli(*ARGS, results=RESULTS): tuner.run's main(ARGS + --results RESULTS) in this process,
    from the repository's root, in a user's default environment (no RAY_ADDRESS)."""
    from tuner import run

    def call(*args: str, results: Path, timeout: float = 120, **extra: str):
        return call_main(run.main, [*args, "--results", str(results)], capsys, monkeypatch,
                         tmp_path, RAY_ADDRESS=None, **extra)

    return call


def check_bad_input(proc: subprocess.CompletedProcess, results: Path, *pieces: str) -> str:
    """Exit 2, stderr exactly one `error: ` line naming `pieces`, no traceback, no results root."""
    out = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, out
    assert "Traceback" not in proc.stdout + proc.stderr, out
    assert proc.stderr.startswith("error: "), out
    assert proc.stderr.endswith("\n") and proc.stderr.count("\n") == 1, out
    line = proc.stderr.rstrip("\n")
    for piece in pieces:
        assert piece in line, f"{piece!r} not in {line!r}"
    assert not results.exists(), f"{results} was created"
    return line


# --- spec and flag problems: cheap, no torch or Ray import ------------------------------------

SPEC_CASES = [
    # id, spec text (None: no file; "/": a directory), extra args, pieces of the error line
    ("missing_spec", None, [], ["no such file"]),
    ("directory", "/", [], ["is a directory"]),
    ("empty_file", "", [], ["empty"]),
    ("yaml_syntax_error", "train:\n  lr: [0.1, 0.2\n  epochs: 3\n", [], ["YAML syntax error"]),
    ("top_level_list", "- train\n- search\n", [], ["top level must be a mapping"]),
    ("unknown_key", "train:\n  learning_rate: 0.1\n", [], ["train.learning_rate", "unknown key", "lr"]),
    ("wrong_type", "train:\n  epochs: many\n", [], ["train.epochs", "many"]),
    ("empty_choice", "search:\n  parameters:\n    epochs: {choice: []}\n", [],
     ["search.parameters.epochs", "choice"]),
    ("low_ge_high", "search:\n  parameters:\n    lr: {uniform: [1.0e-3, 1.0e-4]}\n", [],
     ["search.parameters.lr", "low must be below high"]),
    ("lr_le_0", "train:\n  lr: 0\n", [], ["train.lr", "greater than 0"]),
    ("epochs_0", "train:\n  epochs: 0\n", [], ["train.epochs", "greater than 0"]),
    ("batch_size_0", "train:\n  batch_size: 0\n", [], ["train.batch_size", "greater than or equal to 2"]),
    ("num_samples_0", "search:\n  num_samples: 0\n", [], ["search.num_samples", "greater than 0"]),
    ("val_fraction_1.5", "data:\n  val_fraction: 1.5\n", [], ["data.val_fraction", "1.5"]),
    ("unknown_dataset", "data:\n  dataset: cifar10\n", [], ["data.dataset", "cifar10"]),
    ("unknown_arch", "model:\n  arch: alexnet\n", [], ["model.arch", "alexnet"]),
    ("unknown_freeze", "model:\n  freeze: until:layer9\n", [], ["model.freeze", "until:layer9"]),
    ("unknown_searcher", "search:\n  searcher: optuna\n", [], ["search.searcher", "optuna"]),
    ("unknown_mode", "search:\n  mode: maximise\n", [], ["search.mode", "maximise"]),
    ("malformed_set", FASHION, ["--set", "train.lr"], ["--set", "train.lr", "expected path.to.key=value"]),
    ("unknown_set_key", FASHION, ["--set", "train.learning_rate=0.1"],
     ["--set", "learning_rate", "valid keys", "epochs, batch_size, lr"]),
    ("set_subkey_of_scalar", FASHION, ["--set", "train.lr.x=1"], ["train.lr", "no sub-keys"]),
    ("unknown_flag", FASHION, ["--epochs", "3"], ["--epochs"]),
    ("set_of_a_searched_field", "sweeps/fashion-quick.yaml", ["--set", "train.epochs=3"],
     ["--set train.epochs", "searched", "search.parameters.epochs", "{choice: [1, 2]}"]),
    ("bare_set_key", FASHION, ["--set", "lr=0.1"], ["unknown key 'lr'", "did you mean train.lr?"]),
    # results/<name>/ stays inside the results root
    ("set_name_dot_dot", FASHION, ["--set", "name=..", "--dry-run"], ["name: ", "(got '..')"]),
]


@pytest.mark.parametrize("text, extra, pieces", [c[1:] for c in SPEC_CASES], ids=[c[0] for c in SPEC_CASES])
def test_bad_spec(tmp_path, cli, text, extra, pieces):
    if text is None:
        spec = tmp_path / "missing.yaml"
    elif text == "/":
        spec = tmp_path / "a-directory"
        spec.mkdir()
    elif text.startswith("sweeps/"):
        spec = Path(text)
    else:
        spec = tmp_path / "bad.yaml"
        spec.write_text(text)
    results = tmp_path / "res"
    line = check_bad_input(cli(str(spec), *extra, results=results), results, *pieces)
    if not str(text).startswith("sweeps/"):
        assert str(spec) in line  # the file is named


def test_binary_spec(tmp_path, cli):
    spec = tmp_path / "binary.yaml"
    spec.write_bytes(b"\xff\xfe\x00\x01binary")
    results = tmp_path / "res"
    check_bad_input(cli(str(spec), results=results), results, str(spec))


def test_bad_input_through_a_real_process(tmp_path):
    """The in-process cases' checks hold for the real command: exit code 2, stderr exactly one
    `error: ` line (nothing else a real process prints, such as logging, gets there), nothing
    written."""
    spec = tmp_path / "bad.yaml"
    spec.write_text("train:\n  learning_rate: 0.1\n")
    results = tmp_path / "res"
    line = check_bad_input(cli_process(str(spec), results=results), results,
                           "train.learning_rate", "unknown key", "lr")
    assert str(spec) in line


# --- weights: these import torch (a few seconds each) -----------------------------------------


def test_weights_path_missing(tmp_path, cli):
    missing = tmp_path / "nowhere" / "resnet.pt"
    results = tmp_path / "res"
    proc = cli(FASHION, "--set", f"model.weights={missing}", results=results)
    check_bad_input(proc, results, "model.weights", str(missing), "no such file")


def test_weights_not_a_resnet18_state_dict(tmp_path, cli):
    import torch

    bad = tmp_path / "small.pt"
    torch.save({"conv1.weight": torch.zeros(2, 2), "fc.weight": torch.zeros(3), "fc.bias": torch.zeros(1)}, bad)
    results = tmp_path / "res"
    proc = cli(FASHION, "--set", f"model.weights={bad}", results=results)
    check_bad_input(proc, results, "model.weights", str(bad), "resnet18")


# --- data not found: in-process, since the Debian mirror is found by a subprocess -------------


def test_data_not_found_names_every_place_tried(tmp_path, monkeypatch):
    from tuner import fashion_mnist as data

    root, mirror, debian = (tmp_path / d for d in ("root", "mirror", "debian"))
    for d in (root, mirror, debian):
        d.mkdir()
    monkeypatch.setattr(data, "DEBIAN_DIR", debian)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(mirror))
    with pytest.raises(InputError) as e:
        data.find_fashion_mnist(root, download=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("data: ")
    for place in (root / "FashionMNIST" / "raw", mirror, debian):
        assert str(place) in msg, msg
    assert "download" in msg
    assert list(root.iterdir()) == []  # no download attempted


# --- the cluster ------------------------------------------------------------------------------


def _data_available() -> bool:
    from tuner.fashion_mnist import DEBIAN_DIR

    return DEBIAN_DIR.is_dir() or bool(os.environ.get("FASHION_MNIST_DIR")) or (
        ROOT / "data" / "FashionMNIST" / "raw").is_dir()


def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None or Path("/dev/nvidiactl").exists()


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["run", "dry_run"])
def test_unreachable_address_is_bad_input_before_any_ray_process(tmp_path, cli, dry_run):
    """No Ray process starts (none writes a session folder), so there is nothing to wait for: the
    error comes at once rather than after Ray's own long connection retries."""
    if not _data_available():
        pytest.skip("Fashion-MNIST is not on this machine; data is checked before the address")
    results = tmp_path / "res"
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths
    try:
        proc = cli(FASHION, *dry_run, "--set", "model.weights=none", "--address", "127.0.0.1:1",
                   results=results, timeout=120, RAY_TMPDIR=str(ray_tmp))
        check_bad_input(proc, results, "--address", "127.0.0.1:1", "no Ray cluster answers")
        assert list(ray_tmp.iterdir()) == []
    finally:
        shutil.rmtree(ray_tmp)


@pytest.fixture(scope="module")
def gpu_request(tmp_path_factory):
    """One run (it starts a local Ray) of the GPU sweep on a machine without a GPU."""
    if _has_gpu():
        pytest.skip("this machine has a GPU: the sweep would really run")
    if not _data_available():
        pytest.skip("Fashion-MNIST is not on this machine; data is checked before resources")
    results = tmp_path_factory.mktemp("gpu") / "res"
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths
    try:
        proc = cli_process(FASHION, "--set", "model.weights=none", results=results, timeout=180,
                           RAY_TMPDIR=ray_tmp)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)  # the local Ray's session folder
    return proc, results


@pytest.mark.cluster
def test_gpu_request_without_gpu_exits_2_naming_gpu(gpu_request):
    proc, results = gpu_request
    out = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 2, out
    assert "Traceback" not in proc.stdout + proc.stderr, out
    last = proc.stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("error: resources: "), out
    assert "1 GPU" in last and "resources.gpu=0" in last, last
    assert not results.exists()


@pytest.mark.cluster
def test_gpu_request_stderr_is_one_error_line(gpu_request):
    proc, results = gpu_request
    check_bad_input(proc, results, "GPU")


# --- the good paths ---------------------------------------------------------------------------


DRY_RUN_CASES = [
    # id, --set overrides, pieces of the error line
    ("weights_file_missing", ["model.weights=/nonexistent/resnet18.pt"],
     ["model.weights", "/nonexistent/resnet18.pt", "no such file"]),
    ("gpu_on_this_machine", ["model.weights=none"], ["resources:", "1 GPU", "resources.gpu=0"]),
    ("data_unreadable", ["model.weights=none", "resources.gpu=0", "data.root={tmp}"],
     ["data: ", "train-images-idx3-ubyte", "not an IDX file"]),
]


@pytest.mark.parametrize("overrides, pieces", [c[1:] for c in DRY_RUN_CASES],
                         ids=[c[0] for c in DRY_RUN_CASES])
def test_dry_run_checks_what_can_be_checked_without_training(tmp_path, cli, overrides, pieces):
    if "1 GPU" in pieces and _has_gpu():
        pytest.skip("this machine has a GPU")
    raw = tmp_path / "FashionMNIST" / "raw"  # data.root={tmp}: the four files, one of them bad
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"this is not an IDX file")
    sets = [a for o in overrides for a in ("--set", o.format(tmp=tmp_path))]
    proc = cli("--dry-run", FASHION, *sets, results=tmp_path / "res")
    check_bad_input(proc, tmp_path / "res", *pieces)
    if "resources:" in pieces:  # what would have run comes first, on stdout
        assert proc.stdout.startswith("name: fashion\n") and "search space (" in proc.stdout


def test_dry_run_says_how_many_trials_run_at_once_and_why(tmp_path, cli):
    if not _data_available():
        pytest.skip("Fashion-MNIST is not on this machine")
    proc = cli("--dry-run", FASHION, "--set", "model.weights=none", "--set", "resources.gpu=0",
               "--set", "search.num_samples=12", "--set", "search.n_initial_points=6",
               results=tmp_path / "res")
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("trials at once: "))
    slots = os.cpu_count()
    assert line.startswith(f"trials at once: {min(slots, 6)} (this machine fits {slots} ")
    assert "limit 6: search.max_concurrent defaults to n_initial_points (6)" in line
    assert "weights: none (random init)" in proc.stdout
    assert "data: 54000 train / 6000 val / 10000 test, 10 classes" in proc.stdout


def test_dry_run_prints_the_search_space(tmp_path, cli):
    if not _data_available():
        pytest.skip("Fashion-MNIST is not on this machine; the dry run checks the data")
    results = tmp_path / "res"
    proc = cli("--dry-run", FASHION, "--set", "model.weights=none", "--set", "resources.gpu=0",
               results=results)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line.strip() for line in proc.stdout.splitlines()]
    assert "search space (hyperopt, 10 trials, maximise val_accuracy):" in lines
    space = lines[lines.index("search space (hyperopt, 10 trials, maximise val_accuracy):") + 1:]
    space = space[:space.index("")]  # the space, then a blank line and how the trials would run
    own = "the first trial runs the spec's own settings (search.default_trial): epochs=5, " \
        "batch_size=64, lr=0.001"
    assert space[-1] == own  # the spec's own settings: the first trial
    space = space[:-1]
    assert [line.split()[0] for line in space] == ["epochs", "batch_size", "lr"]
    assert any(line.split() == ["epochs", "choice", "of", "4,", "5,", "6,", "7,", "8,", "9"] for line in space)
    assert any(line.split() == ["batch_size", "choice", "of", "32,", "64,", "128"] for line in space)
    assert any(line.split() == ["lr", "uniform", "in", "[0.0001,", "0.001]"] for line in space)
    assert proc.stdout.startswith("name: fashion\n")  # the plan alone: the resolved spec first
    assert "INFO" not in proc.stdout and "Downloading" not in proc.stdout
    assert not results.exists()


def test_help():
    proc = subprocess.run([sys.executable, "-m", "tuner.run", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ")
    for flag in ("--set", "--address", "--results", "--dry-run"):
        assert flag in proc.stdout


# --- the tuner command ------------------------------------------------------------------------


def tuner(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_tuner_help_is_fast_and_imports_neither_torch_nor_ray():
    import time

    t0 = time.perf_counter()
    proc = tuner("-X", "importtime", "-m", "tuner", "--help")
    took = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    assert took < 1.5, f"tuner --help took {took:.2f} s"
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "tuner" in imported and not imported & {"torch", "ray", "torchvision", "pandas"}, imported
    for command in ("run", "resume", "ls", "report", "predict", "export", "bench", "cost"):
        assert f"  {command} " in proc.stdout
    assert "examples:\n  tuner run " in proc.stdout and "exit codes:" in proc.stdout
    assert tuner("-m", "tuner", "--version").stdout == f"tuner {__import__('tuner').__version__}\n"


@pytest.mark.parametrize("command", ["run", "resume", "report"])
def test_each_command_help_shows_examples_and_exit_codes(command, capsys, monkeypatch, tmp_path):
    from tuner import cli as tuner_cli

    proc = call_main(tuner_cli.main, [command, "--help"], capsys, monkeypatch, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ")
    examples = proc.stdout.split("examples:\n", 1)[1]
    assert examples.count(f"tuner {command} ") + examples.count("python -m tuner") >= 2
    assert "exit codes:" in proc.stdout and "  2    bad input" in proc.stdout


def test_tuner_run_is_tuner_dot_run():
    """Bad input reaches tuner.run's own checks, with its one-line error and exit 2."""
    proc = tuner("-m", "tuner", "run", "sweeps/fashion-quick.yaml", "--set", "lr=0.1")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --set lr: ")
    proc = tuner("-m", "tuner", "launch")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "unknown command" in proc.stderr



def test_imagenet_weights_that_cannot_be_had_are_one_error_line(tmp_path):
    """Offline, with no cached file: one `error:` line, not torch hub's "Downloading" before it."""
    from helpers import run_cli

    proc = run_cli("sweeps/fashion.yaml", "--dry-run", "--results", str(tmp_path / "res"),
                   tmp_path=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: model.weights: imagenet: could not load ")
    assert proc.stderr.count("\n") == 1 and "Downloading" not in proc.stdout + proc.stderr
    assert not (tmp_path / "res").exists()
