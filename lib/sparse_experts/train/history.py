"""What a training run did: :class:`History` (one run) and :class:`SweepResult` (R copies side by side).

Shape letters: R copies, T steps, L layers. Both are plain data (``to_dict``/``from_dict`` round-trip
through JSON, so a checkpoint carries them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class History:
    """What a training run did: per-step metrics (floats; lists of L floats for the per-layer attention
    statistics), timing, and whether and where it diverged."""

    metrics: list[dict[str, Any]] = field(default_factory=list)
    diverged: bool = False
    diverged_at: int | None = None
    message: str = ""
    seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)

    def series(self, name: str) -> np.ndarray:
        """[T] (or [T, L]) values of one metric, e.g. "loss"."""
        return np.array([m[name] for m in self.metrics], dtype=np.float64)

    def eval_series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one evaluation metric, e.g. "accuracy"."""
        steps = np.array([e["step"] for e in self.evals], dtype=np.int64)
        return steps, np.array([e[name] for e in self.evals], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        return cls(**{f: data[f] for f in cls.__dataclass_fields__ if f in data})


@dataclass
class SweepResult:
    """What R copies trained side by side did (:class:`~sparse_experts.train.Copies`).

    ``learning_rates``, ``weight_decays`` [R] and ``seeds`` [R] say what each copy was; ``metrics`` holds per
    step t a dict metric name -> R values (R lists of L values for "attn_max_logit" and "attn_entropy");
    ``evals`` per evaluation {"step", name -> R values}. ``diverged_at[r]`` is the step at which copy r's
    loss, objective or gradient norm went non-finite (None if never): from that step on the copy is frozen
    and its metrics are NaN. The run stops early only when every copy has diverged.
    """

    learning_rates: np.ndarray
    weight_decays: np.ndarray
    seeds: np.ndarray
    metrics: list[dict[str, list]] = field(default_factory=list)
    diverged_at: list[int | None] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.learning_rates = np.asarray(self.learning_rates, dtype=np.float64)
        self.weight_decays = np.asarray(self.weight_decays, dtype=np.float64)
        self.seeds = np.asarray(self.seeds, dtype=np.int64)
        R = len(self.learning_rates)
        if not (len(self.weight_decays) == len(self.seeds) == R):
            raise ValueError(
                f"learning_rates, weight_decays and seeds have {R}, {len(self.weight_decays)} and "
                f"{len(self.seeds)} values; expected one per copy each"
            )
        if not self.diverged_at:
            self.diverged_at = [None] * R
        if not self.messages:
            self.messages = [""] * R

    @property
    def num_copies(self) -> int:
        return len(self.learning_rates)

    def series(self, name: str) -> np.ndarray:
        """[R, T] (or [R, T, L]) values of one metric."""
        values = np.array([m[name] for m in self.metrics], dtype=np.float64)
        return np.moveaxis(values, 0, 1) if values.ndim > 1 else values.reshape(self.num_copies, 0)

    @property
    def loss(self) -> np.ndarray:
        """[R, T] training loss (NaN from the step after a copy diverged)."""
        return self.series("loss")

    @property
    def accuracy(self) -> np.ndarray:
        return self.series("accuracy")

    @property
    def attn_max_logit(self) -> np.ndarray:
        """[R, T, L] the largest attention logit of each layer (needs ``record_attention=True``)."""
        return self.series("attn_max_logit")

    @property
    def attn_entropy(self) -> np.ndarray:
        """[R, T, L] the mean attention entropy of each layer (needs ``record_attention=True``)."""
        return self.series("attn_entropy")

    def diverged(self) -> np.ndarray:
        """[R] bool: the copy's loss, objective or gradient norm went non-finite at some step."""
        return np.array([at is not None for at in self.diverged_at], dtype=bool)

    def final_loss(self, last: int = 10) -> np.ndarray:
        """[R] mean loss over the last ``last`` steps (inf where the copy diverged)."""
        tail = self.loss[:, -last:].mean(axis=1)
        return np.where(self.diverged(), np.inf, tail)

    def lr_sensitivity(self, initial_loss: float, last: int = 10) -> float:
        """Wortsman et al. (2023): the mean over rates of min(final loss, initial loss) - best final loss.

        0 when every rate does as well as the best; a diverged rate counts as the initial loss. Lower means
        a wider range of learning rates trains well.
        """
        final = np.minimum(self.final_loss(last), initial_loss)
        return float(np.mean(final - final.min()))

    def max_logit(self) -> np.ndarray:
        """[R] the largest attention logit seen in any layer at any step (finite values only)."""
        values = self.attn_max_logit
        values = np.where(np.isfinite(values), values, -np.inf)
        return values.max(axis=(1, 2))

    def history(self, copy: int) -> History:
        """Copy ``copy``'s run as a :class:`History` (its metrics up to the step it diverged at)."""
        if not (isinstance(copy, int) and 0 <= copy < self.num_copies):
            raise ValueError(
                f"copy={copy!r} is not a copy of this run; expected an int in [0, {self.num_copies})"
            )
        at = self.diverged_at[copy]
        steps = self.metrics if at is None else self.metrics[: at + 1]
        return History(
            metrics=[{name: values[copy] for name, values in m.items()} for m in steps],
            diverged=at is not None,
            diverged_at=at,
            message=self.messages[copy],
            seconds=self.seconds,
            step_seconds=list(self.step_seconds[: len(steps)]),
            evals=[{k: _of_copy(v, copy) for k, v in e.items()} for e in self.evals],
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("learning_rates", "weight_decays", "seeds"):
            out[name] = getattr(self, name).tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepResult:
        return cls(**{f: data[f] for f in cls.__dataclass_fields__ if f in data})


def _of_copy(value: Any, copy: int) -> Any:
    """A per-copy evaluation value ([R] list or array) -> copy ``copy``'s; shared ones (step, count) as is."""
    return value[copy] if isinstance(value, list | tuple | np.ndarray) else value
