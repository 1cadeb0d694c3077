"""Roadside LiDAR: a scene simulator, DINOSTAR-style statistical teachers that pseudo-label frames,
and a compact pillar/BEV student detector trained on their labels."""
