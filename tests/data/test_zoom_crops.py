"""Zoom-in training crops (powersam.data.zoom_crops) on a tiny synthetic COCO dataset."""
import numpy as np
import pytest

from powersam.data.coco import CocoInstances
from powersam.data.synth import generate_dataset
from powersam.data.synth_stream import SceneSpec, SceneStream
from powersam.data.zoom_crops import ZoomCrops, ZoomedStream, check_context_range
from powersam.inference.zoom import zoom_window


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    folder = generate_dataset(tmp_path_factory.mktemp("zoom_coco"), 3, seed=5, image_size=(160, 200),
                              min_objects=3, max_objects=4)
    return CocoInstances(folder, split=None, load_masks=True)


def test_one_crop_per_instance_after_the_images(coco):
    crops = ZoomCrops(coco, context=(3.0, 5.0), seed=1)
    instances = [coco.image_info(i)["num_instances"] for i in range(len(coco))]
    assert len(crops) == len(coco) + sum(instances)
    assert crops.image_ids[: len(coco)] == coco.image_ids
    assert len(set(crops.image_ids)) == len(crops)  # crop ids never collide with the images'
    np.testing.assert_array_equal(crops[0].image, coco[0].image)
    assert crops.class_names == coco.class_names  # the wrapped dataset's attributes show through
    only = ZoomCrops(coco, context=4.0, include_full=False)
    assert len(only) == sum(instances)


def test_a_crop_holds_its_instance_cut_to_the_window(coco):
    crops = ZoomCrops(coco, context=(3.0, 5.0), seed=1)
    index = len(coco)  # the first crop: image 0, instance 0
    info = crops.image_info(index)
    sample, source = crops[index], coco[0]
    context = info["zoom_context"]
    assert 3.0 <= context <= 5.0 and info["zoom_instance"] == 0
    x0, y0, x1, y1 = zoom_window(source.boxes[0], source.image.shape[:2], context)
    np.testing.assert_array_equal(sample.image, source.image[y0:y1, x0:x1])
    assert sample.orig_size == (y1 - y0, x1 - x0) and sample.image_id == info["image_id"]
    assert sample.masks.shape == (len(sample.labels), y1 - y0, x1 - x0)
    # the instance it was made for comes first among the kept ones here (instance 0), whole
    np.testing.assert_array_equal(sample.masks[0], source.masks[0][y0:y1, x0:x1])
    assert sample.masks[0].sum() == source.masks[0].sum()
    np.testing.assert_allclose(sample.boxes[0], source.boxes[0] - np.array([x0, y0, x0, y0]), atol=1e-4)
    # every kept neighbour has at least half its area inside; boxes lie in the crop
    full = source.masks.reshape(len(source.labels), -1).sum(1)
    kept = {int(a) for a in sample.annotation_ids}
    for k, aid in enumerate(source.annotation_ids):
        inside = source.masks[k][y0:y1, x0:x1].sum()
        assert (int(aid) in kept) == (k == 0 or inside >= 0.5 * full[k])
    assert np.all(sample.boxes[:, 2] <= x1 - x0) and np.all(sample.boxes[:, 3] <= y1 - y0)


def test_crops_are_fixed_by_the_seed(coco):
    a, b, c = ZoomCrops(coco, seed=3), ZoomCrops(coco, seed=3), ZoomCrops(coco, seed=4)
    contexts = [[x.image_info(i).get("zoom_context") for i in range(len(x))] for x in (a, b, c)]
    assert contexts[0] == contexts[1] != contexts[2]
    np.testing.assert_array_equal(a[len(a) - 1].image, b[len(b) - 1].image)


def test_boxes_only_data_uses_box_areas(coco):
    from dataclasses import replace

    class NoMasks:  # the same images as a boxes-only dataset
        def __init__(self, ds):
            self.ds, self.image_ids = ds, ds.image_ids

        def __len__(self):
            return len(self.ds)

        def image_info(self, i):
            return self.ds.image_info(i)

        def __getitem__(self, i):
            return replace(self.ds[i], masks=None, ignore_mask=None)

    with_masks = ZoomCrops(coco, seed=1)[len(coco)]
    boxed = ZoomCrops(NoMasks(coco), seed=1)[len(coco)]
    assert boxed.masks is None and boxed.annotation_ids[0] == with_masks.annotation_ids[0]
    np.testing.assert_array_equal(boxed.image, with_masks.image)
    np.testing.assert_allclose(boxed.boxes[0], with_masks.boxes[0])


@pytest.mark.parametrize("bad", [(0.5, 2.0), (4.0, 3.0), (1.0,), "3,5", None, (2.0, float("nan"))])
def test_bad_context_ranges_are_named(bad):
    with pytest.raises(ValueError, match="zoom_context"):
        check_context_range(bad)


def test_a_zoomed_stream_mixes_whole_scenes_and_crops_of_zoomable_instances():
    stream = SceneStream(7, SceneSpec(min_objects=3, max_objects=5))
    zoomed = ZoomedStream(stream, (2.5, 4.5), prob=0.5, seed=7)
    assert len(zoomed) == len(stream) and zoomed.class_names == stream.class_names
    crops = 0
    for index in range(24):
        sample, scene = zoomed[index], stream[index]
        if sample.image.shape == scene.image.shape and np.array_equal(sample.image, scene.image):
            continue
        crops += 1
        height, width = sample.image.shape[:2]
        # a window zoom-in prompting would use: less than half the scene, square unless cut by the scene's edge
        assert height * width < 0.5 * scene.image.shape[0] * scene.image.shape[1]
        assert sample.masks.shape == (len(sample.labels), height, width) and len(sample.labels) >= 1
        assert sample.image_id == scene.image_id  # streams are not cached by id
        assert np.all(sample.boxes[:, 2:] <= [width, height]) and np.all(sample.boxes[:, :2] >= 0)
        # the crop is a window of the scene: its pixels are found there
        name = sample.file_name
        instance = int(name.split("#zoom")[1].split(".")[0])
        x0, y0, x1, y1 = zoom_window(scene.boxes[instance], scene.image.shape[:2], 2.5)
        assert (x1 - x0) * (y1 - y0) < 0.5 * scene.image.shape[0] * scene.image.shape[1]
    assert 4 <= crops <= 20  # about half, and only when an instance is small enough to zoom on
    again = ZoomedStream(stream, (2.5, 4.5), prob=0.5, seed=7)
    for index in (0, 5, 11):  # fixed by the seed and the index (a resumed run sees the same samples)
        np.testing.assert_array_equal(again[index].image, zoomed[index].image)
    assert all(np.array_equal(ZoomedStream(stream, 3.0, prob=0.0)[i].image, stream[i].image) for i in range(4))


@pytest.mark.parametrize("kwargs, field", [({"prob": 1.5}, "zoom_prob"), ({"context": (5, 2)}, "zoom_context"),
                                           ({"full_frame_fraction": 0.0}, "full_frame_fraction")])
def test_a_zoomed_stream_names_bad_settings(kwargs, field):
    settings = {"context": (3.0, 5.0), **kwargs}
    with pytest.raises(ValueError, match=field):
        ZoomedStream(SceneStream(1), **settings)
