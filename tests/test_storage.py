"""Trial checkpoints in an object store, for a cluster without a shared disk.

An S3-compatible server (moto's server mode) runs on 127.0.0.1; tuner, Ray Tune and pyarrow talk to
it over HTTP as they would to S3, with the endpoint in the storage URI and dummy credentials in the
environment, which the cluster's nodes inherit from this process.
"""

import json
import logging
import os
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from helpers import QUICK, call_main, run_cli, short_tmpdir, start_cli, stop_group, wait_for

from tuner.errors import InputError

BUCKET = "sweeps"


@pytest.fixture
def s3(monkeypatch):
    """A fresh S3 server on 127.0.0.1 with one empty bucket; `uri` is a --storage in it."""
    from moto.server import ThreadedMotoServer

    # Dummy credentials, as every node of a real cluster would have real ones (env, instance role).
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "NO_PROXY": "127.0.0.1,localhost",
                       "no_proxy": "127.0.0.1,localhost"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "RAY_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        import boto3

        _, port = server.get_host_and_port()
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        client.create_bucket(Bucket=BUCKET)
        query = f"?endpoint_override=127.0.0.1:{port}&scheme=http"
        yield SimpleNamespace(client=client, query=query, uri=f"s3://{BUCKET}/runs{query}")
    finally:
        server.stop()


def keys(client, prefix: str = "") -> list[str]:
    """Every object's key in the bucket under `prefix`."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def bucket_reports(client) -> list[dict]:
    """Every report in the bucket's result.json files (what Ray Tune synced there so far)."""
    out = []
    for key in keys(client):
        if key.endswith("/result.json"):
            text = client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
            out += [{**json.loads(line), "trial_dir": key.split("/")[-2]}
                    for line in text.splitlines() if line.strip()]
    return out


def saved_epochs(client) -> dict[str, int]:
    """Trial id -> epoch of its last result, in the newest experiment state Ray Tune saved to the
    bucket (what a --resume starts from)."""
    states = sorted(k for k in keys(client) if "/experiment_state-" in k)
    if not states:
        return {}
    state = json.loads(client.get_object(Bucket=BUCKET, Key=states[-1])["Body"].read())
    last = [json.loads(meta)["last_result"] for _, meta in state["trial_data"]]
    return {r["trial_id"]: r["epoch"] for r in last if "epoch" in r}


def test_storage_uri_paths_keep_the_query_at_the_end():
    from tuner import sweep

    uri = "s3://b/runs?endpoint_override=127.0.0.1:9000&scheme=http"
    experiment = sweep.storage_join(uri, "fashion-x")
    assert experiment == "s3://b/runs/fashion-x?endpoint_override=127.0.0.1:9000&scheme=http"
    assert sweep.storage_split(experiment) == (uri, "fashion-x")
    assert sweep.storage_join("s3://b", "x", "y") == "s3://b/x/y"
    assert sweep.storage_split("/tmp/run/trials") == ("/tmp/run", "trials")
    checkpoint = SimpleNamespace(path="b/runs/fashion-x/trial_1/checkpoint_000001")
    assert sweep.checkpoint_location(checkpoint, experiment, Path("/tmp/run")) == (
        "s3://b/runs/fashion-x/trial_1/checkpoint_000001?endpoint_override=127.0.0.1:9000&scheme=http")
    local = SimpleNamespace(path="/tmp/run/trials/trial_1/checkpoint_000001")
    # a local checkpoint is named relative to its run folder, outside it by its own path
    assert sweep.checkpoint_location(local, "/tmp/run/trials", Path("/tmp/run")) == (
        "trials/trial_1/checkpoint_000001")
    assert sweep.checkpoint_location(local, "/tmp/run/trials", Path("/tmp/other")) == local.path


def test_storage_that_cannot_be_reached_is_bad_input(s3, tmp_path, capsys, monkeypatch):
    from tuner.cluster import check_storage

    check_storage(None, s3.uri)  # the bucket exists and answers
    for storage, message in [
        (f"s3://no-such-bucket/runs{s3.query}", "there is no bucket 'no-such-bucket'"),
        ("nosuch://bucket/runs", "Unrecognized filesystem type"),
        (f"s3://{BUCKET}/runs?endpoint_overide=127.0.0.1:9", "Unexpected query parameter"),
    ]:
        with pytest.raises(InputError, match=message):
            check_storage(None, storage)

    results = tmp_path / "results"
    missing = f"s3://no-such-bucket/runs{s3.query}"
    from tuner import run  # its main in this process: a dry run starts no Ray and trains nothing

    proc = call_main(run.main, [*QUICK, "--dry-run", "--set", "model.weights=none", "--storage",
                                missing, "--results", str(results)], capsys, monkeypatch, tmp_path,
                     NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [
        f"error: --storage {missing}: there is no bucket 'no-such-bucket'; create it first "
        "(tuner and Ray do not create buckets)"]
    assert not results.exists()


@pytest.mark.slow  # 116 s alone on 2 idle cores
@pytest.mark.cluster
def test_sweep_with_checkpoints_in_s3_survives_a_lost_node_and_a_killed_driver(
        s3, tmp_path, monkeypatch):
    """Head without CPUs for trials and one worker node: two 2-epoch trials, one at a time. The
    worker node dies mid-trial (another joins), then the driver is killed, then --resume: the
    checkpoints that carry the trials over both are only in the bucket."""
    from ray._private.authentication.authentication_token_generator import (
        generate_new_authentication_token,
    )
    from ray._private.authentication_test_utils import reset_auth_token_state
    from ray.cluster_utils import Cluster

    # Token authentication, as Ray 2.60 clusters have it (and as the driver turns on when it
    # finds a token); a token of our own, so that the test does not depend on ~/.ray.
    token = tmp_path / "auth_token"
    token.write_text(generate_new_authentication_token())
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    reset_auth_token_state()  # Ray caches its config and token per process: re-read them
    ray_tmp = short_tmpdir()  # the nodes' session folders (and the drivers'), removed at the end
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 0, "include_dashboard": False})
    proc = None
    try:
        lost = cluster.add_node(num_cpus=1)
        results = tmp_path / "results"
        proc = start_cli(*QUICK, "--address", cluster.address, "--results", str(results),
                         "--storage", s3.uri, "--set", "model.weights=none",
                         "--set", "data.test_subset=100",
                         "--set", "search.num_samples=2", "--set", "search.n_initial_points=1",
                         "--set", "search.max_concurrent=1", "--set", "run.max_failures=2",
                         "--set", "run.keep_checkpoints=best",
                         "--set", "search.parameters.epochs={choice: [2]}", tmp_path=tmp_path,
                         RAY_TMPDIR=str(ray_tmp))
        first = wait_for(lambda: [r for r in bucket_reports(s3.client) if r["epoch"] == 1], 300,
                         "a trial's first epoch in the bucket", proc)[0]
        assert first["node_id"] == lost.node_id
        cluster.remove_node(lost, allow_graceful=False)  # as a machine that loses power
        joined = cluster.add_node(num_cpus=1)
        # Killed once the second trial's first epoch is in the bucket, in its result.json and in
        # the experiment state alike (Ray uploads them side by side).
        second = wait_for(lambda: [r for r in bucket_reports(s3.client)
                                   if r["epoch"] == 1 and r["trial_id"] != first["trial_id"]
                                   and saved_epochs(s3.client).get(r["trial_id"]) == 1],
                          300, "the second trial's first epoch in the bucket", proc)[0]
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, with no warning
        proc.wait(timeout=60)
        (run,) = [p.parent for p in results.glob("*/*/status.json")]
        status = json.loads((run / "status.json").read_text())
        assert status["state"] == "running"
        assert status["experiment"] == f"s3://{BUCKET}/runs/fashion-quick-{run.name}{s3.query}"

        done = run_cli("--resume", str(run), "--address", cluster.address, tmp_path=tmp_path,
                       RAY_TMPDIR=str(ray_tmp))
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        if proc is not None:
            stop_group(proc)
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)

    trials, epochs = pd.read_csv(run / "trials.csv"), pd.read_csv(run / "epochs.csv")
    assert len(trials) == 2 and set(trials["status"]) == {"finished"}
    for trial_id in trials["trial_id"]:  # every epoch once: none trained twice, none lost
        assert epochs[epochs.trial_id == trial_id]["epoch"].tolist() == [1, 2]
    synced = pd.DataFrame(bucket_reports(s3.client))
    assert sorted(zip(synced.trial_id, synced.epoch)) == sorted(zip(epochs.trial_id, epochs.epoch))
    moved = epochs[epochs.trial_id == first["trial_id"]].set_index("epoch")
    assert moved.loc[1, "node_id"] == lost.node_id and moved.loc[2, "node_id"] == joined.node_id
    resumed = epochs[epochs.trial_id == second["trial_id"]].set_index("epoch")
    assert resumed.loc[1, "pid"] == second["pid"] != resumed.loc[2, "pid"]  # continued, not redone

    best = json.loads((run / "best.json").read_text())
    experiment = f"s3://{BUCKET}/runs/fashion-quick-{run.name}"
    assert best["checkpoint"].startswith(f"{experiment}/") and best["checkpoint"].endswith(s3.query)
    assert 0 <= best["test_accuracy"] <= 1 and best["test_images"] == 100
    # the chosen model was read out of the bucket by a Ray task and written beside the tables
    card = json.loads((run / "model" / "model.json").read_text())
    assert (run / "model" / "model.pt").stat().st_size > 40e6 and card["classes"]
    assert {"spec.yaml", "status.json", "trials.csv", "epochs.csv", "best.json",
            "report.html"} <= {p.name for p in run.iterdir()}
    assert not (run / "trials").exists()  # the checkpoints live in the bucket only
    assert json.loads((run / "status.json").read_text())["state"] == "finished"

    # run.keep_checkpoints: best deleted the other trial's checkpoint from the bucket
    prefix = f"runs/fashion-quick-{run.name}/"
    folders = {k.rsplit("/", 1)[0] for k in keys(s3.client, prefix) if "/checkpoint_" in k}
    assert folders == {best["checkpoint"].split("?")[0].removeprefix(f"s3://{BUCKET}/")}


# Credentials in a storage URI (pyarrow reads them from there): used, never printed or written.
KEY_ID, SECRET = "AKIAFAKEKEY0001", "FakeSecretValue0001"


def test_credentials_are_taken_out_of_every_uri_in_a_text():
    from tuner.specfile import redact

    assert redact(f"s3://{KEY_ID}:{SECRET}@b/runs?endpoint_override=127.0.0.1:9&scheme=http") == (
        "s3://b/runs?endpoint_override=127.0.0.1:9&scheme=http")
    assert redact(f"s3://b/r?access_key={KEY_ID}&secret_key={SECRET}&session_token=T&region=x") == (
        "s3://b/r?region=x")
    assert redact(f"python -m tuner.run q.yaml --set run.storage=s3://{KEY_ID}:{SECRET}@b/r "
                  f"--storage 'gs://{SECRET}@b'") == (
        "python -m tuner.run q.yaml --set run.storage=s3://b/r --storage 'gs://b'")
    assert redact(f"s3://{KEY_ID}:Fake/{SECRET}@b/r") == "s3://b/r"  # an unescaped '/' in it
    assert redact("/shared/sweeps and file:///tmp/x") == "/shared/sweeps and file:///tmp/x"


def no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text and KEY_ID not in text, text[-3000:]


@pytest.mark.cluster
def test_credentials_in_a_storage_uri_are_never_shown(s3, tmp_path, capsys, monkeypatch, caplog):
    """The dry runs are tuner.run's main in this process (what they log is caplog's, every level);
    the run that starts Ray before it checks the storage is the real command."""
    from tuner import run

    def dry_run(*args):
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            proc = call_main(run.main, [*QUICK, "--dry-run", *args], capsys, monkeypatch, tmp_path,
                             NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        proc.log = caplog.text
        return proc

    uri = f"s3://{KEY_ID}:{SECRET}@{BUCKET}/runs{s3.query}"
    results = tmp_path / "results"
    plan = dry_run("--set", "model.weights=none", "--storage", uri, "--results", str(results))
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert f"storage: s3://{BUCKET}/runs{s3.query}\n" in plan.stdout  # where, not how
    no_secret(plan.stdout, plan.stderr, plan.log)

    missing = f"s3://{KEY_ID}:{SECRET}@no-such-bucket/runs{s3.query}"
    # a run (Ray started, then the storage checked) and a dry run, the URI given either way
    real = run_cli(*QUICK, "--storage", missing, "--set", "model.weights=none", "--results",
                   str(results), tmp_path=tmp_path, timeout=300)
    dry = dry_run("--set", f"run.storage={missing}", "--set", "model.weights=none", "--results",
                  str(results))
    for proc in (real, dry):
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.splitlines()[-1] == (
            f"error: --storage s3://no-such-bucket/runs{s3.query}: there is no bucket "
            "'no-such-bucket'; create it first (tuner and Ray do not create buckets)")
        no_secret(proc.stdout, proc.stderr, getattr(proc, "log", ""))
    assert not results.exists()


@pytest.mark.cluster
@pytest.mark.slow
def test_a_run_with_credentials_in_its_storage_uri_writes_them_nowhere(s3, tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")  # the URI's are the only credentials
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    uri = f"s3://{KEY_ID}:{SECRET}@{BUCKET}/runs{s3.query}"
    results = tmp_path / "results"
    proc = run_cli(*QUICK, "--storage", uri, "--results", str(results), "--set", "model.weights=none",
                   "--set", "data.test_subset=100", "--set", "search.num_samples=1",
                   "--set", "search.n_initial_points=1",
                   "--set", "search.parameters.epochs={choice: [1]}", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    no_secret(proc.stdout, proc.stderr)
    (run,) = [p.parent for p in results.glob("*/*/status.json")]
    assert keys(s3.client, f"runs/fashion-quick-{run.name}/")  # the trials did use the bucket
    status = json.loads((run / "status.json").read_text())
    assert status["experiment"] == f"s3://{BUCKET}/runs/fashion-quick-{run.name}{s3.query}"
    assert {"spec.yaml", "status.json", "best.json", "report.html"} <= {p.name for p in run.iterdir()}
    for path in results.rglob("*"):
        if path.is_file():
            no_secret(path.read_bytes().decode("latin-1"))
