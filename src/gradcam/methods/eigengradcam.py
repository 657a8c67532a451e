"""Eigen-Grad-CAM (pytorch-grad-cam's EigenGradCAM: Eigen-CAM of the gradient-weighted activations)."""

from __future__ import annotations

from .eigencam import eigen_smoothed
from .hirescam import HiResCAM


class EigenGradCAM(eigen_smoothed(HiResCAM)):
    """Eigen-Grad-CAM: ``L = ReLU((T - mean T) v1)`` with ``T_k = g_k ⊙ A_k``, ``g = dy/dA``.

    The first principal component (over positions, centred, as in Eigen-CAM, Muhammad & Yeasin 2020)
    of HiResCAM's element-wise terms ``g_k A_k``: the class-discriminative version of Eigen-CAM
    (pytorch-grad-cam's ``EigenGradCAM``, which is HiResCAM with ``eigen_smooth=True``; this class
    is exactly that composition). The sign of the component is chosen so the map correlates
    positively with HiResCAM's map before its ReLU (pytorch-grad-cam leaves it to the SVD).
    ``weights`` reports the spatial mean of g for reference; the map does not use it.
    """

    name = "eigengradcam"
