"""One loader per model source; :data:`gradcam.models.loading.LOADERS` maps a spec's scheme to it.

Every loader takes ``(target, request)`` -- what the spec names, and the weights / device / labels the
caller asked for -- and returns a :class:`gradcam.models.LoadedModel` through
:func:`gradcam.models.loaded.finish`, or raises :class:`gradcam.models.ModelLoadError`.
"""
