"""Where else a sweep's reports go (`run.log`): MLflow and Weights & Biases, through Ray Tune's
logger callbacks, beside the TensorBoard event files every trial writes anyway (Ray Tune's default
logger: `tensorboard --logdir RUN_DIR/trials`).

Both are optional packages (`pip install 'tuner[mlflow]'`, `'tuner[wandb]'`), checked with the rest
of the input before anything runs. MLflow logs where MLflow itself would: $MLFLOW_TRACKING_URI, else
its default (MLflow 3: sqlite:///mlflow.db in the working folder, where `mlflow ui` looks); one
MLflow experiment per spec name, one run per trial. W&B logs to the project
$WANDB_PROJECT, else the spec's name, one group per sweep; it needs a login ($WANDB_API_KEY or
`wandb login`) unless $WANDB_MODE is offline or disabled.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from tuner.errors import InputError
from tuner.spec import Spec

PACKAGES = {"mlflow": "mlflow", "wandb": "wandb"}


def check(spec: Spec) -> None:
    """Raise InputError if a logger `run.log` asks for cannot work here."""
    for name in spec.run.log:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise InputError(f"run.log: {name} is not installed here; pip install 'tuner[{name}]' "
                             f"(or {PACKAGES[name]}), or drop it from run.log")
    if "wandb" in spec.run.log and not wandb_can_log():
        raise InputError("run.log: wandb has no login here: set WANDB_API_KEY or run `wandb login`, "
                         "or set WANDB_MODE=offline (logs to ./wandb, `wandb sync` later)")


def wandb_can_log() -> bool:
    if os.environ.get("WANDB_MODE") in ("offline", "disabled") or os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace")


def callbacks(spec: Spec, group: str) -> list:
    """Ray Tune's logger callbacks for `run.log`; `group` names this sweep (its experiment)."""
    out = []
    if "mlflow" in spec.run.log:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        out.append(MLflowLoggerCallback(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"),
                                        experiment_name=spec.name,
                                        tags={"tuner.sweep": group}))
    if "wandb" in spec.run.log:
        from ray.air.integrations.wandb import WandbLoggerCallback

        out.append(WandbLoggerCallback(project=os.environ.get("WANDB_PROJECT") or spec.name,
                                       group=group))
    return out
