"""Thin command-line entry points over the library packages (the `dpr` console script)."""
