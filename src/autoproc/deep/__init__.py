"""DEEP survey processing stages: repo set-up, ingest, collections, steps, calibrations."""
