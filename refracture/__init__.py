"""refracture-risk: the command line and the I/O edge of the product."""
