"""Deferrable sensors: they wait in the triggerer, not on a worker slot."""
