"""Evaluate a checkpoint with COCO AP: ``python eval.py ckpt_path=... [data=...]`` (see README)."""

import hydra
from omegaconf import DictConfig

from detrlab import eval as evaluation
from detrlab.cli import report_user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@report_user_errors
def main(cfg: DictConfig) -> None:
    evaluation.run(cfg)


if __name__ == "__main__":
    main()
