"""The options object of the TopK-Dice losses, the loss API's errors, and the loss pinned bit for bit."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch

from nnunet_topkdice.losses import (
    BCE_and_TopKDice_loss,
    CE_and_TopKDice_loss,
    SigmoidTopKDiceLoss,
    TopKDiceLoss,
    TopKDiceOptions,
    ce_and_topk_dice_loss,
    deep_supervised_ce_and_topk_dice_loss,
    sigmoid_topk_dice_loss,
    topk_dice_loss,
    topk_exclusion_mask,
)
from nnunet_topkdice.losses import topk_dice as topk_module
from nnunet_topkdice.monai import TopKDiceLoss as MonaiTopKDiceLoss
from nnunet_topkdice.trainers import TopKDiceDeepSupervision

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# every way a TopK-Dice loss is built from a k: the one rule must hold for each
BUILDERS = {
    "options": lambda k: TopKDiceOptions(k=k),
    "module": lambda k: TopKDiceLoss(k=k),
    "sigmoid": lambda k: SigmoidTopKDiceLoss(k=k),
    "compound": lambda k: CE_and_TopKDice_loss({"k": k}, {}),
    "region-compound": lambda k: BCE_and_TopKDice_loss({"k": k}, {}),
    "monai": lambda k: MonaiTopKDiceLoss(k=k),
}


# --- the options object ---------------------------------------------------------------------------------


def test_options_are_frozen_keyword_only_and_normalised():
    options = TopKDiceOptions(
        k=np.float32(30), do_bg=np.bool_(True), smooth=np.float64(1e-3), tie_break_seed=np.int64(3)
    )
    assert (options.k, options.do_bg, options.smooth, options.tie_break_seed) == (30.0, True, 1e-3, 3)
    assert [type(options.k), type(options.do_bg), type(options.smooth), type(options.tie_break_seed)] == [
        float,
        bool,
        float,
        int,
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.k = 50.0
    with pytest.raises(TypeError, match="positional"):
        TopKDiceOptions(50.0)
    # the public fields, in order, and their defaults
    assert [(f.name, f.default) for f in dataclasses.fields(TopKDiceOptions)][:5] == [
        ("k", 50.0),
        ("do_bg", False),
        ("batch_dice", False),
        ("smooth", 1e-5),
        ("ddp", False),
    ]
    assert TopKDiceOptions(k=30) == TopKDiceOptions(k=30.0)  # hashable and comparable: a plain value
    assert hash(TopKDiceOptions(k=30)) == hash(TopKDiceOptions(k=30.0))


@pytest.mark.parametrize(
    ("k", "expected"),
    [(30, 30.0), (12.5, 12.5), (np.float32(30), 30.0), (np.int64(30), 30.0), (torch.tensor(30.0), 30.0)],
    ids=["int", "float", "np.float32", "np.int64", "0-d-tensor"],
)
@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
def test_every_loss_accepts_the_same_k(build, k, expected):
    built = build(k)
    options = {
        TopKDiceOptions: lambda b: b,
        CE_and_TopKDice_loss: lambda b: b.dc.options,
        BCE_and_TopKDice_loss: lambda b: b.dc.options,
        MonaiTopKDiceLoss: lambda b: b.config.selection,
    }.get(type(built), lambda b: b.options)(built)
    assert type(options.k) is float and options.k == expected  # read once: forward never touches the tensor


@pytest.mark.parametrize(
    ("k", "shown"),
    [
        (0, "got 0"),
        (-5, "got -5"),
        (100.5, "got 100.5"),
        (float("nan"), "got nan"),
        (True, "got True"),
        (np.bool_(True), "got np.True_"),
        ("50", "got '50'"),
        (np.float32(120), r"got np.float32\(120.0\)"),
        (torch.tensor([50.0]), r"got tensor\(\[50.\]\)"),
        (torch.tensor(True), r"got tensor\(True\)"),
    ],
    ids=[
        "zero",
        "negative",
        "above-100",
        "nan",
        "bool",
        "np.bool",
        "string",
        "np-above-100",
        "1-d-tensor",
        "bool-tensor",
    ],
)
@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
def test_every_loss_refuses_the_same_k_quoting_it(build, k, shown):
    with pytest.raises(ValueError, match=r"k must be a number in \(0, 100\].*" + shown):
        build(k)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"do_bg": "False"}, "do_bg must be a bool, got 'False'"),
        ({"batch_dice": 2}, "batch_dice must be a bool, got 2"),
        ({"ddp": None}, "ddp must be a bool, got None"),
        ({"smooth": float("inf")}, "smooth must be a finite number >= 0, got inf"),
        ({"smooth": -1e-5}, "smooth must be a finite number >= 0, got -1e-05"),
        ({"tie_break_scale": float("nan")}, "tie_break_scale must be a finite number >= 0, got nan"),
        ({"tie_break_seed": 1.5}, "tie_break_seed must be an integer, got 1.5"),
        ({"validate": "yes"}, "validate must be a bool, got 'yes'"),
    ],
    ids=[
        "do_bg-str",
        "batch_dice-2",
        "ddp-none",
        "smooth-inf",
        "smooth-negative",
        "scale-nan",
        "seed-float",
        "validate",
    ],
)
def test_bad_options_raise_naming_the_option_and_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TopKDiceOptions(**kwargs)
    with pytest.raises(ValueError, match=match):
        CE_and_TopKDice_loss(kwargs, {})


def test_a_numpy_or_tensor_k_gives_the_same_loss(random_case):
    logits, target = random_case((2, 3, 12, 10), seed=3)
    expected = TopKDiceLoss(k=30)(logits, target)
    for k in (np.float32(30), np.int64(30), torch.tensor(30)):
        assert torch.equal(TopKDiceLoss(k=k)(logits, target), expected)
        assert torch.equal(topk_dice_loss(logits, target, options=TopKDiceOptions(k=k)), expected)


def test_modules_read_their_options():
    loss = TopKDiceLoss(k=30, batch_dice=True, tie_break_seed=4)
    assert loss.options == TopKDiceOptions(k=30, batch_dice=True, tie_break_seed=4)
    assert repr(loss) == "TopKDiceLoss(k=30.0, do_bg=False, batch_dice=True, smooth=1e-05, ddp=False)"
    assert (
        repr(SigmoidTopKDiceLoss(k=70))
        == "SigmoidTopKDiceLoss(k=70.0, do_bg=True, batch_dice=False, smooth=1e-05, ddp=False)"
    )
    # nnU-Net's Dice losses expose their settings as attributes: so do these, read-only
    assert (loss.k, loss.do_bg, loss.batch_dice, loss.smooth, loss.ddp, loss.tie_break_seed) == (
        30.0,
        False,
        True,
        1e-5,
        False,
        4,
    )
    with pytest.raises(AttributeError):
        loss.k = 10.0
    compound = CE_and_TopKDice_loss({"k": 30, "batch_dice": True}, {}, weight_ce=0.5)
    assert compound.dc.options == TopKDiceOptions(k=30, batch_dice=True)
    assert BCE_and_TopKDice_loss({"k": 30}, {}).dc.options == TopKDiceOptions(k=30, do_bg=True)  # region default


def test_the_sigmoid_functional_defaults_to_do_bg(random_case):
    logits = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    regions = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(6)) > 0.5
    assert torch.equal(sigmoid_topk_dice_loss(logits, regions), SigmoidTopKDiceLoss()(logits, regions))
    assert torch.equal(
        sigmoid_topk_dice_loss(logits, regions, options=TopKDiceOptions(do_bg=True)),
        SigmoidTopKDiceLoss()(logits, regions),
    )


# --- the compound's dc is the module its forward calls ----------------------------------------------------


def test_compound_forward_calls_its_dc_with_the_cross_entropy_terms(random_case):
    logits, target = random_case((2, 3, 12, 10), seed=7)
    target[:, :, :2] = 3  # ignore label
    loss = CE_and_TopKDice_loss({"k": 30}, {"weight": [1.0, 2.0, 0.5]}, weight_ce=0.7, weight_dice=1.3, ignore_label=3)
    calls = []

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):
            calls.append(kwargs)
            return self.inner(*args, **kwargs)

    expected = loss(logits, target)
    loss.dc = Spy(loss.dc)
    assert torch.equal(loss(logits, target), expected)
    assert len(calls) == 1 and calls[0]["weight_ce"] == 0.7 and calls[0]["weight_dice"] == 1.3
    expected_fn = ce_and_topk_dice_loss(
        logits,
        target,
        loss_mask=target != 3,
        options=TopKDiceOptions(k=30),
        ce_weight=torch.tensor([1.0, 2.0, 0.5]),
        weight_ce=0.7,
        weight_dice=1.3,
    )
    assert torch.equal(expected, expected_fn)


def test_compiling_dc_as_nnunet_does_compiles_the_fused_loss(random_case):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    logits, target = random_case((2, 3, 16, 12), seed=8)
    loss = CE_and_TopKDice_loss({"k": 50, "batch_dice": True}, {})
    eager = loss(logits, target)
    counter = CompileCounterWithBackend("eager")
    loss.dc = torch.compile(loss.dc, backend=counter)  # nnUNetTrainer._build_loss does exactly this
    compiled = loss(logits, target)
    assert counter.frame_count == 1  # the compound's forward went through the compiled dc
    assert compiled.item() == pytest.approx(eager.item(), abs=1e-6)


# --- the loss API's errors (issue 24.5) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "shown"), [(4, "label 4"), (-1, "label -1"), (100, "label 100")], ids=["C", "minus-1", "100"]
)
def test_a_label_outside_the_classes_raises_naming_it(random_case, bad, shown):
    logits, target = random_case((2, 4, 8, 6), seed=9)
    target[1, 0, 3, 2] = bad
    match = shown + r", outside \[0, 4\)"
    with pytest.raises(ValueError, match=match):
        TopKDiceLoss()(logits, target)
    with pytest.raises(ValueError, match=match):
        CE_and_TopKDice_loss({}, {})(logits, target)
    with pytest.raises(ValueError, match=match):
        topk_exclusion_mask(logits.softmax(1), target)
    with pytest.raises(ValueError, match=match):
        deep_supervised_ce_and_topk_dice_loss(
            [logits, logits[..., ::2, ::2]], [target, target[..., ::2, ::2]], [0.5, 0.5]
        )


def test_a_masked_or_ignored_label_outside_the_classes_is_fine(random_case):
    logits, target = random_case((2, 4, 8, 6), seed=9)
    target[:, :, :2] = -1
    mask = target != -1
    assert torch.equal(TopKDiceLoss()(logits, target, mask), TopKDiceLoss()(logits, torch.where(mask, target, 0), mask))
    target[:, :, :2] = 4
    assert torch.isfinite(CE_and_TopKDice_loss({}, {}, ignore_label=4)(logits, target))


def test_labels_are_checked_only_where_it_costs_no_synchronisation():
    # meta tensors have no data: a check that read the labels would fail on them
    labels = torch.empty(2, 40, dtype=torch.long, device="meta")
    topk_module._check_labels(labels, 3, validate=False)  # an accelerator without validate: not read
    with pytest.raises((NotImplementedError, RuntimeError)):
        topk_module._check_labels(labels, 3, validate=True)  # asked for: read


@pytest.mark.parametrize(
    "shape", [(0, 3, 8, 8), (2, 3, 0, 8), (2, 3, 8, 8, 0)], ids=["no-image", "no-voxel", "no-slice"]
)
def test_an_empty_batch_raises(shape):
    logits, target = torch.randn(shape), torch.zeros((shape[0], 1, *shape[2:]), dtype=torch.long)
    match = r"logits must hold at least one image, (class|region) and voxel, got shape " + str(shape).replace(
        "(", r"\("
    ).replace(")", r"\)")
    with pytest.raises(ValueError, match=match):
        TopKDiceLoss()(logits, target)
    with pytest.raises(ValueError, match=match):
        CE_and_TopKDice_loss({}, {})(logits, target)
    with pytest.raises(ValueError, match=match):
        SigmoidTopKDiceLoss()(logits, torch.zeros(shape, dtype=torch.bool))
    with pytest.raises(ValueError, match="input must hold at least one image"):
        MonaiTopKDiceLoss(softmax=True)(logits, torch.zeros(shape))


@needs_cuda
def test_cuda_labels_are_checked_with_validate(random_case, no_host_sync):
    logits, target = random_case((2, 4, 8, 6), seed=9)
    target[1, 0, 3, 2] = 4
    with pytest.raises(ValueError, match=r"label 4, outside \[0, 4\)"):
        TopKDiceLoss(validate=True)(logits.cuda(), target.cuda())


# --- the loss, bit for bit, as it was before the options object --------------------------------------------

# Computed at commit 2288f1d (before TopKDiceOptions) on this project's CPU (AMD EPYC, AVX512, torch 2.14):
# value.hex() and the first 32 hex digits of sha256 over each gradient's bytes. Sums vectorise differently
# on other CPU capabilities, so elsewhere the test is skipped; the comparisons with the reference
# implementation in test_losses_topk_dice.py hold everywhere.
PINNED_ON = ("AVX512", "2.14")
PINNED = {
    "dice_k30": ("0x1.fef6e20000000p-1", ["3190810c2a0354d688eaa5bbd72b5390"]),
    "dice_bg_batch": ("0x1.f821b40000000p-1", ["80dc0437b441c0e9b60b10d49dd42ee8"]),
    "dice_small3d": ("0x1.9fc2fc0000000p-1", ["eb9e7931e0578956cb8fe46019d1a9ce"]),
    "dice_k100": ("0x1.2c7d640000000p-1", ["bb8491bc8b1e9a4ccd7016f09961f13b"]),
    "compound": ("0x1.121c0c0000000p+2", ["7c27d59bc5a76e642f0e941a5344be4f"]),
    "compound_ignore_weight": ("0x1.c8be520000000p+1", ["f40b06034e4b593f333632fe18002a29"]),
    "compound_dice_only": ("0x1.fff6000000000p-1", ["c35e31df20662a0c426ce8e63b0f8e31"]),
    "deep_supervision": (
        "0x1.13d36c0000000p+2",
        ["779b9f9be32053a6824bbea658443acf", "7e61d9a73fd02fda91f4ddd0db1e0c60", None],
    ),
    "sigmoid": ("0x1.d543700000000p-1", ["57bed816f58bedb0c13fe82e17003ec9"]),
    "sigmoid_nobg_batch": ("0x1.9a24200000000p-1", ["6017b05ce68349ece7d831eca4ce2118"]),
    "bce_compound_ignore": ("0x1.009cc60000000p+2", ["9a60c82e5a11a9976fddbb904180fe98"]),
    "monai": ("0x1.feee220000000p-1", ["49450229f949affbae6a51526f9d0c06"]),
    "monai_ce": ("0x1.114bc00000000p+2", ["430c65170ab1c044b1754807ca2d1763"]),
}


def _pinned_inputs():
    """Fixed seeded inputs, each below torch's parallel grain size (32768 values): the sums do not depend
    on the number of threads."""
    g = torch.Generator().manual_seed(2024)
    big = torch.randn(2, 4, 40, 36, generator=g) * 3  # 1440 voxels per image and class
    labels = torch.randint(0, 4, (2, 1, 40, 36), generator=g)
    small = torch.randn(2, 3, 9, 7, 5, generator=g) * 2
    small_labels = torch.randint(0, 3, (2, 1, 9, 7, 5), generator=g)
    ignored = labels.clone()
    ignored[:, :, :5] = 4
    region_logits = torch.randn(2, 3, 24, 20, generator=g) * 2
    regions = torch.rand(2, 3, 24, 20, generator=g) > 0.6
    regions_ignore = torch.cat([regions, torch.rand(2, 1, 24, 20, generator=g) > 0.8], 1)
    pyramid = [big, big[:, :, ::2, ::2].contiguous(), big[:, :, ::4, ::4].contiguous()]
    ignored_pyramid = [ignored, ignored[:, :, ::2, ::2].contiguous(), ignored[:, :, ::4, ::4].contiguous()]
    return {
        "dice_k30": (TopKDiceLoss(k=30), big, labels),
        "dice_bg_batch": (TopKDiceLoss(k=50, do_bg=True, batch_dice=True, smooth=1e-3), big, labels),
        "dice_small3d": (TopKDiceLoss(k=70), small, small_labels),
        "dice_k100": (TopKDiceLoss(k=100), small, small_labels),
        "compound": (CE_and_TopKDice_loss({"k": 30, "batch_dice": True}, {}), big, labels),
        "compound_ignore_weight": (
            CE_and_TopKDice_loss(
                {"k": 50}, {"weight": [1.0, 2.0, 0.5, 1.5]}, weight_ce=0.7, weight_dice=1.3, ignore_label=4
            ),
            big,
            ignored,
        ),
        "compound_dice_only": (CE_and_TopKDice_loss({"k": 10}, {}, weight_ce=0), big, labels),
        "deep_supervision": (
            TopKDiceDeepSupervision(
                CE_and_TopKDice_loss({"k": 50, "batch_dice": True}, {}, ignore_label=4), [0.6, 0.4, 0.0]
            ),
            pyramid,
            ignored_pyramid,
        ),
        "sigmoid": (SigmoidTopKDiceLoss(k=30), region_logits, regions),
        "sigmoid_nobg_batch": (SigmoidTopKDiceLoss(k=50, do_bg=False, batch_dice=True), region_logits, regions),
        "bce_compound_ignore": (
            BCE_and_TopKDice_loss({"k": 50, "do_bg": True}, {}, use_ignore_label=True),
            region_logits,
            regions_ignore,
        ),
        "monai": (MonaiTopKDiceLoss(k=30, to_onehot_y=True, softmax=True), big, labels),
        "monai_ce": (
            _monai_dice_ce(k=50, to_onehot_y=True, softmax=True, include_background=False, batch=True),
            big,
            labels,
        ),
    }


def _monai_dice_ce(**kwargs):
    from nnunet_topkdice.monai import TopKDiceCELoss

    return TopKDiceCELoss(**kwargs)


def _digest(grad: torch.Tensor | None) -> str | None:
    return None if grad is None else hashlib.sha256(grad.contiguous().numpy().tobytes()).hexdigest()[:32]


@pytest.mark.skipif(
    (torch.backends.cpu.get_cpu_capability(), ".".join(torch.__version__.split(".")[:2])) != PINNED_ON,
    reason=f"pinned on CPU capability {PINNED_ON[0]} with torch {PINNED_ON[1]}",
)
@pytest.mark.parametrize("name", PINNED.keys())
def test_value_and_gradients_are_bit_identical_to_before(name):
    loss, logits, target = _pinned_inputs()[name]
    inputs = [x.clone().requires_grad_(True) for x in (logits if isinstance(logits, list) else [logits])]
    value = loss(inputs if isinstance(logits, list) else inputs[0], target)
    value.backward()
    assert (float(value.detach()).hex(), [_digest(x.grad) for x in inputs]) == PINNED[name]
