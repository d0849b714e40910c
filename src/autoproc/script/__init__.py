"""Plain functions behind the CLI commands; tests call them directly."""
