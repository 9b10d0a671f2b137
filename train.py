"""Train a DETR-family detector: ``python train.py [overrides]`` (see README)."""

import hydra
from omegaconf import DictConfig

from detrlab import train
from detrlab.cli import report_user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@report_user_errors
def main(cfg: DictConfig) -> float | None:
    metrics = train.run(cfg)
    # Hydra sweepers (Optuna) maximise the value returned here.
    metric_name = cfg.get("optimized_metric")
    return metrics.get(metric_name) if metric_name else None


if __name__ == "__main__":
    main()
