"""Detector geometries: :class:`Geometry`, presets and the CaloChallenge XML loader."""

from .calochallenge import load_calochallenge_xml
from .core import Geometry, GeometryError, Layer, Material, PeriodGroup, Sampling
from .presets import get_geometry, list_geometries, register_geometry

__all__ = [
    "Geometry", "GeometryError", "Layer", "Material", "PeriodGroup", "Sampling",
    "get_geometry", "list_geometries", "register_geometry", "load_calochallenge_xml",
]
