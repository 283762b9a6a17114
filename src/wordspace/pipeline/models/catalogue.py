"""Imports every adapter module so that each registers its models (one import line per module)."""
