"""Training: optimisers and schedules, the sharded, checkpointed :class:`Trainer` and its loop.

Layer: imports :mod:`sparse_experts.parallel` (and the models it trains are passed in), nothing above.
"""

from sparse_experts.train.trainer import (
    AUX_WEIGHTS,
    ON_NONFINITE,
    SCHEDULES,
    TIMING_METRICS,
    Checkpoints,
    History,
    NonFiniteError,
    P,
    SweepResult,
    TrainConfig,
    Trainer,
    create_optimizer,
    cross_entropy,
    eval_step,
    evaluate,
    lr_sweep,
    make_tx,
    schedule_multiplier,
    train,
    train_step,
)
