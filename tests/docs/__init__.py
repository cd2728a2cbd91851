"""Tests of the documentation: the site, the README front page and the guides run as written."""
