"""Parallelism: the named (data, expert, model) mesh, partition rules and placement (:mod:`.mesh`), expert
parallelism with all_to_all over the ``expert`` axis (:mod:`.experts`), several processes joined into one
run with ``jax.distributed`` (:mod:`.processes`), and a launcher of such runs on one machine (:mod:`.launch`,
``python -m sparse_experts.parallel.launch``; imported by name, not re-exported here).

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
    process_rows,
    put,
    shard_batch,
    shard_model,
    to_host,
)
from sparse_experts.parallel.processes import ProcessInfo, initialize
