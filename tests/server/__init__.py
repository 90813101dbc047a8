"""Tests against the real MONAI Label server started on 127.0.0.1."""
