"""autoproc: drive DEEP and DESGW processing forward as new data arrives."""

__version__ = "0.1.0"
