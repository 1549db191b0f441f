"""Segment EM data: ``python predict.py ckpt_path=<ckpt> input=<tif> output=<tif>``.

See conf/predict.yaml for the options.
"""

import os
import sys

import hydra
from omegaconf import DictConfig

import emseg  # noqa: F401  (registers the config resolvers)
from emseg.errors import find_user_error
from emseg.predict import run


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    """Write the probability volume (and optionally the mask) of ``cfg.input``."""
    try:
        run(cfg)
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
