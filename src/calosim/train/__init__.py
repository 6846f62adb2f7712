"""Training framework shared by all models: ``train(...)``, ``load_run(...)``, transforms,
condition encoding, checkpoints and data parallelism. See ``docs/architecture.md``."""

from .checkpoint import Run, RunError, load_run
from .conditions import ConditionEncoder, parse_energy_spec, particle_pdg, sample_conditions
from .config import FRAMEWORK_DEFAULTS, load_config_file, resolve_config
from .loop import Trainer, train
from .transforms import ShowerTransform, get_transform, list_transforms, postprocess, register_transform

__all__ = [
    "train", "Trainer", "load_run", "Run", "RunError", "ConditionEncoder", "sample_conditions", "parse_energy_spec",
    "particle_pdg", "ShowerTransform", "get_transform", "list_transforms", "register_transform", "postprocess",
    "FRAMEWORK_DEFAULTS", "load_config_file", "resolve_config",
]
