"""The seed paper's CNN (Wang et al. 2023, sec. 2.3-2.5, Fig. 2-4), LeNet-style.

What the paper states, kept exactly:

* C1: a convolution with three trained filters plus a bias: three feature maps;
* S2: sigmoid, then pooling;
* C3: a convolution;
* S4: sigmoid, then pooling;
* flatten, a fully connected layer, softmax over the three classes;
* trained by back-propagation with stochastic gradient descent (eq. 5).

What the paper leaves open, and the choice made here:

* Input: the study's 2-D image from the preprocessing (5 channels: T1, T2, STIR slab means,
  the STIR maximum over the vertebral width and beside the canal; 180 x 52 pixels of
  1.6 mm). The paper maps 3-D to 2-D but does not say into how many channels; C1's filters
  span all five.
* Kernels: 5 x 5 with 2 pixels of zero padding, LeNet-5's size. At 1.6 mm a 5 x 5 kernel
  spans 8 mm: a small metastasis (5-10 mm) fills about one receptive field of C1.
* Pooling: max pooling. S2 pools 2 x 2 with stride 2 (LeNet-5). LeNet-5 subsamples by
  averaging; the paper only says "pooling", and averaging a 3-pixel lesion with its marrow
  halves its contrast at each stage, the maximum keeps it. S4 pools each C3 map to a 6 x 2
  grid (``s4_grid``; cells of 15 x 13 pixels, 24 x 21 mm: about one vertebral level by half
  the depth of the spine). LeNet-5's S4 also leaves a small grid (5 x 5 on 32 x 32 digits);
  on our 180 x 52 input the 2 x 2 pooling alone would leave 45 x 13 positions, and an FC
  layer with a separate weight for every position cannot learn from some 750 patients that
  a lesion means the same at every level (measured on the tuning cohorts: it stays at
  chance).
* C3 width: 16 maps, LeNet-5's C3.
* FC: one hidden fully connected layer of 84 units with a sigmoid (LeNet-5's F6) before the
  3-way output layer; the paper's figure shows a fully connected stage between the flattened
  S4 maps and the softmax output.
* Softmax: the model returns logits; softmax is applied by the loss (cross-entropy) in
  training and explicitly at inference (:func:`spinemet.common.models.probabilities`).
* Initialisation: Glorot-uniform with gain 4, the scaling Glorot and Bengio (2010) derive
  for the logistic sigmoid (its slope at 0 is 1/4); biases zero. With PyTorch's default
  (fan-in uniform, about 7x smaller) the sigmoid layers pass almost no gradient and SGD
  stays at chance for tens of epochs on the tuning cohorts.
"""

from __future__ import annotations

import torch
from torch import nn


class PaperCNN(nn.Module):
    """C1 (3 maps) - S2 (sigmoid, pool) - C3 (16 maps) - S4 (sigmoid, pool) - FC - softmax."""

    def __init__(self, in_channels: int = 5, num_classes: int = 3,
                 input_hw: tuple[int, int] = (180, 52), c1_maps: int = 3, c3_maps: int = 16,
                 fc_width: int = 84, kernel: int = 5, s4_grid: tuple[int, int] | None = (6, 2),
                 init_gain: float = 4.0):
        super().__init__()
        pad = kernel // 2
        self.c1 = nn.Conv2d(in_channels, c1_maps, kernel, padding=pad, bias=True)
        self.s2 = nn.Sequential(nn.Sigmoid(), nn.MaxPool2d(2))
        self.c3 = nn.Conv2d(c1_maps, c3_maps, kernel, padding=pad, bias=True)
        if s4_grid is None:
            self.s4 = nn.Sequential(nn.Sigmoid(), nn.MaxPool2d(2))
            h, w = input_hw[0] // 4, input_hw[1] // 4
        else:
            self.s4 = nn.Sequential(nn.Sigmoid(), nn.AdaptiveMaxPool2d(s4_grid))
            h, w = s4_grid
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c3_maps * h * w, fc_width), nn.Sigmoid())
        self.out = nn.Linear(fc_width, num_classes)
        for layer in (self.c1, self.c3, self.fc[1], self.out):
            nn.init.xavier_uniform_(layer.weight, gain=init_gain)
            nn.init.zeros_(layer.bias)

    @property
    def cam_layer(self) -> nn.Module:
        """The last convolution: Grad-CAM's layer."""
        return self.c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.s2(self.c1(x))
        x = self.s4(self.c3(x))
        return self.out(self.fc(x))
