"""SpineMet-FL server package (filled in by later issues)."""
