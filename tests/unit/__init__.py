"""Unit tests of the library and the app's parts: no server."""
