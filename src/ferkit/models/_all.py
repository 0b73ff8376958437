"""Import every architecture module so that each registers itself."""
