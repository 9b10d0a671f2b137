"""Every entry-point command the README shows composes: a missing config, group option or key fails here.

Commands are taken from the README's fenced code blocks and inline code spans (``python train.py ...``,
``srun python train.py ...``, ``torchrun ... train.py ...``; the same for eval.py, predict.py and
export.py), with ``\\`` continuations joined, ``# comments`` and ``...`` dropped and the ``<...>``
placeholders replaced by example values. Each is composed with Hydra's compose API as the entry point
would, every interpolation is resolved, and train commands go through the run-time config checks on a
(simulated) machine with enough GPUs, so a command the README shows cannot be one ``train.py`` refuses.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from detrlab.config_validation import validate_run_config
from tests.helpers import compose_config

README = Path(__file__).resolve().parents[2] / "README.md"
ENTRY_POINTS = {"train.py": "train", "eval.py": "eval", "predict.py": "predict", "export.py": "export"}
#: Example values for the README's placeholders; a new placeholder must be added here.
PLACEHOLDERS = {
    "<date>": "2026-01-01_00-00-00",
    "<gpus per node>": "8",
    "<nodes>": "2",
    "<task_name>": "quickstart",
    "<run_name>": "2026-01-01_00-00-00",
}
_COMMAND = re.compile(r"(?:^|\s)(?:python|torchrun\b[^`]*?)\s+(train|eval|predict|export)\.py\b([^`\n]*)")


def readme_commands(text: str) -> list[str]:
    """``"<script> <args>"`` for every entry-point command in the README's code blocks and code spans."""
    commands = []
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M)
    prose = re.sub(r"^```[a-z]*\n.*?^```", "", text, flags=re.S | re.M)
    lines = []
    for block in blocks:
        lines += block.replace("\\\n", " ").splitlines()
    lines += re.findall(r"`([^`]+)`", prose.replace("\n", " "))
    for line in lines:
        line = line.split(" #", 1)[0]
        for match in _COMMAND.finditer(line):
            commands.append(" ".join(f"{match.group(1)}.py{match.group(2)}".split()))
    return commands


def hydra_overrides(command: str) -> tuple[str, list[str]]:
    """The config name and the override list of a command (placeholders replaced, sweeps at their first value)."""
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    unknown = re.findall(r"<[^>]+>", command)
    assert not unknown, (
        f"README placeholder(s) {unknown} in `{command}`: add an example value to PLACEHOLDERS"
    )
    script, *args = shlex.split(command)
    overrides = [a for a in args if a not in ("-m", "--multirun", "--cfg", "job", "...")]
    parsed = OverridesParser.create().parse_overrides(overrides)
    plain = []
    for override in parsed:
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()))
            plain.append(f"{override.get_key_element()}={first}")
        else:
            plain.append(override.input_line)
    return ENTRY_POINTS[script], plain


COMMANDS = readme_commands(README.read_text())


def test_the_readme_commands_are_found():
    scripts = {command.split()[0] for command in COMMANDS}
    assert {"train.py", "eval.py", "predict.py"} <= scripts
    assert len(COMMANDS) >= 20
    assert any("experiment=deta_r50_coco" in c for c in COMMANDS)
    joined = "python train.py a=1 \\\n    b=2"
    assert readme_commands(f"```bash\n{joined}\n```\n") == ["train.py a=1 b=2"]


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_composes(command, tmp_path, monkeypatch):
    config_name, overrides = hydra_overrides(command)
    try:
        cfg = compose_config(config_name, overrides, tmp_path)
        run_config = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
        # Every interpolation resolves; `???` stays allowed where the README writes `...` for paths.
        OmegaConf.to_container(run_config, resolve=True, throw_on_missing=False)
        if config_name == "train":
            monkeypatch.setattr(torch.cuda, "device_count", lambda: 16)
            validate_run_config(cfg)
    finally:
        GlobalHydra.instance().clear()


def test_a_readme_command_with_a_wrong_key_fails(tmp_path):
    config_name, overrides = hydra_overrides("train.py trainer.max_epoch=1")
    with pytest.raises(Exception, match="max_epoch"):
        compose_config(config_name, overrides, tmp_path)
    GlobalHydra.instance().clear()
