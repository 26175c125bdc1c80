"""Resume checkpoints: everything a training run needs to continue exactly where it stopped.

``<out>/resume/`` is written atomically (:func:`common.files.atomic_dir`) and holds, without any
pickle: ``model.safetensors`` (all weights), ``optimizer.safetensors`` (AdamW moments) +
``state.json`` (optimizer structure, scheduler, epoch/step counters, mined negatives as passage ids,
best-so-far bookkeeping, the log, Python/NumPy RNG states), ``rng.safetensors`` (torch RNG states,
one per rank) and a copy of ``train_config.json``.
"""
from __future__ import annotations

import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import Tensor, nn

from common.files import atomic_dir, read_json, write_json
from retriever.train_config import TRAIN_CONFIG_FILE

logger = logging.getLogger(__name__)

RESUME_DIR = "resume"
STATE_FILE = "state.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- optimizer state


def _jsonable(value: Any) -> Any:
    # Tuples (AdamW's betas) must come back as tuples: the marker keeps the distinction JSON lacks.
    if isinstance(value, tuple):
        return {"__tuple__": [_jsonable(v) for v in value]}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in a resume checkpoint")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_from_json(v) for v in value["__tuple__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def flatten_state_dict(state_dict: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimizer ``state_dict`` as (tensors for safetensors, JSON structure); see :func:`unflatten_state_dict`.

    Per-parameter state tensors go to ``state.<param index>.<name>``; non-tensor state and the
    param groups (learning rates, betas, parameter indices) go to the JSON side.
    """
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        for name, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = _jsonable(value)
    return tensors, {"scalars": scalars, "param_groups": _jsonable(state_dict["param_groups"])}


def unflatten_state_dict(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, entry in meta["scalars"].items():
        state.setdefault(int(index), {}).update(_from_json(entry))
    return {"state": state, "param_groups": _from_json(meta["param_groups"])}


# ----------------------------------------------------------------------------- RNG state


def rng_state() -> tuple[Tensor, dict[str, Any]]:
    """This process's torch RNG (a uint8 tensor) and the Python/NumPy states (JSON-able)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    np_json = {**np_state, "state": {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])}}
    return torch.get_rng_state(), {"python": [version, list(internal), gauss], "numpy": np_json}


def device_rng_state(device: torch.device) -> Tensor | None:
    """The generator of ``device`` when it is a GPU (dropout masks there come from it), else None."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_device_rng_state(device: torch.device, state: Tensor) -> None:
    torch.cuda.set_rng_state(state, device)


def set_rng_state(torch_state: Tensor | None, states: dict[str, Any]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = dict(states["numpy"])
    np_state["state"] = {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32),
                         "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    if torch_state is not None:
        torch.set_rng_state(torch_state)


# ----------------------------------------------------------------------------- save / load


@dataclass
class ResumeState:
    """What :func:`load_resume` read; the trainer rebuilds model/optimizer/scheduler from it."""

    path: Path
    trainer: dict[str, Any]            # epoch, batch_index, global_step, negatives, log, best_key ...
    optimizer: dict[str, Any]          # a torch optimizer state_dict
    scheduler: dict[str, Any]
    torch_rng: list[Tensor]            # one per rank of the run that wrote it
    rng: dict[str, Any]
    config: dict[str, Any]
    cuda_rng: list[Tensor] | None = None   # one per rank, when the run was on CUDA


def resume_dir(out: str | Path) -> Path:
    return Path(out) / RESUME_DIR


def recover(out: str | Path) -> None:
    """Tidy what a SIGKILL during :func:`save_resume` can leave behind.

    atomic_dir moves the old checkpoint aside before renaming the new one in: killed between the
    two renames, only the complete old copy (``.resume.old-PID``) exists, so it is put back.
    Half-written temporary directories are removed.
    """
    out = Path(out)
    if not out.is_dir():
        return
    for tmp in out.glob(f".{RESUME_DIR}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    old = sorted(p for p in out.glob(f".{RESUME_DIR}.old-*") if (p / STATE_FILE).exists())
    if old and not resume_dir(out).exists():
        logger.warning("%s: restoring the resume checkpoint from %s (a save was interrupted)", out, old[-1].name)
        old[-1].rename(resume_dir(out))
    for stale in out.glob(f".{RESUME_DIR}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)


def save_resume(out: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, trainer: dict[str, Any],
                torch_rng: list[Tensor], config: dict[str, Any], cuda_rng: list[Tensor] | None = None) -> Path:
    """Write ``<out>/resume`` atomically: a crash mid-write leaves the previous checkpoint intact.

    ``torch_rng``: each rank's CPU generator; ``cuda_rng``: each rank's GPU generator when on CUDA
    (without it a resumed GPU run would draw other dropout masks).
    """
    target = resume_dir(out)
    opt_tensors, opt_meta = flatten_state_dict(optimizer.state_dict())
    _, rng_json = rng_state()
    # LambdaLR keeps its lambdas out of the state ([None, ...] for plain functions): all JSON-able.
    sched = scheduler.state_dict()
    with atomic_dir(target) as tmp:
        save_model(model, str(tmp / MODEL_FILE))
        save_file(opt_tensors, str(tmp / OPTIMIZER_FILE))
        rng_tensors = {f"torch.rank{r}": t.contiguous() for r, t in enumerate(torch_rng)}
        rng_tensors.update({f"cuda.rank{r}": t.contiguous().cpu() for r, t in enumerate(cuda_rng or [])})
        save_file(rng_tensors, str(tmp / RNG_FILE))
        write_json(tmp / TRAIN_CONFIG_FILE, config)
        write_json(tmp / STATE_FILE, {"format": FORMAT_VERSION, "trainer": _jsonable(trainer),
                                      "optimizer": opt_meta, "scheduler": _jsonable(sched), "rng": rng_json})
    logger.debug("resume checkpoint at global step %s -> %s", trainer.get("global_step"), target)
    return target


def resume_progress(out: str | Path) -> dict[str, int] | None:
    """``{"epoch", "batch_index", "global_step"}`` of the resume checkpoint in ``out``, or None if there is none.

    Cheap (reads one JSON file): a supervisor can poll it to know a checkpoint exists before it
    kills the run, then continue with ``dpr train --resume OUT``.
    """
    path = resume_dir(out) / STATE_FILE
    if not path.exists():
        return None
    trainer = read_json(path)["trainer"]
    return {k: int(trainer[k]) for k in ("epoch", "batch_index", "global_step")}


def load_resume(out: str | Path) -> ResumeState:
    recover(out)
    path = resume_dir(out)
    state_file = path / STATE_FILE
    if not state_file.exists():
        raise RuntimeError(
            f"{out}: nothing to resume (no {RESUME_DIR}/{STATE_FILE}): the run never reached its first "
            f"checkpoint, or it finished (a finished run removes {RESUME_DIR}/)")
    meta = read_json(state_file)
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{state_file}: resume format {meta.get('format')!r}, this version reads {FORMAT_VERSION}")
    rng_tensors = load_file(str(path / RNG_FILE))
    ranks = sorted(int(k.removeprefix("torch.rank")) for k in rng_tensors if k.startswith("torch.rank"))
    cuda_ranks = sorted(int(k.removeprefix("cuda.rank")) for k in rng_tensors if k.startswith("cuda.rank"))
    optimizer = unflatten_state_dict(load_file(str(path / OPTIMIZER_FILE)), meta["optimizer"])
    return ResumeState(path=path, trainer=_from_json(meta["trainer"]), optimizer=optimizer,
                       scheduler=_from_json(meta["scheduler"]),
                       torch_rng=[rng_tensors[f"torch.rank{r}"] for r in ranks], rng=meta["rng"],
                       config=read_json(path / TRAIN_CONFIG_FILE),
                       cuda_rng=[rng_tensors[f"cuda.rank{r}"] for r in cuda_ranks] or None)


def load_resume_weights(model: nn.Module, state: ResumeState) -> None:
    missing, unexpected = load_model(model, str(state.path / MODEL_FILE), strict=False)
    if missing or unexpected:
        raise ValueError(f"{state.path / MODEL_FILE}: weights do not fit the model "
                         f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
