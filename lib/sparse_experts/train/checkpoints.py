"""Orbax checkpoints of a :class:`~sparse_experts.train.Trainer`'s state and its history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from sparse_experts.train.history import History, SweepResult


class Checkpoints:
    """Orbax checkpoints of a :class:`~sparse_experts.train.Trainer`'s state and its :class:`History` (or
    :class:`SweepResult` for R copies), one folder per step (``<directory>/<step>/``), the two latest kept.
    Saving is synchronous and atomic (orbax writes to a temporary folder and renames it), so an interrupted
    save never shows up as a step.

    Restoring places every array by the *restoring* trainer's shardings: a checkpoint written on 8 devices
    restores on 1, and the reverse; written by 2 processes, it restores on 1, and the reverse
    (tests/test_scale_out.py). With several processes every process calls :meth:`save` and :meth:`restore`
    together, each writing its own shards, and ``directory`` must be storage every process reaches (a shared
    file system or a bucket); a save cut short leaves only orbax's temporary folder, which is never listed.
    """

    def __init__(self, directory, max_to_keep: int = 2):
        text = str(directory)  # a bucket (gs://...) stays a URL (orbax reads it); a local folder: absolute
        self.directory = text if "://" in text else Path(text).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        self.manager.reload()
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        self.manager.reload()
        return list(self.manager.all_steps())

    def save(self, trainer: Any, history: History | SweepResult) -> None:
        """Write ``trainer.state`` and ``history`` as the checkpoint of ``trainer.step``."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(trainer.state), history=ocp.args.JsonSave(history.to_dict())
        )
        self.manager.save(trainer.step, args=args, force=True)
        self.manager.wait_until_finished()

    def restore(self, trainer: Any, step: int) -> tuple[dict, History | SweepResult]:
        """The state at ``step`` placed like ``trainer.state``, and the history up to that step (of the
        trainer's ``history_type``)."""
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), trainer.state
        )
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target), history=ocp.args.JsonRestore()),
        )
        return restored["state"], trainer.history_type.from_dict(restored["history"])
