"""Orbax checkpoints of a :class:`~sparse_experts.train.Trainer`'s state and its history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from sparse_experts.train.history import History, SweepResult

_METADATA = "_CHECKPOINT_METADATA"  # orbax writes it when a step's folder is finished


class Checkpoints:
    """Orbax checkpoints of a :class:`~sparse_experts.train.Trainer`'s state and its :class:`History` (or
    :class:`SweepResult` for R copies), one folder per step (``<directory>/<step>/``), the two latest kept.
    Saving is synchronous and atomic (orbax writes to a temporary folder and renames it), so an interrupted
    save never shows up as a step.

    Restoring places every array by the *restoring* trainer's shardings: a checkpoint written on 8 devices
    restores on 1, and the reverse; written by 2 processes, it restores on 1, and the reverse
    (tests/test_scale_out.py). With several processes every process calls :meth:`save` and :meth:`restore`
    together, each writing its own shards, and ``directory`` must be storage every process reaches (a shared
    file system or a bucket). A save cut short leaves orbax's temporary folder or an incomplete step folder:
    neither is listed (:meth:`all_steps`), so neither is ever restored.
    """

    def __init__(self, directory, max_to_keep: int = 2):
        text = str(directory)  # a bucket (gs://...) stays a URL (orbax reads it); a local folder: absolute
        self.directory = text if "://" in text else Path(text).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete step (:meth:`all_steps`), or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def all_steps(self) -> list[int]:
        """The steps whose folder is complete: orbax's metadata file and both items (state, history) are in
        it. A folder cut short (copied in part, or written in place on storage without atomic renames) is
        left out, never restored."""
        self.manager.reload()
        return sorted(step for step in self.manager.all_steps() if self._complete(step))

    def _complete(self, step: int) -> bool:
        folder = self.manager.directory / str(step)
        return all((folder / name).exists() for name in (_METADATA, "state", "history"))

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
