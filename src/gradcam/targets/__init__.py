"""What ``y`` is: the differentiable scalar (per image, per map) that an explanation explains.

Grad-CAM (Selvaraju et al., ICCV 2017, sec. 3) needs one differentiable scalar ``y`` per map; the
paper already uses it beyond classification (captioning: the log-probability of the caption; VQA:
the answer's score). The explainers take ``target=``: ``None`` (top-1 class), class indices,
:class:`TopK`, a list of per-image callables (:class:`PerImageTargets`), or any callable
``output -> (B,)`` / ``(B, k)`` scalars (k maps per image from one forward pass); see
:mod:`gradcam.targets.resolution`. The task targets below are such callables; they compose:
``t1 + t2``, ``t1 - t2``, ``0.5 * t``, ``-t`` and ``Stack(t1, t2)`` (one map per target, k = 2).

============================  ===========================================================
target                        y for image b
============================  ===========================================================
``ClassScore(c, kind)``       logit ``s_c``, softmax ``p_c``, ``log p_c`` or sigmoid ``σ(s_c)``
``WeightedClasses(w, kind)``  ``sum_c w_c s_c`` (s as above)
``SegmentationScore(c, m)``   ``sum_ij m_ij s_c[i, j]`` over a pixel mask (given, or argmax == c)
``DetectionScore(...)``       score of one detection (+ λ IoU(its box, a reference box))
``EmbeddingSimilarity(r)``    ``cos(e_b, r)``: image embedding vs. a text or image embedding
``TokenLogProbability``       ``log p(token | image, previous tokens)`` at one position
``SequenceLogProbability``    ``sum_t log p(w_t | image, w_<t)`` (a caption, an answer)
============================  ===========================================================

Every target reads its tensor from the model output through :func:`select_output` with ``select``
(a key, an index or a callable, as ``output=`` of the explainers); left None it takes a plain tensor
as is, or the first of a few conventional keys of a dict / Hugging Face ``ModelOutput`` (``logits``;
``out`` for torchvision segmentation; ``image_embeds`` / ``pooler_output`` for embeddings). Give
``select`` to the target *or* ``output=`` to the explainer, not both: the explainer's selection
happens first.

Adapters for models that do not take a plain ``(B, C, H, W)`` batch as first argument:
:class:`KeywordImageInput` (``CLIPModel(pixel_values=..., input_ids=...)``) and
:class:`DetectorAdapter` (torchvision detection models, which take a list of 3-D images).

Modules: :mod:`.resolution` (the ``target=`` argument, output selection), :mod:`.composition`
(:class:`TaskTarget`, :class:`Combined`, :class:`Stack`), :mod:`.classification`, :mod:`.dense`
(segmentation, detection), :mod:`.embedding`, :mod:`.sequence` (captioning, VQA), :mod:`.adapters`.
"""

from .adapters import DetectorAdapter, KeywordImageInput
from .classification import KINDS, ClassScore, Kind, WeightedClasses, class_scores
from .composition import Combined, Stack, TaskTarget
from .dense import DetectionScore, SegmentationScore, match_detections
from .embedding import EmbeddingSimilarity, embed, text_embedding
from .resolution import (
    OutputSelector,
    PerImageTargets,
    ResolvedTarget,
    Target,
    TopK,
    class_indices,
    per_image_targets,
    resolve_target,
    select_output,
)
from .sequence import SequenceLogProbability, TokenLogProbability, answer_score

__all__ = [
    "KINDS",
    "ClassScore",
    "Combined",
    "DetectionScore",
    "DetectorAdapter",
    "EmbeddingSimilarity",
    "KeywordImageInput",
    "Kind",
    "OutputSelector",
    "PerImageTargets",
    "ResolvedTarget",
    "SegmentationScore",
    "SequenceLogProbability",
    "Stack",
    "Target",
    "TaskTarget",
    "TokenLogProbability",
    "TopK",
    "WeightedClasses",
    "answer_score",
    "class_indices",
    "class_scores",
    "embed",
    "match_detections",
    "per_image_targets",
    "resolve_target",
    "select_output",
    "text_embedding",
]
