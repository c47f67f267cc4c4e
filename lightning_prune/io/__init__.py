"""What leaves a run: export, the report, the command line and tracking through the loggers."""
