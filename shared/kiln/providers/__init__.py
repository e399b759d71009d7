"""Generation providers behind one port (``kiln.providers.base``)."""
