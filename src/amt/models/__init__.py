"""amt.models: the AMT network (`build_model`, `AMT`, `ModelConfig`)."""

from amt.models.amt import AMT, OUTPUT_KEYS, build_model
from amt.models.config import PRESETS, VARIANTS, ModelConfig, make_config

__all__ = ["AMT", "OUTPUT_KEYS", "PRESETS", "VARIANTS", "ModelConfig", "build_model", "make_config"]
