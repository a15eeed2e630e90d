"""Fusion heads, trainer and ensemble over stored vidfeat feature sets."""
