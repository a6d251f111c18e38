"""Reliability: fuzz every public entry point, properties the cost model and planner must have, plan-file
versions.

Fuzzing. For ANY input an entry point returns a sound result or raises one of the project's typed errors
(subclasses of hardware_profiles.errors.ParplanError) with a non-empty message: never a bare KeyError,
TypeError, ValueError, ZeroDivisionError, IndexError or RecursionError, and never a hang (every call runs
under a wall-clock alarm). Inputs mix valid and invalid values: catalog names and misspellings, random
text, zero/negative/huge/float/bool/None numbers, nested garbage, mutated valid HF configs, cluster files,
model dicts and plan files, truncated and bit-flipped files. A call that succeeds is checked too: what it
returns must survive its own round trip (to_dict/from_dict, to_json/from_json) and hold finite numbers.
`bench/fuzz.py` runs the same targets with many more examples and counts the outcomes.

The targets, their input strategies and `classify` live here so the benchmark runs exactly what the tests
run.
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import costmodel as cm
import hardware_profiles as hp
import planner
from costmodel.catalog import list_models, model_aliases
from costmodel.model import ModelSpec
from costmodel.params import CostParams
from costmodel.strategy import Strategy
from costmodel.workload import Inference, Training, workload_from_dict
from hardware_profiles import Cluster, Node, get_gpu
from hardware_profiles.errors import ParplanError
from planner import NoFeasiblePlanError, Plan, PlanFileError
from planner.__main__ import main as cli_main
from planner.plan import SCHEMA_VERSION, SUPPORTED_VERSIONS

REPO = Path(__file__).resolve().parent.parent
HF_DIR = Path(__file__).parent / "data" / "hf_configs"
CALL_LIMIT_S = 60.0  # one call; generous for a loaded 2-core machine (the inputs are small: calls take < 1 s)
PARAMS = CostParams()  # fixed cost constants: a calibration file on disk cannot change what is checked


# ----------------------------------------------------------------------------------------------
# Running one call and classifying what came out
# ----------------------------------------------------------------------------------------------
class _Hang(BaseException):
    """Raised by the alarm; a BaseException so no `except Exception` in the code under test swallows it."""


class UnknownKeyword(Exception):
    """Python refused a keyword the function does not have (TypeError before any project code runs): the
    caller's mistake, reported the way Python reports it for every function."""


class WrongResult(AssertionError):
    """A call returned, but what it returned is not sound (a non-finite time, a failed round trip...)."""


@contextlib.contextmanager
def _alarm(seconds: float):
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield
        return

    def on_alarm(signum, frame):
        raise _Hang(f"the call ran longer than {seconds:.0f} s")

    # pytest-timeout may hold the same timer: put back what is left of it afterwards
    old = signal.signal(signal.SIGALRM, on_alarm)
    t0 = time.monotonic()
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if old_delay > 0:
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - t0), 1e-3), old_interval)


@dataclass(frozen=True)
class Outcome:
    label: str  # "ok" (or "ok:<detail>"), "typed:<ErrorName>", "python:unknown-keyword", or a failure:
    # "UNTYPED:<Name>", "HANG", "EMPTY-MESSAGE:<Name>", "WRONG-RESULT"
    error: BaseException | None = None

    @property
    def passed(self) -> bool:
        return self.label.startswith(("ok", "typed:")) or self.label == "python:unknown-keyword"


def classify(call: Callable[[], Any], limit_s: float = CALL_LIMIT_S) -> Outcome:
    """Run `call` under the alarm and say what came out."""
    try:
        with _alarm(limit_s):
            detail = call()
    except ParplanError as exc:
        if not str(exc).strip():
            return Outcome(f"EMPTY-MESSAGE:{type(exc).__name__}", exc)
        return Outcome(f"typed:{type(exc).__name__}", exc)
    except WrongResult as exc:
        return Outcome("WRONG-RESULT", exc)
    except UnknownKeyword as exc:
        return Outcome("python:unknown-keyword", exc)
    except _Hang as exc:
        return Outcome("HANG", exc)
    except Exception as exc:  # noqa: BLE001 - anything else is what the fuzzing looks for
        return Outcome(f"UNTYPED:{type(exc).__name__}", exc)
    return Outcome("ok" if detail is None else f"ok:{detail}")


def check_outcome(call: Callable[[], Any]) -> None:
    out = classify(call)
    if not out.passed:
        raise AssertionError(f"{out.label}: {out.error!r}") from out.error


def _finite(label: str, value: Any, positive: bool = False) -> None:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            (positive and not value > 0) or value < 0:
        raise WrongResult(f"{label} = {value!r}")


# ----------------------------------------------------------------------------------------------
# Building blocks for inputs
# ----------------------------------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
SPECIAL_INTS = [0, -1, 1, 2, 3, 7, 72, 73, 2**24, 2**24 + 1, 2**31, 2**63, 10**30, -(10**30)]
INTS = st.one_of(st.integers(-2, 9), st.sampled_from(SPECIAL_INTS), st.integers(-(10**40), 10**40))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -0.0, 0.5, 1.0, 2.0, 1e-300, 1e300, NAN, INF, -INF]))
NUMBERS = st.one_of(INTS, FLOATS, st.booleans(), st.none())
WORDS = ["", " ", "nan", "inf", "-1", "0", "1e400", "Infinity", "\x00", "8xH100", "H100", "rope", "bf16", "fp16",
         "none", "training", "inference", "throughput", "1f1b", "interleaved", "full", "dp", "tp", "llama",
         "gpt2", "\u00e9\u00e8", "\ud7ff", "config.json", "../x", "{", "[]"]
TEXT = st.one_of(st.text(max_size=16), st.sampled_from(WORDS))
SCALARS = st.one_of(NUMBERS, TEXT, st.binary(max_size=6))
GARBAGE = st.recursive(SCALARS, lambda c: st.one_of(st.lists(c, max_size=3), st.tuples(c, c),
                                                     st.dictionaries(TEXT, c, max_size=3)), max_leaves=8)
# what a JSON or YAML document can hold (ints bounded: json refuses to print more than 4300 digits)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(10**40), 10**40), st.sampled_from(SPECIAL_INTS),
                         FLOATS, TEXT)
JSON_GARBAGE = st.recursive(JSON_SCALARS, lambda c: st.one_of(st.lists(c, max_size=3),
                                                               st.dictionaries(TEXT, c, max_size=3)), max_leaves=8)


def _gpu_names() -> list[str]:
    return sorted({n for g in hp.all_gpus() for n in (g.name, *g.aliases)})


def _model_names() -> list[str]:
    return sorted({n for m in list_models() for n in (m, *model_aliases(m))})


@st.composite
def misspelled(draw, names: list[str]) -> str:
    """A known name, sometimes with its case changed, a character dropped, doubled or replaced."""
    name = draw(st.sampled_from(names))
    op = draw(st.sampled_from(["keep", "keep", "upper", "lower", "drop", "double", "replace", "pad"]))
    if op == "upper":
        return name.upper()
    if op == "lower":
        return name.lower()
    if op == "pad":
        return f" {name}\t"
    if not name:
        return name
    i = draw(st.integers(0, len(name) - 1))
    if op == "drop":
        return name[:i] + name[i + 1:]
    if op == "double":
        return name[:i] + name[i] + name[i:]
    if op == "replace":
        return name[:i] + draw(st.characters(codec="utf-8")) + name[i + 1:]
    return name


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys/indices) inside a JSON-like document, the root included."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


def _nudge(draw, value: Any) -> Any:
    """A value near the original: numbers off by one, scaled, negated or made float; strings edited."""
    if isinstance(value, bool):
        return draw(st.sampled_from([not value, int(value), str(value).lower(), None]))
    if isinstance(value, int):
        return draw(st.sampled_from([value + 1, value - 1, 0, -value, value * 2, value * 10**9, float(value),
                                     value + 0.5, str(value)]))
    if isinstance(value, float):
        return draw(st.sampled_from([value * 2, -value, 0.0, NAN, INF, int(value) if math.isfinite(value) else 0,
                                     str(value)]))
    if isinstance(value, str):
        return draw(st.sampled_from([value.upper(), value[:-1], value + value, "", value + "x", 3]))
    if isinstance(value, list):
        return draw(st.sampled_from([value[:-1], value + value[-1:], [], value[::-1], {}]))
    if isinstance(value, dict):
        return draw(st.sampled_from([{}, list(value.values()), dict(list(value.items())[:-1])]))
    return draw(JSON_GARBAGE)


@st.composite
def mutated(draw, doc: Any, max_mutations: int = 3) -> Any:
    """A JSON-like document with 1..max_mutations random edits: replace a value with garbage or a near
    value, delete a key or list item, add an unknown key."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, max_mutations))):
        path = draw(st.sampled_from(_paths(doc)))
        op = draw(st.sampled_from(["nudge", "nudge", "replace", "delete", "insert"]))
        if not path:
            if op in ("replace", "delete"):
                doc = draw(JSON_GARBAGE)
            continue
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        if op == "nudge":
            parent[key] = _nudge(draw, parent[key])
        elif op == "replace":
            parent[key] = draw(JSON_GARBAGE)
        elif op == "delete":
            del parent[key]
        elif isinstance(parent[key], dict):
            parent[key][draw(TEXT)] = draw(JSON_GARBAGE)
        elif isinstance(parent[key], list):
            parent[key].insert(draw(st.integers(0, len(parent[key]))), draw(JSON_GARBAGE))
        else:
            parent[key] = draw(JSON_GARBAGE)
    return doc


@st.composite
def damaged_bytes(draw, data: bytes) -> bytes:
    """The bytes of a valid file truncated, bit-flipped (1..3 bits), or with a chunk cut out."""
    op = draw(st.sampled_from(["truncate", "flip", "flip", "cut", "empty"]))
    if op == "empty" or not data:
        return b""
    if op == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if op == "cut":
        a = draw(st.integers(0, len(data) - 1))
        return data[:a] + data[a + draw(st.integers(1, 64)):]
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(out) - 1))
        out[i] ^= 1 << draw(st.integers(0, 7))
    return bytes(out)


@lru_cache(maxsize=None)
def _scratch_dir() -> Path:
    """One scratch directory for the files the fuzzing writes (hypothesis forbids function-scoped fixtures),
    removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="parplan-fuzz-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


_counter = iter(range(10**12))


def _scratch_file(content: bytes, suffix: str) -> Path:
    path = _scratch_dir() / f"f{next(_counter)}{suffix}"
    path.write_bytes(content)
    return path


@contextlib.contextmanager
def _in_scratch_cwd():
    """Run with the scratch directory as the working directory, so relative paths a fuzzed command line
    writes to never land in the repository."""
    old = os.getcwd()
    os.chdir(_scratch_dir())
    try:
        yield
    finally:
        os.chdir(old)


# ----------------------------------------------------------------------------------------------
# Valid documents that the mutations start from
# ----------------------------------------------------------------------------------------------
SMALL_CLUSTERS = ["1x1xH100", "1x2xA100", "1x4xL4", "2x2xH100", "1x2xA100+1x2xH100", "1x2xV100+1x2xT4", "2x1xT4",
                  "1x3xA10G", "2x4xH100", "1x8xH200", "1x1xA100+1x1xL4+1x1xH100", "2x8xH100"]
SMALL_MODELS = ["tiny-llama", "tiny-moe", "tiny-gpt2", "gpt2", "llama-1.5b"]


@lru_cache(maxsize=None)
def hf_configs() -> tuple[dict, ...]:
    return tuple(json.loads(p.read_text()) for p in sorted(HF_DIR.glob("*.json")))


@lru_cache(maxsize=None)
def cluster_docs() -> tuple[dict, ...]:
    docs = [Cluster.parse(s).to_dict() for s in ("2x4xH100", "1x2xV100+1x2xT4", "1x1xA100+1x1xL4+1x1xH100")]
    docs += [
        {"nodes": [{"gpu": "V100", "gpus_per_node": 4, "count": 3}, {"gpu": "T4", "gpus_per_node": 4}],
         "network": {"kind": "ethernet", "bandwidth_gbps": 1.25}},
        {"nodes": [{"gpu": "H100", "gpus_per_node": 8, "count": 2, "fabric": {"kind": "nvswitch",
                                                                         "bandwidth_gbps": 450}}]},
        {"spec": "2x8xH100", "inter_node_gbps": 25.0},
    ]
    return tuple(docs)


@lru_cache(maxsize=None)
def model_docs() -> tuple[dict, ...]:
    return tuple(ModelSpec.from_name(n).to_dict() for n in ("tiny-llama", "tiny-moe", "tiny-gpt2"))


@lru_cache(maxsize=None)
def strategy_docs() -> tuple[dict, ...]:
    return (Strategy(tp=2, pp=2, dp=2, micro_batch=2, stages=(0, 2, 6)).to_dict(),
            Strategy(tp=4, pp=2, dp=1, schedule="interleaved", virtual_stages=2, recompute="full",
                     sequence_parallel=True).to_dict(),
            Strategy(tp=2, dp=4, ep=2, ep_mode="dp", zero=3, placement=(1, 0, 2, 3, 4, 5, 6, 7)).to_dict())


@lru_cache(maxsize=None)
def plan_texts() -> tuple[str, ...]:
    """Real plan files: training on a mixed cluster, MoE inference, a hand-placed pipeline."""
    mixed = planner.plan("tiny-gpt2", "1x2xA100+1x2xH100", Training(global_batch=4), params=PARAMS,
                         profiles=None).best
    infer = planner.plan("tiny-moe", "1x4xH100", Inference(prompt_tokens=64, output_tokens=8, batch=4),
                         params=PARAMS, profiles=None).best
    staged = Plan.from_strategy("tiny-llama", "1x4xA100", Strategy(tp=2, pp=2, micro_batch=1, stages=(0, 3, 6)),
                                Training(global_batch=4), params=PARAMS, profiles=None)
    return tuple(p.to_json() for p in (mixed, infer, staged))


# ----------------------------------------------------------------------------------------------
# Inputs of each entry point
# ----------------------------------------------------------------------------------------------
GPU_NAMES = st.one_of(misspelled(_gpu_names()), TEXT)
MODEL_NAMES = st.one_of(misspelled(_model_names()), TEXT)
COUNTS = st.one_of(st.integers(0, 16), st.sampled_from([-1, 72, 73, 10**7, 10**12, "0012", "9" * 30, "1e3", "2.5",
                                                        "", " "]))


@st.composite
def cluster_strings(draw) -> str:
    if draw(st.integers(0, 7)) == 0:
        return draw(TEXT)
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        nums = draw(st.lists(COUNTS, max_size=3))
        sep = draw(st.sampled_from(["x", "x", "x", "X", " x ", "*", ""]))
        parts.append(sep.join([*map(str, nums), draw(GPU_NAMES)]))
    return draw(st.sampled_from(["+", "+", " + ", ",", "++"])).join(parts)


PARSE_OPTIONS = ["inter_node_gbps", "inter_node_gbps_per_gpu", "intra_node_gbps", "intra_node_kind", "network",
                 "inter_node_latency_s", "intra_node_latency_s"]
OPTION_VALUES = st.one_of(NUMBERS, TEXT, st.sampled_from(["nvswitch", "nvlink", "pcie", "infiniband", "ethernet",
                                                          "roce", "none", "loopback"]), GARBAGE)


def _rarely(strategy, other):
    """`strategy` about four times in five, else `other` (one_of alone leans towards its later branches)."""
    return st.sampled_from([True, True, True, True, False]).flatmap(lambda common: strategy if common else other)


def cluster_parse_inputs():
    spec = st.one_of(cluster_strings(), st.sampled_from(SMALL_CLUSTERS), GARBAGE)
    options = _rarely(st.dictionaries(st.sampled_from(PARSE_OPTIONS), OPTION_VALUES, max_size=3),
                      st.dictionaries(st.sampled_from(PARSE_OPTIONS + ["bandwidth", "nodes"]), OPTION_VALUES,
                                      min_size=1, max_size=3))
    return st.tuples(spec, options)


def cluster_dict_inputs():
    return st.one_of(st.sampled_from(cluster_docs()).flatmap(mutated), st.sampled_from(cluster_docs()), GARBAGE)


@st.composite
def file_inputs(draw, docs, suffixes: list[str]):
    """(path-like or garbage): a file holding a (mutated) document as JSON or YAML, damaged bytes, random
    bytes; or a directory, a missing path, something that is not a path."""
    kind = draw(st.sampled_from(["doc", "doc", "doc", "damaged", "random", "dir", "missing", "not-a-path"]))
    suffix = draw(st.sampled_from(suffixes))
    if kind == "dir":
        return _scratch_dir()
    if kind == "missing":
        return _scratch_dir() / f"missing-{draw(st.integers(0, 99))}{suffix}"
    if kind == "not-a-path":
        return draw(st.one_of(NUMBERS, st.binary(max_size=4), st.lists(TEXT, max_size=2)))
    doc = draw(st.sampled_from(docs))
    doc = draw(mutated(doc)) if draw(st.booleans()) else doc
    text = yaml.safe_dump(doc) if suffix in (".yaml", ".yml") else json.dumps(doc)
    data = text.encode()
    if kind == "damaged":
        data = draw(damaged_bytes(data))
    elif kind == "random":
        data = draw(st.binary(max_size=64))
    return _scratch_file(data, suffix)


def _dir_holding(text: str) -> Path:
    d = _scratch_dir() / f"d{next(_counter)}"
    d.mkdir()
    (d / "config.json").write_text(text)
    return d


def hf_inputs():
    configs = st.sampled_from(hf_configs())
    config = st.one_of(
        configs, configs.flatmap(mutated),
        configs.flatmap(mutated).map(json.dumps),  # JSON text
        file_inputs(hf_configs(), [".json", "", ".txt"]),
        configs.flatmap(mutated).map(lambda d: _dir_holding(json.dumps(d))),  # a directory holding config.json
        GARBAGE)
    kwargs = st.fixed_dictionaries({}, optional={"seq_len": st.one_of(NUMBERS, TEXT), "name": st.one_of(TEXT,
                                                                                                       NUMBERS)})
    return st.tuples(config, kwargs)


def model_dict_inputs():
    return st.one_of(st.sampled_from(model_docs()).flatmap(mutated), GARBAGE)


STRATEGY_FIELDS = {
    "tp": _rarely(st.sampled_from([1, 2, 4, 8]), NUMBERS), "pp": _rarely(st.sampled_from([1, 2, 3]), NUMBERS),
    "dp": _rarely(st.sampled_from([1, 2, 4]), NUMBERS), "ep": _rarely(st.sampled_from([1, 2]), NUMBERS),
    "micro_batch": _rarely(st.sampled_from([1, 2]), NUMBERS),
    "schedule": _rarely(st.sampled_from(["gpipe", "1f1b", "interleaved"]), st.one_of(TEXT, GARBAGE)),
    "virtual_stages": _rarely(st.sampled_from([1, 2]), NUMBERS),
    "recompute": _rarely(st.sampled_from(["none", "selective", "full"]), TEXT),
    "sequence_parallel": _rarely(st.booleans(), st.one_of(NUMBERS, TEXT)),
    "zero": _rarely(st.sampled_from([0, 1, 2, 3]), st.one_of(NUMBERS, TEXT)),
    "stages": _rarely(st.one_of(st.none(), st.lists(st.integers(-1, 8), max_size=4)), GARBAGE),
    "ep_mode": _rarely(st.sampled_from(["dp", "tp"]), st.one_of(TEXT, GARBAGE)),
    "placement": _rarely(st.one_of(st.none(), st.permutations(range(4))), st.one_of(st.lists(INTS, max_size=4),
                                                                                     GARBAGE)),
}


def strategy_kwargs():
    return _rarely(st.fixed_dictionaries({}, optional=STRATEGY_FIELDS),
                   st.fixed_dictionaries({"bogus": GARBAGE}, optional=STRATEGY_FIELDS))


def strategy_dict_inputs():
    return st.one_of(st.sampled_from(strategy_docs()).flatmap(mutated), strategy_kwargs(), GARBAGE)


WORKLOAD_INTS = _rarely(st.integers(1, 64), st.one_of(NUMBERS, TEXT))
DTYPES = _rarely(st.sampled_from(["bf16", "fp16", "fp32", "fp8", "tf32", "int8", "float16", "torch.bfloat16"]),
                 st.one_of(TEXT, NUMBERS))


def _maybe_bogus(required: dict, optional: dict):
    return _rarely(st.fixed_dictionaries(required, optional=optional),
                   st.fixed_dictionaries({**required, "bogus": NUMBERS}, optional=optional))


def training_kwargs():
    return _maybe_bogus({"global_batch": WORKLOAD_INTS}, {
        "seq_len": st.one_of(st.none(), WORKLOAD_INTS), "dtype": DTYPES, "grad_dtype": st.one_of(st.none(), DTYPES),
        "optimizer": _rarely(st.sampled_from(["adam", "adamw", "sgd"]), st.one_of(TEXT, GARBAGE))})


def inference_kwargs():
    return _maybe_bogus({"prompt_tokens": WORKLOAD_INTS, "output_tokens": WORKLOAD_INTS}, {
        "batch": WORKLOAD_INTS, "dtype": DTYPES, "kv_dtype": st.one_of(st.none(), DTYPES)})


@st.composite
def small_decoder_kwargs(draw) -> dict:
    """Arguments of ModelSpec.decoder: mostly a small valid model, sometimes a broken one."""
    heads = draw(st.sampled_from([1, 2, 4, 8]))
    kw = dict(num_layers=draw(st.integers(1, 4)), hidden=heads * draw(st.sampled_from([8, 16, 32])), num_heads=heads,
              num_kv_heads=draw(st.sampled_from([d for d in (1, 2, 4, 8) if heads % d == 0])),
              vocab=draw(st.integers(16, 4096)), seq_len=draw(st.sampled_from([16, 64, 256])),
              gated_mlp=draw(st.booleans()), tie_embeddings=draw(st.booleans()))
    if draw(st.booleans()):
        e = draw(st.sampled_from([2, 4, 8]))
        kw.update(num_experts=e, top_k=draw(st.integers(1, e)), expert_ffn_hidden=draw(st.sampled_from([16, 48, 64])))
        if draw(st.booleans()):
            kw.update(moe_layer_interval=draw(st.integers(1, 3)), first_dense_layers=draw(st.integers(0, 2)))
    else:
        kw.update(ffn_hidden=draw(st.sampled_from([16, 48, 64, 96, 200])))
    if draw(st.integers(0, 5)) == 0:  # break one argument
        key = draw(st.sampled_from(sorted(kw)))
        kw[key] = draw(st.one_of(NUMBERS, TEXT))
    return kw


def _factorizations(n: int) -> list[tuple[int, int, int]]:
    return [(t, p, n // t // p) for t in range(1, n + 1) if n % t == 0
            for p in range(1, n // t + 1) if (n // t) % p == 0]


@st.composite
def estimate_inputs(draw) -> dict:
    """A model (name or small decoder), a small cluster, a strategy that usually multiplies out to the
    cluster's GPU count, and a workload: each either valid or broken."""
    model = draw(_rarely(st.one_of(st.sampled_from(SMALL_MODELS + ["llama-3-405b", "mixtral-8x7b", "deepseek-v3"]),
                                   small_decoder_kwargs()), MODEL_NAMES))
    spec = draw(_rarely(st.sampled_from(SMALL_CLUSTERS), cluster_strings()))
    try:
        n = Cluster.parse(spec).num_gpus
    except ParplanError:
        n = 8
    strategy = draw(strategy_kwargs())
    if n <= 16 and draw(st.integers(0, 5)):
        tp, pp, dp = draw(st.sampled_from(_factorizations(n)))
        strategy.update(tp=tp, pp=pp, dp=dp)
        for key in ("stages", "placement", "ep", "virtual_stages", "schedule", "micro_batch", "ep_mode", "zero",
                    "sequence_parallel"):
            if draw(st.sampled_from([True, True, True, False])):
                strategy.pop(key, None)
    workload = draw(st.one_of(training_kwargs().map(lambda k: ("training", k)),
                              inference_kwargs().map(lambda k: ("inference", k))))
    return {"model": model, "cluster": spec, "strategy": strategy, "workload": workload}


CONSTRAINT_VALUES = st.one_of(st.none(), st.integers(-2, 32), st.floats(allow_nan=True, allow_infinity=True),
                              st.sampled_from([0, 0.0, 0.1, 0.99, 1.0, 1e-9]))
CONSTRAINT_KEYS = ["max_ttft_s", "max_tpot_s", "max_gpus", "max_usd_per_hour", "memory_headroom", "max_latency_s"]
OBJECTIVES = st.one_of(st.none(), st.sampled_from(["throughput", "cost", "latency", "ttft", "tpot", "fastest", ""]),
                       GARBAGE)


@st.composite
def plan_inputs(draw) -> dict:
    """Small problems (<= 16 GPUs, <= 4 blocks or a small catalog model, small batches) so plan() stays fast."""
    model = draw(_rarely(st.one_of(st.sampled_from(SMALL_MODELS), small_decoder_kwargs()), MODEL_NAMES))
    spec = draw(_rarely(st.sampled_from(SMALL_CLUSTERS),
                        st.one_of(st.sampled_from(["0x8xH100", "1x8xH1000", "1x100xH100"]), GARBAGE)))
    dtype = _rarely(st.sampled_from(["bf16", "fp16"]), st.sampled_from(["fp32", "fp8", "int8"]))
    if draw(st.booleans()):
        workload = ("training", draw(st.fixed_dictionaries(
            {"global_batch": _rarely(st.integers(1, 64), NUMBERS)},
            optional={"seq_len": _rarely(st.one_of(st.none(), st.sampled_from([16, 64, 512])), NUMBERS),
                      "dtype": dtype})))
    else:
        workload = ("inference", draw(st.fixed_dictionaries(
            {"prompt_tokens": _rarely(st.integers(1, 512), NUMBERS), "output_tokens": st.integers(1, 64)},
            optional={"batch": _rarely(st.integers(1, 16), NUMBERS), "dtype": dtype})))
    constraints = draw(st.dictionaries(st.sampled_from(CONSTRAINT_KEYS), _rarely(CONSTRAINT_VALUES, GARBAGE),
                                       max_size=2))
    objective = draw(_rarely(st.sampled_from([None, "throughput", "cost", "latency", "ttft", "tpot"]), OBJECTIVES))
    return {"model": model, "cluster": spec, "workload": workload, "objective": objective,
            "constraints": constraints}


def plan_text_inputs():
    texts = st.sampled_from(plan_texts())
    return st.one_of(
        texts,
        texts.flatmap(lambda t: mutated(json.loads(t))).map(json.dumps),
        # a hand edit: the checksum removed, so the edited sections themselves are read
        texts.flatmap(lambda t: mutated({k: v for k, v in json.loads(t).items() if k != "sha256"})).map(json.dumps),
        texts.flatmap(lambda t: damaged_bytes(t.encode())),
        texts.flatmap(lambda t: damaged_bytes(t.encode())).map(lambda b: b.decode("utf-8", "replace")),
        st.integers(1, 200000).map(lambda d: "[" * d), GARBAGE)


@lru_cache(maxsize=None)
def plan_docs() -> tuple[dict, ...]:
    return tuple(json.loads(t) for t in plan_texts())


def plan_file_inputs():
    return st.one_of(file_inputs(plan_docs(), [".json"]),
                     st.sampled_from(plan_texts()).flatmap(lambda t: damaged_bytes(t.encode())).map(
                         lambda b: _scratch_file(b, ".json")))


CLI_FLAGS = ["--model", "--cluster", "--inter-node-gbps", "--intra-node-gbps", "--train", "--infer", "--batch", "--seq",
             "--prompt", "--output", "--dtype", "--objective", "--max-ttft-ms", "--max-tpot-ms", "--max-gpus",
             "--max-usd-per-hour", "--memory-headroom", "--top", "--out", "--csv", "--report"]
CLI_RARE_FLAGS = ["--list-models", "--list-gpus", "--help", "--bogus", "-x"]
CLI_NUMBERS = _rarely(st.sampled_from(["1", "2", "4", "8", "16", "64", "0.1", "0.5", "100"]),
                      st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e9", "abc", "", "99999999999999999999"]))


@st.composite
def cli_inputs(draw) -> list[str]:
    """argv: always a small model and cluster (unless a flag is fuzzed to something else), then random flags."""
    argv = ["--model", draw(_rarely(st.sampled_from(SMALL_MODELS + [str(HF_DIR / "gpt2.json")]), TEXT)),
            "--cluster", draw(_rarely(st.sampled_from(SMALL_CLUSTERS[:6]), TEXT)),
            "--batch", draw(_rarely(st.sampled_from(["1", "2", "4", "8"]), CLI_NUMBERS))]
    for _ in range(draw(st.integers(0, 4))):
        flag = draw(_rarely(st.sampled_from(CLI_FLAGS), st.sampled_from(CLI_RARE_FLAGS)))
        if flag in ("--train", "--infer", *CLI_RARE_FLAGS):
            argv.append(flag)
            continue
        if flag in ("--out", "--csv"):
            value = draw(_rarely(st.sampled_from(["plan.json", "sub/dir/plan.json", "out.csv"]),
                                 st.sampled_from([str(_scratch_dir()), "f0.json/x.json", ""])))
        elif flag == "--report":  # plots take a while: keep them rare
            value = draw(_rarely(st.sampled_from(["", str(_scratch_dir())]), st.just("report.html")))
        elif flag == "--model":
            value = draw(_rarely(st.sampled_from(SMALL_MODELS + [str(HF_DIR / "gpt2.json")]),
                                 st.one_of(st.just("missing.json"), TEXT)))
        elif flag == "--cluster":
            value = draw(_rarely(st.sampled_from(SMALL_CLUSTERS[:6]), st.one_of(st.just("cluster.yaml"), TEXT)))
        elif flag == "--dtype":
            value = draw(_rarely(st.sampled_from(["bf16", "fp16"]), st.one_of(st.just("fp8"), TEXT)))
        elif flag == "--objective":
            value = draw(_rarely(st.sampled_from(["throughput", "cost", "latency", "ttft", "tpot"]), TEXT))
        else:
            value = draw(CLI_NUMBERS)
        argv += [flag, value]
    return argv


# ----------------------------------------------------------------------------------------------
# Calls: each invokes one entry point and checks what a success returned
# ----------------------------------------------------------------------------------------------
def _kw(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc) and exc.__traceback__.tb_next is None:
            raise UnknownKeyword(str(exc)) from None
        raise


def call_get_gpu(name: Any) -> None:
    g = get_gpu(name)
    if not isinstance(g, hp.GPUSpec) or get_gpu(g.name) is not g:
        raise WrongResult(f"get_gpu({name!r}) returned {g!r}")


def _check_cluster(c: Any) -> None:
    if not isinstance(c, Cluster) or c.num_gpus < 1:
        raise WrongResult(f"not a cluster: {c!r}")
    if Cluster.from_dict(c.to_dict()) != c:
        raise WrongResult("Cluster.to_dict() does not round-trip")


def call_cluster_parse(x: tuple) -> None:
    spec, options = x
    _check_cluster(_kw(Cluster.parse, spec, **options))


def call_cluster_from_dict(d: Any) -> None:
    _check_cluster(Cluster.from_dict(d))


def call_cluster_from_file(path: Any) -> None:
    _check_cluster(Cluster.from_file(path))


def _check_model(m: Any) -> None:
    if not isinstance(m, ModelSpec):
        raise WrongResult(f"not a model: {m!r}")
    _finite("num_params", m.num_params, positive=True)
    if ModelSpec.from_dict(m.to_dict()) != m:
        raise WrongResult("ModelSpec.to_dict() does not round-trip")


def call_model_from_name(name: Any) -> None:
    m = ModelSpec.from_name(name)
    _check_model(m)
    if ModelSpec.from_name(m.name) != m:
        raise WrongResult(f"from_name({m.name!r}) differs from from_name({name!r})")


def call_model_from_hf(x: tuple) -> None:
    config, kwargs = x
    _check_model(ModelSpec.from_hf_config(config, **kwargs))


def call_model_from_dict(d: Any) -> None:
    _check_model(ModelSpec.from_dict(d))


def _check_strategy(s: Strategy) -> None:
    if Strategy.from_dict(s.to_dict()) != s:
        raise WrongResult("Strategy.to_dict() does not round-trip")


def call_strategy(kwargs: dict) -> None:
    _check_strategy(_kw(Strategy, **kwargs))


def call_strategy_from_dict(d: Any) -> None:
    _check_strategy(Strategy.from_dict(d))


def _workload(kind: str, kwargs: dict) -> Training | Inference:
    return _kw(Training if kind == "training" else Inference, **kwargs)


def call_workload(x: tuple) -> None:
    w = _workload(*x)
    if workload_from_dict(w.to_dict()) != w:
        raise WrongResult("workload does not round-trip")


def _model_of(ref: Any) -> Any:
    return ModelSpec.decoder("fuzz", **ref) if isinstance(ref, dict) else ref


def call_estimate(x: dict) -> None:
    model = _model_of(x["model"])
    strategy = Strategy(**{k: v for k, v in x["strategy"].items() if k != "bogus"})
    e = cm.estimate(model, x["cluster"], strategy, _workload(*x["workload"]), params=PARAMS, profiles=None)
    _finite("time_s", e.time_s, positive=True)
    _finite("memory_per_gpu_bytes", e.memory_per_gpu_bytes, positive=True)
    _finite("tokens_per_s", e.tokens_per_s, positive=True)
    if e.kind == "inference":
        _finite("ttft_s", e.ttft_s, positive=True)
        _finite("tpot_s", e.tpot_s, positive=True)


def call_plan(x: dict) -> None:
    model = _model_of(x["model"])
    workload = _workload(*x["workload"])
    r = planner.plan(model, x["cluster"], workload, objective=x["objective"], params=PARAMS, profiles=None,
                     **x["constraints"])
    e = r.best.estimate
    _finite("time_s", e.time_s, positive=True)
    headroom = r.constraints.memory_headroom
    if not all(s.memory_bytes <= s.memory_capacity_bytes * (1 - headroom) * (1 + 1e-9) for s in e.stages):
        raise WrongResult(f"the best plan does not fit memory: {e.summary()}")
    Plan.from_json(r.best.to_json())


def _comparable(p: Plan) -> dict:
    d = p.to_dict()  # NaN predictions become null here, so compare the written form
    d.pop("created_utc")
    return d


def _check_plan(p: Any) -> None:
    if not isinstance(p, Plan):
        raise WrongResult(f"not a plan: {p!r}")
    if _comparable(Plan.from_json(p.to_json())) != _comparable(p):
        raise WrongResult("a plan that loads does not round-trip")


def call_plan_from_json(text: Any) -> None:
    _check_plan(Plan.from_json(text))


def call_plan_load(path: Any) -> None:
    _check_plan(Plan.load(path))


def call_cli(argv: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    with _in_scratch_cwd(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli_main(argv)
        except SystemExit as exc:  # argparse: --help (0) or a malformed command line (2, usage on stderr)
            if exc.code not in (0, 2):
                raise WrongResult(f"argparse exited with {exc.code!r}") from None
            return f"argparse exit {exc.code}"
    if rc not in (0, 2):
        raise WrongResult(f"main returned {rc!r}")
    if rc == 2 and not err.getvalue().startswith("error:"):
        raise WrongResult(f"exit 2 without an 'error:' message: {err.getvalue()[:200]!r}")
    if "Traceback" in err.getvalue():
        raise WrongResult("a traceback was printed")
    return f"exit {rc}"


@dataclass(frozen=True)
class Target:
    name: str
    inputs: Callable[[], st.SearchStrategy]
    call: Callable[[Any], None]
    examples: int  # in the test suite; bench/fuzz.py runs more


TARGETS = [
    Target("get_gpu", lambda: st.one_of(GPU_NAMES, GARBAGE, st.text(max_size=2000)), call_get_gpu, 450),
    Target("Cluster.parse", cluster_parse_inputs, call_cluster_parse, 450),
    Target("Cluster.from_dict", cluster_dict_inputs, call_cluster_from_dict, 375),
    Target("Cluster.from_file", lambda: file_inputs(cluster_docs(), [".yaml", ".yml", ".json", ".txt"]),
           call_cluster_from_file, 225),
    Target("ModelSpec.from_name", lambda: st.one_of(MODEL_NAMES, GARBAGE), call_model_from_name, 300),
    Target("ModelSpec.from_hf_config", hf_inputs, call_model_from_hf, 300),
    Target("ModelSpec.from_dict", model_dict_inputs, call_model_from_dict, 375),
    Target("Strategy", strategy_kwargs, call_strategy, 450),
    Target("Strategy.from_dict", strategy_dict_inputs, call_strategy_from_dict, 300),
    Target("Training/Inference", lambda: st.one_of(training_kwargs().map(lambda k: ("training", k)),
                                                   inference_kwargs().map(lambda k: ("inference", k))),
           call_workload, 450),
    Target("estimate", estimate_inputs, call_estimate, 300),
    Target("plan", plan_inputs, call_plan, 120),
    Target("Plan.from_json", plan_text_inputs, call_plan_from_json, 300),
    Target("Plan.load", plan_file_inputs, call_plan_load, 225),
    Target("CLI main", cli_inputs, call_cli, 75),
]
TARGETS_BY_NAME = {t.name: t for t in TARGETS}


# target name -> predicate of inputs that hit a known bug in a file this test does not own; such inputs are
# skipped by the tests and counted apart by bench/fuzz.py. Add an entry with a strict xfail test that shows
# the bug, and delete both once it is fixed.
KNOWN_BUGS: dict[str, Callable[[Any], bool]] = {}


# ----------------------------------------------------------------------------------------------
# 1. Fuzzing: only typed errors, with messages; no hangs; sound results
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_only_typed_errors_come_out(target):
    @settings(max_examples=target.examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        x = data.draw(target.inputs(), label="input")
        known = KNOWN_BUGS.get(target.name)
        assume(known is None or not known(x))
        check_outcome(lambda: target.call(x))

    run()


def test_the_harness_tells_failures_apart():
    # a harness that passed everything would make the fuzzing above worthless
    assert classify(lambda: time.sleep(5), limit_s=0.2).label == "HANG"
    assert classify(lambda: {}["x"]).label == "UNTYPED:KeyError"
    assert classify(lambda: 1 / 0).label == "UNTYPED:ZeroDivisionError"
    assert classify(lambda: get_gpu("no such gpu")).label == "typed:UnknownGPUError"
    assert classify(lambda: (_ for _ in ()).throw(ParplanError(""))).label == "EMPTY-MESSAGE:ParplanError"
    assert not classify(lambda: _finite("time_s", float("nan"))).passed


# Inputs that broke an entry point before, kept so they never come back.
REGRESSIONS = [
    ("Cluster.parse", ("9" * 5000 + "xH100", {})),  # int() of > 4300 digits: bare ValueError
    ("Cluster.parse", ("1000000000x8xH100", {})),  # a billion nodes built before anything complained
    ("Cluster.from_dict", {"nodes": [{"gpu": "H100", "gpus_per_node": 10**6}]}),
    ("Cluster.from_dict", {"nodes": [{"gpu": "H100", "gpus_per_node": 8, "count": 10**9}]}),
    ("ModelSpec.from_dict", {"name": "x", "seq_len": INF, "layers": [{"kind": "head", "hidden": 4, "vocab": 3}]}),
    ("ModelSpec.from_dict", {"name": "x", "seq_len": 4, "layers": [{"kind": "head", "hidden": True, "vocab": 3}]}),
    ("ModelSpec.from_hf_config", ({"model_type": "gpt2", "n_embd": 8, "n_head": 2, "n_layer": 10**7,
                                   "vocab_size": 5}, {})),  # ten million layers built (80 s)
    ("ModelSpec.from_hf_config", ({"model_type": "mixtral", "hidden_size": 8, "num_attention_heads": 2,
                                   "num_hidden_layers": 1e300, "intermediate_size": 8, "vocab_size": 5}, {})),
    ("ModelSpec.from_hf_config", ({"model_type": ["llama"]}, {})),  # unhashable model_type
    ("ModelSpec.from_hf_config", ({"architectures": 5}, {})),
    ("ModelSpec.from_hf_config", ("{" + '"a":[' * 100000, {})),
    ("estimate", {"model": {"num_layers": 3, "hidden": 128, "num_heads": 4, "vocab": 100, "seq_len": 16,
                            "num_experts": "x", "top_k": 3, "expert_ffn_hidden": 64}, "cluster": "1x2xH100",
                  "strategy": {"dp": 2}, "workload": ("training", {"global_batch": 2})}),  # '>' str vs int
    ("estimate", {"model": {"num_layers": 3, "hidden": 128, "num_heads": 4, "vocab": 100, "seq_len": 16,
                            "num_experts": 4, "top_k": 2, "expert_ffn_hidden": 64, "moe_layer_interval": 0},
                  "cluster": "1x2xH100", "strategy": {"dp": 2},
                  "workload": ("training", {"global_batch": 2})}),  # ZeroDivisionError
    ("Strategy", {"pp": 1, "stages": "ab"}),
    ("Strategy", {"pp": 1, "stages": 5}),
    ("Strategy", {"placement": ([0],)}),
    ("Strategy", {"placement": "a"}),
    ("Strategy", {"zero": True}),
    ("Strategy", {"sequence_parallel": "no", "tp": 2}),
    ("Training/Inference", ("training", {"global_batch": 2**62})),  # the planner's divisor loop never ended
    ("Plan.from_json", "[" * 100000),  # RecursionError from json
    ("Plan.from_json", b"\xff\xfe{"),
    ("CLI main", ["--model", "tiny-llama", "--cluster", "1x2xH100", "--batch", "2", "--out", "."]),
]


@pytest.mark.parametrize("name,x", REGRESSIONS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(REGRESSIONS)])
def test_regressions(name, x):
    check_outcome(lambda: TARGETS_BY_NAME[name].call(x))


def test_files_that_are_not_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe\x00{")
    for load, error in ((Cluster.from_file, hp.ClusterSpecError), (Plan.load, PlanFileError),
                        (ModelSpec.from_hf_config, cm.ModelConfigError)):
        for path in (tmp_path, bad, tmp_path / "missing.json", 5, None):
            with pytest.raises(error) as exc:
                load(path)
            assert str(exc.value)


def test_cli_zero_latency_limit_is_not_ignored(capsys):
    # `--max-ttft-ms 0` used to be read as "no limit"
    assert cli_main(["--model", "tiny-llama", "--cluster", "1x2xH100", "--infer", "--batch", "2",
                     "--max-ttft-ms", "0"]) == 2
    assert "max_ttft_s" in capsys.readouterr().err


def test_cli_unwritable_output_is_an_error_not_a_traceback(tmp_path, capsys):
    (tmp_path / "sub").mkdir()
    rc = cli_main(["--model", "tiny-llama", "--cluster", "1x2xH100", "--batch", "2", "--out", str(tmp_path / "sub")])
    assert rc == 2
    assert capsys.readouterr().err.startswith("error:")
    assert [p.name for p in tmp_path.iterdir()] == ["sub"], "no temporary file left behind"


def test_limits_say_what_would_work():
    with pytest.raises(hp.ClusterSpecError, match="1,000,000"):
        Cluster.parse("200000x8xH100")
    with pytest.raises(cm.ModelConfigError, match="100,000"):
        ModelSpec.decoder("deep", num_layers=10**6, hidden=64, num_heads=4, ffn_hidden=64, vocab=64, seq_len=64)
    with pytest.raises(cm.WorkloadError, match="16,777,216"):
        Training(global_batch=2**30)
    # the limits are far beyond real settings
    assert Cluster.parse("12500x8xH100").num_gpus == 100_000
    assert Training(global_batch=2**20, seq_len=2**20).global_batch == 2**20


# ----------------------------------------------------------------------------------------------
# 2. Properties of the cost model and the planner
#    (tests/test_costmodel.py checks bandwidth and memory monotonicity of estimate() and determinism of one
#    estimate; tests/test_planner.py checks that small plans fit and repeat in one process. These add:
#    batch monotonicity, the same properties for the whole search, headroom, and other processes.)
# ----------------------------------------------------------------------------------------------
def _fast(n: int):
    return settings(max_examples=n, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _decoder(num_layers=4, hidden=128, heads=4, kv=2, ffn=256, vocab=2048, seq=128, experts=0):
    kw = dict(num_experts=experts, top_k=2, expert_ffn_hidden=ffn) if experts else dict(ffn_hidden=ffn)
    return ModelSpec.decoder(f"prop-{num_layers}-{hidden}-{experts}", num_layers=num_layers, hidden=hidden,
                             num_heads=heads, num_kv_heads=kv, vocab=vocab, seq_len=seq, **kw)


PROP_MODELS = {"dense": _decoder(), "moe": _decoder(num_layers=3, experts=4), "gpt2": ModelSpec.from_name("gpt2")}
PROP_CLUSTERS = ["1x4xA100", "2x2xH100", "1x2xA100+1x2xH100", "2x4xA100"]


def _valid_strategies(model: ModelSpec, n: int, batch: int, training: bool) -> list[Strategy]:
    out = []
    for tp, pp, dp in _factorizations(n):
        if batch % dp or pp > len(model.layers):
            continue
        if any(b.num_heads % tp or b.num_kv_heads % tp or (b.ffn_hidden % tp if not b.is_moe else
                                                           b.expert_ffn_hidden % tp) for b in model.blocks):
            continue
        for mb in (1, 2):
            if (batch // dp) % mb:
                continue
            scheds = ["1f1b", "gpipe"] if (training and pp > 1) else ["1f1b"]
            # stage cuts fixed (an even split): left open, the cost model picks the best split for each
            # workload, and memory per GPU then follows the split rather than the workload
            cuts = tuple(round(i * len(model.layers) / pp) for i in range(pp + 1)) if pp > 1 else None
            for sched in scheds:
                out.append(Strategy(tp=tp, pp=pp, dp=dp, micro_batch=mb, schedule=sched, stages=cuts,
                                    zero=1 if training and dp > 1 else 0,
                                    recompute="selective" if training and tp > 1 else "none"))
    return out


@_fast(40)
@given(st.sampled_from(sorted(PROP_MODELS)), st.sampled_from(PROP_CLUSTERS), st.sampled_from([2, 4, 8]),
       st.integers(2, 4), st.data())
def test_bigger_global_batch_never_lowers_step_time(key, spec, batch, factor, data):
    model, cluster = PROP_MODELS[key], Cluster.parse(spec)
    options = _valid_strategies(model, cluster.num_gpus, batch, training=True)
    assume(options)
    s = data.draw(st.sampled_from(options))
    small = cm.estimate(model, cluster, s, Training(global_batch=batch), params=PARAMS, profiles=None)
    big = cm.estimate(model, cluster, s, Training(global_batch=batch * factor), params=PARAMS, profiles=None)
    assert big.time_s >= small.time_s * (1 - 1e-9), (s.describe(), small.breakdown, big.breakdown)
    # and never more than proportionally slower: the extra sequences cost at most what the first ones did
    assert big.time_s <= small.time_s * factor * (1 + 1e-9)


@_fast(40)
@given(st.sampled_from(sorted(PROP_MODELS)), st.sampled_from(PROP_CLUSTERS), st.sampled_from([2, 4]),
       st.integers(2, 4), st.sampled_from(["batch", "output_tokens", "prompt_tokens"]), st.data())
def test_more_inference_work_is_never_faster(key, spec, batch, factor, what, data):
    model, cluster = PROP_MODELS[key], Cluster.parse(spec)
    options = _valid_strategies(model, cluster.num_gpus, batch, training=False)
    assume(options)
    s = data.draw(st.sampled_from(options))
    base = dict(prompt_tokens=64, output_tokens=8, batch=batch)
    more = {**base, what: base[what] * factor}
    a = cm.estimate(model, cluster, s, Inference(**base), params=PARAMS, profiles=None)
    b = cm.estimate(model, cluster, s, Inference(**more), params=PARAMS, profiles=None)
    assert b.time_s >= a.time_s * (1 - 1e-9)
    assert b.memory_per_gpu_bytes >= a.memory_per_gpu_bytes * (1 - 1e-9)
    if what != "output_tokens":
        assert b.ttft_s >= a.ttft_s * (1 - 1e-9)


def _sized_gpu(name: str, memory_gb: float, tag: str) -> hp.GPUSpec:
    # renamed so that no measured profile of the real part applies to one cluster and not the other
    return dataclasses.replace(get_gpu(name), name=f"{get_gpu(name).name}-{tag}", memory_gb=memory_gb, aliases=())


def _two_node_cluster(gpu: hp.GPUSpec, per_node: int = 2, inter_node_gbps: float | None = None,
                      intra_node_gbps: float | None = None) -> Cluster:
    return Cluster(nodes=tuple(Node.of(gpu, per_node, network_gbps=inter_node_gbps, intra_node_gbps=intra_node_gbps,
                                       name=f"n{i}") for i in range(2)))


def _best_or_none(model, cluster, workload, **kw):
    try:
        return planner.plan(model, cluster, workload, params=PARAMS, profiles=None, **kw).best.estimate
    except NoFeasiblePlanError:
        return None


MEMORY_MODELS = {"gpt2": ModelSpec.from_name("gpt2"), "gpt2-medium": ModelSpec.from_name("gpt2-medium"),
                 "moe": _decoder(num_layers=4, hidden=1024, heads=16, kv=4, ffn=2048, vocab=32000, seq=512,
                                 experts=8)}


@_fast(20)
@given(st.sampled_from(sorted(MEMORY_MODELS)), st.floats(1.6, 5.0), st.floats(0.1, 20.0), st.booleans())
def test_plan_with_more_gpu_memory_never_unfits_nor_slows(key, small_gb, extra_gb, infer):
    """Memory sizes around what the models need (state of 2 to 6 GB over 4 GPUs, 1.5 GB reserved), so the
    memory limit decides which strategies are allowed."""
    model = MEMORY_MODELS[key]
    w = (Inference(prompt_tokens=512, output_tokens=8, batch=8) if infer else
         Training(global_batch=8, seq_len=512))
    small = _best_or_none(model, _two_node_cluster(_sized_gpu("A100", small_gb, "s")), w)
    big = _best_or_none(model, _two_node_cluster(_sized_gpu("A100", small_gb + extra_gb, "b")), w)
    if small is not None:
        assert big is not None, "more memory made the problem infeasible"
        assert big.time_s <= small.time_s * (1 + 1e-9)


@_fast(20)
@given(st.sampled_from(["dense", "moe", "gpt2"]), st.sampled_from(["inter", "intra"]), st.floats(1.0, 50.0),
       st.floats(1.01, 20.0), st.booleans())
def test_plan_with_more_bandwidth_is_never_slower(key, link, bw, factor, infer):
    model = PROP_MODELS[key]
    gpu = _sized_gpu("A100", 80, "bw")
    w = (Inference(prompt_tokens=128, output_tokens=8, batch=8) if infer else
         Training(global_batch=8, seq_len=128))
    arg = "inter_node_gbps" if link == "inter" else "intra_node_gbps"
    slow = _best_or_none(model, _two_node_cluster(gpu, **{arg: bw}), w)
    quick = _best_or_none(model, _two_node_cluster(gpu, **{arg: bw * factor}), w)
    assert (slow is None) == (quick is None), "bandwidth changed feasibility"
    if slow is not None:
        assert quick.time_s <= slow.time_s * (1 + 1e-9)


@_fast(15)
@given(st.sampled_from(["llama-2-7b", "gpt2-xl", "mixtral-8x7b", "llama-3-8b"]),
       st.sampled_from(["1x4xL4", "1x8xA10G", "2x4xA100-40GB", "1x8xH100"]), st.sampled_from([0.0, 0.1, 0.3]),
       st.booleans())
def test_catalog_plans_fit_every_stage_with_headroom(name, spec, headroom, infer):
    cluster = Cluster.parse(spec)
    w = (Inference(prompt_tokens=512, output_tokens=32, batch=8) if infer else
         Training(global_batch=2 * cluster.num_gpus, seq_len=1024))
    try:
        r = planner.plan(name, cluster, w, memory_headroom=headroom, params=PARAMS, profiles=None)
    except NoFeasiblePlanError as exc:
        assert exc.min_memory_bytes is None or exc.min_memory_bytes > 0
        return
    e = r.best.estimate
    for stage in e.stages:
        assert stage.memory_bytes <= stage.memory_capacity_bytes * (1 - headroom) * (1 + 1e-9), stage
    again = cm.estimate(r.best.model, r.best.cluster, r.best.strategy, w, params=PARAMS, profiles=None)
    assert again.time_s == pytest.approx(e.time_s, rel=1e-9) and again.fits


_SAME_PLAN_SCRIPT = """
import json, sys
import costmodel as cm, planner
from costmodel.params import CostParams
out = {}
for model, cluster, w in [("tiny-moe", "1x2xA100+1x2xH100+1x2xL4", cm.Training(global_batch=8)),
                          ("gpt2", "1x2xV100+1x2xT4", cm.Inference(prompt_tokens=128, output_tokens=8, batch=4,
                                                                   dtype="fp16"))]:
    r = planner.plan(model, cluster, w, params=CostParams(), profiles=None)
    d = r.best.to_dict(); d.pop("created_utc")
    out[model] = {"best": d, "candidates": r.candidates.to_csv(index=False)}
print(json.dumps(out, sort_keys=True))
"""


def test_same_plan_in_other_processes_and_hash_seeds():
    """Same inputs, same plan, also across processes: no answer may depend on set or dict order under a
    different PYTHONHASHSEED (test_planner checks repeats inside one process)."""
    outs = []
    for seed in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, "-c", _SAME_PLAN_SCRIPT], capture_output=True, text=True, env=env,
                              cwd=REPO, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(json.loads(proc.stdout))
    assert outs[0] == outs[1]


# ----------------------------------------------------------------------------------------------
# 3. Plan-file versions, corruption
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plan_doc():
    return json.loads(plan_texts()[1])  # MoE inference


@pytest.fixture(scope="module")
def training_doc():
    return json.loads(plan_texts()[2])


def _version0(doc: dict) -> dict:
    """The draft format: no objective, no checkpoint interval, no checksum."""
    old = {k: v for k, v in doc.items() if k not in ("objective", "checkpoint_interval_steps", "sha256")}
    old["schema_version"] = 0
    return old


def test_version_policy_is_consistent():
    assert SCHEMA_VERSION == max(SUPPORTED_VERSIONS)
    assert all(v in SUPPORTED_VERSIONS for v in range(min(SUPPORTED_VERSIONS), SCHEMA_VERSION + 1))


@pytest.mark.parametrize("which", ["inference", "training"])
def test_version_0_is_read_with_defaults(which, plan_doc, training_doc):
    doc = plan_doc if which == "inference" else training_doc
    p = Plan.from_json(json.dumps(_version0(doc)))
    current = Plan.from_dict(doc)
    assert (p.model, p.cluster, p.workload, p.strategy) == (current.model, current.cluster, current.workload,
                                                           current.strategy)
    assert p.objective == ("latency" if which == "inference" else "throughput")
    assert p.checkpoint_interval_steps == 0
    # written back, it is a current file
    assert json.loads(p.to_json())["schema_version"] == SCHEMA_VERSION


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 99])
def test_newer_versions_are_refused_with_what_to_do(version, plan_doc):
    with pytest.raises(PlanFileError) as exc:
        Plan.from_dict({**plan_doc, "schema_version": version})
    msg = str(exc.value)
    assert str(version) in msg and "upgrade parplan" in msg and "--out plan.json" in msg


@pytest.mark.parametrize("version", [-1, min(SUPPORTED_VERSIONS) - 1])
def test_versions_older_than_supported_are_refused_with_what_to_do(version, plan_doc):
    with pytest.raises(PlanFileError) as exc:
        Plan.from_dict({**plan_doc, "schema_version": version})
    assert "older" in str(exc.value) and "--out plan.json" in str(exc.value)


@pytest.mark.parametrize("version", [None, "1", 1.0, True, [1], "missing"])
def test_malformed_versions_are_refused(version, plan_doc):
    doc = {k: v for k, v in plan_doc.items() if k != "schema_version"} if version == "missing" else \
        {**plan_doc, "schema_version": version}
    with pytest.raises(PlanFileError, match="schema_version"):
        Plan.from_dict(doc)


def test_every_truncation_is_refused(tmp_path):
    text = plan_texts()[2].encode()
    path = tmp_path / "plan.json"
    for cut in range(0, len(text) - 1, 17):
        path.write_bytes(text[:cut])
        with pytest.raises(PlanFileError):
            Plan.load(path)


def test_every_single_bit_flip_is_refused_or_harmless(tmp_path):
    """The checksum catches flips inside values (a '2' that becomes '3'); flips that break the JSON are
    refused as not JSON. A flip may only load if it lands in the timestamp, which the checksum leaves out."""
    text = plan_texts()[2].encode()
    original = Plan.from_json(text)
    stamp = text.index(b'"created_utc"')
    stamp_end = text.index(b",", stamp)
    path = tmp_path / "plan.json"
    loaded = 0
    for i in range(0, len(text), 3):
        flipped = bytearray(text)
        flipped[i] ^= 1 << (i % 8)
        path.write_bytes(bytes(flipped))
        try:
            p = Plan.load(path)
        except PlanFileError as exc:
            assert str(exc)
            continue
        loaded += 1
        assert stamp <= i < stamp_end or p == original, f"flip at byte {i} loaded a different plan"
    assert loaded < len(text) // 3 // 10


def test_a_hand_edit_is_refused_until_the_checksum_is_removed(training_doc):
    edited = {**training_doc, "checkpoint_interval_steps": 100}
    with pytest.raises(PlanFileError, match="sha256"):
        Plan.from_dict(edited)
    p = Plan.from_dict({k: v for k, v in edited.items() if k != "sha256"})
    assert p.checkpoint_interval_steps == 100
    assert Plan.from_json(p.to_json()) == p


@pytest.mark.parametrize("key,value", [("objective", "fastest"), ("objective", 3), ("checkpoint_interval_steps", -1),
                                       ("checkpoint_interval_steps", 1e400), ("checkpoint_interval_steps", True),
                                       ("prediction", [1, 2])])
def test_bad_optional_sections_are_refused(key, value, training_doc):
    doc = {k: v for k, v in training_doc.items() if k != "sha256"}
    with pytest.raises(PlanFileError, match=key):
        Plan.from_dict({**doc, key: value})
