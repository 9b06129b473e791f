"""Pictures leave matplotlib as they found it: the user's backend and pyplot's open figures."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import torch
from PIL import Image

from dgm import plots


def test_figures_keep_the_backend_and_open_no_pyplot_figure(tmp_path):
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a backend Agg is not
    try:
        images = torch.rand(16, 784)
        plots.save_side_by_side([("a", images), ("b", images)], tmp_path / "side.png")
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == []
        with Image.open(tmp_path / "side.png") as img:
            assert img.format == "PNG" and img.width > img.height > 100
    finally:
        matplotlib.use(before)
