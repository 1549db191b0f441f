"""Train a mitochondria segmentation model: ``python train.py [overrides]`` (see README)."""

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

import emseg  # noqa: F401  (registers the config resolvers)
from emseg.errors import EmsegError
from emseg.train import check_config, run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Run one training job and return the metric a sweeper optimises."""
    try:
        check_config(cfg)
        metrics = run(cfg)
    except EmsegError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        logging.getLogger("emseg").error("error: %s", err)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    return metrics.get(cfg.get("optimized_metric", "val/fg_iou"))


if __name__ == "__main__":
    main()
