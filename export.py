"""Export a checkpoint to ONNX: ``python export.py ckpt_path=... output=model.onnx`` (see README)."""

import hydra
from omegaconf import DictConfig

from detrlab import export
from detrlab.cli import report_user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
@report_user_errors
def main(cfg: DictConfig) -> None:
    export.run(cfg)


if __name__ == "__main__":
    main()
