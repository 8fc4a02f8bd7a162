"""What dataset_convert writes: image modes, objects, warnings, shards and tags."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from effdet.data.convert import dataset_convert
from effdet.data.records import read_examples
from effdet.data.tfexample import bytes_feature, float_feature, int64_feature, serialize_example

Factory = Callable[..., Any]  # conftest's tiny_coco


def _encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def _gradient(mode: str) -> Image.Image:
    ramp = np.arange(64 * 48 * 4, dtype=np.uint32).reshape(48, 64, 4) % 251
    rgba = Image.fromarray(ramp.astype(np.uint8), "RGBA")
    return rgba if mode == "RGBA" else rgba.convert(mode)


def _only(pattern: str) -> dict[str, Any]:
    (example,) = list(read_examples(pattern))
    return example


INPUTS = {
    "rgb-png": lambda: _encode(_gradient("RGB"), "PNG"),
    "rgba-png": lambda: _encode(_gradient("RGBA"), "PNG"),
    "palette-png": lambda: _encode(_gradient("RGB").quantize(16), "PNG"),
    "grey-png": lambda: _encode(_gradient("L"), "PNG"),
    "grey16-png": lambda: _encode(Image.fromarray(np.full((48, 64), 40000, np.uint16)), "PNG"),
    "grey-jpeg": lambda: _encode(_gradient("L"), "JPEG"),
    "cmyk-jpeg": lambda: _encode(_gradient("CMYK"), "JPEG"),
    "bmp": lambda: _encode(_gradient("RGB"), "BMP"),
}


@pytest.mark.parametrize("kind", sorted(INPUTS))
def test_image_modes_decode_to_rgb(tiny_coco: Factory, kind: str) -> None:
    coco = tiny_coco(0)
    data = INPUTS[kind]()
    coco.add_image(data, name=f"x.{kind.split('-')[-1]}")
    dataset_convert(coco.image_dir, coco.write(), coco.out, workers=1)
    example = _only(str(coco.out / "train-*"))
    decoded = tf.io.decode_image(example["image"], channels=3).numpy()
    source = Image.open(io.BytesIO(data))
    if kind == "grey16-png":
        expected = np.full((48, 64, 3), 40000 >> 8, np.uint8)
    else:
        expected = np.asarray(source.convert("RGB"))
    np.testing.assert_array_equal(decoded, expected)
    assert example["format"] == "png"
    if kind == "rgb-png":
        assert example["image"] == data  # already fine: kept byte for byte


def test_rgb_jpeg_kept_byte_for_byte(tiny_coco: Factory) -> None:
    coco = tiny_coco(1)
    dataset_convert(coco.image_dir, coco.write(), coco.out, workers=1)
    example = _only(str(coco.out / "train-*"))
    assert example["format"] == "jpeg"
    assert example["image"] == (coco.image_dir / "img1.jpg").read_bytes()


def test_out_of_image_box_is_warned_and_not_written(tiny_coco: Factory) -> None:
    coco = tiny_coco(2)
    coco.images[1]["id"] = 200365  # as in TAO's documentation
    coco.annotations[1]["image_id"] = 200365
    coco.annotations[1]["id"] = 918
    coco.annotations[1]["bbox"] = [50.0, 4.0, 20.0, 16.0]  # x + w = 70 > 64
    zero = coco.add_box(1, [10.0, 10.0, 0.0, 5.0])
    summary = dataset_convert(coco.image_dir, coco.write(), coco.out, workers=1)
    warnings = json.loads((coco.out / "train_warnings.json").read_text())
    assert warnings == {"1": {"box": [zero], "mask": []}, "200365": {"box": [918], "mask": []}}
    assert summary.warnings_file == coco.out / "train_warnings.json"
    assert (summary.boxes, summary.skipped_boxes) == (1, 2)
    counts = {ex["source_id"]: len(ex["classes"]) for ex in read_examples(str(coco.out / "*.tfrecord"))}
    assert counts == {"1": 1, "200365": 0}


def test_edge_tolerance_clamps(tiny_coco: Factory) -> None:
    coco = tiny_coco(1)
    coco.annotations[0]["bbox"] = [-0.0004, 0.0, 64.0008, 48.0]  # ends at 64.0004
    dataset_convert(coco.image_dir, coco.write(), coco.out, workers=1)
    np.testing.assert_array_equal(_only(str(coco.out / "*"))["boxes"], [[0.0, 0.0, 1.0, 1.0]])


def test_mask_outside_box_is_warned_but_written(tiny_coco: Factory) -> None:
    coco = tiny_coco(1)
    coco.annotations[0]["segmentation"] = [[0.0, 0.0, 30.0, 0.0, 30.0, 30.0, 0.0, 30.0]]
    summary = dataset_convert(coco.image_dir, coco.write(), coco.out, include_mask=True, workers=1)
    assert json.loads(summary.warnings_file.read_text()) == {"1": {"box": [], "mask": [100]}}
    example = _only(str(coco.out / "*.tfrecord"))
    assert example["masks"].shape == (1, 48, 64) and example["masks"][0, 0:30, 0:30].all()


def test_empty_images_crowd_and_rle(tiny_coco: Factory) -> None:
    coco = tiny_coco(2)
    coco.annotations.pop()  # image 2 has no annotations at all
    rle = {"size": [48, 64], "counts": [48 * 10, 48 * 5, 48 * 49]}  # columns 10..14
    coco.add_box(1, [10.0, 0.0, 5.0, 48.0], category_id=7, iscrowd=1, segmentation=rle)
    dataset_convert(coco.image_dir, coco.write(), coco.out, include_mask=True, workers=1)
    first, second = read_examples(str(coco.out / "*.tfrecord"))
    assert first["classes"].tolist() == [1, 7] and first["class_text"] == ["cat", "dog"]
    assert first["is_crowd"].tolist() == [0, 1]
    assert first["masks"][1].sum() == 48 * 5 and first["masks"][1][:, 10:15].all()
    assert second["source_id"] == "2" and second["boxes"].shape == (0, 4)
    assert "masks" not in second and second["classes"].size == 0


def test_shard_cap_tag_default_and_order(tiny_coco: Factory) -> None:
    coco = tiny_coco(5)
    coco.images.reverse()  # output follows image id, not file order
    summary = dataset_convert(coco.image_dir, coco.write("my_split.json"), coco.out, workers=2)
    assert summary.shards == 5
    assert [p.name for p in summary.shard_paths] == [
        f"my_split-{i:05d}-of-00005.tfrecord" for i in range(5)
    ]
    dataset_convert(coco.image_dir, coco.write(), coco.out, tag="t", num_shards=2, workers=1)
    ids = [[ex["source_id"] for ex in read_examples(str(coco.out / f"t-0000{s}-of-00002.tfrecord"))]
           for s in range(2)]
    assert ids == [["1", "3", "5"], ["2", "4"]]


def test_hand_written_example_matches_tensorflow() -> None:
    serialized = serialize_example({
        "b": bytes_feature([b"", b"x" * 300]),
        "f": float_feature([0.5, -1e-7]),
        "i": int64_feature([0, -1, 2**40]),
        "empty": float_feature([]),
    })
    example = tf.train.Example.FromString(serialized)
    feature = example.features.feature
    assert list(feature["b"].bytes_list.value) == [b"", b"x" * 300]
    np.testing.assert_array_equal(feature["f"].float_list.value, np.float32([0.5, -1e-7]))
    assert list(feature["i"].int64_list.value) == [0, -1, 2**40]
    assert feature["empty"].HasField("float_list") and not feature["empty"].float_list.value


def test_converter_does_not_import_tensorflow() -> None:
    code = "import sys, effdet.data.convert; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
