"""Callbacks: code that :func:`dgm.fit` and :func:`dgm.resume` (and ``dgm train``) run around
training, given as ``callbacks=[...]``: the interface (:class:`Callback`, in
:mod:`dgm.callbacks.base`) and TensorBoard logging (:class:`TensorBoardLogger`, in
:mod:`dgm.callbacks.tensorboard`; tensorboard itself is imported only when one is made)."""

from dgm.callbacks.base import Callback, CallbackList
from dgm.callbacks.tensorboard import TensorBoardLogger

__all__ = ["Callback", "CallbackList", "TensorBoardLogger"]
