"""Compare two eval.py results on the same volume: ``python compare.py a=<run> b=<run>``.

See conf/compare.yaml for the options.
"""

import hydra
from omegaconf import DictConfig

import emseg  # noqa: F401  (registers the config resolvers)
from emseg.cli import launch, run_or_exit
from emseg.compare import run


@hydra.main(version_base="1.3", config_path="conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    """Write comparison.json: the paired difference of fg IoU and its interval."""
    run_or_exit(run, cfg)


if __name__ == "__main__":
    launch(main)
