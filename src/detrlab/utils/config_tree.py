"""Print and save the composed run configuration."""

from __future__ import annotations

from pathlib import Path

import rich
import rich.syntax
import rich.tree
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

#: Top-level groups shown first, in this order; every other key follows.
PRINT_ORDER = ("data", "model", "trainer", "callbacks", "logger", "paths")


@rank_zero_only
def print_config_tree(cfg: DictConfig, save_to: str | Path | None = None, resolve: bool = True) -> None:
    """Print ``cfg`` as a rich tree (one branch per top-level key) and optionally save it.

    Args:
        cfg: the composed config.
        save_to: a file that receives the same tree as plain text.
        resolve: resolve interpolations (``${data.num_classes}``) before printing.
    """
    tree = rich.tree.Tree("CONFIG", style="bold", guide_style="dim")
    keys = [k for k in PRINT_ORDER if k in cfg] + [k for k in cfg if k not in PRINT_ORDER and k != "hydra"]
    for key in keys:
        branch = tree.add(str(key), style="bold cyan", guide_style="dim")
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=resolve) if isinstance(node, DictConfig) else str(node)
        branch.add(rich.syntax.Syntax(text.rstrip(), "yaml", theme="ansi_dark"))
    rich.print(tree)
    if save_to is not None:
        path = Path(save_to)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as handle:
            rich.print(tree, file=handle)
