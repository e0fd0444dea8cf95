"""CLI command modules; each adds commands to ``workbench.cli.app`` when imported."""
