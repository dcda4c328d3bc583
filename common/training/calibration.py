"""Temperature scaling (Guo et al. 2017): one scalar T > 0 dividing the logits, fitted on
the validation slice by minimising the negative log-likelihood (scipy's bounded scalar
minimiser on log T). It changes the probabilities, never the predicted class."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    if len(labels) == 0:
        return 1.0
    logits = logits.detach().double()
    labels = labels.detach().long()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / np.exp(log_t), labels))

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))
