"""Errors that name the argument at fault and what was expected."""

from __future__ import annotations


class GradCAMError(ValueError):
    """Base class of every error this library raises for bad input."""


class InputError(GradCAMError):
    """The input tensor ``x`` is not what the model and the method need."""


class LayerError(GradCAMError):
    """The ``layer`` argument does not name a usable layer of the model."""


class TargetError(GradCAMError):
    """The ``target`` (or ``output``) argument cannot be turned into one scalar per image."""


class MethodError(GradCAMError):
    """The method cannot be applied to this model (e.g. CAM on a head that is not GAP + linear)."""
