"""Where the sweep runs: Ray embedded on this machine (loopback only) or an existing cluster."""

from __future__ import annotations

import logging
import socket

import ray
from ray._private import ray_constants

from tuner.errors import InputError
from tuner.spec import Resources

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0


def connect(address: str | None) -> bool:
    """Start Ray here (address None) or join the cluster at `address`. Returns True if we started it.

    Raises InputError for an unreachable address or a refused token, within seconds.
    """
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING, configure_logging=False,
                     log_to_driver=False)
        except Exception as e:  # ConnectionError, AuthenticationError, RuntimeError...
            raise InputError(f"--address {address}: could not join the Ray cluster: {_first_line(e)}"
                             + _auth_hint(e)) from None
        return False
    if ray_constants.ENABLE_RAY_CLUSTER:
        log.warning("Ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set: the "
                    "embedded Ray may listen on this machine's network address, not only loopback")
    # Trials report through Tune; their stdout (Ray's own chatter, mostly) stays in the Ray logs.
    ray.init(include_dashboard=False, logging_level=logging.WARNING, configure_logging=False,
             log_to_driver=False)
    return True


def check_reachable(address: str) -> None:
    """Fail fast when nothing listens at host:port (Ray itself retries for a long time)."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise InputError(f"--address {address}: expected host:port, e.g. 127.0.0.1:6379")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise InputError(
            f"--address {address}: no Ray cluster answers there ({e.strerror or e}); start one with "
            "`ray start --head` or drop --address to run on this machine"
        ) from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _auth_hint(e: Exception) -> str:
    text = f"{type(e).__name__} {e}".lower()
    if "auth" in text or "token" in text or "unauthenticated" in text:
        return ("; the cluster requires its token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH "
                "(the head node's ~/.ray/auth_token)")
    return ""


def check_resources(resources: Resources) -> None:
    """Stop now if no node can ever run one trial, instead of leaving trials PENDING forever."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    need_cpu, need_gpu = resources.cpu, resources.gpu
    if any(n.get("CPU", 0) >= need_cpu and n.get("GPU", 0) >= need_gpu for n in nodes):
        return
    total_cpu = sum(n.get("CPU", 0) for n in nodes)
    total_gpu = sum(n.get("GPU", 0) for n in nodes)
    best_cpu = max((n.get("CPU", 0) for n in nodes), default=0)
    best_gpu = max((n.get("GPU", 0) for n in nodes), default=0)
    fix = ("set --set resources.gpu=0 to train on CPUs (slow: use sweeps/fashion-quick.yaml), or "
           "pass --address of a cluster with GPUs") if need_gpu > best_gpu else (
           f"lower resources.cpu to at most {best_cpu:g}")
    raise InputError(
        f"resources: a trial needs {need_cpu:g} CPU and {need_gpu:g} GPU on one node, but the cluster "
        f"has {len(nodes)} node(s) with {total_cpu:g} CPU and {total_gpu:g} GPU in all (largest node: "
        f"{best_cpu:g} CPU, {best_gpu:g} GPU); {fix}"
    )


def describe_cluster() -> str:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpu = sum(n["Resources"].get("CPU", 0) for n in nodes)
    gpu = sum(n["Resources"].get("GPU", 0) for n in nodes)
    return f"{len(nodes)} node(s), {cpu:g} CPU, {gpu:g} GPU"
