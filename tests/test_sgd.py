"""fedsim's optimiser against hand-computed steps and against torch.optim.SGD, bit for bit."""

import torch
import torch.nn.functional as F

from clients.sgd import MomentumSGD
from fedsim.models.mobilenet_v2 import mobilenet_v2


def test_momentum_and_weight_decay_match_hand_computation() -> None:
    # w = 1, loss = w^2 / 2 so grad = w; weight decay 0.5 makes g = 1.5 w; lr 0.1, momentum 0.9.
    # step 1: g = 1.5, b = 1.5, w = 1 - 0.15 = 0.85
    # step 2: g = 1.275, b = 0.9 * 1.5 + 1.275 = 2.625, w = 0.85 - 0.2625 = 0.5875
    w = torch.tensor([1.0], requires_grad=True)
    opt = MomentumSGD([w], lr=0.1, momentum=0.9, weight_decay=0.5)
    for expected in (0.85, 0.5875):
        opt.zero_grad()
        (w**2 / 2).sum().backward()
        opt.step()
        assert abs(w.item() - expected) < 1e-6
    assert abs(opt.state_tensors()[0].item() - 2.625) < 1e-6


def test_a_parameter_without_gradient_is_left_alone() -> None:
    used, unused = torch.tensor([2.0], requires_grad=True), torch.tensor([5.0], requires_grad=True)
    opt = MomentumSGD([used, unused], lr=0.5, momentum=0.9)
    (used * 3).sum().backward()  # d/d used = 3
    opt.step()
    assert used.item() == 2.0 - 0.5 * 3 and unused.item() == 5.0
    assert len(opt.state_tensors()) == 1  # no buffer for the parameter that never stepped


def test_bit_identical_to_torch_optim_sgd_on_a_mobilenet() -> None:
    def train(make_optimizer) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = mobilenet_v2(num_classes=10, in_channels=1, input_size=8, width_mult=0.35)
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
        data = torch.Generator().manual_seed(1)
        x, y = torch.randn(24, 1, 8, 8, generator=data), torch.randint(0, 10, (24,), generator=data)
        for step in range(6):
            batch = slice(8 * (step % 3), 8 * (step % 3) + 8)
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        return model.state_dict()

    settings = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}
    ours = train(lambda params: MomentumSGD(params, **settings))
    reference = train(lambda params: torch.optim.SGD(params, **settings))
    assert all(torch.equal(ours[name], reference[name]) for name in reference)
