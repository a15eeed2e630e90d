"""Segment networks and the temporal layers shared with the fusion heads."""
