"""Wiring and the user interface: the ``myocohort`` CLI, settings files, progress, exit codes.
The only package that imports every stage."""
