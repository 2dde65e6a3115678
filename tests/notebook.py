"""The seed notebook's code, written out as the notebook has it.

Tests train it side by side with LatentForge's trainer; nothing in the
product imports this module.
"""

import random
import time

import numpy as np
import torch
from torch import nn, optim
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms


class AutoEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, 2),
        )
        self.decoder = nn.Sequential(
            nn.Linear(2, 64),
            nn.ReLU(),
            nn.Linear(64, 128),
            nn.ReLU(),
            nn.Linear(128, 784),
        )

    def forward(self, x):
        encoded = self.encoder(x)
        decoded = self.decoder(encoded)
        return decoded, encoded


def seed_notebook(seed=47):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def notebook_run(root, epochs, n_train=None, n_test=None, on_model=None, device="cpu"):
    """Train as the notebook does; return per-epoch (train_loss, test_loss, seconds).

    The test loss is measured inside ``fork_rng`` so that evaluating, which the
    notebook does not do per epoch, leaves its random stream untouched.
    """
    seed_notebook()
    transform = transforms.ToTensor()
    train_dataset = datasets.MNIST(root=root, train=True, download=False, transform=transform)
    test_dataset = datasets.MNIST(root=root, train=False, download=False, transform=transform)
    if n_train is not None:
        train_dataset = Subset(train_dataset, range(n_train))
    if n_test is not None:
        test_dataset = Subset(test_dataset, range(n_test))
    train_loader = DataLoader(train_dataset, batch_size=256, shuffle=True)
    test_loader = DataLoader(test_dataset, batch_size=256, shuffle=False)

    model = AutoEncoder()
    if on_model is not None:
        on_model(model)
    model = model.to(device)
    criterion = nn.MSELoss()
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for epoch in range(epochs):
        started = time.perf_counter()
        model.train()
        running_loss = 0.0
        for images, _ in train_loader:
            images = images.to(device)
            reconstructed, _ = model(images)
            loss = criterion(reconstructed, images.view(images.size(0), -1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
        train_loss = running_loss / len(train_loader)
        with torch.random.fork_rng():
            model.eval()
            test_running = 0.0
            with torch.no_grad():
                for images, _ in test_loader:
                    images = images.to(device)
                    reconstructed, _ = model(images)
                    test_running += criterion(reconstructed, images.view(images.size(0), -1)).item()
        history.append((train_loss, test_running / len(test_loader), time.perf_counter() - started))
    return history, model
