"""Command line: plan a model on a cluster and print a readable report.

    python -m planner                                  # built-in default: Llama-3-70B on 4x8xH100, training
    python -m planner --model llama3-8b --cluster 2x8xA100 --batch 256 --seq 4096
    python -m planner --model mixtral-8x7b --cluster 1x8xH200 --infer --prompt 2048 --output 256 --batch 64
    python -m planner --model config.json --cluster cluster.yaml --out plan.json --csv candidates.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hardware_profiles.errors import ParplanError

from .resilience import DEFAULT_STORAGE_GBPS_PER_NODE

DEFAULT_MODEL = "llama3-70b"
DEFAULT_CLUSTER = "4x8xH100"


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m planner", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL,
                    help="catalog name (see --list-models) or a Hugging Face config.json path")
    ap.add_argument("--cluster", default=DEFAULT_CLUSTER,
                    help="'NODESxGPUSxNAME' (e.g. 4x8xH100, 3x4xV100+1x4xT4) or a YAML/JSON cluster file")
    ap.add_argument("--inter-node-gbps", type=float, help="network bandwidth per node, GB/s (overrides defaults)")
    ap.add_argument("--intra-node-gbps", type=float, help="per-GPU bandwidth inside a node, GB/s")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--train", action="store_true", help="plan training (default)")
    mode.add_argument("--infer", action="store_true", help="plan inference")
    ap.add_argument("--batch", type=int, help="training: global batch in sequences (default 512); "
                                              "inference: requests in the batch (default 32)")
    ap.add_argument("--seq", type=int, help="training sequence length (default: the model's)")
    ap.add_argument("--prompt", type=int, default=1024, help="inference prompt tokens")
    ap.add_argument("--output", type=int, default=256, help="inference output tokens")
    ap.add_argument("--dtype", default="bf16", help="bf16 (default), fp16 (V100/T4), fp32, fp8")
    ap.add_argument("--objective", help="training: throughput|cost; inference: latency|ttft|tpot|throughput|cost")
    ap.add_argument("--max-ttft-ms", type=float)
    ap.add_argument("--max-tpot-ms", type=float)
    ap.add_argument("--max-gpus", type=int)
    ap.add_argument("--max-usd-per-hour", type=float)
    ap.add_argument("--memory-headroom", type=float, default=0.0, help="fraction of GPU memory to keep free")
    ap.add_argument("--gpu-mtbf-hours", type=float,
                    help="training: mean hours between failures of one GPU; sets the plan's checkpoint interval")
    ap.add_argument("--storage-gbps-per-node", type=float, default=None,
                    help=f"checkpoint write bandwidth per node, GB/s (default {DEFAULT_STORAGE_GBPS_PER_NODE:g})")
    ap.add_argument("--top", type=int, default=10, help="candidates to list")
    ap.add_argument("--out", help="write the chosen plan (versioned JSON) for the executor")
    ap.add_argument("--csv", help="write every candidate to a CSV file")
    ap.add_argument("--report", help="write a standalone HTML report with plots")
    ap.add_argument("--list-models", action="store_true")
    ap.add_argument("--list-gpus", action="store_true")
    return ap


def _cluster(args: argparse.Namespace):
    from hardware_profiles import Cluster

    spec = args.cluster
    if Path(spec).suffix.lower() in (".yaml", ".yml", ".json"):
        return Cluster.from_file(spec)
    kw = {}
    if args.inter_node_gbps is not None:
        kw["inter_node_gbps"] = args.inter_node_gbps
    if args.intra_node_gbps is not None:
        kw["intra_node_gbps"] = args.intra_node_gbps
    return Cluster.parse(spec, **kw)


def _model(spec: str):
    from costmodel import ModelSpec

    if spec.endswith(".json") or Path(spec).is_dir():
        return ModelSpec.from_hf_config(spec)
    return ModelSpec.from_name(spec)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.list_models:
            from costmodel.catalog import list_models

            print("\n".join(list_models()))
            return 0
        if args.list_gpus:
            from hardware_profiles import all_gpus

            print("\n".join(g.summary() for g in all_gpus()))
            return 0
        import costmodel as cm
        import planner

        model = _model(args.model)
        cluster = _cluster(args)
        if args.infer:
            workload = cm.Inference(prompt_tokens=args.prompt, output_tokens=args.output, batch=args.batch or 32,
                                    dtype=args.dtype)
        else:
            workload = cm.Training(global_batch=args.batch or 512, seq_len=args.seq, dtype=args.dtype)
        constraints = planner.Constraints(
            max_ttft_s=args.max_ttft_ms / 1e3 if args.max_ttft_ms is not None else None,
            max_tpot_s=args.max_tpot_ms / 1e3 if args.max_tpot_ms is not None else None,
            max_gpus=args.max_gpus, max_usd_per_hour=args.max_usd_per_hour, memory_headroom=args.memory_headroom)
        result = planner.plan(model, cluster, workload, objective=args.objective, constraints=constraints)
        print(result.report(top=args.top))
        best = result.best
        if args.gpu_mtbf_hours is not None:
            from .resilience import with_checkpointing

            best, ck = with_checkpointing(best, args.gpu_mtbf_hours,
                                          storage_gbps_per_node=args.storage_gbps_per_node or DEFAULT_STORAGE_GBPS_PER_NODE)
            print(f"\ncheckpoint every {ck.interval_steps} steps ({ck.interval_s / 60:.1f} min): expected "
                  f"{ck.overhead:.1%} of wall time lost to checkpoints and failures (Young's rule: "
                  f"{ck.young_interval_steps} steps, {ck.young_overhead:.1%})")
        if args.out:
            path = best.save(args.out)
            print(f"\nplan written to {path}; run it with: torchrun --nproc-per-node N -m executor {path} --steps 5")
        if args.csv:
            result.candidates.to_csv(args.csv, index=False)
            print(f"candidates written to {args.csv}")
        if args.report:
            from .html import write_html_report

            print(f"report written to {write_html_report(result, args.report)}")
        return 0
    except ParplanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output path that cannot be written (a directory, no permission, disk full)
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
