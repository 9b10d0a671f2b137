"""Thread scaling of the compiled deformable-attention kernel (forward and backward operators alone).

Times ``detrlab::ms_deform_attn`` and ``detrlab::ms_deform_attn_backward`` at an encoder shape on 1
thread and on N threads (``torch.set_num_threads``), alternating the thread counts round by round in
one process so that load from other processes affects both alike, and prints the speedup. A dense
``1024 x 1024`` matmul (ATen's own threaded kernel, compute-bound) is timed in the same rounds as a
host check: on a virtual machine whose second core is shared or throttled, that matmul does not
scale either, and the kernel's speedup should be read against it.

The default shape is the encoder of DETA at 640x640: batch 2, 5 levels 80x80, 40x40, 20x20, 10x10,
5x5 (8525 tokens), queries = tokens, 8 heads x 32 channels, 4 points, locations uniform in
[-0.05, 1.05] (some points fall outside the map), or with ``--points near`` scattered about two
cells around each query's own position, as a trained model samples (``sampling_points.py``).
``--image 512x640`` takes the levels of another image size (strides 8, 16, 32, 64, 128).

Usage::

    python benchmarks/kernel_threads.py                  # 1 vs 2 threads, 5 rounds
    python benchmarks/kernel_threads.py --threads 4 --repeats 9 --image 512x640 --points near
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from sampling_points import LAYOUTS, sampling_locations

from detrlab.models import msda_kernel


def encoder_levels(height: int, width: int, num_levels: int = 5) -> list[tuple[int, int]]:
    """Feature-map sizes of strides 8, 16, ... (ceil division, as strided convolutions give)."""
    return [(-(-height // 2**k), -(-width // 2**k)) for k in range(3, 3 + num_levels)]


def make_inputs(shapes, batch, heads, channels, points, layout="uniform", seed=0):
    """value [B,S,H,D], shapes [L,2], starts [L], locations [B,S,H,L,P,2], weights [B,S,H,L,P], grad [B,S,H*D]."""
    g = torch.Generator().manual_seed(seed)
    tokens = sum(h * w for h, w in shapes)
    levels = len(shapes)
    value = torch.randn(batch, tokens, heads, channels, generator=g)
    locations = sampling_locations(shapes, batch, tokens, heads, points, layout, g)
    weights = torch.rand(batch, tokens, heads, levels * points, generator=g).softmax(-1)
    weights = weights.view(batch, tokens, heads, levels, points)
    grad = torch.randn(batch, tokens, heads * channels, generator=g)
    shapes_t, starts = msda_kernel.level_tensors(shapes, value.device)
    return value, shapes_t, starts, locations, weights, grad


def _thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of each OS thread of this process (Linux ``schedstat``; else empty)."""
    times = {}
    tasks = Path("/proc/self/task")
    for task in tasks.iterdir() if tasks.is_dir() else ():
        try:
            times[task.name] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):  # the thread ended meanwhile
            continue
    return times


def _seconds(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the busiest thread) of one call.

    The busiest thread's CPU time is the call's critical path if every thread had a core of its
    own: unlike wall time it hardly moves with load from other processes.
    """
    before, wall = _thread_cpu_seconds(), time.perf_counter()
    fn()
    wall, after = time.perf_counter() - wall, _thread_cpu_seconds()
    busiest = max((after[t] - before.get(t, 0.0) for t in after), default=float("nan"))
    return wall, busiest


HOST_CHECK = "matmul"


def measure(inputs, thread_counts, repeats):
    """{(pass, threads): [(wall, busiest-thread CPU) seconds per round]}, thread counts alternated."""
    value, shapes, starts, locations, weights, grad = inputs
    ops = torch.ops.detrlab
    square = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(1))
    passes = {
        "forward": lambda: ops.ms_deform_attn(value, shapes, starts, locations, weights),
        "backward": lambda: ops.ms_deform_attn_backward(value, shapes, starts, locations, weights, grad),
        HOST_CHECK: lambda: square @ square,
    }
    times = {(name, n): [] for name in passes for n in thread_counts}
    for round_index in range(repeats + 1):  # round 0 warms up caches and the thread pool
        for n in thread_counts:
            torch.set_num_threads(n)
            for name, fn in passes.items():
                seconds = _seconds(fn)
                if round_index:
                    times[(name, n)].append(seconds)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="thread count compared with 1")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--image", default="640x640", help="HxW of the image whose 5 levels are sampled")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--points", choices=LAYOUTS, default="uniform", help="sampling locations")
    args = parser.parse_args()

    if not msda_kernel.load():
        raise SystemExit(f"the compiled kernel is unavailable: {msda_kernel.unavailable_reason()}")
    height, width = (int(x) for x in args.image.lower().split("x"))
    shapes = encoder_levels(height, width)
    inputs = make_inputs(shapes, args.batch, heads=8, channels=32, points=4, layout=args.points)
    tokens = inputs[0].shape[1]
    print(
        f"shape: batch {args.batch}, {tokens} tokens = levels {shapes}, queries = tokens, "
        f"8 heads x 32, 4 points ({args.points}); threading: {msda_kernel.threading_description()}"
    )
    counts = [1, args.threads]
    times = measure(inputs, counts, args.repeats)
    print(f"{'pass':<9} {'threads':>7} {'min s':>8} {'median s':>9} {'busiest-thread CPU s':>21}")
    for name in ("forward", "backward", HOST_CHECK):
        for n in counts:
            wall = [w for w, _ in times[(name, n)]]
            cpu = statistics.median(c for _, c in times[(name, n)])
            print(f"{name:<9} {n:>7} {min(wall):>8.4f} {statistics.median(wall):>9.4f} {cpu:>21.4f}")
    for name in ("forward", "backward", HOST_CHECK):
        one = [w for w, _ in times[(name, 1)]]
        many = [w for w, _ in times[(name, args.threads)]]
        cpu_one = statistics.median(c for _, c in times[(name, 1)])
        cpu_many = statistics.median(c for _, c in times[(name, args.threads)])
        print(
            f"{name} speedup 1 -> {args.threads} threads: wall {min(one) / min(many):.2f}x (min), "
            f"{statistics.median(one) / statistics.median(many):.2f}x (median); "
            f"critical-path CPU {cpu_one / cpu_many:.2f}x"
        )
    print(
        "(wall speedups need idle cores; the critical-path figure is the busiest thread's CPU time, "
        "what the wall time would be with a core per thread; the matmul is the host check, a "
        "compute-bound ATen op timed in the same rounds: what this machine gives two threads now)"
    )


if __name__ == "__main__":
    main()
