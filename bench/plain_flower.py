"""The benchmark workload written the way Flower's own quickstart writes it.

This is what a user would write instead of fedsim (Flower 1.42 Message API, after the
``quickstart-pytorch`` template): one supernode per client, a ClientApp that builds the model
and loads and partitions the data inside every call, stock ``FedAvg`` sampling
``fraction_train`` of the nodes, ``run_simulation`` on Ray. The model class is fedsim's student
so that both sides train the same network. Round timestamps go to ``$BENCH_EVENTS`` (JSON lines)
for ``bench/compare.py``.

    python bench/plain_flower.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from torch.utils.data import DataLoader, TensorDataset

from bench.workload import current, event
from fedsim.models.mobilenet_v2 import mobilenet_v2

W = current()


def Net() -> torch.nn.Module:
    return mobilenet_v2(num_classes=10, in_channels=1, input_size=8, width_mult=0.5, dropout=0.2)


def load_data(partition_id: int, num_partitions: int, batch_size: int):
    """Digits, standardised, this client's IID partition (recomputed in every call)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(
        x, bunch.target, test_size=0.2, stratify=bunch.target, random_state=0
    )
    mean, std = x_train.mean(), x_train.std()
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    if W.samples_per_client is None:
        order = np.random.default_rng(W.seed).permutation(len(x_train))
        part = np.array_split(order, num_partitions)[partition_id]
    else:  # more phones than images: each draws its own few
        rng = np.random.default_rng([W.seed, partition_id])
        part = rng.choice(len(x_train), W.samples_per_client, replace=False)
    train = TensorDataset(torch.from_numpy(x_train[part]), torch.from_numpy(y_train[part]))
    test = TensorDataset(torch.from_numpy(x_test), torch.from_numpy(y_test))
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(test, batch_size=500)


def train_fn(net, loader, epochs: int, lr: float) -> float:
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=W.momentum)
    net.train()
    total, seen = 0.0, 0
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
            seen += len(y)
    return total / max(seen, 1)


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    trainloader, _ = load_data(partition_id, num_partitions, W.batch_size)
    loss = train_fn(model, trainloader, W.epochs, W.lr)
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(trainloader.dataset)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    event("evaluate_start", round=server_round)
    model = Net()
    model.load_state_dict(arrays.to_torch_state_dict())
    model.eval()
    _, testloader = load_data(0, W.population, W.batch_size)
    correct = total = 0
    with torch.no_grad():
        for x, y in testloader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    event("round_end", round=server_round, accuracy=correct / total)
    return MetricRecord({"accuracy": correct / total})


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    torch.manual_seed(W.seed)
    strategy = FedAvg(fraction_train=W.cohort / W.population, fraction_evaluate=0.0)
    strategy.start(
        grid=grid, initial_arrays=ArrayRecord(Net().state_dict()), num_rounds=W.rounds,
        evaluate_fn=central_evaluate,
    )


if __name__ == "__main__":
    event("process_start")
    run_simulation(
        server_app=server, client_app=app, num_supernodes=W.population,
        backend_config={
            "client_resources": {"num_cpus": W.client_cpus, "num_gpus": 0.0},
            "init_args": {"num_cpus": W.total_cpus, "include_dashboard": False},
        },
    )
