"""The console while a sweep runs (tuner.progress): a line per trial event with the sweep's
standing, from the events Ray Tune gives its callbacks (fake trials here; the real sweep's lines
are checked in test_e2e.py)."""

from dataclasses import dataclass, field

from helpers import ROOT

from tuner.progress import ConsoleProgress, clock
from tuner.specfile import load_spec


@dataclass
class FakeTrial:
    trial_id: str
    config: dict
    status: str = "PENDING"
    last_result: dict = field(default_factory=dict)
    error: str | None = None

    def get_error(self):
        return self.error


def test_a_line_per_trial_event_with_the_sweeps_standing():
    spec = load_spec(ROOT / "sweeps" / "fashion-quick.yaml", ["search.scheduler=asha"])
    lines = []
    console = ConsoleProgress(spec, out=lambda line, flush=False: lines.append(line))
    a = FakeTrial("a1", {"epochs": 2, "batch_size": 64, "lr": 1e-3})
    b = FakeTrial("b2", {"epochs": 2, "batch_size": 32, "lr": 3e-4})
    c = FakeTrial("c3", {"epochs": 1, "batch_size": 32, "lr": 3e-4})
    trials = [a, b, c]
    console.on_trial_start(0, trials, a)
    console.on_trial_start(0, trials, b)
    a.status = b.status = "RUNNING"
    a.last_result = {"epoch": 2, "val_accuracy": 0.81}
    console.on_trial_complete(1, trials, a)
    b.last_result = {"epoch": 1, "val_accuracy": 0.62}  # ASHA stopped it at its first rung
    console.on_trial_complete(2, trials, b)
    c.error = RuntimeError("CUDA out of memory")
    console.on_trial_error(3, trials, c)
    assert lines[0].startswith("trial a1 started: epochs=2, batch_size=64, lr=0.001 [0/4 done, 1 running")
    assert lines[1].startswith("trial b2 started: ") and "[0/4 done, 2 running" in lines[1]
    assert lines[2].startswith("trial a1 finished: val_accuracy 0.8100 after 2 epoch(s) [1/4 done, "
                               "1 running, best val_accuracy 0.8100, ")
    assert lines[2].endswith(" left]")  # 3 of 4 trials to go: an estimate
    assert lines[3].startswith("trial b2 stopped early at epoch 1 of 2: val_accuracy 0.6200 [2/4")
    assert "best val_accuracy 0.8100" in lines[3]  # the best stays the best
    assert lines[4].startswith("trial c3 failed: CUDA out of memory [3/4 done, 0 running")


def test_clock():
    assert (clock(5), clock(62), clock(3725)) == ("5s", "1m02s", "1h02m")
