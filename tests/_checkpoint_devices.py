"""Run on 8 fake CPU devices by tests/test_trainer.py: restore a 1-device checkpoint on a mesh with an
'expert' axis, check it, train 2 more steps, save. Prints one JSON object."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import batch_fn, leaves, trainer  # noqa: E402

from sparse_experts import parallel, train  # noqa: E402

root = Path(sys.argv[1])
mesh = parallel.make_mesh({"data": 4, "expert": 2})
t = trainer()
t = train.Trainer(t.model, t.config, seed=t.seed, mesh=mesh)
checkpoints = train.Checkpoints(root / "from1")
t.state, history = checkpoints.restore(t, 3)
saved = np.load(root / "from1.npz")
equal = all(np.array_equal(leaf, saved[f"arr_{i}"]) for i, leaf in enumerate(leaves(t.state)))
wi = t.state["params"]["encoder"]["blocks"][1]["mlp"]["experts"]["wi"]
expert_sharded = "expert" in str(wi.sharding.spec) and len(wi.addressable_shards) == 8
history = t.fit(batch_fn, 5, history=history, progress=False)
out = train.Checkpoints(root / "from8")
out.save(t, history)
np.savez(root / "from8.npz", *leaves(t.state))
print(json.dumps({"restored_equal": bool(equal), "devices": jax.device_count(),
                  "expert_sharded": bool(expert_sharded), "steps_after": t.step}))  # fmt: skip
