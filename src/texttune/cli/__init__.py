"""The `texttune` command: one module per subcommand, each a parser plus a call into the library."""
