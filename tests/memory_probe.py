"""A measurement of one real training step's memory: the check on :mod:`fedsim.fleet.memory`.

Not a test module: the memory tests import :func:`measure_train_memory` and compare it with
:func:`fedsim.fleet.memory.estimate_train_memory`, component by component. It runs forward,
cross-entropy, backward and an SGD step on random data and counts what autograd saved
(``torch.autograd.graph.saved_tensors_hooks``), what the optimiser holds and the largest
working set of a no-grad forward, so it needs seconds where the estimate needs milliseconds,
and only the tests need it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clients.finetune import FineTuneMode
from clients.quantize import int8_weight_bytes, quantize_backbone
from clients.sgd import MomentumSGD
from fedsim.fleet.memory import MemoryEstimate


class _WorkingSetInterpreter(torch.fx.Interpreter):
    """Runs an FX graph node by node, recording the largest input + output bytes of one node.

    Sees every op of the int8 backbone, including the functional ones (quantise, residual
    ``quantized.add``, dequantise) that module hooks miss. Graph constants (``get_attr``:
    scales, zero points) are model state and not counted.
    """

    peak = 0

    def run_node(self, n: torch.fx.Node) -> object:
        out = super().run_node(n)
        if n.op in ("call_module", "call_function", "call_method"):
            values = [self.env[a] for a in n.all_input_nodes if a.op != "get_attr"] + [out]
            sizes = {t.data_ptr(): t.numel() * t.element_size() for t in values if isinstance(t, Tensor)}
            self.peak = max(self.peak, sum(sizes.values()))
        return out


def measure_train_memory(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    batch: int,
    mode: FineTuneMode,
    momentum: bool = True,
    int8_backbone: nn.Module | None = None,
) -> MemoryEstimate:
    """Measure the memory of one real SGD step on a copy of ``model`` (the check on the estimate).

    Runs forward, cross-entropy, backward and ``SGD.step`` on random data. ``activations`` are
    the tensors packed by ``torch.autograd.graph.saved_tensors_hooks``, counted once per
    storage (``untyped_storage().data_ptr()``) and without the model's parameters and buffers.
    Weights, gradients and optimizer state are read off the real tensors after the step.
    ``forward_peak`` is the largest input + output (distinct storages) of any leaf module, from
    forward hooks; functional ops in ``forward`` methods (residual adds, squeeze-excite
    products, the final pooling) are not modules and so not seen, which in the MobileNets
    never hides the maximum: a depthwise conv's input and output are at least as large.

    The step runs in the mode's ``running`` context (``qat``: ``clients.quantize.FakeQuantMode``).
    An ``int8_backbone`` mode (``int8_head``) swaps the copy's ``features`` for the real int8
    backbone (``clients.quantize.quantize_backbone``, calibrated on the same random batch): its
    weights are ``int8_weight_bytes`` of the quantised modules, and every node of its graph is
    seen by ``_WorkingSetInterpreter``. Pass ``int8_backbone`` to reuse one already quantised
    (PTQ takes seconds).
    """
    model = copy.deepcopy(model)
    mode.prepare(model)
    x = torch.randn(batch, *input_shape)
    peak = 0
    if mode.int8_backbone:
        backbone = int8_backbone or quantize_backbone(model.features, x)
        interpreter = _WorkingSetInterpreter(backbone)
        interpreter.run(x)
        peak = interpreter.peak
        model.features = backbone  # the phone holds the int8 backbone, not the float one
    state = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in state:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    def working_set_hook(module: nn.Module, inputs: tuple, output: object) -> None:
        nonlocal peak
        tensors = [t for t in (*inputs, output) if isinstance(t, Tensor)]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        peak = max(peak, sum(n for ptr, n in storages.items() if ptr not in state))

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(working_set_hook) for m in leaves]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = MomentumSGD(params, lr=0.01, momentum=0.9 if momentum else 0.0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), mode.running(model):
        logits = model(x)  # (B, classes)
        loss = F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long))
    loss.backward()
    optimizer.step()
    for hook in hooks:
        hook.remove()

    def nbytes(tensors: object) -> int:
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, Tensor))

    weights = nbytes(model.parameters())
    if mode.int8_backbone:
        head = (p for name, p in model.named_parameters() if not name.startswith("features."))
        weights = int8_weight_bytes(model.features) + nbytes(head)
    return MemoryEstimate(
        weights=weights,
        gradients=nbytes(p.grad for p in model.parameters()),
        optimizer_state=nbytes(optimizer.state_tensors()),
        activations=sum(saved.values()),
        forward_peak=peak,
    )
