"""Training framework shared by all models: ``train(...)``, transforms, condition encoding,
checkpoints and data parallelism (sampling a trained run: :mod:`calosim.runs`). See
``docs/architecture.md``."""

from .checkpoint import RunError
from .conditions import ConditionEncoder, parse_energy_spec, particle_pdg, sample_conditions
from .config import load_config_file, parse_overrides, resolve_config
from .loop import Trainer, train
from .transforms import ShowerTransform, get_transform, list_transforms, postprocess, register_transform

__all__ = [
    "train", "Trainer", "RunError", "ConditionEncoder", "sample_conditions", "parse_energy_spec",
    "particle_pdg", "ShowerTransform", "get_transform", "list_transforms", "register_transform", "postprocess",
    "load_config_file", "parse_overrides", "resolve_config",
]
