"""Parallelism: the named (data, expert, model) mesh, partition rules and placement (:mod:`.mesh`), and
expert parallelism with all_to_all over the ``expert`` axis (:mod:`.experts`).

Layer: imports nothing of the package (it sits under :mod:`sparse_experts.models`).
"""

from sparse_experts.parallel.experts import EXPERT_AXIS, expert_parallel_apply
from sparse_experts.parallel.mesh import (
    FSDP_RULES,
    TP_RULES,
    create_sharded,
    data_axes,
    make_mesh,
    num_data_shards,
    param_shardings,
    partition_spec_for,
    partition_specs,
    shard_batch,
    shard_model,
)
