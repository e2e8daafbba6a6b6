"""Service subcommands of ``glmft`` (registered through the ``glmft.commands`` entry points)."""
