"""Live Avatar engine: causal Wan2.2-S2V DiT streaming on GPU (tiny configuration on CPU for tests).

DiT side (this package's model half): :mod:`.config`, :mod:`.dit`, :mod:`.loader`, :mod:`.stepper`.
Heavy imports stay lazy: importing the package does not import torch.
"""

__all__ = [
    "CausalS2VDiT",
    "CausalStepper",
    "ClipNoise",
    "DiTConfig",
    "LatentGeometry",
    "ModelConfig",
    "StreamingConfig",
    "WeightLoadError",
    "load_dit",
    "load_model_config",
    "random_init_",
]

_LOCATIONS = {
    "CausalS2VDiT": ".dit",
    "CausalStepper": ".stepper",
    "ClipNoise": ".sampler",
    "DiTConfig": ".config",
    "LatentGeometry": ".config",
    "ModelConfig": ".config",
    "StreamingConfig": ".config",
    "WeightLoadError": ".loader",
    "load_dit": ".loader",
    "load_model_config": ".config",
    "random_init_": ".loader",
}


def __getattr__(name: str):
    if name in _LOCATIONS:
        import importlib

        return getattr(importlib.import_module(_LOCATIONS[name], __name__), name)
    raise AttributeError(name)
