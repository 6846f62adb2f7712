"""Detector geometries: :class:`Geometry`, presets and the CaloChallenge XML loader.

``get_geometry(spec)`` here is :func:`resolve_geometry`: a preset name, a geometry ``.json`` or a
CaloChallenge binning ``.xml`` (:func:`~.presets.preset_geometry` looks up presets only).
"""

from .calochallenge import load_calochallenge_xml
from .core import Geometry, GeometryError, Layer, Material, PeriodGroup, Sampling
from .presets import list_geometries, register_geometry
from .resolve import resolve_geometry

#: The package's geometry lookup: every spec form (see :func:`resolve_geometry`).
get_geometry = resolve_geometry

__all__ = [
    "Geometry", "GeometryError", "Layer", "Material", "PeriodGroup", "Sampling",
    "get_geometry", "resolve_geometry", "list_geometries", "register_geometry", "load_calochallenge_xml",
]
