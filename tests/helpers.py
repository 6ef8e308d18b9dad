"""What tests share: tiny IDX files like Fashion-MNIST's, drivers of the real CLI, image
folders these tests draw, and checks that several test modules make."""

import base64
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tuner import fashion_mnist
from tuner.fashion_mnist import FILES

needs_fashion = pytest.mark.skipif(
    not (fashion_mnist.DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists()
    and not os.environ.get("FASHION_MNIST_DIR"),
    reason="needs the Fashion-MNIST files: apt-get install dataset-fashion-mnist",
)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file of unsigned bytes (gzip'd if the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fake_split_files(folder: Path, n_train: int, n_test: int, fill: int, gz: bool) -> None:
    """A tiny, recognisable dataset: every image filled with `fill`, labels cycling 0..9."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = FILES[split]
        suffix = ".gz" if gz else ""
        write_idx(folder / (images + suffix), np.full((n, 28, 28), fill, np.uint8))
        write_idx(folder / (labels + suffix), np.arange(n) % 10)



# --- driving the real CLI -----------------------------------------------------------------------


ROOT = Path(__file__).resolve().parents[1]

# A small, quick sweep: ~550 training images, trials of a few seconds on one CPU core.
QUICK = [
    "sweeps/fashion-quick.yaml",
    "--set", "data.train_subset=600",
    "--set", "data.test_subset=300",
    "--set", "search.parameters.batch_size={choice: [64, 128]}",
]


# No network for the CLI under test, whatever the machine has: a download (of ImageNet weights, say)
# goes to a proxy that refuses at once, so tests see what a machine without network sees. Loopback
# stays direct: Ray's gRPC honours these variables too.
OFFLINE = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "no_proxy": "127.0.0.1,localhost,::1", "NO_PROXY": "127.0.0.1,localhost,::1"}


def cli_env(tmp_path: Path, **extra: str | None) -> dict:
    """This process's environment for the CLI, offline, with extra variables (None removes one)."""
    env = {**os.environ, **OFFLINE, "TORCH_HOME": str(tmp_path / "torch-home"),
           "PYTHONUNBUFFERED": "1", **extra}
    return {k: v for k, v in env.items() if v is not None}


def run_cli(*args, tmp_path: Path, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    """`python -m tuner.run ARGS`, offline, to its end. Unless the test gives RAY_TMPDIR, an
    embedded Ray gets a short temporary folder of its own, removed afterwards (its session folder
    and spill with it): nothing is left under /tmp/ray."""
    own = None
    if "RAY_TMPDIR" not in env:
        own = short_tmpdir()
        env["RAY_TMPDIR"] = str(own)
    try:
        return subprocess.run([sys.executable, "-m", "tuner.run", *args], cwd=ROOT,
                              env=cli_env(tmp_path, **env), capture_output=True, text=True,
                              timeout=timeout)
    finally:
        if own is not None:
            shutil.rmtree(own, ignore_errors=True)


def start_cli(*args, tmp_path: Path, **env) -> subprocess.Popen:
    """The CLI in its own process group, so a test can signal it and clean up all it started
    (stop_group also removes the short RAY_TMPDIR given here unless the test gave its own)."""
    own = None
    if "RAY_TMPDIR" not in env:
        own = short_tmpdir()
        env["RAY_TMPDIR"] = str(own)
    log = open(tmp_path / "cli.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "tuner.run", *args], cwd=ROOT,
                            env=cli_env(tmp_path, **env), stdout=log, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    proc.ray_tmp = own
    return proc


class Ran:
    """What an in-process `main(argv)` call gave: its exit code and what it printed (the fields
    a subprocess.CompletedProcess has, so checks written for the real CLI read it as well)."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def call_main(main, argv: list, capsys, monkeypatch, tmp_path: Path, **env: str | None) -> Ran:
    """A CLI module's `main(argv)` in this process, as `python -m` would run it from the
    repository's root with cli_env's environment (offline; None removes a variable): bad input and
    dry runs without paying a subprocess's torch import. SystemExit (argparse) is an exit code;
    the process-wide state main touches (SIGTERM's handler, the environment) is restored."""
    import signal

    for key, value in {**OFFLINE, "TORCH_HOME": str(tmp_path / "torch-home"),
                       "RAY_AUTH_MODE": None, **env}.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(ROOT)
    sigterm = signal.getsignal(signal.SIGTERM)
    capsys.readouterr()  # what came before is not this call's
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    out, err = capsys.readouterr()
    return Ran(code, out, err)


def call_logged(main, argv: list, capsys, monkeypatch, caplog, tmp_path: Path, **env) -> Ran:
    """call_main, and what main logged at INFO and above appended to its stderr, as the real
    command's logging (basicConfig on stderr) would have printed it: so that a check that the
    command printed one line, or no traceback, counts its log lines too (in this process pytest's
    handlers take them, and basicConfig adds none)."""
    import logging

    caplog.clear()
    with caplog.at_level(logging.INFO):
        ran = call_main(main, argv, capsys, monkeypatch, tmp_path, **env)
    ran.stderr += "".join(f"{r.levelname} {r.name}: {r.getMessage()}\n" for r in caplog.records)
    return ran


def reports(root: Path) -> list[dict]:
    """Every report written so far by every trial (Ray Tune's result.json, one JSON per line),
    under a results root or a --storage folder."""
    out = []
    paths = [*Path(root).glob("*/*/trials/*/result.json"), *Path(root).glob("*/*/result.json")]
    for path in sorted(paths):
        for line in path.read_text().splitlines():
            try:
                out.append({**json.loads(line), "trial_dir": path.parent.name})
            except json.JSONDecodeError:
                pass  # a line being written right now
    return out


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """Poll until predicate() returns something truthy; fail if the CLI exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep exited ({proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def short_tmpdir() -> Path:
    """A fresh folder with a short path, for RAY_TMPDIR (Ray's socket paths must stay short)."""
    return Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))


def processes_using(path: Path) -> list[str]:
    """Command lines of live processes that name `path` (Ray's processes name their temp dir)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # ended meanwhile
        if str(path) in text:
            found.append(text)
    return found


def stop_group(proc: subprocess.Popen) -> None:
    """End the CLI we started and everything in its process group (its embedded Ray)."""
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    if getattr(proc, "ray_tmp", None) is not None:
        shutil.rmtree(proc.ray_tmp, ignore_errors=True)


# --- image folders ------------------------------------------------------------------------------

COLOURS = {"blue": (40, 60, 220), "green": (40, 190, 60), "red": (220, 40, 40)}  # sorted names


def draw_picture(cls: str, size: tuple[int, int], rng: np.random.Generator):
    """A PIL image of class `cls`: a noisy background tinted with the class colour and a shape in
    it (circle, square, triangle by class), at a random place and size."""
    from PIL import Image, ImageDraw

    w, h = size
    colour = np.array(COLOURS[cls])
    noise = rng.normal(0, 25, (h, w, 3))
    pixels = np.clip(0.35 * colour + 0.65 * 128 + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    r = int(rng.uniform(0.2, 0.35) * min(w, h))
    cx, cy = int(rng.uniform(r, w - r)), int(rng.uniform(r, h - r))
    fill = tuple(int(c) for c in colour)
    if cls == "red":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif cls == "green":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


def make_image_folder(root: Path, train_per_class: int = 30, test_per_class: int = 0,
                      odd_files: bool = True, seed: int = 0) -> Path:
    """An ImageFolder tree of 3 easy classes (colour and shape): JPEG and PNG of mixed sizes,
    and, with odd_files, grayscale, RGBA, palette and CMYK images, an upper-case extension and
    junk files (.DS_Store, notes.txt, Thumbs.db) to be skipped."""
    rng = np.random.default_rng(seed)
    sizes = [(64, 48), (80, 80), (50, 70), (120, 90)]
    splits = {"train": train_per_class, "test": test_per_class}
    for split, n in splits.items():
        for cls in (COLOURS if n else ()):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image = draw_picture(cls, sizes[i % len(sizes)], rng)
                if i % 2:
                    image.save(folder / f"{i:03d}.jpg", quality=90)
                else:
                    image.save(folder / f"{i:03d}.png")
    if odd_files:
        odd = root / "train" / "red"
        picture = draw_picture("red", (70, 50), rng)
        picture.convert("L").save(odd / "gray.png")
        picture.convert("RGBA").save(odd / "rgba.png")
        picture.convert("P").save(odd / "palette.png")
        picture.convert("CMYK").save(odd / "cmyk.jpg")
        picture.save(odd / "UPPER.JPG")
        for junk in (".DS_Store", "notes.txt", "Thumbs.db"):
            (odd / junk).write_bytes(b"not an image")
        (root / "train" / ".DS_Store").write_bytes(b"junk")
    return root


# A sweep of tiny image folders (sweeps/folder-quick.yaml) from random init: seconds per trial.
FOLDER_QUICK = ["sweeps/folder-quick.yaml", "--set", "model.weights=none",
                "--set", "data.resize=48", "--set", "data.image_size=40",
                "--set", "train.batch_size=16", "--set", "search.num_samples=2",
                "--set", "search.n_initial_points=1",
                "--set", "search.parameters={epochs: {choice: [3]}, lr: {loguniform: [1.0e-3, 2.0e-3]}}"]


def tuner(*args, tmp_path: Path, timeout: float = 600, **env) -> subprocess.CompletedProcess:
    """`python -m tuner ARGS` (the console script's module), offline, to its end."""
    return subprocess.run([sys.executable, "-m", "tuner", *args], cwd=ROOT,
                          env=cli_env(tmp_path, **env), capture_output=True, text=True,
                          timeout=timeout)


def assert_epochs_once(epochs: pd.DataFrame, trials: pd.DataFrame) -> None:
    """Each trial reported epochs 1..planned exactly once each: nothing trained twice or lost."""
    for _, t in trials.iterrows():
        got = epochs[epochs.trial_id == t.trial_id]["epoch"].tolist()
        planned = t.epochs_planned if "epochs_planned" in trials else t.epochs  # searched: `epochs`
        assert got == list(range(1, planned + 1)), (t.trial_id, got)


def suggestions(spec, n: int) -> list[tuple]:
    """The first n (batch_size, lr) configs the sweep's searcher proposes, asked in process as Ray
    Tune asks it (all before any result: n trials start at once)."""
    from tuner import sweep
    from tuner.space import param_space

    searcher = sweep.make_searcher(spec)
    searcher.set_search_properties(spec.search.metric, spec.search.mode, param_space(spec.search))
    return sorted(config_key(searcher.suggest(f"t{i}")) for i in range(n))


def config_key(config: dict) -> tuple:
    return int(config["batch_size"]), round(float(config["lr"]), 12)


# --- the report in a real browser ---------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def images(page: str) -> list[Image.Image]:
    """Every figure embedded in the page, decoded."""
    uris = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(u))) for u in uris]


CHECK = """<script>
window.addEventListener("load", () => {
  const pre = document.createElement("pre");
  pre.id = "image-check";
  pre.textContent = JSON.stringify([...document.images].map(i => {
    const r = i.getBoundingClientRect();
    return [i.naturalWidth, i.naturalHeight, r.left, r.top, r.width, r.height];
  }));
  document.body.appendChild(pre);
});
</script></body>"""
WINDOW = (1400, 2400)  # width, height of the browser window and screenshot (px)


def chromium(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--user-data-dir={profile}",
         *args],
        capture_output=True, text=True, timeout=120)


def check_in_browser(page: Path, tmp_path: Path) -> Path:
    """Open the page in headless Chromium: every figure must decode there at its own size, and a
    screenshot must show drawn figures where the page laid them out. Returns the screenshot."""
    html = page.read_text()
    expected = [im.size for im in images(html)]
    assert expected, "the page has no figures"
    probe = tmp_path / "probe.html"  # the page plus a script that reports each image as laid out
    probe.write_text(html.replace("</body>", CHECK))
    dom = chromium("--dump-dom", probe.as_uri(), tmp_path=tmp_path)
    found = re.search(r'<pre id="image-check">([^<]*)</pre>', dom.stdout)
    assert found, f"no image check in the DOM; stderr: {dom.stderr[-2000:]}"
    laid_out = json.loads(found.group(1))
    assert [(w, h) for w, h, *_ in laid_out] == expected  # every figure decoded, none broken

    shot = tmp_path / "screenshot.png"
    chromium(f"--screenshot={shot}", page.as_uri(), tmp_path=tmp_path)
    pixels = np.asarray(Image.open(shot).convert("L")).astype(float)
    assert pixels.shape == (WINDOW[1], WINDOW[0])
    seen = 0
    for _, _, left, top, width, height in laid_out:
        if top + height > WINDOW[1] or width < 100:
            continue  # below the screenshot's fold
        area = pixels[int(top):int(top + height), int(left):int(left + width)]
        assert area.std() > 10 and (area < 128).mean() > 0.005, f"a blank figure in {shot}"
        seen += 1
    assert seen >= 2, f"too few figures in view in {shot}"
    return shot
