"""Simulated instrument, grid and pipelines for the demo and the tests."""
