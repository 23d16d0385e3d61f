"""Inverted index over quantized SPLADE impacts (filled in by the index issue)."""
