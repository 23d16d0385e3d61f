"""One module per `lsr` verb (see lsr.cli)."""
