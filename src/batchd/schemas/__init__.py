"""Wire shapes: what batchd sends, encoded exactly as the API does."""
