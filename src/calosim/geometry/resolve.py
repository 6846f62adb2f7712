"""One resolver for every way a geometry is named: a preset, a ``.json`` description or a
CaloChallenge binning ``.xml``. Every command's ``--geometry`` and every ``geometry=`` given
as text goes through :func:`resolve_geometry`, so what works for one command works for all.
"""

from __future__ import annotations

import json
from pathlib import Path

from .core import Geometry, GeometryError
from .presets import list_geometries, preset_geometry

__all__ = ["resolve_geometry", "GEOMETRY_SPEC_HELP"]

#: The ``--geometry`` help text shared by the commands.
GEOMETRY_SPEC_HELP = "Geometry: a preset name (see `calosim geometries`), a geometry .json or a CaloChallenge binning .xml."


def resolve_geometry(spec: Geometry | str | Path) -> Geometry:
    """The :class:`Geometry` for a preset name, a ``.json`` file (``Geometry.to_json``) or a
    CaloChallenge binning ``.xml``; a :class:`Geometry` is returned as is.

    Raises :class:`GeometryError` (a ``ValueError``) with one line naming the file or the
    valid preset names.
    """
    if isinstance(spec, Geometry):
        return spec
    if not isinstance(spec, (str, Path)):
        raise GeometryError(f"geometry must be a preset name or a .json/.xml file, got {type(spec).__name__}")
    text = str(spec).strip()
    suffix = Path(text).suffix.lower()
    if suffix in (".json", ".xml"):
        path = Path(text)
        if not path.is_file():
            raise GeometryError(f"{path}: geometry file not found")
        if suffix == ".xml":
            return _from_xml(path)
        try:
            return Geometry.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GeometryError(f"{path}: not valid geometry JSON ({exc})") from None
        except (GeometryError, KeyError, TypeError, AttributeError, ValueError) as exc:
            raise GeometryError(f"{path}: not a calosim geometry description ({exc}); "
                                "write one with `calosim geometries --json`") from None
    try:
        return preset_geometry(text)
    except GeometryError:
        raise GeometryError(f"unknown geometry {text!r}; valid: {', '.join(list_geometries())}, "
                            "or a geometry .json / CaloChallenge binning .xml file") from None


def _from_xml(path: Path) -> Geometry:
    import xml.etree.ElementTree as ET

    from .calochallenge import load_calochallenge_xml

    try:
        return load_calochallenge_xml(path)
    except GeometryError as exc:
        raise GeometryError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None
    except (ET.ParseError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise GeometryError(f"{path}: not a CaloChallenge binning XML ({type(exc).__name__}: {exc})") from None
