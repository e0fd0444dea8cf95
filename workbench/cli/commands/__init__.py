"""CLI command modules (each registers its commands on ``workbench.cli.app`` when imported)."""
