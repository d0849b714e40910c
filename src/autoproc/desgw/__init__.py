"""DESGW domain layer: pure functions over gw_workflow, dCache-tree and Post-Processing files."""
