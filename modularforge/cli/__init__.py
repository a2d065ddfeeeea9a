"""The command line, `python -m modularforge COMMAND`: parsing and printing only.

`main` (the subcommands), `bench`, `pipeline`, `generate` (their options and
reports) and `errors` (one clear line per error, exit status 2). The work
itself is done by the other subpackages.

Depends on everything below it; only `chapters` imports it.
"""
