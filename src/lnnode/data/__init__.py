"""Bringing annotated data sets in: images + node masks + classes become a studies folder."""
