"""DETA-R50 (paper config) against the transformers 4.57 reference, on the same weights and inputs.

The reference ``DetaForObjectDetection`` (5 levels, 900 queries, two-stage, box refinement, both IoU
assigners, FFN 2048, no dropout, 91 labels) is built with random weights, saved with
``save_pretrained`` and converted into our DETA with :func:`detrlab.convert.convert_checkpoint`, so
both models hold the same weights. Each measurement alternates ours and the reference inside one
process (ours, reference, ours, ...), so their ratio is meaningful even on a loaded machine.

Usage::

    python benchmarks/deta_vs_reference.py op            # deformable attention op alone
    python benchmarks/deta_vs_reference.py op --points near   # ... sampling near each query, as trained
    python benchmarks/deta_vs_reference.py infer         # inference forward
    python benchmarks/deta_vs_reference.py train         # forward + loss + backward + AdamW step
    python benchmarks/deta_vs_reference.py memory        # peak RSS added by one step (subprocesses)
    python benchmarks/deta_vs_reference.py criterion     # our losses + assigners alone (share of a step)
    python benchmarks/deta_vs_reference.py profile       # where each model's step goes, and the dense floor
    python benchmarks/deta_vs_reference.py profile --mode infer   # the same for the inference forward

The inference command first compares the two models' detections as sets (queries matched one to one,
``set_matching.py``) and prints the largest box and logit differences after matching.

Options: ``--repeats N`` (timed rounds per model), ``--threads N``, ``--height/--width``,
``--batch``. Prints min and median seconds per model and the ratio ours / reference.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from sampling_points import LAYOUTS, sampling_locations

REFERENCE_MODULE = "transformers.models.deprecated.deta.modeling_deta"


def reference_config():
    from transformers.models.deprecated.deta.modeling_deta import DetaConfig

    return DetaConfig(
        num_queries=900,
        two_stage_num_proposals=900,
        num_feature_levels=5,
        with_box_refine=True,
        two_stage=True,
        assign_first_stage=True,
        assign_second_stage=True,
        encoder_ffn_dim=2048,
        decoder_ffn_dim=2048,
        dropout=0.0,
        num_labels=91,
        auxiliary_loss=True,
        class_cost=2.0,
        bbox_cost=5.0,
        giou_cost=2.0,
        bbox_loss_coefficient=5.0,
        giou_loss_coefficient=2.0,
    )


def configured_encoder_ffn_recompute() -> int:
    """``model.detector.encoder_ffn_recompute`` of ``model=deta_r50`` as composed from ``conf/``: the
    setting a user of that config trains with."""
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose(config_name="train", overrides=["model=deta_r50", "~experiment"])
    return int(cfg.model.detector.encoder_ffn_recompute)


def build_models(seed: int = 0, encoder_ffn_recompute: int = 0):
    """(our detector, our criterion, reference DetaForObjectDetection), same weights.

    ``encoder_ffn_recompute``: our detector's setting of that name (training memory vs time).
    """
    from hydra.utils import instantiate
    from transformers.models.deprecated.deta.modeling_deta import DetaForObjectDetection

    from detrlab.convert import convert_checkpoint

    torch.manual_seed(seed)
    reference = DetaForObjectDetection(reference_config())
    with tempfile.TemporaryDirectory() as tmp:
        reference.save_pretrained(tmp)
        detector, converted = convert_checkpoint(tmp, encoder_ffn_recompute=encoder_ffn_recompute)
    criterion = instantiate(converted.model_config["criterion"], _convert_="all")
    return detector, criterion, reference


def make_batch(batch: int, height: int, width: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=g)
    mask = torch.zeros(batch, height, width, dtype=torch.bool)
    targets = []
    for _ in range(batch):
        n = 8
        centres = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        sizes = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        targets.append(
            {"labels": torch.randint(1, 91, (n,), generator=g), "boxes": torch.cat([centres, sizes], 1)}
        )
    return images, mask, targets


def _ours_step(model, optimizer, images, mask, targets):
    detector, criterion = model
    outputs = detector(images, mask)
    loss = criterion(outputs, targets)["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def _reference_step(reference, optimizer, images, mask, targets):
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    out = reference(pixel_values=images, pixel_mask=(~mask).long(), labels=labels)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    optimizer.step()
    return out.loss.item()


def _optimizer(model):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=1e-4)


def _alternate(fns: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def _report(title: str, times: dict[str, list[float]]) -> dict:
    ours, ref = times["ours"], times["reference"]
    row = {
        "what": title,
        "ours_min_s": min(ours),
        "ours_median_s": statistics.median(ours),
        "reference_min_s": min(ref),
        "reference_median_s": statistics.median(ref),
        "ratio_min": min(ours) / min(ref),
        "ratio_median": statistics.median(ours) / statistics.median(ref),
    }
    print(
        f"{title}: ours {row['ours_min_s']:.3f}/{row['ours_median_s']:.3f} s, reference "
        f"{row['reference_min_s']:.3f}/{row['reference_median_s']:.3f} s (min/median); "
        f"ratio {row['ratio_min']:.3f} (min) {row['ratio_median']:.3f} (median)",
        flush=True,
    )
    return row


def _op_case(args, label: str, q: int, shapes: list[tuple[int, int]]) -> list[dict]:
    from transformers.models.deprecated.deta.modeling_deta import multi_scale_deformable_attention as ref_op

    from detrlab.models.deformable_attention import multi_scale_deformable_attention

    s = sum(h * w for h, w in shapes)
    g = torch.Generator().manual_seed(0)
    value = torch.randn(args.batch, s, 8, 32, generator=g, requires_grad=True)
    loc = sampling_locations(shapes, args.batch, q, 8, 4, args.points, g).requires_grad_(True)
    weights = torch.rand(args.batch, q, 8, 5, 4, generator=g).softmax(-1).requires_grad_(True)
    shapes_t = torch.tensor(shapes)
    grad = torch.randn(args.batch, q, 256)

    def ours():
        return multi_scale_deformable_attention(value, shapes, loc, weights)

    def reference():
        return ref_op(value, shapes_t, loc, weights)

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(), (value, loc, weights), grad)

    diff = (ours() - reference()).abs().max().item()
    print(f"op {label} (Q={q}, S={s}, {args.points} points): max |ours - reference| = {diff:.2e}")
    with torch.no_grad():
        forward = _alternate({"ours": ours, "reference": reference}, args.repeats)
    both = _alternate({"ours": fwd_bwd(ours), "reference": fwd_bwd(reference)}, args.repeats)
    return [
        _report(f"op forward, {label} Q={q}", forward),
        _report(f"op forward+backward, {label} Q={q}", both),
    ]


def bench_op(args) -> list[dict]:
    """The sampling core alone, DETA shapes: batch 2, 8 heads x 32 channels, 5 levels, 4 points."""
    shapes = [(-(-args.height // s), -(-args.width // s)) for s in (8, 16, 32, 64, 128)]
    encoder_queries = sum(h * w for h, w in shapes)
    return [
        *_op_case(args, "decoder", 900, shapes),
        *_op_case(args, "encoder", encoder_queries, shapes),
    ]


def model_steps(args, train: bool) -> dict:
    """``{"ours": fn, "reference": fn}``: one training step (forward, loss, backward, AdamW) or one
    inference forward of each model, on the same weights and the same batch."""
    detector, criterion, reference = build_models(encoder_ffn_recompute=args.encoder_ffn_recompute)
    images, mask, targets = make_batch(args.batch, args.height, args.width)
    if train:
        detector.train()
        reference.train()
        opt_ours, opt_ref = _optimizer(detector), _optimizer(reference)
        return {
            "ours": lambda: _ours_step((detector, criterion), opt_ours, images, mask, targets),
            "reference": lambda: _reference_step(reference, opt_ref, images, mask, targets),
        }
    detector.eval()
    reference.eval()
    return {
        "ours": torch.no_grad()(lambda: detector(images, mask)),
        "reference": torch.no_grad()(lambda: reference(pixel_values=images, pixel_mask=(~mask).long())),
    }


def bench_model(args, train: bool) -> list[dict]:
    fns = model_steps(args, train)
    size = f"{args.height}x{args.width} batch {args.batch}"
    if not train:
        from set_matching import set_difference

        a, b = fns["ours"](), fns["reference"]()
        # as sets: a tie in a top-k selection may emit the same detections in another query order
        diff = set_difference(a["pred_logits"], a["pred_boxes"], b.logits, b.pred_boxes)
        print(
            f"inference (same weights), queries matched one to one: max |pred_boxes ours - reference| = "
            f"{diff.boxes:.2e}, max |pred_logits| = {diff.logits:.2e}; {diff.moved} queries matched "
            f"out of position (position by position the boxes differ by up to {diff.boxes_by_position:.2e})"
        )
    title = f"training step {size}" if train else f"inference forward {size}"
    return [_report(title, _alternate(fns, args.repeats))]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def memory_child(args) -> None:
    """One model, one warm-up-free step in a fresh process: peak RSS before and after."""
    detector, criterion, reference = build_models(encoder_ffn_recompute=args.encoder_ffn_recompute)
    images, mask, targets = make_batch(args.batch, args.height, args.width)
    if args.model == "ours":
        del reference
        model, params = (detector, criterion), detector
    else:
        del detector
        model = params = reference
    import gc

    gc.collect()
    opt = _optimizer(params) if args.mode == "train" else None
    before = _peak_rss_mib()
    if args.mode == "train":
        params.train()
        step = _ours_step if args.model == "ours" else _reference_step
        step(model, opt, images, mask, targets)
    else:
        params.eval()
        with torch.no_grad():
            if args.model == "ours":
                detector(images, mask)
            else:
                reference(pixel_values=images, pixel_mask=(~mask).long())
    after = _peak_rss_mib()
    print(json.dumps({"model": args.model, "mode": args.mode, "before_mib": before, "after_mib": after}))


def bench_memory(args) -> list[dict]:
    rows = []
    for mode in ("train", "infer"):
        added = {}
        for model in ("ours", "reference"):
            cmd = [sys.executable, __file__, "memory-child", "--model", model, "--mode", mode]
            cmd += ["--encoder-ffn-recompute", str(args.encoder_ffn_recompute)]
            cmd += ["--batch", str(args.batch), "--height", str(args.height), "--width", str(args.width)]
            cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            added[model] = result["after_mib"] - result["before_mib"]
            print(
                f"memory {mode} {model}: peak RSS {result['before_mib']:.0f} -> {result['after_mib']:.0f} MiB"
            )
        row = {
            "what": f"peak RSS added by one {mode} step (MiB)",
            "ours_mib": added["ours"],
            "reference_mib": added["reference"],
            "ratio": added["ours"] / added["reference"],
        }
        print(
            f"{row['what']}: ours {added['ours']:.0f}, reference {added['reference']:.0f}, ratio {row['ratio']:.3f}"
        )
        rows.append(row)
    return rows


def _detached_leaves(outputs):
    """The detector outputs as fresh leaves that require grad (floating tensors), same nesting."""
    if isinstance(outputs, torch.Tensor):
        return outputs.detach().requires_grad_(outputs.is_floating_point())
    if isinstance(outputs, dict):
        return {key: _detached_leaves(value) for key, value in outputs.items()}
    if isinstance(outputs, list):
        return [_detached_leaves(value) for value in outputs]
    return outputs


def bench_criterion(args) -> list[dict]:
    """Our criterion alone (matching, both IoU assigners, every term) forward + backward, on the
    outputs of one training forward: the share of a training step spent in losses and assignment."""
    detector, criterion, reference = build_models(encoder_ffn_recompute=args.encoder_ffn_recompute)
    del reference
    images, mask, targets = make_batch(args.batch, args.height, args.width)
    detector.train()
    with torch.no_grad():
        outputs = detector(images, mask)

    def step():
        criterion(_detached_leaves(outputs), targets)["loss"].backward()

    times = _alternate({"ours": step}, args.repeats)["ours"]
    title = f"criterion forward + backward {args.height}x{args.width} batch {args.batch}"
    print(f"{title}: ours {min(times):.3f}/{statistics.median(times):.3f} s (min/median)", flush=True)
    return [{"what": title, "ours_min_s": min(times), "ours_median_s": statistics.median(times)}]


_DENSE_OPS = {
    "aten::mm",
    "aten::addmm",
    "aten::addmm_",  # the CPU encoder feed-forward's row blocks multiply into their output in place
    "aten::bmm",
    "aten::baddbmm",
    # attention's two matmuls and softmax in one op (our decoder self-attention)
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    "aten::mkldnn_convolution",
    "aten::convolution_backward",
    "aten::_slow_conv2d_forward",
    "aten::_slow_conv2d_backward",
}


_DENSE_GROUP = "dense (matmul, convolution; forward + backward)"
_RELU_OPS = {"aten::clamp_min", "aten::clamp_min_", "aten::relu", "aten::relu_", "aten::threshold_backward"}


def _op_group(name: str) -> str:
    if name in _DENSE_OPS:
        return _DENSE_GROUP
    # the op itself and its autograd node, which calls the backward kernel
    if name.startswith(("detrlab::", "GeneratedBackwardFor_detrlab")):
        return "deformable attention kernel"
    if name == "aten::copy_":
        return "copies"
    if name in _RELU_OPS:
        return "ReLU forward + backward"
    return "everything else"


def bench_profile(args) -> list[dict]:
    """Where each model's time goes: ``torch.profiler`` self CPU time over one training step (or,
    with ``--mode infer``, one inference forward) after a warm-up, grouped into dense layers, the
    deformable kernel, copies, ReLU and the rest; then the dense-layer floor: our dense-layer time
    over the reference's whole time, the ratio no other change to ours can go below."""
    from torch.profiler import ProfilerActivity, profile

    mode = args.mode or "train"
    runs = model_steps(args, train=mode == "train")
    totals = {}
    rows = []
    for name, run in runs.items():
        run()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        groups: dict[str, float] = {}
        for event in prof.key_averages():
            group = _op_group(event.key)
            groups[group] = groups.get(group, 0.0) + event.self_cpu_time_total / 1e6
        total = totals[name] = sum(groups.values())
        print(f"{name}, profiled {mode} step: {total:.2f} s self CPU (profiler overhead included)")
        for group, seconds in sorted(groups.items(), key=lambda item: -item[1]):
            print(f"  {seconds:6.2f} s  {100 * seconds / total:4.1f}%  {group}")
        rows.append({"what": f"profile {mode} {name}", **groups})
    floor = rows[0].get(_DENSE_GROUP, 0.0) / totals["reference"]
    print(f"dense-layer floor ({mode}): our dense layers / the reference's whole step = {floor:.3f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "what", choices=["op", "infer", "train", "memory", "memory-child", "criterion", "profile"]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--model", choices=["ours", "reference"])
    parser.add_argument(
        "--points", choices=LAYOUTS, default="uniform", help="op: sampling locations (sampling_points.py)"
    )
    parser.add_argument("--mode", choices=["train", "infer"])
    parser.add_argument(
        "--encoder-ffn-recompute",
        type=int,
        default=None,
        help="our detector's encoder_ffn_recompute (encoder layers whose FFN hidden activation is "
        "recomputed); default: the value of model=deta_r50 in conf/",
    )
    parser.add_argument("--json", type=Path, help="append the result rows to this JSON-lines file")
    args = parser.parse_args()
    if args.encoder_ffn_recompute is None:
        args.encoder_ffn_recompute = configured_encoder_ffn_recompute()
    if args.what != "memory-child":
        print(f"our encoder_ffn_recompute: {args.encoder_ffn_recompute}", flush=True)
    torch.set_num_threads(args.threads)
    if args.what == "memory-child":
        memory_child(args)
        return
    rows = {
        "op": bench_op,
        "memory": bench_memory,
        "criterion": bench_criterion,
        "profile": bench_profile,
    }.get(args.what)
    rows = rows(args) if rows else bench_model(args, train=args.what == "train")
    if args.json:
        with args.json.open("a") as f:
            for row in rows:
                f.write(json.dumps({**row, "threads": args.threads, "torch": torch.__version__}) + "\n")


if __name__ == "__main__":
    main()
