"""Segment EM data: ``python predict.py ckpt_path=<ckpt> input=<tif> output=<tif>``.

See conf/predict.yaml for the options.
"""

import sys

import hydra
from omegaconf import DictConfig

import emseg  # noqa: F401  (registers the config resolvers)
from emseg.cli import launch, run_or_exit
from emseg.predict import run
from emseg.zoo.paths import model_argument


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    """Write the probability volume (and optionally the mask) of ``cfg.input``."""
    run_or_exit(run, cfg)


if __name__ == "__main__":
    sys.argv = model_argument(sys.argv)  # model=<bioimage.io package> -> ckpt_path
    launch(main)
