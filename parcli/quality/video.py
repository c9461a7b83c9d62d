"""Clip quality of a `digits-video` family per n: per-frame accuracy (each digit re-centred as in
MNIST for the shipped classifier), one class throughout, and motion, beside the training clips'."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from parcli.pipeline import Pipeline
from parcli.quality.digits import IMAGE_SIDE, DigitClassifier, generated, predict
from parcli.training.data import load_digits
from parcli.training.moving_digits import PATCH, digit_crops, mean_displacement, moving_digits

ACCURACY_GOALS = {1: 0.90, 4: 0.90, 16: 0.85}
DEFAULT_ACCURACY_GOAL = 0.85
MOTION_TOLERANCE = 0.5  # generated motion within 50 % of the training clips'
BASELINE_CLIPS = 1000


@dataclass
class VideoEvalResult:
    regions: int
    passes: int
    planned_passes: int  # n + (tokens - n) / n, worked out from the grid alone
    clips: int
    frames: int
    frame_accuracy: float
    per_class_accuracy: list[float]
    consistency: float
    motion: float
    motion_vs_training: float
    accuracy_goal: float
    passes_goals: bool
    seconds: float


@dataclass
class VideoBaseline:
    """The training clips scored like generated ones."""

    clips: int
    frame_accuracy: float
    consistency: float
    motion: float


def classifier_view(frames: np.ndarray) -> np.ndarray:
    """(N, H, W[, 1]) frames -> (N, 32, 32, 1): each digit's window, centred as in MNIST."""
    border = (IMAGE_SIDE - PATCH) // 2
    return np.pad(digit_crops(frames), ((0, 0), (border, border), (border, border)))[..., None]


def clip_scores(
    classifier: DigitClassifier, clips: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(per-frame correctness (N, T), every frame one class (N,)) of grey clips (N, T, H, W, C)."""
    count, frames = clips.shape[:2]
    grey = clips.mean(axis=-1, keepdims=True) if clips.shape[-1] != 1 else clips
    flat = np.asarray(grey, dtype=np.uint8).reshape(count * frames, *clips.shape[2:4])
    predicted = predict(classifier, classifier_view(flat)).reshape(count, frames)
    return predicted == labels[:, None], (predicted == predicted[:, :1]).all(axis=1)


def training_baseline(
    classifier: DigitClassifier, frames: int, count: int = BASELINE_CLIPS
) -> VideoBaseline:
    clips, labels = moving_digits(*load_digits(), frames=frames)
    pick = np.linspace(0, len(clips) - 1, min(count, len(clips))).astype(np.int64)
    correct, consistent = clip_scores(classifier, clips[pick], labels[pick])
    motion = mean_displacement(clips[pick])
    return VideoBaseline(len(pick), float(correct.mean()), float(consistent.mean()), motion)


def planned_passes(tokens: int, regions: int) -> int:
    return regions + (tokens - regions) // regions


def evaluate_video(
    pipelines: Mapping[int, Pipeline],
    classifier: DigitClassifier,
    samples_per_class: int = 50,
    seed: int = 0,
    batch_size: int = 100,
    on_progress: Callable[[int, int, int], None] | None = None,
) -> tuple[list[VideoEvalResult], VideoBaseline]:
    """Generate `samples_per_class` clips of every class with each pipeline and score them."""
    classes = classifier.num_classes
    scored = generated(pipelines, classes, samples_per_class, seed, batch_size, on_progress, True)
    first = next(scored)  # refuses an image model before the baseline's clips are made
    baseline = training_baseline(classifier, first[1].plan.grid[0])
    results: list[VideoEvalResult] = []
    for n, pipe, labels, clips, passes, seconds in itertools.chain([first], scored):
        correct, consistent = clip_scores(classifier, clips, labels)
        motion = mean_displacement(clips)
        ratio = motion / baseline.motion
        accuracy = float(correct.mean())
        goal = ACCURACY_GOALS.get(n, DEFAULT_ACCURACY_GOAL)
        planned = planned_passes(pipe.plan.num_tokens, n)
        results.append(
            VideoEvalResult(
                regions=n,
                passes=passes,
                planned_passes=planned,
                clips=len(labels),
                frames=pipe.plan.grid[0],
                frame_accuracy=accuracy,
                per_class_accuracy=[float(correct[labels == c].mean()) for c in range(classes)],
                consistency=float(consistent.mean()),
                motion=motion,
                motion_vs_training=ratio,
                accuracy_goal=goal,
                passes_goals=accuracy >= goal
                and abs(ratio - 1) <= MOTION_TOLERANCE
                and passes == planned == pipe.plan.num_passes,
                seconds=seconds,
            )
        )
    return results, baseline
