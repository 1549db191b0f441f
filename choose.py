"""Choose a checkpoint's inference settings on its validation hold-out:
``python choose.py ckpt_path=<ckpt | run dir> [settings_search=wide] [output_ckpt=<new.ckpt>]``.

See conf/choose.yaml for the options.
"""

import hydra
from omegaconf import DictConfig

import emseg  # noqa: F401  (registers the config resolvers)
from emseg.choose import run
from emseg.cli import launch, run_or_exit


@hydra.main(version_base="1.3", config_path="conf", config_name="choose")
def main(cfg: DictConfig) -> float:
    """Store the chosen settings and return their validation foreground IoU."""
    return float(run_or_exit(run, cfg)["validation_fg_iou"])


if __name__ == "__main__":
    launch(main)
