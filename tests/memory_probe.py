"""Measurements of real training memory: the check on :mod:`fedsim.fleet.memory` and
:mod:`fedsim.fleet.round_memory`.

Not a test module: the memory tests import :func:`measure_train_memory` and compare it with
:func:`fedsim.fleet.memory.estimate_train_memory`, component by component, and
:func:`measure_client_round` (a whole client-round, stage by stage) with
:meth:`fedsim.fleet.round_memory.ClientRoundMemory.estimate`. It runs forward,
cross-entropy, backward and an SGD step on random data and counts what autograd saved
(``torch.autograd.graph.saved_tensors_hooks``), what the optimiser holds and the largest
working set of a no-grad forward, so it needs seconds where the estimate needs milliseconds,
and only the tests need it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from unittest import mock

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clients import training
from clients.distillation import logits_of
from clients.finetune import FineTuneMode, head, int8_head
from clients.quantize import CALIBRATION_BATCH, int8_weight_bytes, quantize_backbone
from clients.sgd import MomentumSGD
from clients.training import LocalRecipe, train_in_mode
from clients.updates import full_batch_gradient
from fedsim.fleet.memory import MemoryEstimate
from fedsim.fleet.round_memory import RoundMemory, Stage


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


# --- a whole client-round --------------------------------------------------------------------


class _Saved:
    """What autograd keeps for one saved tensor while it is alive: released when it dies.

    Autograd drops its saved values when the graph is freed (after backward), and with them
    this holder, so the meter sees when each saved tensor stops being held.
    """

    __slots__ = ("key", "meter", "tensor")

    def __init__(self, meter: _RoundMeter, tensor: Tensor, key: tuple) -> None:
        self.meter, self.tensor, self.key = meter, tensor, key

    def __del__(self) -> None:
        self.meter.release(self.key)


class _RoundMeter:
    """Watches a client-round: live saved activations and leaf-module working sets, per stage.

    Bytes are counted per distinct storage; a view into the shard (a pass's chunk of it)
    counts as its own size, since a phone loads one chunk at a time. Model state (every
    parameter and buffer of a module that runs) is not counted here: the caller adds what each
    stage holds.
    """

    def __init__(self, shard: Tensor) -> None:
        self.shard = shard.untyped_storage().data_ptr()
        self.stage = "train"
        self.peaks: dict[str, int] = {}
        self.state: set[int] = set()
        self.modules: dict[str, list[nn.Module]] = {}
        self._count: dict[tuple, int] = {}
        self._bytes: dict[tuple, int] = {}
        self._live = 0

    def remember(self, *models: nn.Module) -> None:
        """Count ``models``' parameters and buffers as state from the start (a conv saves its
        weight before its forward hook has run)."""
        for m in models:
            self.state |= {t.untyped_storage().data_ptr() for t in (*m.parameters(), *m.buffers())}

    def key(self, t: Tensor) -> tuple[tuple, int]:
        if t.is_quantized:
            return (t.data_ptr(),), t.numel() * t.element_size()
        storage = t.untyped_storage()
        if storage.data_ptr() == self.shard:
            size = t.numel() * t.element_size()
            return (storage.data_ptr(), t.storage_offset(), size), size
        return (storage.data_ptr(),), storage.nbytes()

    def note(self, nbytes: int) -> None:
        self.peaks[self.stage] = max(self.peaks.get(self.stage, 0), nbytes)

    def pack(self, t: Tensor) -> object:
        key, size = self.key(t)
        if key[0] in self.state:
            return t
        self._count[key] = self._count.get(key, 0) + 1
        if self._count[key] == 1:
            self._bytes[key] = size
            self._live += size
            self.note(self._live)
        return _Saved(self, t, key)

    def release(self, key: tuple) -> None:
        self._count[key] -= 1
        if not self._count[key]:
            self._live -= self._bytes.pop(key)

    def forward_hook(self, module: nn.Module, inputs: tuple, output: object) -> None:
        own = (*module.parameters(recurse=False), *module.buffers(recurse=False))
        self.state |= {t.untyped_storage().data_ptr() for t in own}
        self.modules.setdefault(self.stage, []).append(module)
        if next(module.children(), None) is not None:
            return
        outputs = output if isinstance(output, tuple) else (output,)
        sizes = dict(self.key(t) for t in (*inputs, *outputs) if isinstance(t, Tensor))
        self.note(sum(n for k, n in sizes.items() if k[0] not in self.state))

    def staged(self, name: str, fn: Callable) -> Callable:
        """``fn`` run as stage ``name``; its result is kept in ``self.results[name]``."""

        def run(*args: object, **kwargs: object) -> object:
            before, self.stage = self.stage, name
            try:
                result = fn(*args, **kwargs)
            finally:
                self.stage = before
            self.results[name] = result
            return result

        self.results: dict[str, object] = getattr(self, "results", {})
        return run


def _nbytes(tensors: object) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, Tensor))


def measure_client_round(
    model: nn.Module, x: Tensor, y: Tensor, mode: FineTuneMode, recipe: LocalRecipe,
    gradient: bool = False, teacher: nn.Module | None = None,
) -> RoundMemory:
    """Run one real client-round on a copy of ``model`` and measure each stage's memory.

    The round is the ClientApp's (:func:`clients.client_app.train_reply`): the teacher's
    logits (``logits_of`` at ``recipe.chunk``) if a ``teacher`` is given, then
    ``full_batch_gradient`` (``gradient``) or ``train_in_mode`` with ``recipe`` -- the
    client's own code, whose calibration and feature passes are marked as stages by wrapping
    ``quantize_backbone`` and ``pooled_features`` where the modes call them. During each stage
    the peak of the saved activations alive at once (``saved_tensors_hooks`` whose holders die
    with the graph) and the largest working set of a leaf module (forward hooks on every
    module, teacher, calibrated and int8 copies included) are recorded; ``working`` is the
    larger. ``held`` is read off the real objects: parameters, the int8 backbone's weights
    (``int8_weight_bytes``), the calibrated copy's parameters and buffers, gradients, the
    optimiser's buffers, and the features and logits the stage leaves for training.
    """
    model = copy.deepcopy(model)
    meter = _RoundMeter(x)
    meter.remember(model, *([teacher] if teacher is not None else []))
    optimizers: list[MomentumSGD] = []

    class RecordedSGD(MomentumSGD):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    weights = _nbytes(model.parameters())
    stages: list[Stage] = []
    hook = torch.nn.modules.module.register_module_forward_hook(meter.forward_hook)
    patches = [
        mock.patch.object(training, "MomentumSGD", RecordedSGD),
        mock.patch.object(int8_head, "quantize_backbone",
                          meter.staged("calibration", int8_head.quantize_backbone)),
        mock.patch.object(
            int8_head, "pooled_features",
            meter.staged("features", _interpreted(meter, int8_head.pooled_features)),
        ),
        mock.patch.object(head, "pooled_features", meter.staged("features", head.pooled_features)),
    ]
    try:
        with contextlib.ExitStack() as stack:
            for patch in patches:
                stack.enter_context(patch)
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(meter.pack, _unpack))
            logits = None
            if teacher is not None:
                meter.stage = "teacher"
                logits = logits_of(teacher, x, recipe.chunk)
                state = _nbytes((*teacher.parameters(), *teacher.buffers()))
                held = weights + _nbytes([logits])
                stages.append(_stage(meter, "teacher", recipe.chunk, len(x), held, state))
                meter.stage = "train"
            if gradient:
                meter.stage = "gradient"
                result = full_batch_gradient(model, x, y, recipe.chunk)
                held = weights + _nbytes(result.gradient.values())
                stages.append(_stage(meter, "gradient", recipe.chunk, len(x), held))
                return RoundMemory(tuple(stages))
            train_in_mode(model, x, y, recipe, torch.Generator().manual_seed(0), mode, logits)
    finally:
        hook.remove()
    results = getattr(meter, "results", {})
    if "calibration" in results:
        copy_state = {
            t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for m in meter.modules["calibration"]
            for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))
        }
        held = weights + sum(copy_state.values())
        size = min(CALIBRATION_BATCH, recipe.chunk)
        stages.append(_stage(meter, "calibration", size, len(x), held))
    trained = [p for p in model.parameters() if p.requires_grad]
    state = _nbytes(p.grad for p in trained)
    state += sum(_nbytes(o.state_tensors()) for o in optimizers)
    held = weights
    if mode.int8_backbone:
        head_params = (p for n, p in model.named_parameters() if not n.startswith("features."))
        held = int8_weight_bytes(results["calibration"]) + _nbytes(head_params)
    extra = _nbytes([logits]) if logits is not None else 0
    if "features" in results:
        features = _nbytes([results["features"]])
        stages.append(_stage(meter, "features", recipe.chunk, len(x), held + features))
        extra += features
    stages.append(_stage(meter, "train", recipe.batch_size, len(x), held + state + extra))
    return RoundMemory(tuple(stages))


def _interpreted(meter: _RoundMeter, pooled_features: Callable) -> Callable:
    """``pooled_features`` whose int8 backbone runs node by node (``_WorkingSetInterpreter``):
    its quantise / dequantise and residual adds are functions, which module hooks miss."""

    def run(backbone: torch.fx.GraphModule, x: Tensor, chunk: int) -> Tensor:
        def interpreted(batch: Tensor) -> Tensor:
            interpreter = _WorkingSetInterpreter(backbone)
            out = interpreter.run(batch)
            meter.note(interpreter.peak)
            return out

        return pooled_features(interpreted, x, chunk)

    return run


def _unpack(saved: object) -> Tensor:
    return saved.tensor if isinstance(saved, _Saved) else saved


def _stage(
    meter: _RoundMeter, name: str, size: int, samples: int, held: int, extra: int = 0
) -> Stage:
    """A measured stage: ``held`` plus its peak (and ``extra`` bytes of state it ran)."""
    return Stage(name, min(size, samples), held, meter.peaks.get(name, 0) + extra)
