"""The coordinator's run settings: Flower's run config, typed and checked.

Every key here is declared with its default in ``pyproject.toml`` under
``[tool.flwr.app.config]`` (a test keeps the two equal), so ``flwr run . CONN -c 'key=value'``
and ``flower-server`` override the same names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..common.federation import CLIENT_MOMENTUM
from ..common.training.protocol import MODEL_DEFAULTS, TrainConfig
from .aggregation import STRATEGIES


@dataclass(frozen=True)
class Settings:
    out_dir: str = ""              # absolute path of RUN (outputs live outside the app)
    # the protocol the simulation measured best for the paper CNN (README, "Federated vs
    # centralized"): 100 rounds x 1 local epoch at batch 8, momentum carried
    num_rounds: int = 100
    local_epochs: int = 1          # rounds x local epochs = the centralized epoch count
    model: str = "paper"
    strategy: str = "fedavg"
    proximal_mu: float = 0.01      # FedProx only
    server_lr: float = 0.0         # FedAdam's eta / FedAvgM's server lr; 0: Flower's default
    server_momentum: float = 0.9   # FedAvgM only
    client_momentum: str = "carry"  # the sites' SGD momentum: carry (averaged) or restart
    min_sites: int = 2
    fraction_train: float = 1.0
    wait_for_sites: float = 600.0  # seconds to wait for min_sites before failing
    round_timeout: float = 1800.0  # seconds a round waits for replies
    seed: int = 0
    split_seed: int = 0
    lr: float = 0.0                # 0: the model's default
    batch_size: int = 8            # the sites' batch; 0: the model's (centralized) batch
    test_cache: str = ""           # coordinator-side labelled held-out set (a cache folder)
    test_split: str = "all"        # its studies scored: all, or the split's test patients
    sim_partition: str = ""        # simulation: partition.json of the virtual hospitals
    sim_cache: str = ""            # simulation: the pooled cohort's preprocessing cache
    resume: bool = False
    max_examples: int = 100_000

    @classmethod
    def from_run_config(cls, run_config: dict) -> "Settings":
        known = {f.name: f for f in fields(cls)}
        values = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name in known:
                kind = type(getattr(cls(), name))
                if kind is bool and isinstance(value, str):
                    value = value.strip().lower() in ("1", "true", "yes")
                values[name] = kind(value)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        problems = []
        if not self.out_dir:
            problems.append("out-dir is empty: give the run folder's absolute path")
        if self.model not in MODEL_DEFAULTS:
            problems.append(f"model {self.model!r} is not one of {', '.join(MODEL_DEFAULTS)}")
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.num_rounds < 1 or self.local_epochs < 1:
            problems.append("num-rounds and local-epochs must be at least 1")
        if self.min_sites < 1:
            problems.append("min-sites must be at least 1")
        if self.test_split not in ("all", "test"):
            problems.append(f"test-split {self.test_split!r} is not 'all' or 'test'")
        if self.server_lr < 0 or not 0 <= self.server_momentum < 1:
            problems.append("server-lr must be >= 0 and server-momentum in [0, 1)")
        if self.client_momentum not in CLIENT_MOMENTUM:
            problems.append(f"client-momentum {self.client_momentum!r} is not one of "
                            f"{', '.join(CLIENT_MOMENTUM)}")
        if not 0 < self.fraction_train <= 1:
            problems.append("fraction-train must be in (0, 1]")
        if problems:
            raise ValueError("; ".join(problems))

    def train_config(self) -> TrainConfig:
        overrides = {"epochs": self.num_rounds * self.local_epochs, "seed": self.seed,
                     "split_seed": self.split_seed}
        if self.lr > 0:
            overrides["lr"] = self.lr
        if self.batch_size > 0:
            overrides["batch_size"] = self.batch_size
        return TrainConfig.for_model(self.model, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)

    def run_config(self) -> dict:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}
