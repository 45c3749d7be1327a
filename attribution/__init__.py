"""Attribution: the engine that ties conversions to touchpoints (matching, models, the attributor)."""
