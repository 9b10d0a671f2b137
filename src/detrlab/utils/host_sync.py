"""Count the operations that would make the host wait for an accelerator, on any device.

On a GPU the host queues kernels and runs ahead; an operation whose *result shape or value* must be
known on the host (a scalar read, ``nonzero``, boolean-mask indexing, ...) blocks it until the device
has caught up, which empties the queue and leaves the GPU idle between steps. Such operations look
harmless on the CPU, so :class:`HostSyncCounter` records them under a ``TorchDispatchMode`` wherever
the tensors live: counting on the CPU tells what a GPU run would pay.

Counted (each call of these ops is one sync):

- ``aten._local_scalar_dense``: ``.item()``, ``bool(t)``, ``int(t)``, ``float(t)``, ``if t:``;
- ``aten.nonzero``, ``aten.unique*``, ``aten.masked_select``, ``aten.equal``;
- ``aten.index`` / ``aten.index_put_`` with a boolean index (``x[mask]``, ``x[mask] = v``);
- ``aten.repeat_interleave`` with tensor repeats and no ``output_size``;
- ``torchvision::nms`` (its output length is data-dependent);
- ``Tensor.cpu()`` and ``Tensor.tolist()`` (device-to-host copies; seen by a ``TorchFunctionMode``,
  since on CPU tensors they never reach the dispatcher).

Not counted: scalar reads inside ``torch.optim`` (its ``step`` counters are host tensors unless the
optimizer is ``capturable``/``fused``, so reading them costs nothing on a GPU either).
Not seen: ``.to(device)`` copies, whose direction depends on where the run is (``.to("cpu")`` of
device results is spelled ``.cpu()`` in this code base), and ``.numpy()``, which only takes CPU
tensors.

Code that reads tensor values only where that is free (host tensors) asks :func:`values_are_free`:
under a counter it answers ``False`` for every tensor, so such guarded reads are counted as they
would be on an accelerator instead of being skipped because the counting run is on the CPU.

Usage::

    with HostSyncCounter() as syncs:
        loss = criterion(detector(images, mask), targets)["loss"]
        loss.backward()
    print(syncs.total, syncs.by_op(), syncs.by_site())
"""

from __future__ import annotations

import contextvars
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSync", "HostSyncCounter", "values_are_free"]

_ALWAYS_SYNC = {
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::masked_select",
    "aten::equal",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::unique_dim_consecutive",
    "aten::_unique",
    "aten::_unique2",
    "torchvision::nms",
}
_BOOL_INDEX_OPS = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # src/detrlab
_THIS_FILE = Path(__file__).resolve()
_TORCH_OPTIM = Path(torch.optim.__file__).resolve().parent

_counting: contextvars.ContextVar[bool] = contextvars.ContextVar("detrlab_host_sync_counting", default=False)


def values_are_free(tensor: Tensor) -> bool:
    """Whether reading ``tensor``'s values on the host costs no device sync.

    True for CPU tensors, except while a :class:`HostSyncCounter` is active: the counter stands in
    for an accelerator run, where the same read would block.
    """
    return tensor.device.type == "cpu" and not _counting.get()


@dataclass(frozen=True)
class HostSync:
    """One syncing call: the op and where it was called from.

    ``site`` is ``file:line function`` of the innermost frame inside the ``detrlab`` package (or the
    innermost frame outside torch when none is), relative to the package or the working directory.
    """

    op: str
    site: str


def _is_bool_index(indices) -> bool:
    return any(
        isinstance(i, Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices if i is not None
    )


def _syncs(func, args, kwargs) -> bool:
    name = func._schema.name
    if name in _ALWAYS_SYNC or name.startswith("aten::unique"):
        return True
    if name in _BOOL_INDEX_OPS:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return _is_bool_index(indices)
    if name == "aten::repeat_interleave":
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        if len(args) == 1 and isinstance(args[0], Tensor) and "repeats" not in kwargs:
            repeats = args[0]  # repeat_interleave(repeats) overload
        output_size = kwargs.get("output_size")
        return isinstance(repeats, Tensor) and repeats.numel() > 1 and output_size is None
    return False


def _call_site() -> str | None:
    """Where the op was called from, or ``None`` for a read of ``torch.optim``'s host-side state."""
    fallback = None
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename).resolve()
        if path == _THIS_FILE:
            continue
        if path.is_relative_to(_TORCH_OPTIM):
            return None
        if path.is_relative_to(_PACKAGE_ROOT):
            return f"{path.relative_to(_PACKAGE_ROOT.parent)}:{frame.lineno} {frame.name}"
        if fallback is None and "torch" not in path.parts and "torchvision" not in path.parts:
            fallback = f"{path.name}:{frame.lineno} {frame.name}"
    return fallback or "<unknown>"


_DEVICE_TO_HOST = {Tensor.cpu: "Tensor.cpu", Tensor.tolist: "Tensor.tolist"}


class _DeviceToHostCopies(TorchFunctionMode):
    """Records ``Tensor.cpu()`` / ``Tensor.tolist()`` calls into its counter's events."""

    def __init__(self, events: list[HostSync]) -> None:
        super().__init__()
        self.events = events

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = _DEVICE_TO_HOST.get(func)
        if name is not None:
            site = _call_site()
            if site is not None:
                self.events.append(HostSync(name, site))
        return func(*args, **(kwargs or {}))


class HostSyncCounter(TorchDispatchMode):
    """Record every operation that would force a host sync on an accelerator (see the module doc).

    Attributes:
        events: the syncs in call order, :class:`HostSync` each.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: list[HostSync] = []
        self._copies = _DeviceToHostCopies(self.events)
        self._token = None

    def __enter__(self):
        self._token = _counting.set(True)
        self._copies.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._copies.__exit__(*exc)
            _counting.reset(self._token)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _syncs(func, args, kwargs):
            site = _call_site()
            if site is not None:
                self.events.append(HostSync(func._schema.name, site))
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        """Number of syncing calls recorded."""
        return len(self.events)

    def by_op(self) -> Counter:
        """``{op name: count}``."""
        return Counter(event.op for event in self.events)

    def by_site(self) -> Counter:
        """``{(site, op name): count}``."""
        return Counter((event.site, event.op) for event in self.events)

    def report(self, title: str) -> str:
        """A readable table: total, per op, per call site (most frequent first)."""
        lines = [f"{title}: {self.total} host syncs"]
        for op, count in self.by_op().most_common():
            lines.append(f"  {count:4d}  {op}")
        lines.append("  by call site:")
        for (site, op), count in self.by_site().most_common():
            lines.append(f"  {count:4d}  {site}  [{op}]")
        return "\n".join(lines)
