"""Grading, feedback and certificates (course design section 5)."""
