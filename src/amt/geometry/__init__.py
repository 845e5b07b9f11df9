"""Geometry shared by data, models, losses and metrics: rotations, cameras, Procrustes, hand skeleton."""
