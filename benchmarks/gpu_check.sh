#!/usr/bin/env bash
# The GPU checks in one call, for a machine with an NVIDIA GPU and JAX (CUDA) but not this project's venv:
#   1. the environment (GPU, jax/flax/optax/numpy versions);
#   2. benchmarks/routing.py at the three shapes, 30 interleaved rounds, with the breakdown (router
#      alone; dispatch -> MLP -> combine under a fixed assignment), the optimised HLO of every program, device
#      time per kernel from a jax.profiler trace, and the backends' gradient agreement at each timed shape;
#   3. the agreement again with full float32 matmuls (the GPU default is TF32), at S=4096 E=8
#      (HIGHEST_ARGS=skip leaves it out; ROUTING_ARGS / HIGHEST_ARGS replace the benchmarks' shape options);
#   4. the routing and MoE tests (tests/test_routing.py, tests/test_moe.py) on the GPU.
# Everything lands in $OUT (default outputs/gpu-check): env.txt, routing_gpu.json/.log, hlo.tgz,
# routing_gpu_highest.json/.log, pytest.log.
#
#   OUT=/tmp/gpu-check bash benchmarks/gpu_check.sh          # PY=python3 by default
set -u
OUT=${OUT:-outputs/gpu-check}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/lib${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
hlo=$(mktemp -d)

{
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.used,memory.total --format=csv
  $PY -c "import jax, flax, optax, numpy; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, 'numpy', numpy.__version__); print(jax.devices())"
} 2>&1 | tee "$OUT/env.txt"

echo "== routing benchmark"
timeout 300 $PY benchmarks/routing.py ${ROUTING_ARGS:---repeats 30} --breakdown --dump-hlo "$hlo/hlo" \
  --profile "$hlo/traces" --out "$OUT/routing_gpu.json" 2>&1 | tee "$OUT/routing_gpu.log"
tar czf "$OUT/hlo.tgz" -C "$hlo" hlo

if [ "${HIGHEST_ARGS:-}" != skip ]; then
  echo "== backend agreement with full float32 matmuls"
  timeout 120 $PY benchmarks/routing.py ${HIGHEST_ARGS:---shapes 4096,8,2,256,1024 --repeats 3} \
    --matmul-precision highest --out "$OUT/routing_gpu_highest.json" 2>&1 | tee "$OUT/routing_gpu_highest.log"
fi

echo "== routing and MoE tests on the GPU"
timeout 240 $PY -m pytest tests/test_routing.py tests/test_moe.py -q -p no:cacheprovider --durations=10 \
  2>&1 | tee "$OUT/pytest.log" | tail -40
