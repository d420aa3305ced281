"""crossholder."""
