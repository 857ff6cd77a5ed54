"""The tiny architecture the fuzzer's weight files are loaded with (--arch tests.fuzz.nets:Tiny)."""

import torch


class Tiny(torch.nn.Module):
    """1x8x8 -> 4: one conv, one dense layer (~300 parameters)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.fc = torch.nn.Linear(72, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))
