"""The work, one module per stage, each with a run_<stage>(settings, ...) entry point."""
