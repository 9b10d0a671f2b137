"""Rename a foreign state dict into ours: regex rules, merged q/k/v projections, aliases, strict checks.

A key map is an ordered list of :class:`Rule`. Each foreign key is renamed by the first rule whose
pattern matches it; a rule with ``part`` puts its tensor into one third of a merged projection
(``nn.MultiheadAttention.in_proj_*`` = q, k, v stacked along dim 0). Several foreign keys may land on
the same key of ours (checkpoints store shared heads once per alias); they must then hold equal
tensors. Whatever cannot be placed, and whatever our model lacks afterwards, is reported at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from detrlab.errors import CheckpointError

__all__ = ["CheckpointConversionError", "Rule", "remap_state_dict"]

# How many offending keys an error message lists before summarizing the rest.
_LISTED = 20


class CheckpointConversionError(CheckpointError, ValueError):
    """A foreign checkpoint whose keys or shapes do not fit the model built for it."""


@dataclass(frozen=True)
class Rule:
    """Rename keys that fully match ``pattern`` to ``re.sub(pattern, replacement, key)``.

    Args:
        pattern: a regex matched against the whole foreign key.
        replacement: the key of ours, with ``\\1`` style group references, or a function of the
            match (for index arithmetic); ``None`` drops the key (only for entries that carry no
            weights, e.g. BatchNorm's ``num_batches_tracked``).
        part: for q / k / v projections stored separately: the slot (0, 1, 2) of this tensor in
            the merged ``in_proj`` tensor of ours.
    """

    pattern: str
    replacement: str | Callable[[re.Match], str] | None
    part: int | None = None

    def apply(self, key: str) -> tuple[bool, str | None]:
        match = re.fullmatch(self.pattern, key)
        if match is None:
            return False, None
        if self.replacement is None:
            return True, None
        if callable(self.replacement):
            return True, self.replacement(match)
        return True, match.expand(self.replacement)


def _listing(title: str, keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = "\n    ".join(keys[:_LISTED])
    more = f"\n    ... and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
    return f"  {title} ({len(keys)}):\n    {shown}{more}"


def remap_state_dict(
    source: Mapping[str, Tensor],
    rules: list[Rule],
    expected: Mapping[str, Tensor],
    source_name: str,
) -> dict[str, Tensor]:
    """Rename ``source`` with ``rules`` and check the result against ``expected``.

    Args:
        source: the foreign state dict.
        rules: ordered rename rules (first match wins).
        expected: our model's state dict (keys and shapes to fill).
        source_name: names the checkpoint in error messages.

    Returns:
        A state dict with exactly the keys of ``expected``, loadable with ``strict=True``.

    Raises:
        CheckpointConversionError: listing foreign keys no rule knows, keys of ours nothing filled,
            renamed keys our model does not have, shape mismatches and unequal aliases.
    """
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    parts: dict[str, dict[int, Tensor]] = {}
    unmapped, conflicts = [], []
    for key, value in source.items():
        for rule in rules:
            matched, target = rule.apply(key)
            if matched:
                break
        else:
            unmapped.append(key)
            continue
        if target is None:
            continue
        if rule.part is not None:
            slots = parts.setdefault(target, {})
            if rule.part in slots and not torch.equal(slots[rule.part], value):
                conflicts.append(f"{key} -> {target}[part {rule.part}]")
            slots[rule.part] = value
            continue
        if target in out:
            # Aliases of one shared tensor (e.g. heads listed per decoder layer) must agree.
            if out[target].shape != value.shape or not torch.equal(out[target], value):
                conflicts.append(f"{key} and {origin[target]} -> {target} (different values)")
            continue
        out[target] = value
        origin[target] = key

    for target, slots in parts.items():
        if sorted(slots) != [0, 1, 2]:
            conflicts.append(f"{target}: only parts {sorted(slots)} of q/k/v found")
            continue
        out[target] = torch.cat([slots[0], slots[1], slots[2]], 0)
        origin[target] = f"q/k/v parts of {target}"

    missing = set(expected) - set(out)
    unexpected = set(out) - set(expected)
    shapes = [
        f"{origin[k]} -> {k}: checkpoint {tuple(out[k].shape)}, model {tuple(expected[k].shape)}"
        for k in set(out) & set(expected)
        if out[k].shape != expected[k].shape
    ]
    if unmapped or missing or unexpected or shapes or conflicts:
        sections = [
            (unmapped, "checkpoint keys no rule maps"),
            ([f"{origin[k]} -> {k}" for k in unexpected], "renamed keys the model does not have"),
            (missing, "model keys the checkpoint does not fill"),
            (shapes, "shape mismatches"),
            (conflicts, "conflicting duplicates"),
        ]
        details = "\n".join(_listing(title, keys) for keys, title in sections if keys)
        raise CheckpointConversionError(
            f"{source_name} does not match the model built from its configuration:\n{details}\n"
            "Check that the checkpoint is a DETR / Deformable DETR / DETA detection checkpoint and that "
            "any overrides passed to load_detector agree with its weights."
        )
    return {k: out[k] for k in expected}
