"""Model definitions used by the demo, the tests, the benchmarks and the experiments.

None needs torchvision. Parameter counts are stated in each docstring and checked in tests.
"""

from __future__ import annotations

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def mlp(widths, activation: str = "relu") -> nn.Sequential:
    """Fully connected network ``widths[0] -> ... -> widths[-1]`` with ``activation`` between.

    ``mlp([100, 30, 30, 10])`` is the network of Sagun et al. 2018, Sec. 3.1 (4,270 parameters);
    the last layer emits logits (softmax is part of the cross-entropy loss).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {list(ACTIVATIONS)}")
    if len(widths) < 2:
        raise ValueError(f"an MLP needs at least input and output widths, got {widths!r}")
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def small_cnn(in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
              channels=(16, 32), hidden: int = 64) -> nn.Sequential:
    """Two conv(3x3, padding 1)+ReLU+maxpool(2) blocks, then two fully connected layers.

    The convnet of Sagun et al. 2018, Sec. 3.3 ("2 conv+ReLU+maxpool, 2 fully connected").
    With the defaults on 28x28 inputs: 105,866 parameters.
    """
    c1, c2 = channels
    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * side * side, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def alexnet_imagenet(num_classes: int = 1000, dropout: float = 0.5) -> nn.Sequential:
    """The AlexNet architecture at ImageNet size (224x224 inputs): 61,100,840 parameters.

    Krizhevsky, Sutskever and Hinton 2012, in the single-tower form of torchvision's
    ``alexnet`` (64-192-384-256-256 channels, 4096-4096 fully connected). Dropout is off
    in the curvature operators (they run in eval mode).
    """
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.AdaptiveAvgPool2d((6, 6)), nn.Flatten(),
        nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(),
        nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(),
        nn.Linear(4096, num_classes),
    )


def alexnet_bare(in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> nn.Sequential:
    """The "bare" AlexNet of Sagun et al. 2018, Sec. 4.1: no dropout, no batch-norm.

    A CIFAR-size AlexNet (5x5 convolutions with 64 channels, max-pooling, then fully
    connected 384-192-classes), the variant used for CIFAR-10 in the large/small batch
    literature (Keskar et al. 2017). With 3x32x32 inputs: 1,756,426 parameters; with
    1x28x28 inputs (Fashion-MNIST): 1,384,586.
    """
    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
        nn.Conv2d(64, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
        nn.Flatten(),
        nn.Linear(64 * side * side, 384), nn.ReLU(),
        nn.Linear(384, 192), nn.ReLU(),
        nn.Linear(192, num_classes),
    )


def num_parameters(model: nn.Module) -> int:
    """Number of trainable scalar parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
