"""Attribution: touchpoints (ad clicks and impressions), the engine, and the read/import API."""
