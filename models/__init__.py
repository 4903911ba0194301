"""Data shapes: ORM tables, dataset specs, payload models. Imports nothing from app/ or services/."""
