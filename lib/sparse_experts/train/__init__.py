"""Training: the optimiser and its schedules (:mod:`.optim`), the one training loop :class:`Trainer` (one
run sharded over a mesh, or R copies side by side; :mod:`.trainer`), what a run did (:mod:`.history`) and
its orbax checkpoints (:mod:`.checkpoints`).

Layer: imports :mod:`sparse_experts.parallel` (and the models it trains are passed in), nothing above.
"""

from sparse_experts.train.checkpoints import Checkpoints
from sparse_experts.train.history import History, SweepResult
from sparse_experts.train.optim import (
    AUX_WEIGHTS,
    HYPERPARAMS,
    ON_NONFINITE,
    SCHEDULES,
    TrainConfig,
    cross_entropy,
    hyperparams,
    make_tx,
    schedule_multiplier,
)
from sparse_experts.train.trainer import (
    ATTENTION_METRICS,
    TIMING_METRICS,
    WATCHED,
    Copies,
    NonFiniteError,
    P,
    Trainer,
    stack_batches,
)
