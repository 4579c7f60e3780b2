"""Scene replay (powersam.data.replay): generated scenes appended to a small real dataset."""
import numpy as np
import pytest

from powersam.data.coco import CocoInstances
from powersam.data.replay import SceneReplay
from powersam.data.synth import generate_dataset
from powersam.data.synth_stream import SceneSpec, render_sample


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    folder = generate_dataset(tmp_path_factory.mktemp("replay_coco"), 3, seed=5, image_size=(96, 128),
                              min_objects=1, max_objects=2)
    return CocoInstances(folder, split=None, load_masks=True)


SPEC = SceneSpec(64, 80, 1, 2)


def test_scenes_follow_the_images_with_their_own_ids(coco):
    view = SceneReplay(coco, 4, spec=SPEC, seed=7, first_index=100)
    assert len(view) == len(coco) + 4
    assert view.image_ids[: len(coco)] == coco.image_ids
    assert len(set(view.image_ids)) == len(view) and min(view.image_ids[len(coco):]) > max(coco.image_ids)
    np.testing.assert_array_equal(view[1].image, coco[1].image)
    scene, expected = view[len(coco) + 2], render_sample(7, 102, SPEC)
    np.testing.assert_array_equal(scene.image, expected.image)
    np.testing.assert_array_equal(scene.masks, expected.masks)
    assert scene.image_id == view.image_ids[len(coco) + 2]
    assert view.class_names == coco.class_names and view.has_masks
    assert len(SceneReplay(coco, 0, spec=SPEC)) == len(coco)
    with pytest.raises(IndexError):
        view[len(view)]


def test_zoomed_replay_crops_some_scenes(coco):
    view = SceneReplay(coco, 12, spec=SceneSpec(128, 160, 3, 4), zoom_context=(3.0, 4.0), seed=7)
    shapes = {view[i].image.shape[:2] for i in range(len(coco), len(view))}
    assert (128, 160) in shapes and len(shapes) > 1  # whole scenes and smaller crops


@pytest.mark.parametrize("count", [-1, 1.5, True])
def test_bad_counts_raise(coco, count):
    with pytest.raises(ValueError, match="count"):
        SceneReplay(coco, count)
