"""The plain-PyTorch local training loop and the ClientApp's per-round recipe."""

import torch
from flwr.app import ConfigRecord
from torch import nn

from clients.client_app import local_seed, recipe_for_round
from clients.finetune import Full, Head, mode_named
from clients.training import LocalRecipe, proximal_term, train_in_mode, train_locally
from fedsim import keys
from fedsim.models.mobilenet_v2 import mobilenet_v2


def one_weight_model(w: float) -> nn.Module:
    model = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[w], [0.0]]))
    return model


def test_one_sgd_step_matches_hand_computation() -> None:
    # Logits for x=1 are (w, 0) with w = 0, so softmax = (1/2, 1/2) and the label is 0:
    # dL/dw0 = p0 - 1 = -1/2, dL/dw1 = p1 = 1/2. One step with lr 0.1 moves w0 to +0.05.
    model = one_weight_model(0.0)
    recipe = LocalRecipe(epochs=1, batch_size=1, lr=0.1)
    x, y = torch.ones(1, 1), torch.zeros(1, dtype=torch.long)
    result = train_locally(model, x, y, recipe, torch.Generator().manual_seed(0))
    assert torch.allclose(model.weight, torch.tensor([[0.05], [-0.05]]))
    assert result.steps == 1 and result.num_examples == 1
    assert abs(result.mean_loss - torch.log(torch.tensor(2.0)).item()) < 1e-6


def test_proximal_term_adds_mu_times_distance_to_the_gradient() -> None:
    # FedProx adds (mu/2)||w - w0||^2, whose gradient is mu (w - w0). From w = w0 the first
    # step is plain SGD; so compare two epochs: the second step differs by lr * mu * (w - w0).
    x, y = torch.ones(1, 1), torch.zeros(1, dtype=torch.long)
    plain, prox = one_weight_model(0.0), one_weight_model(0.0)
    train_locally(plain, x, y, LocalRecipe(2, 1, 0.1), torch.Generator().manual_seed(0))
    train_locally(prox, x, y, LocalRecipe(2, 1, 0.1, proximal_mu=1.0), torch.Generator().manual_seed(0))
    # After step 1 both have w = (0.05, -0.05); the proximal gradient in step 2 is (0.05, -0.05)
    # times mu = 1, so prox ends lr * 0.05 = 0.005 closer to the start in each coordinate.
    diff = (plain.weight - prox.weight).detach()
    assert torch.allclose(diff, torch.tensor([[0.005], [-0.005]]), atol=1e-7)


def test_proximal_term_value() -> None:
    params = [torch.tensor([1.0, 2.0]), torch.tensor([3.0])]
    anchor = [torch.tensor([0.0, 0.0]), torch.tensor([1.0])]
    assert proximal_term(params, anchor).item() == 1 + 4 + 4


def test_frozen_parameters_are_not_updated() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].requires_grad_(False)
    before = model[0].weight.clone()
    x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    train_locally(model, x, y, LocalRecipe(1, 4, 0.5, momentum=0.9), torch.Generator().manual_seed(0))
    assert torch.equal(model[0].weight, before)


def test_shuffle_is_reproducible_per_seed() -> None:
    x, y = torch.randn(32, 2), torch.randint(0, 2, (32,))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = nn.Linear(2, 2)
        train_locally(model, x, y, LocalRecipe(2, 5, 0.1), torch.Generator().manual_seed(42))
        runs.append(model.weight.detach().clone())
    assert torch.equal(runs[0], runs[1])


def test_strategy_train_config_overrides_the_recipe() -> None:
    base = LocalRecipe(epochs=1, batch_size=16, lr=0.05)
    config = ConfigRecord({keys.PROXIMAL_MU: 0.5, keys.LEARNING_RATE: 0.01, keys.LOCAL_EPOCHS: 3})
    recipe = recipe_for_round(base, config)
    assert (recipe.proximal_mu, recipe.lr, recipe.epochs, recipe.batch_size) == (0.5, 0.01, 3, 16)
    assert recipe_for_round(base, ConfigRecord()) == base


def test_local_seed_differs_by_round_and_client() -> None:
    seeds = {local_seed(0, r, c) for r in range(1, 4) for c in range(5)}
    assert len(seeds) == 15
    assert local_seed(0, 1, 1) == local_seed(0, 1, 1)


def digits_student() -> nn.Module:
    torch.manual_seed(0)
    return mobilenet_v2(num_classes=10, in_channels=1, input_size=8, width_mult=0.5, dropout=0.2)


def test_head_with_cached_features_matches_the_uncached_update() -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(20, 1, 8, 8, generator=g), torch.randint(0, 10, (20,), generator=g)
    recipe = LocalRecipe(3, 8, 0.1, momentum=0.9, weight_decay=1e-3, proximal_mu=0.1)
    heads, results = [], []
    for cache in (True, False):
        model = digits_student()
        torch.manual_seed(7)  # the classifier's dropout draws the same masks in both paths
        results.append(
            train_in_mode(model, x, y, recipe, torch.Generator().manual_seed(1), Head(cache))
        )
        heads.append([p.detach().clone() for p in model.classifier.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*heads, strict=True))
    assert not torch.equal(heads[0][0], digits_student().classifier[1].weight)
    assert results[0].steps == results[1].steps == 9
    assert abs(results[0].mean_loss - results[1].mean_loss) < 1e-5


def test_frozen_backbone_batchnorm_stays_frozen_in_train_in_mode() -> None:
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for name, frozen in (("head", True), ("int8_head", True), ("bias", False)):
        mode = mode_named(name, cache_features=False)
        model = digits_student()
        bn = next(m for m in model.features.modules() if isinstance(m, nn.BatchNorm2d))
        before = bn.running_mean.clone()
        train_in_mode(model, x, y, LocalRecipe(1, 8, 0.1), torch.Generator().manual_seed(0), mode)
        assert torch.equal(bn.running_mean, before) == frozen, name


def test_full_mode_is_train_locally() -> None:
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    a, b = digits_student(), digits_student()
    torch.manual_seed(5)
    train_locally(a, x, y, LocalRecipe(1, 8, 0.1), torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    train_in_mode(b, x, y, LocalRecipe(1, 8, 0.1), torch.Generator().manual_seed(0), Full())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
