r"""A data set as a run uses it: training images as grey levels, the fixed test images, labels."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dgm.errors import DataError


@dataclass
class Data:
    """Training images as grey levels in [0, 1] (binarized per batch when the run says so), the
    test images as evaluated (binarized once with a fixed seed, or grey levels), and their labels.

    Shapes: ``x_train`` (N, D), ``x_test`` (M, D), ``test_labels`` (M,) int64 or None, and
    ``image_shape`` (H, W) with H * W = D.
    """

    x_train: torch.Tensor
    x_test: torch.Tensor
    image_shape: tuple[int, int]
    test_labels: torch.Tensor | None = None

    @classmethod
    def from_arrays(
        cls,
        train: Any,
        test: Any,
        test_labels: Any | None = None,
        image_shape: tuple[int, int] | None = None,
    ) -> Data:
        r"""Your own images: ``train`` (N, H, W) or (N, D) and ``test`` likewise, as numpy arrays
        or tensors, either uint8 grey levels 0..255 or floats in [0, 1] (binary images are
        floats in {0, 1}); ``test_labels`` (M,) integers, optional. Flat images need
        ``image_shape`` unless D is a square.

        >>> import numpy as np
        >>> data = Data.from_arrays(np.zeros((10, 4, 4)), np.ones((5, 16)))
        >>> data.x_train.shape, data.x_test.shape, data.image_shape
        (torch.Size([10, 16]), torch.Size([5, 16]), (4, 4))
        """
        x_train, shape_train = _images(train, "train", image_shape)
        x_test, shape_test = _images(test, "test", image_shape or shape_train)
        if x_train.shape[1] != x_test.shape[1]:
            raise DataError(
                f"Data.from_arrays: train images have {x_train.shape[1]} pixels and test images "
                f"{x_test.shape[1]}; expected the same"
            )
        labels = None
        if test_labels is not None:
            labels = torch.as_tensor(np.asarray(test_labels)).long().reshape(-1)
            if labels.shape[0] != x_test.shape[0]:
                raise DataError(
                    f"Data.from_arrays: {labels.shape[0]} test labels for {x_test.shape[0]} "
                    "test images; expected one per image"
                )
        return cls(x_train, x_test, shape_train, labels)

    def to(self, device: torch.device | str) -> Data:
        labels = None if self.test_labels is None else self.test_labels.to(device)
        return Data(self.x_train.to(device), self.x_test.to(device), self.image_shape, labels)


def _images(
    array: Any, name: str, image_shape: tuple[int, int] | None
) -> tuple[torch.Tensor, tuple[int, int]]:
    """(N, D) float32 grey levels in [0, 1] and the image shape, or a DataError."""
    a = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if a.ndim not in (2, 3) or a.shape[0] == 0:
        raise DataError(
            f"Data.from_arrays: {name} images have shape {a.shape}; expected (N, H, W) or (N, D)"
        )
    if a.dtype == np.uint8:
        x = torch.from_numpy(a.astype(np.float32) / 255.0)
    elif np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer):
        x = torch.from_numpy(a.astype(np.float32))
        if not bool(torch.isfinite(x).all()) or x.min() < 0 or x.max() > 1:
            raise DataError(
                f"Data.from_arrays: {name} images must be uint8 0..255 or floats in [0, 1]"
            )
    else:
        raise DataError(f"Data.from_arrays: {name} images have dtype {a.dtype}; expected numbers")
    if a.ndim == 3:
        shape = (int(a.shape[1]), int(a.shape[2]))
    elif image_shape is not None:
        shape = (int(image_shape[0]), int(image_shape[1]))
    else:
        side = math.isqrt(a.shape[1])
        if side * side != a.shape[1]:
            raise DataError(
                f"Data.from_arrays: {name} images have {a.shape[1]} pixels, not a square: give "
                "image_shape=(H, W)"
            )
        shape = (side, side)
    if shape[0] * shape[1] != x[0].numel():
        raise DataError(
            f"Data.from_arrays: image_shape {shape} does not hold {x[0].numel()} pixels"
        )
    return x.reshape(x.shape[0], -1).contiguous(), shape
