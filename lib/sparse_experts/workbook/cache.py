"""The artifact cache: trained models and their metrics under ``data/cache/``, keyed by what made them.

A :class:`TrainSpec` says everything that makes a trained model. Its key is the sha256 of the canonical JSON
of that spec together with a hash of the code that trains (:data:`CODE_MODULES`): change any of it and the
key changes, so a stale model is never reused. The code is hashed as parsed, without comments, docstrings
or layout, so editing the prose of those modules does not retrain anything.

:func:`get_or_train` returns the verified cached entry, or trains (resuming from the checkpoints of an
interrupted attempt), evaluates on the validation and test splits, and stores the entry ``<cache>/<key>/``::

    spec.json       the spec and the code hash
    params/         the trained parameters (orbax)
    history.json    per-step metrics and periodic validation metrics (sparse_experts.train.History)
    metrics.json    validation and test metrics, training time, parameter counts, GFLOPs per image
    test_predictions.npy  the predicted class of every test image, int16 [N] in stored order (paired
                    comparisons of models on the same images: ``analysis.bootstrap``)
    manifest.json   sha256 of every other file; written last

Training and assembly happen under ``<cache>/.partial/<key>/``; the finished folder is moved into place
with one rename. An entry that fails verification against its manifest (a partial copy, a truncated file,
an edited spec) is never used: :func:`get_or_train` moves it aside to ``<cache>/.corrupt/`` and trains
again. Processes asking for the same key at once take turns (a file lock).
"""

from __future__ import annotations

import ast
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import importlib
import inspect
import json
import logging
import multiprocessing
import os
import pkgutil
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

from sparse_experts import models, paths, train
from sparse_experts.atomic import exclusive, write_json_atomic
from sparse_experts.datasets import loader
from sparse_experts.routing import check_int

log = logging.getLogger(__name__)

CODE_MODULES = (
    "sparse_experts.train",
    "sparse_experts.models",
    "sparse_experts.routing",
    "sparse_experts.parallel",
    "sparse_experts.datasets.splits",
    "sparse_experts.datasets.builders",
    "sparse_experts.datasets.shapes",
    "sparse_experts.datasets.tasks",
    "sparse_experts.datasets.digits",
)
"""Modules whose code is part of every cache key (the training code, and the code that renders the embedded
data the models train on); a package stands for every module in it."""
LABELS = ("label", "coarse_label")
FILES = ("spec.json", "history.json", "metrics.json", "test_predictions.npy")


class CorruptEntryError(RuntimeError):
    """A cache entry failed verification (missing or changed files, or a spec that does not match)."""


def cache_dir() -> Path:
    """``<data root>/cache`` (``$SPARSE_EXPERTS_DATA_DIR`` moves the data root)."""
    return paths.data_root() / "cache"


_AST_LOCK = threading.Lock()  # CPython 3.11's parser is not safe in two threads at once (SystemError seen)


@functools.lru_cache(maxsize=32)
def code_text(source: str) -> str:
    """``source`` as Python sees it: parsed and printed back without comments, docstrings (any string
    statement) or the original layout. Two sources with the same code text behave the same."""
    with _AST_LOCK:
        tree = ast.parse(source)
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list):
                node.body = [s for s in body if not _is_docstring(s)] or [ast.Pass()]
        return ast.unparse(tree)


def _is_docstring(statement: ast.stmt) -> bool:  # any string statement, not only the first
    return isinstance(statement, ast.Expr) and isinstance(getattr(statement.value, "value", None), str)


def code_module_names() -> list[str]:
    """:data:`CODE_MODULES` with each package expanded into itself and every module under it, in order."""
    names = []
    for name in CODE_MODULES:
        module = importlib.import_module(name)
        names.append(name)
        if hasattr(module, "__path__"):  # a package: its modules too (its __init__ alone says little)
            found = pkgutil.walk_packages(module.__path__, prefix=f"{name}.")
            names += sorted(info.name for info in found)
    return names


def code_hash() -> str:
    """sha256 of the code text (:func:`code_text`) of every module of :func:`code_module_names`."""
    digest = hashlib.sha256()
    for name in code_module_names():
        digest.update(name.encode())
        digest.update(code_text(inspect.getsource(importlib.import_module(name))).encode())
    return digest.hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class TrainSpec:
    """Everything that makes one trained model. ``model`` is a ``models.VitConfig``, ``train`` a
    ``train.TrainConfig``. Evaluation uses the validation and test splits in their stored order, in batches
    of ``eval_batch_size`` (part of the spec: with capacity limits and BPR a token's routing depends on the
    other images in its group). ``classes`` trains (and evaluates) on a subset of the fine classes,
    relabelled 0, 1, ... (``datasets.load_split``); ``augment`` names training augmentations ("crop",
    "flip"). Both are left out of the key at their defaults."""

    dataset: str
    model: Any
    train: Any
    batch_size: int
    num_steps: int
    seed: int = 0
    preset: str = "cpu"
    image_size: int | None = None
    label: str = "label"
    eval_batch_size: int = 500
    eval_every: int | None = None
    checkpoint_every: int | None = None
    classes: tuple[int, ...] | None = None
    augment: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
        object.__setattr__(self, "augment", tuple(self.augment))
        if not isinstance(self.model, models.VitConfig):
            raise TypeError(f"TrainSpec.model must be a VitConfig, got {type(self.model).__name__}")
        if not isinstance(self.train, train.TrainConfig):
            raise TypeError(f"TrainSpec.train must be a TrainConfig, got {type(self.train).__name__}")
        optional = ("eval_every", "checkpoint_every")
        for name in ("batch_size", "num_steps", "seed", "eval_batch_size", *optional):
            value, minimum = getattr(self, name), 0 if name == "seed" else 1
            if value is None and name in optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                allowed = f"an integer >= {minimum}" + (" or None" if name in optional else "")
                raise ValueError(f"TrainSpec.{name}={value!r} is not allowed; expected {allowed}")
        if self.label not in LABELS:
            raise ValueError(f"TrainSpec.label={self.label!r} is not allowed; expected one of {LABELS}")
        if self.classes is not None:
            if self.label != "label":
                raise ValueError(
                    f"TrainSpec.classes={list(self.classes)} with label={self.label!r}: a class subset is "
                    "of the fine classes; use label='label'"
                )
            if self.model.num_classes != len(self.classes):
                raise ValueError(
                    f"TrainSpec.classes has {len(self.classes)} classes but the model's "
                    f"num_classes={self.model.num_classes}; they must agree"
                )
        bad = [a for a in self.augment if a not in loader.AUGMENTATIONS]
        if bad:
            raise ValueError(
                f"TrainSpec.augment={self.augment!r}: unknown {bad}; known {loader.AUGMENTATIONS}"
            )
        group = self.model.moe.group_size if self.model.moe is not None else 1
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) % group:
                raise ValueError(
                    f"TrainSpec.{name}={getattr(self, name)} is not a multiple of the model's routing "
                    f"group_size={group}"
                )

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, default in (("classes", None), ("augment", ())):  # left out at their defaults: the keys
            if out[name] == default:  # of specs made before these fields existed do not change
                del out[name]
        out["model"] = self.model.to_dict()
        out["train"] = self.train.to_dict()
        return json.loads(canonical_json(out))  # tuples -> lists, as stored

    def key(self) -> str:
        """sha256 of the canonical JSON of this spec and :func:`code_hash`."""
        return hashlib.sha256(
            canonical_json({"spec": self.to_dict(), "code": code_hash()}).encode()
        ).hexdigest()


@dataclass
class Trained:
    """A cache entry, loaded: the model with its trained parameters, its history and metrics."""

    spec: TrainSpec
    model: Any
    history: Any
    metrics: dict[str, Any]
    path: Path
    trained_now: bool

    @property
    def test_predictions(self) -> np.ndarray:
        """The predicted class of every test image, int [N] in the split's stored order."""
        return np.load(self.path / "test_predictions.npy")


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "manifest.json":
            yield path


def _write_manifest(root: Path) -> None:
    manifest = {str(p.relative_to(root)): _sha256_file(p) for p in _files(root)}
    write_json_atomic(root / "manifest.json", manifest, sort_keys=True)


def verify(entry: Path, spec: TrainSpec | None = None, required: tuple[str, ...] = FILES) -> None:
    """Raise :class:`CorruptEntryError` unless every file of ``entry`` matches its manifest, the manifest
    lists every ``required`` file (and, given a spec, ``spec.json`` holds that spec)."""
    entry = Path(entry)
    manifest_path = entry / "manifest.json"
    if not manifest_path.is_file():
        raise CorruptEntryError(f"{entry}: no manifest.json (an interrupted or partial entry)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as error:
        raise CorruptEntryError(f"{entry}: manifest.json is not valid JSON ({error})") from None
    present = {str(p.relative_to(entry)) for p in _files(entry)}
    missing, extra = sorted(set(manifest) - present), sorted(present - set(manifest))
    if missing or extra:
        raise CorruptEntryError(f"{entry}: files missing {missing[:3]} / not in the manifest {extra[:3]}")
    for name, expected in manifest.items():
        if _sha256_file(entry / name) != expected:
            raise CorruptEntryError(f"{entry}: {name} does not match its sha256 in the manifest")
    for name in required:
        if name not in manifest:
            raise CorruptEntryError(f"{entry}: {name} is not in the manifest")
    if spec is not None:
        stored = json.loads((entry / "spec.json").read_text())
        if stored.get("spec") != spec.to_dict() or stored.get("code") != code_hash():
            raise CorruptEntryError(f"{entry}: spec.json does not hold the spec and code hash of its key")


def _set_aside(entry: Path, root: Path, reason: str) -> Path:
    target = root / ".corrupt" / f"{entry.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(entry, target)
    log.warning("cache entry %s failed verification (%s); moved to %s", entry.name, reason, target)
    return target


def save_params(folder: Path, params: Any) -> None:
    """Write a parameter pytree (e.g. ``nnx.to_pure_dict`` of a model's ``nnx.Param`` state) to ``folder``
    as an orbax checkpoint."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(Path(folder).absolute(), params)


def restore_params(model: nnx.Module, folder: Path) -> nnx.Module:
    """Set ``model``'s parameters to those saved by :func:`save_params` in ``folder`` (shapes from the
    model); returns the model."""
    target = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(Path(folder).absolute(), target)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


def _load_entry(entry: Path, spec: TrainSpec) -> Trained:
    verify(entry, spec)
    model = restore_params(models.ViT(spec.model, rngs=nnx.Rngs(spec.seed)), entry / "params")
    history, metrics = (json.loads((entry / f"{name}.json").read_text()) for name in ("history", "metrics"))
    return Trained(spec, model, train.History.from_dict(history), metrics, entry, trained_now=False)


def load(spec: TrainSpec, *, root: str | Path | None = None) -> Trained | None:
    """The verified cache entry of ``spec``, or None when there is none. A corrupt entry raises
    :class:`CorruptEntryError` (use :func:`get_or_train` to replace it)."""
    entry = Path(root or cache_dir()) / spec.key()
    return _load_entry(entry, spec) if entry.exists() else None


def _eval_batches(spec: TrainSpec, split: str):
    options = dict(shuffle=False, epochs=1, drop_remainder=False, image_size=spec.image_size,
                   classes=spec.classes)  # fmt: skip
    batches = loader.batches(spec.dataset, split, spec.eval_batch_size, **options)
    return [{"image": b["image"], "label": b[spec.label]} for b in batches]


def check_eval_split(spec: TrainSpec, split: str, num_examples: int | None = None) -> None:
    """Raise ``ValueError`` unless evaluating ``spec`` on ``split`` (``num_examples`` images; read from the
    dataset when None) ends in a batch of whole routing groups. :func:`get_or_train` calls it before it
    writes anything."""
    n = num_examples
    if n is None:
        n = len(loader.load_split(spec.dataset, split, image_size=spec.image_size, classes=spec.classes))
    group = spec.model.moe.group_size if spec.model.moe is not None else 1
    if (n % spec.eval_batch_size) % group:
        raise ValueError(
            f"TrainSpec.eval_batch_size={spec.eval_batch_size}: the {split} split of {spec.dataset} has {n} "
            f"examples, leaving a last batch of {n % spec.eval_batch_size} images, not a multiple of the "
            f"routing group_size={group}; choose an eval_batch_size that divides {n}"
        )


def _train_entries(
    specs: list[TrainSpec], work: Path, *, progress: bool, description: str, on_step: Callable | None = None
) -> list[Path]:
    """Train ``specs`` (one spec, or the same spec with R seeds: side by side as one vmapped program,
    ``train.Copies``) with checkpoints under ``work/checkpoints`` (resuming there), evaluate, and assemble
    one entry folder per spec, ``work/entry-<r>`` (with its manifest); ``on_step(step)`` is called before
    each step. The caller has checked the evaluation splits (before anything is written)."""
    first, many = specs[0], len(specs) > 1
    nets = [models.ViT(s.model, rngs=nnx.Rngs(s.seed)) for s in specs]
    if many:
        trainer = train.Trainer(nets, first.train, copies=train.Copies(seed=[s.seed for s in specs]))
    else:
        trainer = train.Trainer(nets[0], first.train, seed=first.seed)

    def one_batch(seed: int, step: int) -> dict:
        batch = loader.batch_at(
            first.dataset, "train", first.batch_size, seed=seed, step=step, image_size=first.image_size,
            classes=first.classes, augment=first.augment,
        )  # fmt: skip
        return {"image": batch["image"], "label": batch[first.label]}

    def batch_fn(step: int) -> dict:
        if on_step is not None:
            on_step(step)
        batches = [one_batch(s.seed, step) for s in specs]
        return train.stack_batches(batches) if many else batches[0]

    seeds = ", ".join(str(s.seed) for s in specs)
    history = trainer.fit(
        batch_fn,
        first.num_steps,
        checkpoint_dir=work / "checkpoints",
        checkpoint_every=first.checkpoint_every,
        eval_fn=lambda: _eval_batches(first, "validation"),
        eval_every=first.eval_every,
        progress=progress,
        description=description or f"train {first.dataset} seed {seeds}",
    )
    diverged = history.diverged().any() if many else history.diverged
    if diverged:
        why = "; ".join(m for m in history.messages if m) if many else history.message
        raise train.NonFiniteError(f"training diverged (seeds {seeds}): {why}; nothing was cached")
    test, logits = trainer.evaluate(_eval_batches(first, "test"), return_logits=True)
    logits = np.asarray(logits) if many else np.asarray(logits)[None]
    steps = np.asarray(history.step_seconds[1:] or history.step_seconds)
    built = []
    for r, spec in enumerate(specs):
        own = history.history(r) if many else history
        metrics = {
            "validation": own.evals[-1],  # fit always evaluates at the last step when given an eval_fn
            "test": {k: v if k == "count" else float(v[r]) for k, v in test.items()} if many else test,
            "train_seconds": history.seconds,
            "median_step_seconds": float(np.median(steps)),
            "trained_with_seeds": [s.seed for s in specs],  # one program: the time is theirs together
            "params_total": models.param_count(spec.model),
            "params_active": models.param_count(spec.model, active=True),
            "gflops_per_image": models.flops_per_image(spec.model) / 1e9,
            "final_train_loss": float(np.mean(own.series("loss")[-10:])),
        }
        params = (
            jax.tree.map(lambda x, r=r: x[r], trainer.state["params"]) if many else trainer.state["params"]
        )
        entry = work / f"entry-{r}"
        if entry.exists():
            shutil.rmtree(entry)
        entry.mkdir(parents=True)
        save_params(entry / "params", params)
        np.save(entry / "test_predictions.npy", logits[r].argmax(-1).astype(np.int16))
        write_json_atomic(entry / "spec.json", {"spec": spec.to_dict(), "code": code_hash()})
        write_json_atomic(entry / "history.json", own.to_dict())
        write_json_atomic(entry / "metrics.json", metrics)
        _write_manifest(entry)
        built.append(entry)
    return built


def get_or_train_seeds(
    specs: list[TrainSpec],
    *,
    root: str | Path | None = None,
    progress: bool = True,
    retrain: bool = False,
    description: str = "",
    on_step: Callable[[int], None] | None = None,
) -> list[Trained]:
    """The trained models of ``specs``, the same spec with different seeds, in that order: verified
    entries from the cache, and the missing ones trained now side by side as one vmapped program
    (``train.Copies``; on 2 CPU cores about 1.3x the throughput of one seed after another for a small dense
    ViT), each stored under its own key. Copy r computes what :func:`get_or_train` of its spec computes, to
    float rounding; an interrupted attempt resumes from its checkpoints. ``retrain=True`` sets existing
    entries aside and trains them all again. ``on_step(step)`` is called before each training step."""
    specs = list(specs)
    if not specs:
        raise ValueError("specs is empty; expected at least one TrainSpec")
    base = dataclasses.replace(specs[0], seed=0)
    for spec in specs:
        if dataclasses.replace(spec, seed=0) != base:
            raise ValueError(
                f"specs differ in more than their seed (seed {spec.seed} against seed {specs[0].seed}); "
                "train them one by one with get_or_train"
            )
    if len({s.seed for s in specs}) != len(specs):
        raise ValueError(f"specs repeat a seed: {[s.seed for s in specs]}; expected distinct seeds")
    for split in ("validation", "test"):  # before anything is written
        check_eval_split(specs[0], split)
    root = Path(root or cache_dir())
    keys = [s.key() for s in specs]
    (root / ".partial").mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:  # one process trains a key at a time; locks in a fixed order
        for key in sorted(keys):
            stack.enter_context(exclusive(root / ".partial" / f"{key}.lock"))
        found: dict[str, Trained] = {}
        for spec, key in zip(specs, keys, strict=True):
            entry = root / key
            if entry.exists() and retrain:
                _set_aside(entry, root, "retrain=True")
            elif entry.exists():
                try:
                    found[key] = _load_entry(entry, spec)
                except CorruptEntryError as error:
                    _set_aside(entry, root, str(error))
        missing = [(spec, key) for spec, key in zip(specs, keys, strict=True) if key not in found]
        if missing:  # one missing: its key names the work folder; several: a hash of their keys
            group = hashlib.sha256("".join(k for _, k in missing).encode()).hexdigest()
            work = root / ".partial" / (missing[0][1] if len(missing) == 1 else f"seeds-{group}")
            work.mkdir(parents=True, exist_ok=True)
            built = _train_entries(
                [spec for spec, _ in missing],
                work,
                progress=progress,
                description=description,
                on_step=on_step,
            )
            for (spec, key), folder in zip(missing, built, strict=True):
                os.replace(folder, root / key)
                found[key] = _load_entry(root / key, spec)
                found[key].trained_now = True
            shutil.rmtree(work, ignore_errors=True)
    return [found[key] for key in keys]


def _train_group_in_worker(
    specs: list[TrainSpec], root: str, description: str, index: int, ticks: Any
) -> None:
    """A worker process of :func:`get_or_train_groups`: train one group into the cache, telling ``ticks``
    ``(index, steps done)`` every 10 steps."""

    def on_step(step: int) -> None:
        if step % 10 == 0:
            ticks.put((index, step))

    get_or_train_seeds(specs, root=root, progress=False, description=description, on_step=on_step)


def get_or_train_groups(
    groups: list[list[TrainSpec]],
    *,
    workers: int = 1,
    root: str | Path | None = None,
    progress: bool = True,
    descriptions: list[str] | None = None,
) -> list[list[Trained]]:
    """:func:`get_or_train_seeds` of each group of ``groups``, with the groups that are not all in the cache
    trained first by ``workers`` spawned processes at once, longest first (one progress bar over all their
    steps). On 2 CPU cores two processes train two models about 1.2x faster than one process trains them in
    turn: one small ViT's step leaves part of the second core idle. Use 1 on an accelerator (each process
    would claim the device). An error or interrupt in any group stops every worker (interrupted groups
    resume from their checkpoints next time) and is raised here."""
    check_int("workers", workers)
    descriptions = list(descriptions or [""] * len(groups))
    if len(descriptions) != len(groups):
        raise ValueError(
            f"descriptions has {len(descriptions)} entries; expected one per group ({len(groups)})"
        )
    root = Path(root or cache_dir())
    todo = [i for i, specs in enumerate(groups) if not all((root / s.key()).is_dir() for s in specs)]
    by_workers = set(todo) if workers > 1 and len(todo) > 1 else set()
    if by_workers:
        _train_in_workers([groups[i] for i in todo], root, workers, progress, [descriptions[i] for i in todo])
    results = []
    for i, (specs, description) in enumerate(zip(groups, descriptions, strict=True)):
        trained = get_or_train_seeds(specs, root=root, progress=progress, description=description)
        for entry in trained:
            entry.trained_now = entry.trained_now or i in by_workers
        results.append(trained)
    return results


def _train_in_workers(
    groups: list[list[TrainSpec]], root: Path, workers: int, progress: bool, descriptions: list[str]
) -> None:
    for specs in groups:  # before any process starts
        for split in ("validation", "test"):
            check_eval_split(specs[0], split)
    cost = [len(g) * g[0].num_steps * models.flops_per_image(g[0].model) for g in groups]
    order = sorted(range(len(groups)), key=lambda i: -cost[i])
    steps = {i: groups[i][0].num_steps for i in order}
    done = dict.fromkeys(order, 0)
    context = multiprocessing.get_context("spawn")
    bar = tqdm(
        total=sum(steps.values()), disable=not progress, desc=f"{len(groups)} models in {workers} processes"
    )
    with context.Manager() as manager:
        ticks = manager.Queue()
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=min(workers, len(groups)), mp_context=context
        )
        try:
            futures = {
                pool.submit(_train_group_in_worker, groups[i], str(root), descriptions[i], i, ticks): i
                for i in order
            }
            pending = set(futures)
            while pending:
                finished, pending = concurrent.futures.wait(pending, timeout=1.0)
                while not ticks.empty():
                    i, step = ticks.get()
                    done[i] = max(done[i], step)
                for future in finished:
                    future.result()  # a worker's error is raised here
                    done[futures[future]] = steps[futures[future]]
                bar.n = sum(done.values())
                bar.refresh()
        except BaseException:
            for process in list(getattr(pool, "_processes", {}).values()):  # stop the others now
                process.terminate()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()


def get_or_train(
    spec: TrainSpec,
    *,
    root: str | Path | None = None,
    progress: bool = True,
    retrain: bool = False,
    description: str = "",
) -> Trained:
    """The trained model of ``spec``: from the cache when a verified entry exists, otherwise trained now
    (resuming an interrupted attempt from its checkpoints) and stored. ``retrain=True`` sets an existing
    entry aside and trains again."""
    kwargs = dict(root=root, progress=progress, retrain=retrain, description=description)
    return get_or_train_seeds([spec], **kwargs)[0]


def _made_key(payload: Any) -> tuple[dict[str, Any], str]:
    record = {"payload": json.loads(canonical_json(payload)), "code": code_hash()}
    return record, hashlib.sha256(canonical_json(record).encode()).hexdigest()


def find_made(
    kind: str, payload: Any, *, required: tuple[str, ...] = ("payload.json",), root: str | Path | None = None
) -> Path | None:
    """The folder :func:`get_or_make` would return for ``payload`` when it exists and passes verification,
    else None (a folder that fails is left for :func:`get_or_make` to set aside and make again)."""
    entry = Path(root or cache_dir()) / kind / _made_key(payload)[1]
    if not entry.exists():
        return None
    try:
        verify(entry, required=required)
    except CorruptEntryError:
        return None
    return entry


def get_or_make(
    kind: str,
    payload: Any,
    make: Callable[[Path], None],
    *,
    required: tuple[str, ...] = ("payload.json",),
    root: str | Path | None = None,
) -> tuple[Path, bool]:
    """A folder of derived results (e.g. a fine-tuning sweep) under ``<cache>/<kind>/<key>/``, the key the
    sha256 of the canonical JSON of ``payload`` and :func:`code_hash`: ``(folder, made_now)``. A verified
    folder is reused; otherwise ``make(work)`` writes its files into an empty work folder, ``payload.json``
    and the manifest are added and the folder is renamed into place (a failure leaves nothing behind). A
    folder that fails verification (``required`` files listed in its manifest) is set aside and made again.
    """
    record, key = _made_key(payload)
    root = Path(root or cache_dir()) / kind
    entry = root / key
    (root / ".partial").mkdir(parents=True, exist_ok=True)
    with exclusive(root / ".partial" / f"{key}.lock"):
        if entry.exists():
            try:
                verify(entry, required=required)
                return entry, False
            except CorruptEntryError as error:
                _set_aside(entry, root, str(error))
        work = root / ".partial" / key
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            make(work)
            write_json_atomic(work / "payload.json", record)
            _write_manifest(work)
            verify(work, required=required)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        os.replace(work, entry)
    return entry, True
