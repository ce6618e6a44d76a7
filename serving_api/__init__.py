"""skewless."""
