"""Detect objects in images: ``python predict.py ckpt_path=... input=<image or folder>`` (see README)."""

import hydra
from omegaconf import DictConfig

from detrlab import predict
from detrlab.cli import report_user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
@report_user_errors
def main(cfg: DictConfig) -> None:
    predict.run(cfg)


if __name__ == "__main__":
    main()
