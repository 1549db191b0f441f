"""Train a mitochondria segmentation model: ``python train.py [overrides]`` (see README)."""

import hydra
from omegaconf import DictConfig

import emseg  # noqa: F401  (registers the config resolvers)
from emseg.cli import launch, run_or_exit
from emseg.train import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Run one training job and return the metric a sweeper optimises."""
    metrics = run_or_exit(run, cfg)
    return metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    launch(main)
