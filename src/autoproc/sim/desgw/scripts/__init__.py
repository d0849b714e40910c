"""Standalone stand-ins for gw_workflow, jobsub and Post-Processing programs, installed by make_site."""
