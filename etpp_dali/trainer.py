"""A thin PyTorch trainer on timm models whose epoch hook moves the loader along the curriculum.

What a user of timm's train.py expects: AdamW with a linearly scaled learning rate, warm-up and
cosine decay (over the fraction of *compute* done, as EfficientTrain++ prescribes), AMP, EMA,
mixup/cutmix, label smoothing, drop-path, gradient clipping, channels-last, DDP, evaluation at
full resolution, and checkpoints that survive a ``kill -9`` at any moment:

- a checkpoint (``last.pt``) after every epoch, and a weights-only ``stage<k>.pt`` when stage k
  ends; each is written to a temporary file, flushed and renamed, so the last good one is never
  replaced by a partial one; loading uses ``torch.load(weights_only=True)``;
- it holds the model, optimiser, scaler, EMA, loader position, RNG states, the schedule
  position and the metrics history; ``metrics.jsonl`` is rewritten from that history, so a
  resumed run's log has no gap and no duplicate epoch;
- Ctrl-C (SIGINT) or SIGTERM writes a checkpoint at the current batch and exits cleanly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .curriculum import Curriculum, ScheduleError
from .data import DataError
from .files import save_with, write_text_atomic
from .parallel import usable_cores

__all__ = ["TrainConfig", "RecipeError", "Trainer", "load_recipe", "train"]

CHECKPOINT_FORMAT = 1


class RecipeError(ValueError):
    """A recipe or option that cannot be used; the message names the key or flag."""


@dataclass
class TrainConfig:
    """Every setting of a run. Recipes (YAML) set these keys; command-line flags override them."""

    name: str = "run"
    data: str | None = "demo"          # a data set path, "demo" for the embedded demo set
    val_split: float | None = None     # hold out this fraction of train when there is no val/
    model: str = "resnet10t"
    # schedule: a preset (etpp, et, baseline) or a schedule file, with its knobs
    preset: str = "etpp"
    family: str = "resnet"
    budget: float | None = None
    resolution: int = 224
    replay: bool = False
    baseline: bool = False              # train without the curriculum: full size, m = 9
    baseline_budget: float | None = None  # epochs of the baseline (default: the schedule's)
    # optimisation
    batch_size: int = 256               # global batch per step
    lr: float | None = None             # absolute lr; default: base_lr * batch_size / lr_base_batch
    base_lr: float = 4e-3
    lr_base_batch: int = 4096
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_epochs: float = 20.0         # full-resolution epochs of compute
    warmup_fraction: float | None = None  # or a fraction of the budget (DeiT: 0.2)
    clip_grad: float | None = None
    drop_path: float = 0.0              # at E = 200, scaled by E / 200
    mixup: float = 0.0
    cutmix: float = 0.0
    smoothing: float = 0.0
    ema: bool = False
    ema_decay: float = 0.9999
    amp: str = "off"                    # bf16 | fp16 | off
    channels_last: bool = False
    # pipeline and run
    device: str = "auto"
    threads: int | None = None
    lowpass: str = "fourier"
    seed: int = 0
    val_every: int = 1
    output: str = "runs/etpp"
    demo_classes: int = 10
    demo_train_per_class: int = 100
    demo_val_per_class: int = 25
    demo_size: int = 72
    progress: bool = True
    tensorboard: bool = False           # also log scalars for TensorBoard (needs `tensorboard`)

    def curriculum(self) -> Curriculum:
        """The schedule this config trains with."""
        try:
            if self.baseline or self.preset == "baseline":
                budget = (self.budget if self.preset == "baseline" else None) or self.baseline_budget or 300
                return Curriculum.preset("baseline", budget=budget, resolution=self.resolution,
                                         baseline_budget=budget)
            return Curriculum.resolve(self.preset, family=self.family, budget=self.budget,
                                      resolution=self.resolution, replay=self.replay,
                                      baseline_budget=self.baseline_budget)
        except ScheduleError as exc:
            raise RecipeError(str(exc)) from None

    def learning_rate(self, world_batch: int) -> float:
        return self.lr if self.lr is not None else self.base_lr * world_batch / self.lr_base_batch

    def validate(self) -> None:
        if self.amp not in ("bf16", "fp16", "off"):
            raise RecipeError(f"--amp {self.amp!r} is unknown; use bf16, fp16 or off")
        if self.batch_size < 1:
            raise RecipeError(f"--batch-size {self.batch_size} must be >= 1")
        if self.val_split is not None and not 0.0 < self.val_split < 1.0:
            raise RecipeError(f"--val-split {self.val_split} must be between 0 and 1")
        if self.val_every < 1:
            raise RecipeError(f"--val-every {self.val_every} must be >= 1")
        for key in ("mixup", "cutmix", "smoothing", "drop_path", "weight_decay"):
            if getattr(self, key) < 0:
                raise RecipeError(f"{key} = {getattr(self, key)} must be >= 0")
        if self.lr is not None and self.lr <= 0:
            raise RecipeError(f"--lr {self.lr} must be > 0")


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_SCHEDULE_KEYS = {"preset", "family", "budget", "resolution", "replay", "baseline_budget"}


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe file into TrainConfig keys, rejecting unknown keys.

    A ``schedule:`` section may hold preset/family/budget/resolution/replay/baseline_budget, or a
    whole inline schedule (``stages:``), which is written next to the run and used as a file.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"--recipe {path}: no such file; see pipelines/ for the recipes")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, Mapping):
        raise RecipeError(f"{path}: the top level must be a mapping of settings")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "schedule":
            if not isinstance(value, Mapping):
                raise RecipeError(f"{path}: schedule must be a mapping")
            if "stages" in value:
                out["preset"] = str(path)  # Curriculum.from_file reads the schedule section
                continue
            for k, v in value.items():
                if k not in _SCHEDULE_KEYS:
                    raise RecipeError(f"{path}: unknown key schedule.{k!r}; known: {', '.join(sorted(_SCHEDULE_KEYS))}")
                out[k] = v
        elif key in _FIELDS:
            out[key] = value
        else:
            raise RecipeError(f"{path}: unknown key {key!r}; known keys are the TrainConfig fields "
                              f"(e.g. model, batch_size, lr, schedule)")
    out.setdefault("name", path.stem)
    return out


# --------------------------------------------------------------------------- helpers
def _is_rank0() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) \
        or torch.distributed.get_rank() == 0


def _world() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(internal), gauss_next]}


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _accuracy(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[int]:
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # fewer than 5 classes: top-k of all
    hits = top.eq(target[:, None])
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def adapt_model_to_band(model: torch.nn.Module, band: int) -> None:
    """Make ``model`` take ``band`` x ``band`` inputs: Swin windows become band / 32 (METHOD.md
    section 3); ViT/DeiT are built with ``dynamic_img_size`` (position embeddings interpolated in
    the forward pass); convnets need nothing."""
    base = _unwrap(model)
    if type(base).__name__ == "SwinTransformer" and hasattr(base, "set_input_size"):
        base.set_input_size(img_size=(band, band), window_size=max(1, band // 32))


def create_model(name: str, num_classes: int, drop_path: float) -> torch.nn.Module:
    """A timm model by name; ViT-like models get ``dynamic_img_size=True`` when they take it."""
    import timm

    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise RecipeError(f"--model {name!r} is not a timm model; see timm.list_models() "
                          "(e.g. resnet50, convnext_tiny, deit_small_patch16_224)")
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": num_classes}
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    try:
        return timm.create_model(name, dynamic_img_size=True, **kwargs)
    except TypeError:
        return timm.create_model(name, **kwargs)


def check_model_takes_bands(model: torch.nn.Module, bands: list[int], device: torch.device,
                            memory_format: torch.memory_format) -> None:
    """A forward pass at every band, before any training: a clear error if one fails."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for band in bands:
                adapt_model_to_band(model, band)
                x = torch.zeros(2, 3, band, band, device=device).contiguous(memory_format=memory_format)
                try:
                    model(x)
                except Exception as exc:  # the model's own message says why
                    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    raise RecipeError(f"--model {type(_unwrap(model)).__name__} cannot take {band} x {band} inputs "
                                      f"(a band of the schedule): {msg}; use a convnet, a ViT built with "
                                      "dynamic_img_size, a Swin, or a schedule whose bands it takes") from None
    finally:
        adapt_model_to_band(model, bands[0])
        model.train(was_training)


# ---------------------------------------------------------------------------- trainer
class Trainer:
    """Runs one training job from a :class:`TrainConfig`."""

    def __init__(self, cfg: TrainConfig, resume: str | bool | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.rank0 = _is_rank0()
        self.world = _world()
        self._init_device()
        self.curriculum = cfg.curriculum()
        self.out = Path(cfg.output)
        self.resume_path = self._resume_path(resume)
        self._init_data()
        self._init_model()
        self.history: list[dict[str, Any]] = []
        self.tb = self._tensorboard() if cfg.tensorboard and self.rank0 else None
        self.elapsed = 0.0
        self.stop_requested = False

    # ------------------------------------------------------------------------- set-up
    def _init_device(self) -> None:
        from .loader import resolve_device

        try:
            self.device = torch.device(resolve_device(self.cfg.device))
        except (ValueError, RuntimeError) as exc:
            raise RecipeError(f"--device {self.cfg.device}: {exc}") from None
        if self.device.type == "cuda" and torch.distributed.is_initialized():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)
        if self.cfg.amp == "fp16" and self.device.type != "cuda":
            raise RecipeError("--amp fp16 needs a CUDA GPU; use --amp bf16 or off on the CPU")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # shapes are fixed within a stage: tune once a stage
        threads = self.cfg.threads or max(1, usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
        self.threads = threads
        if self.device.type == "cpu":
            torch.set_num_threads(threads)

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RecipeError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        return SummaryWriter(log_dir=str(self.out / "tensorboard"))

    def _resume_path(self, resume: str | bool | None) -> Path | None:
        if not resume:
            return None
        path = Path(resume) if isinstance(resume, str) else self.out / "last.pt"
        if path.is_dir():
            path = path / "last.pt"
        if not path.is_file():
            raise RecipeError(f"--resume: no checkpoint at {path}; give a run folder or a .pt file")
        return path

    def _init_data(self) -> None:
        from .data import DemoSpec, demo_dataset
        from .loader import CurriculumLoader, ValidationLoader
        from .sources import open_source

        cfg = self.cfg
        if not cfg.data:
            raise RecipeError(f"recipe {cfg.name!r} needs a data set: pass --data DIR (an ImageFolder with train/ and val/)")
        if cfg.data == "demo":
            spec = DemoSpec(classes=cfg.demo_classes, train_per_class=cfg.demo_train_per_class,
                            val_per_class=cfg.demo_val_per_class, size=cfg.demo_size)
            root: Any = demo_dataset(spec) if self.rank0 or not torch.distributed.is_initialized() else None
            if torch.distributed.is_initialized():
                holder = [str(root) if root else None]
                torch.distributed.broadcast_object_list(holder, src=0)
                root = holder[0]
            self.data_root = Path(root)
        else:
            self.data_root = Path(cfg.data)
            if not self.data_root.exists():
                raise RecipeError(f"--data {cfg.data}: no such path; give an ImageFolder root with train/ and val/")
        try:
            train_src = open_source(self.data_root, "train")
            has_val = (self.data_root / "val").is_dir()
            if has_val:
                val_src = open_source(self.data_root, "val", classes=train_src.classes)
            elif cfg.val_split:
                train_src, val_src = _split(train_src, cfg.val_split, cfg.seed)
            else:
                raise RecipeError(f"--data {cfg.data}: has no val/ split; add one or pass --val-split 0.1")
        except DataError as exc:
            raise RecipeError(str(exc)) from None
        if self.rank0 and train_src.bad:
            print(f"etpp: {len(train_src.bad)} file(s) left out of training:\n{train_src.report_bad()}", file=sys.stderr)
        self.num_classes = len(train_src.classes)
        per_rank = self.cfg.batch_size // self.world
        if per_rank < 1:
            raise RecipeError(f"--batch-size {cfg.batch_size} is smaller than the {self.world} ranks")
        self.train_loader = CurriculumLoader(train_src, self.curriculum, per_rank, device=str(self.device),
                                             num_threads=self.threads, seed=cfg.seed, lowpass=cfg.lowpass,
                                             channels_last=cfg.channels_last, verbose=False)
        self.val_loader = ValidationLoader(val_src, self.curriculum.resolution, per_rank, device=str(self.device),
                                           num_threads=self.threads, channels_last=cfg.channels_last)

    def _init_model(self) -> None:
        import timm.optim
        from timm.utils import ModelEmaV3

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        # the reference scales drop-path with the ET++ budget (E / 200); a baseline keeps its rate
        scaled = self.curriculum.name.startswith(("etpp", "et")) and not self.curriculum.name.startswith("baseline")
        drop_path = cfg.drop_path * (self.curriculum.budget / 200.0 if scaled else 1.0)
        model = create_model(cfg.model, self.num_classes, drop_path).to(self.device)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = model.to(memory_format=self.memory_format)
        bands = sorted({s.band for s in self.curriculum.stages if s.epochs} | {self.curriculum.resolution})
        check_model_takes_bands(model, bands, self.device, self.memory_format)
        self.model = model
        if torch.distributed.is_initialized():
            self.model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.lr = cfg.learning_rate(cfg.batch_size)
        self.optimizer = timm.optim.create_optimizer_v2(_unwrap(self.model), "adamw", lr=self.lr,
                                                        weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
        self.ema = ModelEmaV3(_unwrap(self.model), decay=cfg.ema_decay) if cfg.ema else None
        self.mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            from timm.data import Mixup

            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                               num_classes=self.num_classes)
            from timm.loss import SoftTargetCrossEntropy

            self.criterion = SoftTargetCrossEntropy()
        else:
            self.criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.smoothing)
        wf = cfg.warmup_fraction
        self.warmup = wf if wf is not None else self.curriculum.warmup_fraction(cfg.warmup_epochs)

    # ------------------------------------------------------------------------ schedule
    def lr_at(self, fraction: float) -> float:
        """Linear warm-up then cosine to ``min_lr``, over the fraction of compute done."""
        if self.warmup > 0 and fraction < self.warmup:
            return self.lr * fraction / self.warmup
        progress = (fraction - self.warmup) / max(1e-12, 1.0 - self.warmup)
        return self.cfg.min_lr + 0.5 * (self.lr - self.cfg.min_lr) * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def _autocast(self):
        if self.cfg.amp == "off":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # --------------------------------------------------------------------- checkpoints
    def state(self, partial: dict[str, Any] | None) -> dict[str, Any]:
        cur = self.curriculum
        loader = self.train_loader
        return {
            "format": CHECKPOINT_FORMAT,
            "config": dataclasses.asdict(self.cfg),
            "schedule": cur.state_dict(cur.position(min(loader.epoch, cur.total_epochs), loader.step)),
            "model": _unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "ema": self.ema.module.state_dict() if self.ema else None,
            "loader": loader.state_dict(),
            "rng": _rng_state(),
            "history": self.history,
            "partial": partial,
            "elapsed": self.elapsed,
        }

    def save(self, name: str, partial: dict[str, Any] | None = None) -> Path | None:
        if not self.rank0:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / name
        save_with(lambda f: torch.save(self.state(partial), f), path)
        return path

    def load(self, path: Path) -> dict[str, Any] | None:
        """Restore everything from ``path``; returns the partial-epoch accumulators, if any."""
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise RecipeError(f"--resume {path}: not a readable checkpoint ({str(exc).splitlines()[0]})") from None
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise RecipeError(f"--resume {path}: checkpoint format {ckpt.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        try:
            self.curriculum.load_state_dict(ckpt["schedule"])
        except ScheduleError as exc:
            raise RecipeError(f"--resume {path}: {exc}") from None
        saved_model = ckpt["config"].get("model")
        if saved_model != self.cfg.model:
            raise RecipeError(f"--resume {path}: the run trained --model {saved_model}, not {self.cfg.model}")
        _unwrap(self.model).load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler and ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema and ckpt["ema"]:
            self.ema.module.load_state_dict(ckpt["ema"])
        self.train_loader.load_state_dict(ckpt["loader"])
        _set_rng_state(ckpt["rng"])
        self.history = list(ckpt["history"])
        self.elapsed = float(ckpt["elapsed"])
        return ckpt["partial"]

    def _write_metrics(self, new_row: bool = True) -> None:
        """Rewrite metrics.jsonl from the history; log the newest row to TensorBoard."""
        if not self.rank0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
        if self.tb is not None and self.history and new_row:
            row = self.history[-1]
            for key in ("loss", "lr", "images_per_s", "data_wait", "band", "magnitude", "top1", "top5", "ema_top1"):
                if row.get(key) is not None:
                    self.tb.add_scalar(key, row[key], global_step=row["epoch"])
            self.tb.flush()

    # -------------------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        model.eval()
        adapt_model_to_band(model, self.curriculum.resolution)
        counts = torch.zeros(4, dtype=torch.float64)  # top1, top5, loss sum, n
        for images, labels in self.val_loader:
            with self._autocast():
                logits = model(images)
            t1, t5 = _accuracy(logits.float(), labels)
            loss = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
            counts += torch.tensor([t1, t5, float(loss), len(labels)], dtype=torch.float64)
        if torch.distributed.is_initialized():
            counts = counts.to(self.device)
            torch.distributed.all_reduce(counts)
            counts = counts.cpu()
        model.train()
        n = max(counts[3].item(), 1.0)
        return {"top1": 100.0 * counts[0].item() / n, "top5": 100.0 * counts[1].item() / n,
                "val_loss": counts[2].item() / n, "val_images": int(counts[3].item())}

    # --------------------------------------------------------------------------- run
    def _handle_signals(self) -> None:
        def request_stop(signum, frame):
            self.stop_requested = True

        self._old_handlers = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}

    def _should_stop(self) -> bool:
        """The stop flag, agreed by every rank (they must stop at the same step)."""
        if not torch.distributed.is_initialized():
            return self.stop_requested
        flag = torch.tensor([1.0 if self.stop_requested else 0.0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        self.stop_requested = bool(flag.item())
        return self.stop_requested

    def _restore_signals(self) -> None:
        for s, h in getattr(self, "_old_handlers", {}).items():
            signal.signal(s, h)

    def run(self) -> dict[str, Any]:
        """Train to the end of the schedule (or until interrupted); returns the summary."""
        from tqdm import tqdm

        cfg, cur, loader = self.cfg, self.curriculum, self.train_loader
        partial = self.load(self.resume_path) if self.resume_path else None
        self._write_metrics(new_row=False)  # a resumed run's log matches its checkpoint
        start_epoch = len(self.history)  # epochs 0..n-1 are done (a partial one continues)
        self._handle_signals()
        self.interrupted = False
        try:
            for epoch in range(start_epoch, cur.total_epochs):
                stage = cur.stage_at(epoch)
                loader.set_epoch(epoch)
                adapt_model_to_band(self.model, stage.band)
                acc = partial or {"loss_sum": 0.0, "seen": 0, "time": 0.0, "wait": 0.0}
                partial = None
                steps = loader.batches_in_epoch(epoch)
                show = self.rank0 and cfg.progress
                bar = tqdm(total=steps, initial=loader.step, disable=not (show and sys.stderr.isatty()),
                           desc=f"epoch {epoch + 1}/{cur.total_epochs}", leave=False, dynamic_ncols=True)
                t_epoch = time.perf_counter()
                wait0 = loader.wait_seconds
                for images, labels in loader:
                    step = loader.step - 1
                    lr = self.lr_at(cur.compute_fraction(epoch, step, steps))
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr * group.get("lr_scale", 1.0)
                    loss = self._train_step(images, labels)
                    acc["loss_sum"] += loss * len(labels)
                    acc["seen"] += len(labels)
                    now = time.perf_counter()
                    rate = acc["seen"] / max(1e-9, acc["time"] + now - t_epoch)
                    bar.set_postfix(img_s=f"{rate:.0f}", loss=f"{loss:.3f}", band=stage.band,
                                    m=f"{stage.magnitude:g}", stage=stage.index, refresh=False)
                    bar.update(1)
                    if self._should_stop():
                        break
                bar.close()
                spent = time.perf_counter() - t_epoch
                acc["time"] += spent
                acc["wait"] += loader.wait_seconds - wait0
                self.elapsed += spent
                if self.stop_requested and loader.step < steps:
                    self.save("last.pt", partial=acc)
                    self.interrupted = True
                    if self.rank0:
                        print(f"\netpp: interrupted; checkpoint written to {self.out / 'last.pt'} "
                              f"(resume with --resume {self.out})", file=sys.stderr)
                    break
                row = self._end_epoch(epoch, stage, acc)
                if show and not sys.stderr.isatty():  # a log file gets one line an epoch, not a bar
                    top = f", top-1 {row['top1']:.1f}%" if "top1" in row else ""
                    print(f"epoch {epoch + 1}/{cur.total_epochs} stage {stage.index} band {stage.band} "
                          f"m {stage.magnitude:g}: loss {row['loss']:.3f}, {row['images_per_s']:.0f} img/s{top}",
                          file=sys.stderr, flush=True)
                if self.stop_requested:
                    self.interrupted = True
                    break
        finally:
            self._restore_signals()
        return self.summary()

    def _train_step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        cfg = self.cfg
        targets = labels
        if self.mixup is not None:
            if len(images) % 2:  # timm's batch mixup needs an even batch
                images, labels = images[:-1], labels[:-1]
            images, targets = self.mixup(images, labels)
        with self._autocast():
            loss = self.criterion(self.model(images), targets)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if cfg.clip_grad:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(_unwrap(self.model))
        return float(loss.detach())

    def _end_epoch(self, epoch: int, stage: Any, acc: dict[str, Any]) -> dict[str, Any]:
        cur = self.curriculum
        last = epoch == cur.total_epochs - 1
        row: dict[str, Any] = {
            "epoch": epoch, "stage": stage.index, "band": stage.band, "magnitude": stage.magnitude,
            "replay": stage.replay, "lr": self.optimizer.param_groups[0]["lr"],
            "loss": acc["loss_sum"] / max(1, acc["seen"]), "images": acc["seen"] * self.world,
            "images_per_s": acc["seen"] * self.world / max(1e-9, acc["time"]),
            "epoch_time": acc["time"], "data_wait": acc["wait"] / max(1e-9, acc["time"]),
            "compute_fraction": cur.compute_fraction(epoch + 1), "time": self.elapsed,
        }
        if last or (epoch + 1) % self.cfg.val_every == 0:
            row.update(self.evaluate(self.model))
            if self.ema is not None:
                row.update({f"ema_{k}": v for k, v in self.evaluate(self.ema.module).items() if k != "val_images"})
            adapt_model_to_band(self.model, stage.band)
        self.history.append(row)
        self.save("last.pt")
        if epoch + 1 == stage.end_epoch and self.rank0:
            # the end of a stage: a weights-only snapshot (last.pt holds the full state)
            snapshot = {"format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(self.cfg),
                        "schedule": cur.state_dict(cur.position(epoch + 1)), "model": _unwrap(self.model).state_dict(),
                        "ema": self.ema.module.state_dict() if self.ema else None, "history": self.history}
            save_with(lambda f: torch.save(snapshot, f), self.out / f"stage{stage.index}.pt")
        self._write_metrics()
        return row

    # ------------------------------------------------------------------------ summary
    def summary(self) -> dict[str, Any]:
        cur = self.curriculum
        rows = []
        for s in cur.stages:
            done = [r for r in self.history if r["stage"] == s.index]
            if not s.epochs:
                continue
            t = sum(r["epoch_time"] for r in done)
            n = sum(r["images"] for r in done)
            wait = sum(r["data_wait"] * r["epoch_time"] for r in done)  # data_wait: a fraction of the epoch
            rows.append({"stage": s.index, "band": s.band, "magnitude": s.magnitude, "epochs": s.epochs,
                         "done": len(done), "wall_s": round(t, 1), "images_per_s": round(n / t, 1) if t else None,
                         "stall_fraction": round(wait / t, 3) if t else None})
        evals = [r for r in self.history if "top1" in r]
        final = evals[-1] if evals else {}
        full_res = [r for r in self.history if r["band"] == cur.resolution]
        base_epoch_s = (sum(r["epoch_time"] for r in full_res) / len(full_res)) if full_res else None
        baseline_budget = cur.baseline_budget
        est_baseline_s = base_epoch_s * baseline_budget if base_epoch_s else None
        return {
            "name": self.cfg.name, "model": self.cfg.model, "schedule": cur.name,
            "epochs_done": len(self.history), "epochs": cur.total_epochs, "interrupted": getattr(self, "interrupted", False),
            "stages": rows, "top1": final.get("top1"), "top5": final.get("top5"),
            "ema_top1": final.get("ema_top1"), "wall_s": round(self.elapsed, 1),
            "relative_compute": round(cur.relative_compute(), 4), "compute_saved": round(1 - cur.relative_compute(), 4),
            "baseline_budget": baseline_budget,
            "estimated_baseline_wall_s": round(est_baseline_s, 1) if est_baseline_s else None,
            "wall_saved": round(1 - self.elapsed / est_baseline_s, 4) if est_baseline_s else None,
            "output": str(self.out),
        }

    def close(self) -> None:
        self.train_loader.close()
        if self.tb is not None:
            self.tb.close()


def _split(source: Any, fraction: float, seed: int):
    """A deterministic train/val split of one source (per class, at least one val image each)."""
    from .sources import Source

    rng = np.random.default_rng([seed, 0xDA7A])
    labels = source.labels
    val_idx = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = max(1, int(round(len(members) * fraction))) if len(members) > 1 else 0
        val_idx += list(rng.choice(members, size=k, replace=False))
    val_set = set(int(i) for i in val_idx)
    keep = [i for i in range(len(source)) if i not in val_set]

    def subset(idx):
        members = None if source.members is None else [source.members[i] for i in idx]
        return Source(source.name, source.classes, [source.records[i] for i in idx], [], members)

    train = subset(keep)
    train.bad = source.bad
    return train, subset(sorted(val_set))


def train(cfg: TrainConfig, resume: str | bool | None = None) -> dict[str, Any]:
    """Run ``cfg`` to the end; write the summary, the metrics log and the curves plot."""
    trainer = Trainer(cfg, resume)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    if trainer.rank0:
        out = Path(cfg.output)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        if trainer.history:
            from .plots import plot_training

            plot_training(trainer.history, out / "curves.png",
                          title=f"{cfg.model}, {trainer.curriculum.name}, E = {trainer.curriculum.budget:g}")
    return summary
