"""A sweep on a real multi-node Ray cluster on 127.0.0.1: token auth, trials on the worker node,
and the worker node lost mid-trial.

`ray.cluster_utils.Cluster` starts a real head and a real worker node (separate GCS and raylet
processes); the test ends them through the cluster object, never with `ray stop`.
"""

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from helpers import (QUICK, ROOT, call_main, cli_env, reports, run_cli, short_tmpdir, start_cli,
                     stop_group, wait_for)
from ray._private.authentication.authentication_token_generator import (
    generate_new_authentication_token,
)
from ray._private.authentication_test_utils import reset_auth_token_state
from ray.cluster_utils import Cluster
from tuner.results import read_trials


pytestmark = pytest.mark.cluster

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (1 CPU) + worker node (1 CPU), token authentication on with a token of our own; one
    for the module: the tests that only need it to exist come first, and the one that loses the
    worker node comes last (file order)."""
    token = tmp_path_factory.mktemp("cluster") / "auth_token"
    token.write_text(generate_new_authentication_token())
    ray_tmp = short_tmpdir()  # the nodes' session folders, removed with the cluster
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
        monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
        monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        reset_auth_token_state()  # Ray caches its config and token per process: re-read them
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        try:
            c.worker = c.add_node(num_cpus=1)
            c.token, c.ray_tmp = token, str(ray_tmp)
            yield c
        finally:
            c.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)
        reset_auth_token_state()


@pytest.mark.slow  # Ray retries a refused token for ~20 s before it gives up
def test_client_without_the_token_is_refused(cluster, tmp_path):
    proc = run_cli(*QUICK, "--address", cluster.address, "--results", str(tmp_path / "res"),
                   tmp_path=tmp_path, timeout=180, RAY_AUTH_TOKEN="0" * 64,
                   RAY_TMPDIR=cluster.ray_tmp)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: --address") and "token" in errors[0]
    assert proc.stderr.splitlines()[-1] == errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "res").exists()


def test_dry_run_checks_the_request_against_the_clusters_nodes(cluster, tmp_path, capsys,
                                                               monkeypatch):
    """--dry-run --address joins, compares the per-trial request with the nodes, and leaves.
    tuner.run's main in this process (the sweeps here join with the real command)."""
    import ray

    from tuner import run

    results = tmp_path / "res"

    def dry_run(*sets):
        return call_main(run.main, [*QUICK, "--dry-run", "--address", cluster.address, *sets,
                                    "--results", str(results)], capsys, monkeypatch, tmp_path,
                         RAY_AUTH_MODE=None, RAY_TMPDIR=cluster.ray_tmp)

    fits = dry_run()
    assert fits.returncode == 0, fits.stderr[-2000:]
    assert "trials at once: 2 (2 node(s), 2 CPU, 0 GPU fits 2 at 1 CPU and 0 GPU each;" in fits.stdout
    assert not ray.is_initialized()  # it left the cluster
    too_big = dry_run("--set", "resources.cpu=2")
    assert too_big.returncode == 2
    assert too_big.stderr.splitlines()[-1].startswith(
        "error: resources: a trial needs 2 CPU and 0 GPU on one node, but the cluster has 2 node(s)")
    assert not ray.is_initialized()
    assert not results.exists()


@pytest.mark.slow  # a two-node sweep with a lost node: ~26 s alone
def test_sweep_runs_on_both_nodes_and_survives_losing_the_worker(cluster, tmp_path):
    """Last of the tests on the module's cluster: it loses the worker node for good."""
    results = tmp_path / "results"
    # RAY_AUTH_MODE is left unset for the client: tuner must switch token mode on itself when it
    # has a token (here through RAY_AUTH_TOKEN_PATH).
    shared = tmp_path / "shared"  # a folder every node sees: trial checkpoints live there
    proc = start_cli(*QUICK, "--address", cluster.address, "--results", str(results),
                     "--storage", str(shared),
                     "--set", "search.num_samples=2", "--set", "search.n_initial_points=1",
                     "--set", "search.max_concurrent=2", "--set", "run.max_failures=2",
                     "--set", "search.parameters.epochs={choice: [2]}",
                     tmp_path=tmp_path, RAY_AUTH_MODE=None,
                     RAY_TMPDIR=cluster.ray_tmp)
    worker = cluster.worker.node_id
    try:
        on_worker = wait_for(
            lambda: [r for r in reports(shared) if r["node_id"] == worker and r["epoch"] == 1],
            300, "a trial's first epoch on the worker node", proc)[0]
        # The worker node dies mid-trial, hard (SIGKILL to its raylet and workers, no drain), as a
        # machine that loses power: the graceful default would let it say goodbye first.
        cluster.remove_node(cluster.worker, allow_graceful=False)
        assert proc.wait(timeout=400) == 0, (tmp_path / "cli.log").read_text()[-3000:]
    finally:
        stop_group(proc)
    (run,) = list(results.glob("*/*/trials.csv"))
    best = json.loads((run.parent / "best.json").read_text())
    assert best["checkpoint"].startswith(str(shared / f"fashion-quick-{run.parent.name}"))
    assert not (run.parent / "trials").exists()  # the driver's run folder holds only the tables
    trials, epochs = read_trials(run.parent), pd.read_csv(run.parent / "epochs.csv")
    assert len(trials) == 2 and set(trials["status"]) == {"finished"}
    moved = epochs[epochs.trial_id == on_worker["trial_id"]].set_index("epoch")
    assert moved.index.tolist() == [1, 2]  # epoch 1 was not trained again
    assert moved.loc[1, "node_id"] == worker
    assert moved.loc[2, "node_id"] == cluster.head_node.node_id  # retried on the head
    assert set(trials["node_id"]) == {cluster.head_node.node_id}  # where each trial ended
    assert (trials["node_ip"] == "127.0.0.1").all()


# --- the embedded Ray: a trial starts in a worker Ray started with the cluster ---------------

PRESTARTED = r"""
import os, sys, time
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
from pathlib import Path
import ray
from ray.tune.execution.class_cache import _ActorClassCache
from tuner import cluster
from tuner.spec import Resources

def idle():
    # Ray workers of this process's cluster that wait for work (their title is ray::IDLE)
    parent, title = {}, {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            parent[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            title[int(proc.name)] = (proc / "cmdline").read_bytes().split(b"\0")[0]
        except (OSError, ValueError, IndexError):
            pass
    def ours(pid):
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == os.getpid():
                return True
        return False
    return {pid for pid, t in title.items() if t == b"ray::IDLE" and ours(pid)}

class Probe:  # stands in for the trainable: Tune's own actor class cache wraps it
    def pid(self):
        return os.getpid(), os.environ.get("PL_DISABLE_FORK")

assert cluster.connect(None, Resources(cpu=1))
deadline = time.monotonic() + 60
while len(idle()) < 2 and time.monotonic() < deadline:
    time.sleep(0.2)
before = idle()
actor = _ActorClassCache().get(Probe).options(num_cpus=1).remote()
pid, fork = ray.get(actor.pid.remote(), timeout=120)
print(len(before), pid in before, fork)
ray.shutdown()
"""


def test_an_embedded_trial_actor_starts_in_a_worker_ray_started_with_the_cluster(tmp_path):
    """Ray Tune's trial actors carry a runtime environment of their own, which keeps them out of
    the workers Ray starts with a cluster; embedded, tuner sets those variables in the workers'
    environment instead (cluster.adopt_prestarted_workers). Checked against the installed Ray
    Tune: should it rename what this relies on, the trial starts in a new process again, and
    this fails."""
    ray_tmp = short_tmpdir()
    try:
        proc = subprocess.run([sys.executable, "-c", PRESTARTED], cwd=ROOT,
                              env=cli_env(tmp_path, RAY_TMPDIR=str(ray_tmp), RAY_AUTH_MODE=None,
                                           RAY_AUTH_TOKEN_PATH=None),  # not the cluster's
                              capture_output=True,
                              text=True, timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, reused, fork = proc.stdout.split()
    assert int(count) >= 1 and reused == "True" and fork == "1", proc.stdout
