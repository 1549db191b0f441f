"""Evaluate a checkpoint on the whole test volume: ``python eval.py ckpt_path=<ckpt>``."""

import os
import sys

import hydra
from omegaconf import DictConfig

import emseg  # noqa: F401  (registers the config resolvers)
from emseg.errors import find_user_error
from emseg.evaluate import run


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float:
    """Write metrics.json and return the whole-volume foreground IoU."""
    try:
        metrics = run(cfg)
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)
    return metrics["fg_iou"]


if __name__ == "__main__":
    main()
