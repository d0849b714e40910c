"""A simulated DECam (`SimDECam`), raw writer, night generator and mock DEEP pipelines.

Everything here runs against the real Butler, `pipetask` and `bps` from PyPI; only the science
(obs_decam, cp_pipe, drp_pipe) is replaced by `lsst.pipe.base.tests.mocks` tasks with the real
DEEP task labels, step subsets and dataset type names.
"""
