"""Checks run before anything is built; each raises the error the build would end with."""
