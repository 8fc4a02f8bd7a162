"""The tf.data pipelines: shapes, augmentation geometry, determinism, resumption, errors."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from effdet.anchors import anchors_for
from effdet.data import pipeline
from effdet.data.convert import dataset_convert
from effdet.data.preprocess import MEAN_RGB, STDDEV_RGB, normalize_image, resize_and_pad
from effdet.data.synthetic import make_dataset
from effdet.errors import EffdetError
from effdet.spec.config import AugmentationConfig, DatasetConfig, ExperimentConfig

IMAGE_SIZE = (128, 128)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9 training and 3 validation 160x120 synthetic JPEGs, two shards each."""
    root = tmp_path_factory.mktemp("pipeline")
    data = make_dataset(root / "data", 12, 160, 120, seed=3, val_fraction=0.25)
    for split in (data.train_json, data.val_json):
        dataset_convert(data.image_dir, split, root / "tfrecords", num_shards=2, workers=1)
    return root / "tfrecords"


def experiment(train: str = "", val: str = "", **dataset: object) -> ExperimentConfig:
    dataset_config = DatasetConfig(training_file_pattern=train, validation_file_pattern=val,
                                   image_size=IMAGE_SIZE, num_classes=5)
    return ExperimentConfig(dataset_config=dataclasses.replace(dataset_config, **dataset))


def shard_config(shards: Path, **dataset: object) -> ExperimentConfig:
    return experiment(str(shards / "train-*"), str(shards / "val-*"), **dataset)


def take(dataset: tf.data.Dataset, n: int) -> list:
    return [tf.nest.map_structure(lambda t: t.numpy(), batch) for batch in dataset.take(n)]


def serialized_example(image: bytes, boxes: list[list[float]], classes: list[int],
                       crowd: list[int] | None = None, source_id: str = "7") -> bytes:
    """A record with TAO's keys; boxes normalised [ymin, xmin, ymax, xmax]."""
    crowd = crowd if crowd is not None else [0] * len(classes)
    column = list(zip(*boxes)) if boxes else [[], [], [], []]

    def floats(values) -> tf.train.Feature:
        return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))

    def ints(values) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))

    def strings(values) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))

    feature = {
        "image/encoded": strings([image]), "image/filename": strings([b"x.jpg"]),
        "image/source_id": strings([source_id.encode()]),
        "image/object/class/label": ints(classes), "image/object/is_crowd": ints(crowd),
        **{f"image/object/bbox/{k}": floats(v)
           for k, v in zip(("ymin", "xmin", "ymax", "xmax"), column)},
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_train_batches_have_the_label_layout_of_assign_targets(shards: Path) -> None:
    config = shard_config(shards)
    anchors = anchors_for(config.model_config, IMAGE_SIZE)
    images, labels = take(pipeline.train_dataset(config, anchors, batch_size=3), 1)[0]
    assert images.shape == (3, 128, 128, 3) and images.dtype == np.float32
    assert sorted(labels) == sorted([f"{kind}_targets_{level}" for kind in ("cls", "box")
                                     for level in range(3, 8)] + ["num_positives"])
    for level, (h, w) in anchors.level_shapes.items():
        assert labels[f"cls_targets_{level}"].shape == (3, h, w, 9)
        assert labels[f"cls_targets_{level}"].dtype == np.int32
        assert labels[f"box_targets_{level}"].shape == (3, h, w, 36)
        assert labels[f"box_targets_{level}"].dtype == np.float32
    assert labels["num_positives"].shape == (3,) and labels["num_positives"].dtype == np.float32
    classes = np.concatenate([labels[f"cls_targets_{level}"].ravel() for level in range(3, 8)])
    assert set(np.unique(classes)) <= {-1, 0, 1, 2, 3}  # synthetic categories 1..4, 0-based


def test_same_seed_same_batches_and_start_step_resumes_exactly(shards: Path) -> None:
    config = shard_config(shards)
    anchors = anchors_for(config.model_config, IMAGE_SIZE)
    # batch 4 over 9 records: the 5 batches cross two pass boundaries.
    first = take(pipeline.train_dataset(config, anchors, batch_size=4), 5)
    again = take(pipeline.train_dataset(config, anchors, batch_size=4), 5)
    resumed = take(pipeline.train_dataset(config, anchors, batch_size=4, start_step=3), 2)
    tf.nest.map_structure(np.testing.assert_array_equal, first, again)
    tf.nest.map_structure(np.testing.assert_array_equal, first[3:], resumed)
    other_seed = dataclasses.replace(config, training_config=dataclasses.replace(
        config.training_config, tf_random_seed=7))
    different = take(pipeline.train_dataset(other_seed, anchors, batch_size=4), 1)
    assert not np.array_equal(first[0][0], different[0][0])


def test_every_pass_visits_each_record_once() -> None:
    for pass_index in range(3):
        order = pipeline.pass_order(42, pass_index, 9)
        assert sorted(order) == list(range(9))
    assert not np.array_equal(pipeline.pass_order(42, 0, 9), pipeline.pass_order(42, 1, 9))


def test_input_pipelines_split_the_image_stream(shards: Path) -> None:
    config = shard_config(shards)
    anchors = anchors_for(config.model_config, IMAGE_SIZE)
    stream = take(pipeline.train_dataset(config, anchors, batch_size=1), 6)
    single = [images[0] for images, _ in stream]
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=2)
        (images, _), = take(pipeline.train_dataset(config, anchors, batch_size=3,
                                                   input_context=context), 1)
        np.testing.assert_array_equal(images, np.stack(single[pipeline_id::2]))


def _visible_box(image: np.ndarray) -> np.ndarray | None:
    """[ymin, xmin, ymax, xmax] (pixel edges) of the bright pixels of a normalised image."""
    bright = image[..., 0] > ((255 - MEAN_RGB[0]) / STDDEV_RGB[0]) / 2
    if not bright.any():
        return None
    rows, cols = np.nonzero(bright.any(axis=1))[0], np.nonzero(bright.any(axis=0))[0]
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float32)


def test_augmented_boxes_follow_the_augmented_image() -> None:
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[20:60, 30:110] = 255  # an off-centre box, so a flip moves it
    boxes = tf.constant([[0.2, 0.15, 0.6, 0.55]])
    augmentation = AugmentationConfig(rand_hflip=True, random_crop_min_scale=0.5,
                                      random_crop_max_scale=2.0)
    kept = 0
    for k in range(40):  # 40 draws of flip, scale and crop window
        image, out_boxes, classes = pipeline.augment(
            tf.constant(pixels), boxes, tf.constant([3]), (64, 96), augmentation,
            tf.constant([42, k], tf.int64))
        assert image.shape == (64, 96, 3)
        visible = _visible_box(image.numpy())
        if out_boxes.shape[0] == 0:
            assert visible is None
            continue
        kept += 1
        assert classes.numpy().tolist() == [3]
        np.testing.assert_allclose(out_boxes.numpy()[0], visible, atol=1.5)
    assert kept > 10


def test_without_jitter_the_flip_mirrors_boxes_exactly() -> None:
    pixels = np.zeros((64, 128, 3), np.uint8)
    boxes = tf.constant([[0.25, 0.125, 0.5, 0.25]])
    no_jitter = AugmentationConfig(rand_hflip=True, random_crop_min_scale=1.0,
                                   random_crop_max_scale=1.0)
    results = set()
    for k in range(8):
        _, out_boxes, _ = pipeline.augment(tf.constant(pixels), boxes, tf.constant([1]), (64, 128),
                                           no_jitter, tf.constant([0, k], tf.int64))
        results.add(tuple(out_boxes.numpy()[0].tolist()))
    assert results == {(16.0, 16.0, 32.0, 32.0), (16.0, 96.0, 32.0, 112.0)}


def _train_config(**dataset: object) -> ExperimentConfig:
    config = experiment(**dataset)
    still = AugmentationConfig(rand_hflip=False, random_crop_min_scale=1.0,
                               random_crop_max_scale=1.0)
    return dataclasses.replace(config, augmentation_config=still)


def test_crowd_boxes_are_dropped_only_when_configured() -> None:
    record = serialized_example(png(np.zeros((32, 64, 3), np.uint8)),
                                [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]], [2, 4], crowd=[1, 0])
    skip = pipeline.train_example(tf.constant(record), 0, _train_config(
        max_instances_per_image=4, skip_crowd_during_training=True))
    keep = pipeline.train_example(tf.constant(record), 0, _train_config(
        max_instances_per_image=4, skip_crowd_during_training=False))
    # A 32x64 image in a 128x128 input: scale 2, so the boxes land at 64x128 pixels.
    assert skip["classes"].numpy().tolist() == [4, -1, -1, -1]
    np.testing.assert_allclose(skip["boxes"].numpy()[0], [32, 64, 64, 128])
    assert keep["classes"].numpy().tolist() == [2, 4, -1, -1]
    np.testing.assert_allclose(keep["boxes"].numpy()[:2], [[0, 0, 32, 64], [32, 64, 64, 128]])


def test_instances_are_padded_to_max_instances() -> None:
    boxes = [[0.1 * i, 0.1 * i, 0.1 * i + 0.1, 0.1 * i + 0.1] for i in range(5)]
    record = tf.constant(serialized_example(png(np.zeros((16, 16, 3), np.uint8)), boxes, [1] * 5))
    padded = pipeline.train_example(record, 0, _train_config(max_instances_per_image=8))
    exact = pipeline.train_example(record, 0, _train_config(max_instances_per_image=5))
    assert padded["boxes"].shape == (8, 4)
    assert padded["classes"].numpy().tolist() == [1] * 5 + [-1] * 3
    assert not padded["boxes"].numpy()[5:].any()
    assert exact["classes"].numpy().tolist() == [1] * 5
    np.testing.assert_allclose(exact["boxes"].numpy(), np.asarray(boxes) * 128, rtol=1e-5)


def _train_error(record: bytes, **dataset: object) -> str:
    with pytest.raises(EffdetError) as info, pipeline.data_errors():
        pipeline.train_example(tf.constant(record), 0, _train_config(**dataset), origin="s-0")
    return str(info.value)


def test_more_objects_than_max_instances_is_an_error_naming_image_and_count() -> None:
    boxes = [[0.1 * i, 0.1 * i, 0.1 * i + 0.1, 0.1 * i + 0.1] for i in range(5)]
    record = serialized_example(png(np.zeros((16, 16, 3), np.uint8)), boxes, [1] * 5)
    message = _train_error(record, max_instances_per_image=3)
    assert message == ("image x.jpg (source_id 7) in s-0 has 5 objects, more than "
                       "dataset_config.max_instances_per_image (3); raise it")


@pytest.mark.parametrize("label", [0, 5, 90])
def test_category_id_outside_the_model_is_an_error_naming_it(label: int) -> None:
    record = serialized_example(png(np.zeros((16, 16, 3), np.uint8)),
                                [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]], [2, label])
    message = _train_error(record, max_instances_per_image=4)
    assert message == (f"category id {label} of image x.jpg (source_id 7) in s-0 is outside "
                       "1..4 (dataset_config.num_classes is 5, the background included)")


def test_eval_batches_map_back_to_the_original_image(shards: Path) -> None:
    config = shard_config(shards, image_size=(100, 90))
    batches = take(pipeline.eval_dataset(config, batch_size=2), 5)
    assert [images.shape for images, _ in batches] == [(2, 100, 90, 3), (1, 100, 90, 3)]
    meta = {k: np.concatenate([m[k] for _, m in batches]) for k in batches[0][1]}
    assert sorted(meta["source_id"]) == [10, 11, 12] and meta["source_id"].dtype == np.int64
    assert meta["image_scale"].dtype == np.float32 and meta["original_size"].dtype == np.int32
    np.testing.assert_array_equal(meta["original_size"], [[120, 160]] * 3)
    # 160x120 into 90 wide: scale 0.5625, resized to 68x90; the rest is zero padding.
    resized = meta["image_scale"][:, None] * meta["original_size"]
    np.testing.assert_allclose(resized, [[68, 90]] * 3, atol=1.0)
    images = np.concatenate([images for images, _ in batches])
    assert not images[:, 68:].any() and images[:, :68].any(axis=(1, 2, 3)).all()
    limited = take(pipeline.eval_dataset(config, batch_size=2, limit=1), 5)
    assert len(limited) == 1 and limited[0][0].shape[0] == 1


def test_resize_and_pad_keeps_aspect_and_pads_with_the_mean() -> None:
    image = tf.fill([30, 40, 3], 255.0)
    padded, scale = resize_and_pad(normalize_image(image), (64, 64))
    assert float(scale) == pytest.approx(1.6)
    assert padded.shape == (64, 64, 3)
    assert (padded.numpy()[:48] > 2).all() and not padded.numpy()[48:].any()


def test_patterns_matching_nothing_fail_when_the_dataset_is_built(tmp_path: Path) -> None:
    config = experiment(str(tmp_path / "none-*"), str(tmp_path / "none-*"))
    anchors = anchors_for(config.model_config, IMAGE_SIZE)
    no_match = r"_file_pattern .*none-\*: no TFRecord files match"
    with pytest.raises(EffdetError, match="training" + no_match):
        pipeline.train_dataset(config, anchors, batch_size=2)
    with pytest.raises(EffdetError, match="validation" + no_match):
        pipeline.eval_dataset(config, batch_size=2)
    with pytest.raises(EffdetError, match="training_file_pattern is empty"):
        pipeline.train_dataset(experiment(), anchors, batch_size=2)


def test_a_file_that_is_not_tfrecord_is_named(tmp_path: Path) -> None:
    (tmp_path / "train-0.tfrecord").write_bytes(b"\xff\xd8\xff not a tfrecord")
    config = experiment(str(tmp_path / "train-*"))
    with pytest.raises(EffdetError, match=r"train-0.tfrecord: truncated or not a TFRecord file"):
        pipeline.train_dataset(config, anchors_for(config.model_config, IMAGE_SIZE), batch_size=1)


def test_an_undecodable_image_is_reported_with_its_shard(tmp_path: Path) -> None:
    shard = tmp_path / "train-0.tfrecord"
    with tf.io.TFRecordWriter(str(shard)) as writer:
        writer.write(serialized_example(b"not an image", [[0, 0, 1, 1]], [1], source_id="5"))
    config = experiment(str(shard), str(shard))
    anchors = anchors_for(config.model_config, IMAGE_SIZE)
    for dataset in (pipeline.train_dataset(config, anchors, batch_size=1),
                    pipeline.eval_dataset(config, batch_size=1)):
        expected = r"cannot decode image x.jpg \(source_id 5\) in .*train-0.tfrecord"
        with pytest.raises(EffdetError, match=expected), pipeline.data_errors():
            next(iter(dataset))
