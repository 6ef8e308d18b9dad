"""Where the sweep runs: Ray embedded on this machine (loopback only) or an existing cluster."""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager

import ray
from pyarrow import fs as pafs

from tuner import raycompat
from tuner.errors import InputError
from tuner.rayenv import split_address
from tuner.spec import Resources
from tuner.specfile import redact

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0


def connect(address: str | None, resources: Resources) -> bool:
    """Start Ray here (address None) or join the cluster at `address`. Returns True if we started it.

    Raises InputError, within seconds, for an unreachable address, a refused token, or (here)
    a per-trial request this machine can never meet.
    """
    if address:
        check_reachable(address)
        try:
            with _quiet_ray():
                ray.init(address=address, configure_logging=False, log_to_driver=False)
        except Exception as e:  # ConnectionError, AuthenticationError, RuntimeError...
            raise InputError(f"--address {address}: could not join the Ray cluster: "
                             + _explain(e)) from None
        return False
    check_fits_here(resources)
    if raycompat.cluster_enabled():
        log.warning("Ray was imported before tuner.rayenv.prepare() ran: the embedded Ray may "
                    "listen on this machine's network address, not only on loopback")
    # "local": a Ray of our own, even where `ray start` left one running on this machine (which
    # ray.init() would join). Trials report through Tune; their stdout (Ray's own chatter,
    # mostly) stays in the Ray logs.
    adopt_prestarted_workers()
    with _quiet_ray():
        ray.init(address="local", include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
    return True


def adopt_prestarted_workers() -> None:
    """Let trial actors start in the workers an embedded Ray starts with itself (one per CPU).

    Ray gives an actor only an idle worker that has never run a task and whose runtime
    environment is the actor's own. Ray Tune creates every trial actor with one of environment
    variables (PL_DISABLE_FORK=1 for PyTorch Lightning; the driver's AWS_* credentials and a few
    Ray Train switches, for a cluster's nodes), so a trial never gets one of those workers: it
    waits for a new process to start and import Ray first (about 3 s of a trivial sweep on 2
    cores). Embedded, every worker inherits this driver's environment, so the variables are set
    here and Tune's per-trial copy is emptied (for this process). Not for a cluster (--address),
    whose nodes need them. Should Ray Tune rename these, trials start as before, only later (a
    test checks it).
    """
    raycompat.adopt_tune_env_vars()


@contextmanager
def _quiet_ray():
    """Ray logs start-up notices (token auth enabled, ...) as warnings; keep the CLI's output ours."""
    logger = logging.getLogger("ray")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _explain(e: Exception) -> str:
    text = " ".join(f"{type(x).__name__}: {x}" for x in (e, e.__cause__) if x is not None)
    if "InvalidAuthToken" in text or "AuthenticationError" in text or "Unauthenticated" in text:
        return ("the cluster refused this client's token (token authentication); set "
                "RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a copy of the head node's "
                "~/.ray/auth_token")
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}"


def check_fits_here(resources: Resources) -> None:
    """Before starting Ray on this machine: can it run one trial at all?"""
    import torch

    gpus, cpus = torch.cuda.device_count(), os.cpu_count() or 1
    if resources.gpu > gpus or resources.cpu > cpus:
        raise InputError(_no_fit_message(resources, f"this machine has {cpus} CPU and {gpus} GPU",
                                         cpus, gpus))


def trial_slots(resources: Resources) -> int:
    """How many trials of this size the connected cluster's nodes fit at once."""
    return sum(_fits(n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0), resources)
               for n in _alive_nodes())


def trial_slots_here(resources: Resources) -> int:
    """How many trials of this size this machine fits at once (what an embedded Ray would see)."""
    import torch

    return _fits(os.cpu_count() or 1, torch.cuda.device_count(), resources)


def _fits(cpus: float, gpus: float, resources: Resources) -> int:
    n = int(cpus // resources.cpu)
    return min(n, int(gpus // resources.gpu)) if resources.gpu else n


def check_reachable(address: str) -> None:
    """Fail fast when nothing listens at host:port (Ray itself retries for a long time)."""
    if address == "auto":
        return
    host, port = split_address(address)
    if not host or not port.isdigit():
        raise InputError(f"--address {address}: expected host:port, e.g. 127.0.0.1:6379")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise InputError(
            f"--address {address}: no Ray cluster answers there ({e.strerror or e}); start one with "
            "`ray start --head` or drop --address to run on this machine"
        ) from None


def check_resources(resources: Resources) -> None:
    """Stop now if no node can ever run one trial, instead of leaving trials PENDING forever."""
    nodes = [n["Resources"] for n in _alive_nodes()]
    need_cpu, need_gpu = resources.cpu, resources.gpu
    if any(n.get("CPU", 0) >= need_cpu and n.get("GPU", 0) >= need_gpu for n in nodes):
        return
    total_cpu = sum(n.get("CPU", 0) for n in nodes)
    total_gpu = sum(n.get("GPU", 0) for n in nodes)
    best_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
    best_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
    has = (f"the cluster has {len(nodes)} node(s) with {total_cpu:g} CPU and {total_gpu:g} GPU in "
           f"all (largest node: {best_cpu:g} CPU, {best_gpu:g} GPU)")
    raise InputError(_no_fit_message(resources, has, best_cpu, best_gpu))


def _no_fit_message(resources: Resources, has: str, best_cpu: float, best_gpu: float) -> str:
    need_cpu, need_gpu = resources.cpu, resources.gpu
    if need_gpu > best_gpu:
        fix = ("add --set resources.gpu=0 to train on CPUs (slow; sweeps/fashion-quick.yaml is "
               "sized for that), or pass --address of a Ray cluster with GPUs")
    else:
        fix = f"lower resources.cpu to at most {best_cpu:g}"
    return f"resources: a trial needs {need_cpu:g} CPU and {need_gpu:g} GPU on one node, but {has}; {fix}"


def check_storage(address: str | None, storage: str | None) -> None:
    """On a cluster of several machines, trial checkpoints need storage that every node sees; a
    storage URI must reach its bucket from here, so that a typo, a missing bucket or credential
    is bad input now rather than every trial's error later."""
    if storage:
        if "://" in storage:
            check_storage_uri(storage)
        return
    nodes = _alive_nodes()
    if len(nodes) < 2 or len({n["NodeManagerAddress"] for n in nodes}) < 2:
        return  # one machine: its local disk is shared by all its nodes
    raise InputError(
        f"--address {address}: the cluster has {len(nodes)} nodes on several machines, and trial "
        "checkpoints must be stored where every node sees them; pass --storage with a shared "
        "folder or a URI such as s3://bucket/sweeps (run.storage in the spec)")


BUCKET_STORES = ("s3", "gcs")  # pyarrow filesystems whose paths start with a bucket


def check_storage_uri(storage: str) -> None:
    """The URI names a filesystem pyarrow has, with options it knows, and (S3, GCS) a bucket that
    exists and answers this machine's credentials. Raises InputError. The nodes reach it the same
    way, so each needs the same credentials (AWS_* environment variables, an instance role...)."""
    try:
        fs, path = pafs.FileSystem.from_uri(storage)
        bucket = path.split("/", 1)[0]
        found = fs.get_file_info(bucket if fs.type_name in BUCKET_STORES else path)
    except (ValueError, OSError) as e:  # ArrowInvalid is a ValueError; network, auth: OSError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(redact(f"--storage {storage}: {first}")) from None
    if fs.type_name in BUCKET_STORES and found.type == pafs.FileType.NotFound:
        raise InputError(f"--storage {redact(storage)}: there is no bucket {bucket!r}; create it first "
                         "(tuner and Ray do not create buckets)")


def _alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def describe_cluster() -> str:
    nodes = _alive_nodes()
    cpu = sum(n["Resources"].get("CPU", 0) for n in nodes)
    gpu = sum(n["Resources"].get("GPU", 0) for n in nodes)
    return f"{len(nodes)} node(s), {cpu:g} CPU, {gpu:g} GPU"
