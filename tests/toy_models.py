"""Small models the tests share."""

import torch


class ResidualNet(torch.nn.Module):
    """stem -> inner -> outer, outer's output added to the stem's; a model the config knows nothing of.

    stem and outer join the residual sum and head is the output, so only inner may lose filters.
    """

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.inner = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.outer = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Linear(8 * 16, 10)

    def forward(self, x):   # x: (B, 1, 8, 8)
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.outer(torch.relu(self.inner(x))))
        return self.head(torch.flatten(torch.nn.functional.max_pool2d(x, 2), 1))
