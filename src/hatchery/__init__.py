"""Hatchery: the control plane of an AI software incubator."""
