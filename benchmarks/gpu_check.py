"""One command for a GPU machine: the Triton deformable-attention op and DETA-R50 on the GPU, one table.

Sections (each prints rows into one final table; a section that fails reports FAIL with its error
and the others still run):

- ``correctness``: the Triton op against an fp64 PyTorch reference (fp32 and bf16 value), and an
  fp64 ``gradcheck`` on small shapes;
- ``op``: forward and forward+backward time and peak memory of the op at DETA's encoder shape
  (800x1216, batch 2: levels 100x152 ... 7x10, 8 heads of 32, 4 points), its decoder shape (900
  queries) and the 4-level Deformable-DETR encoder, fp32 and bf16, for the Triton op, the
  ``grid_sample`` path (eager; ``torch.compile``d at the DETA encoder shape) and, when installed,
  the ``deformops`` package's Triton kernel;
- ``deta``: one DETA-R50 training step (fp32 and bf16-mixed) and one inference forward against the
  transformers 4.57 reference on the same weights (``benchmarks/deta_vs_reference.py`` builds both):
  time and peak memory;
- ``train``: a 50-step ``python train.py trainer=gpu`` run on the synthetic data (wall time).

Usage::

    python benchmarks/gpu_check.py              # on a CUDA machine, all sections, <= 7 minutes
    python benchmarks/gpu_check.py --dry-run    # CPU, tiny shapes, every section (Triton op under
                                                # TRITON_INTERPRET=1); GPU-only parts say "skipped"

On a machine without network, install the wheels of ``benchmarks/gpu_check_wheels.sh`` first
(that script prints the runner command).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent

#: DETA's levels at 800x1216 (strides 8..128), and their Deformable-DETR 4-level subset.
DETA_LEVELS = [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)]
TINY_LEVELS = [(6, 8), (3, 4), (2, 2), (1, 1)]


@dataclass
class Row:
    section: str
    case: str
    result: str
    note: str = ""


class Check:
    """Runs the sections and collects their rows."""

    def __init__(self, args) -> None:
        import torch

        self.args = args
        self.torch = torch
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.rows: list[Row] = []

    def add(self, section: str, case: str, result: str, note: str = "") -> None:
        self.rows.append(Row(section, case, result, note))
        print(f"[{section}] {case}: {result} {note}", flush=True)

    # ---- helpers -------------------------------------------------------------------------------

    def triton_available(self) -> str | None:
        """None when ``implementation="triton"`` exists, else why not."""
        from detrlab.models import deformable_attention

        if "triton" not in getattr(deformable_attention, "IMPLEMENTATIONS", ()):
            return "detrlab has no attention_implementation='triton' (Triton kernel not merged)"
        if not self.cuda and os.environ.get("TRITON_INTERPRET") != "1":
            return "Triton on CPU tensors needs TRITON_INTERPRET=1 set before start-up"
        return None

    def op_inputs(self, levels, queries, heads=None, head_dim=32, points=4, batch=2, dtype=None, seed=0):
        """Random ``value`` [B, S, H, D] in ``dtype``, ``loc`` [B, Q, H, L, P, 2] (10% outside [0, 1])
        and softmaxed ``weights`` [B, Q, H, L, P], the last two in fp32 (fp64 for an fp64 value)."""
        torch = self.torch
        if heads is None:  # DETA's 8 heads; the dry run's Triton interpreter runs each program in Python
            heads, head_dim, points, batch = (
                (2, 8, 2, 1) if self.args.dry_run else (8, head_dim, points, batch)
            )
        g = torch.Generator(device=self.device).manual_seed(seed)
        s = sum(h * w for h, w in levels)
        value = torch.randn(batch, s, heads, head_dim, generator=g, device=self.device).to(dtype)
        coord_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        shape = (batch, queries, heads, len(levels), points)
        loc = torch.rand(*shape, 2, generator=g, device=self.device, dtype=coord_dtype) * 1.2 - 0.1
        weights = torch.rand(*shape, generator=g, device=self.device, dtype=coord_dtype).softmax(-1)
        return value, loc, weights

    def timed(self, fn) -> float:
        """Median milliseconds of ``fn()`` (device events on CUDA, a host clock on the CPU)."""
        if self.cuda:
            from triton.testing import do_bench

            return float(do_bench(fn, warmup=25, rep=self.args.rep_ms, return_mode="median"))
        fn()
        times = []
        for _ in range(2):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    def peak_extra_mib(self, fn) -> float | None:
        """Peak device memory ``fn()`` allocates beyond what was allocated before (MiB); None on CPU."""
        if not self.cuda:
            return None
        torch = self.torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20

    @staticmethod
    def fmt_mib(mib: float | None) -> str:
        return "n/a (CPU)" if mib is None else f"{mib:.0f} MiB"

    # ---- sections --------------------------------------------------------------------------------

    def correctness(self) -> None:
        torch = self.torch
        from detrlab.models.deformable_attention import (
            multi_scale_deformable_attention,
            multi_scale_deformable_attention_pytorch,
        )

        missing = self.triton_available()
        if missing:
            self.add("correctness", "Triton op", "skipped", missing)
            return
        levels = TINY_LEVELS if self.args.dry_run else DETA_LEVELS[2:]
        queries = 5 if self.args.dry_run else 37  # not a multiple of any block size
        value, loc, weights = self.op_inputs(levels, queries=queries, dtype=torch.float64, seed=1)
        reference = multi_scale_deformable_attention_pytorch(value, levels, loc, weights)
        for dtype, bound in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
            out = multi_scale_deformable_attention(
                value.to(dtype), levels, loc.float(), weights.float(), implementation="triton"
            )
            rel = ((out.double() - reference).norm() / reference.norm()).item()
            ok = math.isfinite(rel) and rel < bound and out.dtype == dtype
            self.add(
                "correctness",
                f"forward {str(dtype)[6:]} vs fp64",
                f"{'PASS' if ok else 'FAIL'} rel {rel:.1e}",
                f"bound {bound:g}",
            )
        # gradcheck perturbs every input element twice: a tiny problem keeps it quick
        small = [(2, 3), (1, 1)]
        v, lo, w = self.op_inputs(
            small, queries=3, heads=1, head_dim=2, points=2, batch=1, dtype=torch.float64, seed=2
        )
        inputs = tuple(t.clone().requires_grad_(True) for t in (v, lo.clamp(0.05, 0.95), w))

        def op(a, b, c):
            return multi_scale_deformable_attention(a, small, b, c, implementation="triton")

        ok = torch.autograd.gradcheck(op, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)
        self.add("correctness", "gradcheck fp64 (value, locations, weights)", "PASS" if ok else "FAIL")

    def op_speed(self) -> None:
        torch = self.torch
        from detrlab.models.deformable_attention import (
            multi_scale_deformable_attention,
            multi_scale_deformable_attention_pytorch,
        )

        levels5 = [*TINY_LEVELS, (1, 1)] if self.args.dry_run else DETA_LEVELS
        levels4 = levels5[:4]
        encoder_q = sum(h * w for h, w in levels5)
        cases = [
            ("DETA encoder", levels5, encoder_q, True),
            ("DETA decoder", levels5, 9 if self.args.dry_run else 900, False),
            ("Def-DETR encoder", levels4, sum(h * w for h, w in levels4), False),
        ]
        missing_triton = self.triton_available()
        deformops_fn, deformops_note = _deformops_kernel()
        for label, levels, queries, compiled in cases:
            for dtype in (torch.float32, torch.bfloat16):
                value, loc, weights = self.op_inputs(levels, queries, dtype=dtype)
                shapes_t = torch.tensor(levels, device=self.device)
                starts_t = torch.cat([shapes_t.new_zeros(1), shapes_t.prod(1).cumsum(0)[:-1]])
                impls = {
                    "grid_sample eager": _grid_sample_path(multi_scale_deformable_attention_pytorch, levels)
                }
                if compiled and self.args.dry_run:
                    if dtype == torch.float32:
                        self.add(
                            "op",
                            f"{label}: grid_sample compiled",
                            "skipped",
                            "dry run: compiling on a CPU takes minutes",
                        )
                elif compiled:
                    compiled_op = torch.compile(multi_scale_deformable_attention_pytorch, dynamic=False)
                    impls["grid_sample compiled"] = _grid_sample_path(compiled_op, levels)
                if missing_triton is None:
                    impls["detrlab triton"] = functools.partial(
                        _detrlab_triton, multi_scale_deformable_attention, levels
                    )
                if deformops_fn is not None and self.cuda:
                    impls["deformops triton"] = functools.partial(
                        _deformops, deformops_fn, shapes_t, starts_t
                    )
                name = f"{label} Q={queries} {str(dtype)[6:]}"
                for impl, fn in impls.items():
                    self._time_op(f"{name}: {impl}", fn, value, loc, weights)
        if missing_triton:
            self.add("op", "detrlab triton", "skipped", missing_triton)
        self.add(
            "op", "deformops triton", "present" if deformops_fn and self.cuda else "skipped", deformops_note
        )

    def _time_op(self, case: str, fn, value, loc, weights) -> None:
        """Time ``fn(value, loc, weights)`` forward and forward+backward (all three take gradients)."""
        torch = self.torch
        leaves = [t.detach().requires_grad_(True) for t in (value, loc, weights)]

        def forward():
            with torch.no_grad():
                return fn(*leaves)

        out = forward()
        grad = torch.randn_like(out)

        def forward_backward():
            torch.autograd.grad(fn(*leaves), leaves, grad)

        if self.args.dry_run and "triton" in case:
            forward_backward()  # the interpreter's timings mean nothing: run the path once
            self.add("op", case, "ran once", "Triton interpreter: not timed")
            return
        fwd_ms, both_ms = self.timed(forward), self.timed(forward_backward)
        fwd_mem, both_mem = self.peak_extra_mib(forward), self.peak_extra_mib(forward_backward)
        self.add(
            "op",
            case,
            f"fwd {fwd_ms:.3f} ms, fwd+bwd {both_ms:.3f} ms",
            f"peak fwd {self.fmt_mib(fwd_mem)}, fwd+bwd {self.fmt_mib(both_mem)}",
        )

    def deta(self) -> None:
        torch = self.torch
        sys.path.insert(0, str(BENCHMARKS))
        from deta_vs_reference import _optimizer, _reference_step, build_models, make_batch

        detector, criterion, reference = build_models()
        detector, criterion, reference = (
            detector.to(self.device),
            criterion.to(self.device),
            reference.to(self.device),
        )
        # dry run: the smallest size at which the reference's 1000 pre-NMS proposals exist
        h, w = (192, 256) if self.args.dry_run else (800, 1216)
        images, mask, targets = make_batch(2, h, w)
        images, mask = images.to(self.device), mask.to(self.device)
        targets = [{k: v.to(self.device) for k, v in t.items()} for t in targets]
        opt_ours, opt_ref = _optimizer(detector), _optimizer(reference)
        detector.train()
        reference.train()

        def ours_step(autocast: bool):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = criterion(detector(images, mask), targets)["loss"]
            opt_ours.zero_grad(set_to_none=True)
            loss.backward()
            opt_ours.step()

        def ref_step():
            _reference_step(reference, opt_ref, images, mask, targets)

        cases = [
            (f"train step fp32 {h}x{w} b2: ours", lambda: ours_step(False)),
            (f"train step bf16-mixed {h}x{w} b2: ours", lambda: ours_step(True)),
            (f"train step fp32 {h}x{w} b2: reference", ref_step),
        ]
        for case, fn in cases:
            self._time_model(case, fn)
        detector.eval()
        reference.eval()

        def ours_infer():
            with torch.no_grad():
                detector(images, mask)

        def ref_infer():
            with torch.no_grad():
                reference(pixel_values=images, pixel_mask=(~mask).long())

        self._time_model(f"inference fp32 {h}x{w} b2: ours", ours_infer)
        self._time_model(f"inference fp32 {h}x{w} b2: reference", ref_infer)

    def _time_model(self, case: str, fn) -> None:
        fn()  # warm-up (kernel compilation, allocator)
        repeats = 1 if self.args.dry_run else self.args.model_repeats
        times = []
        for _ in range(repeats):
            if self.cuda:
                self.torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if self.cuda:
                self.torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        memory = self.peak_extra_mib(fn)
        self.add(
            "deta",
            case,
            f"{statistics.median(times) * 1e3:.1f} ms (median of {repeats})",
            f"peak {self.fmt_mib(memory)}",
        )

    def train_run(self) -> None:
        steps = 2 if self.args.dry_run else self.args.train_steps
        trainer = "cpu" if not self.cuda else "gpu"
        with tempfile.TemporaryDirectory() as out:
            cmd = [
                sys.executable,
                str(ROOT / "train.py"),
                f"trainer={trainer}",
                f"+trainer.max_steps={steps}",
                "trainer.max_epochs=1000",
                "trainer.check_val_every_n_epoch=1000",
                "trainer.num_sanity_val_steps=0",
                f"paths.data_dir={out}/data",
                f"hydra.run.dir={out}/run",
                "print_config=false",
                "logger=csv",
                # enough images for the steps at the synthetic config's batch size of 8
                f"data.num_train={max(8 * steps, 16)}",
                "data.num_val=8",
            ]
            if self.args.dry_run:
                cmd += [
                    "data.num_train=8",
                    "data.num_val=2",
                    "data.image_size=64",
                    "data.batch_size=2",
                    "data.num_workers=0",
                ]
                cmd += [
                    "data.train_scales=[64]",
                    "data.max_size=64",
                    "data.eval_size=64",
                    "data.eval_max_size=64",
                ]
            start = time.perf_counter()
            result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            seconds = time.perf_counter() - start
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            self.add(
                "train",
                f"python train.py trainer={trainer} ({steps} steps)",
                f"FAIL rc {result.returncode}",
                " | ".join(tail),
            )
            return
        note = "wall time incl. start-up and synthetic data generation"
        self.add("train", f"python train.py trainer={trainer} ({steps} steps)", f"{seconds:.1f} s", note)


def _grid_sample_path(op, levels):
    """``op(value, levels, loc, weights)`` in the value's dtype (grid_sample takes one dtype)."""

    def run(value, loc, weights):
        return op(value, levels, loc.to(value.dtype), weights.to(value.dtype))

    return run


def _detrlab_triton(op, levels, value, loc, weights):
    return op(value, levels, loc, weights, implementation="triton")


def _deformops(op, shapes, starts, value, loc, weights):
    return op(value, shapes, starts, loc, weights)


def _deformops_kernel():
    """(deformops' Triton MSDA forward or None, a note)."""
    try:
        from deformops.backends.triton.msda import msda_triton
    except ImportError as error:
        return None, f"deformops not installed ({error.name})"
    return msda_triton, "deformops Triton kernel (value [B,S,H,D], level tables as tensors)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, every section")
    parser.add_argument("--device", default=None, help="cuda (default) or cpu (implied by --dry-run)")
    parser.add_argument("--sections", default="correctness,op,deta,train")
    parser.add_argument("--train-steps", type=int, default=50)
    parser.add_argument("--model-repeats", type=int, default=5)
    parser.add_argument("--rep-ms", type=int, default=200, help="do_bench repetition time per measurement")
    args = parser.parse_args()
    if args.dry_run:
        args.device = args.device or "cpu"
        # The Triton interpreter must be chosen before triton is imported.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    args.device = args.device or "cuda"

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; run with --dry-run (CPU, tiny shapes) instead")
    check = Check(args)
    start = time.perf_counter()
    gpu = torch.cuda.get_device_name() if check.cuda else "CPU (dry run: tiny shapes, GPU-only parts skipped)"
    import triton

    check.add(
        "env",
        "device",
        gpu,
        f"torch {torch.__version__}, triton {triton.__version__}, Python {sys.version.split()[0]}",
    )
    sections = {
        "correctness": check.correctness,
        "op": check.op_speed,
        "deta": check.deta,
        "train": check.train_run,
    }
    for name in args.sections.split(","):
        section_start = time.perf_counter()
        try:
            sections[name]()
        except Exception as error:  # one failing section must not hide the others' rows
            traceback.print_exc()
            check.add(
                name,
                "section",
                f"FAIL {type(error).__name__}",
                str(error).splitlines()[0][:160] if str(error) else "",
            )
        check.add(name, "section time", f"{time.perf_counter() - section_start:.1f} s")
    check.add("env", "total time", f"{time.perf_counter() - start:.1f} s")
    print_table(check.rows)


def print_table(rows: list[Row]) -> None:
    widths = [max(len(getattr(r, f)) for r in rows) for f in ("section", "case", "result")]
    print()
    for r in rows:
        print(f"{r.section:<{widths[0]}}  {r.case:<{widths[1]}}  {r.result:<{widths[2]}}  {r.note}")


if __name__ == "__main__":
    main()
