"""The `parcours` command line."""
