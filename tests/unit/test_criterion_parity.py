"""SetCriterion (softmax cross entropy, Hungarian matching) agrees with the DETR loss of the `transformers` library."""

import pytest
import torch

from detrlab.losses.assignment import HungarianAssignment
from detrlab.losses.classification import SoftmaxCrossEntropy
from detrlab.losses.criterion import SetCriterion
from detrlab.losses.matcher import HungarianMatcher

loss_for_object_detection = pytest.importorskip("transformers.loss.loss_for_object_detection")

NUM_CLASSES = 5
COSTS = {"class": 1.0, "bbox": 5.0, "giou": 2.0}


def _layer(generator, batch_size, num_queries):
    return {
        "pred_logits": torch.randn(batch_size, num_queries, NUM_CLASSES + 1, generator=generator),
        # boxes kept inside the image so that both libraries see valid xyxy boxes
        "pred_boxes": torch.rand(batch_size, num_queries, 4, generator=generator) * 0.4 + 0.1,
    }


@pytest.mark.parametrize("sizes", [[3, 1, 4], [2, 0, 5], [0, 0, 0]], ids=["full", "one-empty", "all-empty"])
def test_losses_match_transformers_detr_loss(sizes):
    generator = torch.Generator().manual_seed(sum(sizes))
    batch_size, num_queries, num_aux = len(sizes), 10, 2
    outputs = _layer(generator, batch_size, num_queries)
    outputs["aux_outputs"] = [_layer(generator, batch_size, num_queries) for _ in range(num_aux)]
    targets = [
        {
            "labels": torch.randint(0, NUM_CLASSES, (n,), generator=generator),
            "boxes": torch.rand(n, 4, generator=generator) * 0.4 + 0.1,
        }
        for n in sizes
    ]

    ours = SetCriterion(
        SoftmaxCrossEntropy(NUM_CLASSES, eos_coef=0.1),
        HungarianAssignment(
            HungarianMatcher(cost_class=COSTS["class"], cost_bbox=COSTS["bbox"], cost_giou=COSTS["giou"])
        ),
    )(outputs, targets)

    theirs_matcher = loss_for_object_detection.HungarianMatcher(
        class_cost=COSTS["class"], bbox_cost=COSTS["bbox"], giou_cost=COSTS["giou"]
    )
    theirs = loss_for_object_detection.ImageLoss(
        matcher=theirs_matcher,
        num_classes=NUM_CLASSES,
        eos_coef=0.1,
        losses=["labels", "boxes", "cardinality"],
    )(
        {
            "logits": outputs["pred_logits"],
            "pred_boxes": outputs["pred_boxes"],
            "auxiliary_outputs": [
                {"logits": aux["pred_logits"], "pred_boxes": aux["pred_boxes"]}
                for aux in outputs["aux_outputs"]
            ],
        },
        [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets],
    )

    keys = ["loss_ce", "loss_bbox", "loss_giou", "cardinality_error"]
    keys += [f"{key}_{i}" for key in keys for i in range(num_aux)]
    for key in keys:
        torch.testing.assert_close(ours[key], torch.as_tensor(theirs[key]), rtol=0, atol=1e-5, msg=key)
