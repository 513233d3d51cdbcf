"""Tests for the compact students ShuffleNetV2, GhostNet and SqueezeNet 1.1.

Reference parameter counts, shapes on digit-sized inputs, every fine-tuning mode, and the
memory / FLOP models (``fedsim.fleet.memory``, ``fedsim.fleet.flops``) on their ops (concatenation,
channel shuffle, max pooling). Models are kept tiny (width 0.5, 8x8 inputs) except where a
count at the papers' 224 px is checked, which only builds the model.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from clients.finetune import MODES, Full, mode_named
from clients.training import LocalRecipe, train_in_mode
from fedsim.fleet.flops import op_flops
from fedsim.fleet.memory import estimate_train_memory
from fedsim.fleet.trace import trace_training_forward
from fedsim.models.factory import ModelBuilder
from fedsim.models.ghostnet import ghostnet
from fedsim.models.layers import group_norm, no_norm
from fedsim.models.shufflenet_v2 import channel_shuffle, shufflenet_v2
from fedsim.models.squeezenet import squeezenet
from tests.memory_probe import measure_train_memory

Builder = Callable[..., nn.Module]
STUDENTS = [
    pytest.param(shufflenet_v2, id="shufflenet_v2"),
    pytest.param(ghostnet, id="ghostnet"),
    pytest.param(squeezenet, id="squeezenet"),
]
DIGITS = (1, 8, 8)
FASHION = (1, 28, 28)
NUM_CLASSES = 10
BATCH = 4


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    # Tiny models: one thread is as fast and keeps a shared machine's other jobs running.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(
    builder: Builder, input_shape: tuple[int, int, int] = DIGITS, **kwargs: object
) -> nn.Module:
    torch.manual_seed(0)
    channels, size, _ = input_shape
    return builder(
        num_classes=NUM_CLASSES, in_channels=channels, input_size=size, width_mult=0.5, **kwargs
    )


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- parameter counts (width 1.0, 1000 classes, 224 px: built, never run) ----------------


@pytest.mark.parametrize(
    ("builder", "reference"),
    [
        (shufflenet_v2, 2_278_604),  # torchvision.models.shufflenet_v2_x1_0
        (squeezenet, 1_235_496),  # torchvision.models.squeezenet1_1
        # huawei-noah/Efficient-AI-Backbones ghostnet_pytorch/ghostnet.py, ghostnet() (also timm's
        # ghostnet_100); the paper's Table 7 says 5.2M.
        (ghostnet, 5_182_508),
    ],
    ids=["shufflenet_v2", "squeezenet", "ghostnet"],
)
def test_param_count_matches_reference(builder: Builder, reference: int) -> None:
    model = builder(num_classes=1000, in_channels=3, input_size=224, width_mult=1.0)
    assert count_params(model) == reference


@pytest.mark.parametrize(
    ("width", "reference"),
    # torchvision's shufflenet_v2_x0_5 / x1_5 / x2_0: Table 5's other channel rows.
    [(0.5, 1_366_792), (1.5, 3_503_624), (2.0, 7_393_996)],
)
def test_shufflenet_widths_match_reference(width: float, reference: int) -> None:
    assert count_params(shufflenet_v2(num_classes=1000, width_mult=width)) == reference


@pytest.mark.parametrize(("width", "paper_millions"), [(0.5, 2.6), (1.3, 7.3)])
def test_ghostnet_widths_match_paper(width: float, paper_millions: float) -> None:
    # Table 7 of Han et al. 2020 (GhostNet 0.5x, 1.3x; 1.0x is 5.2M), given to 0.1M. The official
    # code has 2,587,292 / 5,182,508 / 7,358,820: neither rounding nor truncation gives all three.
    params = count_params(ghostnet(num_classes=1000, width_mult=width))
    assert params == pytest.approx(paper_millions * 1e6, rel=0.01)


def test_shufflenet_rejects_widths_outside_table_5() -> None:
    with pytest.raises(ValueError, match="Table 5"):
        shufflenet_v2(width_mult=0.75)


def test_parameters_do_not_depend_on_input_size() -> None:
    # Small inputs only plan strides away; every layer of the table stays.
    for builder in (shufflenet_v2, ghostnet, squeezenet):
        sizes = {count_params(builder(in_channels=1, input_size=s)) for s in (8, 224)}
        assert len(sizes) == 1, builder.__name__


# --- building blocks by hand ----------------------------------------------------------


def test_channel_shuffle_interleaves_two_groups() -> None:
    x = torch.arange(6.0).view(1, 6, 1, 1)  # groups [0 1 2] and [3 4 5]
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_squeezenet_head_is_conv10_after_the_pool() -> None:
    # A 1x1 conv commutes with the global average, so the Linear head equals [1]'s conv10 + pool
    # whenever the ReLU does not clip (here: all scores positive).
    model = tiny(squeezenet).eval()
    linear = model.classifier[1]
    nn.init.uniform_(linear.weight, 0.0, 0.1)
    nn.init.constant_(linear.bias, 0.1)
    x = torch.rand(2, *DIGITS)
    with torch.no_grad():
        feature_map = model.features(x)  # (B, C, H, W), non-negative (ReLU)
        conv10 = nn.functional.conv2d(feature_map, linear.weight[:, :, None, None], linear.bias)
        paper = torch.relu(conv10).mean(dim=(2, 3))
        torch.testing.assert_close(model(x), paper)


# --- shapes on digits and Fashion-MNIST -----------------------------------------------


@pytest.mark.parametrize("builder", STUDENTS)
@pytest.mark.parametrize(
    ("input_shape", "norm"),
    [(DIGITS, None), (FASHION, None), (DIGITS, group_norm), (DIGITS, no_norm)],
    ids=["8px", "28px", "8px-group", "8px-none"],
)
def test_builds_and_outputs_logits(
    builder: Builder, input_shape: tuple[int, int, int], norm: Callable | None
) -> None:
    model = tiny(builder, input_shape, norm_layer=norm)
    x = torch.randn(3, *input_shape)
    with torch.no_grad():
        assert model(x).shape == (3, NUM_CLASSES)
        side = model.features(x).shape[-1]
    # stride_plan keeps a ~4x4 final map: 8 px -> 4, 28 px -> 4 (SqueezeNet's ceil pools: 3).
    assert 3 <= side <= 4


@pytest.mark.parametrize("name", ["shufflenet_v2", "ghostnet", "squeezenet"])
def test_config_instantiates_through_the_model_builder(name: str) -> None:
    from omegaconf import OmegaConf

    model_conf = OmegaConf.to_container(OmegaConf.load(f"conf/model/{name}.yaml"))
    norm_conf = OmegaConf.to_container(OmegaConf.load("conf/norm/group.yaml"))
    model = ModelBuilder.from_config(model_conf, norm_conf, FASHION, NUM_CLASSES)()
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    with torch.no_grad():
        assert model(torch.randn(2, *FASHION)).shape == (2, NUM_CLASSES)


# --- fine-tuning modes ----------------------------------------------------------------


@pytest.mark.parametrize("builder", STUDENTS)
@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_trains_only_its_parameters(builder: Builder, name: str) -> None:
    model, mode = tiny(builder), mode_named(name)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x, y = torch.randn(8, *DIGITS), torch.randint(0, NUM_CLASSES, (8,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FX quantisation's deprecation notices (int8_head)
        recipe, generator = LocalRecipe(1, BATCH, 0.1), torch.Generator().manual_seed(0)
        result = train_in_mode(model, x, y, recipe, generator, mode)
    assert result.steps == 2 and math.isfinite(result.mean_loss)
    trainable = mode.trainable_names(model)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed <= trainable
    assert changed  # something trained


# --- memory and FLOP models on the students' ops ---------------------------------------


@pytest.mark.parametrize(
    ("builder", "mode"),
    [(b, mode) for b in (shufflenet_v2, ghostnet, squeezenet) for mode in ("full", "head")]
    # bias: frozen convs behind a chunk / cat save their input only if the trace knows the
    # chunk's halves need a gradient.
    + [(shufflenet_v2, "bias")],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_memory_estimate_is_within_ten_percent_of_measurement(builder: Builder, mode: str) -> None:
    model = tiny(builder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the trace's "op ... is not modelled" would raise
        estimate = estimate_train_memory(model, DIGITS, BATCH, mode_named(mode))
    measured = measure_train_memory(model, DIGITS, BATCH, mode_named(mode))
    assert estimate.total == pytest.approx(measured.total, rel=0.10)
    assert estimate.activations == pytest.approx(measured.activations, rel=0.10)


@pytest.mark.parametrize("builder", STUDENTS)
def test_flops_count_every_conv_and_linear(builder: Builder) -> None:
    # Forward FLOPs of the conv / linear layers, counted independently by forward hooks (2 per
    # multiply-add), must all be in the traced count: a missed conv behind a cat or a shuffle
    # would show here.
    model = tiny(builder).eval()
    macs = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        macs += math.prod(module.weight.shape[1:]) * output.numel()

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = [m.register_forward_hook(hook) for m in layers]
    with torch.no_grad():
        model(torch.randn(1, *DIGITS))
    for h in hooks:
        h.remove()
    calls = trace_training_forward(model, DIGITS, 1, Full())
    traced_macs = sum(
        math.prod(c.args["weight"].shape[1:]) * math.prod(c.out.shape)
        for c in calls
        if c.op in ("conv2d", "linear")
    )
    assert traced_macs == macs
    flops = [op_flops(c) for c in calls]
    forward, backward = sum(f.forward for f in flops), sum(f.backward for f in flops)
    assert 2 * macs <= forward < 2.2 * macs  # norms, activations and pools add a little
    # Full training: every conv's input and weight gradient but the first conv's input gradient;
    # a branch after a chunk or a cat that lost its input gradient would fall below this.
    assert backward > 1.8 * 2 * macs
