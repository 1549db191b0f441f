"""Mitochondria as objects: ``python measure.py input=<probs | mask | labels volume>``.

See conf/measure.yaml for the options.
"""

import hydra
from omegaconf import DictConfig

import emseg  # noqa: F401  (registers the config resolvers)
from emseg.cli import launch, run_or_exit
from emseg.objects.run import run


@hydra.main(version_base="1.3", config_path="conf", config_name="measure")
def main(cfg: DictConfig) -> None:
    """Write the instance labels, the object table, its summary and histogram."""
    run_or_exit(run, cfg)


if __name__ == "__main__":
    launch(main)
