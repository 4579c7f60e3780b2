"""Zoom-in box prompting (powersam.inference.zoom): window geometry, crop/paste bookkeeping, caching, fallbacks."""
import numpy as np
import pytest
import torch

from powersam.inference.prompts import PromptPipeline
from powersam.inference.zoom import OUTSIDE_LOGIT, ZoomPredictor, check_context, zoom_window


@pytest.mark.parametrize("box, size, context", [
    ((10, 20, 30, 50), (200, 300), 4.0),   # well inside
    ((0, 0, 12, 8), (200, 300), 3.0),      # at the top-left corner: the window shifts inside
    ((280, 180, 300, 200), (200, 300), 5.0),  # bottom-right corner
    ((50, 10, 250, 190), (200, 300), 4.0),  # window larger than the image: cut to it
    ((100.4, 60.6, 101.2, 61.1), (200, 300), 2.0),  # sub-pixel box: min_side
])
def test_zoom_window_is_inside_the_image_and_contains_the_box(box, size, context):
    x0, y0, x1, y1 = zoom_window(box, size, context)
    assert 0 <= x0 < x1 <= size[1] and 0 <= y0 < y1 <= size[0]
    assert x0 <= box[0] and y0 <= box[1] and x1 >= min(box[2], size[1]) and y1 >= min(box[3], size[0])
    side = max(box[2] - box[0], box[3] - box[1]) * context
    assert x1 - x0 == min(max(int(np.ceil(side)), 16), size[1])
    assert y1 - y0 == min(max(int(np.ceil(side)), 16), size[0])


def test_zoom_window_centres_the_box():
    x0, y0, x1, y1 = zoom_window((100, 80, 120, 90), (400, 400), 4.0)  # side 80, centre (110, 85)
    assert (x0, y0, x1, y1) == (70, 45, 150, 125)


@pytest.mark.parametrize("bad", [0.5, 0, -2, float("nan"), float("inf"), "4", True, None])
def test_context_must_be_a_number_of_at_least_one(bad):
    with pytest.raises(ValueError, match="context"):
        check_context(bad)


class BoxFiller(PromptPipeline):
    """A fake backend: the mask of a box prompt is its box (in whatever image it was given), logit +1 inside and
    -1 outside; records every image it encodes."""

    def __init__(self):
        self._warned_clipping = False
        self.encoded = []
        self.reset_image()

    def _encode(self, rgb, timer):
        self.encoded.append(rgb.copy())
        self._embedding, self._original_size, self._input_size = rgb, rgb.shape[:2], rgb.shape[:2]

    def predict_batch(self, boxes=None, point_coords=None, point_labels=None, mask_input=None,
                      multimask_output=False, return_logits=False, chunk_size=64):
        h, w = self._original_size
        n = len(boxes) if boxes is not None else len(point_coords)
        logits = -np.ones((n, 1, h, w), np.float32)
        for i in range(n):
            if boxes is not None:
                x0, y0, x1, y1 = np.round(boxes[i]).astype(int)
                logits[i, 0, max(y0, 0):y1, max(x0, 0):x1] = 1.0
            else:
                x, y = np.round(point_coords[i, 0]).astype(int)
                logits[i, 0, y, x] = 1.0
        scores = np.full((n, 1), 0.5, np.float32)
        return (logits if return_logits else logits > 0), scores, np.zeros((n, 1, 4, 4), np.float32)

    def predict_compact(self, multimask_output=False, chunk_size=64, **prompts):
        from powersam.masks import CompactMasks

        masks, scores, low_res = self.predict_batch(**prompts)
        compact = CompactMasks(self._original_size)
        for mask in masks[:, 0]:
            compact.append_crop(mask, 0, 0)
        return compact, scores, low_res


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)


def test_masks_are_pasted_back_where_their_boxes_are(image):
    base = BoxFiller()
    zoom = ZoomPredictor(base, context=3.0)
    zoom.set_image(image)
    boxes = np.array([[20, 30, 40, 50], [200, 100, 230, 140], [21, 30, 41, 50]], np.float32)
    masks, scores, low_res = zoom.predict_batch(boxes=boxes)
    assert masks.shape == (3, 1, 240, 320) and masks.dtype == bool and scores.shape == (3, 1)
    for mask, (x0, y0, x1, y1) in zip(masks[:, 0], boxes.astype(int)):
        expected = np.zeros((240, 320), bool)
        expected[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(mask, expected)
    # each encoded crop is the image under its window
    assert zoom.encoder_calls == 3 == len(base.encoded)
    x0, y0, x1, y1 = zoom.window_of(boxes[1])
    np.testing.assert_array_equal(base.encoded[1], image[y0:y1, x0:x1])
    assert (x1 - x0, y1 - y0) == (120, 120)


def test_windows_are_cached_across_calls_and_shared_by_equal_boxes(image):
    base = BoxFiller()
    zoom = ZoomPredictor(base, context=3.0)
    zoom.set_image(image)
    boxes = np.array([[20, 30, 40, 50], [20, 30, 40, 50]], np.float32)
    first = zoom.predict_batch(boxes=boxes)
    again = zoom.predict_batch(boxes=boxes, point_coords=np.array([[[25, 35]], [[30, 40]]], np.float32),
                               point_labels=np.ones((2, 1)))
    assert zoom.encoder_calls == 1  # one window for both boxes, reused by the refinement call
    np.testing.assert_array_equal(first[0], again[0])
    zoom.set_image(image)  # a new image forgets the windows
    zoom.predict_batch(boxes=boxes)
    assert zoom.encoder_calls == 1 and len(base.encoded) == 2


def test_large_boxes_and_single_point_prompts_use_the_whole_image(image):
    base = BoxFiller()
    zoom = ZoomPredictor(base, context=4.0)
    zoom.set_image(image)
    assert zoom.window_of(np.array([100, 80, 200, 160])) == (0, 0, 320, 240)
    masks, _, _ = zoom.predict_batch(point_coords=np.array([[[300, 10]]], np.float32), point_labels=np.ones((1, 1)))
    assert base.encoded[-1].shape == image.shape and masks[0, 0, 10, 300]


def test_point_prompts_with_a_click_zoom_on_their_full_frame_answer(image):
    base = BoxFiller()  # a point prompt's mask: the pixel of its first point
    zoom = ZoomPredictor(base, context=3.0)
    zoom.set_image(image)
    coords = np.array([[[100, 100], [110, 104]], [[300, 10], [300, 10]]], np.float32)
    labels = np.array([[1, 0], [1, -1]])  # the second prompt's second point is padding: a single point
    masks, _, _ = zoom.predict_batch(point_coords=coords, point_labels=labels)
    # the full frame first (both prompts), then the first prompt's window around its answer and its click
    assert [e.shape for e in base.encoded] == [image.shape, (33, 33, 3)]
    window = zoom.window_of((100, 100, 111, 105))
    np.testing.assert_array_equal(base.encoded[1], image[window[1]:window[3], window[0]:window[2]])
    assert masks[0, 0].sum() == 1 and masks[0, 0, 100, 100]  # pasted back at the first point, in full-frame pixels
    assert masks[1, 0].sum() == 1 and masks[1, 0, 10, 300]  # a single point stays on the full frame
    compact, _, _ = zoom.predict_compact(point_coords=coords, point_labels=labels)
    np.testing.assert_array_equal(compact.to_dense().reshape(masks.shape), masks)
    for kwargs in ({"mask_input": np.zeros((2, 1, 4, 4), np.float32)}, {}):  # logits of the full frame; points off
        plain = ZoomPredictor(BoxFiller(), context=3.0, points="mask_input" in kwargs)
        plain.set_image(image)
        plain.predict_batch(point_coords=coords, point_labels=labels, **kwargs)
        assert plain.encoder_calls == 1 and plain.predictor.encoded[0].shape == image.shape


def test_logits_outside_the_window_are_a_clear_no(image):
    zoom = ZoomPredictor(BoxFiller(), context=2.0)
    zoom.set_image(image)
    logits, _, _ = zoom.predict_batch(boxes=np.array([[20, 30, 40, 50]], np.float32), return_logits=True)
    x0, y0, x1, y1 = zoom.window_of(np.array([20, 30, 40, 50]))
    outside = np.ones((240, 320), bool)
    outside[y0:y1, x0:x1] = False
    assert np.all(logits[0, 0][outside] == OUTSIDE_LOGIT) and np.all(logits[0, 0][~outside] > OUTSIDE_LOGIT)


def test_bad_calls_name_the_problem(image):
    zoom = ZoomPredictor(BoxFiller())
    with pytest.raises(RuntimeError, match="set_image"):
        zoom.predict_batch(boxes=np.zeros((1, 4), np.float32))
    zoom.set_image(image)
    with pytest.raises(ValueError, match="same length"):
        zoom.predict_batch(boxes=np.zeros((2, 4), np.float32), point_coords=np.zeros((1, 1, 2)),
                           point_labels=np.ones((1, 1)))
    with pytest.raises(TypeError, match="set_image"):
        ZoomPredictor(object())
    with pytest.raises(ValueError, match="full_frame_fraction"):
        ZoomPredictor(BoxFiller(), full_frame_fraction=0.0)


def test_a_window_covering_the_image_gives_the_plain_predictor_exactly(image):
    """With a real model: when the zoom window is the whole image, the answer is the wrapped predictor's."""
    from powersam.models.zoo import build_model
    from powersam.predictor import SamPredictor

    torch.manual_seed(0)
    model = build_model("powersam_s", img_size=128, with_detector=False).eval()
    boxes = np.array([[40, 30, 300, 220]], np.float32)
    plain = SamPredictor(model)
    plain.set_image(image)
    expected = plain.predict_batch(boxes=boxes, return_logits=True)
    zoom = ZoomPredictor(SamPredictor(model), context=4.0)
    zoom.set_image(image)
    got = zoom.predict_batch(boxes=boxes, return_logits=True)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)


def test_compact_masks_equal_the_dense_ones(image):
    zoom = ZoomPredictor(BoxFiller(), context=3.0)
    zoom.set_image(image)
    boxes = np.array([[200, 100, 230, 140], [20, 30, 40, 50], [0, 0, 320, 240]], np.float32)
    dense, scores, _ = zoom.predict_batch(boxes=boxes)
    compact, compact_scores, _ = zoom.predict_compact(boxes=boxes)
    assert len(compact) == 3 and compact.shape == (3, 240, 320)
    np.testing.assert_array_equal(compact.to_dense(), dense[:, 0])
    np.testing.assert_array_equal(compact_scores, scores)


def test_a_given_full_frame_state_saves_the_whole_image_pass(image):
    base = BoxFiller()
    base.set_image(image)
    zoom = ZoomPredictor(base, context=4.0)
    zoom.set_image(image, full_frame_state=base.image_state())
    zoom.predict_batch(boxes=np.array([[0, 0, 300, 200]], np.float32))
    assert zoom.encoder_calls == 0 and len(base.encoded) == 1
    with pytest.raises(ValueError, match="full_frame_state"):
        zoom.set_image(image[:100], full_frame_state=base.image_state())


def test_window_states_carry_encoded_windows_to_a_new_wrapper(image):
    base = BoxFiller()
    first = ZoomPredictor(base, context=3.0)
    first.set_image(image)
    boxes = np.array([[20, 30, 40, 50]], np.float32)
    masks, _, _ = first.predict_batch(boxes=boxes)
    kept = first.window_states()
    assert list(kept) == [first.window_of(boxes[0])] and first.encoder_calls == 1
    second = ZoomPredictor(base, context=3.0)
    second.set_image(image, window_states=kept)
    np.testing.assert_array_equal(second.predict_batch(boxes=boxes)[0], masks)
    assert second.encoder_calls == 0 and len(base.encoded) == 1  # reused, not encoded again
    with pytest.raises(ValueError, match="window_states"):
        ZoomPredictor(base).set_image(image, window_states={(0, 0, 400, 50): {}})
