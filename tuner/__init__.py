"""tuner: hyperparameter sweeps for fine-tuning pretrained image models, on Ray Tune.

From Python: `tuner.load(RUN_DIR)` reads a run folder and `tuner.run_sweep(SPEC)` runs one
(tuner.api); both are imported on first use, so `import tuner` stays instant.
"""

__version__ = "0.2.0"

__all__ = ["RunResult", "load", "run_sweep"]


def __getattr__(name: str):
    if name in __all__:
        from tuner import api

        return getattr(api, name)
    raise AttributeError(f"module 'tuner' has no attribute {name!r}")
