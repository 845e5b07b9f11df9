"""amt.config: the Hydra config groups of `amt train` (data/, training/, experiment/, sweep/).

The `model` group has no yaml files: its options are the presets and variants of
`amt.models.config` (`PRESETS`, `VARIANTS`), registered by `amt.training.config.register_configs`.
"""
