"""Which backend serves a ``huggingface`` model on this machine: gated, then measured.

``python -m service tune NAME`` (:func:`tune`) runs every backend on the calibration set against ``torch`` fp32 (:mod:`service.worker.gate`), refuses those that fail, and times the
rest on this machine for the two shapes a served model computes: a lone input (one client) and a
full batch (many clients). The decision names a backend for each and is stored with the machine
it was made on: the CPU model, its core count and the library versions. It is reused only while
all of those are unchanged; else the model serves ``torch`` until it is tuned again.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("service.worker")

LONE_ROWS = 2  # a forward of at most this many rows counts as "lone"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What a decision depends on besides the model: the CPU, its cores, the libraries, and the
    backends this service has (a backend added or redefined since is not in the decision)."""
    from service.worker.backends import BACKENDS, library_versions

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count() or 1,
        **library_versions(),
        "backends": ",".join(BACKENDS),
    }


def decision_path(cache_root: Path, model: str, folder_sha256: str) -> Path:
    return cache_root / "decisions" / f"{model}-{folder_sha256[:16]}.json"


def stored_decision(path: Path) -> dict[str, Any] | None:
    """The decision at ``path`` if it was made on this machine (None: none, or another machine)."""
    try:
        decision: dict[str, Any] = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    here = machine()
    if decision.get("machine") != here:
        logger.warning(
            "the backend decision %s was made on another machine or library versions (%s, now %s): "
            "not used; run python -m service tune to decide again",
            path,
            decision.get("machine"),
            here,
        )
        return None
    return decision


def median_seconds(run: Any, repeats: int) -> float:
    run()  # warm-up: first calls allocate
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def calibration_inputs(task: str) -> tuple[list[Any], int]:
    """The built-in calibration set of ``task``, and the group size (rerank: documents per query)."""
    from service.worker.gate import calibration_groups, calibration_texts

    if task == "rerank":
        groups = calibration_groups()
        return [[query, document] for query, documents in groups for document in documents], len(groups[0][1])
    return list(calibration_texts()), 1


def outputs_of(model: Any, inputs: list[Any], batch: int = 16) -> Any:
    """The model's outputs for ``inputs`` with the networks it uses now, in forwards of ``batch``
    inputs of similar length (as the service batches them)."""
    import numpy as np
    import torch

    order = sorted(range(len(inputs)), key=lambda index: len(str(inputs[index])))
    rows: list[Any] = [None] * len(inputs)
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            chosen = order[start : start + batch]
            outputs = model.postprocess(model.forward(model.preprocess([inputs[i] for i in chosen])))
            for index, output in zip(chosen, outputs, strict=True):
                rows[index] = output
    return np.array(rows, dtype=np.float64)


def figures_of(spec: Any, reference: Any, candidate: Any, group: int) -> dict[str, float]:
    import numpy as np

    from service.codecs.outputs import sigmoid, softmax
    from service.worker import gate

    if spec.task == "feature-extraction":
        return gate.embedding_figures(reference, candidate)
    if spec.task == "rerank":
        return gate.rerank_figures(reference[:, 0], candidate[:, 0], group)
    activate = sigmoid if spec.outputs.activation == "sigmoid" else softmax
    scores = [np.array([activate(list(row)) for row in table]) for table in (reference, candidate)]
    return gate.classification_figures(scores[0], scores[1])


def gated(
    model: Any, spec: Any, name: str, cache: Any, calibration: tuple[list[Any], int], reference: Any
) -> tuple[Any, dict[str, Any]]:
    """Backend ``name`` of ``model``, in use, and its gate record (``figures``, ``refused``: the
    line that failed, or None) against ``reference``, torch's outputs on ``calibration``."""
    from service.worker.backends import REFERENCE, make_backend
    from service.worker.gate import failure

    network = make_backend(name, model.module, model.example_features(), cache, thread_counts(spec))
    model.use(network)
    inputs, group = calibration
    figures = {} if name == REFERENCE else figures_of(spec, reference, outputs_of(model, inputs), group)
    return network, {"figures": figures, "refused": failure(figures, spec.gate)}


def timing_shapes(spec: Any, inputs: list[Any]) -> dict[str, tuple[list[Any], int]]:
    """What a served model computes: one input with every core (one client), and a full batch of
    short inputs with its share of the cores (two workers side by side under load)."""
    cores = os.cpu_count() or 1
    short = sorted(inputs, key=lambda value: len(str(value)))[len(inputs) // 4 :]
    batch = short[: spec.max_batch_size]
    return {"lone": (batch[:1], cores), "batch": (batch, max(1, cores // spec.workers))}


def time_shapes(model: Any, shapes: dict[str, tuple[list[Any], int]], repeats: int) -> dict[str, float]:
    """Median seconds per forward of each shape (features made once, not timed)."""
    import torch

    seconds = {}
    before = torch.get_num_threads()
    try:
        with torch.inference_mode():
            for shape, (inputs, threads) in shapes.items():
                torch.set_num_threads(threads)
                features = model.preprocess(inputs)
                seconds[shape] = median_seconds(lambda features=features: model.forward(features), repeats)
    finally:
        torch.set_num_threads(before)
    return seconds


def thread_counts(spec: Any) -> tuple[int, ...]:
    """The thread counts a worker's policy may choose (all cores; a share; one)."""
    cores = os.cpu_count() or 1
    return tuple(sorted({1, max(1, cores // spec.workers), cores}))


def tune(
    entry: Any, cache_root: Path, names: tuple[str, ...] | None = None, repeats: int = 20, say: Any = None
) -> dict[str, Any]:
    """Gate and time every backend of ``entry`` (a ``huggingface`` model) on this machine; store
    and return the decision."""
    from service.worker import huggingface
    from service.worker.backends import BACKENDS, ExportCache

    say = say or (lambda line: logger.info("%s", line))
    spec = entry.spec
    model = huggingface.load(spec, entry.verified_weights(), "cpu", backend="torch")
    cache = ExportCache(cache_root / "exports", spec.name, spec.weights.sha256)
    calibration = calibration_inputs(spec.task)
    reference = outputs_of(model, calibration[0])
    shapes = timing_shapes(spec, calibration[0])
    records: dict[str, Any] = {}
    for name in names or BACKENDS:
        _, record = gated(model, spec, name, cache, calibration, reference)
        figures, refused = record["figures"], record["refused"]
        record["passed"] = refused is None
        if refused is None:
            record["seconds"] = time_shapes(model, shapes, repeats)
            timing = ", ".join(
                f"{shape} {seconds * 1e3:.2f} ms" for shape, seconds in record["seconds"].items()
            )
            say(f"{spec.name}: {name}: passes the gate {_shown(figures)}; {timing}")
        else:
            say(f"{spec.name}: {name}: refused: {refused}")
        records[name] = record
    passed = {name: record for name, record in records.items() if record["passed"]}
    choice = {shape: min(passed, key=lambda name: passed[name]["seconds"][shape]) for shape in shapes}
    decision = {
        "model": spec.name,
        "folder_sha256": spec.weights.sha256,
        "machine": machine(),
        "gate": spec.gate.model_dump(),
        "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "shapes": {shape: {"inputs": len(value[0]), "threads": value[1]} for shape, value in shapes.items()},
        "backends": records,
        "choice": choice,
    }
    from service.worker.backends import atomic_write

    atomic_write(
        decision_path(cache_root, spec.name, spec.weights.sha256), json.dumps(decision, indent=2).encode()
    )
    say(f"{spec.name}: serves {choice['lone']} for lone inputs, {choice['batch']} for batches")
    return decision


def _shown(figures: dict[str, float]) -> str:
    return (
        "(" + ", ".join(f"{key} {value:.6g}" for key, value in figures.items()) + ")"
        if figures
        else "(reference)"
    )


def select(model: Any, spec: Any, cache_root: Path | None) -> dict[str, str]:
    """Make a freshly loaded ``model`` (on ``torch``) use the backends it serves with; return them
    by shape. ``auto``: this machine's stored decision, else ``torch`` (logged). A named backend
    must pass the gate: the decision's figures when this machine's decision has them under the
    model's limits, else it is gated now, against ``torch`` on the calibration set."""
    from service.core.repository import ModelError
    from service.worker.backends import REFERENCE, ExportCache, make_backend

    wanted = spec.backend
    if wanted == REFERENCE or cache_root is None:
        return {"lone": REFERENCE, "batch": REFERENCE}
    decision = stored_decision(decision_path(cache_root, spec.name, spec.weights.sha256))
    if decision is not None and decision.get("gate") != spec.gate.model_dump():
        logger.warning("model %s: its gate changed since it was tuned: the decision is not used", spec.name)
        decision = None
    cache = ExportCache(cache_root / "exports", spec.name, spec.weights.sha256)

    def make_network(name: str) -> Any:
        return make_backend(name, model.module, model.example_features(), cache, thread_counts(spec))

    if wanted == "auto":
        if decision is None:
            logger.info(
                "model %s: no backend decision for this machine: serving torch (python -m service tune %s)",
                spec.name,
                spec.name,
            )
            return {"lone": REFERENCE, "batch": REFERENCE}
        choice = dict(decision["choice"])
        networks = {name: make_network(name) for name in set(choice.values())}
        figures = {name: _shown(decision["backends"][name]["figures"]) for name in set(choice.values())}
        logger.info(
            "model %s: serves %s for lone inputs, %s for batches (tuned here %s; gate %s)",
            spec.name,
            choice["lone"],
            choice["batch"],
            decision.get("made", "?"),
            "; ".join(f"{name} {shown}" for name, shown in sorted(figures.items())),
        )
    else:
        record = (decision or {}).get("backends", {}).get(wanted)
        network = None
        if record is None:  # gated now: the network built for it is the one that serves
            calibration = calibration_inputs(spec.task)
            reference = outputs_of(model, calibration[0])
            network, record = gated(model, spec, wanted, cache, calibration, reference)
        if record["refused"] is not None:
            raise ModelError(
                f"model {spec.name!r}: backend {wanted} fails the accuracy gate: {record['refused']} "
                "(loosen gate: in its model.yaml to serve it anyway)"
            )
        logger.info("model %s: backend %s passes the gate %s", spec.name, wanted, _shown(record["figures"]))
        choice = {"lone": wanted, "batch": wanted}
        networks = {wanted: network or make_network(wanted)}
    model.use(networks[choice["batch"]], networks[choice["lone"]])
    return choice
