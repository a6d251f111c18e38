"""Run a plan with torch.distributed and measure it beside its prediction.

- `executor.model`: the reference decoder-only transformer built from a `ModelSpec`.
- `executor.parallelize`: DeviceMesh, TP on local shards (DTensor weights), expert parallelism, pipelining,
  FSDP2.
- `executor.check`: refuse a plan that cannot run before any process group starts;
  a fake-backend dry run for per-rank shard shapes and parameter memory.
- `executor.run` (`python -m executor plan.json` under torchrun): training or
  inference steps, and the `RunReport` JSON.
- `executor.launch` (`python -m executor.launch --nproc N plan.json ...`): check, then torchrun.
- `executor.checkpoint`: layout-independent distributed checkpoints (save, find, resume).
- `executor.heal` (`python -m executor.heal plan.json ...`): a rank dies, re-plan for the survivors, resume.
- `executor.loop` (`python -m executor.loop ...`): plan, run the top candidates, calibrate, plan again.

Importing this package does not import torch; the modules do.
"""
