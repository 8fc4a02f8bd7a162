"""Hostile and unlucky inputs (issue 13): nothing lost, nothing hung, no resource blow-ups."""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from PIL import Image
from test_export import tiny_architecture
from test_runtimes import KEY, save_tiny_tlt

from effdet.anchors import anchors_for
from effdet.box_coder import encode
from effdet.data.coco import load_coco
from effdet.data.images import MAX_IMAGE_PIXELS, ImageProblem, prepare_image
from effdet.errors import EffdetError
from effdet.formats import atomic, crypto
from effdet.formats.crypto import DecryptionError, decrypt, encrypt
from effdet.key import MIN_KEY_LENGTH, resolve_key
from effdet.log import redact, register_secret
from effdet.export import onnx_graph
from effdet.postprocess import EMPTY_LOGIT, postprocess
from effdet.runtimes.base import Detections, to_original
from effdet.spec.config import ModelConfig
from effdet.tasks.inference import inference, label_file_names
from tests.spec_support import complete

SPEC = complete('dataset_config { num_classes: 5 image_size: "128,128" }\n'
                "eval_config { min_score_thresh: 0.3 max_detections_per_image: 20 }\n")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    (root / "spec.txt").write_text(SPEC)
    save_tiny_tlt(root / "m.tlt")
    return {"root": root, "spec": root / "spec.txt", "model": root / "m.tlt"}


def random_image(path: Path, size: tuple[int, int] = (96, 80), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def run(workspace, images: Path, out: Path, labels: Path | None = None, **options):
    return inference(images, out, workspace["spec"], workspace["model"], KEY, label_dir=labels,
                     threshold=0.3, **options)


# --- 1. label files: unique per input ----------------------------------------------------


def test_label_names_keep_the_suffix_only_where_stems_clash():
    names = label_file_names([Path("x.jpg"), Path("x.png"), Path("x.JPG"), Path("y.png"),
                              Path("Z.png"), Path("z.bmp")])
    assert names == {Path("x.jpg"): "x.jpg.txt", Path("x.png"): "x.png.txt",
                     Path("x.JPG"): "x.JPG.txt", Path("y.png"): "y.txt",
                     Path("Z.png"): "Z.png.txt", Path("z.bmp"): "z.bmp.txt"}


def test_inference_writes_one_label_file_per_image_when_stems_clash(workspace, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for seed, name in enumerate(["x.jpg", "x.png", "x.JPG", "y.png"]):
        random_image(images / name, seed=seed)
    summary = run(workspace, images, tmp_path / "out", tmp_path / "labels")
    labels = sorted(p.name for p in (tmp_path / "labels").iterdir())
    assert labels == ["x.JPG.txt", "x.jpg.txt", "x.png.txt", "y.txt"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.JPG", "x.jpg", "x.png",
                                                                    "y.png"]
    rows = sum(len((tmp_path / "labels" / n).read_text().splitlines()) for n in labels)
    assert rows == summary.detections > 0  # no detection lost to an overwritten file


# --- 2. never mix two runs in one folder; 11.9: one image file ---------------------------


def test_non_empty_output_is_refused_and_force_replaces_it_whole(workspace, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    random_image(images / "a.png")
    out, labels = tmp_path / "out", tmp_path / "labels"
    out.mkdir()
    (out / "stale.png").write_bytes(b"from another run")
    with pytest.raises(EffdetError, match=r"out: output directory is not empty.*--force"):
        run(workspace, images, out, labels)
    assert (out / "stale.png").read_bytes() == b"from another run" and not labels.exists()
    run(workspace, images, out, labels, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]
    assert sorted(p.name for p in labels.iterdir()) == ["a.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries
    with pytest.raises(EffdetError, match="must not contain the input"):
        run(workspace, images, tmp_path, force=True)
    with pytest.raises(EffdetError, match="not one inside the other"):
        run(workspace, images, tmp_path / "o2", tmp_path / "o2" / "labels")


def test_a_failed_run_leaves_the_earlier_output_untouched(workspace, tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    random_image(images / "a.png")
    random_image(images / "b.png", seed=1)
    out = tmp_path / "out"
    run(workspace, images, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []

    def fail_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(*args, **kwargs)

    original = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", fail_on_second)
    with pytest.raises(EffdetError, match=r"b\.png: cannot write: No space left on device"):
        run(workspace, images, out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_one_image_file_as_input(workspace, tmp_path):
    random_image(tmp_path / "only.jpg")
    random_image(tmp_path / "other.png", seed=2)
    summary = run(workspace, tmp_path / "only.jpg", tmp_path / "out", tmp_path / "labels")
    assert summary.images == 1
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["only.jpg"]
    assert [p.name for p in (tmp_path / "labels").iterdir()] == ["only.txt"]
    (tmp_path / "notes.txt").write_text("text")
    with pytest.raises(EffdetError, match="notes.txt: not an image file"):
        run(workspace, tmp_path / "notes.txt", tmp_path / "out2")


# --- 10. huge images: refused from the header, before decoding ---------------------------


def huge_png(path: Path) -> Path:
    side = int(MAX_IMAGE_PIXELS ** 0.5) + 1  # one bit per pixel keeps making it cheap
    Image.new("1", (side, side)).save(path)
    return path


def test_huge_image_is_skipped_by_inference_and_refused_by_convert(workspace, tmp_path, caplog):
    images = tmp_path / "images"
    images.mkdir()
    huge = huge_png(images / "huge.png")
    random_image(images / "small.png")
    with caplog.at_level(logging.WARNING, logger="effdet"):
        summary = run(workspace, images, tmp_path / "out")
    assert summary.images == 1 and summary.skipped == [huge]
    assert any("huge.png" in r.getMessage() and "pixel limit" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(ImageProblem, match="pixel limit"):
        prepare_image(huge.read_bytes())


# --- 4. zero-area detections -------------------------------------------------------------


def head_outputs(anchors, logits, codes):
    cls_out, box_out, start = [], [], 0
    batch = logits.shape[0]
    for level, count in zip(anchors.levels, anchors.level_counts()):
        h, w = anchors.level_shapes[level]
        cls_out.append(tf.reshape(logits[:, start:start + count], [batch, h, w, -1]))
        box_out.append(tf.reshape(codes[:, start:start + count], [batch, h, w, -1]))
        start += count
    return cls_out, box_out


def test_boxes_without_area_never_become_detections():
    anchors = anchors_for(ModelConfig(), (128, 128))
    n = sum(anchors.level_counts())
    logits = np.full((1, n, 4), -10.0, np.float32)
    codes = np.zeros((1, n, 4), np.float32)
    # The best box lies right of the image's 64 px (letterbox padding), the second below the
    # network input itself (empty once clipped to it), the third is a real one.
    for anchor, box, logit in [(40, [10, 80, 50, 120], 6.0), (41, [130, 10, 160, 40], 5.5),
                               (42, [20, 10, 60, 50], 5.0)]:
        logits[0, anchor, 0] = logit
        codes[0, anchor] = encode(np.array(box, np.float32), anchors.boxes[anchor]).numpy()
    cls_out, box_out = head_outputs(anchors, logits, codes)
    out = postprocess(cls_out, box_out, anchors, 4, max_detections=5, min_score=0.3,
                      nms_method="hard", image_scales=tf.constant([1.0]),
                      image_sizes=tf.constant([[128, 64]]))
    assert out["num_detections"].numpy()[0, 0] == 1
    np.testing.assert_allclose(out["detection_boxes"].numpy()[0, 0], [20, 10, 60, 50], atol=1e-3)
    assert not out["detection_scores"].numpy()[0, 1:].any()
    # Without image sizes only the box outside the network input goes.
    out = postprocess(cls_out, box_out, anchors, 4, max_detections=5, min_score=0.3,
                      nms_method="hard")
    assert out["num_detections"].numpy()[0, 0] == 2


def test_tensorrt_head_masks_anchors_whose_box_is_empty():
    architecture = tiny_architecture()
    model = architecture.build()
    for variable in model.weights:
        if variable.path == "box_net_predict/bias":  # ty = 40: every box far below the input
            bias = np.zeros(variable.shape, np.float32)
            bias[0::4] = 40.0
            variable.assign(bias)
    outputs = onnx_graph.head_function(model, architecture)(tf.fill([1, 128, 128, 3], 100.0))
    logits = outputs[onnx_graph.CLASS_LOGITS].numpy()
    assert (logits == EMPTY_LOGIT).all()


def test_exported_runtimes_drop_boxes_that_clip_to_nothing():
    found = Detections(np.array([[10, 10, 40, 40], [70, 10, 90, 40]], np.float32),
                       np.array([0.9, 0.8], np.float32), np.array([1, 2]))
    kept = to_original(found, 1.0, (128, 64))  # (height, width): the second is in the padding
    assert len(kept) == 1 and kept.classes.tolist() == [1]


# --- 9. crafted encryption headers -------------------------------------------------------


def with_header(blob: bytes, **fields) -> bytes:
    """`blob` with header fields changed and (as a crafter would) a matching digest."""
    names = ("magic", "version", "log2_n", "r", "p", "salt", "check")
    values = dict(zip(names, crypto._FIELDS.unpack_from(blob)))
    values.update(fields)
    header = crypto._FIELDS.pack(*(values[n] for n in names))
    digest = crypto._digest(header) if values["version"] >= 2 else b""
    return header + digest + blob[crypto._HEADER_SIZES[crypto.VERSION]:]


# Costs the old range check let through (up to log2 N 22, r 32, p 16: 16 GiB per pass), kept
# small here so that the test stays cheap where it fails.
@pytest.mark.parametrize("fields", [{"log2_n": 16}, {"r": 9}, {"p": 2}, {"log2_n": 14}])
def test_costly_scrypt_parameters_are_refused_at_once(fields):
    blob = with_header(encrypt(b"payload" * 10, "a-long-enough-key"), **fields)
    started = time.perf_counter()
    with pytest.raises(DecryptionError, match="damaged .*key-derivation parameters"):
        decrypt(blob, "a-long-enough-key")
    assert time.perf_counter() - started < 0.05  # no scrypt run at all


def test_damaged_header_is_damaged_not_wrong_key():
    blob = bytearray(encrypt(b"payload" * 10, "a-long-enough-key"))
    for offset in (12, 20, 30):  # salt, salt, key check
        damaged = bytearray(blob)
        damaged[offset] ^= 0x04
        with pytest.raises(DecryptionError, match="damaged"):
            decrypt(bytes(damaged), "a-long-enough-key")
    with pytest.raises(DecryptionError, match="wrong key"):
        decrypt(bytes(blob), "another-long-key")


def test_version_1_files_and_short_keys_of_old_models_still_decrypt(monkeypatch):
    monkeypatch.setattr(crypto, "check_new_key", lambda key: None)
    v2 = encrypt(b"old model", "abc")
    fields = crypto._FIELDS.unpack_from(v2)
    v1_header = crypto._FIELDS.pack(fields[0], 1, *fields[2:])
    salt_key = crypto._derive("abc", fields[5], *fields[2:5])[0]
    nonce = v2[crypto._HEADER_SIZES[2]:crypto._HEADER_SIZES[2] + 12]
    v1 = v1_header + nonce + AESGCM(salt_key).encrypt(nonce, b"old model", v1_header)
    monkeypatch.undo()
    assert decrypt(v1, "abc") == b"old model" == decrypt(v2, "abc")
    with pytest.raises(DecryptionError, match="wrong key"):
        decrypt(v1, "abd")


# --- 12. short keys ----------------------------------------------------------------------


def test_new_models_need_a_minimum_key_length():
    with pytest.raises(EffdetError, match=f"at least {MIN_KEY_LENGTH} characters"):
        encrypt(b"model", "k" * (MIN_KEY_LENGTH - 1))
    with pytest.raises(EffdetError, match="too short"):
        resolve_key("abc", writes=True)
    assert resolve_key("abc") == "abc"  # reading an old model with it is fine
    assert decrypt(encrypt(b"model", "k" * MIN_KEY_LENGTH), "k" * MIN_KEY_LENGTH) == b"model"


def test_scrubber_replaces_whole_tokens_only():
    register_secret("qz")
    register_secret("qz-longer-secret")
    assert redact("tqz sqz qz, (qz) key=qz") == "tqz sqz ********, (********) key=********"
    assert redact("path /x/qz-longer-secret/y") == "path /x/********/y"
    assert redact("labels qzx") == "labels qzx"


# --- 13. file names escaping the image folder --------------------------------------------


@pytest.mark.parametrize("name", ["../outside.jpg", "/etc/passwd", "a/../../b.jpg", ".."])
def test_file_name_escaping_the_image_folder_is_an_error(tmp_path, name):
    path = tmp_path / "ann.json"
    path.write_text('{"images": [{"id": 1, "file_name": "%s", "width": 4, "height": 4}], '
                    '"annotations": [], "categories": [{"id": 1, "name": "c"}]}' % name)
    with pytest.raises(EffdetError, match=f"'{name}': file_name must be a path inside the image"):
        load_coco(path)


def test_file_name_inside_the_folder_with_dots_is_fine(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text('{"images": [{"id": 1, "file_name": "sub/../a..b.jpg", "width": 4, '
                    '"height": 4}], "annotations": [], "categories": []}')
    assert load_coco(path).images[0].file_name == "sub/../a..b.jpg"


# --- disk full ---------------------------------------------------------------------------


def test_disk_full_names_the_file_being_written(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "model.etlt"
    with pytest.raises(EffdetError, match=f"{target}: cannot write: No space left on device"):
        atomic.atomic_write_bytes(target, b"data")
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / ".model.epoch-3.tlt.tmp-999999999"
    mine = tmp_path / f".model.epoch-4.tlt.tmp-{os.getpid()}"
    other = tmp_path / ".notes.txt"
    for path in (dead, mine, other):
        path.write_bytes(b"")
    assert atomic.remove_stale_temps(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name])
