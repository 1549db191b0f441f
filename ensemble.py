"""Average several trained networks as one checkpoint:
``python ensemble.py 'members=[<ckpt | run dir>,<ckpt | run dir>]' output_ckpt=<new.ckpt>``.

See conf/ensemble.yaml for the options.
"""

import hydra
from omegaconf import DictConfig

import emseg  # noqa: F401  (registers the config resolvers)
from emseg.cli import launch, run_or_exit
from emseg.ensemble import run


@hydra.main(version_base="1.3", config_path="conf", config_name="ensemble")
def main(cfg: DictConfig) -> None:
    """Write the ensemble checkpoint."""
    run_or_exit(run, cfg)


if __name__ == "__main__":
    launch(main)
