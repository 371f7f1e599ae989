"""nctune."""
