"""Training: the optimiser and its schedules (:mod:`.optim`), the one training loop :class:`Trainer` (one
run sharded over a mesh, or R copies side by side; :mod:`.trainer`), what a run did (:mod:`.history`) and
its orbax checkpoints (:mod:`.checkpoints`).

Layer: imports :mod:`sparse_experts.parallel` and :mod:`sparse_experts.routing` (the models it trains are
passed in), nothing above.
"""

from sparse_experts.train.checkpoints import Checkpoints
from sparse_experts.train.history import History, SweepResult
from sparse_experts.train.optim import TrainConfig, cross_entropy, make_tx, schedule_multiplier
from sparse_experts.train.trainer import TIMING_METRICS, Copies, NonFiniteError, Trainer, stack_batches
