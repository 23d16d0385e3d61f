"""lsr: learned sparse retrieval."""
