"""Evaluate a checkpoint on the whole test volume: ``python eval.py ckpt_path=<ckpt>``."""

import sys

import hydra
from omegaconf import DictConfig

import emseg  # noqa: F401  (registers the config resolvers)
from emseg.cli import launch, run_or_exit
from emseg.evaluate import run
from emseg.zoo.paths import model_argument


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float:
    """Write metrics.json and return the whole-volume foreground IoU."""
    return run_or_exit(run, cfg)["fg_iou"]


if __name__ == "__main__":
    sys.argv = model_argument(sys.argv)  # model=<bioimage.io package> -> ckpt_path
    launch(main)
