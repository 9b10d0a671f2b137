"""Batch sampler that groups images of similar aspect ratio, so padded batches waste less compute."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch.utils.data import BatchSampler, Sampler


def aspect_ratio_groups(aspect_ratios: Sequence[float]) -> list[int]:
    """Group id per image from width / height: 0 = landscape or square (w >= h), 1 = portrait."""
    return [0 if ratio >= 1.0 else 1 for ratio in aspect_ratios]


class GroupedBatchSampler(BatchSampler):
    """Yield batches of indices from ``sampler`` whose images share a group id.

    Indices are buffered per group and a batch is emitted as soon as a group has ``batch_size`` of them.
    The leftovers at the end of an epoch are batched together regardless of group (at most a few mixed
    batches), so the number of batches is ``ceil(len(sampler) / batch_size)`` (``floor`` with
    ``drop_last``) whatever the group sizes. This keeps every distributed rank at the same number of steps.

    It subclasses ``BatchSampler`` and takes ``sampler`` as an argument so that Lightning can re-create it
    with a ``DistributedSampler`` in multi-device runs; ``set_epoch`` is forwarded to the sampler.

    Args:
        sampler: yields dataset indices (e.g. ``RandomSampler``).
        group_ids: group id of every dataset index, e.g. from :func:`aspect_ratio_groups`.
        batch_size: samples per batch.
        drop_last: drop the final incomplete batch.
    """

    def __init__(
        self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int, drop_last: bool = False
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        # BatchSampler.__init__ is not called: it would only store the same three attributes.
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = {}
        for index in self.sampler:
            buffer = buffers.setdefault(self.group_ids[index], [])
            buffer.append(index)
            if len(buffer) == self.batch_size:
                yield list(buffer)
                buffer.clear()
        leftovers = [index for group in sorted(buffers) for index in buffers[group]]
        for start in range(0, len(leftovers), self.batch_size):
            batch = leftovers[start : start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.sampler) // self.batch_size
        return (len(self.sampler) + self.batch_size - 1) // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the wrapped sampler (``DistributedSampler`` reshuffles with it)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
