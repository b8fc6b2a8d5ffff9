"""nnunet_topkdice.monai: MONAI's DiceLoss/DiceCELoss interface with the TopK selection."""

from __future__ import annotations

import doctest
import itertools
import os
import subprocess
import sys
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from monai.data import create_test_image_2d
from monai.losses import DeepSupervisionLoss, DiceCELoss, DiceLoss
from monai.networks.nets import UNet
from monai.utils import DiceCEReduction, LossReduction

import nnunet_topkdice.monai as monai_dropin
from nnunet_topkdice.losses import tie_break_map
from nnunet_topkdice.monai import TopKDiceCELoss, TopKDiceLoss, topk_dice_loss

ACTIVATIONS = {"sigmoid": {"sigmoid": True}, "softmax": {"softmax": True}, "neither": {}}


def _case(shape=(3, 3, 5, 6), seed=0, ties=False):
    """Logits and labels (B, 1, *spatial); image 0 has no class 2, image 1 only class 0 (absent classes)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator) * 2
    if ties:  # few distinct values: many exact ties of the probabilities
        logits = logits.round()
    labels = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=generator)
    labels[0][labels[0] == 2] = 1
    if shape[0] > 1:
        labels[1] = 0
    return logits, labels


def _one_hot(labels, n_classes):
    return torch.nn.functional.one_hot(labels[:, 0].long(), n_classes).movedim(-1, 1).float()


def _inputs(activation, to_onehot_y, shape=(3, 3, 5, 6), seed=0, ties=False):
    """What a MONAI user passes: logits (or probabilities without an activation) and labels or one-hot."""
    logits, labels = _case(shape, seed, ties)
    prediction = logits if activation != "neither" else torch.softmax(logits, 1)
    return prediction, labels if to_onehot_y else _one_hot(labels, shape[1])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("batch", [False, True], ids=["per-image", "batch"])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("to_onehot_y", [False, True], ids=["onehot-target", "label-target"])
@pytest.mark.parametrize("include_background", [True, False], ids=["bg", "no-bg"])
def test_k100_equals_monai_dice_loss(include_background, to_onehot_y, activation, batch, reduction) -> None:
    # (3, 3, 5, 6) with absent classes in images 0 and 1, which MONAI averages (the paper would not)
    prediction, target = _inputs(activation, to_onehot_y)
    kwargs = dict(include_background=include_background, to_onehot_y=to_onehot_y, batch=batch, reduction=reduction)
    kwargs.update(ACTIVATIONS[activation])
    ours_input = prediction.clone().requires_grad_()
    monai_input = prediction.clone().requires_grad_()
    ours = TopKDiceLoss(k=100, **kwargs)(ours_input, target)
    expected = DiceLoss(squared_pred=True, **kwargs)(monai_input, target)
    assert ours.shape == expected.shape  # "none": (B, C', 1, 1), or (C', 1, 1) with batch=True
    torch.testing.assert_close(ours, expected, atol=2e-6, rtol=1e-5)
    ours.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(ours_input.grad, monai_input.grad, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sigmoid=True, include_background=False),  # one channel: MONAI warns and keeps it
        dict(softmax=True, to_onehot_y=True),  # one channel: both ignored with a warning
        dict(sigmoid=True, weight=2.5),  # one channel: MONAI ignores the weight
    ],
    ids=["no-bg", "softmax-onehot", "weight"],
)
def test_k100_single_channel_warnings_like_monai(kwargs) -> None:
    # (2, 1, 4, 4, 3): a 3D binary problem
    logits = torch.randn(2, 1, 4, 4, 3, generator=torch.Generator().manual_seed(3))
    target = (torch.rand(2, 1, 4, 4, 3, generator=torch.Generator().manual_seed(4)) > 0.5).float()
    with warnings.catch_warnings(record=True) as ours_warnings:
        warnings.simplefilter("always")
        ours = TopKDiceLoss(k=100, **kwargs)(logits, target)
    with warnings.catch_warnings(record=True) as monai_warnings:
        warnings.simplefilter("always")
        expected = DiceLoss(squared_pred=True, **kwargs)(logits, target)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)
    assert len(ours_warnings) == len(monai_warnings)
    for argument in ("softmax", "to_onehot_y", "include_background"):
        assert any(argument in str(w.message) for w in ours_warnings) == (
            any(argument in str(w.message) for w in monai_warnings)
        )


@pytest.mark.parametrize("include_background", [True, False], ids=["bg", "no-bg"])
@pytest.mark.parametrize("weight", [[0.5, 2.0, 1.0], 3.0], ids=["per-class", "scalar"])
def test_k100_class_weights_like_monai(weight, include_background) -> None:
    logits, labels = _case()
    weight = weight[1:] if isinstance(weight, list) and not include_background else weight
    kwargs = dict(softmax=True, to_onehot_y=True, include_background=include_background, weight=weight)
    ours = TopKDiceLoss(k=100, reduction="none", **kwargs)(logits, labels)
    expected = DiceLoss(squared_pred=True, reduction="none", **kwargs)(logits, labels)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)


def test_reduction_accepts_monai_enum_members() -> None:
    logits, labels = _case()
    as_enum = TopKDiceLoss(to_onehot_y=True, softmax=True, reduction=LossReduction.NONE)(logits, labels)
    torch.testing.assert_close(as_enum, TopKDiceLoss(to_onehot_y=True, softmax=True, reduction="none")(logits, labels))
    assert TopKDiceCELoss(reduction=DiceCEReduction.SUM).cross_entropy.reduction == "sum"


def test_class_weight_is_a_buffer_like_monai() -> None:
    loss = TopKDiceLoss(weight=[1.0, 2.0])
    assert torch.equal(loss.state_dict()["class_weight"], torch.tensor([1.0, 2.0]))
    assert loss.to(torch.float64).class_weight.dtype == torch.float64
    assert "class_weight" not in TopKDiceLoss().state_dict()


def reference_loss(probs, target, k, *, batch, reduction, smooth_nr=1e-5, smooth_dr=1e-5, tie_break_scale=1e-6):
    """Literal reference on activated probabilities and the target of the channels taking part, (B, C, *spatial):
    per image and channel, sort the voxels with target > 0 by (-(p + eps), index) in Python, drop the first
    floor((100 - k) / 100 * n) from target and prediction, then MONAI's squared Dice, all in float64."""
    n_batch, n_channels = probs.shape[:2]
    eps = tie_break_map(probs.shape[2:], scale=tie_break_scale).reshape(-1)
    drop = 1 - Fraction(k) / 100
    p = probs.detach().reshape(n_batch, n_channels, -1).double().clone()
    g = target.reshape(n_batch, n_channels, -1).double().clone()
    for b, c in itertools.product(range(n_batch), range(n_channels)):
        key = (probs[b, c].detach().reshape(-1).float() + eps).tolist()
        support = [i for i in range(p.shape[-1]) if g[b, c, i] > 0]
        n_dropped = int(drop * len(support))  # floor: non-negative
        for i in sorted(support, key=lambda i: (-key[i], i))[:n_dropped]:
            p[b, c, i] = g[b, c, i] = 0
    dims = (0, 2) if batch else (2,)
    intersection = (p * g).sum(dims)
    loss = 1 - (2 * intersection + smooth_nr) / ((p * p).sum(dims) + (g * g).sum(dims) + smooth_dr)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss.view(*loss.shape, *[1] * (probs.ndim - 2))


def _activated(prediction, activation):
    if activation == "sigmoid":
        return torch.sigmoid(prediction)
    if activation == "softmax":
        return torch.softmax(prediction, 1)
    return prediction


@pytest.mark.parametrize("k", [10, 37.5, 50, 90])
@pytest.mark.parametrize(
    "activation, include_background, batch, reduction",
    [
        ("softmax", True, False, "mean"),
        ("softmax", False, True, "none"),
        ("sigmoid", True, True, "sum"),
        ("sigmoid", False, False, "none"),
        ("neither", True, False, "none"),
        ("neither", False, True, "mean"),
    ],
    ids=["softmax-bg", "softmax-nobg-batch", "sigmoid-bg-batch", "sigmoid-nobg", "probs-bg", "probs-nobg-batch"],
)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_below_100_matches_literal_reference(k, activation, include_background, batch, reduction, ties) -> None:
    # (3, 3, 5, 6) labels with absent classes; rounded logits make many probabilities tie exactly
    prediction, labels = _inputs(activation, True, ties=ties)
    kwargs = dict(include_background=include_background, to_onehot_y=True, batch=batch, reduction=reduction)
    ours = TopKDiceLoss(k=k, **kwargs, **ACTIVATIONS[activation])(prediction, labels)
    first = 0 if include_background else 1
    probs = _activated(prediction, activation)[:, first:]
    expected = reference_loss(probs, _one_hot(labels, 3)[:, first:], k, batch=batch, reduction=reduction)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours.double(), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "shape, activation, batch",
    [((2, 3, 32, 32), "softmax", False), ((1, 3, 16, 16, 12), "sigmoid", True)],
    ids=["2d-histogram", "3d-histogram"],
)
def test_below_100_larger_inputs_match_literal_reference(shape, activation, batch) -> None:
    # enough voxels per (image, channel) for the selection's histogram path instead of one sort
    prediction, labels = _inputs(activation, True, shape=shape, seed=14)
    ours = TopKDiceLoss(k=30, to_onehot_y=True, batch=batch, reduction="none", **ACTIVATIONS[activation])
    expected = reference_loss(
        _activated(prediction, activation), _one_hot(labels, 3), 30, batch=batch, reduction="none"
    )
    torch.testing.assert_close(ours(prediction, labels).double(), expected, atol=1e-6, rtol=1e-5)


def test_below_100_ties_without_tie_break_map_go_to_the_lower_index() -> None:
    # (2, 2, 4, 4), every probability 0.5: only the voxel index orders the ties
    probs = torch.full((2, 2, 4, 4), 0.5)
    target = (torch.rand(2, 2, 4, 4, generator=torch.Generator().manual_seed(5)) > 0.4).float()
    for k in (25, 50, 80):
        ours = TopKDiceLoss(k=k, reduction="none", tie_break_scale=0)(probs, target)
        expected = reference_loss(probs, target, k, batch=False, reduction="none", tie_break_scale=0)
        torch.testing.assert_close(ours.double(), expected, atol=1e-6, rtol=1e-5)


def test_soft_targets_select_among_positive_voxels() -> None:
    # (2, 2, 5, 5) soft labels in [0, 1] with exact zeros; the support of a channel is where target > 0
    generator = torch.Generator().manual_seed(6)
    probs = torch.rand(2, 2, 5, 5, generator=generator)
    target = torch.rand(2, 2, 5, 5, generator=generator)
    target[target < 0.4] = 0
    ours = TopKDiceLoss(k=50, reduction="none")(probs, target)
    torch.testing.assert_close(ours.double(), reference_loss(probs, target, 50, batch=False, reduction="none"))


def test_negative_inputs_without_activation_are_ordered_as_given() -> None:
    # (1, 2, 4, 5) distinct values in [-4, 4) (other_act=tanh-like outputs, or raw scores): the order decides
    values = (torch.randperm(40, generator=torch.Generator().manual_seed(7)).float() / 5 - 4).view(1, 2, 4, 5)
    target = (torch.rand(1, 2, 4, 5, generator=torch.Generator().manual_seed(8)) > 0.3).float()
    ours = TopKDiceLoss(k=50, reduction="none")(values, target)
    torch.testing.assert_close(ours.double(), reference_loss(values, target, 50, batch=False, reduction="none"))
    tanh = TopKDiceLoss(k=50, reduction="none", other_act=torch.tanh)(values, target)
    expected = reference_loss(torch.tanh(values), target, 50, batch=False, reduction="none")
    torch.testing.assert_close(tanh.double(), expected)


def test_function_equals_module_and_gradcheck() -> None:
    # (2, 3, 3, 4) float64 at k=50: the selection is fixed near the point, the rest is smooth
    logits, labels = _case((2, 3, 3, 4), seed=9)
    logits = logits.double().requires_grad_()
    module = TopKDiceLoss(k=50, to_onehot_y=True, softmax=True, include_background=False)
    function = topk_dice_loss(logits, labels, 50, to_onehot_y=True, softmax=True, include_background=False)
    assert torch.equal(module(logits, labels), function)
    assert function.dtype == torch.float64
    numpy_k = TopKDiceLoss(k=np.int64(50), to_onehot_y=True, softmax=True, include_background=False)
    assert torch.equal(numpy_k(logits, labels), function)
    assert torch.autograd.gradcheck(lambda x: module(x, labels), (logits,), fast_mode=True)


def test_half_precision_input_is_summed_in_float32() -> None:
    # (2, 3, 8, 8) bfloat16 logits under CPU autocast (softmax may run in bfloat16): float32 result, close to float32
    logits, labels = _case((2, 3, 8, 8), seed=12)
    loss = TopKDiceLoss(k=50, to_onehot_y=True, softmax=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = loss(logits.bfloat16(), labels)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, loss(logits.bfloat16().float(), labels), atol=1e-3, rtol=0)


@pytest.mark.parametrize("k", [100, 50])
@pytest.mark.parametrize(
    "kwargs, target_kind",
    [
        (dict(to_onehot_y=True, softmax=True), "labels"),
        (dict(softmax=True, include_background=False, batch=True, reduction="sum"), "onehot"),
        (dict(to_onehot_y=True, softmax=True, weight=torch.tensor([0.2, 1.0, 2.0]), label_smoothing=0.1), "labels"),
        (dict(to_onehot_y=True, softmax=True, include_background=False, weight=torch.tensor([0.5, 1, 3.0])), "labels"),
        (dict(sigmoid=True), "binary"),
    ],
    ids=["labels", "onehot-sum", "weighted-smoothed", "weighted-nobg", "one-channel-bce"],
)
def test_dice_ce_is_lambda_weighted_sum_and_equals_monai_at_100(kwargs, target_kind, k) -> None:
    logits, labels = _case(seed=10)
    if target_kind == "onehot":
        target = _one_hot(labels, 3)
    elif target_kind == "binary":
        logits, target = logits[:, :1], (labels > 0).float()
    else:
        target = labels
    lambdas = dict(lambda_dice=0.7, lambda_ce=1.3)
    ours = TopKDiceCELoss(k=k, **kwargs, **lambdas)(logits, target)
    monai_loss = DiceCELoss(squared_pred=True, **kwargs, **lambdas)
    dice_kwargs = {key: value for key, value in kwargs.items() if key not in ("weight", "label_smoothing")}
    if "weight" in kwargs:
        weight = kwargs["weight"]
        dice_kwargs["weight"] = weight if kwargs.get("include_background", True) else weight[1:]
    dice = TopKDiceLoss(k=k, **dice_kwargs)(logits, target)
    monai_ce = monai_loss.ce(logits, target) if logits.shape[1] > 1 else monai_loss.bce(logits, target)
    torch.testing.assert_close(ours, 0.7 * dice + 1.3 * monai_ce)
    if k == 100:
        torch.testing.assert_close(ours, monai_loss(logits, target), atol=2e-6, rtol=1e-5)


def test_dice_ce_skips_a_term_with_zero_weight() -> None:
    logits, labels = _case(seed=11)
    only_ce = TopKDiceCELoss(k=50, to_onehot_y=True, softmax=True, lambda_dice=0)(logits, labels)
    torch.testing.assert_close(only_ce, torch.nn.functional.cross_entropy(logits, labels[:, 0]))
    only_dice = TopKDiceCELoss(k=50, to_onehot_y=True, softmax=True, lambda_ce=0)(logits, labels)
    torch.testing.assert_close(only_dice, TopKDiceLoss(k=50, to_onehot_y=True, softmax=True)(logits, labels))
    logits.requires_grad_()
    nothing = TopKDiceCELoss(k=50, to_onehot_y=True, lambda_dice=0, lambda_ce=0)(logits, labels)
    nothing.backward()
    assert nothing.item() == 0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_a_float64_weight_stays_float64_like_monai() -> None:
    """The weight was stored as float32, so float64 input failed where MONAI's DiceCELoss works."""
    logits, labels = _case(seed=12)
    logits = logits.double()
    weight = torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64)  # (3, 3, 5, 6): three classes
    ours = TopKDiceCELoss(k=100, to_onehot_y=True, softmax=True, weight=weight)
    value = ours(logits, labels)
    assert value.dtype == torch.float64 and ours.cross_entropy.weight.dtype == torch.float64
    monai = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, weight=weight)(logits, labels)
    torch.testing.assert_close(value, monai)  # k=100: MONAI's squared Dice
    assert TopKDiceCELoss(k=50, weight=[1, 2, 3]).cross_entropy.weight.dtype == torch.float32  # ints: float32


@pytest.mark.parametrize("k", [100, 50])
def test_works_inside_monai_deep_supervision_loss(k) -> None:
    # outputs (2, 3, 8, 8) and (2, 3, 4, 4); MONAI resizes the float label map (2, 1, 8, 8) for the second
    logits, labels = _case((2, 3, 8, 8), seed=13)
    outputs = [logits, torch.nn.functional.avg_pool2d(logits, 2)]
    kwargs = dict(to_onehot_y=True, softmax=True)
    ours = DeepSupervisionLoss(TopKDiceCELoss(k=k, **kwargs))(outputs, labels.float())
    small_labels = torch.nn.functional.interpolate(labels.float(), size=(4, 4), mode="nearest-exact")
    by_hand = TopKDiceCELoss(k=k, **kwargs)(outputs[0], labels) + 0.5 * TopKDiceCELoss(k=k, **kwargs)(
        outputs[1], small_labels
    )
    torch.testing.assert_close(ours, by_hand)
    if k == 100:
        expected = DeepSupervisionLoss(DiceCELoss(squared_pred=True, **kwargs))(outputs, labels.float())
        torch.testing.assert_close(ours, expected, atol=2e-6, rtol=1e-5)


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads, and intra-op threads on a busy CPU cost seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_a_monai_unet_on_synthetic_data_learns(one_thread) -> None:
    # 8 images (1, 32, 32) of noisy circles, labels {0, 1}; a 2-level UNet with 4 and 8 channels
    torch.manual_seed(0)
    random_state = np.random.RandomState(0)
    synthetic = dict(num_objs=4, rad_max=8, rad_min=3, noise_max=0.3, num_seg_classes=1, channel_dim=0)
    pairs = [create_test_image_2d(32, 32, **synthetic, random_state=random_state) for _ in range(8)]
    images = torch.as_tensor(np.stack([image for image, _ in pairs]), dtype=torch.float32)
    labels = torch.as_tensor(np.stack([label for _, label in pairs])).long()
    net = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=0)
    loss_function = TopKDiceCELoss(k=50, to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)

    def foreground_dice() -> float:
        with torch.no_grad():
            predicted = net(images).argmax(1, keepdim=True)
        overlap = ((predicted == 1) & (labels == 1)).sum().item()
        return 2 * overlap / ((predicted == 1).sum().item() + (labels == 1).sum().item())

    dice_before = foreground_dice()
    losses = []
    for _ in range(25):
        optimizer.zero_grad()
        loss = loss_function(net(images), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    dice_after = foreground_dice()
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert dice_after > max(0.7, dice_before + 0.2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=0), "k must be"),
        (dict(k=101), "k must be"),
        (dict(k=True), "k must be"),
        (dict(k="50"), "k must be"),
        (dict(k=np.float32(120)), "k must be"),
        (dict(sigmoid=True, softmax=True), "sigmoid, softmax and other_act"),
        (dict(softmax=True, other_act=torch.tanh), "sigmoid, softmax and other_act"),
        (dict(reduction="average"), "reduction"),
        (dict(smooth_nr=-1e-5), "smooth_nr"),
        (dict(smooth_dr=float("nan")), "smooth_dr"),
        (dict(weight=[1.0, -0.5]), "weight"),
        (dict(tie_break_scale=-1.0), "tie_break_scale"),
    ],
    ids=[
        "k0",
        "k101",
        "k-bool",
        "k-str",
        "k-numpy",
        "two-acts",
        "act-and-other",
        "reduction",
        "smooth_nr",
        "smooth_dr",
        "weight",
        "tie-break",
    ],
)
def test_bad_arguments_raise_in_init(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        TopKDiceLoss(**kwargs)
    with pytest.raises(ValueError, match=match):
        TopKDiceCELoss(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match, monai_match",
    [
        (dict(reduction="none"), "reduction", "Unsupported option 'none'"),
        (dict(lambda_dice=-1.0), "lambda_dice", "lambda_dice should be no less than 0"),
        (dict(lambda_ce=-0.1), "lambda_ce", "lambda_ce should be no less than 0"),
        (dict(label_smoothing=1.5), "label_smoothing", None),  # MONAI leaves it to torch's forward
    ],
    ids=["no-none", "lambda_dice", "lambda_ce", "label_smoothing"],
)
def test_bad_dice_ce_arguments_raise_in_init(kwargs, match, monai_match) -> None:
    with pytest.raises(ValueError, match=match):
        TopKDiceCELoss(**kwargs)
    if monai_match is not None:  # the same exception type as MONAI's
        with pytest.raises(ValueError, match=monai_match):
            DiceCELoss(**kwargs)


def test_other_act_not_callable_raises_type_error_like_monai() -> None:
    with pytest.raises(TypeError, match="other_act"):
        TopKDiceLoss(other_act="tanh")
    with pytest.raises(TypeError, match="other_act"):
        DiceLoss(other_act="tanh")


def test_bad_inputs_raise_like_monai() -> None:
    logits, labels = _case()
    with pytest.raises(AssertionError, match="shape"):  # labels without to_onehot_y: MONAI's AssertionError too
        TopKDiceLoss(softmax=True)(logits, labels)
    with pytest.raises(AssertionError, match="ground truth has different shape"):
        DiceLoss(softmax=True)(logits, labels)
    with pytest.raises(ValueError, match="input must be a float"):
        TopKDiceLoss()(labels.expand_as(logits), labels)
    with pytest.raises(ValueError, match="weight has 3 entries"):
        TopKDiceLoss(to_onehot_y=True, include_background=False, weight=[1.0, 1.0, 1.0])(logits, labels)
    with pytest.raises(ValueError, match="number of dimensions"):
        TopKDiceCELoss(to_onehot_y=True)(logits, labels[:, 0])
    with pytest.raises(ValueError, match="1 channel"):
        TopKDiceCELoss()(logits, _one_hot(labels, 3)[:, :2])


def test_docstring_examples_run() -> None:
    result = doctest.testmod(monai_dropin, raise_on_error=False, verbose=False)
    assert result.attempted >= 3 and result.failed == 0


def test_without_monai_the_package_imports_and_the_dropin_names_the_extra() -> None:
    script = (
        "import sys\n"
        "sys.modules['monai'] = None\n"  # makes `import monai` fail as if it were not installed
        "import nnunet_topkdice, nnunet_topkdice.losses\n"
        "try:\n"
        "    import nnunet_topkdice.monai\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    print('imported')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "the package's 'monai' extra: pip install '.[monai]'" in result.stdout
    assert "or pip install 'monai>=1.3'" in result.stdout
