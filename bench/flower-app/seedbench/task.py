"""The seed's CNN, its training and evaluation loops, and a reader for the partition files that
`flwr dataset prepare` writes (format version 1, see model/src/data/format.rs)."""

import hashlib
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MAGIC = b"FLWRDS\x00\x01"


class Net(nn.Module):
    """The seed's CNN: two conv/pool stages and three linear layers, for C x H x W inputs."""

    def __init__(self, channels=3, height=32, width=32, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        side_h, side_w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
        self.flat = 16 * side_h * side_w
        self.fc1 = nn.Linear(self.flat, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, self.flat)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def read_split(path):
    """Images normalised to [-1, 1] (the seed's Normalize((0.5,)*3, (0.5,)*3)), labels, and shape."""
    raw = Path(path).read_bytes()
    if raw[:8] != MAGIC or hashlib.sha256(raw[:-32]).digest() != raw[-32:]:
        raise ValueError(f"{path} is not an intact flower-rs partition file")
    version, channels, height, width, classes, count = struct.unpack_from("<IIIIIQ", raw, 8)
    if version != 1:
        raise ValueError(f"{path}: format version {version}, this reader reads 1")
    (name_len,) = struct.unpack_from("<H", raw, 36)
    start = 38 + name_len
    pixels = count * channels * height * width
    images = np.frombuffer(raw, np.uint8, pixels, start).reshape(count, channels, height, width)
    labels = np.frombuffer(raw, np.uint8, count, start + pixels)
    tensor = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)
    return tensor, torch.from_numpy(labels.astype(np.int64)), (channels, height, width, classes)


def load_data(dataset_path):
    """The (images, labels) of the train and test splits of one partition directory, and the
    input shape. Whole tensors, batched by slicing: the seed's DataLoader collates sample by sample
    in Python, which would make Flower's side slower than it needs to be."""
    *train, shape = read_split(Path(dataset_path) / "train.flds")
    *test, _ = read_split(Path(dataset_path) / "test.flds")
    return train, test, shape


def train(net, data, epochs, batch_size, lr, momentum):
    """Mean training loss of the last epoch, SGD with momentum over shuffled batches, as in the seed."""
    images, labels = data
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    net.train()
    for _ in range(epochs):
        total, batches = 0.0, 0
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = criterion(net(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
    return total / max(batches, 1)


def test(net, data, batch_size):
    """Mean loss and accuracy."""
    images, labels = data
    criterion = nn.CrossEntropyLoss()
    net.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            outputs = net(images[start : start + batch_size])
            truth = labels[start : start + batch_size]
            loss += criterion(outputs, truth).item() * len(truth)
            correct += (outputs.argmax(1) == truth).sum().item()
    return loss / max(len(labels), 1), correct / max(len(labels), 1)
