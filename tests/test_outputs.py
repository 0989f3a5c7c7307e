"""Saved files: numbering, metadata, and the optional visible AI label."""

import numpy as np
from PIL import Image

from pipelines.outputs import OutputWriter
from pipelines.formats.pnginfo import read_aigc_label


def test_files_are_numbered_and_never_overwritten(tmp_path):
    writer = OutputWriter(tmp_path)
    image = Image.new("RGB", (32, 32), (10, 20, 30))
    first = writer.save(image, "p\nSteps: 1, Sampler: Euler, Seed: 5", 5)
    second = OutputWriter(tmp_path).save(image, "p\nSteps: 1, Sampler: Euler, Seed: 5", 5)  # a restarted app
    assert first != second and first.name.startswith("00001-5") and second.name.startswith("00002-5")


def test_visible_label_marks_the_corner_and_keeps_the_metadata(tmp_path):
    image = Image.new("RGB", (256, 256), (200, 200, 200))
    plain = OutputWriter(tmp_path / "a").save(image, "p\nSteps: 1, Sampler: Euler, Seed: 1", 1)
    marked = OutputWriter(tmp_path / "b", visible_label="AI生成").save(image, "p\nSteps: 1, Sampler: Euler, Seed: 1", 1)
    a, b = np.asarray(Image.open(plain)).astype(int), np.asarray(Image.open(marked)).astype(int)
    assert np.array_equal(a[:128, :128], b[:128, :128])  # the rest of the picture is untouched
    assert np.abs(a[-40:, -120:] - b[-40:, -120:]).max() > 50  # the lower-right corner carries the mark
    assert read_aigc_label(Image.open(marked))["Label"] == "1"
    assert "parameters" in Image.open(marked).info
