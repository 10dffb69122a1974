"""Route modules, one per API noun."""
