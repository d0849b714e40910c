"""Simulated DESGW site: gw_workflow, jobsub, the FNAL grid and Post-Processing, on a local tree."""
