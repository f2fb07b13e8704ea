"""The crash drill: see ``python -m devstack.drill --help``."""
