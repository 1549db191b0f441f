"""Export a checkpoint for use without emseg: ``python export.py ckpt_path=<ckpt> format=onnx``.

See conf/export.yaml for the options.
"""

import hydra
from omegaconf import DictConfig

import emseg  # noqa: F401  (registers the config resolvers)
from emseg.cli import launch, run_or_exit
from emseg.export import run


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    """Write the exported model and its JSON model card."""
    run_or_exit(run, cfg)


if __name__ == "__main__":
    launch(main)
