#!/usr/bin/env bash
# The prepared GPU check of docs/cluster.md: run on a machine with an NVIDIA GPU, in the repository
# root, with reasonzoo installed (pip install -e '.[test,ray,vllm-cuda]'); under 8 minutes.
#
#   bash benchmarks/gpu_check.sh [out_dir]      # writes <out_dir>/gpu_check.log (default: /tmp)
#
# Each check prints one line: PASS, FAIL (with the cause) or SKIP (what is missing). The exit code
# is the number of FAILs. Checks:
#   1. the GPU as torch sees it (name, memory, a bf16/fp32 matmul rate);
#   2. NCCL collectives of the trainer's data-parallel group (reasonzoo.distributed.DataParallel:
#      the gradient all_reduce and the parameter broadcast) on CUDA tensors, one rank per GPU
#      (world size = the GPU count, at most 2), against the sum computed on one device;
#   3. the vLLM engine on CUDA (engine=vllm): the -m vllm tests (generation, stop rules,
#      log-probs against the trainer's forward, weight push);
#   4. launcher=ray with one vLLM engine actor on a GPU: a 2-iteration run of a small model built
#      from config (head size 32, as vLLM's kernels need);
#   5. the trainer on CUDA (train.device=cuda): the -m gpu tests of tests/test_device.py (the lean
#      forward's log-probs and gradients against the CPU, greedy decoding against the CPU, a
#      2-iteration run that resumes on the CPU);
#   6. with 2 or more GPUs: a 2-iteration run on 2 CUDA trainer ranks over NCCL
#      (launcher.trainer_ranks=2 launcher.backend=nccl train.device=cuda), DDP and FSDP2;
#   7. launcher=ray with an engine=torch actor holding the GPU and the trainer on CUDA, 2 iterations.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp}"
mkdir -p "$out"
log="$out/gpu_check.log"
: > "$log"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 WANDB_MODE=offline
fails=0
say() { echo "$*" | tee -a "$log"; }
run() {  # run <name> <timeout s> <command...>: PASS / FAIL line, output in the log
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  if timeout "$limit" "$@" >>"$log" 2>&1; then
    say "PASS $name ($((SECONDS - t0)) s)"
  else
    say "FAIL $name ($((SECONDS - t0)) s, exit $?; see $log)"
    fails=$((fails + 1))
  fi
}

if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>>"$log"; then
  say "SKIP all: torch sees no CUDA device on this machine"
  exit 0
fi
ngpu=$(python3 -c "import torch; print(torch.cuda.device_count())")

run "1 gpu: torch CUDA and a matmul" 120 python3 - <<'EOF'
import time, torch
p = torch.cuda.get_device_properties(0)
print(f"{torch.cuda.get_device_name(0)}: {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")
for dtype in (torch.float32, torch.bfloat16):
    a = torch.randn(8192, 8192, device="cuda", dtype=dtype); b = torch.randn_like(a)
    for _ in range(3): a @ b
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(10): a @ b
    torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 10
    print(f"{dtype}: {2 * 8192**3 / dt / 1e12:.0f} TFLOP/s")
EOF

if python3 -c "import reasonzoo" 2>>"$log"; then
  run "2 nccl: DataParallel all_reduce + broadcast on CUDA ($((ngpu < 2 ? ngpu : 2)) rank(s))" 180 python3 - "$ngpu" <<'EOF'
import os, sys, tempfile, torch, torch.multiprocessing as mp
from reasonzoo.distributed import DataParallel

def rank_main(rank, world, path):
    torch.cuda.set_device(rank)
    torch.distributed.init_process_group("nccl", init_method=f"file://{path}", rank=rank, world_size=world)
    dp = DataParallel(rank, world)
    torch.manual_seed(rank)
    ps = [torch.nn.Parameter(torch.randn(1000, 64, device="cuda")) for _ in range(3)]
    for p in ps:
        p.grad = torch.full_like(p, float(rank + 1))
    dp.all_reduce_grads(ps)
    want = sum(range(1, world + 1))
    assert all(torch.all(p.grad == want) for p in ps), "all_reduce_grads: wrong sum"
    dp.broadcast_params(ps)
    torch.manual_seed(0)
    ref = [torch.randn(1000, 64, device="cuda") for _ in range(3)]
    assert all(torch.equal(p.data, r) for p, r in zip(ps, ref)), "broadcast_params: not rank 0's values"
    torch.distributed.destroy_process_group()
    print(f"rank {rank}/{world}: all_reduce and broadcast OK")

world = min(int(sys.argv[1]), 2)
path = tempfile.mktemp()
mp.spawn(rank_main, args=(world, path), nprocs=world)
EOF
else
  say "SKIP 2 nccl: reasonzoo not installed (pip install -e '.[test,ray,vllm-cuda]')"
fi

if python3 -c "import vllm" 2>>"$log"; then
  run "3 vllm: engine=vllm tests on CUDA" 300 python3 -m pytest -q -m vllm tests/
else
  say "SKIP 3 vllm: vllm not installed (pip install -e '.[vllm-cuda]')"
fi

if python3 -c "import vllm, ray" 2>>"$log"; then
  run "4 ray: launcher=ray, one vLLM engine actor on a GPU, 2 iterations" 300 \
    reasonzoo-train launcher=ray launcher.engines=1 launcher.engine_gpus=1 engine=vllm \
      model.tiny.hidden_size=64 model.tiny.num_heads=2 iterations=2 logger=none progress=false \
      eval.problems_per_difficulty=8 warmup.steps=50 "hydra.run.dir=$out/ray_vllm_run"
else
  say "SKIP 4 ray+vllm: ray or vllm not installed (pip install -e '.[ray,vllm-cuda]')"
fi

run "5 trainer on CUDA: pytest -m gpu tests/test_device.py" 240 python3 -m pytest -q -m gpu tests/test_device.py

if [ "$ngpu" -ge 2 ]; then
  for strategy in ddp fsdp2; do
    run "6 two CUDA trainer ranks over NCCL, launcher.strategy=$strategy, 2 iterations" 240 \
      reasonzoo-train launcher.trainer_ranks=2 launcher.backend=nccl launcher.strategy=$strategy train.device=cuda \
        iterations=2 logger=none progress=false eval.problems_per_difficulty=8 warmup.steps=50 \
        "hydra.run.dir=$out/nccl_${strategy}_run"
  done
else
  say "SKIP 6 two CUDA trainer ranks: this machine has $ngpu GPU"
fi
if python3 -c "import ray" 2>>"$log"; then
  run "7 ray: an engine=torch actor on the GPU, train.device=cuda, 2 iterations" 240 \
    reasonzoo-train launcher=ray launcher.engines=1 launcher.engine_gpus=0.5 train.device=cuda \
      iterations=2 logger=none progress=false eval.problems_per_difficulty=8 warmup.steps=50 "hydra.run.dir=$out/ray_torch_run"
else
  say "SKIP 7 ray: ray not installed (pip install -e '.[ray]')"
fi

say "gpu_check: $fails failure(s); log in $log"
exit "$fails"
