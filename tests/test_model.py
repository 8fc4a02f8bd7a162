import keras
import numpy as np
import pytest
import tensorflow as tf

from effdet.errors import EffdetError
from effdet.model import build_efficientdet, get_variant
from effdet.model.complexity import trainable_params
from effdet.model.efficientnet import round_filters, round_repeats
from effdet.spec.config import ModelConfig

TINY = dict(fpn_num_filters=16, fpn_cell_repeats=1, box_class_repeats=1, width_coefficient=0.25,
            depth_coefficient=0.25)


def tiny_model(image_size=(128, 128), num_classes=4, config=None, **changes):
    config = config or ModelConfig()
    variant = get_variant(config.model_name).replace(**{**TINY, **changes})
    return build_efficientdet(config, num_classes, image_size, variant=variant)


def test_d0_trainable_params_equal_reference_exactly():
    model = build_efficientdet(ModelConfig(), 90, (512, 512))
    assert trainable_params(model) == 3_880_067


@pytest.mark.parametrize("name,millions", [("efficientdet-d1", 6.6), ("efficientdet_d2", 8.1),
                                           ("efficientdet-d3", 12.0)])
def test_d1_to_d3_params_round_to_paper(name, millions):
    size = get_variant(name).image_size
    model = build_efficientdet(ModelConfig(model_name=name), 90, (size, size))
    assert round(trainable_params(model) / 1e6, 1) == millions


# Parameter counts do not depend on the input size, so the large variants are built at 256x256
# (divisible by 2**8, the stride of D7x's extra P8 level) to keep these tests fast.
# D4-D7 equal google/automl's counts exactly (its README: 20.7M, 33.7M, 51.9M, 51.9M). For D7x the
# README says 77.0M, but automl's code (backbone efficientnet-b7, P3-P8, no 1x1 conv where widths
# already match) gives 77,147,166 = 77.1M; keras_cv_attention_models' D7x, which loads automl's
# converted checkpoint, has the same count.
@pytest.mark.parametrize("name,count", [("efficientdet-d4", 20_723_675),
                                        ("efficientdet-d5", 33_653_315),
                                        ("efficientdet-d6", 51_871_782),
                                        ("efficientdet-d7", 51_871_782),
                                        ("efficientdet-d7x", 77_147_166)])
def test_d4_to_d7x_trainable_params_equal_reference(name, count):
    variant = get_variant(name)
    config = ModelConfig(model_name=name, anchor_scale=variant.anchor_scale,
                         max_level=variant.max_level)
    model = build_efficientdet(config, 90, (256, 256))
    assert trainable_params(model) == count


def test_compound_scaling_rules():
    assert [round_filters(f, 1.8) for f in (32, 16, 24, 40, 80, 112, 192, 320)] == \
        [56, 32, 40, 72, 144, 200, 344, 576]
    assert [round_repeats(r, 3.1) for r in (1, 2, 2, 3, 3, 4, 1)] == [4, 7, 7, 10, 10, 13, 4]


@pytest.mark.parametrize("image_size", [(512, 512), (384, 640), (416, 416)])
def test_forward_gives_five_levels_of_the_right_shapes(image_size):
    model = tiny_model(image_size)
    class_out, box_out = model(tf.zeros([1, *image_size, 3]), training=False)
    h, w = image_size
    expected = [(-(-h // 2 ** lv), -(-w // 2 ** lv)) for lv in range(3, 8)]
    assert [tuple(c.shape[1:3]) for c in class_out] == expected
    assert [tuple(b.shape[1:3]) for b in box_out] == expected
    assert all(c.shape[-1] == 9 * 4 for c in class_out) and all(b.shape[-1] == 36 for b in box_out)


def test_layer_names_are_unique_and_class_bias_is_the_prior():
    model = tiny_model()
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    for name in ("stem_conv", "block2a_expand_conv", "resample_p6_conv", "fpn_cell0_node0_conv",
                 "fpn_cell0_node0_fusion", "class_net_conv0_bn_p7", "box_net_predict", "class_p3"):
        assert name in names
    bias = model.get_layer("class_net_predict").bias.numpy()
    np.testing.assert_allclose(bias, -np.log((1 - 0.01) / 0.01), rtol=1e-6)


def test_width_overrides_change_layer_channels():
    base = ModelConfig()
    variant = get_variant("efficientdet-d0").replace(**TINY)
    widths = {"block1a_project_conv": 8, "block2a_expand_conv": 24, "class_net_conv0": 12}
    model = build_efficientdet(base, 4, (128, 128), variant=variant, widths=widths)
    for name, width in widths.items():
        assert model.get_layer(name).output.shape[-1] == width
    model(tf.zeros([1, 128, 128, 3]))
    # The layers are those of the unpruned network: a narrower BiFPN node does not grow a 1x1
    # conv on its edges; its width must match the nodes it is fused with.
    with pytest.raises(EffdetError, match="must agree within a BiFPN"):
        build_efficientdet(base, 4, (128, 128), variant=variant,
                           widths={"fpn_cell0_node0_conv": 8})
    with pytest.raises(EffdetError, match="no_such_layer"):
        build_efficientdet(base, 4, (128, 128), variant=variant, widths={"no_such_layer": 3})


def test_user_errors_raise_effdet_error():
    with pytest.raises(EffdetError, match="unknown model_name"):
        build_efficientdet(ModelConfig(model_name="efficientdet-d9"), 4, (512, 512))
    with pytest.raises(EffdetError, match="multiples of 32"):
        tiny_model((100, 128))
    with pytest.raises(EffdetError, match="freeze_blocks"):
        tiny_model(config=ModelConfig(freeze_blocks=(9,)))


def test_freeze_blocks_freezes_the_convolution_kernels_of_taos_blocks_only():
    model = tiny_model(config=ModelConfig(freeze_blocks=(0, 1, 2, 8)))
    convs = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
    frozen_blocks = ("stem_", "block1", "block2")
    for layer in model.layers:
        if isinstance(layer, convs) and layer.name.startswith(frozen_blocks):
            assert not layer.trainable, layer.name
        elif isinstance(layer, keras.layers.BatchNormalization):
            assert layer.trainable and layer.trainable_weights, layer.name  # TAO: BN keeps training
    assert not model.get_layer("block1a_se_expand").trainable
    assert model.get_layer("block3a_expand_conv").trainable


def test_freeze_bn_freezes_backbone_statistics_only_and_gamma_beta_train():
    model = tiny_model(config=ModelConfig(freeze_bn=True))
    backbone, neck = model.get_layer("stem_bn"), model.get_layer("class_net_conv0_bn_p3")
    assert backbone.trainable and {w.name for w in backbone.trainable_weights} == {"gamma", "beta"}
    before = {bn.name: bn.moving_mean.numpy().copy() for bn in (backbone, neck)}
    images = tf.random.normal([2, 128, 128, 3])
    with tf.GradientTape() as tape:
        outputs = model(images, training=True)
        loss = tf.add_n([tf.reduce_sum(o) for o in outputs[0]])
    np.testing.assert_array_equal(backbone.moving_mean.numpy(), before["stem_bn"])
    assert not np.array_equal(neck.moving_mean.numpy(), before["class_net_conv0_bn_p3"])
    assert tape.gradient(loss, backbone.gamma) is not None
    # The moving statistics normalise even in training mode.
    probe = keras.Model(model.input, backbone.output)
    np.testing.assert_allclose(probe(images, training=True).numpy(),
                               probe(images, training=False).numpy(), atol=1e-6)


def test_keras_save_load_round_trip_with_stochastic_depth(tmp_path):
    model = tiny_model((128, 160), survival_prob=0.8, depth_coefficient=0.5)
    assert any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)
    images = tf.random.normal([2, 128, 160, 3])
    model(images, training=True)  # stochastic depth path runs
    path = tmp_path / "tiny.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    for a, b in zip(model(images, training=False)[0], restored(images, training=False)[0]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
