"""The region loss as one autograd node (losses/region_fused.py): bit for bit the values and gradients of the
autograd reference (``BCE_and_TopKDice_loss(fused=False)``, in nnU-Net's ``DeepSupervisionWrapper`` with deep
supervision), what it saves, no value-dependent shapes (meta tensors), full-graph compile, argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from nnunet_topkdice.losses import BCE_and_TopKDice_loss
from nnunet_topkdice.losses import selection as selection_module
from nnunet_topkdice.losses.region_fused import RegionConfig, fused_bce_and_topk_dice
from nnunet_topkdice.trainers import RegionTopKDiceDeepSupervision

# nnU-Net's weights for 4 outputs: 1/2^i, the last one 0, normalised
WEIGHTS = tuple(np.array([1.0, 0.5, 0.25, 0.0]) / 1.75)
SHAPES = {"2d": (2, 3, 24, 20), "3d": (2, 3, 12, 16, 8)}


def region_pyramid(dim: str, n_outputs: int, seed: int = 0, ignore: bool = False, dtype=torch.float32):
    """Logits and nested BraTS-like regions (whole >= core >= enhancing) per output, halving the spatial size;
    with ``ignore`` nnU-Net's layout: the ignore mask as the target's last channel."""
    generator = torch.Generator().manual_seed(seed)
    batch, n_regions, *spatial = SHAPES[dim]
    logits, targets = [], []
    for s in range(n_outputs):
        size = [n // 2**s for n in spatial]
        logits.append((torch.randn((batch, n_regions, *size), generator=generator) * 3).to(dtype))
        labels = torch.randint(0, 4, (batch, *size), generator=generator)
        target = torch.stack([labels >= 1, labels >= 2, labels == 3][:n_regions], 1)
        if ignore:
            target = torch.cat([target, torch.rand((batch, 1, *size), generator=generator) > 0.7], 1)
        targets.append(target)
    return logits, targets


def value_and_grads(loss, logits, targets, deep_supervision: bool):
    leaves = [x.clone().requires_grad_(True) for x in logits]
    value = loss(leaves, targets) if deep_supervision else loss(leaves[0], targets[0])
    value.backward()
    return value, [x.grad for x in leaves]


def assert_bitwise_equal(ours, reference):
    assert ours[0].dtype == reference[0].dtype and torch.equal(ours[0], reference[0])
    for grad, expected in zip(ours[1], reference[1], strict=True):
        assert (grad is None) == (expected is None)
        if grad is not None:
            assert grad.dtype == expected.dtype and torch.equal(grad, expected)


@pytest.fixture(params=selection_module.PATHS)
def selection_path(request, monkeypatch):
    """Both selection paths (the CPU picks by size; CUDA and compile take the sort)."""
    monkeypatch.setattr(selection_module, "FORCE_PATH", request.param)
    return request.param


@pytest.mark.parametrize("dim", ["2d", "3d"])
@pytest.mark.parametrize("ignore", [False, True], ids=["plain", "ignore-label"])
@pytest.mark.parametrize("batch_dice", [False, True], ids=["sample-dice", "batch-dice"])
@pytest.mark.parametrize("k", [50, 100])
def test_one_output_is_bitwise_the_autograd_reference(dim, ignore, batch_dice, k, selection_path):
    logits, targets = region_pyramid(dim, 1, seed=1, ignore=ignore)
    kwargs = {"k": k, "batch_dice": batch_dice, "do_bg": True}
    fused = BCE_and_TopKDice_loss(kwargs, {}, use_ignore_label=ignore)
    reference = BCE_and_TopKDice_loss(kwargs, {}, use_ignore_label=ignore, fused=False)
    assert fused.fused and not reference.fused
    ours = value_and_grads(fused, logits, targets, False)
    assert_bitwise_equal(ours, value_and_grads(reference, logits, targets, False))
    assert ours[0].grad_fn.name() == "_RegionTopKDiceBCEBackward"  # one node


@pytest.mark.parametrize("dim", ["2d", "3d"])
@pytest.mark.parametrize("ignore", [False, True], ids=["plain", "ignore-label"])
@pytest.mark.parametrize("batch_dice", [False, True], ids=["sample-dice", "batch-dice"])
@pytest.mark.parametrize("k", [50, 100])
def test_deep_supervision_is_bitwise_nnunets_wrapper_around_the_reference(dim, ignore, batch_dice, k, selection_path):
    logits, targets = region_pyramid(dim, 4, seed=2, ignore=ignore)
    kwargs = {"k": k, "batch_dice": batch_dice, "do_bg": True}
    fused = RegionTopKDiceDeepSupervision(BCE_and_TopKDice_loss(kwargs, {}, use_ignore_label=ignore), WEIGHTS)
    reference = DeepSupervisionWrapper(BCE_and_TopKDice_loss(kwargs, {}, use_ignore_label=ignore, fused=False), WEIGHTS)
    ours = value_and_grads(fused, logits, targets, True)
    assert_bitwise_equal(ours, value_and_grads(reference, logits, targets, True))
    assert ours[1][-1] is None  # the output of weight 0 takes no part, as in nnU-Net's wrapper


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=["f64", "bf16", "f16"])
@pytest.mark.parametrize(
    ("weight_ce", "weight_dice", "do_bg"),
    [(1, 1, False), (0.3, 2.0, True), (0, 1, True), (1, 0, True)],
    ids=["no-first-region", "weighted", "dice-only", "bce-only"],
)
def test_dtypes_weights_and_do_bg_are_bitwise_the_reference(dtype, weight_ce, weight_dice, do_bg):
    logits, targets = region_pyramid("2d", 3, seed=3, ignore=True, dtype=dtype)
    kwargs = {"k": 30, "batch_dice": False, "do_bg": do_bg}
    weights = (0.5, 0.3, 0.2)

    def build(fused):
        return BCE_and_TopKDice_loss(kwargs, {}, weight_ce, weight_dice, use_ignore_label=True, fused=fused)

    ours = value_and_grads(RegionTopKDiceDeepSupervision(build(True), weights), logits, targets, True)
    assert_bitwise_equal(ours, value_and_grads(DeepSupervisionWrapper(build(False), weights), logits, targets, True))
    assert ours[1][0].dtype == dtype


def test_under_autocast_it_is_bitwise_the_reference_under_autocast():
    logits, targets = region_pyramid("3d", 2, seed=4)
    kwargs = {"k": 50, "batch_dice": True}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = value_and_grads(
            RegionTopKDiceDeepSupervision(BCE_and_TopKDice_loss(kwargs, {}), (0.7, 0.3)), logits, targets, True
        )
        reference = value_and_grads(
            DeepSupervisionWrapper(BCE_and_TopKDice_loss(kwargs, {}, fused=False), (0.7, 0.3)), logits, targets, True
        )
    assert ours[0].dtype == torch.float32
    assert_bitwise_equal(ours, reference)


def test_integer_and_float_targets_are_bitwise_the_reference():
    logits, targets = region_pyramid("2d", 1, seed=5)
    for dtype in (torch.uint8, torch.int16, torch.float32):
        target = [targets[0].to(dtype)]
        ours = value_and_grads(BCE_and_TopKDice_loss({"k": 50}, {}), logits, target, False)
        assert_bitwise_equal(
            ours, value_and_grads(BCE_and_TopKDice_loss({"k": 50}, {}, fused=False), logits, target, False)
        )


@pytest.mark.parametrize("ignore", [False, True], ids=["plain", "ignore-label"])
@pytest.mark.parametrize("fused", [True, False], ids=["node", "autograd"])
def test_strided_views_give_what_contiguous_tensors_give(ignore: bool, fused: bool):
    """Targets sliced from bigger maps (a pyramid built by slicing) or transposed, and transposed logits: these
    raised ``view size is not compatible`` where the softmax losses take them."""
    logits, targets = region_pyramid("2d", 2, seed=7, ignore=ignore)
    sliced = [t.repeat_interleave(2, -1)[..., ::2] for t in targets]  # the same values, every second column
    assert not sliced[0].is_contiguous() and all(map(torch.equal, sliced, targets))
    transposed = [x.transpose(2, 3).contiguous().transpose(2, 3) for x in logits]
    assert not transposed[0].is_contiguous()
    one = BCE_and_TopKDice_loss({"k": 50}, {}, use_ignore_label=ignore, fused=fused)
    ds = RegionTopKDiceDeepSupervision(one, [1.0, 0.5]) if fused else DeepSupervisionWrapper(one, [1.0, 0.5])
    for loss, deep_supervision in ((one, False), (ds, True)):
        expected = value_and_grads(loss, logits, targets, deep_supervision)
        strided = value_and_grads(loss, transposed, sliced, deep_supervision)
        torch.testing.assert_close(strided[0], expected[0], rtol=1e-6, atol=0)  # BCE's mean adds in memory order
        for grad, grad_expected in zip(strided[1], expected[1], strict=True):
            torch.testing.assert_close(grad, grad_expected, rtol=0, atol=0)


def test_the_node_saves_the_sigmoid_and_boolean_maps_only():
    logits, targets = region_pyramid("2d", 3, seed=6, ignore=True)
    loss = RegionTopKDiceDeepSupervision(BCE_and_TopKDice_loss({"k": 50}, {}, use_ignore_label=True), (0.5, 0.3, 0.2))
    value = loss([x.requires_grad_(True) for x in logits], targets)
    saved = [t for t in value.grad_fn.saved_tensors if t is not None]
    floats = [t for t in saved if t.is_floating_point()]
    # one P per output (B, R, *spatial); everything else (targets, masks, regions, exclusions) is bool
    assert [f.shape for f in floats] == [x.shape for x in logits]
    assert torch.equal(floats[0], torch.sigmoid(logits[0].detach()))
    assert all(t.dtype == torch.bool for t in saved if not t.is_floating_point())


def test_bce_weights_take_the_autograd_path():
    loss = BCE_and_TopKDice_loss({"k": 50}, {"pos_weight": torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)})
    assert not loss.fused
    with pytest.raises(ValueError, match="needs a fused BCE_and_TopKDice_loss"):
        RegionTopKDiceDeepSupervision(loss, WEIGHTS)


@pytest.mark.parametrize("ignore", [False, True], ids=["plain", "ignore-label"])
def test_gpu_path_has_only_fixed_shapes(ignore):
    # meta tensors carry no data: a value-dependent shape (nonzero, boolean indexing, .item()) fails on them
    loss = RegionTopKDiceDeepSupervision(
        BCE_and_TopKDice_loss({"k": 50, "batch_dice": True}, {}, use_ignore_label=ignore), WEIGHTS
    )
    sizes = [(6, 8, 4), (3, 4, 2), (1, 2, 1), (1, 1, 1)]
    logits = [torch.empty(2, 3, *size, device="meta", requires_grad=True) for size in sizes]
    targets = [torch.empty(2, 3 + ignore, *size, dtype=torch.bool, device="meta") for size in sizes]
    value = loss(logits, targets)
    value.backward()
    assert value.shape == () and [x.grad.shape for x in logits[:3]] == [x.shape for x in logits[:3]]
    plain = BCE_and_TopKDice_loss({"k": 50}, {}, use_ignore_label=ignore)(logits[0], targets[0])
    plain.backward()
    assert plain.shape == ()


@pytest.mark.slow
def test_full_graph_compile_equals_eager():
    from torch._dynamo.testing import CompileCounterWithBackend

    logits, targets = region_pyramid("2d", 4, seed=7, ignore=True)
    loss = RegionTopKDiceDeepSupervision(
        BCE_and_TopKDice_loss({"k": 50, "batch_dice": True}, {}, use_ignore_label=True), WEIGHTS
    )
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(loss, fullgraph=True, backend=counter)
    eager = value_and_grads(loss, logits, targets, True)
    # the same selection (compile takes the sort path; the eager CPU may take the histogram: the same result)
    ours = value_and_grads(compiled, logits, targets, True)
    assert_bitwise_equal(ours, eager)
    assert counter.frame_count == 1


def test_bad_lists_are_refused_with_the_counts():
    logits, targets = region_pyramid("2d", 4)
    loss = RegionTopKDiceDeepSupervision(BCE_and_TopKDice_loss({"k": 50}, {}), WEIGHTS)
    with pytest.raises(ValueError, match="4 weight factors need as many outputs and targets, got 3 and 4"):
        loss(logits[:3], targets)
    with pytest.raises(ValueError, match="at least one weight factor must be non-zero"):
        RegionTopKDiceDeepSupervision(BCE_and_TopKDice_loss({"k": 50}, {}), (0.0, 0.0))
    with pytest.raises(ValueError, match="the same batch and regions"):
        loss([logits[0], logits[1][:1], logits[2], logits[3]], targets)
    with pytest.raises(ValueError, match=r"target must have shape \(B, R, \*spatial\)"):
        loss(logits, [targets[0][:, :2], *targets[1:]])
    single = BCE_and_TopKDice_loss({"k": 50}, {})
    outputs = [single.region_output(x, t) for x, t in zip(logits[:2], targets[:2], strict=True)]
    with pytest.raises(ValueError, match="2 outputs need as many output weights, got 1"):
        fused_bce_and_topk_dice(outputs, RegionConfig(single.dc, 1.0, 1.0))
    with pytest.raises(ValueError, match="0 outputs need as many output weights, got 1"):
        fused_bce_and_topk_dice([], RegionConfig(single.dc, 1.0, 1.0))


def test_a_second_derivative_is_refused_not_silently_wrong():
    """The node's backward is closed form: under create_graph=True its gradient had no graph, so a gradient
    penalty added nothing. The autograd path it points to differentiates twice."""
    logits, targets = region_pyramid("2d", 1, seed=9)
    x = logits[0].double().requires_grad_(True)
    message = r"The fused region loss has a closed-form first derivative only: create_graph=True .* fused=False\)"
    with pytest.raises(RuntimeError, match=message):
        torch.autograd.grad(BCE_and_TopKDice_loss({"k": 50}, {})(x, targets[0]), x, create_graph=True)
    unfused = BCE_and_TopKDice_loss({"k": 50}, {}, fused=False)
    (grad,) = torch.autograd.grad(unfused(x, targets[0]), x, create_graph=True)
    assert grad.requires_grad
    (plain,) = torch.autograd.grad(BCE_and_TopKDice_loss({"k": 50}, {})(x, targets[0]), x)  # once: as before
    torch.testing.assert_close(plain, grad.detach(), rtol=0, atol=0)
