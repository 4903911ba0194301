"""Wiring: settings, database, migrations, logging and errors."""
