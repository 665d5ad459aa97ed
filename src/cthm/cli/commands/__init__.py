"""The `cthm` subcommands, one module per resource."""
