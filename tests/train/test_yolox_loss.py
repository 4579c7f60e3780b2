"""YOLOX loss: degenerate batches, hand-computed terms, perfect vs random predictions, L1 switch, a learning run."""
from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

import powersam.train.yolox_loss as yolox_loss_module
from powersam.models.yolox_head import YOLOXHead, yolox_grid_priors
from powersam.ops.boxes import box_iou
from powersam.train.yolox_loss import YOLOXLoss, yolox_l1_targets

STRIDES = (8, 16, 32)
NUM_CLASSES = 3


def random_outputs(batch: int, size: int, scale: float = 1.0, requires_grad: bool = True):
    """Leaf tensors shaped like YOLOXHead outputs for a size×size input."""
    outputs = []
    for channels in (NUM_CLASSES, 4, 1):
        level_maps = [torch.randn(batch, channels, size // s, size // s) * scale for s in STRIDES]
        outputs.append([m.requires_grad_(requires_grad) for m in level_maps])
    return outputs


def flat_index(size: int, stride: int, column: int, row: int) -> int:
    """Index into the flattened P priors of the grid point (column, row) of the level with ``stride``."""
    offset = 0
    for s in STRIDES:
        if s == stride:
            return offset + row * (size // s) + column
        offset += (size // s) ** 2
    raise ValueError(stride)


def set_flat(level_maps: list[torch.Tensor], size: int, image: int, index: int, values) -> None:
    """Write ``values`` (channels) at flattened prior ``index`` of image ``image`` into per-level maps."""
    for s, level_map in zip(STRIDES, level_maps):
        count = (size // s) ** 2
        if index < count:
            level_map[image, :, index // (size // s), index % (size // s)] = torch.as_tensor(values)
            return
        index -= count
    raise IndexError(index)


def outputs_with_known_boxes(size: int, assignments: list[list[tuple[torch.Tensor, int, list[int]]]],
                             background_logit: float = -8.0, confident_logit: float = 8.0):
    """Head outputs in which the listed priors decode exactly to their gt and are confident about its class;
    every other prior predicts a 0.05 px box and low scores. ``assignments[image]`` = [(gt box, label, priors)]."""
    batch = len(assignments)
    cls, box, obj = [[torch.zeros(batch, c, size // s, size // s) for s in STRIDES] for c in (NUM_CLASSES, 4, 1)]
    for maps in (cls, obj):
        for m in maps:
            m.fill_(background_logit)
    for m in box:
        m[:, 2:] = -5.0
    priors = yolox_grid_priors([(size // s, size // s) for s in STRIDES], STRIDES)
    for image, gts in enumerate(assignments):
        for gt_box, label, prior_indices in gts:
            for index in prior_indices:
                encoded = yolox_l1_targets(gt_box[None], priors[index][None])[0]
                set_flat(box, size, image, index, encoded)
                logits = torch.full((NUM_CLASSES,), background_logit)
                logits[label] = confident_logit
                set_flat(cls, size, image, index, logits)
                set_flat(obj, size, image, index, [confident_logit])
    return [[m.requires_grad_() for m in maps] for maps in (cls, box, obj)]


def perfect_scene(size: int = 128):
    """Two images: two 32 px gts, three stride-8 priors each decoding exactly to them; and one image without gts."""
    gt_a = torch.tensor([16.0, 16.0, 48.0, 48.0])
    gt_b = torch.tensor([64.0, 72.0, 104.0, 104.0])
    assignments = [
        [(gt_a, 0, [flat_index(size, 8, c, r) for c, r in ((3, 3), (4, 3), (3, 4))]),
         (gt_b, 2, [flat_index(size, 8, c, r) for c, r in ((10, 10), (11, 10), (10, 11))])],
        [],
    ]
    gt_boxes = [torch.stack((gt_a, gt_b)), torch.zeros(0, 4)]
    gt_labels = [torch.tensor([0, 2]), torch.zeros(0, dtype=torch.long)]
    return assignments, gt_boxes, gt_labels


def value(tensor: torch.Tensor) -> float:
    return float(tensor.detach())


def all_grads_finite(outputs) -> bool:
    return all(t.grad is not None and torch.isfinite(t.grad).all() for maps in outputs for t in maps)


def test_no_gts_gives_only_objectness_loss():
    outputs = random_outputs(2, 64)
    losses = YOLOXLoss(NUM_CLASSES, use_l1=True)(*outputs, [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)] * 2)
    assert value(losses["loss_cls"]) == 0.0 and value(losses["loss_bbox"]) == 0.0 and value(losses["loss_l1"]) == 0.0
    assert value(losses["num_pos"]) == 0.0
    flat_obj = torch.cat([o.flatten(1) for o in outputs[2]], dim=1)
    expected_obj = F.binary_cross_entropy_with_logits(flat_obj, torch.zeros_like(flat_obj), reduction="sum")
    torch.testing.assert_close(losses["loss_obj"], expected_obj)  # divided by max(0, 1) = 1
    assert math.isfinite(value(losses["loss"])) and value(losses["loss_obj"]) > 0
    losses["loss"].backward()
    assert all_grads_finite(outputs)
    # the zero terms still reach the cls / box maps (DDP must see a gradient, even a zero one, for every output)
    assert all((t.grad == 0).all() for t in outputs[0])


def test_iou_square_and_iou_aware_cls_on_one_positive():
    size = 64
    gt = torch.tensor([10.0, 10.0, 42.0, 42.0])
    prediction = torch.tensor([18.0, 10.0, 50.0, 42.0])  # shifted by 8 px → IoU 24/40 = 0.6
    # Grid point (8, 8) lies outside the gt; only its cell centre (12, 12), which SimOTA tests, is inside.
    index = flat_index(size, 8, 1, 1)
    outputs = outputs_with_known_boxes(size, [[(prediction, 1, [index])]], background_logit=-3.0, confident_logit=1.5)
    losses = YOLOXLoss(NUM_CLASSES)(*outputs, [gt[None]], [torch.tensor([1])])
    assert value(losses["num_pos"]) == 1.0  # k = max(1, int(0.6)) and the other priors overlap nothing
    iou = 0.6
    torch.testing.assert_close(losses["loss_bbox"], torch.tensor(5.0 * (1 - iou**2)))
    logits = torch.tensor([-3.0, 1.5, -3.0])
    expected_cls = F.binary_cross_entropy_with_logits(logits, torch.tensor([0.0, iou, 0.0]), reduction="sum")
    torch.testing.assert_close(losses["loss_cls"], expected_cls)
    flat_obj = torch.cat([o.detach().flatten(1) for o in outputs[2]], dim=1)
    obj_target = torch.zeros_like(flat_obj)
    obj_target[0, index] = 1
    torch.testing.assert_close(
        losses["loss_obj"], F.binary_cross_entropy_with_logits(flat_obj, obj_target, reduction="sum")
    )
    torch.testing.assert_close(losses["loss"], losses["loss_cls"] + losses["loss_bbox"] + losses["loss_obj"])


def test_perfect_prediction_beats_random_by_far():
    size = 128
    assignments, gt_boxes, gt_labels = perfect_scene(size)
    loss_fn = YOLOXLoss(NUM_CLASSES, use_l1=True)
    perfect = loss_fn(*outputs_with_known_boxes(size, assignments), gt_boxes, gt_labels)
    random = loss_fn(*random_outputs(2, size), gt_boxes, gt_labels)
    assert value(perfect["num_pos"]) == 6.0  # IoUs 1, 1, 1 → k = 3 per gt, exactly the prepared priors
    assert value(perfect["loss_bbox"]) < 1e-5
    assert value(perfect["loss_l1"]) < 1e-4  # the prepared regressions are exactly the L1 targets
    assert value(perfect["loss_cls"]) < 0.01
    assert value(perfect["loss"]) < 0.1 * value(random["loss"])
    for key in ("loss_cls", "loss_bbox", "loss_obj", "loss_l1"):
        assert value(perfect[key]) < value(random[key]), key


def test_use_l1_adds_a_positive_term_and_leaves_the_others():
    size = 64
    gt_boxes = [torch.tensor([[10.0, 12.0, 40.0, 50.0]]), torch.tensor([[0.0, 30.0, 20.0, 64.0], [33.0, 1.0, 63.0, 20.0]])]
    gt_labels = [torch.tensor([0]), torch.tensor([1, 2])]
    outputs = random_outputs(2, size, scale=0.5)
    without = YOLOXLoss(NUM_CLASSES)(*outputs, gt_boxes, gt_labels)
    loss_fn = YOLOXLoss(NUM_CLASSES)
    loss_fn.use_l1 = True  # how the training stage switches it on for the last no-augmentation epochs
    with_l1 = loss_fn(*outputs, gt_boxes, gt_labels)
    assert value(without["loss_l1"]) == 0.0
    assert value(with_l1["loss_l1"]) > 0.0
    for key in ("loss_cls", "loss_bbox", "loss_obj"):
        torch.testing.assert_close(with_l1[key], without[key])
    torch.testing.assert_close(with_l1["loss"], without["loss"] + with_l1["loss_l1"])
    with_l1["loss"].backward()
    assert all_grads_finite(outputs)


def test_l1_targets_encode_against_grid_points():
    priors = torch.tensor([[16.0, 8.0, 8.0, 8.0]])
    gt = torch.tensor([[10.0, 4.0, 42.0, 20.0]])  # centre (26, 12), size 32×16
    expected = torch.tensor([[10 / 8, 4 / 8, math.log(4 + 1e-8), math.log(2 + 1e-8)]])
    torch.testing.assert_close(yolox_l1_targets(gt, priors), expected)


def test_mixed_batch_tiny_and_border_boxes_stay_finite():
    size = 96
    gt_boxes = [
        torch.tensor([[0.0, 0.0, 3.0, 2.0], [90.0, 0.0, 96.0, 96.0]]),  # tiny corner box, thin box on the border
        torch.zeros(0, 4),
        torch.tensor([[0.0, 0.0, 96.0, 96.0], [40.0, 40.0, 40.5, 41.0], [50.0, 50.0, 50.0, 60.0]]),  # whole, sub-px, zero-width
    ]
    gt_labels = [torch.tensor([0, 1]), torch.zeros(0, dtype=torch.long), torch.tensor([2, 0, 1])]
    outputs = random_outputs(3, size)
    losses = YOLOXLoss(NUM_CLASSES, use_l1=True)(*outputs, gt_boxes, gt_labels)
    assert all(math.isfinite(value(v)) for v in losses.values())
    assert value(losses["num_pos"]) >= 5  # every gt gets at least one positive
    losses["loss"].backward()
    assert all_grads_finite(outputs)


def test_overflowing_size_regressions_keep_gradients_finite():
    # A diverging head (seen on real data: stride-8 log-sizes of ~93 after a too-short warmup) must not give NaN
    # gradients: exp(93) is inf in float32, and inf boxes make the IoU loss's backward 0·inf = NaN.
    size = 64
    outputs = random_outputs(2, size)
    with torch.no_grad():
        outputs[1][0][:, 2:] = 95.0  # every stride-8 prior regresses an astronomically large box
    gt_boxes = [torch.tensor([[4.0, 4.0, 40.0, 30.0]]), torch.tensor([[10.0, 20.0, 60.0, 60.0]])]
    gt_labels = [torch.tensor([0]), torch.tensor([2])]
    losses = YOLOXLoss(NUM_CLASSES)(*outputs, gt_boxes, gt_labels)
    assert all(math.isfinite(value(v)) for v in losses.values())
    losses["loss"].backward()
    assert all_grads_finite(outputs)


def test_divides_by_the_rank_averaged_positive_count(monkeypatch):
    size = 64
    gt_boxes, gt_labels = [torch.tensor([[8.0, 8.0, 40.0, 40.0]])], [torch.tensor([1])]
    outputs = random_outputs(1, size, requires_grad=False)
    local = YOLOXLoss(NUM_CLASSES, use_l1=True)(*outputs, gt_boxes, gt_labels)
    # pretend the other ranks found 3× as many positives on average
    monkeypatch.setattr(yolox_loss_module, "all_reduce_mean", lambda t: t * 3)
    shared = YOLOXLoss(NUM_CLASSES, use_l1=True)(*outputs, gt_boxes, gt_labels)
    assert value(local["num_pos"]) == value(shared["num_pos"]) > 0
    for key in ("loss_cls", "loss_bbox", "loss_obj", "loss_l1"):
        torch.testing.assert_close(shared[key] * 3, local[key])


def test_bad_inputs_raise():
    loss_fn = YOLOXLoss(NUM_CLASSES)
    cls, box, obj = random_outputs(1, 64, requires_grad=False)
    boxes, labels = [torch.tensor([[0.0, 0.0, 9.0, 9.0]])], [torch.tensor([0])]
    with pytest.raises(ValueError, match="levels"):
        loss_fn(cls[:2], box[:2], obj[:2], boxes, labels)
    with pytest.raises(ValueError, match="one entry per image"):
        loss_fn(cls, box, obj, boxes * 2, labels * 2)
    with pytest.raises(ValueError, match=r"gt_labels\[0\]"):
        loss_fn(cls, box, obj, boxes, [torch.tensor([NUM_CLASSES])])
    with pytest.raises(ValueError, match=r"gt_boxes\[0\]"):
        loss_fn(cls, box, obj, [torch.zeros(1, 5)], labels)
    with pytest.raises(ValueError, match="bbox output"):
        loss_fn(cls, [b[:, :3] for b in box], obj, boxes, labels)


def test_tiny_head_learns_a_fixed_batch():
    """50 Adam steps on a small YOLOXHead over fixed random features must cut the loss and fit the boxes."""
    torch.manual_seed(0)
    size = 128
    head = YOLOXHead(NUM_CLASSES, in_channels=8, feat_channels=16, stacked_convs=1, strides=STRIDES)
    feats = [torch.randn(2, 8, size // s, size // s) for s in STRIDES]
    gt_boxes = [torch.tensor([[10.0, 20.0, 50.0, 70.0], [70.0, 60.0, 120.0, 100.0]]), torch.tensor([[30.0, 30.0, 90.0, 110.0]])]
    gt_labels = [torch.tensor([0, 2]), torch.tensor([1])]
    loss_fn = YOLOXLoss(NUM_CLASSES)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    history = []
    start = time.perf_counter()
    for _ in range(50):
        losses = loss_fn(*head(feats), gt_boxes, gt_labels)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({k: value(v) for k, v in losses.items()})
    assert time.perf_counter() - start < 10
    first, last = history[0], history[-1]
    assert last["loss"] < 0.4 * first["loss"], (first, last)
    assert last["loss_bbox"] < 0.6 * first["loss_bbox"], (first, last)

    head.eval()
    with torch.no_grad():
        boxes, class_scores, objectness = head.decode(*head(feats))
    for image in range(2):
        best = (class_scores[image].max(-1).values * objectness[image]).topk(20).indices
        best_iou = box_iou(gt_boxes[image], boxes[image, best]).max(dim=1).values
        assert (best_iou > 0.5).all(), best_iou
