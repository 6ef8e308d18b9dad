"""tuner: hyperparameter sweeps for fine-tuning pretrained image models, on Ray Tune."""

__version__ = "0.2.0"
